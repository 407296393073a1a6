"""Input validation shared by observation operators.

Every check raises a ``ValueError`` (or ``TypeError``) whose message starts with the operator's name, names the
field and shows the offending value, e.g. ``StationOp: field 'lat' has value 95.0 at index 3 outside [-90, 90]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = [
    "check_finite",
    "check_lat",
    "check_lon",
    "check_nonempty",
    "check_positive",
    "check_same_length",
    "check_times_in_window",
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
