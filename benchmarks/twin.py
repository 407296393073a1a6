"""Twin experiment on the held-out nature run: the latent diffusion prior against OI, an EnKF, climatology,
persistence and the unconditioned prior, for reanalysis, filtering and forecasting.

Writes ``docs/results.md`` (tables, timings, how it was produced), ``docs/results.json`` (every score, the
configuration, the prior's file hash) and PNG plots under ``docs/img/``. Run from the repository root::

    python benchmarks/twin.py --quick          # ~10-15 minutes on the shared 2-core machine
    python benchmarks/twin.py                  # the full experiment: 84 runs, ~6 h on 2 shared cores (--budget-min)
    python benchmarks/twin.py --jobs 2 ...     # two processes, one per core (the command on docs/results.md)
    python benchmarks/twin.py --report-only    # rebuild the page from the cache

Setup (all methods see the same truth and, for the sampled methods, the same observations):

* truth: ``data/naturerun_heldout.zarr`` (nature-run seed 2), DEMO_SPEC channels, 48 x 96, 6-hourly.
* start dates ``t0`` (00 UTC); observing systems ``sparse`` and ``dense``
  (:meth:`appa_workflows.observing.ObservingSystem.named`), simulated from the truth with ``--obs-seed``.
* tasks: **reanalysis** over 6 / 24 / 48 h windows (2 / 5 / 9 states from ``t0``; 9 > K = 8 uses blankets),
  **filtering** (the last state, ``t0 + 24 h``, of the 24 h reanalysis), **forecast** to ``+72 h`` after the 24 h
  window, lead times counted from ``t0 + 24 h``, with ``Sampler(..., strategy="autoregressive")``:
  ``--forecast-mode continue`` (default) continues each member of the 24 h reanalysis, its last ``K // 2`` states
  given as ``context``; ``--forecast-mode joint`` makes one autoregressive call over ``5 + 12`` states with the
  observations of the first 24 h. Both are the same chunked algorithm; ``joint`` samples the first chunk (24 h
  analysis + 18 h of forecast) jointly, ``continue`` starts from the very analysis scored for filtering (and
  re-encodes it). ``continue`` is the default because the sampler evaluates decoder and operators in every
  guided chunk even when none of their rows is left (``joint`` costs ~3x more here).
* methods: ``prior`` (the bundled latent diffusion prior ``Prior.demo()`` through ``Sampler``), ``oi``
  (:func:`appa_workflows.baselines.oi_prior`, the climatological low-rank Gaussian, through the same ``Sampler``),
  ``enkf`` (``appa-naturerun-enkf``, an LETKF cycling the nature-run GCM itself, run as a subprocess, from a
  climatological ensemble of training-run model states cycled ``--enkf-spinup-cycles`` x 6 h before ``t0``, with
  the inflation / localization of ``benchmarks/tuned_baselines.json``; scored from ``t0``: filter analyses, never
  smoothed), ``climatology`` (the bundled
  hour-of-day climatology; its RMSE is that of the mean, CRPS / spread from a 20-member climatological
  ensemble), ``persistence`` (the true state at ``t0 + 24 h`` persisted; forecast task only) and
  ``unconditioned`` (prior samples with no observation).
* scores per variable (Z500, T850, U850, Q700, T2M, MSLP, U10, V10): area-weighted RMSE of the ensemble mean,
  fair CRPS (MAE for deterministic methods), spread and spread/skill ratio, aggregated over states and dates as
  mean squares (RMSE, spread) or means (CRPS).

Every sampled output is cached under ``--cache`` (default ``runs/twin``) as a zarr store keyed by the
method's configuration (and, for the prior, the hash of its files), so re-runs only compute what is missing and
``--methods enkf`` fills the EnKF rows later.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appa_core.data import DEMO_SPEC, open_wb2  # noqa: E402
from appa_core.metrics import area_weights, crps, ensemble_mean_rmse, spread  # noqa: E402
from appa_core.sampler import Sampler, save_zarr, split_diagnostics  # noqa: E402
from appa_core.state import dataset_to_tensor, tensor_to_dataset  # noqa: E402
from appa_workflows.baselines import load_climatology, oi_prior, persistence  # noqa: E402
from appa_workflows.calibration import SpreadCalibration  # noqa: E402
from appa_workflows.observing import ObservingSystem  # noqa: E402

STEP = np.timedelta64(6, "h")
TRUTH = "data/naturerun_heldout.zarr"
TRAIN = "data/naturerun_train.zarr"
TRAIN_SPLIT = ("2000-01-01", "2000-11-30T18")  # the demo prior's training split (train.toml)
ENKF_CLI = shutil.which("appa-naturerun-enkf") or str(Path(sys.executable).parent / "appa-naturerun-enkf")
#: Settings tuned on training dates by ``benchmarks/tune_baselines.py`` (EnKF inflation / localization, OI rank /
#: samples); they are the defaults of the matching options when the file exists.
TUNED = ROOT / "benchmarks" / "tuned_baselines.json"
METHODS = ("prior", "oi", "enkf", "climatology", "persistence", "unconditioned")
SAMPLED = ("prior", "oi")
#: The prior's sampler settings of the results page (``docs/results.md``), also those its spread factors are fitted
#: for (``tune_baselines.py --prior-args``) and the training curve's (``training_curve.py``).
PAGE_PRIOR_ARGS = ("--members", "8", "--steps", "16", "--gmres-iters", "8", "--tol", "0.03", "--warm-start", "on")
#: label -> (variable, level, display factor, display unit)
SCORED: dict[str, tuple[str, int | None, float, str]] = {
    "Z500": ("geopotential", 500, 1.0, "m2/s2"),
    "T850": ("temperature", 850, 1.0, "K"),
    "U850": ("u_component_of_wind", 850, 1.0, "m/s"),
    "Q700": ("specific_humidity", 700, 1000.0, "g/kg"),
    "T2M": ("2m_temperature", None, 1.0, "K"),
    "MSLP": ("mean_sea_level_pressure", None, 0.01, "hPa"),
    "U10": ("10m_u_component_of_wind", None, 1.0, "m/s"),
    "V10": ("10m_v_component_of_wind", None, 1.0, "m/s"),
}
LABELS = {
    "prior": "latent diffusion prior",
    "prior_cal": "latent diffusion prior, spread calibrated on training dates (appa_workflows.calibration)",
    "oi": "OI (low-rank climatological Gaussian)",
    "enkf": "EnKF (LETKF, true GCM)",
    "climatology": "climatology (hour of day)",
    "persistence": "persistence (true state at t0+24h)",
    "unconditioned": "unconditioned prior",
    "ae_floor": "decode(encode(truth)): the prior's autoencoder floor",
}
ORDER = {
    m: i
    for i, m in enumerate(
        ("prior", "prior_cal", "ae_floor", "oi", "enkf", "unconditioned", "climatology", "persistence")
    )
}


def _rel(p: str | Path) -> str:
    """``p`` relative to the repository when it is absolute: the committed pages name no path of the machine."""
    return os.path.relpath(p, ROOT) if os.path.isabs(p) else str(p)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------- config
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="one date, 6/24 h windows, +24 h, 4 members, 8 steps")
    p.add_argument("--dates", nargs="+", default=None, help="start dates (00 UTC); default 02-01 03-01 04-01 05-01")
    p.add_argument("--observing", nargs="+", default=["sparse", "dense"], choices=["sparse", "dense", "demo"])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--windows", nargs="+", type=int, default=None, help="reanalysis windows in hours (6 24 48)")
    p.add_argument("--lead-hours", type=int, default=None, help="forecast horizon after the 24 h window (72)")
    p.add_argument("--members", type=int, default=None, help="ensemble size of prior / OI (8)")
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (16)")
    p.add_argument("--sampler", default="lms", choices=["lms", "heun", "ddim", "pc"])
    p.add_argument("--tol", type=float, default=3e-2, help="MMPS relative tolerance, adaptive iterations (0: fixed)")
    p.add_argument(
        "--warm-start", choices=["on", "off"], default="on",
        help="start each of the prior's MMPS solves from the previous step's solution (Sampler.warm_start)",
    )  # fmt: skip
    p.add_argument("--oi-warm-start", choices=["on", "off"], default="on", help="the same for OI's solves")
    p.add_argument(
        "--forecast-mode",
        default="continue",
        choices=["continue", "joint"],
        help="continue: each member of the 24 h reanalysis is continued autoregressively (its last K/2 states as\n"
        "context; cheap); joint: one autoregressive call over 24 h + lead with the first 24 h's observations",
    )
    p.add_argument(
        "--gmres-iters", type=int, default=None, help="GMRES iteration cap for the prior (with --tol 0: fixed)"
    )
    p.add_argument("--oi-cg-iters", type=int, default=None, help="CG iteration cap for OI (with --tol 0: fixed)")
    p.add_argument("--oi-window", type=int, default=5, help="states per OI prior window")
    tuned = json.loads(TUNED.read_text()) if TUNED.exists() else {}
    t_oi, t_enkf = tuned.get("oi", {}), tuned.get("enkf", {})
    p.add_argument("--oi-rank", type=int, default=t_oi.get("rank", 64), help="(tuned_baselines.json or 64)")
    p.add_argument(
        "--oi-samples",
        type=int,
        default=t_oi.get("n_samples", 256),
        help="training windows for the OI covariance (tuned_baselines.json or 256)",
    )
    p.add_argument("--enkf-members", type=int, default=None, help="EnKF ensemble size (20; quick 10)")
    p.add_argument("--enkf-inflation", type=float, default=t_enkf.get("inflation", 1.05))
    p.add_argument("--enkf-radius-km", type=float, default=t_enkf.get("radius_km", 2500.0))
    p.add_argument("--enkf-rtpp", type=float, default=t_enkf.get("rtpp", 0.5))
    p.add_argument("--enkf-rtps", type=float, default=t_enkf.get("rtps", 0.0))
    p.add_argument(
        "--enkf-spinup-cycles",
        type=int,
        default=20,
        help="6-h EnKF cycles from a climatological ensemble (training-run states) before t0 (20 = 5 days)",
    )
    p.add_argument("--no-forecast", action="store_true", help="reanalyses only (used by the tuning on training dates)")
    p.add_argument(
        "--enkf-observing", nargs="+", default=None, help="observing systems run by the EnKF (all; quick: sparse)"
    )
    p.add_argument("--clim-members", type=int, default=20)
    p.add_argument(
        "--spread-calibration", choices=["on", "off"], default="on",
        help="score also 'prior_cal': the prior's 24-h reanalysis with the spread factors that "
        "tune_baselines.py --only prior-spread fitted on training dates (tuned_baselines.json; same prior, settings)",
    )  # fmt: skip
    p.add_argument("--obs-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument(
        "--jobs", type=int, default=1, choices=[1, 2],
        help="2: two single-threaded processes, one per core, share the jobs (this one and a --worker)",
    )  # fmt: skip
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the second process of --jobs 2
    p.add_argument("--budget-min", type=float, default=None, help="start no new job after this many minutes")
    p.add_argument("--cache", type=Path, default=Path("runs/twin"))
    p.add_argument("--docs", type=Path, default=ROOT / "docs")
    p.add_argument("--truth", default=TRUTH)
    p.add_argument("--train", default=TRAIN)
    p.add_argument("--report-only", action="store_true", help="only rebuild docs/results.* from the cache")
    p.add_argument("--prior-hash", default=None, help="use this cached prior snapshot (default: the bundled prior)")
    a = p.parse_args(argv)
    quick = a.quick
    a.dates = a.dates or (["2000-03-01"] if quick else ["2000-02-01", "2000-03-01", "2000-04-01", "2000-05-01"])
    a.windows = sorted(a.windows or ([6, 24] if quick else [6, 24, 48]))
    a.lead_hours = a.lead_hours if a.lead_hours is not None else (24 if quick else 72)
    a.members = a.members or (4 if quick else 8)
    a.steps = a.steps or (8 if quick else 16)
    a.enkf_members = a.enkf_members or (10 if quick else 20)
    a.enkf_observing = a.enkf_observing or (a.observing[:1] if quick else list(a.observing))
    a.mode = "quick" if quick else "full"
    if 24 not in a.windows:
        a.windows = sorted({*a.windows, 24})  # filtering and forecasts start from the 24 h window
    return a


def prior_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.glob("*")):
        if f.suffix in (".json", ".safetensors"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _warm(a: argparse.Namespace, field: str = "warm_start") -> str:
    """Cache-key suffix of the MMPS warm start (runs cached before it existed are the ``off`` ones)."""
    return "-w" if getattr(a, field, "on") == "on" else ""


def method_key(a: argparse.Namespace, method: str, phash: str = "") -> str:
    if method == "prior":
        return f"prior-{phash[:10]}-{a.sampler}{a.steps}-m{a.members}-g{a.gmres_iters}-t{a.tol:g}-s{a.seed}{_warm(a)}"
    if method == "oi":
        return (
            f"oi-w{a.oi_window}-r{a.oi_rank}-n{a.oi_samples}-{a.sampler}{a.steps}-m{a.members}-cg{a.oi_cg_iters}"
            f"-t{a.tol:g}-s{a.seed}{_warm(a, 'oi_warm_start')}"
        )
    if method == "unconditioned":
        return f"uncond-{phash[:10]}-{a.sampler}{a.steps}-m{a.members}-s{a.seed}"
    if method == "enkf":
        return (
            f"enkf-clim{a.enkf_spinup_cycles}-m{a.enkf_members}-i{a.enkf_inflation:g}-r{a.enkf_radius_km:g}"
            f"-p{a.enkf_rtpp:g}-s{a.enkf_rtps:g}"
        )
    return method


def spread_entries(section: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``tuned_baselines.json``'s ``prior_spread``: one fit per sampler key (``method_key`` of the prior, which
    holds the prior's hash and the sampler settings, ensemble size included), as ``{sampler_key: fit}``. A file
    written before several fits were kept holds a single fit at the top level; it is read as one entry."""
    if "sampler_key" in section:
        return {section["sampler_key"]: section}
    return dict(section)


def states(hours: int) -> int:
    return hours // 6 + 1


# ---------------------------------------------------------------------------------------------- truth, obs
class Truth:
    """Truth trajectories from the held-out run, cached per start date."""

    def __init__(self, path: str, n_states: int) -> None:
        self.path, self.n = path, n_states
        self._cache: dict[str, tuple[torch.Tensor, np.ndarray, Any, xr.Dataset]] = {}

    def get(self, date: str) -> tuple[torch.Tensor, np.ndarray, Any, xr.Dataset]:
        if date not in self._cache:
            t0 = np.datetime64(date, "ns")
            t1 = t0 + STEP * (self.n - 1)
            ds = open_wb2(self.path, variables=DEMO_SPEC.variables, levels=DEMO_SPEC.levels, time=(t0, t1))
            x, times, grid = dataset_to_tensor(ds, DEMO_SPEC)
            if times.size != self.n:
                raise ValueError(f"twin: the truth has {times.size} states from {date}, need {self.n}")
            self._cache[date] = (x, times, grid, tensor_to_dataset(x, DEMO_SPEC, grid, times))
        return self._cache[date]


def build_obs(truth: Truth, date: str, observing: str, n: int, seed: int) -> list:
    x, times, grid, _ = truth.get(date)
    return ObservingSystem.named(observing).build(x[:n], grid, DEMO_SPEC, times[:n], seed=seed)


# ---------------------------------------------------------------------------------------------- scoring
def _field(ds: xr.Dataset, label: str) -> xr.DataArray:
    var, lev, factor, _ = SCORED[label]
    da = ds[var]
    if lev is not None:
        da = da.sel(level=lev)
    return (da.astype(np.float64) * factor).drop_vars("level", errors="ignore")


def score(
    forecast: xr.Dataset, truth: xr.Dataset, ensemble: xr.Dataset | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Per label: ``time`` [T], ``mse``, ``crps``, ``spread2`` (NaN when deterministic), ``members``.

    ``forecast`` with a ``member`` dim is an ensemble (RMSE of its mean). A deterministic ``forecast`` gets
    CRPS = MAE unless ``ensemble`` gives the ensemble for CRPS and spread (climatology: exact mean + sampled members).
    """
    out = {}
    times = np.intersect1d(forecast["time"].values, truth["time"].values)
    f_all = xr.Dataset({k: _field(forecast, k) for k in SCORED}).sel(time=times)
    t_all = xr.Dataset({k: _field(truth, k) for k in SCORED}).sel(time=times)
    ens = f_all if "member" in f_all.dims else None
    if ensemble is not None:
        ens = xr.Dataset({k: _field(ensemble, k) for k in SCORED}).sel(time=times)
    mse = ensemble_mean_rmse(f_all, t_all) ** 2
    if ens is not None and ens.sizes.get("member", 1) > 1:
        cr, sp2 = crps(ens, t_all), spread(ens) ** 2
        m = ens.sizes["member"]
    else:
        w = area_weights(t_all.latitude)
        cr = abs(f_all - t_all).weighted(w).mean(("latitude", "longitude"))
        sp2, m = None, 1
    for k in SCORED:
        out[k] = {
            "time": times,
            "mse": np.asarray(mse[k].values, dtype=np.float64),
            "crps": np.asarray(cr[k].values, dtype=np.float64),
            "spread2": np.full(times.size, np.nan) if sp2 is None else np.asarray(sp2[k].values, dtype=np.float64),
            "members": m,
        }
    return out


def records(scores: dict[str, dict[str, np.ndarray]], base: dict[str, Any], ref: np.datetime64) -> list[dict[str, Any]]:
    rows = []
    for label, s in scores.items():
        for i, t in enumerate(s["time"]):
            rows.append(
                {
                    **base,
                    "var": label,
                    "time": str(np.datetime64(t, "s")),
                    "lead_h": float((np.datetime64(t, "ns") - ref) / np.timedelta64(1, "h")),
                    "mse": float(f"{s['mse'][i]:.6g}"),
                    "crps": float(f"{s['crps'][i]:.6g}"),
                    "spread2": None if np.isnan(s["spread2"][i]) else float(f"{s['spread2'][i]:.6g}"),
                    "members": int(s["members"]),
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------- runners
class Runner:
    def __init__(self, a: argparse.Namespace, argv: list[str] | None = None) -> None:
        self.a = a
        self.argv = list(sys.argv[1:] if argv is None else argv)  # for the --jobs 2 worker
        self.t_start = time.perf_counter()
        self.n_states = states(24) + a.lead_hours // 6
        self.truth = Truth(a.truth, max(self.n_states, states(max(a.windows))))
        self._prior = None
        self._oi = None
        self.oi_build_s: float | None = None
        self.prior_dir, self.phash = self._snapshot_prior(a.prior_hash)
        self.skipped: list[str] = []

    def _snapshot_prior(self, wanted: str | None) -> tuple[Path, str]:
        """The prior used: a copy of ``appa_core/assets/demo_prior`` under ``<cache>/priors/<sha256[:10]>`` (so a
        prior replaced during the run does not mix with cached outputs), or the snapshot ``--prior-hash``."""
        root = self.a.cache / "priors"
        if wanted:
            hits = sorted(root.glob(f"{wanted[:10]}*"))
            if not hits:
                raise SystemExit(f"twin: no prior snapshot {wanted!r} under {root}")
            return hits[0], prior_hash(hits[0])
        live = ROOT / "appa_core" / "assets" / "demo_prior"
        h = prior_hash(live)
        snap = root / h[:10]
        if not snap.exists():
            tmp = root / f".{h[:10]}.tmp{os.getpid()}"
            shutil.copytree(live, tmp)
            if prior_hash(tmp) != h:  # replaced while copying: try again next run
                shutil.rmtree(tmp)
                raise SystemExit("twin: the demo prior changed while it was being copied; run again")
            os.replace(tmp, snap)
        return snap, h

    def calibration(self, observing: str) -> SpreadCalibration | None:
        """The prior's spread factors for ``observing`` fitted on training dates (``tuned_baselines.json``,
        ``prior_spread``), if they were fitted for this very prior and these sampler settings (the same
        ``method_key``, which holds the prior's file hash); else ``None``."""
        if self.a.spread_calibration == "off" or not TUNED.exists():
            return None
        entries = spread_entries(json.loads(TUNED.read_text()).get("prior_spread", {}))
        tuned = entries.get(method_key(self.a, "prior", self.phash))
        if tuned is None:
            return None  # fitted for another prior or other sampler settings
        if observing not in tuned.get("factors", {}):
            return None
        return SpreadCalibration(tuned["factors"][observing])

    # -------------------------------------------------------------- budget
    def over_budget(self) -> bool:
        b = self.a.budget_min
        return b is not None and (time.perf_counter() - self.t_start) / 60 > b

    # -------------------------------------------------------------- priors
    @property
    def prior(self):  # type: ignore[no-untyped-def]
        if self._prior is None:
            from appa_core.priors.latent import Prior

            self._prior = Prior.load(self.prior_dir)
            log(f"loaded the demo prior {self._prior!r}, sha256 {self.phash[:16]}")
        return self._prior

    @property
    def oi(self):  # type: ignore[no-untyped-def]
        if self._oi is None:
            a = self.a
            t = time.perf_counter()
            self._oi = oi_prior(
                a.train,
                DEMO_SPEC,
                window=a.oi_window,
                rank=a.oi_rank,
                time=TRAIN_SPLIT,
                n_samples=a.oi_samples,
                dtype=torch.float32,
            )
            self.oi_build_s = time.perf_counter() - t
            meta = self.a.cache / method_key(a, "oi") / "build.json"
            meta.parent.mkdir(parents=True, exist_ok=True)
            meta.write_text(json.dumps({"build_s": self.oi_build_s}))
            log(f"built the OI prior (window {a.oi_window}, rank {a.oi_rank}) in {self.oi_build_s:.0f} s")
        return self._oi

    def sampler(self, method: str, strategy: str = "blanket", guided: bool = True) -> Sampler:
        a = self.a
        if method == "oi":
            return Sampler(
                self.oi, steps=a.steps, sampler=a.sampler, solver="cg",
                solver_iters=a.oi_cg_iters or (None if a.tol else 4), solver_tol=a.tol or None, strategy=strategy,
                warm_start=a.oi_warm_start == "on", progress=False,
            )  # fmt: skip
        return Sampler(
            self.prior, steps=a.steps, sampler=a.sampler, solver="gmres",
            solver_iters=a.gmres_iters or (None if a.tol else 2), solver_tol=a.tol or None,
            warm_start=a.warm_start == "on", guidance="mmps" if guided else "none", strategy=strategy, progress=False,
        )  # fmt: skip

    # -------------------------------------------------------------- cached sampled runs
    def path(self, method: str, name: str) -> Path:
        return self.a.cache / method_key(self.a, method, self.phash) / f"{name}.zarr"

    def sampled(self, method: str, date: str, observing: str, task: str) -> Path | None:
        """Run (or find in the cache) one sampled job.

        ``task``: ``r<hours>`` (reanalysis), ``all`` (unconditioned), ``fc`` (forecast, one autoregressive call
        over 24 h + lead with the observations of the first 24 h) or ``fcc`` (forecast continuing each member of
        the cached ``r24`` reanalysis autoregressively: its last ``window // 2`` states are the ``context``).
        """
        a = self.a
        path = self.output((method, date, observing, task))
        name = path.stem
        if path.exists():
            return path
        if self.over_budget():
            self.skipped.append(f"{method} {name}")
            return None
        _, times, _, _ = self.truth.get(date)
        t0 = times[0]
        context = None
        if task == "fcc":
            r24 = self.sampled(method, date, observing, "r24")
            if r24 is None:
                return None
            prior = self.oi if method == "oi" else self.prior
            carry = int(prior.window) // 2
            ctx_ds = xr.open_zarr(r24).isel(time=slice(-carry, None)).load()
            context = torch.stack(
                [dataset_to_tensor(ctx_ds.isel(member=m), DEMO_SPEC)[0] for m in range(ctx_ds.sizes["member"])]
            )
            t0 = times[states(24)]
            n_obs, length, strategy = 0, self.n_states - states(24), "autoregressive"
        elif task == "fc":
            n_obs, length, strategy = states(24), self.n_states, "autoregressive"
        elif task == "all":
            n_obs, length, strategy = 0, max(self.n_states, states(max(a.windows))), "blanket"
        else:
            n_obs = length = states(int(task[1:]))
            strategy = "blanket"
        obs = build_obs(self.truth, date, observing, n_obs, a.obs_seed) if n_obs else None
        smp = self.sampler(method, strategy, guided=obs is not None or context is not None)
        log(f"{method:13s} {name}: {length} states, {a.members} members, {a.steps} {a.sampler} steps ...")
        t = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = smp.posterior(obs=obs, start=t0, length=length, members=a.members, seed=a.seed, context=context)
        wall = time.perf_counter() - t
        states_ds, diag = split_diagnostics(ds)
        states_ds = states_ds.astype(np.float32)
        innov = {
            k.removeprefix("obs_").removesuffix("_innovation"): float(
                np.sqrt(np.mean((diag[k].values / diag[k.replace("_innovation", "_std")].values) ** 2))
            )
            for k in diag.data_vars
            if str(k).endswith("_innovation")
        }
        states_ds.attrs = {
            **ds.attrs,
            "wall_s": wall,
            "method": method,
            "date": date,
            "observing": observing,
            "task": task,
            "n_obs": int(sum(op.size for op in obs)) if obs else 0,
            "innovation_rms_in_std": json.dumps(innov),
            "warnings": json.dumps([str(w.message)[:300] for w in caught]),
            "prior_sha256": self.phash if method != "oi" else "",
            "threads": torch.get_num_threads(),
        }
        save_zarr(states_ds, path)
        log(f"{method:13s} {name}: {wall:.0f} s, normalized innovation rms {innov}")
        return path

    # -------------------------------------------------------------- EnKF
    def enkf(self, date: str, observing: str, cycles: int, forecast_hours: int) -> Path | None:
        a = self.a
        out = self.output(("enkf", date, observing, str(cycles), str(forecast_hours)))
        done = out / "done.json"
        if done.exists():
            return out
        if not Path(ENKF_CLI).exists():
            log(f"enkf: {ENKF_CLI} not found; EnKF rows left empty (re-run with --methods enkf later)")
            self.skipped.append(f"enkf {out.name} (CLI missing)")
            return None
        if self.over_budget():
            self.skipped.append(f"enkf {out.name}")
            return None
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        cmd = [
            ENKF_CLI, "--truth", a.truth, "--start", f"{date}T00", "--cycles", str(cycles),
            "--members", str(a.enkf_members), "--observing", observing, "--seed", str(a.obs_seed),
            "--forecast-hours", str(forecast_hours), "--out", str(out / "run"),
            "--initial", "climatology", "--climate", a.train, "--bank", str(a.cache / "enkf-bank"),
            "--spinup-cycles", str(a.enkf_spinup_cycles), "--inflation", f"{a.enkf_inflation:g}",
            "--radius-km", f"{a.enkf_radius_km:g}", "--rtpp", f"{a.enkf_rtpp:g}", "--rtps", f"{a.enkf_rtps:g}",
        ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
        log(f"enkf          {out.name}: {' '.join(cmd)}")
        t = time.perf_counter()
        with open(out / "log.txt", "w") as fh:
            rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode
        wall = time.perf_counter() - t
        if rc != 0 or not (out / "run" / "analysis.zarr").exists():
            tail = (out / "log.txt").read_text()[-800:]
            log(f"enkf          {out.name}: FAILED (rc {rc}) after {wall:.0f} s:\n{tail}")
            self.skipped.append(f"enkf {out.name} (failed, rc {rc})")
            return None
        done.write_text(json.dumps({"wall_s": wall, "cmd": cmd, "cycles": cycles, "forecast_hours": forecast_hours}))
        log(f"enkf          {out.name}: {wall:.0f} s")
        return out

    # -------------------------------------------------------------- main loop
    def jobs(self) -> list[tuple[str, ...]]:
        """All jobs in priority order (so a run stopped by ``--budget-min`` leaves the most useful ones done):

        1. first date: prior / OI / unconditioned, every task and window; 2. the EnKF (24 h + forecast) of the
        first date on the first observing system; 3. the other dates' 24 h reanalyses and forecasts; 4. the
        remaining 24 h EnKF runs; 5. the other dates' other windows; 6. the EnKF runs of the longest window.
        """
        a = self.a
        want = set(a.methods)
        fc = "fcc" if a.forecast_mode == "continue" else "fc"
        enkf = "enkf" in want

        def main(date: str) -> list[tuple[str, ...]]:
            out: list[tuple[str, ...]] = [("unconditioned", date, "none", "all")] if "unconditioned" in want else []
            for o in a.observing:
                out += [(m, date, o, t) for m in SAMPLED if m in want for t in ("r24", fc)[: 1 if a.no_forecast else 2]]
            return out

        def windows(date: str) -> list[tuple[str, ...]]:
            return [
                (m, date, o, f"r{w}") for o in a.observing for w in a.windows if w != 24 for m in SAMPLED if m in want
            ]

        def enkf24(date: str, o: str) -> tuple[str, ...]:
            return ("enkf", date, o, str(states(24)), str(a.lead_hours))

        first, rest = a.dates[0], a.dates[1:]
        jobs = main(first) + windows(first)
        eo = [o for o in a.observing if o in a.enkf_observing]
        jobs += [enkf24(first, eo[0])] if enkf and eo else []
        jobs += [j for d in rest for j in main(d)]
        jobs += [enkf24(d, o) for d in a.dates for o in eo if enkf and (d, o) != (first, eo[0])]
        jobs += [j for d in rest for j in windows(d)]
        if enkf and max(a.windows) > 24:
            jobs += [("enkf", d, o, str(states(max(a.windows))), "0") for d in a.dates for o in eo]
        return jobs

    def run(self) -> None:
        """Every job of :meth:`jobs`: in order (``--jobs 1``), or by two single-threaded processes, one per core
        (``--jobs 2``): this one and a worker (the same command with ``--worker``), each taking the next job
        that nobody has claimed and whose input is ready (a forecast continues its reanalysis), longest kinds first.
        A claim is a directory under ``<cache>/.claims`` made atomically; claims of an interrupted invocation are
        cleared by the next one (cached results are kept)."""
        claims = self.a.cache / ".claims"
        if self.a.worker:  # the second process of --jobs 2: claims only, never a report
            self._claim_loop(claims)
            return
        jobs_all = self.jobs()
        cached = [j for j in jobs_all if self.done(j)]
        if self.a.jobs > 1 and len(jobs_all) - len(cached) > 1:
            shutil.rmtree(claims, ignore_errors=True)
            claims.mkdir(parents=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), *self.argv, "--worker", "--prior-hash", self.phash]
            worker = subprocess.Popen(cmd)
            try:
                self._claim_loop(claims)
            except BaseException:
                worker.terminate()
                raise
            finally:
                rc = worker.wait()
            if rc != 0:
                log(f"the worker process ended with status {rc}; its jobs are left for the next run")
        else:
            self._run_in_order(jobs_all)
        if len(cached) < len(jobs_all) and not self.missing():  # this invocation completed the table: its wall time
            record = {
                "wall_min": round((time.perf_counter() - self.t_start) / 60, 1),
                "jobs": self.a.jobs,
                "threads": self.a.threads,
                "load_average_end": round(os.getloadavg()[0], 2),
                "finished": time.strftime("%Y-%m-%d %H:%M %Z"),
                "computed": [" ".join(j) for j in jobs_all if j not in cached],
                "jobs_planned": [" ".join(j) for j in jobs_all],
            }
            record["prior"] = self.phash[:10]
            runs = self._last_runs()
            key = self._plan_key(jobs_all)
            runs[key] = record
            if not cached:  # the whole table's time: kept until another invocation computes it all again
                runs[f"{key}/from-empty"] = record
            tmp = self.a.cache / f".last_run.json.tmp{os.getpid()}"
            tmp.write_text(json.dumps(runs, indent=1))
            os.replace(tmp, self.a.cache / "last_run.json")
        self.report()

    def _plan_key(self, jobs: list[tuple[str, ...]], a: argparse.Namespace | None = None) -> str:
        """A configuration's key in ``last_run.json`` (one cache serves several): the hash of its job list and of
        each method's settings (``method_key`` without the prior's hash, which the record holds: ensemble size,
        steps, solver, seeds), for the settings ``a`` (default: this invocation's)."""
        a = a or self.a
        settings = {m: method_key(a, m) for m in sorted({j[0] for j in jobs})}
        lines = sorted(" ".join(j) for j in jobs) + [f"{m}: {k}" for m, k in settings.items()]
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]

    def _last_runs(self) -> dict[str, dict[str, Any]]:
        """``last_run.json``: per configuration (:meth:`_plan_key`), the invocation that last completed its table."""
        f = self.a.cache / "last_run.json"
        return json.loads(f.read_text()) if f.exists() else {}

    def output(self, job: tuple[str, ...]) -> Path:
        """Where ``job`` keeps its output in the cache: a zarr store (sampled jobs) or a directory (EnKF)."""
        if job[0] == "enkf":
            return self.a.cache / method_key(self.a, "enkf") / f"{job[1]}_{job[2]}_c{job[3]}_f{job[4]}"
        name = f"{job[1]}_{job[3]}" if job[0] == "unconditioned" else f"{job[1]}_{job[2]}_{job[3]}"
        return self.path(job[0], name)

    def done(self, job: tuple[str, ...]) -> bool:
        """Whether ``job``'s output is in the cache."""
        out = self.output(job)
        return (out / "done.json").exists() if job[0] == "enkf" else out.exists()

    def _run_job(self, job: tuple[str, ...]) -> None:
        if job[0] == "enkf":
            self.enkf(job[1], job[2], int(job[3]), int(job[4]))
        else:
            self.sampled(*job)

    @staticmethod
    def _needs(job: tuple[str, ...]) -> tuple[str, ...] | None:
        """The job whose output ``job`` reads: a continued forecast reads its 24-h reanalysis."""
        return (job[0], job[1], job[2], "r24") if job[3] == "fcc" else None

    @staticmethod
    def _in_progress(claim: Path) -> bool:
        """Whether the job of ``claim`` is being computed: claimed, not ended, by a process that is alive."""
        if not claim.exists() or (claim / "ended").exists():
            return False
        try:
            os.kill(int((claim / "pid").read_text()), 0)
        except (OSError, ValueError):  # the claimant is gone (or has not written its pid yet: wait for it)
            return not (claim / "pid").exists()
        return True

    def _claim_loop(self, claims: Path) -> None:
        """Take jobs until none is left to take: EnKF runs first (the longest), then the sampled jobs in order.
        A job ends with an ``ended`` marker in its claim (computed, skipped or failed), so nobody waits on it."""
        order = sorted(self.jobs(), key=lambda j: j[0] != "enkf")
        while True:
            waiting = False
            for job in order:
                claim = claims / "_".join(job)
                if self.done(job) or claim.exists():
                    continue
                need = self._needs(job)
                if need is not None and not self.done(need):
                    waiting = waiting or self._in_progress(claims / "_".join(need))  # the other process runs it
                    continue
                try:
                    claim.mkdir()
                except FileExistsError:
                    continue
                (claim / "pid").write_text(str(os.getpid()))
                try:
                    if self.over_budget():
                        self.skipped.append(" ".join(job))
                    else:
                        self._run_job(job)
                finally:
                    (claim / "ended").touch()
                break
            else:
                if not waiting:
                    return
                time.sleep(5.0)

    def _run_in_order(self, jobs: list[tuple[str, ...]]) -> None:
        dirty, last = False, None
        for job in jobs:
            if self.over_budget():
                self.skipped += [" ".join(job)]
                continue
            if dirty and job[1] != last and job[0] != "enkf":
                self.report()  # a new date: refresh the page
                dirty = False
            ran = time.perf_counter()
            self._run_job(job)
            dirty = dirty or time.perf_counter() - ran > 5.0  # something was computed, not just found
            last = job[1]

    # -------------------------------------------------------------- scoring of everything in the cache
    def collect(self) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
        a = self.a
        build = a.cache / method_key(a, "oi") / "build.json"
        if self.oi_build_s is None and build.exists():
            self.oi_build_s = float(json.loads(build.read_text())["build_s"])
        rows: list[dict[str, Any]] = []
        walls: dict[str, list[float]] = defaultdict(list)
        clim = load_climatology() if {"climatology"} & set(a.methods) else None
        fc_ref = np.timedelta64(24, "h")
        for date in self.report_dates():
            _, times, _, tds = self.truth.get(date)
            t0 = times[0]
            t_fc = t0 + fc_ref
            fc_times = times[states(24) : self.n_states]
            win = {w: times[: states(w)] for w in a.windows}

            def add(method, observing, task, window, ds, ref, ens=None, date=date, tds=tds):  # type: ignore[no-untyped-def]
                base = {"method": method, "observing": observing, "task": task, "window_h": window, "date": date}
                rows.extend(records(score(ds, tds, ens), base, ref))

            if not any(self.covered(date, o) for o in a.observing):
                continue
            ae = self.autoencoded(date) if "prior" in a.methods else None
            u = None
            p = self.path("unconditioned", f"{date}_all")
            if "unconditioned" in a.methods and p.exists():
                u = xr.open_zarr(p).load()
                walls["unconditioned|trajectory (all windows)|-"].append(float(u.attrs["wall_s"]))
            # observation-independent methods are listed under every observing system, for the dates (and
            # observing systems) where an assimilating method ran, so that every row of a table has the same dates
            for observing in a.observing:
                if not self.covered(date, observing):
                    continue
                if clim is not None:
                    for w, tw in win.items():
                        add("climatology", observing, "reanalysis", w, clim.forecast(tw), t0,
                            clim.ensemble(tw, a.clim_members, seed=0))  # fmt: skip
                    add("climatology", observing, "filtering", 24, clim.forecast(win[24][-1:]), t0,
                        clim.ensemble(win[24][-1:], a.clim_members, seed=0))  # fmt: skip
                    add("climatology", observing, "forecast", 24, clim.forecast(fc_times), t_fc,
                        clim.ensemble(fc_times, a.clim_members, seed=0))  # fmt: skip
                if "persistence" in a.methods:
                    add("persistence", observing, "forecast", 24, persistence(tds.sel(time=[t_fc]), fc_times), t_fc)
                if ae is not None:
                    for w, tw in win.items():
                        add("ae_floor", observing, "reanalysis", w, ae.sel(time=tw), t0)
                    add("ae_floor", observing, "filtering", 24, ae.sel(time=win[24][-1:]), t0)
                if u is not None:
                    for w, tw in win.items():
                        add("unconditioned", observing, "reanalysis", w, u.sel(time=tw), t0)
                    add("unconditioned", observing, "filtering", 24, u.sel(time=win[24][-1:]), t0)
                    add("unconditioned", observing, "forecast", 24, u.sel(time=fc_times), t_fc)
                for method in SAMPLED:
                    if method not in a.methods:
                        continue
                    for w in a.windows:
                        p = self.path(method, f"{date}_{observing}_r{w}")
                        if p.exists():
                            ds = xr.open_zarr(p).load()
                            walls[f"{method}|reanalysis {w} h|{observing}"].append(float(ds.attrs["wall_s"]))
                            add(method, observing, "reanalysis", w, ds, t0)
                            if w == 24:
                                add(method, observing, "filtering", 24, ds.isel(time=[-1]), t0)
                            cal = self.calibration(observing) if method == "prior" and w == 24 else None
                            if cal is not None:
                                cds = cal.apply(ds)
                                add("prior_cal", observing, "reanalysis", 24, cds, t0)
                                add("prior_cal", observing, "filtering", 24, cds.isel(time=[-1]), t0)
                    fc = "fcc" if a.forecast_mode == "continue" else "fc"
                    p = self.path(method, f"{date}_{observing}_{fc}")
                    if p.exists():
                        ds = xr.open_zarr(p).load()
                        walls[f"{method}|forecast +{a.lead_hours} h|{observing}"].append(float(ds.attrs["wall_s"]))
                        add(method, observing, "forecast", 24, ds.sel(time=fc_times), t_fc)
                        if fc == "fc":
                            add(method, observing, "forecast_analysis", 24, ds.sel(time=win[24]), t0)
                if "enkf" in a.methods:
                    root = a.cache / method_key(a, "enkf")
                    for cycles, fh in ((states(24), a.lead_hours), (states(max(a.windows)), 0)):
                        d = root / f"{date}_{observing}_c{cycles}_f{fh}"
                        if not (d / "done.json").exists():
                            continue
                        wall = float(json.loads((d / "done.json").read_text())["wall_s"])
                        walls[f"enkf|{cycles} cycles + {fh} h forecast|{observing}"].append(wall)
                        an = _open_enkf(d / "run" / "analysis.zarr")
                        for w, tw in win.items():
                            if states(w) <= cycles and (w <= 24) == (cycles == states(24)):
                                add("enkf", observing, "reanalysis", w, an.sel(time=tw), t0)
                        if cycles == states(24):
                            add("enkf", observing, "filtering", 24, an.sel(time=win[24][-1:]), t0)
                            fpath = d / "run" / "forecast.zarr"
                            if fpath.exists() and fh > 0:
                                fc = _open_enkf(fpath)
                                add("enkf", observing, "forecast", 24, fc.sel(time=np.intersect1d(fc_times, fc.time)),
                                    t_fc)  # fmt: skip
        return rows, walls

    def missing(self) -> list[tuple[str, ...]]:
        """Planned jobs that are not in the cache."""
        return [job for job in self.jobs() if not self.done(job)]

    def complete(self, date: str) -> bool:
        """Whether the 24 h reanalyses and forecasts (not with ``--no-forecast``) of the sampled methods are cached
        for every observing system."""
        a = self.a
        fc = "fcc" if a.forecast_mode == "continue" else "fc"
        return all(
            self.path(m, f"{date}_{o}_{t}").exists()
            for m in SAMPLED
            if m in a.methods
            for o in a.observing
            for t in ("r24", fc)[: 1 if a.no_forecast else 2]
        )

    def window_dates(self) -> list[str]:
        """Scored dates on which the prior / OI reanalyses of every window are cached for every observing system."""
        a = self.a
        return [
            d
            for d in self.report_dates()
            if all(
                self.path(m, f"{d}_{o}_r{w}").exists()
                for m in SAMPLED
                if m in a.methods
                for o in a.observing
                for w in a.windows
            )
        ]

    def report_dates(self) -> list[str]:
        """The dates scored: those with complete 24 h reanalyses and forecasts (partial dates would make the rows
        of a table average different cases)."""
        done = [d for d in self.a.dates if self.complete(d)]
        return done or [d for d in self.a.dates if any(self.covered(d, o) for o in self.a.observing)][:1]

    def covered(self, date: str, observing: str) -> bool:
        """Whether a prior / OI reanalysis or an EnKF run of ``(date, observing)`` is in the cache."""
        a = self.a
        if any(self.path(m, f"{date}_{observing}_r24").exists() for m in SAMPLED if m in a.methods):
            return True
        root = a.cache / method_key(a, "enkf")
        return "enkf" in a.methods and any(root.glob(f"{date}_{observing}_c*/done.json"))

    def autoencoded(self, date: str) -> xr.Dataset:
        """``decode(encode(truth))`` of the prior's autoencoder: the best state the latent prior can represent."""
        x, times, grid, _ = self.truth.get(date)
        k = int(self.prior.window)
        with torch.no_grad():
            xr_ = torch.cat([self.prior.decode(self.prior.encode(x[None, i : i + k])) for i in range(0, len(x), k)], 1)
        return tensor_to_dataset(xr_[0], DEMO_SPEC, grid, times)

    def report(self) -> None:
        rows, walls = self.collect()
        write_report(self, rows, walls)


def _open_enkf(path: Path) -> xr.Dataset:
    ds = xr.open_zarr(path).load()
    if "ensemble" in ds.dims and "member" not in ds.dims:
        ds = ds.rename(ensemble="member")
    return ds


# ---------------------------------------------------------------------------------------------- report
def aggregate(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> dict[tuple, dict[str, float]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    out = {}
    for k, rs in groups.items():
        mse = np.mean([r["mse"] for r in rs])
        sp = [r["spread2"] for r in rs if r["spread2"] is not None]
        m = rs[0]["members"]
        rmse = float(np.sqrt(mse))
        spread_v = float(np.sqrt(np.mean(sp))) if len(sp) == len(rs) else None
        per_date: dict[str, list[float]] = defaultdict(list)
        for r in rs:
            per_date[r["date"]].append(r["mse"])
        date_rmse = np.sqrt([np.mean(v) for v in per_date.values()])
        out[k] = {
            "rmse": rmse,
            # half-width of a 90 % Student-t interval of the mean per-date RMSE over dates (None for one date)
            "rmse_ci90": float(stats.t.ppf(0.95, len(date_rmse) - 1) * date_rmse.std(ddof=1) / np.sqrt(len(date_rmse)))
            if len(date_rmse) > 1
            else None,
            "crps": float(np.mean([r["crps"] for r in rs])),
            "spread": spread_v,
            "ssr": None if spread_v is None else float(np.sqrt((m + 1) / m) * spread_v / rmse),
            "n": len({(r["date"], r["time"]) for r in rs}),
            "dates": len({r["date"] for r in rs}),
        }
    return out


def _fmt(v: float | None, label: str | None = None) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _methods_in(agg: dict[tuple, dict[str, float]], pos: int = 0) -> list[str]:
    return sorted({k[pos] for k in agg}, key=lambda m: ORDER.get(m, 99))


def table(agg: dict[tuple, dict[str, float]], key_of, methods: list[str], cols: list[str]) -> str:
    """Markdown table: rows methods, columns variables, cells ``RMSE / CRPS / SSR``."""
    head = "| method | " + " | ".join(f"{c} ({SCORED[c][3]})" for c in cols) + " | dates |"
    lines = [head, "|---" * (len(cols) + 2) + "|"]
    for m in methods:
        cells, nd = [], 0
        for c in cols:
            s = agg.get(key_of(m, c))
            if s is None:
                cells.append("-")
                continue
            nd = max(nd, s["dates"])
            ci = s.get("rmse_ci90")
            rmse = _fmt(s["rmse"]) + (f" ±{_fmt(ci)}" if ci is not None else "")
            cells.append(f"{rmse} / {_fmt(s['crps'])} / {_fmt(s['ssr'])}")
        if nd:
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {nd} |")
    return "\n".join(lines)


def oi_tuning_note(a: argparse.Namespace) -> str:
    """Whether the OI rows use the setting that ``tune_baselines.py`` chose on the training run."""
    tuned = (json.loads(TUNED.read_text()) if TUNED.exists() else {}).get("oi")
    if not tuned:
        return (
            " Its rank and sample count are **not tuned** (`python benchmarks/tune_baselines.py --only oi` does it on "
            "the training run's validation month).\n"
        )
    if (tuned["rank"], tuned["n_samples"]) == (a.oi_rank, a.oi_samples):
        return " Its rank and sample count are the tuned ones (`benchmarks/tuned_baselines.json`).\n"
    rel = tuned.get("relative_score", {})
    mine, best = rel.get(f"r{a.oi_rank}-n{a.oi_samples}"), rel.get(tuned["chosen"])
    gain = f" (its RMSE there is {100 * (1 - best / mine):.0f} % lower on average)" if mine and best else ""
    return (
        f" Its rank and sample count ({a.oi_rank}, {a.oi_samples}) are **not** the tuned ones: the tuning on the "
        f"training run's validation month (`benchmarks/tuned_baselines.json`) chose ({tuned['rank']}, "
        f"{tuned['n_samples']}){gain}, after these runs were made; re-running the OI rows with it did not fit, so "
        "the prior / OI ratios above flatter the prior by about that much.\n"
    )


def solve_curve(r: Runner) -> str:
    """The prior's dense 24-h reanalysis of the first date against the GMRES iteration cap of its MMPS solve, from
    whatever ``--gmres-iters`` variants are in the cache, for every prior snapshot there (the page's first): how
    much of the gap to OI the capped solve explains."""
    a = r.a
    date = a.dates[0]
    cold = argparse.Namespace(**{**vars(a), "warm_start": "off"})
    found = []
    for warm, ns in (("no", cold), ("yes", argparse.Namespace(**{**vars(a), "warm_start": "on"}))):
        key = method_key(ns, "prior", r.phash)
        pattern = key.replace(f"-g{a.gmres_iters}-", "-g*-").replace(r.phash[:10], "*")
        for d in sorted(a.cache.glob(pattern)):
            p = d / f"{date}_dense_r24.zarr"
            g = d.name.split("-g")[-1].split("-")[0]
            if p.exists() and g.isdigit() and d.name.endswith("-w") == (warm == "yes"):
                found.append((d.name.split("-")[1], warm, int(g), p))
    if len(found) < 2:
        return ""
    _, _, _, tds = r.truth.get(date)
    lines = [
        f"\n## Dense observations: the prior against its solve's iteration cap ({date}, 24-h reanalysis)\n",
        "RMSE of the 8-member mean with the GMRES cap of the MMPS solve raised (same tolerance, seeds and "
        "observations; `--gmres-iters`), with solves from zero (warm start no, `--warm-start off`) and from the "
        "previous step's solution (yes, the default; one more product per call), and the normalized innovation "
        "RMS of the stations (1 is a fit within the observation error). Wall time on the shared machine. `prior`: the "
        "weights' hash (other than this page's: an earlier demo prior, same architecture).\n",
        "| prior | warm start | GMRES cap | "
        + " | ".join(f"{k} ({SCORED[k][3]})" for k in SCORED)
        + " | stations' innovation | wall (s) |",
        "|---" * (len(SCORED) + 5) + "|",
    ]
    for prior, warm, g, p in sorted(found, key=lambda f: (f[0] != r.phash[:10], f[0], f[1], f[2])):
        ds = xr.open_zarr(p).load()
        sc = score(ds, tds)
        cells = [_fmt(float(np.sqrt(np.mean(sc[k]["mse"])))) for k in SCORED]  # score() is in display units
        st = json.loads(ds.attrs.get("innovation_rms_in_std", "{}")).get("stations")
        wall = float(ds.attrs.get("wall_s", "nan"))
        name = f"{prior} (this page's)" if prior == r.phash[:10] else prior
        lines.append(f"| {name} | {warm} | {g} | " + " | ".join(cells) + f" | {_fmt(st)} | {wall:.0f} |")
    return "\n".join(lines) + "\n"


def members_curve(r: Runner) -> str:
    """The 24-h reanalysis RMSE of the prior's ensemble mean / OI's against the ensemble size, from whatever
    ``--members`` variants of this page's settings are in the cache (prior and OI at the same size, on the dates
    that every size has): a finite ensemble's mean carries ``spread^2 / m`` of sampling error on top of the
    posterior mean's, which more members remove at a proportional cost."""
    a = r.a
    found: dict[int, dict[str, Path]] = defaultdict(dict)
    for method in ("prior", "oi"):
        key = method_key(a, method, r.phash)
        for d in a.cache.glob(key.replace(f"-m{a.members}-", "-m*-")):
            m = d.name.split("-m")[-1].split("-")[0]
            if m.isdigit() and d.name == key.replace(f"-m{a.members}-", f"-m{m}-"):
                found[int(m)][method] = d
    sizes = sorted(m for m, v in found.items() if len(v) == 2)
    if len(sizes) < 2:
        return ""

    def reanalyses(m: int, observing: str, d: str, tds: xr.Dataset) -> tuple[xr.Dataset, ...]:
        return tuple(xr.open_zarr(found[m][meth] / f"{d}_{observing}_r24.zarr") for meth in ("prior", "oi"))

    runs, jobs, timed = r._last_runs(), r.jobs(), []
    for m in sizes:
        rec = runs.get(f"{r._plan_key(jobs, argparse.Namespace(**{**vars(a), 'members': m}))}/from-empty")
        if rec is not None:
            timed.append(
                f"the whole table with {m} members took {rec['wall_min']:.0f} min from an empty cache with the prior "
                f"{rec.get('prior', '?')} ({_run_conditions(rec)})"
            )
    lines = [
        "\n## The prior against its ensemble size (24-h reanalysis)\n",
        "RMSE of the prior's ensemble mean / OI's at the same ensemble size (`--members`; same prior, sampler "
        f"settings, seeds and observations; {_nested(found, sizes, a.dates[0], a.observing[0])}), on the dates that "
        "every size has. The mean of m members carries a sampling error of spread^2 / m on top of the error of "
        "the posterior mean, so more members lower the RMSE of both methods, the prior's more (its spread is "
        "larger). The sampling work (denoiser, decoder, operators, solves) is per member, so its cost grows in "
        "proportion to the ensemble size. Another size: the page's command with `--members M --methods prior oi` "
        "(`--no-forecast` for the reanalyses alone, `--observing` to restrict it), then `--report-only`."
        + (" Measured: " + "; ".join(timed) + "." if timed else "")
        + "\n",
        "| members | observing | dates | " + " | ".join(SCORED) + " | <= 0.8 |",
        "|---" * (4 + len(SCORED)) + "|",
    ]
    for observing in a.observing:
        dates = [
            d for d in a.dates
            if all((found[m][meth] / f"{d}_{observing}_r24.zarr").exists() for m in sizes for meth in ("prior", "oi"))
        ]  # fmt: skip
        if not dates:
            continue
        lines += [_ratio_row(r, m, observing, dates, reanalyses, lambda x: x <= 0.8) for m in sizes]
    return "\n".join(lines) + "\n" + _members_forecast(r, found, sizes)


def _ratio_row(r: Runner, m: int, observing: str, dates: list[str], pair, met) -> str:  # type: ignore[no-untyped-def]
    """One row of the ensemble-size tables: per scored variable, RMSE of ``pair(m, observing, date, truth)[0]`` /
    RMSE of ``[1]``, each the root of the mean squared error over every state of ``dates`` (as the page's
    aggregates), and how many variables pass ``met``."""
    mse: list[dict[str, list[float]]] = [defaultdict(list), defaultdict(list)]
    for d in dates:
        tds = r.truth.get(d)[3]
        for side, ds in enumerate(pair(m, observing, d, tds)):
            for k, v in score(ds.load(), tds).items():
                mse[side][k].extend(v["mse"].tolist())
    ratio = [float(np.sqrt(np.mean(mse[0][k]) / np.mean(mse[1][k]))) for k in SCORED]
    cells = " | ".join(_fmt(x) for x in ratio)
    return f"| {m} | {observing} | {len(dates)} | {cells} | {sum(bool(met(x)) for x in ratio)}/{len(ratio)} |"


def _members_forecast(r: Runner, found: dict[int, dict[str, Path]], sizes: list[int]) -> str:
    """The prior's +lead forecast RMSE / persistence of the true state, per ensemble size (dates every size has)."""
    a = r.a
    lead = np.timedelta64(a.lead_hours, "h")
    fc = "fcc" if a.forecast_mode == "continue" else "fc"

    def forecasts(m: int, observing: str, d: str, tds: xr.Dataset) -> tuple[xr.Dataset, ...]:
        t_fc = tds["time"].values[0] + np.timedelta64(24, "h")
        at = np.array([t_fc + lead])
        prior = xr.open_zarr(found[m]["prior"] / f"{d}_{observing}_{fc}.zarr").sel(time=at)
        return prior, persistence(tds.sel(time=[t_fc]), at)

    lines = []
    for observing in a.observing:
        dates = [d for d in a.dates if all((found[m]["prior"] / f"{d}_{observing}_{fc}.zarr").exists() for m in sizes)]
        if not dates:
            continue
        lines += [_ratio_row(r, m, observing, dates, forecasts, lambda x: x < 1) for m in sizes]
    if not lines:
        return ""
    head = [
        f"\nThe prior's forecast at +{a.lead_hours} h (each member of the 24-h reanalysis continued), RMSE of the "
        "ensemble mean / persistence of the true state at t0 + 24 h:\n",
        "| members | observing | dates | " + " | ".join(SCORED) + " | < 1 |",
        "|---" * (4 + len(SCORED)) + "|",
    ]
    return "\n".join(head + lines) + "\n"


def _nested(found: dict[int, dict[str, Path]], sizes: list[int], date: str, observing: str) -> str:
    """Whether each smaller prior ensemble is the first members of the next larger one, bit for bit (checked on
    ``2m_temperature`` of one reanalysis)."""
    try:
        ens = [xr.open_zarr(found[m]["prior"] / f"{date}_{observing}_r24.zarr")["2m_temperature"] for m in sizes]
    except FileNotFoundError:
        return "nesting not checked"
    gap = max(
        float(np.abs(small.values - big.isel(member=slice(0, small.sizes["member"])).values).max())
        for small, big in itertools.pairwise(ens)
    )
    if gap == 0.0:
        return (
            f"the prior's smaller ensembles are the first members of the larger ones, bit for bit ({date}, {observing})"
        )
    return (
        f"the first members of each larger ensemble are not the smaller ensemble bit for bit: up to {gap:.2g} K apart "
        f"in 2m_temperature ({date}, {observing}; runs made by different code versions differ at rounding level, "
        "and more where a solve's stopping iteration changes)"
    )


def training_curve(a: argparse.Namespace) -> str:
    """The prior's 24-h reanalysis RMSE / OI's (and CRPS / the EnKF's) against the denoiser's training time, from
    ``training_curve.json`` next to the page (written by ``benchmarks/training_curve.py --write``)."""
    f = a.docs / "training_curve.json"
    if not f.exists():
        return ""
    data = json.loads(f.read_text())
    observing = [o for o in ("sparse", "dense") if any(o in pt for pt in data["points"])]
    members = PAGE_PRIOR_ARGS[PAGE_PRIOR_ARGS.index("--members") + 1]  # the curve's sampler settings
    lines = [
        "\n## The prior against its training time (24-h reanalysis)\n",
        f"RMSE of the prior's {members}-member mean / OI's, on the dates "
        f"{', '.join(data['dates'])}, with the denoiser of each checkpoint in place of the shipped one (same "
        "autoencoder, sampler settings, seeds and observations; `benchmarks/training_curve.py`). Training time: "
        "wall time of the denoiser loop on the 2 cores (the autoencoder's and the encoding come on top). "
        "Checkpoints before the end of their run are taken at a higher learning rate than an annealed run of that "
        "length would end with.\n",
        "| checkpoint | steps | denoiser training (min) | validation loss | observing | " + " | ".join(SCORED) + " |",
        "|---" * (5 + len(SCORED)) + "|",
    ]

    def table(key: str | None) -> None:
        for pt in data["points"]:
            t = "-" if pt.get("train_s") is None else f"{pt['train_s'] / 60:.0f}"
            v = "-" if pt.get("val_loss") is None else f"{pt['val_loss']:.4f}"
            ratios = pt if key is None else pt.get(key, {})
            for o in (o for o in observing if o in ratios):
                cells = [_fmt(ratios[o][k]) for k in SCORED]
                lines.append(f"| {pt['checkpoint']} | {pt['step']} | {t} | {v} | {o} | " + " | ".join(cells) + " |")

    table(None)
    crps = [r for pt in data["points"] for r in pt.get("crps_enkf", {}).values()]
    if crps:
        meets = sum(all(v < 1 for v in r.values()) for r in crps)
        lines += [
            f"\nCRPS of the same {members}-member ensembles / the EnKF's ({a.enkf_members} members; the headline's "
            f"CRPS bar against the EnKF, met on every variable by {meets} of these {len(crps)} rows):\n",
            "| checkpoint | steps | denoiser training (min) | validation loss | observing | "
            + " | ".join(SCORED)
            + " |",
            "|---" * (5 + len(SCORED)) + "|",
        ]
        table("crps_enkf")
    return "\n".join(lines) + "\n"


#: an aggregate: key tuple -> {"rmse", "rmse_ci90", "crps", "spread", "ssr", "n", "dates"}
Agg = dict[tuple, dict[str, float]]


def headline(rows: list[dict[str, Any]], a: argparse.Namespace) -> str:
    """Issue #8's bar: prior / OI and prior / EnKF ratios of the 24-h reanalysis (RMSE, CRPS), the prior's
    spread/skill, and the +72 h forecast against persistence of the true state. Each ratio is computed on the dates
    that both of its methods have (so a baseline run on fewer dates is compared on those dates only)."""
    cols = list(SCORED)
    out = ["## Headline (issue #8's bar)\n"]
    out.append("| 24 h reanalysis | " + " | ".join(cols) + " | bar met | dates |")
    out.append("|---" * (len(cols) + 3) + "|")

    def pair(o: str, m1: str, m2: str, task: str, lead: float | None = None) -> tuple[Agg, int]:
        sel = [
            x
            for x in rows
            if x["observing"] == o and x["task"] == task and (task != "reanalysis" or x["window_h"] == 24)
            and (lead is None or x["lead_h"] == lead)
        ]  # fmt: skip
        dates = {x["date"] for x in sel if x["method"] == m1} & {x["date"] for x in sel if x["method"] == m2}
        sel = [x for x in sel if x["date"] in dates and x["method"] in (m1, m2)]
        return aggregate(sel, ("method", "var")), len(dates)

    def row(label: str, vals: list[float | None], ok, n: int) -> None:  # type: ignore[no-untyped-def]
        met = [ok(v) for v in vals if v is not None]
        cells = " | ".join("-" if v is None else f"{v:.2f}" for v in vals)
        out.append(f"| {label} | {cells} | {sum(met)}/{len(met)} | {n} |")

    def ratios(agg: Agg, m1: str, m2: str, k: str) -> list[float | None]:
        vals: list[float | None] = []
        for c in cols:
            p, b = agg.get((m1, c)), agg.get((m2, c))
            vals.append(None if p is None or b is None or not b.get(k) else float(p[k]) / float(b[k]))
        return vals

    for o in a.observing:
        for base in ("oi", "enkf"):
            agg, n = pair(o, "prior", base, "reanalysis")
            if not n:
                continue
            name = "OI" if base == "oi" else "EnKF"
            if base == "oi":
                row(f"RMSE prior / {name}, {o} (<= 0.8)", ratios(agg, "prior", base, "rmse"), lambda v: v <= 0.8, n)
            else:
                row(f"RMSE prior / {name}, {o} (< 1)", ratios(agg, "prior", base, "rmse"), lambda v: v < 1, n)
            row(f"CRPS prior / {name}, {o} (< 1)", ratios(agg, "prior", base, "crps"), lambda v: v < 1, n)
        agg, n = pair(o, "prior", "prior", "reanalysis")
        if n:
            ssr = [None if agg.get(("prior", c)) is None else agg[("prior", c)]["ssr"] for c in cols]
            row(f"prior spread/skill, {o} (in [0.8, 1.2])", ssr, lambda v: 0.8 <= v <= 1.2, n)
        for base in ("oi", "enkf"):
            agg, n = pair(o, "prior_cal", base, "reanalysis")
            if n:
                name = "OI" if base == "oi" else "EnKF"
                row(f"CRPS prior_cal / {name}, {o} (< 1)", ratios(agg, "prior_cal", base, "crps"), lambda v: v < 1, n)
        agg, n = pair(o, "prior_cal", "prior_cal", "reanalysis")
        if n:
            ssr = [None if agg.get(("prior_cal", c)) is None else agg[("prior_cal", c)]["ssr"] for c in cols]
            row(f"prior_cal spread/skill, {o} (in [0.8, 1.2])", ssr, lambda v: 0.8 <= v <= 1.2, n)
        agg, n = pair(o, "prior", "persistence", "forecast", float(a.lead_hours))
        if n:
            vals = ratios(agg, "prior", "persistence", "rmse")
            row(f"RMSE prior / persistence, +{a.lead_hours} h, {o} (< 1)", vals, lambda v: v < 1, n)
    out.append(
        "\nRatios of scores aggregated over the dates both methods of the ratio have (column 'dates'); 'bar met' "
        "counts the variables that meet the bar of the row. `prior_cal` is the same 24-h reanalysis with each "
        "variable's members scaled about their mean by a factor fitted on training dates "
        "(`appa_workflows.calibration.SpreadCalibration`, `tune_baselines.py --only prior-spread`); its RMSE is the "
        f"prior's. The table is for {a.members} members for the prior and OI; \"The prior against its ensemble "
        'size" below gives the RMSE rows for the other sizes in the cache.\n'
    )
    return "\n".join(out) + "\n"


def write_report(r: Runner, rows: list[dict[str, Any]], walls: dict[str, list[float]]) -> None:
    a = r.a
    docs = a.docs
    img = docs / "img"
    img.mkdir(parents=True, exist_ok=True)
    cols = list(SCORED)
    by_task = aggregate(rows, ("method", "observing", "task", "window_h", "var"))
    by_lead = aggregate([x for x in rows if x["task"] == "forecast"], ("method", "observing", "lead_h", "var"))
    wdates = r.window_dates()
    by_window = aggregate(
        [x for x in rows if x["task"] == "reanalysis" and x["date"] in wdates],
        ("method", "observing", "task", "window_h", "var"),
    )
    plots = make_plots(r, rows, by_window, by_lead, img)
    enkf_times = {}
    for d in sorted((a.cache / method_key(a, "enkf")).glob("*/done.json")):
        enkf_times[d.parent.name] = json.loads(d.read_text())["wall_s"]
    timing = timing_rows(r, walls)
    lines: list[str] = []
    w = lines.append
    elapsed = time.perf_counter() - r.t_start
    w("# Twin-experiment results\n")
    w(
        "The latent diffusion prior (`Prior.demo()`) against classical baselines on the held-out nature run "
        "(jcm / SPEEDY physics, seed 2), 48 x 96 grid, DEMO_SPEC (24 channels), 6-hourly. "
        f"Generated by `benchmarks/twin.py` ({a.mode} configuration) on {time.strftime('%Y-%m-%d %H:%M %Z')}.\n"
    )
    w(headline(rows, a))
    w("## How it was produced\n")
    cmd = "python benchmarks/twin.py" + (" --quick" if a.mode == "quick" else "")
    extra = f" --budget-min {a.budget_min:g}" if a.budget_min else ""
    extra += f" --dates {' '.join(a.dates)} --windows {' '.join(map(str, a.windows))} --lead-hours {a.lead_hours}"
    extra += f" --members {a.members} --steps {a.steps} --gmres-iters {a.gmres_iters} --tol {a.tol:g}"
    extra += f" --warm-start {a.warm_start} --oi-warm-start {a.oi_warm_start}"
    extra += f" --oi-rank {a.oi_rank} --oi-samples {a.oi_samples}"
    extra += f" --jobs {a.jobs}" if a.jobs > 1 else ""
    extra += " --truth NATURERUN_HELDOUT.zarr --train NATURERUN_TRAIN.zarr"
    w(
        "```bash\npython benchmarks/tune_baselines.py --train NATURERUN_TRAIN.zarr"
        "  # EnKF / OI settings, prior spread factors (training run)\n"
        f"OMP_NUM_THREADS=1 {cmd}{extra}\n"
        f"{cmd}{extra} --report-only --prior-hash {r.phash[:10]}  # rebuilds this page from the cache\n"
        "python -m appa_workflows.baselines data/naturerun_train.zarr  # regenerates the bundled climatology\n```\n"
    )
    total = sum(sum(v) for v in walls.values()) + (r.oi_build_s or 0.0)
    w(
        f"* machine: {platform.machine()}, {os.cpu_count()} CPU cores shared with other jobs (absolute times are "
        f"noisy), python {platform.python_version()}, torch {torch.__version__} (CPU, "
        f"{a.threads} thread); no GPU.\n"
        f"* start dates (00 UTC) scored: {', '.join(r.report_dates())} (planned: {', '.join(a.dates)}; a date is "
        "scored once the 24 h reanalyses and forecasts of prior and OI are done for every observing system); "
        f"observing systems: {', '.join(a.observing)} "
        f"(`ObservingSystem.named`, seed {a.obs_seed}; sparse = 100 stations + 1 AMSU-A-like radiance swath + 10 "
        "radiosondes, dense = 1000 stations + 2 swaths with T850/Q700 retrievals and radiances + 60 radiosondes).\n"
        f"* prior / OI / unconditioned: {a.members} members, {a.steps} `{a.sampler}` steps, MMPS guidance "
        + (
            f"(prior: GMRES, OI: CG, both iterated to a relative residual of {a.tol:g}); "
            if a.tol
            else f"(prior: GMRES, {a.gmres_iters or 2} iterations, no tolerance, as Appa; OI: CG, {a.oi_cg_iters or 4} "
            "iterations); "
        )
        + f"sampler seed {a.seed}.\n"
        f"* prior: `appa_core/assets/demo_prior`, sha256 of its files `{r.phash}` (the hash is also in "
        "`results.json`).\n"
        f"* OI: `oi_prior(train store, DEMO_SPEC, window={a.oi_window}, rank={a.oi_rank}, n_samples="
        f"{a.oi_samples})` over {TRAIN_SPLIT[0]}..{TRAIN_SPLIT[1]} of the training run: sample mean and rank-"
        f"{a.oi_rank} + diagonal covariance of {a.oi_window}-state windows (D = {a.oi_window * 24 * 48 * 96:,}); "
        "no localization (GaussianPrior localizes only dense covariances, D <= 8192). float32 states.\n"
        f"* EnKF: `appa-naturerun-enkf --members {a.enkf_members} --initial climatology --climate TRAIN "
        f"--spinup-cycles {a.enkf_spinup_cycles} --cycles N --inflation {a.enkf_inflation:g} --rtpp "
        f"{a.enkf_rtpp:g} --rtps {a.enkf_rtps:g} --radius-km {a.enkf_radius_km:g} --observing ... --seed "
        f"{a.obs_seed}`: an LETKF cycling the true GCM from a **climatological** ensemble ({a.enkf_members} model "
        "states of the training run at the dates nearest in day of year, none from the held-out run), cycled "
        f"{a.enkf_spinup_cycles} x 6 h before t0 and scored from t0 on (filter analyses, never smoothed); "
        "inflation, RTPP/RTPS and localization from `benchmarks/tune_baselines.py` on a training date "
        "(`benchmarks/tuned_baselines.json`). Its observations are simulated by the EnKF itself per 6-hour cycle "
        "(same observing-system preset and seed convention, not the very same draws as the sampled methods).\n"
        f"* climatology: bundled `appa_workflows/assets/climatology.zarr.zip` (training run "
        f"{TRAIN_SPLIT[0]}..{TRAIN_SPLIT[1]}, by hour of day, no seasonal cycle): RMSE of its mean; CRPS / spread "
        f"from a {a.clim_members}-member ensemble drawn from its per-point std.\n"
        "* persistence: the *true* state at t0 + 24 h persisted (forecast task only): a favourable persistence.\n"
        "* ae_floor: `decode(encode(truth))` with the prior's autoencoder, a diagnostic row (not a method): no "
        "posterior of the latent prior can be more accurate than what its decoder can represent.\n"
        + (
            "* forecasts (prior, OI): each member of the 24 h reanalysis continued by `Sampler(..., strategy="
            '"autoregressive")` with its last K // 2 states as `context` (`--forecast-mode continue`).\n'
            if a.forecast_mode == "continue"
            else '* forecasts (prior, OI): one `Sampler(..., strategy="autoregressive")` call over 24 h + lead with '
            "the observations of the first 24 h (`--forecast-mode joint`).\n"
        )
        + f"* total wall time of the runs in this report: {total / 60:.0f} min (sampling and EnKF; cached runs are "
        f"reused, `{_rel(a.cache)}`); this invocation took {elapsed / 60:.1f} min.\n" + _last_run_note(r)
    )
    missing = r.missing()
    if missing:
        per: dict[str, list[str]] = defaultdict(list)
        for job in missing:
            label = {"fcc": "forecast", "fc": "forecast", "all": "trajectory"}.get(job[3], job[3])
            if job[0] == "enkf":
                label = f"{job[3]} cycles + {job[4]} h forecast"
            per[job[0]].append(f"{job[1]} {job[2]} {label}".replace(" none", ""))
        w(
            f"* **not computed**: {len(missing)} of {len(r.jobs())} planned runs (the run stopped at its time budget; "
            "re-running the same command computes only what is missing; the list is `missing_runs` in "
            "`results.json`): " + ", ".join(f"{m} {len(v)}" for m, v in per.items()) + ".\n"
        )
    w(
        "\nCells are **RMSE / CRPS / spread-skill ratio** (area-weighted; RMSE of the ensemble mean; fair CRPS, MAE "
        "for deterministic methods; SSR = sqrt((m+1)/m) spread / RMSE, 1 is calibrated, '-' when deterministic), "
        "aggregated over the states of the window and the dates (column 'dates'); `±` is the half-width of a 90 % "
        "Student-t interval of the mean per-date RMSE over the dates (date-to-date variation).\n"
    )
    for observing in a.observing:
        meths = _methods_in({k: v for k, v in by_task.items() if k[1] == observing})
        w(f"\n## Reanalysis, 24 h window (5 states), {observing} observations\n")
        w(table(by_task, lambda m, c, o=observing: (m, o, "reanalysis", 24, c), meths, cols))
        w(f"\n\n## Filtering (state at t0 + 24 h), {observing} observations\n")
        w(table(by_task, lambda m, c, o=observing: (m, o, "filtering", 24, c), meths, cols))
        for lead in sorted({int(k[2]) for k in by_lead if k[1] == observing}):
            if lead in (24, a.lead_hours) or (lead == 72):
                w(f"\n\n## Forecast, lead +{lead} h (from t0 + 24 h), {observing} observations\n")
                w(table(by_lead, lambda m, c, o=observing, ld=lead: (m, o, float(ld), c), meths, cols))
        w("\n")
    w("\n## RMSE vs reanalysis window length\n")
    w(
        f"Dates with every window done: {', '.join(wdates) or 'none'} (the 24 h rows above may average more dates). "
        "The EnKF's 6 h and 24 h rows are its first 2 and 5 filter analyses from t0; its 48 h run is separate.\n"
    )
    wl = ["| method | observing | window | " + " | ".join(cols) + " |", "|---" * (len(cols) + 3) + "|"]
    for observing in a.observing:
        for m in ("prior", "ae_floor", "oi", "enkf", "unconditioned", "climatology"):
            for win in a.windows:
                cells = [by_window.get((m, observing, "reanalysis", win, c)) for c in cols]
                if any(cells):
                    wl.append(
                        f"| {m} | {observing} | {win} h | " + " | ".join(_fmt(x["rmse"]) if x else "-" for x in cells)
                        + " |"
                    )  # fmt: skip
    w("\n".join(wl) + "\n")
    w(solve_curve(r))
    w(training_curve(a))
    w(members_curve(r))
    w("\n## Time taken (this machine)\n")
    w(timing)
    w("\n## Plots\n")
    for title, rel in plots:
        w(f"\n**{title}**\n\n![{title}]({rel})\n")
    w("\n## Limitations\n")
    w(
        f"* {len(r.report_dates())} start date(s) and {a.members} members: differences of ~10 % between methods "
        "are within the sampling noise.\n"
        "* The prior is the bundled demo prior (2.45M parameters, autoencoder + denoiser trained 64 min on 2 CPU "
        "cores, docs/training.md). Its autoencoder bounds what any posterior can reach (the `ae_floor` row). The "
        f"sampler runs {a.steps} {a.sampler} steps with MMPS guidance whose GMRES solve is capped at "
        f"{a.gmres_iters} iterations (tolerance {a.tol:g}"
        + (", each solve started from the previous step's solution" if a.warm_start == "on" else ", from zero")
        + "): with dense observations the solve stops far from its "
        "tolerance, so the posterior under-fits the observations (normalized innovation RMS in each run's "
        "attributes); the forecasts come from the denoiser's learned dynamics, whose 6-h tendencies are too large "
        "(docs/training.md).\n"
        f"* OI uses a rank-{a.oi_rank} climatological covariance ({a.oi_samples} training windows) without "
        "localization: far-field "
        "spurious correlations of the leading EOFs, and point updates only through the diagonal remainder. Its "
        "forecasts relax to the climatological mean of the Gaussian within a few windows."
        + oi_tuning_note(a)
        + "* The climatology has no seasonal cycle (one training year, grouped by hour of day only), which inflates "
        "its errors in February / March.\n"
        "* The EnKF knows the true model (a perfect-model twin: no model error) but nothing of the truth's state: "
        f"it starts from training-run states and has cycled {a.enkf_spinup_cycles * 6} h when scoring begins"
        + (
            f", so by the window's end it has seen {(a.enkf_spinup_cycles + states(24)) / states(24):.0f}x the "
            "observations of the trajectory methods' 24-h windows (docs/training.md, 'How far from the EnKF', scores "
            "the prior against the same EnKF without a spin-up)"
            if a.enkf_spinup_cycles > 0
            else ""
        )
        + ". It is a filter: its 'reanalysis' rows are filter analyses (no smoother), which favours the trajectory "
        "methods on the early states of a window.\n"
        "* Persistence persists the *true* state at t0 + 24 h, so it beats the prior and OI forecasts at short "
        "leads (their analyses are far less accurate than the truth).\n"
    )
    (docs / "results.md").write_text("\n".join(lines) + "\n")
    payload = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(_rel(x) for x in sys.argv),
        "mode": a.mode,
        "config": {k: (_rel(v) if isinstance(v, Path) or k in ("truth", "train") else v) for k, v in vars(a).items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "prior": {"source": "appa_core/assets/demo_prior", "snapshot": _rel(r.prior_dir), "sha256": r.phash},
        "oi_build_s": r.oi_build_s,
        "timings_s": {k: v for k, v in walls.items()},
        "enkf_runs_s": enkf_times,
        "missing_runs": [" ".join(j) for j in r.missing()],
        "dates_scored": r.report_dates(),
        "dates_with_all_windows": r.window_dates(),
        "failures_this_invocation": r.skipped,
        "units": {k: v[3] for k, v in SCORED.items()},
        "aggregated": [
            {**dict(zip(("method", "observing", "task", "window_h", "var"), k, strict=True)), **v}
            for k, v in sorted(by_task.items(), key=str)
        ],
        "forecast_by_lead": [
            {**dict(zip(("method", "observing", "lead_h", "var"), k, strict=True)), **v}
            for k, v in sorted(by_lead.items(), key=str)
        ],
        "records": rows,
    }
    text = json.dumps({k: v for k, v in payload.items() if k != "records"}, indent=1)
    records_text = ",\n".join("  " + json.dumps(x, separators=(",", ":")) for x in rows)  # one record per line
    (docs / "results.json").write_text(text[:-2] + ',\n "records": [\n' + records_text + "\n ]\n}\n")
    log(f"wrote {docs / 'results.md'} and results.json ({len(rows)} records)")


def _last_run_note(r: Runner) -> str:
    """The wall time of the whole table (the last invocation that computed it all, ``last_run.json``) and of the
    last invocation that completed it, if another."""
    jobs = r.jobs()
    key = r._plan_key(jobs)
    runs = r._last_runs()
    full, last = runs.get(f"{key}/from-empty"), runs.get(key)
    out = []
    for d in (full, last):
        if d is None or (d is last and full is not None and d["finished"] == full["finished"]):
            continue
        n, total = len(d["computed"]), len(jobs)
        prior = d.get("prior")
        with_prior = "" if prior in (None, r.phash[:10]) else f" with the prior {prior} (same architecture and sampler)"
        run = (
            f"{d['wall_min']:.0f} min from an empty cache{with_prior}, against issue #8's bar of 120 min on 2 cores"
            if n == total
            else f"{d['wall_min']:.0f} min for the last invocation that completed it, which computed {n} of its "
            f"{total} runs (the others were in the cache)"
        )
        label = "wall time of the whole table" if n == total else "last invocation"
        out.append(f"* **{label}**: {run} ({_run_conditions(d)}).\n")
    return "".join(out)


def _run_conditions(d: dict[str, Any]) -> str:
    """How a ``last_run.json`` record ran: processes, threads, when it finished and the load at the end."""
    return (
        f"`--jobs {d['jobs']}`, {d['threads']} torch thread per process; finished {d['finished']}, load average "
        f"{d['load_average_end']} at the end"
    )


def timing_rows(r: Runner, walls: dict[str, list[float]]) -> str:
    """Mean wall seconds per run, by method and task (columns: observing systems), and totals per method."""
    obs = list(r.a.observing)
    cells: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(dict)
    for key, v in walls.items():
        m, task, o = key.split("|")
        cells[(m, task)][o] = v
    head = "| method | task | " + " | ".join(f"{o} (s per run)" for o in obs) + " | runs | total (s) |"
    lines = [head, "|---" * (len(obs) + 4) + "|"]
    for (m, task), per in sorted(cells.items(), key=lambda kv: (ORDER.get(kv[0][0], 99), kv[0][1])):
        vals = [per.get(o, per.get("-")) for o in obs]
        n = sum(len(v) for v in per.values())
        tot = sum(sum(v) for v in per.values())
        row = " | ".join(f"{np.mean(v):.0f}" if v else "-" for v in vals)
        lines.append(f"| {m} | {task} | {row} | {n} | {tot:.0f} |")
    totals = defaultdict(float)
    for key, v in walls.items():
        totals[key.split("|")[0]] += sum(v)
    out = "\n".join(lines) + "\n\n"
    out += "Totals: " + ", ".join(
        f"{m} {t / 60:.1f} min" for m, t in sorted(totals.items(), key=lambda kv: ORDER.get(kv[0], 99))
    )
    if r.oi_build_s:
        out += f" (+ {r.oi_build_s:.0f} s to build the OI prior, in each process that runs OI)"
    out += (
        "; climatology and persistence: < 1 s. Sampling times exclude the simulation of the observations (< 2 s). "
        "The unconditioned trajectory (one per date) serves both observing systems. Each time is the wall time of one "
        "single-threaded process; with `--jobs 2` two of them run side by side, one per core, so the table's wall "
        "time is about half the sum of these (the line 'wall time of the whole table' above gives the measured one). "
        "Absolute times vary with the load of the machine.\n"
    )
    return out


# ---------------------------------------------------------------------------------------------- plots
def make_plots(r: Runner, rows, by_task, by_lead, img: Path) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = r.a
    out = []
    colors = {"prior": "C0", "oi": "C1", "enkf": "C2", "climatology": "C7", "persistence": "C3", "unconditioned": "C4"}
    colors["ae_floor"], colors["prior_cal"] = "C5", "C6"
    shared = ("climatology", "persistence", "unconditioned", "ae_floor")  # independent of the observing system
    styles = {"sparse": "--", "dense": "-", "demo": ":"}
    show = ["Z500", "T850", "T2M", "U850"]
    # error vs lead time
    fig, axes = plt.subplots(1, len(show), figsize=(4.2 * len(show), 3.4))
    for ax, c in zip(axes, show, strict=True):
        for m in ORDER:
            for o in a.observing:
                pts = sorted((k[2], v["rmse"]) for k, v in by_lead.items() if k[0] == m and k[1] == o and k[3] == c)
                if pts and not (m in shared and o != a.observing[0]):
                    lab = m if m in shared else f"{m} ({o})"
                    ax.plot(*zip(*pts, strict=True), styles.get(o, "-"), color=colors[m], marker=".", label=lab)
        ax.set_title(f"{c} ({SCORED[c][3]})")
        ax.set_xlabel("lead time after the 24 h window (h)")
        ax.set_ylabel("RMSE")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "twin_rmse_vs_lead.png", dpi=90)
    plt.close(fig)
    out.append(("RMSE vs forecast lead time", "img/twin_rmse_vs_lead.png"))
    # error vs window length
    fig, axes = plt.subplots(1, len(show), figsize=(4.2 * len(show), 3.4))
    for ax, c in zip(axes, show, strict=True):
        for m in ("prior", "ae_floor", "oi", "enkf", "unconditioned", "climatology"):
            for o in a.observing:
                pts = sorted((k[3], v["rmse"]) for k, v in by_task.items()
                             if k[0] == m and k[1] == o and k[2] == "reanalysis" and k[4] == c)  # fmt: skip
                if pts and not (m in shared and o != a.observing[0]):
                    lab = m if m in shared else f"{m} ({o})"
                    ax.plot(*zip(*pts, strict=True), styles.get(o, "-"), color=colors[m], marker="o", label=lab)
        ax.set_title(f"{c} ({SCORED[c][3]})")
        ax.set_xlabel("reanalysis window (h)")
        ax.set_ylabel("RMSE over the window")
        ax.set_xticks(a.windows)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(img / "twin_rmse_vs_window.png", dpi=90)
    plt.close(fig)
    out.append(("RMSE vs reanalysis window length", "img/twin_rmse_vs_window.png"))
    # sample maps
    date = a.dates[0]
    _, times, _, tds = r.truth.get(date)
    t_last = times[states(24) - 1]
    for o in a.observing:
        panels = [("truth", tds.sel(time=t_last), None)]
        for m in SAMPLED:
            p = r.path(m, f"{date}_{o}_r24")
            if p.exists():
                ds = xr.open_zarr(p).sel(time=t_last).load()
                panels.append((f"{m} mean", ds.mean("member"), None))
                panels.append((f"{m} spread", ds.std("member", ddof=1), "spread"))
        if len(panels) == 1:
            continue
        fig, axes = plt.subplots(2, len(panels), figsize=(3.3 * len(panels), 4.6), squeeze=False)
        for row, c in enumerate(("Z500", "T850")):
            ref = _field(panels[0][1], c)
            lo, hi = float(ref.min()), float(ref.max())
            for col, (title, ds, kind) in enumerate(panels):
                ax = axes[row, col]
                f = _field(ds, c)
                kw = {"cmap": "viridis"} if kind else {"cmap": "RdYlBu_r", "vmin": lo, "vmax": hi}
                im = ax.pcolormesh(f.longitude, f.latitude, f.values, shading="auto", **kw)
                ax.set_title(f"{c} {title}", fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
        fig.suptitle(f"{date} + 24 h, {o} observations, 24 h reanalysis (last state)", fontsize=9)
        fig.tight_layout()
        name = f"twin_maps_{o}.png"
        fig.savefig(img / name, dpi=80)
        plt.close(fig)
        out.append((f"Truth, posterior mean and spread at t0 + 24 h ({date}, {o})", f"img/{name}"))
    return out


# ---------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
    torch.set_num_threads(a.threads)
    a.cache.mkdir(parents=True, exist_ok=True)
    r = Runner(a, argv)
    log(f"twin ({a.mode}): dates {a.dates}, observing {a.observing}, windows {a.windows} h, lead {a.lead_hours} h, "
        f"methods {a.methods}, {a.members} members, {a.steps} steps; cache {a.cache}")  # fmt: skip
    if not a.report_only:
        r.run()
    else:
        r.report()
    log(f"done in {(time.perf_counter() - r.t_start) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
