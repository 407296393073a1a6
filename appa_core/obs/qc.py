r"""Quality control of observations, before sampling, for every operator (after JEDI UFO's filters and the ECMWF
first-guess check).

Two checks, both on by default in :class:`~appa_core.sampler.Sampler` (``qc=QC()``):

1. **Plausibility (bounds)**: each observed value must lie in the physical range of its variable, in the variable's
   units (:data:`PLAUSIBLE_RANGES`; geopotential by pressure level). It catches unit mistakes (a 2-m temperature
   in degrees Celsius, a pressure in hPa where Pa is expected) and gross errors. An operator says what each row
   observes through :meth:`~appa_core.obs.ObsOperator.bounds`; the default reads ``metadata()["variable"]`` (with
   ``"level"`` or ``"pressure"`` in hPa), so any operator that reports its variables gets the check for free, and
   operators of other quantities (radiances) override ``bounds``.
2. **Background check**: with a prior ensemble :math:`\{x_n\}` (unconditioned prior samples over the same window,
   with the same context), the normalised departure

   .. math:: d_i = \frac{y_i - \overline{\mathcal H(x)}_i}{\sqrt{R_{ii} + B_{ii}}},\qquad
             B_{ii} = \mathrm{var}_n\,\mathcal H(x_n)_i,

   must satisfy :math:`|d_i| \le k_N`: ``k = 5`` by default is the Gaussian-equivalent threshold (the first-guess
   check of operational centres uses a similar multiple), and :math:`k_N = t_{N-1}^{-1}(\Phi(k))` its equivalent
   for a variance estimated from :math:`N` members (Student-t with :math:`N - 1` degrees of freedom: 8.3 for the
   default 16 members), so that a small ensemble's noisy spread does not reject good observations. It needs
   nothing of the operator but its forward map and noise variance. Measured on the demo's 72,240 simulated (all
   good) observations: with 8 members and a plain ``|d| <= 5``, 946 were rejected; with the default, none.

Each row gets a flag (:data:`FLAG_PASS`, :data:`FLAG_BOUNDS`, :data:`FLAG_BACKGROUND`); rejected rows are left out
of the guidance, and the posterior's diagnostics carry ``obs_<name>_qc`` and ``obs_<name>_departure``. When more than
``max_rejected`` of all observations are rejected the run stops with :class:`QCError`: something is wrong with the
data (units, times, locations), not with a few observations.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs
import numpy as np
import torch
from torch import Tensor

__all__ = [
    "FLAG_BACKGROUND",
    "FLAG_BOUNDS",
    "FLAG_MEANINGS",
    "FLAG_PASS",
    "PLAUSIBLE_RANGES",
    "QC",
    "QCError",
    "QCResult",
    "background_flags",
    "bounds_flags",
    "plausible_range",
    "rows_bounds",
]

FLAG_PASS, FLAG_BOUNDS, FLAG_BACKGROUND = 0, 1, 2
#: CF-style meanings of the flag values 0, 1, 2.
FLAG_MEANINGS = ("pass", "outside_plausible_range", "background_check")

#: Physical plausibility ranges ``(low, high)`` per ERA5 / WeatherBench2 variable, in its units. Wide on purpose:
#: they reject impossible values, not unusual weather. Geopotential is handled by level (:func:`plausible_range`).
PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "2m_temperature": (180.0, 340.0),
    "2m_dewpoint_temperature": (170.0, 320.0),
    "skin_temperature": (170.0, 350.0),
    "sea_surface_temperature": (265.0, 310.0),
    "temperature": (150.0, 340.0),
    "brightness_temperature": (100.0, 350.0),
    "10m_u_component_of_wind": (-80.0, 80.0),
    "10m_v_component_of_wind": (-80.0, 80.0),
    "10m_wind_speed": (0.0, 100.0),
    "u_component_of_wind": (-150.0, 150.0),
    "v_component_of_wind": (-150.0, 150.0),
    "wind_speed": (0.0, 200.0),
    "vertical_velocity": (-20.0, 20.0),
    "mean_sea_level_pressure": (85_000.0, 110_000.0),
    "surface_pressure": (45_000.0, 110_000.0),
    "specific_humidity": (0.0, 0.04),
    "relative_humidity": (0.0, 110.0),
    "total_column_water_vapour": (0.0, 100.0),
    "total_precipitation_6hr": (0.0, 0.5),
}

_G = 9.80665
#: Observation-error standard deviations by which the plausible range is widened for each observation.
BOUNDS_MARGIN = 5.0


def _standard_geopotential(p_hpa: np.ndarray) -> np.ndarray:
    """Geopotential (m**2 s**-2) of pressure ``p`` (hPa) in the ICAO standard atmosphere (troposphere lapse rate
    6.5 K/km to 11 km, isothermal 216.65 K above)."""
    t0, lapse, r = 288.15, 0.0065, 287.05
    p = np.asarray(p_hpa, dtype=np.float64)
    z_trop = t0 / lapse * (1.0 - (p / 1013.25) ** (r * lapse / _G))
    p11 = 1013.25 * (1.0 - lapse * 11_000.0 / t0) ** (_G / (r * lapse))
    z_strat = 11_000.0 + r * 216.65 / _G * np.log(p11 / np.maximum(p, 1e-6))
    return _G * np.where(p >= p11, z_trop, z_strat)


def plausible_range(variable: str, level_hpa: object = None) -> tuple[np.ndarray, np.ndarray] | None:
    """``(low, high)`` arrays (shape of ``level_hpa``, or scalars) for ``variable``, or ``None`` if unknown.

    Geopotential: the standard atmosphere's value at the level plus or minus 25 % (at least 4000 m**2 s**-2),
    i.e. 500 hPa in [41 000, 70 000]; the level is needed (``None``: no range).
    """
    if variable == "geopotential":
        if level_hpa is None:
            return None
        phi = _standard_geopotential(np.asarray(level_hpa, dtype=np.float64))
        half = np.maximum(0.25 * np.abs(phi), 4000.0)
        return phi - half, phi + half
    if variable not in PLAUSIBLE_RANGES:
        return None
    lo, hi = PLAUSIBLE_RANGES[variable]
    shape = np.shape(level_hpa) if level_hpa is not None else ()
    return np.full(shape, lo), np.full(shape, hi)


def _channel_parts(names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``"temperature@850"`` -> (``"temperature"``, 850.0); surface names get NaN levels."""
    var, lev = [], []
    for n in names:
        m = re.fullmatch(r"(.+)@([0-9.]+)", str(n))
        var.append(m.group(1) if m else str(n))
        lev.append(float(m.group(2)) if m else np.nan)
    return np.asarray(var, dtype=object), np.asarray(lev)


def rows_bounds(metadata: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-row ``(low, high)`` from an operator's ``metadata()`` (``variable`` with ``level`` or ``pressure`` in
    hPa, or ``channel`` names like ``"temperature@850"``); NaN bounds for rows of unknown quantity; ``None`` when the
    metadata names no variable."""
    if "variable" in metadata:
        var = np.asarray(metadata["variable"], dtype=object).reshape(-1)
        lev_src = metadata.get("level", metadata.get("pressure"))
        lev = np.full(var.size, np.nan) if lev_src is None else np.asarray(lev_src, dtype=np.float64).reshape(-1)
    elif "channel" in metadata:
        var, lev = _channel_parts(np.asarray(metadata["channel"]).reshape(-1))
    else:
        return None
    if var.size == 1 and size > 1:
        var, lev = np.repeat(var, size), np.repeat(lev, size)
    if var.size != size or lev.size != size:
        return None
    lo, hi = np.full(size, np.nan), np.full(size, np.nan)
    for v in {str(x) for x in var}:
        sel = var == v
        r = plausible_range(v, np.where(np.isnan(lev[sel]), np.nan, lev[sel]) if v == "geopotential" else None)
        if r is not None:
            lo[sel], hi[sel] = r
    return lo, hi


@attrs.frozen(kw_only=True)
class QC:
    """Quality-control settings of the sampler (see the module docstring).

    Attributes:
        bounds: run the plausibility check.
        background: run the background check against an unconditioned prior ensemble.
        k: Gaussian-equivalent background-check threshold on :math:`|d_i|` (see :meth:`threshold`).
        members, steps: size and diffusion steps (LMS) of the background ensemble.
        max_rejected: stop with :class:`QCError` when a larger fraction of all observations is rejected.
    """

    bounds: bool = True
    background: bool = True
    k: float = 5.0
    members: int = 16
    steps: int = 10
    max_rejected: float = 0.5

    def threshold(self) -> float:
        """The threshold on :math:`|d_i|` with a variance from ``members`` draws: the Student-t quantile with
        ``members - 1`` degrees of freedom at the Gaussian probability of ``k``."""
        from scipy import stats

        return float(stats.t.ppf(stats.norm.cdf(self.k), self.members - 1))

    def __attrs_post_init__(self) -> None:
        if not self.k > 0:
            raise ValueError(f"QC: field 'k' has value {self.k}; must be > 0")
        if self.members < 2:
            raise ValueError(f"QC: field 'members' has value {self.members}; need at least 2 for a variance")
        if self.steps < 1:
            raise ValueError(f"QC: field 'steps' has value {self.steps}; must be >= 1")
        if not 0 < self.max_rejected <= 1:
            raise ValueError(f"QC: field 'max_rejected' has value {self.max_rejected}; must be in (0, 1]")


class QCError(ValueError):
    """Most observations failed quality control: the data are wrong as a whole (units, times, locations)."""


@attrs.frozen
class QCResult:
    """Flags ``[M]`` (int8), normalised background departures ``[M]`` (NaN where not computed), operator slices."""

    flags: np.ndarray
    departure: np.ndarray
    slices: dict[str, slice]

    @property
    def passed(self) -> np.ndarray:
        return self.flags == FLAG_PASS

    def counts(self) -> dict[str, dict[str, int]]:
        """Per operator: ``{"total", "pass", "outside_plausible_range", "background_check"}``."""
        out = {}
        for name, s in self.slices.items():
            f = self.flags[s]
            out[name] = {"total": int(f.size), **{m: int((f == v).sum()) for v, m in enumerate(FLAG_MEANINGS)}}
        return out

    def summary(self) -> str:
        """One line per operator with rejections, e.g. ``stations: 15 of 300 rejected (15 outside plausible
        range, 0 background check)``; ``"QC: all N observations passed"`` otherwise."""
        lines = []
        for name, c in self.counts().items():
            rej = c["total"] - c["pass"]
            if rej:
                lines.append(
                    f"QC {name}: {rej} of {c['total']} rejected ({c['outside_plausible_range']} outside plausible "
                    f"range, {c['background_check']} background check)"
                )
        return "\n".join(lines) if lines else f"QC: all {self.flags.size} observations passed"


def bounds_flags(
    operators: Sequence[object], slices: dict[str, slice], values: Tensor, obs_std: Tensor | None = None
) -> np.ndarray:
    """:data:`FLAG_BOUNDS` where an operator's ``bounds()`` excludes its value by more than :data:`BOUNDS_MARGIN`
    observation-error standard deviations (a noisy observation of a bounded quantity, such as humidity near 0, may
    fall slightly outside), else :data:`FLAG_PASS`."""
    y = values.detach().cpu().numpy()
    margin = np.zeros(y.size) if obs_std is None else BOUNDS_MARGIN * obs_std.detach().cpu().numpy()
    flags = np.zeros(y.size, dtype=np.int8)
    for op, s in zip(operators, slices.values(), strict=True):
        b = op.bounds()  # type: ignore[attr-defined]
        if b is None:
            continue
        lo, hi = (np.asarray(v, dtype=np.float64).reshape(-1) for v in b)
        lo, hi = lo - margin[s], hi + margin[s]
        ys = y[s]
        bad = (~np.isnan(lo) & (ys < lo)) | (~np.isnan(hi) & (ys > hi))
        flags[s.start : s.stop][bad] = FLAG_BOUNDS
    return flags


def background_flags(
    values: Tensor, predicted: Tensor, obs_variance: Tensor, k: float, flags: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Background check: ``predicted [N, M]`` = H of the prior ensemble. Returns ``(flags, departure)``; rows already
    flagged keep their flag."""
    pred = predicted.detach().to(torch.float64).cpu()
    bvar = pred.var(dim=0, unbiased=True)
    d = (values.detach().cpu().to(torch.float64) - pred.mean(0)) / (obs_variance.cpu().to(torch.float64) + bvar).sqrt()
    dep = d.numpy()
    out = flags.copy()
    out[(out == FLAG_PASS) & ~(np.abs(dep) <= k)] = FLAG_BACKGROUND
    return out, dep
