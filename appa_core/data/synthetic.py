r"""Small synthetic Datasets in the WeatherBench2 layout, for tests, examples and plugin authors.

The fields are smooth, plausible-looking functions of latitude, longitude, level and time plus Gaussian noise
(not physics): temperature ~ 288 K - 0.0065 K/m x height with a pole-to-equator gradient, geopotential rising
with height, winds of a few m/s, positive humidity, MSLP ~ 1e5 Pa. They exist to exercise readers, statistics and
windows on stores of any layout variant in milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import xarray as xr

from appa_core.grid import Grid
from appa_core.spec import UNITS, StateSpec

__all__ = ["synthetic_wb2"]

# (offset, amplitude of the lat pattern, noise std) per variable, in physical units.
_PROFILE: dict[str, tuple[float, float, float]] = {
    "2m_temperature": (288.0, -30.0, 2.0),
    "10m_u_component_of_wind": (0.0, 6.0, 2.0),
    "10m_v_component_of_wind": (0.0, 2.0, 2.0),
    "mean_sea_level_pressure": (101325.0, -1500.0, 300.0),
    "surface_pressure": (98000.0, -1500.0, 300.0),
    "temperature": (288.0, -25.0, 1.5),
    "u_component_of_wind": (5.0, 15.0, 3.0),
    "v_component_of_wind": (0.0, 3.0, 2.0),
    "specific_humidity": (5e-3, 4e-3, 5e-4),
    "geopotential": (0.0, -2000.0, 200.0),
}


def _field(
    var: str, lat: np.ndarray, lon: np.ndarray, level: float | None, hours: np.ndarray, rng: np.random.Generator
):
    offset, amp, noise = _PROFILE.get(var, (1.0, 0.5, 0.1))
    phi = np.deg2rad(lat)[None, :, None]
    lam = np.deg2rad(lon)[None, None, :]
    tau = (2 * np.pi * hours / 24.0)[:, None, None]
    pattern = np.cos(phi) ** 2 + 0.3 * np.sin(2 * lam + tau) * np.cos(phi)
    if level is not None:
        height = 44330.0 * (1 - (level / 1013.25) ** 0.19)  # standard-atmosphere height of the level, m
        if var == "temperature":
            offset = 288.0 - 0.0065 * min(height, 11000.0)
        elif var == "geopotential":
            offset = 9.80665 * height
        elif var == "specific_humidity":
            offset, amp = offset * (level / 1000.0) ** 3, amp * (level / 1000.0) ** 3
            noise *= (level / 1000.0) ** 3
        elif var == "u_component_of_wind":
            amp *= 1 + (1000 - level) / 500
    values = offset + amp * (pattern - 0.5) + noise * rng.standard_normal((hours.size, lat.size, lon.size))
    if var == "specific_humidity":
        values = np.abs(values)
    return values.astype(np.float32)


def synthetic_wb2(
    spec: StateSpec,
    grid: Grid | None = None,
    times: Sequence[object] | np.ndarray | None = None,
    *,
    seed: int = 0,
    statics: bool = True,
    lat_ascending: bool = False,
    lon_180: bool = False,
    lon_first: bool = False,
    all_levels: Sequence[int] | None = None,
) -> xr.Dataset:
    """A Dataset holding ``spec``'s variables in the WeatherBench2 layout, in memory, float32.

    Args:
        spec: variables and levels to create.
        grid: target grid (default ``Grid.equiangular(8, 16, poles=False)``).
        times: datetimes (default: 8 steps, 6-hourly from 2000-01-01).
        seed: random seed for the noise.
        statics: add ``land_sea_mask`` and ``geopotential_at_surface`` (no time dim).
        lat_ascending: store latitudes south to north (as the regridded 64x32 / 240x121 WB2 stores).
        lon_180: store longitudes in [-180, 180) instead of [0, 360).
        lon_first: dims ``(time, [level], longitude, latitude)`` as the regridded WB2 stores, instead of
            ``(time, [level], latitude, longitude)``.
        all_levels: levels present in the store (default ``spec.levels``), a superset to test selection by value.
    """
    grid = grid or Grid.equiangular(8, 16, poles=False)
    if times is None:
        times = np.datetime64("2000-01-01T00", "ns") + np.arange(8) * np.timedelta64(6, "h")
    t = np.asarray(times).astype("datetime64[ns]")
    hours = (t - t[0]).astype("timedelta64[s]").astype(np.float64) / 3600.0 if t.size else np.zeros(0)
    levels = list(all_levels) if all_levels is not None else list(spec.levels)
    rng = np.random.default_rng(seed)
    lat, lon = grid.lat, grid.lon
    data: dict[str, tuple[tuple[str, ...], np.ndarray, dict[str, str]]] = {}
    for var in spec.surface:
        data[var] = (("time", "latitude", "longitude"), _field(var, lat, lon, None, hours, rng), {})
    for var in spec.atmospheric:
        stack = np.stack([_field(var, lat, lon, float(lev), hours, rng) for lev in levels], axis=1)
        data[var] = (("time", "level", "latitude", "longitude"), stack, {})
    if statics:
        lsm = (np.sin(np.deg2rad(3 * lon))[None, :] * np.cos(np.deg2rad(2 * lat))[:, None] > 0.2).astype(np.float32)
        data["land_sea_mask"] = (("latitude", "longitude"), lsm, {})
        data["geopotential_at_surface"] = (("latitude", "longitude"), (9.80665 * 800.0 * lsm).astype(np.float32), {})
    coords: dict[str, object] = {
        "time": t,
        "latitude": ("latitude", lat.astype(np.float32), {"units": "degrees_north"}),
        "longitude": ("longitude", lon.astype(np.float32), {"units": "degrees_east"}),
    }
    if spec.atmospheric:
        coords["level"] = ("level", np.asarray(levels, dtype=np.int64), {"units": "hPa"})
    units = {**UNITS, **spec.units}
    ds = xr.Dataset(
        {k: (dims, v, {"units": units.get(k, "unknown")}) for k, (dims, v, _) in data.items()},
        coords=coords,
    )
    if lat_ascending:
        ds = ds.isel(latitude=slice(None, None, -1))
    if lon_180:
        shifted = ((ds["longitude"].values + 180.0) % 360.0) - 180.0
        ds = ds.assign_coords(longitude=("longitude", shifted.astype(np.float32), {"units": "degrees_east"}))
        ds = ds.sortby("longitude")
    if lon_first:
        ds = ds.transpose(..., "longitude", "latitude")
    return ds
