r"""Lazy reader for WeatherBench2 / ARCO-ERA5 zarr stores (and any store in that layout).

:func:`open_wb2` opens a zarr store (format v2 or v3; a directory, a ``.zip`` file or an fsspec URL such as
``gs://...``) with xarray + dask, without reading any data, then selects variables, pressure levels, a time range
and optionally a coarser time step or a spatial stride, and brings the coordinates to the canonical layout
(:func:`appa_core.state.normalize_layout`): ``latitude`` descending, ``longitude`` ascending in [0, 360), WB2
names. The result stays lazy, so a 0.25 deg hourly store is never loaded whole; call
:func:`appa_core.state.dataset_to_tensor` on a small selection to get tensors.

The real WeatherBench2 ERA5 stores (public, anonymous access; needs ``pip install 'appa-core[gcs]'``)::

    from appa_core.data import open_wb2, wb2_era5_url, DEMO_SPEC
    ds = open_wb2(
        "gs://weatherbench2/datasets/era5/1959-2023_01_10-wb13-6h-1440x721_with_derived_variables.zarr",
        variables=DEMO_SPEC.variables, levels=DEMO_SPEC.levels, time=("2020-01-01", "2020-12-31"),
    )  # storage_options defaults to {"token": "anon"} for gs:// URLs
    ds64 = open_wb2(wb2_era5_url("64x32"), variables=["2m_temperature", "geopotential"], levels=[500])
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from appa_core.state import normalize_layout

__all__ = ["WB2_ERA5", "open_wb2", "wb2_era5_url"]

_WB2_BUCKET = "gs://weatherbench2/datasets/era5/"

#: The WeatherBench2 ERA5 stores by resolution (``"nlon x nlat"``), 6-hourly, 13 levels, 1959 to 2023-01-10.
#: ``1440x721`` and ``240x121`` include the poles; ``64x32`` does not. The regridded stores have ascending
#: latitudes and dims ``(time, [level], longitude, latitude)``; :func:`open_wb2` normalises both.
WB2_ERA5: dict[str, str] = {
    "1440x721": _WB2_BUCKET + "1959-2023_01_10-wb13-6h-1440x721_with_derived_variables.zarr",
    "240x121": _WB2_BUCKET + "1959-2023_01_10-6h-240x121_equiangular_with_poles_conservative.zarr",
    "64x32": _WB2_BUCKET + "1959-2023_01_10-6h-64x32_equiangular_conservative.zarr",
}

#: fsspec protocols and the optional package (and extra) that provides each.
_PROTOCOL_PACKAGES: dict[str, tuple[str, str]] = {
    "gs": ("gcsfs", "pip install 'appa-core[gcs]'"),
    "gcs": ("gcsfs", "pip install 'appa-core[gcs]'"),
    "s3": ("s3fs", "pip install s3fs"),
    "az": ("adlfs", "pip install adlfs"),
    "abfs": ("adlfs", "pip install adlfs"),
}

TimeSelection = slice | tuple[Any, Any] | list[Any] | None


def wb2_era5_url(resolution: str = "64x32") -> str:
    """URL of the WeatherBench2 ERA5 store at ``resolution`` (a key of :data:`WB2_ERA5`)."""
    if resolution not in WB2_ERA5:
        raise ValueError(f"wb2_era5_url: field 'resolution' has value {resolution!r}; known are {sorted(WB2_ERA5)}")
    return WB2_ERA5[resolution]


def _protocol(path: str) -> str | None:
    return path.split("://", 1)[0].lower() if "://" in path else None


def _time_slice(time: TimeSelection, owner: str) -> slice | None:
    """A label slice (both ends inclusive, as in xarray) from a slice or a (start, end) pair."""
    if time is None or isinstance(time, slice):
        return time
    if isinstance(time, tuple | list) and len(time) == 2:
        return slice(time[0], time[1])
    raise TypeError(f"{owner}: field 'time' must be a slice or a (start, end) pair, got {time!r}")


def _open_zarr(store: object, chunks: Any, storage_options: dict[str, Any] | None) -> xr.Dataset:
    """``xr.open_zarr`` trying consolidated metadata first (WB2 stores are consolidated v2), then without."""
    kwargs: dict[str, Any] = {"chunks": chunks}
    if storage_options is not None:
        kwargs["storage_options"] = storage_options
    try:
        return xr.open_zarr(store, consolidated=True, **kwargs)
    except (KeyError, ValueError, FileNotFoundError, OSError):
        return xr.open_zarr(store, consolidated=False, **kwargs)


def _open_store(path_or_url: str | os.PathLike[str], chunks: Any, storage_options: dict[str, Any] | None) -> xr.Dataset:
    owner = "open_wb2"
    if isinstance(path_or_url, os.PathLike) or _protocol(str(path_or_url)) in (None, "file"):
        path = Path(str(path_or_url).removeprefix("file://"))
        if not path.exists():
            raise FileNotFoundError(f"{owner}: store {str(path)!r} does not exist")
        if path.is_file() and path.suffix == ".zip":
            import zarr.storage

            return _open_zarr(zarr.storage.ZipStore(str(path), mode="r"), chunks, None)
        return _open_zarr(str(path), chunks, None)
    url = str(path_or_url)
    proto = _protocol(url)
    if proto in _PROTOCOL_PACKAGES:
        package, hint = _PROTOCOL_PACKAGES[proto]  # type: ignore[index]
        if importlib.util.find_spec(package) is None:
            raise ImportError(f"{owner}: reading {proto}:// URLs needs the optional package {package!r}; {hint}")
    if proto in ("gs", "gcs") and storage_options is None:
        storage_options = {"token": "anon"}
    return _open_zarr(url, chunks, storage_options)


def _select_levels(ds: xr.Dataset, levels: Sequence[float], owner: str) -> xr.Dataset:
    if "level" not in ds.coords:
        raise ValueError(f"{owner}: field 'levels' was given but the store has no 'level' coordinate")
    available = np.asarray(ds["level"].values, dtype=np.float64)
    idx = []
    for lev in levels:
        hits = np.flatnonzero(np.isclose(available, float(lev), rtol=0.0, atol=1e-3))
        if hits.size == 0:
            shown = [int(v) if float(v).is_integer() else float(v) for v in available]
            raise ValueError(f"{owner}: level {lev} hPa is not in the store; available levels are {shown}")
        idx.append(int(hits[0]))
    return ds.isel(level=idx)


def _select_timestep(ds: xr.Dataset, timestep: str | np.timedelta64, owner: str) -> xr.Dataset:
    step = np.timedelta64(timestep) if not isinstance(timestep, str) else np.timedelta64(_parse_step(timestep, owner))
    step_ns = step.astype("timedelta64[ns]").astype(np.int64)
    if step_ns <= 0:
        raise ValueError(f"{owner}: field 'timestep' must be positive, got {timestep!r}")
    t = np.asarray(ds["time"].values).astype("datetime64[ns]").astype(np.int64)
    return ds.isel(time=np.flatnonzero(t % step_ns == 0))


def _parse_step(text: str, owner: str) -> np.timedelta64:
    units = {"h": "h", "d": "D", "m": "m", "min": "m", "s": "s"}
    number = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    unit = text[len(number) :].lower()
    if not number.isdigit() or unit not in units:
        raise ValueError(f"{owner}: field 'timestep' has value {text!r}; use e.g. '6h', '1D' or np.timedelta64")
    return np.timedelta64(int(number), units[unit])


def open_wb2(
    path_or_url: str | os.PathLike[str],
    variables: Sequence[str] | None = None,
    levels: Sequence[float] | None = None,
    time: TimeSelection = None,
    *,
    time_stride: int = 1,
    timestep: str | np.timedelta64 | None = None,
    spatial_stride: int = 1,
    chunks: Any = "auto",
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Open a WeatherBench2-layout zarr store lazily and select what is asked for, by name.

    Args:
        path_or_url: a local directory store, a zipped store (``*.zip``), or an fsspec URL (``gs://``,
            ``s3://``, ``file://``, ``memory://``...). zarr format v2 (WB2, consolidated) or v3.
        variables: data variables to keep (default: all). Static fields (``land_sea_mask``...) must be listed too
            if wanted.
        levels: pressure levels in hPa to keep, selected by value (default: all).
        time: ``slice(start, end)`` or a ``(start, end)`` pair of dates, both ends inclusive (xarray label
            semantics); ``None`` keeps all.
        time_stride: keep every ``time_stride``-th step after the time selection (e.g. 6 on an hourly store).
        timestep: keep only times that are multiples of this step since 1970-01-01 (``"6h"`` keeps 00/06/12/18
            UTC of an hourly store), applied before ``time_stride``.
        spatial_stride: keep every ``spatial_stride``-th latitude and longitude (a quick, aliasing subsample for
            previews; use the regridded WB2 stores for real coarse data). Must divide the number of longitudes.
        chunks: passed to ``xr.open_zarr``: ``"auto"`` (dask chunks that are multiples of the storage chunks),
            ``{}`` (storage chunks), a dict, or ``None`` (no dask: lazily indexed arrays, best for per-sample reads).
        storage_options: fsspec options for URLs; defaults to ``{"token": "anon"}`` for ``gs://`` (the WB2 bucket
            is public).

    Returns:
        A lazy Dataset with coordinates ``time``, ``level`` (hPa), ``latitude`` (descending) and ``longitude``
        (ascending in [0, 360)); dim order within each variable is left as stored (convert by name).

    Raises:
        FileNotFoundError: local store missing.
        ImportError: the fsspec backend (e.g. gcsfs) is not installed.
        ValueError: a requested variable or level is absent (the message lists what is there), or the time
            selection is empty.
    """
    owner = "open_wb2"
    for field, value in (("time_stride", time_stride), ("spatial_stride", spatial_stride)):
        if not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{owner}: field {field!r} must be a positive integer, got {value!r}")
    ds = _open_store(path_or_url, chunks, storage_options)
    if variables is not None:
        variables = [str(v) for v in ([variables] if isinstance(variables, str) else variables)]
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise ValueError(
                f"{owner}: variable {missing[0]!r} is not in the store; available variables are {sorted(ds.data_vars)}"
            )
        ds = ds[variables]
    ds = normalize_layout(ds, owner=owner)
    if levels is not None:
        ds = _select_levels(ds, list(levels), owner)
    window = _time_slice(time, owner)
    if "time" in ds.dims:
        t_all = np.asarray(ds["time"].values).astype("datetime64[ns]")
        if window is not None:
            ds = ds.sel(time=window)
        if timestep is not None:
            ds = _select_timestep(ds, timestep, owner)
        if time_stride > 1:
            ds = ds.isel(time=slice(None, None, time_stride))
        if ds.sizes["time"] == 0:
            span = f"{t_all[0]}..{t_all[-1]}" if t_all.size else "no times"
            raise ValueError(
                f"{owner}: field 'time' has value {time!r}, which selects no time step; store covers {span}"
            )
    elif window is not None:
        raise ValueError(f"{owner}: field 'time' was given but the selection has no 'time' dimension")
    if spatial_stride > 1:
        nlon = ds.sizes["longitude"]
        if nlon % spatial_stride:
            raise ValueError(f"{owner}: field 'spatial_stride' {spatial_stride} does not divide {nlon} longitudes")
        ds = ds.isel(latitude=slice(None, None, spatial_stride), longitude=slice(None, None, spatial_stride))
    return ds
