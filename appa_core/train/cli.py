"""``appa train autoencoder|denoiser`` and ``appa prior params``.

Examples::

    appa train prior --config train.toml --data naturerun_train.zarr --out runs/demo   # both stages, resumable
    appa train autoencoder --config demo.toml --data data/naturerun_train.zarr --out runs/ae
    appa train denoiser --config demo.toml --data data/naturerun_train.zarr --autoencoder runs/ae \\
        --out runs/den
    torchrun --nproc_per_node 8 -m appa_core.train.cli autoencoder --config paper.toml --data era5.zarr --out runs/ae
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import torch

__all__ = ["main_params", "main_train"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="appa train", description="Train the autoencoder or the latent denoiser.")
    sub = parser.add_subparsers(dest="stage", required=True)
    for stage in ("prior", "autoencoder", "denoiser"):
        what = "the autoencoder, then the denoiser (OUT/ae, OUT/den, OUT/prior)" if stage == "prior" else f"the {stage}"
        p = sub.add_parser(stage, help=f"train {what}")
        p.add_argument("--config", required=True, help="TOML run configuration")
        p.add_argument("--data", required=True, help="WeatherBench2-layout zarr store (training split by date)")
        p.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl, outputs)")
        p.add_argument("--val-data", default=None, help="separate validation store (default: [data] valid range)")
        p.add_argument("--no-resume", action="store_true", help="ignore existing checkpoints in --out")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        if stage == "denoiser":
            p.add_argument("--autoencoder", required=True, help="finished autoencoder run directory")
        if stage != "autoencoder":
            p.add_argument("--fp16", action="store_true", help="store the final prior's weights in float16")
    return parser


def main_train(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``appa train``; returns the exit code."""
    args = _parser().parse_args(argv)
    common = {
        "val_data": args.val_data,
        "resume": not args.no_resume,
        "progress": not args.no_progress,
    }
    if args.stage == "prior":
        import shutil
        from pathlib import Path

        from appa_core.train.autoencoder import train_autoencoder
        from appa_core.train.denoiser import train_denoiser

        out = Path(args.out)
        ae = train_autoencoder(args.config, args.data, out / "ae", **common)
        print(f"autoencoder: step {ae['step']}, loss {ae['loss']:.5g}, val_loss {ae['val_loss']} -> {out / 'ae'}")
        summary = train_denoiser(
            args.config,
            args.data,
            out / "den",
            autoencoder=out / "ae",
            save_dtype=torch.float16 if args.fp16 else None,
            **common,
        )
        if (out / "den" / "prior").is_dir():
            tmp = out / ".prior.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(out / "den" / "prior", tmp)
            shutil.rmtree(out / "prior", ignore_errors=True)
            tmp.rename(out / "prior")
    elif args.stage == "autoencoder":
        from appa_core.train.autoencoder import train_autoencoder

        summary = train_autoencoder(args.config, args.data, args.out, **common)
    else:
        from appa_core.train.denoiser import train_denoiser

        summary = train_denoiser(
            args.config,
            args.data,
            args.out,
            autoencoder=args.autoencoder,
            save_dtype=torch.float16 if args.fp16 else None,
            **common,
        )
    print(
        f"{args.stage}: step {summary['step']}, loss {summary['loss']:.5g}, val_loss {summary['val_loss']}, "
        f"{summary['time_s']:.0f} s -> {args.out}"
    )
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return 0


def main_params(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``appa prior params`` (see :func:`appa_core.nn.presets.main_params`)."""
    from appa_core.nn.presets import main_params as _main

    return _main(argv)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_train(sys.argv[1:]))
