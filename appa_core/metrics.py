r"""Scores for ensembles of atmospheric states, vectorised over xarray.

All scores are area-weighted over ``latitude`` x ``longitude`` (weights from :meth:`appa_core.Grid.area_weights`,
i.e. proportional to the cell area) and computed per variable and pressure level. ``forecast`` Datasets carry an
ensemble dimension ``member``; ``truth`` has none.

* RMSE of the ensemble mean :math:`\bar x`: :math:`\sqrt{\langle (\bar x - y)^2 \rangle}` where
  :math:`\langle\cdot\rangle` is the area-weighted mean (then averaged over ``time`` as a mean of squared errors).
* CRPS, fair ensemble estimator (Ferro, 2014) for :math:`m` members:
  :math:`\frac1m\sum_i |x_i - y| - \frac{1}{2m(m-1)}\sum_{i,j}|x_i - x_j|`, using the sorted-ensemble identity
  :math:`\sum_{i,j}|x_i-x_j| = 2\sum_k (2k - m - 1)\,x_{(k)}`.
* Spread: :math:`\sqrt{\langle s^2\rangle}` with :math:`s^2` the unbiased ensemble variance; the spread/skill
  ratio is :math:`\sqrt{(m+1)/m}\,\mathrm{spread}/\mathrm{RMSE}`, which is 1 for a calibrated ensemble (Fortin et al.,
  2014, as in WeatherBench2).
* Zonal power spectrum: :math:`|\hat f_k|^2` of the FFT along longitude, per zonal wavenumber ``k``, averaged
  over latitude with area weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "area_weights",
    "crps",
    "ensemble_mean_rmse",
    "score_table",
    "spread",
    "spread_skill_ratio",
    "zonal_power_spectrum",
]

SPATIAL = ("latitude", "longitude")


def area_weights(lat: xr.DataArray | np.ndarray) -> xr.DataArray:
    """Relative cell areas per latitude (any order), mean 1, as a DataArray over ``latitude``."""
    lat_values = np.asarray(lat, dtype=np.float64)
    order = np.argsort(-lat_values)
    from appa_core.grid import Grid  # local import: metrics only needs the weights

    n = lat_values.size
    grid = Grid(lat=lat_values[order], lon=np.arange(2) * 180.0)
    w = np.empty(n)
    w[order] = grid.area_weights()
    return xr.DataArray(w, dims=("latitude",), coords={"latitude": lat_values})


def _wmean(da: xr.DataArray | xr.Dataset, weights: xr.DataArray) -> xr.DataArray | xr.Dataset:
    return da.weighted(weights).mean(SPATIAL)


def _align(forecast: xr.Dataset, truth: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    common = [v for v in forecast.data_vars if v in truth.data_vars and "latitude" in forecast[v].dims]
    if not common:
        raise ValueError(
            f"metrics: forecast and truth share no gridded variable; forecast has {list(forecast.data_vars)}, "
            f"truth has {list(truth.data_vars)}"
        )
    f, t = forecast[common], truth[common]
    f, t = xr.align(f, t, join="inner", exclude=("member",))
    if any(f.sizes.get(d, 1) == 0 for d in ("time", "latitude", "longitude")):
        raise ValueError("metrics: forecast and truth do not overlap in time or space")
    return f, t


def ensemble_mean_rmse(forecast: xr.Dataset, truth: xr.Dataset, member_dim: str = "member") -> xr.Dataset:
    """Area-weighted RMSE of the ensemble mean, per variable/level and time."""
    f, t = _align(forecast, truth)
    mean = f.mean(member_dim) if member_dim in f.dims else f
    return np.sqrt(_wmean((mean - t) ** 2, area_weights(f.latitude)))


def spread(forecast: xr.Dataset, member_dim: str = "member") -> xr.Dataset:
    """Area-weighted ensemble spread :math:`\\sqrt{\\langle s^2 \\rangle}` per variable/level and time."""
    if forecast.sizes.get(member_dim, 1) < 2:
        raise ValueError(f"metrics: spread needs at least 2 members along {member_dim!r}")
    var = forecast.var(member_dim, ddof=1)
    return np.sqrt(_wmean(var, area_weights(forecast.latitude)))


def crps(forecast: xr.Dataset, truth: xr.Dataset, member_dim: str = "member") -> xr.Dataset:
    """Fair ensemble CRPS, area-weighted, per variable/level and time (same units as the variable)."""
    f, t = _align(forecast, truth)
    m = f.sizes.get(member_dim, 1)
    if m < 2:
        raise ValueError(f"metrics: CRPS needs at least 2 members along {member_dim!r}")
    skill = abs(f - t).mean(member_dim)
    rank = xr.DataArray(2.0 * np.arange(1, m + 1) - m - 1, dims=(member_dim,))

    def _pairwise(da: xr.DataArray) -> xr.DataArray:
        axis = da.get_axis_num(member_dim)
        s = np.sort(da.values, axis=axis)
        sorted_da = da.copy(data=s)
        return 2.0 * (sorted_da * rank).sum(member_dim)

    pair = f.map(_pairwise)
    score = skill - pair / (2.0 * m * (m - 1))
    return _wmean(score, area_weights(f.latitude))


def spread_skill_ratio(forecast: xr.Dataset, truth: xr.Dataset, member_dim: str = "member") -> xr.Dataset:
    """:math:`\\sqrt{(m+1)/m}` spread / RMSE, with both aggregated over time as mean squares."""
    m = forecast.sizes[member_dim]
    f, t = _align(forecast, truth)
    tdim = ["time"] if "time" in f.dims else []
    mse = (ensemble_mean_rmse(f, t, member_dim) ** 2).mean(tdim)
    var = (spread(f, member_dim) ** 2).mean(tdim)
    return np.sqrt((m + 1) / m * var / mse)


def zonal_power_spectrum(field: xr.DataArray) -> xr.DataArray:
    """One-sided zonal power spectrum along ``longitude`` (sums to the mean square), area-weighted over ``latitude``.

    Returns a DataArray over ``wavenumber`` (0..W//2) and any other non-spatial dims of ``field``.
    """
    axis = field.get_axis_num("longitude")
    nlon = field.sizes["longitude"]
    power = np.abs(np.fft.rfft(field.values, axis=axis)) ** 2 / nlon**2
    # one-sided spectrum: count the +k and -k halves (not k=0, nor the Nyquist bin of an even W) so that the
    # spectrum sums to the zonal mean square (Parseval)
    double = np.full(power.shape[axis], 2.0)
    double[0] = 1.0
    if nlon % 2 == 0:
        double[-1] = 1.0
    power = power * double.reshape([-1 if i == axis else 1 for i in range(power.ndim)])
    dims = [d if d != "longitude" else "wavenumber" for d in field.dims]
    coords = {k: v for k, v in field.coords.items() if "longitude" not in v.dims}
    spec = xr.DataArray(power, dims=dims, coords=coords).assign_coords(wavenumber=np.arange(power.shape[axis]))
    return spec.weighted(area_weights(field.latitude)).mean("latitude")


def _rows(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    out = {}
    for name, da in ds.data_vars.items():
        if "level" in da.dims:
            for lev in da.level.values:
                out[f"{name}@{int(lev)}"] = da.sel(level=lev)
        else:
            out[str(name)] = da
    return out


def score_table(
    forecast: xr.Dataset, truth: xr.Dataset, member_dim: str = "member", variables: Sequence[str] | None = None
) -> pd.DataFrame:
    """One row per variable (and level): RMSE of the ensemble mean, CRPS, spread, spread/skill ratio.

    Time-aggregated: RMSE and spread are square roots of time-mean squares; CRPS is a time mean.
    """
    f, t = _align(forecast, truth)
    if variables is not None:
        f, t = f[list(variables)], t[list(variables)]
    has_members = member_dim in f.dims and f.sizes[member_dim] > 1
    tdim = ["time"] if "time" in f.dims else []
    rmse = np.sqrt((ensemble_mean_rmse(f, t, member_dim) ** 2).mean(tdim))
    cols: dict[str, dict[str, xr.DataArray]] = {"rmse": _rows(rmse)}
    if has_members:
        cols["crps"] = _rows(crps(f, t, member_dim).mean(tdim))
        cols["spread"] = _rows(np.sqrt((spread(f, member_dim) ** 2).mean(tdim)))
        m = f.sizes[member_dim]
        cols["ssr"] = {k: np.sqrt((m + 1) / m) * cols["spread"][k] / cols["rmse"][k] for k in cols["rmse"]}
    table = pd.DataFrame({c: {k: float(v) for k, v in rows.items()} for c, rows in cols.items()})
    table.index.name = "variable"
    return table


def __getattr__(name: str) -> object:
    """Deprecated: ``main_evaluate`` (``appa evaluate``) moved to ``appa_workflows.evaluate.main``."""
    if name == "main_evaluate":
        import warnings

        warnings.warn(
            "appa_core.metrics.main_evaluate is deprecated and will be removed in the next release: it moved to "
            "appa_workflows.evaluate.main (distribution appa-workflows)",
            DeprecationWarning,
            stacklevel=2,
        )
        import importlib

        return importlib.import_module("appa_workflows.evaluate").main
    raise AttributeError(f"module 'appa_core.metrics' has no attribute {name!r}")
