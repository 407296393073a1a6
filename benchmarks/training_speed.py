"""Training throughput of the demo preset on CPU: samples per second of one optimizer step, by variant.

Autoencoder (batch 8 states, 48 x 96 x 24 channels) and denoiser (batch 8 windows of K = 8 latent states), each
timed as the median of ``--repeats`` steps after ``--warmup`` steps, interleaved across variants so that machine
noise hits all of them alike:

* ``threads``: ``torch.set_num_threads(n)`` for n in ``--threads``;
* ``channels_last`` (autoencoder only): the module and the batch in ``torch.channels_last`` memory format;
* ``cached latents`` (denoiser only) is not a variant here: ``appa train denoiser`` always trains on latents encoded
  once (``latents.safetensors``); the encoder's share is the autoencoder's forward time.

Run on an idle machine::

    python benchmarks/training_speed.py [--threads 1 2] [--repeats 7]

and paste the table into ``docs/training.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from appa_core.nn.autoencoder import Autoencoder, autoencoder_loss  # noqa: E402
from appa_core.nn.denoiser import LatentDenoiser  # noqa: E402
from appa_core.nn.presets import get_preset  # noqa: E402


def ae_step(channels_last: bool):  # type: ignore[no-untyped-def]
    p = get_preset("demo")
    ae = Autoencoder(p.autoencoder, *p.grid[:2])
    x = torch.randn(8, p.spec.n_channels, *p.grid[:2])
    if channels_last:
        ae = ae.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(ae.parameters(), lr=1e-4)
    w = torch.ones(p.grid[0], 1)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        autoencoder_loss(ae(x), x, w).backward()
        opt.step()

    return step, 8


def den_step():  # type: ignore[no-untyped-def]
    p = get_preset("demo")
    den = LatentDenoiser(p.denoiser_config())
    c, h, w = p.autoencoder.latent_shape(*p.grid[:2])
    z = torch.randn(8, p.denoiser["window"], c, h, w)  # type: ignore[index]
    sigma = torch.rand(8) * 3
    opt = torch.optim.AdamW(den.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (
            den.denoise(z + sigma[:, None, None, None, None] * torch.randn_like(z), sigma, None) - z
        ).square().mean().backward()
        opt.step()

    return step, 8


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args(argv)
    variants = {}
    for n in a.threads:
        variants[f"autoencoder, {n} thread(s)"] = (n, *ae_step(False))
        variants[f"autoencoder, {n} thread(s), channels_last"] = (n, *ae_step(True))
        variants[f"denoiser, {n} thread(s)"] = (n, *den_step())
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(a.warmup + a.repeats):
        for name, (n, step, _) in variants.items():
            torch.set_num_threads(n)
            t0 = time.perf_counter()
            step()
            if r >= a.warmup:
                times[name].append(time.perf_counter() - t0)
    print("| variant | step (s), median [min, max] | samples / s |")
    print("|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {med:.3f} [{min(ts):.3f}, {max(ts):.3f}] | {variants[name][2] / med:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
