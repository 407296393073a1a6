"""Tune the twin experiment's classical baselines on training dates, never on the scored (held-out) dates.

* **EnKF** (``appa-naturerun-enkf``, the LETKF cycling the true GCM): spread control (multiplicative inflation
  and relaxation to prior spread, RTPS) x Gaspari-Cohn cut-off radius (RTPP fixed at ``--rtpp``), on the
  training run itself at ``--enkf-date`` (same season as the twin's dates), sparse observations, with exactly
  the twin's protocol: a climatological initial ensemble of training-run states (dates within 10 days of the
  start excluded, since the truth is the training run here), ``--spinup-cycles`` 6-h cycles, then the 5
  analyses of the 24-h window are scored.
* **OI** (``oi_prior`` through the same sampler as the prior): rank x number of training windows of the low-rank
  + diagonal climatological covariance, on the training run's **validation month** (December, outside the split
  that the covariance is estimated on) at ``--oi-date``, 24-h reanalysis, sparse and dense observations (solves
  without the MMPS warm start, as the tuning was measured before it existed).
* **The prior's spread** (``--only prior-spread``): the latent prior's 24-h reanalyses, with exactly the twin's
  sampler settings (``--prior-args``), on ``--spread-dates`` of the training run's validation month (December,
  outside the split the prior was trained on), sparse and dense observations; one
  :class:`appa_workflows.calibration.SpreadCalibration` per observing system (its factors make the pooled
  spread/skill ratio of these runs 1), stored with the prior's file hash: ``twin.py`` scores the calibrated
  ensemble as ``prior_cal`` only for that very prior.

Score of a setting: the mean over the scored variables (and observing systems) of its RMSE divided by the best
RMSE of any setting for that variable, so every variable counts the same whatever its unit. The best setting of
each method goes to ``benchmarks/tuned_baselines.json``, which ``benchmarks/twin.py`` takes as its defaults, with
every setting's scores. Runs are cached under ``--cache`` (re-runs only compute what is missing)::

    python benchmarks/tune_baselines.py --train NATURERUN_TRAIN.zarr             # EnKF and OI
    python benchmarks/tune_baselines.py --train NATURERUN_TRAIN.zarr --only oi
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from twin import (  # noqa: E402
    ENKF_CLI,
    PAGE_PRIOR_ARGS,
    TUNED,
    Truth,
    _rel,
    method_key,
    prior_hash,
    spread_entries,
    states,
)
from twin import parse_args as twin_args  # noqa: E402

EARTH_LABELS = ("Z500", "T850", "U850", "Q700", "T2M", "MSLP", "U10", "V10")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--train", default="data/naturerun_train.zarr", help="training nature run (with its .state/)")
    p.add_argument("--cache", type=Path, default=Path("runs/tune"))
    p.add_argument("--only", choices=["enkf", "oi", "prior-spread"], default=None)
    p.add_argument("--enkf-date", default="2000-03-15", help="first scored analysis (00 UTC) of the EnKF tuning")
    p.add_argument("--inflation", nargs="+", type=float, default=[1.0])
    p.add_argument("--rtps", nargs="+", type=float, default=[0.5, 0.9])
    p.add_argument("--radius-km", nargs="+", type=float, default=[1000.0, 2000.0, 3500.0])
    p.add_argument("--rtpp", type=float, default=0.0)
    p.add_argument("--members", type=int, default=20)
    p.add_argument("--spinup-cycles", type=int, default=20)
    p.add_argument("--oi-date", default="2000-12-05", help="start (00 UTC) of the OI tuning window")
    p.add_argument("--rank", nargs="+", type=int, default=[32, 64, 128])
    p.add_argument("--samples", nargs="+", type=int, default=[256, 1024])
    p.add_argument("--spread-dates", nargs="+", default=["2000-12-05", "2000-12-19"])
    p.add_argument(
        "--prior-args",
        default=" ".join(PAGE_PRIOR_ARGS),
        help="the twin's sampler settings for the prior (the calibration holds for these only)",
    )
    p.add_argument(
        "--cached-only",
        action="store_true",
        help="choose among the grid's settings already in the cache (runs made by earlier, partial invocations)",
    )
    return p.parse_args(argv)


def relative_scores(table: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{setting: {var: rmse}}`` -> ``{setting: mean over vars of rmse / best rmse of that var}``."""
    labels = sorted({k for row in table.values() for k in row})
    best = {v: min(row[v] for row in table.values() if v in row) for v in labels}
    return {s: float(np.mean([row[v] / best[v] for v in labels if v in row])) for s, row in table.items()}


def tune_enkf(a: argparse.Namespace) -> dict[str, Any]:
    table: dict[str, dict[str, float]] = {}
    walls = {}
    for infl, rtps, radius in itertools.product(a.inflation, a.rtps, a.radius_km):
        name = f"i{infl:g}-s{rtps:g}-r{radius:g}-p{a.rtpp:g}"
        out = a.cache / "enkf" / name
        summary = out / "summary.json"
        if not summary.exists() and a.cached_only:
            continue
        if not summary.exists():
            cmd = [
                ENKF_CLI, "--truth", a.train, "--climate", a.train, "--bank", str(a.cache / "enkf-bank"),
                "--start", f"{a.enkf_date}T00", "--spinup-cycles", str(a.spinup_cycles), "--cycles", "5",
                "--members", str(a.members), "--observing", "sparse", "--forecast-hours", "0",
                "--inflation", f"{infl:g}", "--radius-km", f"{radius:g}", "--rtpp", f"{a.rtpp:g}",
                "--rtps", f"{rtps:g}", "--out", str(out),
            ]  # fmt: skip
            log(f"enkf {name}: {' '.join(cmd)}")
            out.parent.mkdir(parents=True, exist_ok=True)
            env = {**os.environ, "OMP_NUM_THREADS": "1", "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"}
            with open(out.parent / f"{name}.log", "w") as fh:
                rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False).returncode
            if rc != 0:
                raise SystemExit(f"tune_baselines: EnKF {name} failed (rc {rc}), see {out.parent / (name + '.log')}")
        s = json.loads(summary.read_text())
        start = np.datetime64(f"{a.enkf_date}T00", "m")
        scored = [c["analysis"] for c in s["cycles"] if np.datetime64(c["time"], "m") >= start]
        table[name] = {v: float(np.sqrt(np.mean([c[v] ** 2 for c in scored]))) for v in scored[0]}
        walls[name] = s["wall_s"]
        log(f"enkf {name}: {json.dumps({k: round(v, 4) for k, v in table[name].items()})}")
    rel = relative_scores(table)
    best = min(rel, key=rel.get)
    infl, rtps, radius = (float(x[1:]) for x in best.split("-")[:3])
    return {
        "inflation": infl,
        "rtps": rtps,
        "radius_km": radius,
        "rtpp": a.rtpp,
        "chosen": best,
        "protocol": {
            "truth": "training run",
            "date": a.enkf_date,
            "observing": "sparse",
            "members": a.members,
            "spinup_cycles": a.spinup_cycles,
            "scored": "the 5 analyses of the 24-h window from the date (RMS over them)",
            "initial": "climatology (training-run states nearest in day of year, +-10 days of the start excluded)",
        },
        "rmse": table,
        "relative_score": rel,
        "wall_s": walls,
    }


def tune_oi(a: argparse.Namespace) -> dict[str, Any]:
    table: dict[str, dict[str, float]] = {}
    for rank, n in itertools.product(a.rank, a.samples):
        if rank > n:
            continue
        name = f"r{rank}-n{n}"
        docs = a.cache / "oi-docs" / name
        if not (docs / "results.json").exists() and a.cached_only:
            continue
        if not (docs / "results.json").exists():
            cmd = [
                sys.executable, str(ROOT / "benchmarks" / "twin.py"), "--truth", a.train, "--train", a.train,
                "--dates", a.oi_date, "--windows", "24", "--methods", "oi", "--no-forecast", "--members", "8",
                "--steps", "16", "--tol", "3e-2", "--oi-warm-start", "off", "--threads", "1",
                "--oi-rank", str(rank), "--oi-samples", str(n),
                "--cache", str(a.cache / "oi"), "--docs", str(docs),
            ]  # fmt: skip
            log(f"oi {name}: {' '.join(cmd)}")
            docs.mkdir(parents=True, exist_ok=True)
            with open(docs / "log.txt", "w") as fh:
                rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
            if rc != 0:
                raise SystemExit(f"tune_baselines: OI {name} failed (rc {rc}), see {docs / 'log.txt'}")
        recs = json.loads((docs / "results.json").read_text())["records"]
        row: dict[str, list[float]] = {}
        for r in recs:
            if r["method"] == "oi" and r["task"] == "reanalysis" and r["window_h"] == 24:
                row.setdefault(f"{r['var']}/{r['observing']}", []).append(r["mse"])
        table[name] = {k: float(np.sqrt(np.mean(v))) for k, v in row.items()}
        log(f"oi {name}: {json.dumps({k: round(v, 4) for k, v in table[name].items()})}")
    rel = relative_scores(table)
    best = min(rel, key=rel.get)
    rank, n = (int(x[1:]) for x in best.split("-"))
    return {
        "rank": rank,
        "n_samples": n,
        "chosen": best,
        "protocol": {
            "truth": "training run, validation month (outside the covariance's split 2000-01-01..2000-11-30T18)",
            "date": a.oi_date,
            "observing": ["sparse", "dense"],
            "scored": "24-h reanalysis, RMSE of the 8-member mean over the window's 5 states",
        },
        "rmse": table,
        "relative_score": rel,
    }


def tune_prior_spread(a: argparse.Namespace) -> dict[str, Any]:
    from appa_core.sampler import split_diagnostics
    from appa_workflows.calibration import SpreadCalibration

    observing = ["sparse", "dense"]
    args = [
        "--truth", a.train, "--train", a.train, "--dates", *a.spread_dates, "--windows", "24", "--methods", "prior",
        "--no-forecast", "--observing", *observing, *a.prior_args.split(), "--threads", "1", "--jobs", "2",
        "--cache", str(a.cache / "prior"), "--docs", str(a.cache / "prior-docs"),
    ]  # fmt: skip
    cmd = [sys.executable, str(ROOT / "benchmarks" / "twin.py"), *args]
    log(f"prior spread: {' '.join(cmd)}")
    (a.cache / "prior-docs").mkdir(parents=True, exist_ok=True)
    with open(a.cache / "prior-docs" / "log.txt", "w") as fh:
        rc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise SystemExit(f"tune_baselines: prior runs failed (rc {rc}), see {a.cache / 'prior-docs' / 'log.txt'}")
    phash = prior_hash(ROOT / "appa_core" / "assets" / "demo_prior")
    settings = twin_args(args)
    key = method_key(settings, "prior", phash)  # the cache key of these runs, and the settings they hold for
    truth = Truth(a.train, states(24))
    factors, ssr_before = {}, {}
    for o in observing:
        ens, tru = [], []
        for date in a.spread_dates:
            path = a.cache / "prior" / key / f"{date}_{o}_r24.zarr"
            ds, _ = split_diagnostics(xr.open_zarr(path).load())
            ens.append(ds)
            tru.append(truth.get(date)[3].sel(time=ds.time))
        cal = SpreadCalibration.fit(ens, tru)
        factors[o] = dict(cal.factors)
        ssr_before[o] = {k: round(1.0 / v, 4) for k, v in cal.factors.items()}
        log(f"prior spread {o}: {json.dumps({k: round(v, 3) for k, v in cal.factors.items()})}")
    return {
        "prior_sha256": phash,
        "sampler_key": key,  # twin.py applies the factors to these settings only
        "factors": factors,
        "spread_skill_before": ssr_before,
        "protocol": {
            "truth": "training run, validation month (outside the prior's split 2000-01-01..2000-11-30T18)",
            "dates": list(a.spread_dates),
            "observing": observing,
            "sampler": a.prior_args,
            "scored": f"24-h reanalysis (5 states), {settings.members} members; factor = pooled RMSE / "
            "(sqrt((m+1)/m) spread)",
        },
    }


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    out = json.loads(TUNED.read_text()) if TUNED.exists() else {}
    if a.only in (None, "enkf"):
        out["enkf"] = tune_enkf(a)
        log(f"EnKF: chosen {out['enkf']['chosen']}")
    if a.only in (None, "oi"):
        out["oi"] = tune_oi(a)
        log(f"OI: chosen {out['oi']['chosen']}")
    spread = None
    if a.only in (None, "prior-spread"):  # kept per sampler key: fits for other settings (ensemble sizes) stay
        spread = tune_prior_spread(a)
        out["prior_spread"] = {**spread_entries(out.get("prior_spread", {})), spread["sampler_key"]: spread}
    args = argv if argv is not None else sys.argv[1:]
    # no machine paths in the committed file (_rel: absolute paths relative to the repository)
    command = "python benchmarks/tune_baselines.py " + shlex.join(map(_rel, args))  # quoted: --prior-args "..."
    for section in ("enkf", "oi"):
        if a.only in (None, section):
            out[section]["command"] = command
    if spread is not None:
        spread["command"] = command
    out.pop("command", None)
    tmp = TUNED.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n")
    tmp.replace(TUNED)
    log(f"wrote {TUNED.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
