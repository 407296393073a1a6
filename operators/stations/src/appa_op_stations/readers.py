"""Readers (and writers, for round trips and diagnostics) of station observations, each giving a ``StationOp``.

* CSV, long format, one row per observation: columns ``station_id, lat, lon, time, variable, value`` and optional
  ``elevation`` (m), ``error`` (std, the variable's units), ``level`` (hPa; empty for surface variables). Times are
  ISO-8601 (UTC, a trailing ``Z`` or offset is accepted). Values must already be in the state's units (K, Pa,
  m s**-1): the reader converts nothing. Empty ``error`` cells take :data:`DEFAULT_ERRORS`; empty ``elevation``
  cells mean no altitude correction for that row.
* NetCDF in the JEDI IODA layout: ``MetaData/latitude``, ``MetaData/longitude``, ``MetaData/dateTime`` (int64
  seconds since the epoch given by its ``units`` attribute, 1970-01-01T00:00:00Z by default, or ISO strings),
  ``ObsValue/<var>``, optional ``ObsError/<var>``, ``MetaData/stationElevation`` (m),
  ``MetaData/stationIdentification`` and ``MetaData/pressure`` (Pa, making the observations pressure-level ones).
  IODA marks missing values with sentinels (float ``-3.3688e38``, or the variable's ``_FillValue``): locations
  whose value, position or time is missing are dropped; a missing ``ObsError`` takes the default.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np

from appa_op_stations.operator import DEFAULT_ERRORS, StationOp

__all__ = ["IODA_VARIABLES", "read_ioda", "read_station_csv", "write_ioda", "write_station_csv"]

#: IODA (WMO BUFR camelCase) variable -> (state variable at the surface, state variable on pressure levels).
IODA_VARIABLES: dict[str, tuple[str | None, str | None]] = {
    "airTemperature": ("2m_temperature", "temperature"),
    "dewPointTemperature": ("2m_dewpoint_temperature", None),
    "surfacePressure": ("surface_pressure", None),
    "stationPressure": ("surface_pressure", None),
    "pressureReducedToMeanSeaLevel": ("mean_sea_level_pressure", None),
    "windEastward": ("10m_u_component_of_wind", "u_component_of_wind"),
    "windNorthward": ("10m_v_component_of_wind", "v_component_of_wind"),
    "windSpeed": ("10m_wind_speed", "wind_speed"),
    "specificHumidity": (None, "specific_humidity"),
    "relativeHumidity": (None, "relative_humidity"),
    "seaSurfaceTemperature": ("sea_surface_temperature", None),
    "skinTemperature": ("skin_temperature", None),
}
_STATE_TO_IODA = {state: ioda for ioda, pair in IODA_VARIABLES.items() for state in pair if state is not None}
_STATE_TO_IODA.update({"surface_pressure": "surfacePressure", "temperature": "airTemperature"})

_REQUIRED_CSV = ("station_id", "lat", "lon", "time", "variable", "value")
_MISSING_FLOAT = -3.3687953e38  # IODA float sentinel: numeric_limits<float>::lowest() * 0.99


def _utc_naive(values: Any) -> np.ndarray:
    """Times as naive UTC ``datetime64[ns]`` (pandas parses ISO strings with ``Z`` or offsets)."""
    import pandas as pd

    try:
        parsed = pd.to_datetime(pd.Series(np.asarray(values)), utc=True, format="ISO8601")
    except (TypeError, ValueError) as exc:
        raise ValueError(f"station reader: field 'time' has values that are not ISO-8601 times: {exc}") from exc
    return parsed.dt.tz_localize(None).to_numpy().astype("datetime64[ns]")


def _in_window(times: np.ndarray, window: tuple[object, object] | None) -> np.ndarray:
    if window is None:
        return np.ones(times.shape, dtype=bool)
    lo, hi = _utc_naive([window[0], window[1]])
    return (times >= lo) & (times <= hi)


def read_station_csv(
    path: str | PathLike[str],
    *,
    window: tuple[object, object] | None = None,
    use_elevation: bool = True,
    **kwargs: Any,
) -> StationOp:
    """Read a long-format station CSV into a :class:`StationOp`.

    Args:
        path: the CSV file.
        window: optional ``(start, end)`` times; rows outside are dropped (an operator's times must lie in the
            window it is prepared on).
        use_elevation: pass the ``elevation`` column on (the altitude correction then needs
            ``surface_geopotential``); ``False`` ignores it.
        **kwargs: passed to :class:`StationOp` (``surface_geopotential``, ``method``, ``noise``, ``name``, ...).
    """
    import pandas as pd

    owner = "read_station_csv"
    df = pd.read_csv(path, dtype={"station_id": str, "variable": str})
    missing = [c for c in _REQUIRED_CSV if c not in df.columns]
    if missing:
        raise ValueError(f"{owner}: file {str(path)!r} lacks column(s) {missing}; has {list(df.columns)}")
    times = _utc_naive(df["time"])
    bad = np.flatnonzero(np.isnat(times))
    if bad.size:  # an empty or unparsable time is an error, never a silently dropped row
        raise ValueError(
            f"{owner}: file {str(path)!r} line {int(bad[0]) + 2} has time {df['time'].iloc[bad[0]]!r}, not an "
            f"ISO-8601 time ({bad.size} such row(s))"
        )
    keep = _in_window(times, window)
    df, times = df[keep], times[keep]
    if len(df) == 0:
        raise ValueError(f"{owner}: file {str(path)!r} has no observations" + (" in the window" if window else ""))
    variable = df["variable"].to_numpy(dtype=str)
    error = None
    if "error" in df.columns and df["error"].notna().any():
        error = np.array(df["error"], dtype=np.float64)
        gaps = np.isnan(error)
        for v in np.unique(variable[gaps]):  # loop over distinct variables
            if v in DEFAULT_ERRORS:
                error[gaps & (variable == v)] = DEFAULT_ERRORS[v]
    elevation = None
    if use_elevation and "elevation" in df.columns:
        elevation = df["elevation"].to_numpy(dtype=np.float64)
    level = df["level"].to_numpy(dtype=np.float64) if "level" in df.columns else None
    return StationOp(
        variable=variable,
        lat=df["lat"].to_numpy(dtype=np.float64),
        lon=df["lon"].to_numpy(dtype=np.float64),
        time=times,
        value=df["value"].to_numpy(dtype=np.float64),
        level=level,
        error=error,
        elevation=elevation,
        station_id=df["station_id"].fillna("").to_numpy(dtype=str),
        **kwargs,
    )


def write_station_csv(path: str | PathLike[str], op: StationOp) -> None:
    """Write a :class:`StationOp`'s observations as a CSV that :func:`read_station_csv` reads back."""
    import pandas as pd

    m = op.size
    df = pd.DataFrame(
        {
            "station_id": op.station_id if op.station_id is not None else np.full(m, ""),
            "lat": op.lat,
            "lon": op.lon,
            "elevation": op.elevation if op.elevation is not None else np.full(m, np.nan),
            "time": np.datetime_as_string(op.time, unit="s"),
            "variable": op.variable,
            "level": op.level,
            "value": op.value,
            "error": np.sqrt(op.noise.variance().numpy()),  # type: ignore[union-attr]
        }
    )
    df.to_csv(path, index=False, float_format="%.17g")


def _masked_float(var: Any) -> np.ndarray:
    data = var[:]
    out = np.ma.filled(np.ma.asarray(data, dtype=np.float64), np.nan)
    out[out < -1e30] = np.nan  # IODA sentinel without _FillValue
    return np.asarray(out, dtype=np.float64)


def _ioda_times(var: Any) -> np.ndarray:
    raw = var[:]
    if raw.dtype.kind in "OUS":
        return _utc_naive(np.asarray(raw).astype(str))
    units = getattr(var, "units", "seconds since 1970-01-01T00:00:00Z")
    match = re.fullmatch(r"\s*(seconds|minutes|hours|days)\s+since\s+(.+?)\s*", str(units))
    if match is None:
        raise ValueError(f"read_ioda: field 'MetaData/dateTime' has units {units!r}; expected '<unit> since <time>'")
    step = {"seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}[match.group(1)]
    epoch = _utc_naive([match.group(2)])[0]
    values = np.ma.filled(np.ma.asarray(raw, dtype=np.float64), np.nan)
    values[values < -1e15] = np.nan
    ok = np.isfinite(values)
    ns = np.zeros(values.shape, dtype=np.int64)
    ns[ok] = np.round(values[ok] * step * 1e9).astype(np.int64)
    out = epoch + ns.astype("timedelta64[ns]")
    out[~ok] = np.datetime64("NaT")
    return out


def read_ioda(
    path: str | PathLike[str],
    variable: str,
    *,
    state_variable: str | None = None,
    window: tuple[object, object] | None = None,
    use_elevation: bool = True,
    **kwargs: Any,
) -> StationOp:
    """Read one variable of an IODA NetCDF file into a :class:`StationOp`.

    Args:
        path: the IODA file (NetCDF4/HDF5 with groups ``MetaData``, ``ObsValue``, ``ObsError``).
        variable: the IODA variable, e.g. ``"airTemperature"`` (see :data:`IODA_VARIABLES`).
        state_variable: the state variable it observes; by default looked up in :data:`IODA_VARIABLES` (the
            pressure-level variable when ``MetaData/pressure`` is present, else the surface one).
        window: optional ``(start, end)``; locations outside are dropped.
        use_elevation: pass ``MetaData/stationElevation`` on (the altitude correction then needs
            ``surface_geopotential``); ``False`` ignores it.
        **kwargs: passed to :class:`StationOp`.
    """
    import netCDF4

    owner = "read_ioda"
    with netCDF4.Dataset(path) as nc:
        for group in ("MetaData", "ObsValue"):
            if group not in nc.groups:
                raise ValueError(f"{owner}: file {str(path)!r} has no group {group!r}; groups are {list(nc.groups)}")
        meta, obs = nc.groups["MetaData"], nc.groups["ObsValue"]
        if variable not in obs.variables:
            raise ValueError(
                f"{owner}: field 'variable' has value {variable!r}, not in ObsValue; has {list(obs.variables)}"
            )
        for name in ("latitude", "longitude", "dateTime"):
            if name not in meta.variables:
                raise ValueError(f"{owner}: file {str(path)!r} lacks MetaData/{name}")
        value = _masked_float(obs.variables[variable])
        if value.ndim != 1:
            raise ValueError(
                f"{owner}: ObsValue/{variable} has shape {value.shape}; only 1-D (Location) variables are "
                f"station observations"
            )
        lat = _masked_float(meta.variables["latitude"])
        lon = _masked_float(meta.variables["longitude"])
        time = _ioda_times(meta.variables["dateTime"])
        errors = nc.groups.get("ObsError")
        error = (
            _masked_float(errors.variables[variable]) if errors is not None and variable in errors.variables else None
        )
        elevation = None
        if use_elevation and "stationElevation" in meta.variables:
            elevation = _masked_float(meta.variables["stationElevation"])
        pressure = _masked_float(meta.variables["pressure"]) if "pressure" in meta.variables else None
        station_id = None
        if "stationIdentification" in meta.variables:
            station_id = np.asarray(meta.variables["stationIdentification"][:]).astype(str)

    if state_variable is None:
        surface, upper = IODA_VARIABLES.get(variable, (None, None))
        state_variable = upper if pressure is not None else surface
        if state_variable is None:
            raise ValueError(
                f"{owner}: field 'variable' has value {variable!r} with no known state variable "
                f"({'with' if pressure is not None else 'without'} MetaData/pressure); pass state_variable="
            )
    ok = np.isfinite(value) & np.isfinite(lat) & np.isfinite(lon) & ~np.isnat(time) & _in_window(time, window)
    if pressure is not None:
        ok &= np.isfinite(pressure)
    if not ok.any():
        raise ValueError(f"{owner}: file {str(path)!r} has no valid {variable!r} observations")
    if error is not None:
        error = error[ok]
        gaps = ~np.isfinite(error)
        if gaps.any():
            if state_variable not in DEFAULT_ERRORS:
                raise ValueError(f"{owner}: ObsError/{variable} has missing values and {state_variable!r} no default")
            error[gaps] = DEFAULT_ERRORS[state_variable]
    return StationOp(
        variable=state_variable,
        lat=lat[ok],
        lon=lon[ok],
        time=time[ok],
        value=value[ok],
        level=None if pressure is None else pressure[ok] / 100.0,
        error=error,
        elevation=None if elevation is None else elevation[ok],
        station_id=None if station_id is None else station_id[ok],
        **kwargs,
    )


def write_ioda(
    path: str | PathLike[str],
    op: StationOp,
    variable: str | None = None,
    *,
    hofx: Sequence[float] | np.ndarray | None = None,
) -> None:
    """Write a single-variable :class:`StationOp` as an IODA file (optionally with ``HofX/<var>``).

    Args:
        variable: IODA variable name; by default derived from the state variable (e.g. ``airTemperature``).
        hofx: predicted observations ``[M]`` (e.g. ``op(x)[0]``) written to ``HofX/<var>`` for diagnostics.
    """
    import netCDF4

    names = np.unique(op.variable)
    if names.size != 1:
        raise ValueError(f"write_ioda: field 'variable' has {names.size} distinct values; IODA files hold one here")
    variable = variable or _STATE_TO_IODA.get(str(names[0]))
    if variable is None:
        raise ValueError(f"write_ioda: no IODA name for {names[0]!r}; pass variable=")
    seconds = (op.time - np.datetime64("1970-01-01T00:00:00", "ns")).astype("timedelta64[s]").astype(np.int64)
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("Location", op.size)
        meta, obs, err = nc.createGroup("MetaData"), nc.createGroup("ObsValue"), nc.createGroup("ObsError")
        for name, data in (("latitude", op.lat), ("longitude", op.lon)):
            meta.createVariable(name, "f8", ("Location",))[:] = data
        dt = meta.createVariable("dateTime", "i8", ("Location",))
        dt.units = "seconds since 1970-01-01T00:00:00Z"
        dt[:] = seconds
        if np.isfinite(op.level).any():
            meta.createVariable("pressure", "f8", ("Location",))[:] = op.level * 100.0
        if op.elevation is not None:
            elev = np.where(np.isfinite(op.elevation), op.elevation, _MISSING_FLOAT)
            meta.createVariable("stationElevation", "f8", ("Location",))[:] = elev
        if op.station_id is not None:
            sid = meta.createVariable("stationIdentification", str, ("Location",))
            sid[:] = np.asarray(op.station_id, dtype=object)
        obs.createVariable(variable, "f8", ("Location",))[:] = op.value
        err.createVariable(variable, "f8", ("Location",))[:] = np.sqrt(op.noise.variance().numpy())  # type: ignore[union-attr]
        if hofx is not None:
            nc.createGroup("HofX").createVariable(variable, "f8", ("Location",))[:] = np.asarray(hofx, np.float64)
