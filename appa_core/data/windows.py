r"""Training windows: trajectories of K consecutive states, time features and date splits.

Time features (:func:`time_features`), for a UTC time :math:`t`:

.. math::

    p_\mathrm{year} = \frac{t - \mathrm{Jan\,1\,00{:}00}(t)}{\mathrm{days\ in\ that\ year\ (365\ or\ 366)}},
    \qquad p_\mathrm{day} = \frac{t - 00{:}00(t)}{24\,\mathrm{h}},

    f(t) = \left(\sin 2\pi p_\mathrm{year},\ \cos 2\pi p_\mathrm{year},\ \sin 2\pi p_\mathrm{day},\
    \cos 2\pi p_\mathrm{day}\right),

as in Appa (year progress with leap years; time of day at longitude 0, i.e. UTC hour).

:class:`TrajectoryWindows` is a map-style ``torch.utils.data.Dataset``. Given a store path it keeps only the path
and re-opens the store lazily in each process (the open handle is never pickled), so it works with
``DataLoader(num_workers=N)`` and ``DistributedSampler`` alike; each item reads only its K time steps.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from torch.utils.data import Dataset

from appa_core.data.reader import TimeSelection, _time_slice, open_wb2
from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_core.state import _select_channels, _stack, normalize_layout

__all__ = ["TrajectoryWindows", "split_by_date", "time_features"]

_NS_PER_DAY = 86_400 * 10**9


def time_features(times: np.ndarray | Any) -> np.ndarray:
    """Year progress and time of day as ``[T, 4]`` float32: ``(sin, cos)`` of year progress, ``(sin, cos)`` of day.

    Args:
        times: ``[T]`` datetimes (anything ``np.datetime64`` accepts), UTC.

    Returns:
        ``[T, 4]`` float32; see the module docstring for the formulas. 2000-01-01T00 gives ``(0, 1, 0, 1)``;
        06 UTC gives day features ``(1, 0)``.
    """
    t = np.asarray(times).astype("datetime64[ns]").reshape(-1)
    if np.isnat(t).any():
        raise ValueError("time_features: field 'times' contains NaT")
    year = t.astype("datetime64[Y]")
    y0 = year.astype("datetime64[ns]")
    y1 = (year + 1).astype("datetime64[ns]")
    p_year = (t - y0).astype(np.int64) / (y1 - y0).astype(np.int64)
    p_day = (t - t.astype("datetime64[D]").astype("datetime64[ns]")).astype(np.int64) / _NS_PER_DAY
    a, b = 2 * np.pi * p_year, 2 * np.pi * p_day
    return np.stack([np.sin(a), np.cos(a), np.sin(b), np.cos(b)], axis=-1).astype(np.float32)


def _datetime(value: object, field: str) -> np.datetime64:
    try:
        out = np.datetime64(value, "ns")  # type: ignore[call-overload]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"split_by_date: field {field!r} has value {value!r}, not a date") from exc
    if np.isnat(out):
        raise ValueError(f"split_by_date: field {field!r} is NaT")
    return out


def split_by_date(
    times: np.ndarray | xr.Dataset | None,
    valid_start: object,
    test_start: object | None = None,
) -> dict[str, slice]:
    """Disjoint train / valid / test time ranges, cut at dates.

    ``train = [first, valid_start)``, ``valid = [valid_start, test_start)``, ``test = [test_start, last]``;
    the returned slices are inclusive label slices (the exclusive ends are encoded as the boundary minus 1 ns),
    ready for ``time=`` of :func:`~appa_core.data.open_wb2`, :func:`~appa_core.data.compute_stats` and
    :class:`TrajectoryWindows`. Windows never straddle a boundary because each split only sees its own times.

    Args:
        times: the store's times (or a Dataset with a ``time`` coordinate) to check that every split is
            non-empty; ``None`` gives open-ended outer slices.
        valid_start: first date of the validation split.
        test_start: first date of the test split (``None``: no test split).

    Returns:
        ``{"train": slice, "valid": slice[, "test": slice]}``.
    """
    one = np.timedelta64(1, "ns")
    v = _datetime(valid_start, "valid_start")
    t = _datetime(test_start, "test_start") if test_start is not None else None
    if t is not None and t <= v:
        raise ValueError(f"split_by_date: field 'test_start' {t} must be after 'valid_start' {v}")
    first = last = None
    if times is not None:
        values = np.asarray(times["time"].values if isinstance(times, xr.Dataset) else times)
        values = values.astype("datetime64[ns]").reshape(-1)
        if values.size == 0:
            raise ValueError("split_by_date: field 'times' is empty")
        first, last = values.min(), values.max()
    splits = {"train": slice(first, v - one), "valid": slice(v, (t - one) if t is not None else last)}
    if t is not None:
        splits["test"] = slice(t, last)
    if times is not None:
        for name, sl in splits.items():
            if not np.any((values >= sl.start) & (values <= sl.stop)):
                raise ValueError(
                    f"split_by_date: split {name!r} ({sl.start}..{sl.stop}) is empty; times cover {first}..{last}"
                )
    return splits


class TrajectoryWindows(Dataset):
    """Windows of ``length`` consecutive states of a WeatherBench2-layout store, as a torch Dataset.

    Item ``i`` is ``{"x": Tensor[K, C, H, W] float32 (physical units), "time_features": Tensor[K, 4] float32,
    "start": Tensor[] int64 (ns since 1970 of the first state)}``. Windows start every ``stride`` steps and take
    every ``step``-th state; windows that would span a gap in the time axis are skipped.

    Args:
        source: a store path / URL (recommended: re-opened lazily per worker, picklable) or an xarray Dataset
            (kept as is; pickled to workers, so prefer a lazy, zarr-backed one).
        spec: channels to read.
        length: ``K``, states per window.
        stride: distance between consecutive window starts, in (stored) time steps.
        time: the split's time range (``slice`` or ``(start, end)``, inclusive), e.g. from :func:`split_by_date`.
        step: distance between states inside a window, in stored steps (6 on an hourly store gives 6-hourly).
        storage_options: for URLs (see :func:`~appa_core.data.open_wb2`).

    Attributes:
        grid, times (all times of the split, ``datetime64[ns]``), starts (time index of each window start),
        timestep (time between states of a window).
    """

    def __init__(
        self,
        source: xr.Dataset | str | os.PathLike[str],
        spec: StateSpec,
        length: int,
        stride: int = 1,
        time: TimeSelection = None,
        *,
        step: int = 1,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        owner = "TrajectoryWindows"
        for field, value in (("length", length), ("stride", stride), ("step", step)):
            if not isinstance(value, int | np.integer) or value < 1:
                raise ValueError(f"{owner}: field {field!r} must be a positive integer, got {value!r}")
        self.spec = spec
        self.length = int(length)
        self.stride = int(stride)
        self.step = int(step)
        self._time = _time_slice(time, owner)
        self._storage_options = storage_options
        if isinstance(source, xr.Dataset):
            self._path: str | None = None
            self._source: xr.Dataset | None = source
        else:
            self._path = os.fspath(source)
            self._source = None
        self._ds: xr.Dataset | None = None
        self._arrays: list[xr.DataArray] | None = None
        self._pid: int | None = None
        ds = self._dataset()
        if "time" not in ds.dims:
            raise ValueError(f"{owner}: the dataset has no 'time' dimension")
        self.grid = Grid(lat=ds["latitude"].values, lon=ds["longitude"].values)
        self.times = np.asarray(ds["time"].values).astype("datetime64[ns]")
        self.starts, self.timestep = self._window_starts(owner)
        if self._path is not None:  # do not keep the handle opened by the constructor
            self._close()

    def _window_starts(self, owner: str) -> tuple[np.ndarray, np.timedelta64 | None]:
        n, span = self.times.size, (self.length - 1) * self.step
        if n <= span:
            raise ValueError(
                f"{owner}: field 'length' {self.length} (step {self.step}) needs {span + 1} time steps; "
                f"the selection has {n}"
            )
        if n < 2:
            return np.zeros(1, dtype=np.int64), None
        diffs = np.diff(self.times.astype(np.int64))
        dt = int(np.median(diffs))
        bad = np.concatenate([[0], np.cumsum(diffs != dt)])
        candidates = np.arange(0, n - span, self.stride)
        ok = bad[candidates + span] - bad[candidates] == 0
        starts = candidates[ok].astype(np.int64)
        if starts.size == 0:
            raise ValueError(f"{owner}: no gap-free window of {self.length} steps in the selection")
        return starts, np.timedelta64(dt * self.step, "ns")

    def _dataset(self) -> xr.Dataset:
        """The normalised, selected dataset of this process (re-opened after a fork / unpickling)."""
        if self._ds is not None and self._pid == os.getpid():
            return self._ds
        if self._path is not None:
            # Variables and levels are selected (lazily) by _select_channels, whose errors name this class.
            ds = open_wb2(self._path, time=self._time, chunks=None, storage_options=self._storage_options)
        else:
            ds = normalize_layout(self._source, owner="TrajectoryWindows")  # type: ignore[arg-type]
            if self._time is not None:
                ds = ds.sel(time=self._time)
        self._arrays = _select_channels(ds, self.spec, "TrajectoryWindows")
        self._ds, self._pid = ds, os.getpid()
        return ds

    def _close(self) -> None:
        if self._ds is not None and self._path is not None:
            self._ds.close()
        self._ds, self._arrays, self._pid = None, None, None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._path is not None:  # never ship an open store to another process
            state.update(_ds=None, _arrays=None, _pid=None)
        return state

    def __len__(self) -> int:
        return int(self.starts.size)

    def window_times(self, index: int) -> np.ndarray:
        """``[K]`` datetime64[ns] of window ``index``."""
        s = int(self.starts[index])
        return self.times[s : s + (self.length - 1) * self.step + 1 : self.step]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"TrajectoryWindows: index {index} out of range for {len(self)} windows")
        index = int(index) % len(self)
        self._dataset()
        s = int(self.starts[index])
        sel = slice(s, s + (self.length - 1) * self.step + 1, self.step)
        arrays = [a.isel(time=sel) if "time" in a.dims else a for a in self._arrays]  # type: ignore[union-attr]
        x = _stack(arrays, self.spec, self.length, self.grid.shape)
        times = self.times[sel]
        return {
            "x": torch.from_numpy(x),
            "time_features": torch.from_numpy(time_features(times)),
            "start": torch.tensor(int(times[0].astype(np.int64)), dtype=torch.int64),
        }
