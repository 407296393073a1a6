"""``appa demo``: the embedded default, end to end on a laptop CPU.

1. loads the bundled demo prior (``Prior.demo()``) and the bundled truth slice (4 days of a held-out nature run);
2. simulates a realistic observing system on a 24-hour window of the truth (``ObservingSystem.demo()``: a few
   hundred surface stations, a polar orbiter's swath with AMSU-A-like radiances, radiosonde profiles), each
   operator with its own noise model;
3. samples a posterior ensemble (reanalysis) with the guided sampler, and, for reference, an unconditioned prior
   ensemble of the same window;
4. writes the posterior to zarr, maps to PNG, and prints a score table against the truth: RMSE of the ensemble
   mean, fair CRPS and spread/skill for the posterior, next to the unassimilated prior ensemble and (when its
   bundled file is there) climatology.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import xarray as xr

__all__ = ["SCORED", "main", "run_demo"]

#: the variables the demo's score table shows (name, level or None, label)
SCORED: tuple[tuple[str, int | None, str], ...] = (
    ("geopotential", 500, "Z500 [m2/s2]"),
    ("temperature", 850, "T850 [K]"),
    ("u_component_of_wind", 850, "U850 [m/s]"),
    ("specific_humidity", 700, "Q700 [g/kg]"),
    ("2m_temperature", None, "T2M [K]"),
    ("mean_sea_level_pressure", None, "MSLP [hPa]"),
    ("10m_u_component_of_wind", None, "U10 [m/s]"),
    ("10m_v_component_of_wind", None, "V10 [m/s]"),
)
_SCALE = {"specific_humidity": 1e3, "mean_sea_level_pressure": 1e-2}
FAMILIES = ("stations", "swath", "radiance", "sondes")
#: The registry operator each observation family of the demo needs.
FAMILY_OPERATORS: dict[str, str] = {
    "stations": "station",
    "swath": "swath",
    "radiance": "radiance",
    "sondes": "pressure_level",
}


def installed_families(families: Sequence[str] = FAMILIES) -> tuple[list[str], dict[str, str]]:
    """``(available, missing)``: the demo's observation families whose operator is installed, and for the others
    the distribution to ``pip install`` (``{"sondes": "appa-op-fields"}``)."""
    from appa_core.plugins import UnknownComponentError, get_registry
    from appa_workflows.observing import OPERATOR_DISTRIBUTIONS

    reg = get_registry()
    available, missing = [], {}
    for family in families:
        operator = FAMILY_OPERATORS[family]
        try:
            reg.component("operator", operator)
        except UnknownComponentError:
            missing[family] = OPERATOR_DISTRIBUTIONS[operator]
        else:
            available.append(family)
    return available, missing


def _choose_families(operators: Sequence[str] | None) -> list[str]:
    """The families to simulate: the requested ones (each must be installed), or every installed one (``None``);
    a missing distribution is named in one line."""
    requested = FAMILIES if operators is None else tuple(operators)
    unknown = [f for f in requested if f not in FAMILIES]
    if unknown:
        raise ValueError(f"appa demo: --operators has unknown value {unknown[0]!r}; choose from {','.join(FAMILIES)}")
    available, missing = installed_families(requested)
    if operators is not None and missing:
        family, dist = next(iter(missing.items()))
        raise ValueError(
            f"appa demo: --operators has value {family!r}, whose operator {FAMILY_OPERATORS[family]!r} is not "
            f"installed: pip install {dist}"
        )
    if not available:
        dists = " ".join(dict.fromkeys(missing.values()))
        raise ValueError(f"appa demo: no observation operator is installed: pip install {dists}")
    if missing:
        dists = " ".join(dict.fromkeys(missing.values()))
        print(f"  (skipping {', '.join(missing)}: not installed; pip install {dists} for the full demo)")
    return available


def _row(name: str, level: int | None) -> str:
    return name if level is None else f"{name}@{level}"


def _observing_system(families: set[str]):  # type: ignore[no-untyped-def]
    from appa_workflows.observing import ObservingSystem

    unknown = families - set(FAMILIES)
    if unknown:
        raise ValueError(f"appa demo: --operators has unknown value {sorted(unknown)[0]!r}; choose from {FAMILIES}")
    base = ObservingSystem.demo()
    return ObservingSystem(
        stations=base.stations if "stations" in families else 0,
        swaths=base.swaths if families & {"swath", "radiance"} else 0,
        swath_variables=base.swath_variables if "swath" in families else (),
        radiance="radiance" in families,
        sondes=base.sondes if "sondes" in families else 0,
    )


def _scores(forecast: xr.Dataset, truth: xr.Dataset) -> pd.DataFrame:
    from appa_core.metrics import score_table

    table = score_table(forecast, truth)
    rows = [_row(n, lev) for n, lev, _ in SCORED if _row(n, lev) in table.index]
    return table.loc[rows]


def _table(post: pd.DataFrame, prior: pd.DataFrame, clim: pd.DataFrame | None) -> pd.DataFrame:
    out = pd.DataFrame(index=[label for _, _, label in SCORED])
    for name, level, label in SCORED:
        key = _row(name, level)
        if key not in post.index:
            continue
        s = _SCALE.get(name, 1.0)
        out.loc[label, "rmse_posterior"] = post.loc[key, "rmse"] * s
        out.loc[label, "rmse_prior"] = prior.loc[key, "rmse"] * s
        if clim is not None and key in clim.index:
            out.loc[label, "rmse_climatology"] = clim.loc[key, "rmse"] * s
        out.loc[label, "crps_posterior"] = post.loc[key, "crps"] * s
        out.loc[label, "spread_posterior"] = post.loc[key, "spread"] * s
        out.loc[label, "ssr_posterior"] = post.loc[key, "ssr"]
    return out.dropna(how="all")


def _plots(post: xr.Dataset, truth: xr.Dataset, out: Path) -> list[Path]:
    """Maps of Z500, T850 and T2M (truth, posterior mean, error, spread, with coastlines and units) and the
    observation departures of every operator (:func:`appa_workflows.plot.plot_posterior`)."""
    from appa_workflows.plot import plot_posterior

    channels = [_row(name, level) for name, level, _ in SCORED[:2] + SCORED[4:5]]
    return plot_posterior(post, out, truth=truth, channels=channels)


#: The demo's sampler settings: LMS (on a Gaussian problem, 16 steps keep 97 % of the exact posterior variance and 24
#: steps 99 %, docs/sampler.md) with GMRES iterated to a relative residual of DEMO_TOL, which keeps the demo under
#: 2 minutes on 2 cores with the bundled prior (docs/quickstart.md).
DEMO_STEPS = 16
DEMO_TOL = 3e-2
DEMO_ITERS = 4  # the cap binds on this problem (72k observations): the relative residual is ~0.9 after 4 iterations


def run_demo(
    out: str | Path = "appa-demo",
    members: int = 8,
    steps: int = DEMO_STEPS,
    sampler: str = "lms",
    iters: int | None = DEMO_ITERS,
    tol: float | None = DEMO_TOL,
    hours: int = 24,
    operators: tuple[str, ...] | None = None,
    seed: int = 0,
    start_index: int = 4,
    plots: bool = True,
    progress: bool = True,
) -> dict[str, object]:
    """Run the demo; returns a summary (scores, paths, timings). See :func:`main` for the options.

    ``operators``: the observation families (:data:`FAMILIES`); ``None``: every family whose operator is installed
    (the others are named with the distribution to install).
    """
    from appa_core.data import load_truth_slice
    from appa_core.priors.latent import Prior
    from appa_core.sampler import Sampler, save_zarr, split_diagnostics
    from appa_core.state import dataset_to_tensor

    if members < 2:
        raise ValueError(f"appa demo: --members has value {members}; need at least 2 for spread and CRPS")
    families = _choose_families(operators)  # before anything is loaded: a missing distribution is named at once
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    t_start = time.perf_counter()
    prior = Prior.demo()
    truth_all = load_truth_slice()
    step_h = int(prior.timestep / np.timedelta64(1, "h"))
    length = hours // step_h + 1
    if hours % step_h or length < 1:
        raise ValueError(f"appa demo: --hours has value {hours}; must be a multiple of {step_h}")
    if start_index < 0 or start_index + length > truth_all.sizes["time"]:
        raise ValueError(
            f"appa demo: a {hours} h window from state {start_index} does not fit in the "
            f"{truth_all.sizes['time']}-state truth slice"
        )
    truth = truth_all.isel(time=slice(start_index, start_index + length))
    x_true, times, grid = dataset_to_tensor(truth, prior.spec)
    if grid != prior.grid:
        raise ValueError("appa demo: the truth slice and the demo prior are on different grids")

    obs = _observing_system(set(families)).build(x_true, grid, prior.spec, times, seed=seed)
    n_obs = {str(op.name): op.size for op in obs}
    print(
        f"appa demo: {hours} h reanalysis from {str(times[0])[:16]}, {members} members, "
        f"{steps} {sampler} steps, MMPS with "
        + (
            f"GMRES to a relative residual of {tol:g} (at most {iters} iterations)"
            if tol is not None
            else f"{iters} GMRES iterations"
        )
    )
    print("  observations: " + ", ".join(f"{k} {v:,}" for k, v in n_obs.items()) + f" (total {sum(n_obs.values()):,})")

    t0 = time.perf_counter()
    # calibrated settings (docs/sampler.md): LMS, GMRES iterated to a tolerance (``iters`` caps it; tol=None: exactly
    # ``iters`` iterations, Appa's fixed-iteration mode)
    kw = {"steps": steps, "sampler": sampler, "solver": "gmres", "solver_iters": iters, "solver_tol": tol}
    kw["on_failure"] = "ignore"  # the solve summary below reports every solve that missed the tolerance
    posterior = Sampler(prior, **kw, progress=progress).posterior(
        obs=obs, start=times[0], length=length, members=members, seed=seed
    )
    t_post = time.perf_counter() - t0
    t0 = time.perf_counter()
    prior_ens = Sampler(prior, **kw, guidance="none", progress=progress).posterior(
        obs=None, start=times[0], length=length, members=members, seed=seed + 1
    )
    t_prior = time.perf_counter() - t0

    states, _ = split_diagnostics(posterior)
    post_scores = _scores(states, truth)
    prior_scores = _scores(prior_ens, truth)
    clim_scores = None
    try:
        from appa_workflows.baselines import load_climatology

        clim_scores = _scores(load_climatology().forecast(times), truth)
    except (ImportError, FileNotFoundError, AttributeError) as exc:  # pragma: no cover - asset missing
        print(f"  (no climatology row: {exc})")
    table = _table(post_scores, prior_scores, clim_scores)

    zarr_path = save_zarr(posterior, out / "posterior.zarr")
    table.to_csv(out / "scores.csv")
    pngs = _plots(posterior, truth, out) if plots else []
    summary = {
        "window": [str(times[0]), str(times[-1])],
        "members": members,
        "steps": steps,
        "sampler": sampler,
        "gmres_iterations": iters,
        "gmres_tolerance": tol,
        "solve": json.loads(posterior.attrs["appa_solve"]) if "appa_solve" in posterior.attrs else None,
        "qc": json.loads(posterior.attrs["appa_qc"]) if "appa_qc" in posterior.attrs else None,
        "observations": n_obs,
        "seconds": {"posterior": t_post, "prior": t_prior, "total": time.perf_counter() - t_start},
        "posterior": str(zarr_path),
        "plots": [str(p) for p in pngs],
        "scores": json.loads(table.to_json(orient="index")),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))

    with pd.option_context("display.width", 140, "display.max_columns", 20):
        print()
        print(table.to_string(float_format=lambda v: f"{v:.3g}"))
    print()
    better = (table["rmse_posterior"] < table["rmse_prior"]).sum()
    print(
        f"posterior-mean RMSE below the unassimilated prior's for {better}/{len(table)} variables"
        + (
            f", below climatology's for {(table['rmse_posterior'] < table['rmse_climatology']).sum()}/{len(table)}"
            if "rmse_climatology" in table
            else ""
        )
    )
    if "appa_qc" in posterior.attrs:
        from appa_workflows.assimilate import qc_summary

        print(qc_summary(json.loads(posterior.attrs["appa_qc"])))
    if "appa_solve" in posterior.attrs:
        sv = json.loads(posterior.attrs["appa_solve"])
        print(
            f"MMPS solves: {sv['calls']} guided calls, {sv['mean_iterations']:.1f} GMRES iterations on average "
            f"(max {sv['max_iterations']}), worst relative residual {sv['max_residual']:.2g}, "
            f"{sv['unconverged']} above the tolerance"
        )
    print(f"sampling took {t_post:.0f} s (posterior) + {t_prior:.0f} s (prior ensemble)")
    maps = ", map_*.png, departures_*.png" if pngs else ""
    print(f"outputs in {out.resolve()}: posterior.zarr, scores.csv, summary.json{maps}")
    return summary


def main(argv: list[str] | None = None) -> int:
    """``appa demo``: assimilate synthetic observations of the bundled truth with the bundled prior."""
    from appa_workflows._cli import Parser, nonnegative_float, nonnegative_int, positive_int

    parser = Parser(prog="appa demo", description=__doc__.split("\n\n")[0].replace("``", ""))
    parser.add_argument("--out", default="appa-demo", help="output folder")
    parser.add_argument("--members", type=positive_int, default=8, help="ensemble members (at least 2)")
    parser.add_argument("--steps", type=positive_int, default=DEMO_STEPS, help="diffusion steps")
    parser.add_argument("--sampler", default="lms", choices=("lms", "heun", "ddim", "pc"), help="diffusion sampler")
    parser.add_argument(
        "--tol",
        type=nonnegative_float,
        default=DEMO_TOL,
        help="relative tolerance of the MMPS solve; 0: exactly --iters iterations",
    )
    parser.add_argument("--iters", type=positive_int, default=DEMO_ITERS, help="GMRES iteration cap")
    parser.add_argument("--hours", type=nonnegative_int, default=24, help="window length in hours (multiple of 6)")
    parser.add_argument(
        "--operators",
        help=f"comma-separated observation families among {','.join(FAMILIES)} (default: every installed one)",
    )
    parser.add_argument("--seed", type=nonnegative_int, default=0, help="seed of the observations and the sampler")
    parser.add_argument(
        "--start-index", type=nonnegative_int, default=4, help="first state of the window in the truth slice"
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG maps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        run_demo(
            out=args.out,
            members=args.members,
            steps=args.steps,
            sampler=args.sampler,
            iters=args.iters,
            tol=args.tol if args.tol > 0 else None,
            hours=args.hours,
            operators=None
            if args.operators is None
            else tuple(s.strip() for s in args.operators.split(",") if s.strip()),
            seed=args.seed,
            start_index=args.start_index,
            plots=not args.no_plots,
            progress=not args.no_progress,
        )
    except (ValueError, FileExistsError) as exc:
        message = str(exc).splitlines()[0]
        print(message if message.startswith("appa demo") else f"appa demo: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
