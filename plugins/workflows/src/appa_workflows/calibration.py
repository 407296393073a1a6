r"""Spread calibration of an ensemble: per-variable factors fitted on cases with a known truth.

A posterior ensemble from an imperfect prior can be over- or under-dispersed per variable (the twin experiment's
latent prior: T2M and T850 too wide, Z500 and MSLP too narrow). The remedy of ensemble data assimilation is
multiplicative inflation; here it is applied after sampling, with one factor :math:`s_v` per variable (and pressure
level) fitted on training cases, never on the cases it is scored on:

.. math::

    x_m' = \bar x + s_v\,(x_m - \bar x), \qquad
    s_v = \sqrt{\frac{\sum_{\text{cases},t} \langle (\bar x - y)^2\rangle}
                     {\frac{m+1}{m}\sum_{\text{cases},t} \langle s^2\rangle}}

with :math:`\bar x` the ensemble mean, :math:`s^2` the unbiased ensemble variance of :math:`m` members,
:math:`y` the truth and :math:`\langle\cdot\rangle` the area-weighted mean (:mod:`appa_core.metrics`). The mean
is unchanged, so is its RMSE; the spread is multiplied by :math:`s_v`, so the spread/skill ratio of the fitting
cases pooled is exactly 1. Like EnKF inflation it is a property of a prior *and* an observing system: fit one
calibration per observing system.

Example::

    cal = SpreadCalibration.fit([ens_a, ens_b], [truth_a, truth_b])   # [member, time, (level,) lat, lon]
    cal.to_dict()                      # {"factors": {"temperature@850": 0.71, "2m_temperature": 0.66, ...}}
    calibrated = cal.apply(posterior)  # same shape, same ensemble mean
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs
import numpy as np
import xarray as xr

from appa_core.metrics import ensemble_mean_rmse, spread

__all__ = ["SpreadCalibration"]


def _key(var: str, level: Any = None) -> str:
    return var if level is None else f"{var}@{int(level)}"


def _per_key(da: xr.DataArray, var: str) -> dict[str, xr.DataArray]:
    if "level" in da.dims:
        return {_key(var, lv): da.sel(level=lv) for lv in da["level"].values}
    return {var: da}


@attrs.frozen
class SpreadCalibration:
    """Multiplicative spread factors per variable, ``"variable"`` or ``"variable@level"`` (level in hPa).

    Attributes:
        factors: factor :math:`s_v > 0` per key; gridded variables without a key are left as they are.
        member_dim: the ensemble dimension.
    """

    factors: Mapping[str, float] = attrs.field(converter=lambda f: {str(k): float(v) for k, v in dict(f).items()})
    member_dim: str = "member"

    def __attrs_post_init__(self) -> None:
        for k, v in self.factors.items():
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"SpreadCalibration: factor {k!r} has value {v!r}; factors must be finite and > 0")

    @classmethod
    def fit(
        cls, forecasts: Sequence[xr.Dataset], truths: Sequence[xr.Dataset], member_dim: str = "member"
    ) -> SpreadCalibration:
        """Factors that make the pooled spread/skill ratio of ``forecasts`` against ``truths`` exactly 1.

        Args:
            forecasts: ensembles ``[member, time, (level,) latitude, longitude]``, at least 2 members each.
            truths: the true states of the same cases (aligned on time, level and grid; no member dimension).
        """
        if len(forecasts) != len(truths) or not forecasts:
            raise ValueError(
                f"SpreadCalibration.fit: needs as many truths as forecasts, at least one; got {len(forecasts)} "
                f"forecasts and {len(truths)} truths"
            )
        mse: dict[str, float] = {}
        var: dict[str, float] = {}
        for f, t in zip(forecasts, truths, strict=True):
            m = f.sizes.get(member_dim, 1)
            if m < 2:
                raise ValueError(f"SpreadCalibration.fit: an ensemble has {m} member(s) along {member_dim!r}; needs 2")
            ens = [v for v in f.data_vars if member_dim in f[v].dims and "latitude" in f[v].dims]
            err = ensemble_mean_rmse(f[ens], t, member_dim) ** 2  # on the times both have
            spr = (m + 1) / m * spread(f[list(err.data_vars)].sel(time=err["time"]), member_dim) ** 2
            spr = spr.where(err.notnull())  # a time without a finite error counts in neither sum
            for v in err.data_vars:
                e, s = _per_key(err[v], str(v)), _per_key(spr[v], str(v))
                for k in e:
                    mse[k] = mse.get(k, 0.0) + float(e[k].sum())
                    var[k] = var.get(k, 0.0) + float(s[k].sum())
        bad = [k for k in mse if not var[k] > 0 or not np.isfinite(mse[k])]
        if bad:
            raise ValueError(
                f"SpreadCalibration.fit: no finite error or zero ensemble spread for {bad}; nothing to scale"
            )
        return cls({k: float(np.sqrt(mse[k] / var[k])) for k in sorted(mse)}, member_dim)

    def apply(self, ds: xr.Dataset) -> xr.Dataset:
        """``ds`` with each calibrated variable's members moved away from (or towards) their mean by its factor."""
        if self.member_dim not in ds.dims:
            raise ValueError(f"SpreadCalibration.apply: the dataset has no ensemble dimension {self.member_dim!r}")
        out = ds.copy()
        for v in ds.data_vars:
            da = ds[v]
            if self.member_dim not in da.dims or "latitude" not in da.dims:
                continue
            if "level" in da.dims:
                keys = [_key(str(v), lv) for lv in da["level"].values]
                if not any(k in self.factors for k in keys):
                    continue
                s = xr.DataArray([self.factors.get(k, 1.0) for k in keys], dims=("level",), coords={"level": da.level})
            elif str(v) in self.factors:
                s = self.factors[str(v)]
            else:
                continue
            mean = da.mean(self.member_dim)
            scaled = xr.where(s == 1.0, da, mean + s * (da - mean))  # a factor of 1 keeps the members exactly
            out[v] = scaled.transpose(*da.dims).astype(da.dtype)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"factors": dict(self.factors), "member_dim": self.member_dim}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SpreadCalibration:
        if "factors" not in d:
            raise ValueError(f"SpreadCalibration.from_dict: no 'factors' key; keys are {sorted(d)}")
        return cls(d["factors"], d.get("member_dim", "member"))
