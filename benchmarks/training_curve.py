"""Analysis error against training time: the twin experiment's 24-h reanalysis, sampled with the denoiser
checkpoints of training runs, against OI on the same dates (issue #8, item 5: "show the curve that says how far").

Run (after a denoiser run that kept its checkpoints, ``keep_every`` in ``[train.denoiser]``, and after ``twin.py``
has cached OI -- and the EnKF, for the CRPS ratios -- for these dates)::

    python benchmarks/training_curve.py --checkpoint RUN/checkpoints/step_00003000 RUN/checkpoints/step_00006000 ... \\
        --cache CACHE --truth NATURERUN_HELDOUT.zarr --train NATURERUN_TRAIN.zarr [--observing sparse] [--write]

For each checkpoint directory (``model.safetensors`` and ``state.json`` of the denoiser, in its run's
``checkpoints/`` or a copy of it; the run's ``metrics.jsonl`` is read from the directory two levels up), the prior
is the bundled demo prior (``appa_core/assets/demo_prior``: autoencoder, normalisation, latent statistics) with the
checkpoint's denoiser weights, stored in the shipped dtype. It goes into the twin cache's prior snapshots
(``CACHE/priors/<sha256[:10]>``), ``twin.py --methods prior --no-forecast --prior-hash H`` samples its 24-h
reanalyses with the page's sampler settings (cached, ``--jobs 2``), and the ensemble-mean RMSE per headline
variable is divided by OI's on the same dates and observations, and its CRPS by the EnKF's (where the EnKF is
cached; issue #8's CRPS bar against the EnKF). ``--rescore`` scores the points already in
``docs/training_curve.json`` again from the cache, without checkpoints. The shipped prior's own checkpoint gives
back the shipped prior (same files; its metadata's order aside), so its point is the table's. ``--write`` merges the
points into ``docs/training_curve.json`` (which ``twin.py`` shows on ``docs/results.md``); the table is printed.

Training time is the wall time of the denoiser loop up to that step (``time_s`` in ``metrics.jsonl``, summed over
the segments of a resumed run; the autoencoder's 33 min and the encoding come on top).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
HEADLINE = list(twin.SCORED)


def snapshot(checkpoint: Path, cache: Path) -> str:
    """The shipped prior with ``checkpoint``'s denoiser, under ``cache/priors/<hash[:10]>``; returns the hash.

    Raises ``SystemExit`` if the checkpoint's latent statistics are not the shipped prior's (a denoiser trained on
    another autoencoder's latents)."""
    state = json.loads((checkpoint / "state.json").read_text())
    config = json.loads((SHIPPED / "config.json").read_text())
    for key in ("latent_mean", "latent_std"):
        if not np.allclose(state[key], config[key], rtol=1e-6, atol=1e-7):
            raise SystemExit(f"training_curve: {checkpoint} has another {key} than the shipped prior's")
    with safe_open(str(SHIPPED / "denoiser.safetensors"), "pt") as f:
        meta = f.metadata()
        dtype = f.get_tensor(next(iter(f.keys()))).dtype
    weights = {
        k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
        for k, v in load_file(str(checkpoint / "model.safetensors")).items()
    }
    tmp = cache / "priors" / f".curve.tmp{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    for f in SHIPPED.iterdir():
        if f.suffix in (".json", ".safetensors") and f.name != "denoiser.safetensors":
            (tmp / f.name).write_bytes(f.read_bytes())
    save_file(weights, str(tmp / "denoiser.safetensors"), metadata=meta)
    # safetensors writes its metadata in no fixed order, so the same prior can hash differently: an existing
    # snapshot with the same content is reused (the shipped checkpoint's point is then the table's, its cache hits)
    same = [d for d in sorted((cache / "priors").iterdir()) if not d.name.startswith(".") and _same_prior(d, tmp)]
    h = twin.prior_hash(same[0] if same else tmp)
    final = cache / "priors" / h[:10]
    if final.exists():
        shutil.rmtree(tmp)
    else:
        tmp.rename(final)
    return h


def _same_prior(a: Path, b: Path) -> bool:
    """Whether two prior directories hold the same JSON files (bytes) and the same tensors and metadata."""
    names = sorted(f.name for f in b.iterdir() if f.suffix in (".json", ".safetensors"))
    if names != sorted(f.name for f in a.iterdir() if f.suffix in (".json", ".safetensors")):
        return False
    for n in names:
        if n.endswith(".json") and (a / n).read_bytes() != (b / n).read_bytes():
            return False
        if n.endswith(".safetensors"):
            with safe_open(str(a / n), "pt") as fa, safe_open(str(b / n), "pt") as fb:
                if fa.metadata() != fb.metadata() or set(fa.keys()) != set(fb.keys()):
                    return False
                if any(not torch.equal(fa.get_tensor(k), fb.get_tensor(k)) for k in fa.keys()):  # noqa: SIM118
                    return False
    return True


def train_seconds(metrics: list[dict], step: int) -> float | None:
    """Wall time of the training loop up to ``step`` from the lines of ``metrics.jsonl``: ``time_s``, summed over
    the segments of a resumed run (``time_s`` restarts at each resume)."""
    total, last, at = 0.0, 0.0, None
    for m in metrics:
        if "time_s" not in m or m.get("step", 0) > step:
            continue
        if m["time_s"] < last:  # a resume: a new segment
            total += last
        last = m["time_s"]
        at = total + last
    return at


def score(h: str, args: argparse.Namespace, common: list[str]) -> dict:
    """The cached 24-h reanalyses of the prior ``h`` against OI's (RMSE ratios, ``out[observing]``) and, where the
    EnKF's runs are cached too, against the EnKF's (CRPS ratios, ``out["crps_enkf"][observing]``), per headline
    variable, on ``args.dates``. A network whose prior or OI runs are not all cached is left out (``--rescore`` of
    points sampled on one network only)."""
    out: dict = {"crps_enkf": {}}
    for o in args.observing:  # one runner per network: the twin scores only the dates complete on all of its networks
        flags = ["--no-forecast", "--prior-hash", h, "--observing", o]
        runner = twin.Runner(twin.parse_args([*common, "--methods", "prior", "oi", "enkf", *flags]))
        with_enkf = not runner.missing()
        if not with_enkf:
            runner = twin.Runner(twin.parse_args([*common, "--methods", "prior", "oi", *flags]))
            if runner.missing():
                continue
        rows, _ = runner.collect()
        sel = [r for r in rows if r["observing"] == o and r["task"] == "reanalysis" and r["window_h"] == 24]
        methods = ("prior", "oi", "enkf") if with_enkf else ("prior", "oi")
        for m in methods:
            dates = sorted({r["date"] for r in sel if r["method"] == m})
            if dates != sorted(args.dates):
                raise SystemExit(f"training_curve: {m} {o} is scored on {dates}, not on {sorted(args.dates)}")

        def values(m: str, v: str, key: str) -> list[float]:
            return [r[key] for r in sel if r["method"] == m and r["var"] == v]  # noqa: B023

        # unrounded: the page rounds once; aggregated as the page's headline does (RMSE of the mean MSE, mean CRPS)
        out[o] = {
            v: float(np.sqrt(np.mean(values("prior", v, "mse")) / np.mean(values("oi", v, "mse")))) for v in HEADLINE
        }
        if with_enkf:
            out["crps_enkf"][o] = {
                v: float(np.mean(values("prior", v, "crps")) / np.mean(values("enkf", v, "crps"))) for v in HEADLINE
            }
        else:
            print(f"training_curve: no cached EnKF runs for {o}: RMSE / OI only", file=sys.stderr)
    return out


def run_point(checkpoint: Path, args: argparse.Namespace, common: list[str]) -> dict:
    checkpoint = checkpoint.resolve()
    step = int(json.loads((checkpoint / "state.json").read_text())["step"])
    run = checkpoint.parents[1]
    h = snapshot(checkpoint, args.cache)
    rc = twin.main([*common, "--methods", "prior", "--no-forecast", "--prior-hash", h, "--jobs", str(args.jobs)])
    ns = twin.parse_args([*common, "--methods", "prior", "oi", "--no-forecast", "--prior-hash", h])
    runner = twin.Runner(ns)
    if rc != 0 or runner.missing():
        raise SystemExit(f"training_curve: {checkpoint}: not cached after the run: {runner.missing()}")
    path = run / "metrics.jsonl"
    metrics = [json.loads(s) for s in path.read_text().splitlines() if s.strip()] if path.exists() else []
    return {
        "checkpoint": f"{args.label or run.name}, step {step}",
        "step": step,
        "train_s": train_seconds(metrics, step),
        "val_loss": next((m["val_loss"] for m in metrics if m.get("step") == step and "val_loss" in m), None),
        "prior_sha256": h,
        **score(h, args, common),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, nargs="+", help="denoiser checkpoint directories")
    src.add_argument(
        "--rescore", action="store_true", help="score the points of docs/training_curve.json again from the cache"
    )
    p.add_argument(
        "--cache",
        type=Path,
        required=True,
        help="the twin cache (OI must be cached there; the EnKF too for the CRPS ratios)",
    )
    p.add_argument("--truth", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--observing", nargs="+", default=["sparse"], choices=["sparse", "dense"])
    p.add_argument("--dates", nargs="+", default=["2000-02-01", "2000-03-01", "2000-04-01", "2000-05-01"])
    p.add_argument("--jobs", type=int, default=2, choices=[1, 2])
    p.add_argument("--label", default=None, help="the run's name in the table (default: its directory's name)")
    p.add_argument("--write", action="store_true", help="store the points in docs/training_curve.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    # the page's settings (docs/results.md), 24-h reanalysis only
    # (twin's own page goes to the cache, not to docs/)
    common = ["--dates", *args.dates, "--windows", "24", *twin.PAGE_PRIOR_ARGS, "--oi-warm-start", "off",
              "--oi-rank", "128", "--oi-samples", "1024", "--observing", *args.observing, "--cache", str(args.cache),
              "--truth", args.truth, "--train", args.train,
              "--docs", str(args.cache / "training-curve-docs")]  # fmt: skip
    path = ROOT / "docs" / "training_curve.json"
    old = json.loads(path.read_text()) if path.exists() else {"dates": args.dates, "points": []}
    if old["dates"] != args.dates:
        raise SystemExit(f"training_curve: {path} holds the dates {old['dates']}; remove it to change them")
    if args.rescore:
        points = [{**pt, **score(pt["prior_sha256"][:10], args, common)} for pt in old["points"]]
    else:
        points = [run_point(c, args, common) for c in args.checkpoint]
    for name, key in (("RMSE prior / OI", None), ("CRPS prior / EnKF", "crps_enkf")):
        print(
            f"\n{name}\n| checkpoint | denoiser training (min) | val loss | observing | " + " | ".join(HEADLINE) + " |"
        )
        print("|---" * (4 + len(HEADLINE)) + "|")
        for pt in points:
            t = "-" if pt["train_s"] is None else f"{pt['train_s'] / 60:.0f}"
            vl = "-" if pt["val_loss"] is None else f"{pt['val_loss']:.4f}"
            table = pt if key is None else pt[key]
            for o in (o for o in args.observing if o in table):
                vals = " | ".join(f"{table[o][v]:.2f}" for v in HEADLINE)
                print(f"| {pt['checkpoint']} | {t} | {vl} | {o} | {vals} |")
    if args.write:  # merged into the points already there (same dates): one invocation per observing system
        merged = {pt["checkpoint"]: pt for pt in old["points"]}
        for pt in points:
            before = merged.get(pt["checkpoint"], {})
            crps = {**before.get("crps_enkf", {}), **pt["crps_enkf"]}
            merged[pt["checkpoint"]] = {**before, **pt, "crps_enkf": crps}
        ordered = sorted(merged.values(), key=lambda pt: (pt["train_s"] is None, pt["train_s"] or 0, pt["checkpoint"]))
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"dates": args.dates, "points": ordered}, indent=1))
        tmp.replace(path)


if __name__ == "__main__":
    main()
