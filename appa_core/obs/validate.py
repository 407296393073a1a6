"""Input validation shared by observation operators.

Every check raises a ``ValueError`` (or ``TypeError``) whose message starts with the operator's name, names the
field and shows the offending value, e.g. ``StationOp: field 'lat' has value 95.0 at index 3 outside [-90, 90]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from appa_core.grid import Grid

__all__ = [
    "broadcast_floats",
    "broadcast_strings",
    "check_finite",
    "check_lat",
    "check_lon",
    "check_nonempty",
    "check_positive",
    "check_same_length",
    "check_times_in_window",
    "field_on_grid",
    "to_datetime64",
    "to_float_array",
]


def to_float_array(owner: str, field: str, values: object, ndim: int | None = 1) -> np.ndarray:
    """``values`` as a float64 array, refusing non-numeric input and (optionally) the wrong rank."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{owner}: field {field!r} must be numeric, got {values!r:.80}") from exc
    if ndim is not None and array.ndim != ndim:
        raise ValueError(f"{owner}: field {field!r} must be {ndim}-D, got shape {array.shape}")
    return array


def check_nonempty(owner: str, field: str, array: np.ndarray | Sequence[object]) -> None:
    if len(array) == 0:
        raise ValueError(f"{owner}: field {field!r} is empty; an operator needs at least one observation")


def check_finite(owner: str, field: str, array: np.ndarray) -> None:
    """Refuse NaN and inf, naming the first offending value and its index."""
    bad = ~np.isfinite(array)
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        raise ValueError(f"{owner}: field {field!r} has value {array.reshape(-1)[i]} at index {i}; must be finite")


def check_positive(owner: str, field: str, array: np.ndarray) -> None:
    check_finite(owner, field, array)
    bad = array <= 0
    if bad.any():
        i = int(np.flatnonzero(bad.reshape(-1))[0])
        raise ValueError(f"{owner}: field {field!r} has value {array.reshape(-1)[i]} at index {i}; must be > 0")


def check_lat(owner: str, lat: np.ndarray, field: str = "lat") -> None:
    check_finite(owner, field, lat)
    bad = np.abs(lat) > 90
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{owner}: field {field!r} has value {lat[i]} at index {i} outside [-90, 90]")


def check_lon(owner: str, lon: np.ndarray, field: str = "lon") -> None:
    """Longitudes may be given in [-180, 360]; operators wrap them to [0, 360)."""
    check_finite(owner, field, lon)
    bad = (lon < -180) | (lon > 360)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{owner}: field {field!r} has value {lon[i]} at index {i} outside [-180, 360]")


def check_same_length(owner: str, **arrays: Sequence[object] | np.ndarray) -> int:
    """All arrays have the same length; returns it."""
    lengths = {name: len(a) for name, a in arrays.items()}
    first = next(iter(lengths))
    for name, n in lengths.items():
        if n != lengths[first]:
            raise ValueError(
                f"{owner}: field {name!r} has {n} values but field {first!r} has {lengths[first]}; lengths must match"
            )
    return lengths[first]


def to_datetime64(owner: str, field: str, values: object) -> np.ndarray:
    """Times as ``datetime64[ns]`` ``[N]`` (accepts strings, datetimes, numpy/pandas times)."""
    try:
        array = np.atleast_1d(np.asarray(values)).astype("datetime64[ns]")
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{owner}: field {field!r} must hold times (datetime64 or ISO strings), got {values!r:.80}"
        ) from exc
    if np.isnat(array).any():
        i = int(np.flatnonzero(np.isnat(array))[0])
        raise ValueError(f"{owner}: field {field!r} has value NaT at index {i}")
    return array


def check_times_in_window(owner: str, times: np.ndarray, window: np.ndarray, field: str = "time") -> None:
    """Every observation time lies within ``[window[0], window[-1]]``."""
    lo, hi = window[0], window[-1]
    bad = (times < lo) | (times > hi)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{owner}: field {field!r} has value {times[i]} at index {i} outside the window [{lo}, {hi}]")


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
