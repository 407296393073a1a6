r"""Per-channel normalization statistics, area-weighted, computed over the training split only.

For a channel :math:`c` with values :math:`x_{t,h,w}` (NaNs excluded through the indicator
:math:`m_{t,h,w} = [x_{t,h,w} \text{ finite}]`) and the grid's area weights :math:`a_h` (mean 1,
:meth:`appa_core.grid.Grid.area_weights`):

.. math::

    \mu_c = \frac{\sum_{t,h,w} a_h m\, x}{\sum_{t,h,w} a_h m}, \qquad
    \sigma_c^2 = \frac{\sum_{t,h,w} a_h m\, (x - \mu_c)^2}{\sum_{t,h,w} a_h m}.

The sums are accumulated in float64 block by block over time (each block read through dask, chunk by chunk), on
values shifted by a per-channel constant (the mean of the first time step) so that :math:`E[x^2] - E[x]^2` does not
cancel catastrophically (e.g. pressure ~1e5 Pa with std ~1e3 Pa).

:class:`NormStats` holds the result (physical units) with its :class:`~appa_core.spec.StateSpec` and applies
``(x - mean) / std`` over the channel dim ``-3`` of ``[..., C, H, W]`` tensors.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import attrs
import dask
import dask.array as dsa
import numpy as np
import torch
import xarray as xr
from torch import Tensor

from appa_core.data.reader import TimeSelection, _time_slice, open_wb2
from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_core.state import _select_channels, normalize_layout

__all__ = ["NormStats", "compute_stats"]

_FORMAT = "appa-normstats"
_VERSION = 1


def _vector(values: object) -> np.ndarray:
    array = np.array(values, dtype=np.float64).reshape(-1)
    array.setflags(write=False)
    return array


@attrs.frozen(eq=False)
class NormStats:
    """Per-channel mean and standard deviation of a state, in physical units.

    Attributes:
        spec: the channel layout the statistics belong to.
        mean: ``[C]`` channel means (units of each channel's variable).
        std: ``[C]`` channel standard deviations, all > 0.
        metadata: free-form provenance (source store, time range, number of steps...), saved in the JSON.
    """

    spec: StateSpec
    mean: np.ndarray = attrs.field(converter=_vector)
    std: np.ndarray = attrs.field(converter=_vector)
    metadata: dict[str, Any] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        n = self.spec.n_channels
        names = self.spec.channel_names()
        for field in ("mean", "std"):
            values = getattr(self, field)
            if values.shape != (n,):
                raise ValueError(f"NormStats: field {field!r} has shape {values.shape}, the spec has {n} channels")
            bad = np.flatnonzero(~np.isfinite(values))
            if bad.size:
                i = int(bad[0])
                raise ValueError(f"NormStats: field {field!r} has value {values[i]} for channel {names[i]!r}")
        bad = np.flatnonzero(self.std <= 0)
        if bad.size:
            i = int(bad[0])
            raise ValueError(f"NormStats: field 'std' has value {self.std[i]} for channel {names[i]!r}; must be > 0")

    @property
    def channel_names(self) -> list[str]:
        return self.spec.channel_names()

    def _coefficients(self, x: Tensor, owner: str) -> tuple[Tensor, Tensor]:
        if x.ndim < 3 or x.shape[-3] != self.spec.n_channels:
            raise ValueError(
                f"NormStats.{owner}: field 'x' must be [..., C, H, W] with C = {self.spec.n_channels}, "
                f"got shape {tuple(x.shape)}"
            )
        dtype = x.dtype if x.is_floating_point() else torch.float32
        mean = torch.tensor(self.mean.copy(), dtype=dtype, device=x.device)[:, None, None]
        std = torch.tensor(self.std.copy(), dtype=dtype, device=x.device)[:, None, None]
        return mean, std

    def standardize(self, x: Tensor) -> Tensor:
        """``(x - mean) / std`` for ``x`` of shape ``[..., C, H, W]`` (physical units -> unitless). NaNs stay NaN."""
        mean, std = self._coefficients(x, "standardize")
        return (x - mean) / std

    def destandardize(self, x: Tensor) -> Tensor:
        """``x * std + mean`` for ``x`` of shape ``[..., C, H, W]`` (unitless -> physical units)."""
        mean, std = self._coefficients(x, "destandardize")
        return x * std + mean

    def select(self, spec: StateSpec) -> NormStats:
        """The statistics of the channels of ``spec`` (a sub-spec of this one), in ``spec``'s channel order."""
        idx = [self.spec.index(c.variable, c.level, owner="NormStats.select") for c in spec.channels]
        return NormStats(spec=spec, mean=self.mean[idx], std=self.std[idx], metadata=dict(self.metadata))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form: spec, channel names, and per-channel mean and std."""
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "spec": self.spec.to_dict(),
            "channels": self.channel_names,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormStats:
        if data.get("format") != _FORMAT:
            raise ValueError(f"NormStats: field 'format' has value {data.get('format')!r}; expected {_FORMAT!r}")
        spec = StateSpec.from_dict(data["spec"])
        if list(data.get("channels", spec.channel_names())) != spec.channel_names():
            raise ValueError(
                f"NormStats: field 'channels' {data['channels']} does not match the spec's {spec.channel_names()}"
            )
        return cls(spec=spec, mean=data["mean"], std=data["std"], metadata=dict(data.get("metadata", {})))

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON (floats round-trip exactly)."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> NormStats:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _as_dask(da: xr.DataArray) -> dsa.Array:
    return da.data if da.chunks is not None else dsa.from_array(np.asarray(da.values), chunks=-1)


def _time_chunk(arrays: list[xr.DataArray]) -> int:
    for da in arrays:
        if "time" in da.dims and da.chunks is not None:
            return int(da.chunksizes["time"][0])
    return 1


def compute_stats(
    source: xr.Dataset | str | os.PathLike[str],
    spec: StateSpec,
    time: TimeSelection = None,
    *,
    block_bytes: int = 256 * 2**20,
    progress: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> NormStats:
    """Area-weighted, NaN-aware per-channel mean and std of ``spec``'s channels over ``time``.

    Args:
        source: a WeatherBench2-layout Dataset (lazy or not) or a store path / URL (opened with :func:`open_wb2`).
        spec: the channels.
        time: the **training** split, ``slice(start, end)`` or ``(start, end)`` (inclusive, as in xarray); never
            include validation/test dates. ``None`` uses all times.
        block_bytes: upper bound on the float32 bytes of one block of time steps read at once; blocks are whole
            multiples of the store's time chunk, read through dask chunk by chunk.
        progress: show a tqdm progress bar over blocks.
        storage_options: for URLs (see :func:`open_wb2`).

    Returns:
        :class:`NormStats` with provenance in ``metadata`` (time range, steps, source).

    Raises:
        ValueError: a channel that is NaN everywhere over the selection, or constant (std 0), naming it; a
        missing variable or level; an empty time selection.
    """
    owner = "compute_stats"
    if isinstance(source, xr.Dataset):
        ds = normalize_layout(source, owner=owner)
        window = _time_slice(time, owner)
        if window is not None and "time" in ds.dims:
            ds = ds.sel(time=window)
        source_name = str(source.encoding.get("source", "<dataset>"))
    else:
        ds = open_wb2(source, variables=spec.variables, levels=spec.levels, time=time, storage_options=storage_options)
        source_name = str(source)
    if "time" in ds.dims and ds.sizes["time"] == 0:
        raise ValueError(f"{owner}: field 'time' has value {time!r}, which selects no time step")
    grid = Grid(lat=ds["latitude"].values, lon=ds["longitude"].values)
    arrays = _select_channels(ds, spec, owner)
    weights = grid.area_weights()
    n_t = ds.sizes.get("time", 1)
    bytes_per_step = 4 * spec.n_channels * grid.nlat * grid.nlon
    chunk = _time_chunk(arrays)
    per_block = max(chunk, (block_bytes // max(bytes_per_step, 1)) // chunk * chunk)
    starts = range(0, n_t, per_block)
    shift = _first_step_means(arrays, spec)
    sums = np.zeros((3, spec.n_channels), dtype=np.float64)
    iterator = starts
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(starts, desc="compute_stats", unit="block")
    for i, start in enumerate(iterator):
        block = slice(start, min(start + per_block, n_t))
        # Static variables (no time) enter once, in the first block.
        sums += _block_sums(arrays, spec, block, weights, shift, include_static=i == 0)
    s0, s1, s2 = sums
    names = spec.channel_names()
    for c in np.flatnonzero(s0 <= 0):
        raise ValueError(f"{owner}: channel {names[c]!r} is all NaN over the selected times; drop it from the spec")
    d_mean = s1 / s0
    mean = shift + d_mean
    var = np.maximum(s2 / s0 - d_mean**2, 0.0)
    std = np.sqrt(var)
    for c in np.flatnonzero(~(std > 0)):
        raise ValueError(f"{owner}: channel {names[c]!r} is constant (std 0, value {mean[c]}); drop it from the spec")
    times = np.asarray(ds["time"].values).astype("datetime64[ns]") if "time" in ds.dims else np.empty(0)
    metadata = {
        "source": source_name,
        "time_start": str(times[0]) if times.size else None,
        "time_end": str(times[-1]) if times.size else None,
        "n_times": int(times.size),
        "area_weighted": True,
        "grid": list(grid.shape),
    }
    return NormStats(spec=spec, mean=mean, std=std, metadata=metadata)


def _channel_slices(spec: StateSpec) -> list[slice]:
    out, c = [], 0
    for var in spec.variables:
        n = len(spec.levels) if var in spec.atmospheric else 1
        out.append(slice(c, c + n))
        c += n
    return out


def _first_step_means(arrays: list[xr.DataArray], spec: StateSpec) -> np.ndarray:
    """Per-channel NaN-mean of the first time step (0 where all NaN): the shift for stable accumulation."""
    parts = []
    for da in arrays:
        a = _as_dask(da)
        a = a[0] if "time" in da.dims else a
        a = a[None] if a.ndim == 2 else a  # (levels or 1, H, W)
        parts.append(dsa.nanmean(a.astype(np.float64).reshape((a.shape[0], -1)), axis=1))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        values = dask.compute(*parts)
    shift = np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1) for v in values])
    if shift.size != spec.n_channels:
        raise AssertionError(f"compute_stats: internal error, {shift.size} shifts for {spec.n_channels} channels")
    return np.nan_to_num(shift, nan=0.0)


def _block_sums(
    arrays: list[xr.DataArray],
    spec: StateSpec,
    block: slice,
    weights: np.ndarray,
    shift: np.ndarray,
    include_static: bool,
) -> np.ndarray:
    """``[3, C]`` float64 weighted sums (count, x - shift, (x - shift)^2) of one block of time steps."""
    w = weights[:, None]
    parts, targets = [], []
    for da, channels in zip(arrays, _channel_slices(spec), strict=True):
        has_time = "time" in da.dims
        if not has_time and not include_static:
            continue
        a = _as_dask(da)
        a = a[block] if has_time else a[None]
        if a.ndim == 3:  # surface: (t, h, w) -> (t, 1, h, w)
            a = a[:, None]
        d = a.astype(np.float64) - shift[channels][None, :, None, None]
        valid = dsa.isfinite(d)
        dz = dsa.where(valid, d, 0.0)
        axes = (0, 2, 3)
        parts += [(valid * w).sum(axis=axes), (dz * w).sum(axis=axes), (dz * dz * w).sum(axis=axes)]
        targets.append(channels)
    out = np.zeros((3, spec.n_channels), dtype=np.float64)
    if not parts:
        return out
    values = dask.compute(*parts)
    for k, channels in enumerate(targets):
        for j in range(3):
            out[j, channels] = values[3 * k + j]
    return out
