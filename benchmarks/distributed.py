"""Throughput of distributed posterior sampling: members per minute at 1 and 2 processes (torchrun, gloo on CPU).

Run::

    python benchmarks/distributed.py            # ~3 minutes on 2 shared cores, prints the table
    python benchmarks/distributed.py --write    # and updates its section of docs/benchmarks.md

Setup: ``appa assimilate --example`` (the bundled demo prior and truth, a 24-hour reanalysis, 5 six-hourly states,
15 simulated stations) with ``members`` members in batches of ``batch`` and ``steps`` diffusion steps (LMS, GMRES to
3e-2, at most 4 iterations). Each run is a fresh ``appa assimilate`` command, launched as

* ``1 proc x 1 thread``: one process, ``OMP_NUM_THREADS=1``;
* ``2 procs x 1 thread``: ``torchrun --standalone --nproc-per-node 2`` (gloo), one thread each;
* ``1 proc x 2 threads`` (``--threads``, off by default): one process using both cores through torch's intra-op
  threads. On a loaded machine its OpenMP threads wait for each other (one run took over 5 minutes where one
  thread took 22 s), so it is not a useful reference there.

The launches are interleaved, ``repeats`` times; the table gives medians (min-max) of the sampling time that the store
records (``appa_sampling_seconds``: rank 0's ``Sampler.posterior``, which ends after every rank finished its
members) and of the whole command's wall time (start-up, prior, observations, QC, sampling, the collective store
write), members per minute from each, and checks that the 2-process store equals the 1-process one.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine, write_section  # noqa: E402

LAUNCHES = {
    "1 proc x 1 thread": (1, 1),
    "2 procs x 1 thread": (2, 1),
}
THREADS = {"1 proc x 2 threads": (1, 2)}


def _config(folder: Path, members: int, batch: int, steps: int) -> Path:
    example = subprocess.run(
        [shutil.which("appa") or "appa", "assimilate", "--example"], check=True, capture_output=True, text=True
    ).stdout
    lines = []
    for line in example.splitlines():
        if line.startswith("members ="):
            line = f"members = {members}\nbatch = {batch}"
        elif line.startswith("steps ="):
            line = f"steps = {steps}"
        lines.append(line)
    path = folder / "config.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(config: Path, out: Path, procs: int, threads: int) -> tuple[float, float]:
    """One ``appa assimilate``; returns ``(sampling seconds from the store, wall seconds)``."""
    import xarray as xr

    appa = shutil.which("appa") or "appa"
    cmd = [appa, "assimilate", str(config), "--out", str(out), "--quiet"]
    if procs > 1:
        torchrun = shutil.which("torchrun") or "torchrun"
        cmd = [torchrun, "--standalone", f"--nproc-per-node={procs}", *cmd]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    sampling = float(xr.open_zarr(out / "posterior.zarr").attrs["appa_sampling_seconds"])
    return sampling, wall


def _same_members(a: Path, b: Path) -> bool:
    import xarray as xr

    da, db = xr.open_zarr(a / "posterior.zarr"), xr.open_zarr(b / "posterior.zarr")
    keep = [v for v in da.data_vars if "member" in da[v].dims or str(v).endswith("innovation")]
    return bool(da[keep].load().equals(db[keep].load()))  # values and coordinates; the attributes hold timings


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", action="store_true", help="also one process with 2 intra-op threads")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="appa-bench-dist-"))
    try:
        config = _config(folder, args.members, args.batch, args.steps)
        launches = {**LAUNCHES, **(THREADS if args.threads else {})}
        results: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in launches}
        identical = True
        loads: list[float] = []
        for rep in range(args.repeats):
            for name, (procs, threads) in launches.items():
                out = folder / f"{procs}x{threads}-{rep}"
                sampling, wall = _run(config, out, procs, threads)
                results[name][0].append(sampling)
                results[name][1].append(wall)
                loads.append(os.getloadavg()[0])
                print(f"repeat {rep + 1}: {name}: sampling {sampling:.1f} s, wall {wall:.1f} s", flush=True)
            identical &= _same_members(folder / f"1x1-{rep}", folder / f"2x1-{rep}")
        base = statistics.median(results["1 proc x 1 thread"][0])
        rows = []
        for name, (sampling, wall) in results.items():
            per_min = [args.members * 60.0 / s for s in sampling]
            per_min_wall = [args.members * 60.0 / w for w in wall]
            rows.append(
                f"| {name} | {_fmt(sampling)} | {_fmt(per_min)} | {base / statistics.median(sampling):.2f}x | "
                f"{_fmt(wall)} | {_fmt(per_min_wall)} |"
            )
        section = "\n".join(
            [
                "## Distributed sampling",
                "",
                f"`python benchmarks/distributed.py --members {args.members} --batch {args.batch} --steps "
                f"{args.steps} --repeats {args.repeats}` on {machine()} (load average below; medians, min-max, "
                "of interleaved runs). The example config of `appa assimilate --example` (demo prior, 24-hour "
                f"reanalysis, 15 stations) with {args.members} members in batches of {args.batch} and "
                f"{args.steps} LMS steps; 2 processes through `torchrun --standalone --nproc-per-node 2` (gloo). "
                "Sampling: the store's `appa_sampling_seconds` (rank 0's `posterior`, which ends when every "
                "process has finished); wall: the whole command (start-up, prior, observations, quality control, "
                "sampling, the collective store write).",
                "",
                "| launch | sampling (s) | members / min | speed-up | wall (s) | members / min (wall) |",
                "|---|---|---|---|---|---|",
                *rows,
                "",
                "The 2-process stores equal the 1-process stores (members, predictions, innovations): "
                + ("yes, in every repeat." if identical else "NO (see the script's output).")
                + f" Load average (1 min) after the runs: median {statistics.median(loads):.1f} on "
                f"{os.cpu_count()} cores: a second process gains only as much as a core is free.",
            ]
        )
        print(section)
        if args.write:
            write_section(section)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
