"""Analysis error against training time: the twin experiment's 24-h reanalysis, sampled with the denoiser
checkpoints of training runs, against OI on the same dates (issue #8, item 5: "show the curve that says how far").

Run (after a denoiser run that kept its checkpoints, ``keep_every`` in ``[train.denoiser]``, and after ``twin.py``
has cached OI for these dates)::

    python benchmarks/training_curve.py --checkpoint RUN/checkpoints/step_00003000 RUN/checkpoints/step_00006000 ... \\
        --cache CACHE --truth NATURERUN_HELDOUT.zarr --train NATURERUN_TRAIN.zarr [--observing sparse] [--write]

For each checkpoint directory (``model.safetensors`` of the denoiser, in its run's ``checkpoints/`` or a copy of
it; the run's ``metrics.jsonl`` is read from the directory two levels up), the prior is the bundled demo prior
(``appa_core/assets/demo_prior``: autoencoder, normalisation, latent statistics) with the checkpoint's denoiser
weights, stored in the shipped dtype. It goes into the twin cache's prior snapshots (``CACHE/priors/<sha256[:10]>``),
``twin.py --methods prior --no-forecast --prior-hash H`` samples its 24-h reanalyses with the page's sampler settings
(cached, ``--jobs 2``), and the ensemble-mean RMSE per headline variable is divided by OI's on the same dates and
observations. The shipped prior's own checkpoint gives back the shipped files bit for bit (the same hash), so its
point is the table's. ``--write`` stores the points in ``docs/training_curve.json``; the table is printed.

Training time is the run's ``time_s`` at that step in ``metrics.jsonl`` (wall time of the denoiser loop; the
autoencoder's 33 min and the encoding come on top).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

import twin

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "appa_core" / "assets" / "demo_prior"
HEADLINE = ["Z500", "T850", "U850", "Q700", "T2M", "MSLP", "U10", "V10"]


def snapshot(checkpoint: Path, cache: Path) -> str:
    """The shipped prior with ``checkpoint``'s denoiser, under ``cache/priors/<hash[:10]>``; returns the hash."""
    with safe_open(str(SHIPPED / "denoiser.safetensors"), "pt") as f:
        meta = f.metadata()
        dtype = f.get_tensor(next(iter(f.keys()))).dtype
    weights = {k: v.to(dtype).contiguous() for k, v in load_file(str(checkpoint / "model.safetensors")).items()}
    tmp = cache / "priors" / f".curve.tmp{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for f in SHIPPED.iterdir():
        if f.suffix in (".json", ".safetensors") and f.name != "denoiser.safetensors":
            (tmp / f.name).write_bytes(f.read_bytes())
    save_file(weights, str(tmp / "denoiser.safetensors"), metadata=meta)
    h = twin.prior_hash(tmp)
    final = cache / "priors" / h[:10]
    if final.exists():
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
    else:
        tmp.rename(final)
    return h


def run_point(checkpoint: Path, args: argparse.Namespace, common: list[str]) -> dict:
    h = snapshot(checkpoint, args.cache)
    twin.main([*common, "--methods", "prior", "--no-forecast", "--prior-hash", h, "--jobs", str(args.jobs)])
    ns = twin.parse_args([*common, "--methods", "prior", "oi", "--no-forecast", "--prior-hash", h])
    rows, _ = twin.Runner(ns).collect()
    out: dict = {"checkpoint": f"{checkpoint.parents[1].name}/{checkpoint.name}", "prior_sha256": h}
    step = int(checkpoint.name.rsplit("_", 1)[-1])
    metrics = checkpoint.parents[1] / "metrics.jsonl"
    if metrics.exists():
        lines = [json.loads(s) for s in metrics.read_text().splitlines() if s.strip()]
        at = [m for m in lines if m.get("step") == step]
        out["train_s"] = next((m["time_s"] for m in at if "time_s" in m), None)
        out["val_loss"] = next((m["val_loss"] for m in at if "val_loss" in m), None)
    out["step"] = step
    for o in args.observing:
        sel = [r for r in rows if r["observing"] == o and r["task"] == "reanalysis" and r["window_h"] == 24]
        ratios = {}
        for v in HEADLINE:
            rmse = {
                m: float(np.sqrt(np.mean([r["mse"] for r in sel if r["method"] == m and r["var"] == v])))
                for m in ("prior", "oi")
            }
            ratios[v] = round(rmse["prior"] / rmse["oi"], 3)
        out[o] = ratios
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True, help="denoiser checkpoint directories")
    p.add_argument("--cache", type=Path, required=True, help="the twin cache (OI must be cached there)")
    p.add_argument("--truth", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--observing", nargs="+", default=["sparse"], choices=["sparse", "dense"])
    p.add_argument("--dates", nargs="+", default=["2000-02-01", "2000-03-01", "2000-04-01", "2000-05-01"])
    p.add_argument("--jobs", type=int, default=2, choices=[1, 2])
    p.add_argument("--write", action="store_true", help="store the points in docs/training_curve.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    # the page's settings (docs/results.md), 24-h reanalysis only
    common = ["--dates", *args.dates, "--windows", "24", "--members", "8", "--steps", "16", "--gmres-iters", "8",
              "--tol", "0.03", "--warm-start", "on", "--oi-warm-start", "off", "--oi-rank", "128",
              "--oi-samples", "1024", "--observing", *args.observing, "--cache", str(args.cache),
              "--truth", args.truth, "--train", args.train]  # fmt: skip
    points = [run_point(c, args, common) for c in args.checkpoint]
    head = "| checkpoint | denoiser training (min) | val loss | " + " | ".join(
        f"{o} {v}" for o in args.observing for v in HEADLINE
    )
    print(head + " |")
    print("|---" * (3 + len(args.observing) * len(HEADLINE)) + "|")
    for pt in points:
        t = f"{pt['train_s'] / 60:.0f}" if pt.get("train_s") else "-"
        vl = f"{pt['val_loss']:.4f}" if pt.get("val_loss") else "-"
        vals = " | ".join(f"{pt[o][v]:.2f}" for o in args.observing for v in HEADLINE)
        print(f"| {pt['checkpoint']} | {t} | {vl} | {vals} |")
    if args.write:
        path = ROOT / "docs" / "training_curve.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"dates": args.dates, "points": points}, indent=1))
        tmp.replace(path)


if __name__ == "__main__":
    main()
