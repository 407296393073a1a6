"""Input normalisation shared by the field operators (private)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from appa_core.grid import Grid
from appa_core.obs._validate import check_finite, to_float_array

__all__ = ["broadcast_floats", "broadcast_strings", "field_on_grid"]


def broadcast_floats(owner: str, field: str, values: object, m: int) -> np.ndarray:
    """A scalar (broadcast to ``[m]``) or a 1-D array as float64; the length is checked by the caller."""
    array = to_float_array(owner, field, values, ndim=None)
    if array.ndim == 0:
        return np.full(m, float(array))
    if array.ndim != 1:
        raise ValueError(f"{owner}: field {field!r} must be a scalar or 1-D, got shape {array.shape}")
    return array


def broadcast_strings(owner: str, field: str, values: str | Sequence[str] | np.ndarray, m: int) -> np.ndarray:
    """A string (broadcast to ``[m]``) or a sequence of strings, as a numpy ``str`` array."""
    if isinstance(values, str):
        return np.full(m, values, dtype=object).astype(str)
    array = np.asarray(values, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"{owner}: field {field!r} must be a string or a 1-D sequence of strings, got {values!r:.80}")
    is_str = np.frompyfunc(lambda v: isinstance(v, str | np.str_), 1, 1)(array).astype(bool)
    if not is_str.all():
        i = int(np.flatnonzero(~is_str)[0])
        raise TypeError(f"{owner}: field {field!r} has value {array[i]!r} at index {i}; must be a string")
    return array.astype(str)


def field_on_grid(owner: str, field: str, data: object, grid: Grid) -> np.ndarray:
    """A static 2-D field (e.g. surface geopotential) as ``[H, W]`` float64 on ``grid``.

    ``data`` is a numpy array ``[H, W]`` in the grid's order, or an ``xarray.DataArray`` with dims ``latitude`` and
    ``longitude`` (any order, any latitude direction: it is matched to the grid by coordinate values).
    """
    if hasattr(data, "dims") and hasattr(data, "coords"):
        da = data.squeeze(drop=True)  # type: ignore[attr-defined]
        if set(da.dims) != {"latitude", "longitude"}:
            raise ValueError(f"{owner}: field {field!r} must have dims ('latitude', 'longitude'), got {da.dims}")
        da = da.transpose("latitude", "longitude")
        lat = np.asarray(da["latitude"].values, dtype=np.float64)
        lon = np.mod(np.asarray(da["longitude"].values, dtype=np.float64), 360.0)
        values = np.asarray(da.values, dtype=np.float64)
        if lat.size != grid.nlat or lon.size != grid.nlon:
            raise ValueError(f"{owner}: field {field!r} has shape {values.shape} but the grid is {grid.shape} ([H, W])")
        values = values[np.argsort(-lat)][:, np.argsort(lon)]
        lat, lon = np.sort(lat)[::-1], np.sort(lon)
        if not (np.allclose(lat, grid.lat, atol=1e-6) and np.allclose(lon, grid.lon, atol=1e-6)):
            raise ValueError(f"{owner}: field {field!r} has latitude/longitude coordinates that differ from the grid's")
    else:
        values = to_float_array(owner, field, data, ndim=2)
        if values.shape != grid.shape:
            raise ValueError(f"{owner}: field {field!r} has shape {values.shape} but the grid is {grid.shape} ([H, W])")
    check_finite(owner, field, values)
    return values
