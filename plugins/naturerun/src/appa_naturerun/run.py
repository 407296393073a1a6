"""Chunked, resumable nature run writing a WeatherBench2-layout zarr store.

Layout on disk, for ``out = /path/run.zarr``:

- ``/path/run.zarr``: the data (zarr v2, consolidated), appended 28 model days at a time along ``time``;
- ``/path/run.zarr.state/run.json``: the run's configuration (seed, start, spin-up, levels, ...) and progress,
  written atomically (temporary file + ``os.replace``);
- ``/path/run.zarr.state/state-<YYYYmmddTHHMM>.msgpack``: the model's complete state (jcm checkpoint) at the
  last time written to the store (the last two are kept), and ``spinup.msgpack`` at the end of the spin-up.

Timeline: the model clock starts at ``start - spinup_days - 6 h``; the spin-up integrates ``spinup_days`` days
without output; then every chunk integrates ``chunk_days`` days and its 6-hourly snapshots (the first one 6 h
after the chunk's start) are appended. The store's first time is therefore exactly ``start`` (00 UTC) and each
chunk covers whole days 00, 06, 12, 18 UTC. The model state at the end of a chunk is the state at the store's
last time.

Resume: if the store exists, the newest checkpoint whose time is in the store is loaded, every time-dependent
array is cut back to that time (dropping a partially appended chunk), and the run continues. Running again with a
larger ``years``/``days`` extends a finished store.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import time as _time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from .convert import WB2_LEVELS, convert_chunk, convert_static, encoding_for, global_attrs

log = logging.getLogger("appa_naturerun")

STEP_HOURS = 6
SAVE_INTERVAL_DAYS = STEP_HOURS / 24
_CONFIG_KEYS = ("seed", "start", "spinup_days", "chunk_days", "levels", "model")


def days_for_years(years: float) -> int:
    """Number of whole model days for ``years`` (365 days a year)."""
    return round(float(years) * 365)


def state_dir_for(out: str | Path) -> Path:
    out = Path(out)
    return out.parent / (out.name + ".state")


def _atomic_write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _stamp(t: np.datetime64) -> str:
    return np.datetime_as_string(np.datetime64(t, "m"), unit="m").replace("-", "").replace(":", "")


def _checkpoint_path(state_dir: Path, t: np.datetime64) -> Path:
    return state_dir / f"state-{_stamp(t)}.msgpack"


def _atomic_save(driver, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    driver.save(tmp)
    os.replace(tmp, path)


def _list_checkpoints(state_dir: Path) -> list[tuple[np.datetime64, Path]]:
    out = []
    for p in state_dir.glob("state-*.msgpack"):
        s = p.name[len("state-") : -len(".msgpack")]
        try:
            t = np.datetime64(f"{s[0:4]}-{s[4:6]}-{s[6:8]}T{s[9:11]}:{s[11:13]}", "m")
        except ValueError:
            continue
        out.append((t, p))
    return sorted(out, key=lambda tp: tp[0])


def _store_times(out: Path) -> np.ndarray:
    # per-array metadata, not the consolidated copy, and the time coordinate alone: after a kill during an append the
    # consolidated copy is stale and the other arrays may have other lengths
    import zarr

    group = zarr.open_group(str(out), mode="r", use_consolidated=False)
    others = [n for n, _ in group.arrays() if n != "time"]
    with xr.open_zarr(out, consolidated=False, chunks=None, decode_times=True, drop_variables=others) as ds:
        times = np.asarray(ds["time"].values).astype("datetime64[m]")
    # the times every array holds: xarray appends arrays in no fixed order, so after a kill ``time`` itself may be
    # longer than a data array
    return times[: min([times.size, *(_time_length(arr) for _, arr in group.arrays())])]


def _time_length(arr) -> int:  # type: ignore[no-untyped-def]
    dims = list(arr.attrs.get("_ARRAY_DIMENSIONS") or getattr(arr.metadata, "dimension_names", None) or ())
    return arr.shape[dims.index("time")] if "time" in dims else 2**62


def truncate_store(out: str | Path, n_times: int) -> None:
    """Cut every array that has a ``time`` dimension back to ``n_times`` steps; re-consolidate the metadata.

    Reads the per-array metadata, never the consolidated copy, which a kill during an append leaves stale (arrays of
    different lengths); every array is then cut to the same length before the metadata is consolidated again.
    """
    import zarr

    group = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    for _name, arr in group.arrays():
        dims = arr.attrs.get("_ARRAY_DIMENSIONS") or getattr(arr.metadata, "dimension_names", None) or ()
        dims = list(dims)
        if "time" in dims:
            k = dims.index("time")
            if arr.shape[k] < n_times:
                raise ValueError(f"truncate_store: array {_name!r} of {out} has {arr.shape[k]} < {n_times} time steps")
            if arr.shape[k] > n_times:  # only ever cut: growing would read fill values as data
                shape = list(arr.shape)
                shape[k] = n_times
                arr.resize(tuple(shape))
    zarr.consolidate_metadata(str(out))


def _default_driver_factory(seed: int, start_time: np.datetime64):
    from .gcm import JcmDriver

    return JcmDriver(seed=seed, start_time=start_time)


def _driver_versions(driver) -> dict:
    if hasattr(driver, "versions"):
        return driver.versions()
    from .gcm import versions

    return versions()


def run_nature(
    out: str | Path,
    years: float = 1.0,
    seed: int = 1,
    spinup_days: int = 120,
    chunk_days: int = 28,
    start: str = "2000-01-01",
    levels: Sequence[int] = WB2_LEVELS,
    progress: bool = True,
    days: int | None = None,
    driver_factory: Callable | None = None,
) -> Path:
    """Run the nature run and write (or extend, or resume) the WeatherBench2-layout store ``out``.

    Args:
        out: zarr store path (a directory). ``<out>.state/`` next to it keeps the run configuration and
            checkpoints.
        years: length of the stored trajectory, 365 days a year (ignored when ``days`` is given).
        seed: random seed of the initial state; different seeds give independent trajectories.
        spinup_days: model days integrated and discarded before ``start``.
        chunk_days: model days per chunk (one append + one checkpoint each).
        start: first stored time (00 UTC of that day).
        levels: output pressure levels (hPa).
        progress: tqdm progress bar on stderr.
        days: length in whole days (overrides ``years``).
        driver_factory: ``f(seed, start_time) -> driver`` (default: :class:`appa_naturerun.gcm.JcmDriver`);
            the tests pass a fake model.
    Returns:
        ``Path(out)``.
    """
    out = Path(out)
    total_days = int(days) if days is not None else days_for_years(years)
    if total_days <= 0:
        raise ValueError("the run must be at least one day long")
    if chunk_days <= 0 or spinup_days < 0:
        raise ValueError("chunk_days must be > 0 and spinup_days >= 0")
    levels = [int(x) for x in levels]
    start64 = np.datetime64(np.datetime64(start, "D"), "m")
    model_start = start64 - np.timedelta64(int(spinup_days) * 24 * 60 + STEP_HOURS * 60, "m")
    factory = driver_factory or _default_driver_factory
    state_dir = state_dir_for(out)
    cfg_path = state_dir / "run.json"
    n_total = total_days * 24 // STEP_HOURS
    end_time = start64 + np.timedelta64((n_total - 1) * STEP_HOURS * 60, "m")

    t_wall = _time.perf_counter()
    driver = factory(seed, model_start)
    config = {
        "seed": int(seed),
        "start": str(start64),
        "spinup_days": int(spinup_days),
        "chunk_days": int(chunk_days),
        "levels": levels,
        "model": getattr(driver, "model_name", type(driver).__name__),
    }

    n_done = 0
    if out.exists():
        if not cfg_path.exists():
            raise FileExistsError(
                f"{out} exists but {cfg_path} does not: not a store written by appa-naturerun "
                "(or its state was deleted); remove it or choose another --out"
            )
        saved = json.loads(cfg_path.read_text())
        diff = {k: (saved.get(k), config[k]) for k in _CONFIG_KEYS if saved.get(k) != config[k]}
        if diff:
            raise ValueError(f"{out} was written with a different configuration (saved, requested): {diff}")
        times = _store_times(out)
        usable = [(t, p) for t, p in _list_checkpoints(state_dir) if t in set(times.tolist())]
        if not usable:
            log.warning("%s has no checkpoint matching its times: starting again from scratch", out)
            shutil.rmtree(out)
            for _, p in _list_checkpoints(state_dir):
                p.unlink()
        else:
            t_ck, p_ck = usable[-1]
            n_done = int(np.nonzero(times == t_ck)[0][0]) + 1
            truncate_store(out, n_done)
            driver.load(p_ck)
            if np.datetime64(driver.now(), "m") != t_ck:
                raise RuntimeError(f"checkpoint {p_ck} restored the clock {driver.now()}, expected {t_ck}")
            log.info("resuming %s after %s (%d steps stored)", out, t_ck, n_done)

    if not out.exists():
        n_done = 0
        state_dir.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(cfg_path, {**config, "status": "spinup", "versions": _driver_versions(driver)})
        spin_ck = state_dir / "spinup.msgpack"
        spin_meta = state_dir / "spinup.json"
        if spin_ck.exists() and spin_meta.exists() and json.loads(spin_meta.read_text()).get("config") == config:
            driver.load(spin_ck)
            log.info("spin-up state loaded from %s", spin_ck)
        else:
            driver.initialize()
            if spinup_days > 0:
                bar = _bar(progress, spinup_days, 0, f"spin-up seed {seed}")
                driver.advance(float(spinup_days), float(spinup_days))  # one snapshot only, discarded
                if bar is not None:
                    bar.update(spinup_days)
                    bar.close()
            _atomic_save(driver, spin_ck)
            _atomic_write_json(spin_meta, {"config": config, "time": str(driver.now())})
        if np.datetime64(driver.now(), "m") != start64 - np.timedelta64(STEP_HOURS * 60, "m"):
            raise RuntimeError(f"model clock {driver.now()} after spin-up, expected {start64} - {STEP_HOURS} h")

    static = None
    attrs = None
    if n_done > 0:
        with xr.open_zarr(out, consolidated=True, chunks=None) as existing:
            attrs = dict(existing.attrs)
    bar = _bar(progress, total_days, n_done * STEP_HOURS / 24, f"nature run seed {seed}")
    while n_done < n_total:
        n_chunk = min(chunk_days * 24 // STEP_HOURS, n_total - n_done)
        native = driver.advance(n_chunk * STEP_HOURS / 24, SAVE_INTERVAL_DAYS)
        if static is None:
            static = convert_static(driver.static(), levels=levels)
            phis_native = np.asarray(driver.static()["phis"].transpose("lat", "lon").values)
        ds = convert_chunk(native, phis_native, levels=levels)
        expected = (
            start64
            + np.timedelta64(n_done * STEP_HOURS * 60, "m")
            + np.arange(n_chunk) * np.timedelta64(STEP_HOURS * 60, "m")
        )
        if ds.sizes["time"] != n_chunk or not np.array_equal(ds["time"].values.astype("datetime64[m]"), expected):
            raise RuntimeError(
                f"unexpected model output times {ds['time'].values[[0, -1]]}, expected {expected[[0, -1]]}"
            )
        if n_done == 0:
            ds = xr.merge([ds, static], combine_attrs="override")
            attrs = global_attrs(
                {
                    **{f"{k}": str(v) for k, v in config.items()},
                    "versions": json.dumps(_driver_versions(driver)),
                    "spinup": f"{spinup_days} model days from a random state (seed {seed}), discarded",
                    "history": "created by appa_naturerun.run_nature",
                }
            )
            ds.attrs = attrs
            ds.to_zarr(out, mode="w-", zarr_format=2, consolidated=True, encoding=encoding_for(ds))
        else:
            ds = ds.drop_vars(["level", "latitude", "longitude"])
            ds.attrs = attrs  # an append rewrites the group's attributes
            ds.to_zarr(out, mode="a", append_dim="time", zarr_format=2, consolidated=True)
        n_done += n_chunk
        t_last = expected[-1]
        _atomic_save(driver, _checkpoint_path(state_dir, t_last))
        for _, p in _list_checkpoints(state_dir)[:-2]:
            p.unlink()
        _atomic_write_json(
            cfg_path,
            {
                **config,
                "status": "running" if n_done < n_total else "done",
                "n_times": n_done,
                "last_time": str(t_last),
                "target_end_time": str(end_time),
                "versions": _driver_versions(driver),
            },
        )
        if bar is not None:
            bar.update(n_chunk * STEP_HOURS / 24)
    if bar is not None:
        bar.close()
    log.info("%s: %d steps, %.1f s wall this call", out, n_done, _time.perf_counter() - t_wall)
    return out


def _bar(progress: bool, total: float, initial: float, desc: str):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, desc=desc, unit="day", file=sys.stderr, dynamic_ncols=True)
