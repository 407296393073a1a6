"""Calibration of the sampler's defaults on a linear-Gaussian problem, where the exact posterior is known.

A Gaussian prior (AR(1) in time, a random spatial covariance; D = 2 x 3 x 4 x 5 = 120) is observed at 37 points
with Gaussian errors (std 0.3 to 1 in units of the prior std). For each sampler and step count, and for each
MMPS solve setting, the ensemble of ``--members`` posterior draws (one seed) is compared with the exact Kalman
posterior:

* **variance ratio**: mean over the D components of (ensemble variance / exact posterior variance); its Monte-Carlo
  standard error is about ``sqrt(2 / members / D_eff)``;
* **mean error**: RMS over components of (ensemble mean - exact mean) / exact posterior std;
* the denoiser calls per member and, for the solve settings, the iterations and the worst relative residual.

Both schedules are measured: the log-linear one of ``GaussianPrior`` and the rectified one of the latent priors.
Run::

    OMP_NUM_THREADS=2 python benchmarks/calibration.py [--members 1000] [--out docs/calibration.json]
    OMP_NUM_THREADS=2 python benchmarks/calibration.py --solves-only   # the solve settings, warm start on / off

and paste the printed tables into ``docs/sampler.md`` ("Calibrated defaults").
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import attrs
import numpy as np
import scipy.sparse as sp
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appa_core.diffusion.schedule import LogLinearSchedule, RectifiedSchedule  # noqa: E402
from appa_core.grid import Grid  # noqa: E402
from appa_core.obs import ObsSet, SparseLinearOperator  # noqa: E402
from appa_core.obs.errors import DiagonalGaussian  # noqa: E402
from appa_core.priors.gaussian import GaussianPrior  # noqa: E402
from appa_core.sampler import Sampler  # noqa: E402
from appa_core.spec import StateSpec  # noqa: E402

SPEC = StateSpec(surface=("2m_temperature", "10m_u_component_of_wind", "mean_sea_level_pressure"))
GRID = Grid.equiangular(4, 5)
T0 = np.datetime64("2021-03-21T00", "ns")


@attrs.define(kw_only=True, eq=False)
class Picks(SparseLinearOperator):
    """Point observations of flat state entries ``x.reshape(-1)[index]`` (benchmark helper)."""

    index: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.int64))
    obs: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.float64))

    @property
    def size(self) -> int:
        return int(self.index.size)

    @property
    def values(self) -> torch.Tensor:
        return torch.as_tensor(self.obs)

    def _prepare(self, grid, spec, times) -> None:  # type: ignore[no-untyped-def]
        d = times.size * spec.n_channels * grid.shape[0] * grid.shape[1]
        m = self.size
        self._set_matrix(sp.csr_array((np.ones(m), (np.arange(m), self.index)), shape=(m, d)))


def problem(schedule: object, n_obs: int = 37, seed: int = 0) -> tuple[GaussianPrior, Picks, GaussianPrior]:
    """(prior, observations, exact posterior)."""
    g = torch.Generator().manual_seed(seed)
    n = SPEC.n_channels * GRID.shape[0] * GRID.shape[1]
    a = torch.randn(n, n, generator=g, dtype=torch.float64)
    s_space = a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
    s_space = s_space / torch.diagonal(s_space).sqrt()[:, None] / torch.diagonal(s_space).sqrt()[None]
    r_time = 0.8 ** torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    mean = torch.zeros(2, SPEC.n_channels, *GRID.shape, dtype=torch.float64)
    prior = GaussianPrior(mean, torch.kron(r_time, s_space), GRID, SPEC, schedule=schedule)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    truth = prior.sample(1, torch.Generator().manual_seed(seed + 1))[0].reshape(-1).numpy()
    idx = rng.choice(prior.dim, n_obs, replace=False)
    std = rng.uniform(0.3, 1.0, n_obs)
    op = Picks(index=idx, obs=truth[idx] + rng.normal(0, std), noise=DiagonalGaussian(std), name="picks")
    obs = ObsSet([op]).prepare(GRID, SPEC, (T0 + np.arange(2) * np.timedelta64(6, "h")).astype("datetime64[ns]"))
    post = prior.condition(obs.matrix(), obs.values, obs.noise.dense_cov())
    return prior, op, post


def measure(prior: GaussianPrior, op: Picks, post: GaussianPrior, members: int, **kw: object) -> dict[str, float]:
    smp = Sampler(prior, progress=False, on_failure="ignore", **kw)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    res = smp.sample(obs=[op], start=T0, length=2, members=members, seed=0)
    wall = time.perf_counter() - t0
    x = res.x.reshape(members, -1)
    var = torch.diagonal(post.dense_cov())
    ratio = float((x.var(0) / var).mean())
    err = float((((x.mean(0) - post.mean.reshape(-1)) / var.sqrt()) ** 2).mean().sqrt())
    rep = res.solve
    return {
        "variance_ratio": ratio,
        "mean_error": err,
        "calls": float(res.calls),
        "wall_s": wall,
        "max_iterations": float(rep["max_iterations"]) if rep else float("nan"),
        "mean_iterations": float(rep["mean_iterations"]) if rep else float("nan"),
        "worst_residual": float(rep["max_residual"]) if rep else float("nan"),
    }


def solves(members: int) -> int:
    """The MMPS solve settings under the default sampler, with and without the warm start."""
    prior, op, post = problem(RectifiedSchedule())
    settings = [(2, None, False), (4, None, False), (None, 1e-1, True), (None, 1e-2, True), (None, 1e-3, True),
                (None, 1e-1, False), (None, 1e-2, False), (None, 1e-3, False)]  # fmt: skip
    print("| solve | warm start | GMRES iterations (mean / max) | variance ratio | mean error (posterior std) |")
    print("|---|---|---|---|---|")
    for iters, tol, warm in settings:
        r = measure(prior, op, post, members, solver_iters=iters, solver_tol=tol, warm_start=warm)
        label = f"{iters} fixed" if tol is None else f"tol {tol:g}"
        print(
            f"| {label} | {'yes' if warm else 'no'} | {r['mean_iterations']:.1f} / {r['max_iterations']:.0f} "
            f"| {r['variance_ratio']:.3f} | {r['mean_error']:.3f} |",
            flush=True,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--members", type=int, default=1000)
    p.add_argument("--out", default=None, help="write all numbers as JSON")
    p.add_argument(
        "--solves-only", action="store_true",
        help="only the MMPS solve settings under the default sampler (LMS 24, rectified schedule), warm start on "
        "and off: the second table of docs/sampler.md",
    )  # fmt: skip
    a = p.parse_args(argv)
    if a.solves_only:
        return solves(a.members)
    rows = []
    samplers = [
        ("pc", 16), ("pc", 32), ("pc", 64), ("ddim", 16), ("ddim", 32), ("ddim", 64),
        ("lms", 16), ("lms", 32), ("heun", 8), ("heun", 16), ("heun", 32),
    ]  # fmt: skip
    for sched_name, schedule in (("loglinear", LogLinearSchedule()), ("rectified", RectifiedSchedule())):
        prior, op, post = problem(schedule)
        for name, steps in samplers:
            r = measure(prior, op, post, a.members, sampler=name, steps=steps, solver_iters=None, solver_tol=1e-6)
            rows.append({"schedule": sched_name, "sampler": name, "steps": steps, "solve": "tol 1e-6", **r})
            print(json.dumps(rows[-1]), flush=True)
        for iters, tol in ((2, None), (16, None), (None, 1e-2), (None, 1e-3), (None, 1e-4)):
            label = f"{iters} fixed" if tol is None else f"tol {tol:g}"
            r = measure(prior, op, post, a.members, sampler="heun", steps=16, solver_iters=iters, solver_tol=tol)
            rows.append({"schedule": sched_name, "sampler": "heun", "steps": 16, "solve": label, **r})
            print(json.dumps(rows[-1]), flush=True)
    print("\n| schedule | sampler | steps | calls/member | solve | variance ratio | mean error (post. std) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['schedule']} | {r['sampler']} | {r['steps']} | {r['calls']:.0f} | {r['solve']} "
            f"(iters max {r['max_iterations']:.0f}, residual {r['worst_residual']:.1e}) | {r['variance_ratio']:.3f} "
            f"| {r['mean_error']:.3f} |"
        )
    if a.out:
        Path(a.out).write_text(json.dumps({"members": a.members, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
