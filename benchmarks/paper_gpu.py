"""The ``paper`` preset where a GPU is at hand (issue #14): one training step of each network, one guided denoiser
call with 10^5 observations, and the peak memory of each.

The networks have the ``paper`` preset's architecture (721 x 1440 grid, 71 channels, 24 hourly states per window;
``appa prior params --preset paper``) and random weights: the times and the memory do not depend on the weights.

* **autoencoder step**: ``autoencoder_loss`` of one state (batch ``--batch``), backward, AdamW step;
* **denoiser step**: the denoising loss of one window of latent states, backward, AdamW step;
* **guided call**: one :class:`~appa_core.guidance.PosteriorDenoiser` call on one window (one member) at noise level
  sigma = 1, with ``--obs`` point observations of single state values (random entries of the window: places, times
  and channels; ``Picks`` of ``benchmarks/sampler.py``), MMPS with ``k`` GMRES iterations from zero for each ``--k``.

Each part runs ``--warmup`` times, then ``--repeats`` times: the median time (with min-max), and the peak memory
allocated on the device during the timed runs (``torch.cuda.max_memory_allocated``; on CPU: not measured). A part
that runs out of memory is reported as such, and the next part runs. It needs ``appa_core`` (no plugin, no data) and
its imports on this path: torch, numpy, scipy, xarray, attrs, safetensors, tqdm and dask.

Run, from the repository root::

    PYTHONPATH=. python3 benchmarks/paper_gpu.py --out paper_gpu.json

On a machine without internet whose python has all of these but dask (e.g. a GPU image with torch), bring dask's
pure-Python wheels: download them where pip works (``pip download --no-deps -d .whl dask partd locket``) and
install them there before the run (``pip install --no-index --no-deps --target /tmp/site .whl/*.whl`` and
``PYTHONPATH=.:/tmp/site``).

Check here on a CPU (same code, tiny preset)::

    python benchmarks/paper_gpu.py --device cpu --preset tiny --obs 2000 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from sampler import Picks  # noqa: E402  (the benchmarks' point-observation operator)

from appa_core.data.stats import NormStats  # noqa: E402
from appa_core.guidance import MMPS, PosteriorDenoiser, observation_time_ranges  # noqa: E402
from appa_core.nn.autoencoder import autoencoder_loss  # noqa: E402
from appa_core.nn.presets import build, count_parameters, get_preset  # noqa: E402
from appa_core.obs import ObsSet  # noqa: E402
from appa_core.priors.latent import Prior  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median time (s) with min-max, and the peak device memory (GiB) of the timed runs; ``error`` on failure."""
    out: dict = {"part": name}
    try:
        for _ in range(warmup):
            fn()
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            _sync(device)
            ts.append(time.perf_counter() - t0)
        out.update(median_s=statistics.median(ts), min_s=min(ts), max_s=max(ts))
        if device.type == "cuda":
            out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    except torch.OutOfMemoryError as e:
        out["error"] = "out of memory: " + str(e).splitlines()[0]
    except RuntimeError as e:  # a part that cannot run here is reported, the next part runs
        out["error"] = f"{type(e).__name__}: " + str(e).splitlines()[0]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(json.dumps(out), flush=True)
    return out


def autoencoder_step(preset: str, device: torch.device, batch: int) -> Callable[[], object]:
    p = get_preset(preset)
    ae, _ = build(p, device=device)
    x = torch.randn(batch, p.spec.n_channels, p.grid[0], p.grid[1], device=device)
    w = torch.ones(p.grid[0], 1, device=device)
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        autoencoder_loss(ae(x), x, w).backward()
        opt.step()

    return step


def denoiser_step(preset: str, device: torch.device, batch: int) -> Callable[[], object]:
    p = get_preset(preset)
    _, den = build(p, device=device)
    c, h, w = p.autoencoder.latent_shape(p.grid[0], p.grid[1])
    z = torch.randn(batch, p.denoiser["window"], c, h, w, device=device)  # type: ignore[index]
    sigma = torch.rand(batch, device=device) * 3
    opt = torch.optim.AdamW(den.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        noisy = z + sigma[:, None, None, None, None] * torch.randn_like(z)
        (den.denoise(noisy, sigma, None) - z).square().mean().backward()
        opt.step()

    return step


def paper_prior(preset: str, device: torch.device) -> Prior:
    """A :class:`Prior` of the preset's architecture with random weights (the denoiser's zero-initialised output
    made non-zero, so that its Jacobian is not trivial) and plausible state statistics."""
    p = get_preset(preset)
    torch.manual_seed(0)
    ae, den = build(p)
    with torch.no_grad():
        for prm in den.parameters():
            if prm.abs().max() == 0:
                prm.normal_(0.0, 0.02)
    n = p.spec.n_channels
    stats = NormStats(spec=p.spec, mean=np.linspace(250.0, 290.0, n), std=np.linspace(5.0, 10.0, n))
    prior = Prior(ae, den, stats, p.make_grid(), p.spec, timestep=p.timestep, preset=preset)
    return prior.to(device).eval().requires_grad_(False)


def guided_call(prior: Prior, device: torch.device, n_obs: int, k: int) -> Callable[[], object]:
    length = prior.window
    times = (np.datetime64("2020-01-01T00", "ns") + np.arange(length) * prior.timestep).astype("datetime64[ns]")
    g = np.random.default_rng(0)
    d = length * prior.spec.n_channels * prior.grid.shape[0] * prior.grid.shape[1]
    picks = Picks(g.choice(d, n_obs, replace=False), g.normal(270.0, 10.0, n_obs))
    obs = ObsSet([picks]).prepare(prior.grid, prior.spec, times)
    den = PosteriorDenoiser(
        prior, times, [0], length, [(0, length)], 0, length, obs=obs,
        row_range=observation_time_ranges(obs, prior, length), guidance=MMPS(maxiter=k, tol=None, warm_start=False),
    )  # fmt: skip
    z = torch.randn(1, *prior.event_shape(length), device=device)
    sigma = torch.ones(1, device=device)
    return lambda: den(z, sigma)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--preset", default="paper")
    ap.add_argument("--obs", type=int, default=100_000, help="observations of the guided call")
    ap.add_argument("--k", type=int, nargs="+", default=[1, 4], help="GMRES iterations of the guided calls")
    ap.add_argument("--batch", type=int, default=1, help="states (autoencoder) and windows (denoiser) per step")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    a = ap.parse_args()
    device = torch.device(a.device)
    info = {
        "preset": a.preset, "parameters": count_parameters(a.preset), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__, "obs": a.obs, "batch": a.batch, "repeats": a.repeats,
        "date": time.strftime("%Y-%m-%d"),
    }  # fmt: skip
    print(json.dumps(info), flush=True)
    rows = [
        measure("autoencoder training step", autoencoder_step(a.preset, device, a.batch), device, a.warmup, a.repeats),
        measure("denoiser training step", denoiser_step(a.preset, device, a.batch), device, a.warmup, a.repeats),
    ]
    prior = paper_prior(a.preset, device)
    for k in a.k:
        call = guided_call(prior, device, a.obs, k)
        rows.append(measure(f"guided call, {a.obs} observations, k={k}", call, device, a.warmup, a.repeats))
    if a.out is not None:
        a.out.write_text(json.dumps({"info": info, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
