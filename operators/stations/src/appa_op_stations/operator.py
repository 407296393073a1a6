r"""``StationOp``: point observations of surface or pressure-level variables at arbitrary (lat, lon, time).

For observation :math:`m` of channel :math:`c_m` (a surface variable, or an atmospheric variable on a model
pressure level) at :math:`(\varphi_m, \lambda_m, t_m)`:

.. math:: y_m = s_m \sum_{a\in\{0,1\}} \omega_{ma} \sum_{k=1}^{4} w_{mk}\, x[i_{ma}, c_m, j_{mk}] + b_m + \epsilon_m

* :math:`w_{mk}, j_{mk}`: horizontal stencil of :func:`appa_core.obs.interp.bilinear_weights` (periodic longitude,
  across-pole rule on grids without pole rows) or :func:`~appa_core.obs.interp.nearest_weights`;
* :math:`\omega_{ma}, i_{ma}`: linear interpolation in time between the two window states bracketing
  :math:`t_m` (:func:`appa_core.obs.time_interpolation`);
* :math:`s_m = 1, b_m = 0` unless a station elevation :math:`z_s` is given and the model surface height
  :math:`z_m = \Phi_s(\varphi_m, \lambda_m)/g` is known (field ``surface_geopotential``):

  - ``2m_temperature`` (lapse-rate correction): :math:`b_m = \Gamma (z_m - z_s)`, :math:`\Gamma` = 6.5 K/km;
  - ``surface_pressure`` (hypsometric correction, linearised with a reference temperature):
    :math:`s_m = \exp(-g (z_s - z_m) / (R_d \bar T_m))`, with :math:`\bar T_m` the field
    ``reference_temperature`` or, by default, the ICAO standard atmosphere's mean temperature of the layer,
    :math:`\bar T = 288.15 - 0.0065 (z_s + z_m)/2` K. With :math:`\bar T` fixed, the operator stays affine
    (exact Gaussian updates, a sparse matrix); pass the station's observed temperature (plus
    :math:`\Gamma (z_s - z_m)/2`) as ``reference_temperature`` for the best layer mean.

The operator is affine, :math:`\mathcal{H}(x) = A\,\mathrm{vec}(x) + b`, with 8 non-zeros per row of ``A``
(4 horizontal x 2 times).
"""

from __future__ import annotations

from typing import Any, ClassVar

import attrs
import numpy as np

from appa_core.grid import Grid
from appa_core.obs import PointOperator, PointStencil
from appa_core.obs.errors import DiagonalGaussian, NoiseModel, default_errors
from appa_core.obs.validate import broadcast_floats, check_positive, field_on_grid
from appa_core.spec import StateSpec

__all__ = ["DEFAULT_ERRORS", "LAPSE_RATE", "R_DRY", "G", "StationOp"]

#: Default observation-error standard deviations per variable, in the variable's units, when ``error`` is not given:
#: typical in situ values (WMO/ECMWF order of magnitude, plus representativeness on coarse grids). The station
#: family's own table (appa-core 0.1 kept it as ``appa_core.noise.DEFAULT_ERRORS``, which now warns and gives this).
DEFAULT_ERRORS: dict[str, float] = {
    "2m_temperature": 1.0,
    "2m_dewpoint_temperature": 1.5,
    "skin_temperature": 1.5,
    "sea_surface_temperature": 0.5,
    "10m_u_component_of_wind": 1.5,
    "10m_v_component_of_wind": 1.5,
    "10m_wind_speed": 1.5,
    "mean_sea_level_pressure": 100.0,
    "surface_pressure": 100.0,
    "total_precipitation_6hr": 1e-3,
    "total_column_water_vapour": 2.0,
    "temperature": 1.0,
    "u_component_of_wind": 2.0,
    "v_component_of_wind": 2.0,
    "wind_speed": 2.0,
    "vertical_velocity": 0.1,
    "specific_humidity": 5e-4,
    "relative_humidity": 10.0,
    "geopotential": 100.0,
}


#: Standard gravity, m s**-2.
G = 9.80665
#: Gas constant of dry air, J kg**-1 K**-1.
R_DRY = 287.05
#: Standard-atmosphere temperature lapse rate, K m**-1 (UFO ``Lclr``).
LAPSE_RATE = 0.0065

_LAPSE_VARIABLES = ("2m_temperature",)
_HYPSOMETRIC_VARIABLES = ("surface_pressure",)


@attrs.define(kw_only=True, eq=False)
class StationOp(PointOperator):
    """Point observations (surface stations, ships, buoys, aircraft at model levels) interpolated on the sphere.

    A :class:`~appa_core.obs.PointOperator`: every per-observation field accepts a scalar (broadcast to all
    observations) or an array ``[M]``; ``value`` fixes ``M``.

    Attributes:
        variable: variable name per observation (ERA5 names, e.g. ``"2m_temperature"``, ``"temperature"``), or
            one name for all.
        lat: latitudes ``[M]``, degrees north, in [-90, 90].
        lon: longitudes ``[M]``, degrees east, in [-180, 360] (wrapped).
        time: observation times ``[M]`` (``datetime64`` or ISO strings), inside the window at ``prepare``.
        value: observed values ``[M]`` in the variable's units (K, Pa, m s**-1, ...), finite.
        level: pressure level in hPa per observation for atmospheric variables (must be a model level);
            ``None``/NaN for surface variables.
        error: observation-error standard deviation per observation (same units as ``value``) for the default
            :class:`~appa_core.obs.errors.DiagonalGaussian` noise; ``None`` uses :data:`DEFAULT_ERRORS` per variable.
        elevation: station height above sea level, m (``None``: no altitude correction; NaN entries: none for
            that observation). Used for ``2m_temperature`` and ``surface_pressure`` only.
        surface_geopotential: model surface geopotential :math:`\\Phi_s` ``[H, W]`` in m**2 s**-2 (numpy in
            the grid's order or an ``xarray.DataArray`` with ``latitude``/``longitude`` dims), required at
            ``prepare`` when an elevation correction applies; ``z_m = Phi_s / g``.
        station_id: station identifiers ``[M]`` (metadata only).
        method: horizontal interpolation, ``"bilinear"`` (default) or ``"nearest"``.
        lapse_rate: :math:`\\Gamma` in K m**-1 (default 0.0065).
        reference_temperature: layer-mean temperature :math:`\\bar T` in K for the hypsometric correction of
            surface pressure (scalar or ``[M]``); ``None`` uses the standard atmosphere.
    """

    row_fields: ClassVar[tuple[str, ...] | None] = (
        *PointOperator.row_fields,  # type: ignore[misc]
        "level",
        "elevation",
        "reference_temperature",
    )

    level: Any = attrs.field(default=None)
    elevation: Any = attrs.field(default=None)
    surface_geopotential: Any = attrs.field(default=None, repr=False)
    lapse_rate: float = attrs.field(default=LAPSE_RATE)
    reference_temperature: Any = attrs.field(default=None)

    @classmethod
    def example(cls) -> tuple[StationOp, Grid, StateSpec, np.ndarray]:
        """A small valid, unprepared operator and the layout to prepare it on (``appa plugins check``)."""
        grid = Grid.equiangular(7, 12, poles=False)
        spec = StateSpec(surface=("2m_temperature", "surface_pressure"), atmospheric=("temperature",), levels=(500,))
        times = np.array(["2020-01-01T00", "2020-01-01T06"], dtype="datetime64[ns]")
        op = cls(
            variable=["2m_temperature", "surface_pressure", "temperature", "2m_temperature"],
            level=[None, None, 500.0, None],
            lat=[52.5, -33.9, 89.0, 0.0],
            lon=[13.4, 18.4, 200.0, -0.5],
            time=["2020-01-01T00", "2020-01-01T03", "2020-01-01T06", "2020-01-01T04"],
            value=[275.0, 101000.0, 240.0, 300.0],
            elevation=[34.0, 10.0, np.nan, 0.0],
            surface_geopotential=np.full(grid.shape, 100.0 * G),
        )
        return op, grid, spec, times

    # ------------------------------------------------------------------ construction
    def _point_fields(self, owner: str, m: int) -> dict[str, np.ndarray]:
        arrays = {
            "level": np.full(m, np.nan) if self.level is None else broadcast_floats(owner, "level", self.level, m)
        }
        if self.elevation is not None:
            arrays["elevation"] = broadcast_floats(owner, "elevation", self.elevation, m)
        if self.reference_temperature is not None:
            arrays["reference_temperature"] = broadcast_floats(
                owner, "reference_temperature", self.reference_temperature, m
            )
        return arrays

    def _validate_point_fields(self, owner: str, arrays: dict[str, np.ndarray]) -> None:
        level = arrays["level"]
        finite_level = np.isfinite(level)
        if np.any(level[finite_level] <= 0) or np.any(np.isinf(level)):
            i = int(np.flatnonzero(np.isinf(level) | (finite_level & (level <= 0)))[0])
            raise ValueError(f"{owner}: field 'level' has value {level[i]} at index {i}; must be > 0 hPa (or NaN)")
        if "elevation" in arrays:
            elev = arrays["elevation"]
            bad = np.isinf(elev) | (elev < -500) | (elev > 9000)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"{owner}: field 'elevation' has value {elev[i]} at index {i} outside [-500, 9000] m (or NaN)"
                )
        if "reference_temperature" in arrays:
            check_positive(owner, "reference_temperature", arrays["reference_temperature"])
        if not np.isfinite(self.lapse_rate):
            raise ValueError(f"{owner}: field 'lapse_rate' has value {self.lapse_rate}; must be finite")
        self.level = level
        self.elevation = arrays.get("elevation")
        self.reference_temperature = arrays.get("reference_temperature")

    def default_noise(self) -> NoiseModel:
        if self.error is not None:
            return DiagonalGaussian(self.error)
        return DiagonalGaussian(default_errors(str(self.name), self._names, self._codes, DEFAULT_ERRORS))

    # ------------------------------------------------------------------ prepare
    def _channel_stencil(self, spec: StateSpec) -> tuple[np.ndarray, np.ndarray]:
        """Channel index per observation ``[M, 1]`` (weight 1); one spec lookup per distinct (variable, level)."""
        owner = str(self.name)
        channel = np.empty(self.size, dtype=np.int64)
        for code, v in enumerate(self._names):  # loop over distinct variables, not observations
            sel = self._codes == code
            first = int(np.flatnonzero(sel)[0])
            if v not in spec.variables:
                raise ValueError(
                    f"{owner}: field 'variable' has value {v!r} at index {first}, which the state does not model; "
                    f"known variables are {list(spec.variables)}"
                )
            lev = self.level[sel]
            if spec.is_surface(v):
                has = np.isfinite(lev)
                if has.any():
                    i = int(np.flatnonzero(sel)[np.flatnonzero(has)[0]])
                    raise ValueError(
                        f"{owner}: field 'level' has value {self.level[i]} at index {i} for surface variable {v!r}; "
                        f"use None/NaN"
                    )
                channel[sel] = spec.index(v, owner=owner)
                continue
            missing = ~np.isfinite(lev)
            if missing.any():
                i = int(np.flatnonzero(sel)[np.flatnonzero(missing)[0]])
                raise ValueError(
                    f"{owner}: field 'level' has value nan at index {i} for pressure-level variable {v!r}; "
                    f"give one of the model levels {list(spec.levels)} hPa"
                )
            levels = np.asarray(spec.levels, dtype=np.float64)
            pos = np.flatnonzero(~np.isclose(lev[:, None], levels[None, :]).any(1))
            if pos.size:
                i = int(np.flatnonzero(sel)[pos[0]])
                raise ValueError(
                    f"{owner}: field 'level' has value {self.level[i]} at index {i} for {v!r}, which is not a model "
                    f"level; levels are {list(spec.levels)} hPa (use PressureLevelOp for arbitrary pressures)"
                )
            k = np.argmin(np.abs(lev[:, None] - levels[None, :]), axis=1)
            channel[sel] = np.array([spec.index(v, lv, owner=owner) for lv in spec.levels])[k]
        return channel[:, None], np.ones((self.size, 1))

    def _affine(
        self, grid: Grid, spec: StateSpec, stencil: PointStencil
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The altitude corrections (module docstring): ``(scale [M], offset [M])`` or ``(None, None)``."""
        owner = str(self.name)
        corrected = self._corrected()
        if not corrected.any():
            return None, None
        if self.surface_geopotential is None:
            v = str(self.variable[np.flatnonzero(corrected)[0]])
            raise ValueError(
                f"{owner}: field 'surface_geopotential' is None but field 'elevation' asks for an altitude "
                f"correction of {v!r}; give the model surface geopotential [H, W] in m**2 s**-2, or leave "
                f"'elevation' unset"
            )
        scale = np.ones(self.size)
        offset = np.zeros(self.size)
        phi = field_on_grid(owner, "surface_geopotential", self.surface_geopotential, grid)
        z_model = stencil.horizontal(phi) / G
        z_station = np.where(corrected, self.elevation, 0.0)  # type: ignore[arg-type]
        lapse = corrected & self._is(_LAPSE_VARIABLES)
        offset[lapse] = self.lapse_rate * (z_model[lapse] - z_station[lapse])
        hyps = corrected & self._is(_HYPSOMETRIC_VARIABLES)
        if self.reference_temperature is not None:
            t_ref = self.reference_temperature
        else:
            t_ref = 288.15 - LAPSE_RATE * 0.5 * (z_station + z_model)
        scale[hyps] = np.exp(-G * (z_station[hyps] - z_model[hyps]) / (R_DRY * t_ref[hyps]))
        return scale, offset

    def _corrected(self) -> np.ndarray:
        """Which observations get an altitude correction ``[M]`` bool."""
        if self.elevation is None:
            return np.zeros(self.size, dtype=bool)
        return self._is(_LAPSE_VARIABLES + _HYPSOMETRIC_VARIABLES) & np.isfinite(self.elevation)

    # ------------------------------------------------------------------ diagnostics
    def _point_metadata(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"level": self.level}
        if self.elevation is not None:
            out["elevation"] = self.elevation
        return out
