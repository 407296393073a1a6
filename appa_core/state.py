r"""Conversion between xarray Datasets in the WeatherBench2 layout and state tensors.

The WeatherBench2 / ARCO-ERA5 layout: one data variable per physical variable, named as in ERA5
(``2m_temperature``, ``temperature``, ...); surface variables have dims ``(time, latitude, longitude)``,
atmospheric ones ``(time, level, latitude, longitude)`` with ``level`` in hPa; static fields (``land_sea_mask``)
have no ``time``. Stores differ in dim order (the 0.25 deg store is ``(..., latitude, longitude)``, the regridded
64x32 / 240x121 stores ``(..., longitude, latitude)``), in latitude direction (descending at 0.25 deg, ascending
in the regridded stores) and, outside WB2, in longitude convention (-180..180) and coordinate names
(``lat``/``lon``, ``pressure_level``). Everything here is read **by name**, never by position:

* :func:`normalize_layout` renames coordinates to ``time``/``level``/``latitude``/``longitude``, flips latitude to
  descending and rolls longitude to ascending values in [0, 360). It only re-indexes, so a lazy (dask) Dataset
  stays lazy.
* :func:`dataset_to_tensor` gathers the channels of a :class:`~appa_core.spec.StateSpec` into a ``[T, C, H, W]``
  float32 tensor in physical units (channel order of the spec, levels selected by value).
* :func:`tensor_to_dataset` is the inverse, for ``[T, C, H, W]`` or ``[B, T, C, H, W]`` (with a ``member`` dim).
"""

from __future__ import annotations

from collections.abc import Sequence

import dask
import numpy as np
import torch
import xarray as xr
from torch import Tensor

from appa_core.grid import Grid
from appa_core.spec import StateSpec

__all__ = ["dataset_to_tensor", "grid_from_dataset", "normalize_layout", "tensor_to_dataset"]

#: Alternative coordinate names found in ERA5-like stores, mapped to the WeatherBench2 names.
_ALIASES: dict[str, tuple[str, ...]] = {
    "latitude": ("lat", "Latitude", "LATITUDE", "nav_lat"),
    "longitude": ("lon", "Longitude", "LONGITUDE", "nav_lon"),
    "level": ("pressure_level", "isobaricInhPa", "plev", "lev"),
    "time": ("valid_time",),
}
_SPATIAL = ("latitude", "longitude")


def _rename(ds: xr.Dataset) -> xr.Dataset:
    names = set(ds.dims) | set(ds.coords)
    mapping: dict[str, str] = {}
    for target, aliases in _ALIASES.items():
        if target in names:
            continue
        for alias in aliases:
            if alias in names:
                mapping[alias] = target
                break
    return ds.rename(mapping) if mapping else ds


def normalize_layout(ds: xr.Dataset, *, owner: str = "normalize_layout") -> xr.Dataset:
    """Bring a WeatherBench2-like Dataset to the canonical layout, lazily.

    * coordinate names ``lat``/``lon``/``pressure_level``/``valid_time`` (and a few others) become
      ``latitude``/``longitude``/``level``/``time``;
    * pressure levels given in Pa (``units == "Pa"`` or values above 2000) are converted to hPa;
    * latitude is flipped to **descending** (north to south);
    * longitude is wrapped with ``lon % 360`` and sorted ascending, so -180..180 stores become 0..360.

    Dim order is left alone (readers transpose by name). Only ``isel`` re-indexing is used, so dask-backed
    variables stay lazy. With or without pole rows is accepted.

    Raises:
        ValueError: if ``latitude`` or ``longitude`` is missing (naming ``owner``).
    """
    ds = _rename(ds)
    for name in _SPATIAL:
        if name not in ds.coords and name not in ds.dims:
            raise ValueError(
                f"{owner}: the dataset has no {name!r} coordinate (nor an alias); dims are {list(ds.dims)}"
            )
    if "level" in ds.dims and "level" in ds.coords:
        lev = np.asarray(ds["level"].values, dtype=np.float64)
        if lev.size and (ds["level"].attrs.get("units") == "Pa" or np.nanmax(lev) > 2000):
            ds = ds.assign_coords(level=("level", lev / 100.0, {**ds["level"].attrs, "units": "hPa"}))
    lat = np.asarray(ds["latitude"].values, dtype=np.float64)
    if lat.size > 1 and not np.all(np.diff(lat) < 0):
        ds = ds.isel(latitude=np.argsort(-lat, kind="stable"))
    lon = ds["longitude"]
    lon_values = np.asarray(lon.values, dtype=np.float64)
    wrapped = np.mod(lon_values, 360.0)
    if not np.array_equal(wrapped, lon_values):
        ds = ds.assign_coords(longitude=("longitude", wrapped.astype(lon.dtype), lon.attrs))
    if lon_values.size > 1 and not np.all(np.diff(wrapped) > 0):
        ds = ds.isel(longitude=np.argsort(wrapped, kind="stable"))
    return ds


def grid_from_dataset(ds: xr.Dataset) -> Grid:
    """The :class:`~appa_core.grid.Grid` of a (normalised or not) WeatherBench2-layout Dataset."""
    ds = normalize_layout(ds, owner="grid_from_dataset")
    return Grid(lat=ds["latitude"].values, lon=ds["longitude"].values)


def _level_indices(available: np.ndarray, wanted: Sequence[int], variable: str, owner: str) -> list[int]:
    idx = []
    for lev in wanted:
        hits = np.flatnonzero(np.isclose(available, float(lev), rtol=0.0, atol=1e-3))
        if hits.size == 0:
            raise ValueError(
                f"{owner}: variable {variable!r} has no level {lev} hPa; available levels are "
                f"{[int(v) if float(v).is_integer() else float(v) for v in available]}"
            )
        idx.append(int(hits[0]))
    return idx


def _select_channels(ds: xr.Dataset, spec: StateSpec, owner: str) -> list[xr.DataArray]:
    """One DataArray per variable, dims ``(time, [level,] latitude, longitude)``, levels as in ``spec``.

    Static variables (no ``time``) keep no time dim; singleton extra dims are squeezed.
    """
    missing = [v for v in spec.variables if v not in ds.data_vars]
    if missing:
        raise ValueError(
            f"{owner}: variable {missing[0]!r} is not in the dataset; available variables are {sorted(ds.data_vars)}"
        )
    out = []
    for var in spec.variables:
        da = ds[var]
        extra = [d for d in da.dims if d not in ("time", "level", *_SPATIAL)]
        for d in extra:
            if da.sizes[d] != 1:
                raise ValueError(
                    f"{owner}: variable {var!r} has an extra dimension {d!r} of size {da.sizes[d]}; select it first"
                )
        if extra:
            da = da.squeeze(extra, drop=True)
        for d in _SPATIAL:
            if d not in da.dims:
                raise ValueError(f"{owner}: variable {var!r} has no {d!r} dimension; dims are {list(da.dims)}")
        if var in spec.atmospheric:
            if "level" not in da.dims:
                raise ValueError(
                    f"{owner}: variable {var!r} is atmospheric in the spec but has no 'level' dimension; "
                    f"dims are {list(da.dims)}"
                )
            idx = _level_indices(np.asarray(da["level"].values, dtype=np.float64), spec.levels, var, owner)
            da = da.isel(level=idx)
        elif "level" in da.dims:
            if da.sizes["level"] != 1:
                raise ValueError(
                    f"{owner}: variable {var!r} is a surface variable in the spec but has {da.sizes['level']} levels"
                )
            da = da.squeeze("level", drop=True)
        order = [d for d in ("time", "level", *_SPATIAL) if d in da.dims]
        out.append(da.transpose(*order))
    return out


def _times_of(ds: xr.Dataset) -> np.ndarray:
    if "time" not in ds.coords:
        return np.empty(0, dtype="datetime64[ns]")
    return np.asarray(ds["time"].values).astype("datetime64[ns]").reshape(-1)


def dataset_to_tensor(ds: xr.Dataset, spec: StateSpec, grid: Grid | None = None) -> tuple[Tensor, np.ndarray, Grid]:
    """Gather the channels of ``spec`` from a WeatherBench2-layout Dataset.

    Args:
        ds: Dataset with the spec's variables; any dim order, either latitude direction, longitudes in
            -180..180 or 0..360, coordinate aliases accepted (see :func:`normalize_layout`). Atmospheric variables
            need a ``level`` coordinate (hPa) holding every level of ``spec.levels`` (selected by value). Static
            variables without ``time`` are repeated over time. May be lazy (dask): only the selected channels
            are loaded.
        spec: which variables / levels, in which channel order.
        grid: expected grid; if given, the dataset's coordinates must match it (no regridding happens).

    Returns:
        ``(x, times, grid)``: ``x`` a float32 tensor ``[T, C, H, W]`` in physical units (NaNs kept), ``times``
        ``datetime64[ns]`` ``[T]``, and the dataset's grid (latitudes descending, longitudes in [0, 360)).

    Raises:
        ValueError: naming the missing variable or level (and listing what is there), or a grid mismatch.
    """
    owner = "dataset_to_tensor"
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"{owner}: field 'ds' must be an xarray.Dataset, got {type(ds).__name__}")
    ds = normalize_layout(ds, owner=owner)
    ds_grid = Grid(lat=ds["latitude"].values, lon=ds["longitude"].values)
    if grid is not None and grid != ds_grid:
        raise ValueError(
            f"{owner}: field 'grid' {grid.shape} does not match the dataset's grid {ds_grid.shape} "
            f"(lat {ds_grid.lat[0]}..{ds_grid.lat[-1]}, lon {ds_grid.lon[0]}..{ds_grid.lon[-1]})"
        )
    arrays = _select_channels(ds, spec, owner)
    times = _times_of(ds)
    n_t = times.size if "time" in ds.dims else 1
    x = _stack(arrays, spec, n_t, ds_grid.shape)
    if "time" not in ds.dims:
        times = times if times.size == 1 else np.full(1, np.datetime64("NaT"), dtype="datetime64[ns]")
    return torch.from_numpy(x), times, ds_grid


def _load(arrays: list[xr.DataArray]) -> list[np.ndarray]:
    """Values of the DataArrays; the dask-backed ones are computed in one graph (shared chunk reads)."""
    lazy = [i for i, a in enumerate(arrays) if a.chunks is not None]
    out: list[np.ndarray | None] = [None] * len(arrays)
    if lazy:
        computed = dask.compute(*[arrays[i].data for i in lazy])
        for i, v in zip(lazy, computed, strict=True):
            out[i] = np.asarray(v)
    for i, a in enumerate(arrays):
        if out[i] is None:
            out[i] = np.asarray(a.values)
    return out  # type: ignore[return-value]


def _stack(arrays: list[xr.DataArray], spec: StateSpec, n_t: int, shape: tuple[int, int]) -> np.ndarray:
    """Load the selected DataArrays into a float32 ``[T, C, H, W]`` array (static fields repeated over T)."""
    x = np.empty((n_t, spec.n_channels, *shape), dtype=np.float32)
    c = 0
    for var, da, values in zip(spec.variables, arrays, _load(arrays), strict=True):
        values = values.astype(np.float32, copy=False)
        if "time" not in da.dims:
            values = values[None]
        if var in spec.atmospheric:
            n = len(spec.levels)
            x[:, c : c + n] = values
        else:
            n = 1
            x[:, c] = values
        c += n
    return x


def tensor_to_dataset(
    x: Tensor | np.ndarray,
    spec: StateSpec,
    grid: Grid,
    times: np.ndarray | Sequence[object],
    member_dim: str = "member",
    name_prefix: str | None = None,
) -> xr.Dataset:
    """Write a state tensor as a WeatherBench2-layout Dataset (the inverse of :func:`dataset_to_tensor`).

    Args:
        x: ``[T, C, H, W]`` or ``[B, T, C, H, W]`` in physical units (torch or numpy; detached and moved to CPU).
        spec: channel layout of ``x``.
        grid: grid of ``x`` (``H = len(grid.lat)``, ``W = len(grid.lon)``).
        times: ``[T]`` datetimes (anything ``np.datetime64`` accepts).
        member_dim: name of the leading dim for ``[B, T, C, H, W]`` input (coordinate ``0..B-1``).
        name_prefix: prepended to every variable name (``"analysis_"`` gives ``analysis_2m_temperature``).

    Returns:
        Dataset with surface variables ``([member,] time, latitude, longitude)`` and atmospheric variables
        ``([member,] time, level, latitude, longitude)``; coordinates ``time`` (datetime64[ns]), ``level``
        (int64, hPa), ``latitude`` (descending), ``longitude``; ``units`` attrs from ``spec.units``. float32
        (float64 input stays float64).
    """
    owner = "tensor_to_dataset"
    array = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if array.ndim not in (4, 5):
        raise ValueError(f"{owner}: field 'x' must be [T, C, H, W] or [B, T, C, H, W], got shape {array.shape}")
    if array.dtype != np.float64:
        array = array.astype(np.float32, copy=False)
    t_axis = array.ndim - 4
    n_t, n_c, n_h, n_w = array.shape[t_axis:]
    if n_c != spec.n_channels:
        raise ValueError(f"{owner}: field 'x' has {n_c} channels but the spec has {spec.n_channels}")
    if (n_h, n_w) != grid.shape:
        raise ValueError(f"{owner}: field 'x' has spatial shape {(n_h, n_w)} but the grid is {grid.shape}")
    time_values = np.asarray(times).astype("datetime64[ns]").reshape(-1)
    if time_values.size != n_t:
        raise ValueError(f"{owner}: field 'times' has {time_values.size} values but 'x' has {n_t} time steps")
    lead = (member_dim, "time") if array.ndim == 5 else ("time",)
    coords: dict[str, object] = {
        "time": time_values,
        "latitude": ("latitude", grid.lat.copy(), {"units": "degrees_north", "long_name": "latitude"}),
        "longitude": ("longitude", grid.lon.copy(), {"units": "degrees_east", "long_name": "longitude"}),
    }
    if spec.levels:
        coords["level"] = ("level", np.asarray(spec.levels, dtype=np.int64), {"units": "hPa", "long_name": "pressure"})
    if array.ndim == 5:
        coords[member_dim] = np.arange(array.shape[0], dtype=np.int64)
    prefix = name_prefix or ""
    data_vars: dict[str, xr.Variable] = {}
    c = 0
    for var in spec.surface:
        data_vars[prefix + var] = xr.Variable(
            (*lead, *_SPATIAL), array[..., c, :, :], {"units": spec.units.get(var, "unknown")}
        )
        c += 1
    n_lev = len(spec.levels)
    for var in spec.atmospheric:
        data_vars[prefix + var] = xr.Variable(
            (*lead, "level", *_SPATIAL), array[..., c : c + n_lev, :, :], {"units": spec.units.get(var, "unknown")}
        )
        c += n_lev
    return xr.Dataset(data_vars, coords=coords)
