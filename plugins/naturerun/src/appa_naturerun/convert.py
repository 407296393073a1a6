"""Conversion of jcm's native output to the WeatherBench2 layout.

Pure numpy + xarray: importable and testable without jcm (or JAX).

jcm's native output (``ModelPredictions.to_xarray()``) holds, on its 8 sigma levels and 48 Gaussian latitudes
(ascending) x 96 longitudes, with dims ``(time, level, lon, lat)``:

- ``u_wind``, ``v_wind`` (m/s), ``temperature`` (K), ``specific_humidity`` (kg/kg), ``geopotential`` (m2/s2);
- ``normalized_surface_pressure`` = p_s / 1000 hPa (dimensionless);
- SPEEDY's near-surface diagnostics ``surface_flux.t0`` (K, air temperature extrapolated to the surface),
  ``surface_flux.u0`` / ``surface_flux.v0`` (m/s, 0.95 x the lowest-level wind, SPEEDY's ``fwind0``).

The conversion is:

1. sigma -> pressure, column by column on the native grid, with p = sigma * p_s and interpolation linear in
   ln p (see :func:`sigma_to_pressure` for the treatment above the top / below the lowest sigma level);
2. Gaussian -> equiangular latitudes (48 centres 88.125 ... -88.125, descending, no poles) by linear
   interpolation in latitude; the two outermost target rows (|lat| = 88.125 > 87.159, the outermost Gaussian
   latitude) take the nearest row's value (:func:`lat_regrid_matrix`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr

#: WeatherBench2's 13 pressure levels (hPa).
WB2_LEVELS: tuple[int, ...] = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)

#: Constants, identical to jcm's (``jcm.constants``): g, R_d = kappa * c_pd.
GRAV = 9.81
R_DRY = 2.0 / 7.0 * 1004.64  # 287.04 J/kg/K
#: Standard-atmosphere lapse rate (K/m) used for every extrapolation below the lowest model level.
LAPSE_RATE = 0.0065
#: jcm's reference pressure: ``normalized_surface_pressure`` = p_s / P0.
P0_PA = 1.0e5

#: Exponent R_d * gamma / g of the constant-lapse-rate profile T(p) = T_ref * (p / p_ref) ** LAPSE_EXP.
LAPSE_EXP = R_DRY * LAPSE_RATE / GRAV

# --------------------------------------------------------------------------------------------------------------
# grids
# --------------------------------------------------------------------------------------------------------------


def target_latitudes(n: int = 48) -> np.ndarray:
    """Equiangular latitude centres without poles, descending: 90 - (i + 1/2) * 180 / n (88.125 ... for n=48)."""
    return 90.0 - (np.arange(n) + 0.5) * (180.0 / n)


def target_longitudes(n: int = 96) -> np.ndarray:
    """0, 360/n, ..., 360 - 360/n."""
    return np.arange(n) * (360.0 / n)


def lat_regrid_matrix(src_lat: Sequence[float], dst_lat: Sequence[float]) -> np.ndarray:
    """Matrix W (n_dst, n_src) with ``W @ f(src_lat) = linear interpolation of f at dst_lat``.

    Any order of ``src_lat`` is accepted. Target latitudes outside the source range take the value of the
    nearest source latitude (constant extrapolation, like :func:`numpy.interp`). Each row sums to 1.
    """
    src = np.asarray(src_lat, dtype=np.float64)
    dst = np.asarray(dst_lat, dtype=np.float64)
    order = np.argsort(src)
    s = src[order]
    if np.any(np.diff(s) <= 0):
        raise ValueError("source latitudes must be distinct")
    w = np.zeros((dst.size, src.size))
    for i, y in enumerate(dst):
        if y <= s[0]:
            w[i, order[0]] = 1.0
        elif y >= s[-1]:
            w[i, order[-1]] = 1.0
        else:
            j = int(np.searchsorted(s, y))  # s[j-1] < y <= s[j]
            a = (y - s[j - 1]) / (s[j] - s[j - 1])
            w[i, order[j - 1]] += 1.0 - a
            w[i, order[j]] += a
    return w


def regrid_lat(arr: np.ndarray, w: np.ndarray, axis: int) -> np.ndarray:
    """Apply ``w`` (n_dst, n_src) along ``axis`` of ``arr``."""
    out = np.tensordot(arr, w, axes=([axis], [1]))  # new axis at the end
    return np.moveaxis(out, -1, axis)


# --------------------------------------------------------------------------------------------------------------
# vertical
# --------------------------------------------------------------------------------------------------------------


def sigma_to_pressure(
    field: np.ndarray,
    sigma: Sequence[float],
    ps: np.ndarray,
    plev_pa: Sequence[float],
    kind: str = "clamp",
    temperature: np.ndarray | None = None,
    level_axis: int | None = None,
) -> np.ndarray:
    """Interpolate ``field`` from sigma levels to pressure levels, linearly in ln p, with p = sigma * p_s.

    Args:
        field: array ``(..., n_sigma, *horizontal)``: the level axis is ``-(ps.ndim - n_lead) ...``; concretely
            ``field.shape == ps.shape[:k] + (n_sigma,) + ps.shape[k:]`` with ``k = field.ndim - 1 - (number of
            horizontal dims)``. In practice: ``field (time, level, lat, lon)`` with ``ps (time, lat, lon)``, or
            ``field (level, n)`` with ``ps (n,)``.
        sigma: the ``n_sigma`` sigma values of ``field``'s level axis (any order).
        ps: surface pressure (Pa).
        plev_pa: target pressures (Pa).
        kind: what to do outside [sigma_top * p_s, sigma_bottom * p_s]:

            - ``"clamp"`` (winds, humidity): the value of the nearest model level;
            - ``"temperature"``: above the top, clamp (isothermal); below the lowest level (including below
              the ground), a constant-lapse-rate profile T = T_L * (p / p_L) ** (R gamma / g), gamma = 6.5 K/km;
            - ``"geopotential"``: hypsometric extrapolation consistent with that temperature: above the top,
              isothermal, Z = Z_T + R T_T ln(p_T / p); below the lowest level,
              Z = Z_L + g T_L / gamma * (1 - (p / p_L) ** (R gamma / g)). Needs ``temperature`` (same shape as
              ``field``).
        level_axis: the axis of ``field`` that holds the sigma levels. ``None``: found by matching shapes with
            ``ps``, which is refused when ambiguous (e.g. 8 time steps and 8 sigma levels).

    Returns:
        ``field`` with its level axis replaced by ``len(plev_pa)`` pressure levels, in ``plev_pa``'s order.
    """
    field = np.asarray(field)
    ps = np.asarray(ps, dtype=np.float64)
    sig = np.asarray(sigma, dtype=np.float64)
    plev = np.asarray(plev_pa, dtype=np.float64)
    n_sig = sig.size
    # locate the level axis: field has one more dim than ps
    if field.ndim != ps.ndim + 1:
        raise ValueError(f"field.ndim ({field.ndim}) must be ps.ndim + 1 ({ps.ndim + 1})")
    matches = [
        k for k in range(field.ndim) if field.shape[k] == n_sig and field.shape[:k] + field.shape[k + 1 :] == ps.shape
    ]
    if level_axis is not None:
        lev_axis = level_axis % field.ndim
        if lev_axis not in matches:
            raise ValueError(
                f"sigma_to_pressure: field 'level_axis' = {level_axis} does not fit field shape {field.shape}, ps "
                f"shape {ps.shape} and {n_sig} levels"
            )
    elif len(matches) == 1:
        lev_axis = matches[0]
    elif not matches:
        raise ValueError(f"cannot match field shape {field.shape} with ps shape {ps.shape} and {n_sig} levels")
    else:
        raise ValueError(
            f"sigma_to_pressure: the level axis of field shape {field.shape} is ambiguous (axes {matches} all fit "
            f"ps shape {ps.shape} and {n_sig} levels); pass level_axis"
        )
    if kind not in ("clamp", "temperature", "geopotential"):
        raise ValueError(f"unknown kind {kind!r}")
    if kind == "geopotential" and temperature is None:
        raise ValueError("kind='geopotential' needs the temperature on the same sigma levels")

    order = np.argsort(sig)  # top (small sigma) first
    lns = np.log(sig[order])
    f = np.moveaxis(field, lev_axis, 0)[order].astype(np.float64)  # (n_sig, *ps.shape)
    # x = ln(P / ps) for every target level and column: (n_p, *ps.shape)
    x = np.log(plev).reshape((-1,) + (1,) * ps.ndim) - np.log(ps)[None]
    j = np.clip(np.searchsorted(lns, x), 1, n_sig - 1)
    f0 = np.take_along_axis(f, j - 1, axis=0)
    f1 = np.take_along_axis(f, j, axis=0)
    a = (x - lns[j - 1]) / (lns[j] - lns[j - 1])
    out = f0 + a * (f1 - f0)

    above = x < lns[0]
    below = x > lns[-1]
    f_top, f_bot = f[0][None], f[-1][None]
    dx_top = x - lns[0]  # ln(P / p_top)   (< 0 above)
    dx_bot = x - lns[-1]  # ln(P / p_bottom) (> 0 below)
    if kind == "clamp":
        out = np.where(above, f_top, out)
        out = np.where(below, f_bot, out)
    elif kind == "temperature":
        out = np.where(above, f_top, out)
        out = np.where(below, f_bot * np.exp(LAPSE_EXP * dx_bot), out)
    else:  # geopotential
        t = np.moveaxis(np.asarray(temperature), lev_axis, 0)[order].astype(np.float64)
        t_top, t_bot = t[0][None], t[-1][None]
        out = np.where(above, f_top - R_DRY * t_top * dx_top, out)
        out = np.where(below, f_bot + GRAV * t_bot / LAPSE_RATE * (1.0 - np.exp(LAPSE_EXP * dx_bot)), out)
    return np.moveaxis(out, 0, lev_axis)


def surface_temperature_from_lowest(t_lowest: np.ndarray, sigma_lowest: float) -> np.ndarray:
    """T at p_s from T at sigma_L * p_s with the standard lapse rate: T_L * (1 / sigma_L) ** (R gamma / g)."""
    return np.asarray(t_lowest) * (1.0 / sigma_lowest) ** LAPSE_EXP


def mean_sea_level_pressure(ps: np.ndarray, phis: np.ndarray, t_surface: np.ndarray) -> np.ndarray:
    """Reduce p_s to sea level through a standard-lapse-rate column:
    p_msl = p_s * (1 + gamma z_s / T_s) ** (g / (R gamma)), z_s = phis / g."""
    z_s = np.asarray(phis) / GRAV
    return np.asarray(ps) * (1.0 + LAPSE_RATE * z_s / np.asarray(t_surface)) ** (1.0 / LAPSE_EXP)


# --------------------------------------------------------------------------------------------------------------
# metadata
# --------------------------------------------------------------------------------------------------------------

#: WB2 name -> (long_name, short_name, units)
VAR_ATTRS: dict[str, tuple[str, str, str]] = {
    "temperature": ("Temperature", "t", "K"),
    "u_component_of_wind": ("U component of wind", "u", "m s**-1"),
    "v_component_of_wind": ("V component of wind", "v", "m s**-1"),
    "specific_humidity": ("Specific humidity", "q", "kg kg**-1"),
    "geopotential": ("Geopotential", "z", "m**2 s**-2"),
    "surface_pressure": ("Surface pressure", "sp", "Pa"),
    "mean_sea_level_pressure": ("Mean sea level pressure", "msl", "Pa"),
    "2m_temperature": ("2 metre temperature", "t2m", "K"),
    "10m_u_component_of_wind": ("10 metre U wind component", "u10", "m s**-1"),
    "10m_v_component_of_wind": ("10 metre V wind component", "v10", "m s**-1"),
    "land_sea_mask": ("Land-sea mask", "lsm", "(0 - 1)"),
    "geopotential_at_surface": ("Geopotential at surface", "z", "m**2 s**-2"),
}

#: How each output variable is derived (stored as the ``comment`` attribute).
VAR_COMMENTS: dict[str, str] = {
    "temperature": "jcm temperature, sigma->p linear in ln p; above the top sigma level: isothermal; below the "
    "lowest sigma level (incl. underground): T_L*(p/p_L)**(R*0.0065/g)",
    "u_component_of_wind": "jcm u_wind, sigma->p linear in ln p; outside the model levels: nearest level",
    "v_component_of_wind": "jcm v_wind, sigma->p linear in ln p; outside the model levels: nearest level",
    "specific_humidity": "jcm specific_humidity (kg/kg), sigma->p linear in ln p; outside: nearest level; >= 0",
    "geopotential": "jcm geopotential (m2/s2), sigma->p linear in ln p; above the top: isothermal hypsometric; "
    "below the lowest level: hypsometric with a 6.5 K/km lapse rate",
    "surface_pressure": "jcm normalized_surface_pressure * 1e5 Pa",
    "mean_sea_level_pressure": "p_s*(1+0.0065*z_s/T_s)**(g/(R*0.0065)), z_s=geopotential_at_surface/g, "
    "T_s = lowest-level T extrapolated to p_s with 6.5 K/km",
    "2m_temperature": "SPEEDY near-surface air temperature diagnostic (jcm surface_flux.t0)",
    "10m_u_component_of_wind": "SPEEDY near-surface wind (jcm surface_flux.u0 = 0.95 * lowest-level u)",
    "10m_v_component_of_wind": "SPEEDY near-surface wind (jcm surface_flux.v0 = 0.95 * lowest-level v)",
    "land_sea_mask": "jcm TerrainData.fmask (land fraction)",
    "geopotential_at_surface": "g * the orography the dynamical core integrates over (jcm/dinosaur "
    "truncated_modal_orography of the T30 terrain, on the model grid), regridded",
}

LEVEL_VARS = ("temperature", "u_component_of_wind", "v_component_of_wind", "specific_humidity", "geopotential")
SURFACE_VARS = (
    "surface_pressure",
    "mean_sea_level_pressure",
    "2m_temperature",
    "10m_u_component_of_wind",
    "10m_v_component_of_wind",
)
STATIC_VARS = ("land_sea_mask", "geopotential_at_surface")

#: jcm native name -> (WB2 name, vertical kind)
_NATIVE_LEVEL = {
    "temperature": ("temperature", "temperature"),
    "u_wind": ("u_component_of_wind", "clamp"),
    "v_wind": ("v_component_of_wind", "clamp"),
    "specific_humidity": ("specific_humidity", "clamp"),
    "geopotential": ("geopotential", "geopotential"),
}


def _native(ds: xr.Dataset, name: str, dims: tuple[str, ...]) -> np.ndarray:
    return np.asarray(ds[name].transpose(*dims).values, dtype=np.float64)


def _attach_attrs(ds: xr.Dataset) -> xr.Dataset:
    for name in ds.data_vars:
        if name in VAR_ATTRS:
            long_name, short_name, units = VAR_ATTRS[name]
            ds[name].attrs.update(long_name=long_name, short_name=short_name, units=units, comment=VAR_COMMENTS[name])
    ds["level"].attrs.update(long_name="pressure_level", units="millibars")
    ds["latitude"].attrs.update(long_name="latitude", units="degrees_north")
    ds["longitude"].attrs.update(long_name="longitude", units="degrees_east")
    if "time" in ds.coords:
        ds["time"].attrs.update(long_name="time")
    return ds


def _coords(levels: Sequence[int], lat: np.ndarray, lon: np.ndarray) -> dict:
    return {
        "level": ("level", np.asarray(levels, dtype=np.int64)),
        "latitude": ("latitude", lat.astype(np.float32)),
        "longitude": ("longitude", lon.astype(np.float32)),
    }


def convert_static(native_static: xr.Dataset, n_lat: int = 48, levels: Sequence[int] = WB2_LEVELS) -> xr.Dataset:
    """Static fields from a native dataset with ``lsm`` and ``phis`` on ``(lon, lat)``."""
    src_lat = np.asarray(native_static["lat"].values, dtype=np.float64)
    lon = np.asarray(native_static["lon"].values, dtype=np.float64)
    lat = target_latitudes(n_lat)
    w = lat_regrid_matrix(src_lat, lat)
    out = {}
    src = native_static["phis"].attrs.get("source")
    for native, name in (("lsm", "land_sea_mask"), ("phis", "geopotential_at_surface")):
        a = _native(native_static, native, ("lat", "lon"))
        out[name] = (("latitude", "longitude"), regrid_lat(a, w, 0).astype(np.float32))
    out["land_sea_mask"] = (out["land_sea_mask"][0], np.clip(out["land_sea_mask"][1], 0.0, 1.0))
    ds = _attach_attrs(xr.Dataset(out, coords=_coords(levels, lat, lon)))
    if src:
        ds["geopotential_at_surface"].attrs["comment"] = f"{src}, regridded"
    return ds


def convert_chunk(
    native: xr.Dataset,
    phis: np.ndarray,
    levels: Sequence[int] = WB2_LEVELS,
    n_lat: int = 48,
) -> xr.Dataset:
    """Convert one chunk of jcm native output to the WeatherBench2 layout (time-dependent variables only).

    Args:
        native: jcm ``to_xarray()`` output (or a look-alike) with coords ``time``, ``level`` (sigma), ``lat``,
            ``lon`` and the variables listed in the module docstring. The near-surface diagnostics are optional:
            without them 2m temperature is the lowest-level temperature extrapolated to p_s with 6.5 K/km and the
            10 m winds are the lowest-level winds.
        phis: surface geopotential on the native grid, ``(lat, lon)`` in ``native``'s latitude order (m2/s2).
        levels: output pressure levels (hPa).
    Returns:
        Dataset with dims ``(time, level, latitude, longitude)``, float32, WB2 names, attrs and coords.
    """
    sigma = np.asarray(native["level"].values, dtype=np.float64)
    src_lat = np.asarray(native["lat"].values, dtype=np.float64)
    lon = np.asarray(native["lon"].values, dtype=np.float64)
    lat = target_latitudes(n_lat)
    w = lat_regrid_matrix(src_lat, lat)
    d3 = ("time", "level", "lat", "lon")
    d2 = ("time", "lat", "lon")
    ps = _native(native, "normalized_surface_pressure", d2) * P0_PA
    plev = np.asarray(levels, dtype=np.float64) * 100.0
    t_sig = _native(native, "temperature", d3)
    i_low = int(np.argmax(sigma))
    t_low = t_sig[:, i_low]

    out: dict[str, tuple] = {}
    for nname, (name, kind) in _NATIVE_LEVEL.items():
        f = t_sig if nname == "temperature" else _native(native, nname, d3)
        fp = sigma_to_pressure(f, sigma, ps, plev, kind=kind, temperature=t_sig, level_axis=1)
        if name == "specific_humidity":
            fp = np.maximum(fp, 0.0)
        out[name] = (("time", "level", "latitude", "longitude"), regrid_lat(fp, w, 2).astype(np.float32))

    t_surf = surface_temperature_from_lowest(t_low, sigma[i_low])
    mslp = mean_sea_level_pressure(ps, np.asarray(phis, dtype=np.float64)[None], t_surf)
    t2m = _native(native, "surface_flux.t0", d2) if "surface_flux.t0" in native else t_surf
    if "surface_flux.u0" in native and "surface_flux.v0" in native:
        u10, v10 = _native(native, "surface_flux.u0", d2), _native(native, "surface_flux.v0", d2)
    else:
        u10, v10 = _native(native, "u_wind", d3)[:, i_low], _native(native, "v_wind", d3)[:, i_low]
    for name, a in (
        ("surface_pressure", ps),
        ("mean_sea_level_pressure", mslp),
        ("2m_temperature", t2m),
        ("10m_u_component_of_wind", u10),
        ("10m_v_component_of_wind", v10),
    ):
        out[name] = (("time", "latitude", "longitude"), regrid_lat(a, w, 1).astype(np.float32))

    coords = _coords(levels, lat, lon)
    coords["time"] = ("time", np.asarray(native["time"].values).astype("datetime64[ns]"))
    ds = xr.Dataset(out, coords=coords)
    return _attach_attrs(ds)


def encoding_for(ds: xr.Dataset, time_chunk: int = 4) -> dict[str, dict]:
    """zarr encoding: float32 data chunked ``time_chunk`` steps x full level/lat/lon; int64 hours for time."""
    enc: dict[str, dict] = {}
    for name, v in ds.data_vars.items():
        chunks = tuple(time_chunk if d == "time" else ds.sizes[d] for d in v.dims)
        enc[name] = {"chunks": chunks, "dtype": "float32"}
    if "time" in ds.coords:
        enc["time"] = {
            "units": "hours since 1970-01-01",
            "calendar": "proleptic_gregorian",
            "dtype": "int64",
            "chunks": (4096,),
        }
    return enc


def global_attrs(extra: Mapping[str, object] | None = None) -> dict[str, object]:
    attrs: dict[str, object] = {
        "title": "appa nature run: jcm (SPEEDY physics on the dinosaur dynamical core), T31 L8, 6-hourly",
        "layout": "WeatherBench2 (dims time, level [hPa], latitude [descending], longitude [0, 360))",
        "grid": "48 x 96 equiangular without poles (3.75 deg), linearly interpolated in latitude from jcm's "
        "48 Gaussian latitudes (outermost rows: nearest)",
        "vertical_interpolation": "p = sigma * p_s, linear in ln p; see each variable's comment for extrapolation",
    }
    if extra:
        attrs.update(extra)
    return attrs
