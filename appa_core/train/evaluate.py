"""Evaluation of a trained prior: reconstruction RMSE, denoiser loss by noise level, unconditional samples.

Used to produce the numbers of ``docs/training.md``::

    python -m appa_core.train.evaluate --prior appa_core/assets/demo_prior \\
        --data data/naturerun_heldout.zarr --out docs/ --samples 8
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from appa_core.priors.latent import Prior
from appa_core.train.data import StateData, contiguous_starts, load_states

__all__ = ["denoiser_loss_by_sigma", "evaluate_prior", "reconstruction_rmse", "sample_unconditional"]


@torch.no_grad()
def reconstruction_rmse(prior: Prior, data: StateData, batch: int = 32) -> dict[str, dict[str, float]]:
    """Area-weighted RMSE per channel of ``decode(encode(x))`` on ``data`` (physical and standardized)."""
    w = data.grid.area_weights_tensor(torch.float64)
    se = torch.zeros(data.x.shape[1], dtype=torch.float64)
    for i in range(0, len(data), batch):
        x = data.x[i : i + batch][None]
        err = (prior.decode(prior.encode(x)) - x)[0].double()
        se += (err.square() * w).mean(dim=(-2, -1)).sum(0)
    rmse = (se / len(data)).sqrt()
    std = torch.as_tensor(np.array(prior.stats.std), dtype=torch.float64)
    names = data.spec.channel_names()
    return {
        "physical": {n: float(v) for n, v in zip(names, rmse, strict=True)},
        "standardized": {n: float(v) for n, v in zip(names, rmse / std, strict=True)},
    }


@torch.no_grad()
def denoiser_loss_by_sigma(
    prior: Prior, data: StateData, sigmas: Sequence[float] = (0.01, 0.1, 1.0, 10.0), windows: int = 32, seed: int = 0
) -> dict[str, float]:
    r"""Mean EDM loss :math:`\lambda(\sigma)\|D(z+\sigma\epsilon) - z\|^2` per element, on encoded windows of
    ``data``, for each noise level."""
    K = prior.window
    starts = contiguous_starts(data.times, K, prior.timestep)
    starts = starts[np.linspace(0, starts.size - 1, min(windows, starts.size)).round().astype(int)]
    g = torch.Generator().manual_seed(seed)
    out = {}
    for s in sigmas:
        tot = 0.0
        for i0 in starts:
            x = data.x[i0 : i0 + K][None]
            z = prior.encode(x)
            eps = torch.randn(z.shape, generator=g)
            d = prior.denoise(z + s * eps, torch.tensor(s), data.times[i0 : i0 + K])
            tot += float(((d - z) ** 2).mean()) * (1 / s**2 + 1)
        out[f"{s:g}"] = tot / len(starts)
    return out


@torch.no_grad()
def sample_unconditional(prior: Prior, times: np.ndarray, members: int, steps: int = 64, seed: int = 0) -> Tensor:
    """Unconditional latent trajectories with a deterministic DDIM (Euler) sampler on the prior's schedule.

    ``x_{t-} = x0 + (sigma_{t-}/sigma_t)(x_t - x0)``, ``t`` uniform in (0, 1]. Returns ``[members, T, c, h, w]``.
    """
    g = torch.Generator().manual_seed(seed)
    z = prior.schedule.sigma_max * torch.randn((members, *prior.event_shape(len(times))), generator=g)
    ts = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        s_t = prior.schedule.sigma(ts[i])
        x0 = prior.denoise(z, s_t, times)
        s_next = prior.schedule.sigma(ts[i + 1]) if i + 1 < steps else torch.tensor(0.0)
        z = x0 + (s_next / s_t) * (z - x0)
    return z


def _zonal_plot(prior: Prior, truth: Tensor, samples: Tensor, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = prior.spec
    show = [
        ("2m_temperature", None),
        ("temperature", 500),
        ("u_component_of_wind", 250),
        ("geopotential", 500),
        ("specific_humidity", 850),
        ("mean_sea_level_pressure", None),
    ]
    chans = [spec.index(v, lev) for v, lev in show if v in spec.variables and (lev is None or lev in spec.levels)]
    chans = chans or list(range(min(6, spec.n_channels)))
    names = spec.channel_names()
    lat = prior.grid.lat
    ncol = min(3, len(chans))
    nrow = math.ceil(len(chans) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.2 * nrow), squeeze=False)
    for ax in axes.flat[len(chans) :]:
        ax.set_visible(False)
    for ax, c in zip(axes.flat, chans, strict=False):
        var = spec.channels[c].variable
        tz = truth[:, c].mean(dim=(0, -1)).numpy()
        ts = truth[:, c].mean(dim=-1).std(dim=0).numpy()
        sz = samples[..., c, :, :].reshape(-1, *samples.shape[-2:]).mean(dim=(0, -1)).numpy()
        ss = samples[..., c, :, :].reshape(-1, *samples.shape[-2:]).mean(dim=-1).std(dim=0).numpy()
        ax.plot(lat, tz, "k-", label="nature run")
        ax.fill_between(lat, tz - ts, tz + ts, color="k", alpha=0.15)
        ax.plot(lat, sz, "C1--", label="prior samples")
        ax.fill_between(lat, sz - ss, sz + ss, color="C1", alpha=0.2)
        ax.set_title(f"{names[c]} [{spec.units.get(var, '')}]", fontsize=9)
        ax.set_xlabel("latitude")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle("Zonal mean +/- std over time: nature run (held-out) vs unconditional prior samples")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate_prior(
    prior: Prior, data: StateData, out: Path, samples: int = 8, sample_steps: int = 64
) -> dict[str, Any]:
    """All numbers of ``docs/training.md``; writes ``out/demo_prior_eval.json`` and
    ``out/demo_prior_zonal_mean.png``."""
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"n_states": len(data), "period": [str(data.times[0]), str(data.times[-1])]}
    t0 = time.perf_counter()
    res["reconstruction_rmse"] = reconstruction_rmse(prior, data)
    res["denoiser_loss_by_sigma"] = denoiser_loss_by_sigma(prior, data)
    K = prior.window
    starts = contiguous_starts(data.times, K, prior.timestep)
    pick = starts[np.linspace(0, starts.size - 1, samples).round().astype(int)]
    zs = []
    t1 = time.perf_counter()
    for j, i0 in enumerate(pick):
        zs.append(sample_unconditional(prior, data.times[i0 : i0 + K], 1, steps=sample_steps, seed=j))
    res["sample_seconds_per_window"] = (time.perf_counter() - t1) / len(pick)
    z = torch.cat(zs)
    with torch.no_grad():
        x = prior.decode(z)  # [S, K, C, H, W]
    truth = data.x
    w = data.grid.area_weights_tensor(torch.float64)
    names = data.spec.channel_names()

    def gstats(a: Tensor) -> tuple[np.ndarray, np.ndarray]:
        gm = (a.double() * w).mean(dim=(-2, -1))  # [N, C] global means
        spread = ((a.double() - gm[..., None, None]).square() * w).mean(dim=(-2, -1)).sqrt()  # spatial std
        return gm.numpy(), spread.numpy()

    tg, tsp = gstats(truth)
    sg, ssp = gstats(x.reshape(-1, *x.shape[2:]))
    res["samples"] = {
        n: {
            "truth_global_mean": float(tg[:, i].mean()),
            "samples_global_mean": float(sg[:, i].mean()),
            "truth_spatial_std": float(tsp[:, i].mean()),
            "samples_spatial_std": float(ssp[:, i].mean()),
            "truth_pointwise_std_over_time": float(truth[:, i].double().std(dim=0).mean()),
            "samples_pointwise_std_over_members": float(
                x[:, :, i].reshape(-1, *x.shape[-2:]).double().std(dim=0).mean()
            ),
        }
        for i, n in enumerate(names)
    }
    # temporal coherence: mean abs 6-hour tendency (area-weighted), truth vs samples
    td = (truth[1:] - truth[:-1]).abs().double() * w
    sd = (x[:, 1:] - x[:, :-1]).abs().double() * w
    res["mean_abs_6h_tendency"] = {
        n: {"truth": float(td[:, i].mean()), "samples": float(sd[:, :, i].mean())} for i, n in enumerate(names)
    }
    res["eval_seconds"] = time.perf_counter() - t0
    _zonal_plot(prior, truth, x, out / "demo_prior_zonal_mean.png")
    (out / "demo_prior_eval.json").write_text(json.dumps(res, indent=1))
    return res


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m appa_core.train.evaluate")
    parser.add_argument("--prior", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--time", nargs=2, default=None, help="start end (inclusive dates)")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args(argv)
    prior = Prior.load(args.prior)
    data = load_states(args.data, prior.spec, tuple(args.time) if args.time else None)
    res = evaluate_prior(prior, data, Path(args.out), samples=args.samples, sample_steps=args.steps)
    print(json.dumps({k: v for k, v in res.items() if k != "samples"}, indent=1)[:4000])
    return 0 if all(math.isfinite(v) for v in res["denoiser_loss_by_sigma"].values()) else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
