"""``appa-naturerun`` console script (also the target of ``appa naturerun ...`` in the core CLI)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from .convert import WB2_LEVELS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="appa-naturerun",
        description="Run the jcm GCM (SPEEDY physics, T31 L8) and write 6-hourly states in the WeatherBench2 "
        "layout to a zarr store. Resumes (or extends) an existing store written by this command.",
    )
    p.add_argument("--out", required=True, type=Path, help="output zarr store (directory)")
    p.add_argument("--seed", type=int, required=True, help="random seed of the initial state")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--years", type=float, default=None, help="length in years of 365 days (default 1)")
    g.add_argument("--days", type=int, default=None, help="length in whole days (for short runs)")
    p.add_argument("--spinup-days", type=int, default=120, help="discarded spin-up (default 120)")
    p.add_argument("--chunk-days", type=int, default=28, help="days per append/checkpoint (default 28)")
    p.add_argument("--start", default="2000-01-01", help="first stored time, 00 UTC (default 2000-01-01)")
    p.add_argument(
        "--levels",
        default=",".join(map(str, WB2_LEVELS)),
        help="comma-separated pressure levels in hPa (default: the 13 WeatherBench2 levels)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("appa_naturerun").setLevel(logging.INFO)
    from .run import run_nature

    levels = [int(x) for x in args.levels.split(",") if x.strip()]
    t0 = time.perf_counter()
    out = run_nature(
        args.out,
        years=1.0 if args.years is None else args.years,
        days=args.days,
        seed=args.seed,
        spinup_days=args.spinup_days,
        chunk_days=args.chunk_days,
        start=args.start,
        levels=levels,
        progress=not args.no_progress,
    )
    print(f"wrote {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
