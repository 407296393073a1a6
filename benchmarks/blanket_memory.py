"""Blanket mode's memory against the trajectory length: windows guided one at a time with their own observations
(``PosteriorDenoiser(windowed=True)``, the default) against all windows at once on operators prepared on the whole
trajectory (``windowed=False``, the previous behaviour).

Run::

    python benchmarks/blanket_memory.py            # ~2 minutes on 2 shared cores, prints the table
    python benchmarks/blanket_memory.py --write    # and updates its section of docs/benchmarks.md

Setup: a Gaussian prior over windows of K = 4 six-hourly states (low rank + diagonal covariance, float64), on a
48 x 96 grid with 3 channels (``2m_temperature``, ``temperature`` at 500 and 850 hPa); trajectories of L = 8 ... 64
states covered by blankets (K = 4, overlap 2); ``StationOp`` with 300 observations per state interval (so the
observations grow with L, as they do in a long assimilation); 2 members; one guided denoiser call (MMPS, GMRES,
4 iterations). Each configuration runs in a fresh process; *peak* is the largest resident set size sampled every
millisecond during the first call minus the resident size just before it (so it counts what the call allocates,
not the setup), and the time is the median of the 3 following calls (min-max).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_section  # noqa: E402

LENGTHS = (8, 16, 32, 64)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(length: int, windowed: bool) -> dict:
    import torch

    from appa_core.diffusion.blanket import Blanket
    from appa_core.grid import Grid
    from appa_core.guidance import MMPS, PosteriorDenoiser, observation_time_ranges
    from appa_core.obs import ObsSet
    from appa_core.priors.gaussian import GaussianPrior, LowRankDiag
    from appa_core.spec import StateSpec
    from appa_op_stations import StationOp

    torch.set_num_threads(1)
    grid = Grid.equiangular(48, 96)
    spec = StateSpec(surface=("2m_temperature",), atmospheric=("temperature",), levels=(500, 850))
    k = 4
    shape = (k, spec.n_channels, *grid.shape)
    d = int(np.prod(shape))
    gen = torch.Generator().manual_seed(0)
    cov = LowRankDiag(torch.randn(d, 4, generator=gen, dtype=torch.float64), torch.ones(d, dtype=torch.float64))
    prior = GaussianPrior(torch.full(shape, 270.0, dtype=torch.float64), cov, grid, spec)
    times = (np.datetime64("2021-01-01T00", "ns") + np.arange(length) * np.timedelta64(6, "h")).astype("datetime64[ns]")
    rng = np.random.default_rng(0)
    m = 300 * (length - 1)
    kind = rng.integers(0, 3, m)
    span = (times[-1] - times[0]).astype("int64")
    op = StationOp(
        variable=np.where(kind == 0, "2m_temperature", "temperature"),
        level=np.where(kind == 0, np.nan, np.where(kind == 1, 500.0, 850.0)),
        lat=np.rad2deg(np.arcsin(rng.uniform(-1, 1, m))),
        lon=rng.uniform(0, 360, m),
        time=times[0] + rng.integers(0, span + 1, m).astype("timedelta64[ns]"),
        value=rng.normal(270, 5, m),
        error=1.0,
    )
    obs = ObsSet([op]).prepare(grid, spec, times)
    bl = Blanket(length, k, 2)
    den = PosteriorDenoiser(
        prior, times, bl.starts, bl.size, bl.keep, 0, length, obs=obs,
        row_range=observation_time_ranges(obs, prior, length), guidance=MMPS("gmres", 4, None), windowed=windowed,
    )  # fmt: skip
    z = torch.randn(2, length, *shape[1:], generator=gen, dtype=torch.float64)
    sigma = torch.ones(2, dtype=torch.float64)
    base = _rss_mb()  # no warm-up: both modes' first call pays the same one-time casts
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    den(z, sigma)
    first = time.perf_counter() - t0
    done.set()
    thread.join()
    ts = [first]
    for _ in range(3):
        t0 = time.perf_counter()
        den(z, sigma)
        ts.append(time.perf_counter() - t0)
    return {
        "length": length, "windowed": windowed, "windows": len(bl.starts), "obs": m, "peak_mb": peak[0] - base,
        "time_s": statistics.median(ts[1:]), "time_spread": [min(ts[1:]), max(ts[1:])],
    }  # fmt: skip


def _subprocess(length: int, windowed: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps([length, windowed])], capture_output=True, text=True, env=env
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    row = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="update the section of docs/benchmarks.md")
    parser.add_argument("--one", help="internal: [length, windowed] as JSON")
    args = parser.parse_args()
    if args.one:
        length, windowed = json.loads(args.one)
        print(json.dumps(run_one(int(length), bool(windowed))))
        return
    load0, t0 = os.getloadavg(), time.time()
    rows = {(n, w): _subprocess(n, w) for n in LENGTHS for w in (True, False)}
    elapsed, load1 = time.time() - t0, os.getloadavg()
    lines = [
        "## Blanket memory against the trajectory length",
        "",
        f"`python benchmarks/blanket_memory.py` ({time.strftime('%Y-%m-%d')}), one run of {elapsed:.0f} s, 1 torch "
        f"thread, 2 shared cores (load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end). Peak: "
        "resident memory allocated by the first guided denoiser call (sampled every ms, minus the resident size "
        "before it); time: median of the 3 following calls (min-max). Setup in the script's docstring (Gaussian "
        "prior over K = 4 states on 48 x 96 x 3, StationOp with 300 observations per 6 h, 2 members, blankets with "
        "overlap 2).",
        "",
        "| states L | windows | observations | windowed: peak (MB) | windowed: time (s) | all at once: peak (MB) "
        "| all at once: time (s) | peak ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in LENGTHS:
        w, a = rows[(n, True)], rows[(n, False)]
        lines.append(
            f"| {n} | {w['windows']} | {w['obs']:,} | {w['peak_mb']:.0f} | {w['time_s']:.2f} "
            f"({w['time_spread'][0]:.2f}-{w['time_spread'][1]:.2f}) | {a['peak_mb']:.0f} | {a['time_s']:.2f} "
            f"({a['time_spread'][0]:.2f}-{a['time_spread'][1]:.2f}) | {a['peak_mb'] / max(w['peak_mb'], 1e-9):.1f}x |"
        )
    wp = [rows[(n, True)]["peak_mb"] for n in LENGTHS]
    ap = [rows[(n, False)]["peak_mb"] for n in LENGTHS]
    lines += [
        "",
        f"From L = {LENGTHS[0]} to {LENGTHS[-1]} ({LENGTHS[-1] // LENGTHS[0]}x the states and observations) the "
        f"windowed call's peak goes from {wp[0]:.0f} to {wp[-1]:.0f} MB, the all-at-once call's from {ap[0]:.0f} to "
        f"{ap[-1]:.0f} MB (it embeds every window's decoded state in the whole trajectory: windows x L states).",
    ]
    section = "\n".join(lines) + "\n"
    print(section)
    if args.write:
        write_section(section)


if __name__ == "__main__":
    main()
