"""Guided-sampler benchmark: cost of MMPS guidance relative to an unguided denoiser call, and a comparison with
azula's ``MMPSDenoiser`` on the same Gaussian problem.

Writes the ``## Sampler`` section of ``docs/benchmarks.md`` (replacing an existing one). Run::

    OMP_NUM_THREADS=1 python benchmarks/sampler.py            # ~2-3 minutes on 2 shared CPU cores

Parts:

1. A latent-style prior (random-weight convolutional denoiser on latents ``[T=4, 8, 16, 32]``, a conv decoder
   upsampling to states ``[T=4, C=4, 32, 64]``, D = 32768) with point observations through the decoder:
   seconds per guided denoiser call over seconds per unguided call, as the solver iterations (1, 2, 4, 8;
   fixed iterations, GMRES) and the number of observations (1e2 .. 1e5) vary; peak RSS of a fresh process
   running each configuration (``resource.getrusage``).
2. Dense ``GaussianPrior`` (D = 1024), 200 point observations: our MMPS against azula 0.11.1's ``MMPSDenoiser``
   (same denoiser, operator, noise, iterations), time per call and max abs error against the exact posterior
   denoiser. azula is optional (``pip install azula --no-deps einops``); the comparison is skipped without it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _azula import azula_mmps  # noqa: E402
from _report import write_section  # noqa: E402

from appa_core.diffusion.precondition import edm_coefficients  # noqa: E402
from appa_core.diffusion.schedule import LogLinearSchedule  # noqa: E402
from appa_core.grid import Grid  # noqa: E402
from appa_core.guidance import MMPS, PosteriorDenoiser, guided_denoiser  # noqa: E402
from appa_core.obs import ObsSet, SparseLinearOperator  # noqa: E402
from appa_core.obs.errors import DiagonalGaussian  # noqa: E402
from appa_core.priors.base import DiffusionPrior  # noqa: E402
from appa_core.priors.gaussian import GaussianPrior  # noqa: E402
from appa_core.spec import StateSpec  # noqa: E402

T, C, H, W, CL = 4, 4, 32, 64, 8
SPEC = StateSpec(
    surface=("2m_temperature", "10m_u_component_of_wind", "10m_v_component_of_wind", "mean_sea_level_pressure")
)
GRID = Grid.equiangular(H, W, poles=False)
T0 = np.datetime64("2021-01-01T00", "ns")


class Picks(SparseLinearOperator):
    """Point observations of flat state entries (benchmark helper)."""

    def __init__(self, index: np.ndarray, values: np.ndarray, std: float = 1.0) -> None:
        self._index, self._values = index, values
        super().__init__(noise=DiagonalGaussian(std), name="picks")

    @property
    def size(self) -> int:
        return int(self._index.size)

    @property
    def values(self) -> torch.Tensor:
        return torch.as_tensor(self._values)

    def _prepare(self, grid, spec, times):  # type: ignore[no-untyped-def]
        d = times.size * spec.n_channels * grid.shape[0] * grid.shape[1]
        a = sp.csr_array((np.ones(self.size), (np.arange(self.size), self._index)), shape=(self.size, d))
        self._set_matrix(a)


class ConvPrior(DiffusionPrior):
    """Random-weight latent prior of realistic structure (conv denoiser + conv decoder), for timing only."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        self.grid, self.spec, self.schedule = GRID, SPEC, LogLinearSchedule()
        self.window, self.timestep, self.dtype = T, np.timedelta64(6, "h").astype("timedelta64[ns]"), torch.float32
        self.net = nn.Sequential(
            nn.Conv2d(CL + 1, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(),
            nn.Conv2d(64, 64, 3, padding=1), nn.SiLU(), nn.Conv2d(64, CL, 3, padding=1),
        )  # fmt: skip
        self.dec = nn.Sequential(
            nn.Conv2d(CL, 64, 3, padding=1), nn.SiLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(64, 32, 3, padding=1), nn.SiLU(), nn.Conv2d(32, C, 3, padding=1),
        )  # fmt: skip
        for m in (self.net, self.dec):
            m.requires_grad_(False)

    def event_shape(self, length: int) -> tuple[int, ...]:
        return (length, CL, H // 2, W // 2)

    def denoise(self, z_t, sigma, times=None):  # type: ignore[no-untyped-def]
        b, t = z_t.shape[:2]
        sig = torch.as_tensor(sigma, dtype=z_t.dtype).reshape(-1).expand(b)
        c_skip, c_out, c_in, c_noise = (c[:, None, None, None, None] for c in edm_coefficients(sig))
        x = (c_in * z_t).reshape(b * t, CL, H // 2, W // 2)
        cn = c_noise.expand(b, t, 1, H // 2, W // 2).reshape(b * t, 1, H // 2, W // 2)
        f = self.net(torch.cat([x, cn], 1)).reshape(z_t.shape)
        return c_skip * z_t + c_out * f

    def decode(self, z):  # type: ignore[no-untyped-def]
        b, t = z.shape[:2]
        return self.dec(z.reshape(b * t, CL, H // 2, W // 2)).reshape(b, t, C, H, W) * 5.0 + 280.0

    def encode(self, x):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def _time(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def run_one(cfg: dict) -> dict:
    """One latent-prior configuration: ``{"iters": k or 0 (unguided), "nobs": M}``."""
    import resource

    torch.set_num_threads(1)
    prior = ConvPrior()
    times = (T0 + prior.timestep * np.arange(T)).astype("datetime64[ns]")
    members = 2
    obs, guidance = None, None
    if cfg["iters"] > 0:
        rng = np.random.default_rng(0)
        idx = rng.integers(0, T * C * H * W, cfg["nobs"])
        obs = ObsSet([Picks(idx, rng.normal(280, 5, cfg["nobs"]))]).prepare(GRID, SPEC, times)
        guidance = MMPS(solver="gmres", maxiter=cfg["iters"], tol=None)
    den = PosteriorDenoiser(prior, times, [0], T, [(0, T)], 0, T, obs=obs, guidance=guidance)
    z = torch.randn(members, *prior.event_shape(T), generator=torch.Generator().manual_seed(0))
    sig = torch.full((members,), 1.0)
    sec = _time(lambda: den(z, sig), repeat=3)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {**cfg, "sec": sec, "peak_mb": peak_mb}


def _subprocess(cfg: dict) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(cfg)], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def azula_comparison() -> list[dict] | None:
    torch.set_num_threads(1)
    grid = Grid.equiangular(16, 16)
    spec = StateSpec(surface=SPEC.surface)
    g = torch.Generator().manual_seed(0)
    d = 4 * 16 * 16
    i = torch.arange(d, dtype=torch.float64)
    cov = torch.exp(-((i[:, None] - i[None]) ** 2) / 50.0) + 0.05 * torch.eye(d, dtype=torch.float64)
    prior = GaussianPrior(torch.zeros(1, 4, 16, 16, dtype=torch.float64), cov, grid, spec)
    rng = np.random.default_rng(1)
    idx = rng.choice(d, 200, replace=False)
    obs = ObsSet([Picks(idx, rng.normal(0, 1, 200), std=0.1)]).prepare(grid, spec, np.array([T0]))
    post = prior.condition(obs.matrix(), obs.values, obs.noise.dense_cov())
    shape = prior.state_shape
    observe = lambda z: obs(prior.decode(z))  # noqa: E731
    if azula_mmps(prior.denoise, observe, shape, obs.values, obs.noise.variance(), 1) is None:
        return None
    rows = []
    b = 4
    for sigma in (0.1, 10.0):
        z = prior.encode(prior.sample(b, g)) + sigma * torch.randn(b, *shape, generator=g, dtype=torch.float64)
        sig = torch.full((b,), sigma, dtype=torch.float64)
        exact = post.denoise(z, sig).reshape(b, -1)
        for k in (1, 2, 4, 8, 32):
            ours = guided_denoiser(
                prior.denoise, observe, obs.values, obs.noise, MMPS("gmres", k, None, warm_start=False)
            )
            az = azula_mmps(prior.denoise, observe, shape, obs.values, obs.noise.variance(), k)
            assert az is not None
            o = ours(z, sig).reshape(b, -1)
            a = az(z, sig).reshape(b, -1)
            rows.append(
                {
                    "sigma": sigma, "iters": k,
                    "ours_ms": 1e3 * _time(lambda f=ours, z=z, s=sig: f(z, s), 3),
                    "azula_ms": 1e3 * _time(lambda f=az, z=z, s=sig: f(z, s), 3),
                    "ours_err": float((o - exact).abs().max()), "azula_err": float((a - exact).abs().max()),
                }
            )  # fmt: skip
    return rows


def main() -> None:
    t_start = time.time()
    base = _subprocess({"iters": 0, "nobs": 0})
    iters_rows = [_subprocess({"iters": k, "nobs": 1000}) for k in (1, 2, 4, 8)]
    nobs_rows = [_subprocess({"iters": 4, "nobs": m}) for m in (100, 1000, 10_000, 100_000)]
    az = azula_comparison()
    lines = [
        "## Sampler",
        "",
        f"`benchmarks/sampler.py`, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"1 thread, float32 (part 1) / float64 (part 2); run took {time.time() - t_start:.0f} s on a shared 2-core "
        "machine, so absolute times are noisy.",
        "",
        "Latent-style prior: conv denoiser on latents [T=4, 8, 16, 32], conv decoder to states [T=4, C=4, 32, 64]; "
        "2 members; one denoiser call at sigma = 1 (a sampler step is 1 call for DDIM/LMS, 3 for PC). MMPS with "
        "GMRES, fixed iterations, point observations through the decoder. Peak RSS of a fresh process "
        "(includes ~300 MB of torch).",
        "",
        f"Unguided call: {base['sec'] * 1e3:.1f} ms, peak RSS {base['peak_mb']:.0f} MB.",
        "",
        "| solver iterations | observations | guided call (ms) | guided / unguided | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for r in iters_rows + nobs_rows:
        lines.append(
            f"| {r['iters']} | {r['nobs']:,} | {r['sec'] * 1e3:.1f} | {r['sec'] / base['sec']:.1f} "
            f"| {r['peak_mb']:.0f} |"
        )
    lines += ["", "Guided cost is about (1 + k) network passes (1 forward, k VJPs through the denoiser) plus "
              "k JVPs and k VJPs through decoder and operators, k = iterations (the guided step is combined from "
              "the products; this benchmark's decoder is a plain module, so its JVPs go through forward-mode AD).",
              ""]  # fmt: skip
    if az is None:
        lines += ["azula not installed: comparison skipped.", ""]
    else:
        lines += [
            "Same problem through azula 0.11.1 `MMPSDenoiser` (dense GaussianPrior, D = 1024, 200 point observations, "
            "noise std 0.1, 4 members, GMRES): time per guided call and max abs error against the exact posterior "
            "denoiser (float64).",
            "",
            "| sigma | iterations | ours (ms) | azula (ms) | ours error | azula error |",
            "|---|---|---|---|---|---|",
        ]
        for r in az:
            lines.append(
                f"| {r['sigma']:g} | {r['iters']} | {r['ours_ms']:.1f} | {r['azula_ms']:.1f} | "
                f"{r['ours_err']:.2e} | {r['azula_err']:.2e} |"
            )
        lines.append("")
    section = "\n".join(lines)
    write_section(section)
    print(section)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--one", help="internal: run one configuration (JSON) and print its result")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
    else:
        main()
