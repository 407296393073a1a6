r"""``PressureLevelOp``: atmospheric variables at arbitrary pressures (radiosonde and aircraft profiles).

Observation :math:`m` of variable :math:`v_m` at pressure :math:`p_m` (hPa), :math:`(\varphi_m, \lambda_m, t_m)`
is interpolated linearly in :math:`\ln p` between the two model levels :math:`p_k < p_m < p_{k+1}` that bracket
it (UFO ``VertInterp``, log-linear):

.. math:: y_m = (1 - \beta_m)\, X_{k} + \beta_m\, X_{k+1}, \qquad
          \beta_m = \frac{\ln p_m - \ln p_k}{\ln p_{k+1} - \ln p_k},

where :math:`X_k` is the model field on level :math:`p_k` interpolated horizontally
(:func:`appa_core.obs.interp.bilinear_weights`, or nearest) and linearly in time between the window states.
Outside the model levels the value is **clamped** to the top or bottom level (as UFO does; no extrapolation), or,
with ``out_of_range="error"``, refused at ``prepare``. The operator is linear with at most 16 non-zeros per row
(2 levels x 4 horizontal points x 2 times).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from appa_core.grid import Grid
from appa_core.obs import PointOperator
from appa_core.obs.errors import DiagonalGaussian, NoiseModel, default_errors
from appa_core.obs.validate import broadcast_floats, check_positive
from appa_core.spec import StateSpec
from appa_op_fields.masked import DEFAULT_ERRORS

__all__ = ["PressureLevelOp", "log_pressure_weights"]

_OUT_OF_RANGE = ("clamp", "error")


def log_pressure_weights(levels: Sequence[float], pressure: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertical stencil linear in ``ln p``, clamped outside the levels.

    Args:
        levels: model pressure levels in hPa (any order) ``[L]``.
        pressure: observation pressures in hPa ``[M]``.

    Returns:
        ``(k, w)``, each ``[M, 2]``: positions into ``levels`` and their weights (summing to 1).
    """
    lev = np.asarray(levels, dtype=np.float64)
    order = np.argsort(lev)
    lp = np.log(lev[order])
    x = np.log(pressure)
    if lp.size == 1:
        k = np.zeros((x.size, 2), dtype=np.int64)
        return order[k], np.stack([np.ones(x.size), np.zeros(x.size)], 1)
    j = np.clip(np.searchsorted(lp, x, side="right") - 1, 0, lp.size - 2)
    beta = np.clip((x - lp[j]) / (lp[j + 1] - lp[j]), 0.0, 1.0)
    k = np.stack([j, j + 1], 1)
    return order[k], np.stack([1.0 - beta, beta], 1)


@attrs.define(kw_only=True, eq=False)
class PressureLevelOp(PointOperator):
    """Profile observations at arbitrary pressures, interpolated in log-pressure between model levels.

    A :class:`~appa_core.obs.PointOperator`: every per-observation field accepts a scalar (broadcast) or an array
    ``[M]``; ``value`` fixes ``M``.

    Attributes:
        variable: atmospheric variable per observation (e.g. ``"temperature"``), or one for all.
        pressure: observation pressure in hPa ``[M]``, > 0.
        lat: latitudes ``[M]``, degrees, in [-90, 90].
        lon: longitudes ``[M]``, degrees, in [-180, 360].
        time: times ``[M]`` (``datetime64`` or ISO strings), inside the window at ``prepare``.
        value: observed values ``[M]`` in the variable's units.
        error: noise std per observation for the default diagonal Gaussian; ``None``: :data:`DEFAULT_ERRORS`.
        station_id: identifiers (e.g. sonde launches) ``[M]``, metadata only.
        method: horizontal interpolation, ``"bilinear"`` or ``"nearest"``.
        out_of_range: ``"clamp"`` (default) uses the nearest end level above the top / below the bottom model
            level; ``"error"`` refuses such pressures at ``prepare``.
    """

    row_fields: ClassVar[tuple[str, ...] | None] = (*PointOperator.row_fields, "pressure")  # type: ignore[misc]

    pressure: Any = attrs.field()
    out_of_range: str = attrs.field(default="clamp")

    @classmethod
    def example(cls) -> tuple[PressureLevelOp, Grid, StateSpec, np.ndarray]:
        """A small valid, unprepared operator and the layout to prepare it on (``appa plugins check``)."""
        grid = Grid.equiangular(7, 12)
        spec = StateSpec(surface=("2m_temperature",), atmospheric=("temperature",), levels=(250, 500, 850))
        times = np.array(["2020-01-01T00", "2020-01-01T06"], dtype="datetime64[ns]")
        pressure = [1000.0, 925.0, 850.0, 700.0, 500.0, 300.0, 250.0, 200.0]
        op = cls(
            variable="temperature",
            pressure=pressure,
            lat=np.linspace(52.0, 53.0, 8),
            lon=np.linspace(14.0, 15.0, 8),
            time="2020-01-01T02",
            value=[280.0, 276.0, 272.0, 262.0, 250.0, 228.0, 222.0, 218.0],
            station_id="10393",
        )
        return op, grid, spec, times

    def _point_fields(self, owner: str, m: int) -> dict[str, np.ndarray]:
        return {"pressure": broadcast_floats(owner, "pressure", self.pressure, m)}

    def _validate_point_fields(self, owner: str, arrays: dict[str, np.ndarray]) -> None:
        pressure = arrays["pressure"]
        check_positive(owner, "pressure", pressure)
        if pressure.max() > 1100.0:  # the deepest surface pressure on Earth is ~1085 hPa
            i = int(np.argmax(pressure))
            raise ValueError(
                f"{owner}: field 'pressure' has value {pressure[i]:g} at index {i}, above 1100 hPa; "
                "pressures are in hPa (was it given in Pa?)"
            )
        if self.out_of_range not in _OUT_OF_RANGE:
            raise ValueError(
                f"{owner}: field 'out_of_range' has value {self.out_of_range!r}; use one of {list(_OUT_OF_RANGE)}"
            )
        self.pressure = pressure

    def default_noise(self) -> NoiseModel:
        if self.error is not None:
            return DiagonalGaussian(self.error)
        return DiagonalGaussian(default_errors(str(self.name), self._names, self._codes, DEFAULT_ERRORS))

    def _channel_stencil(self, spec: StateSpec) -> tuple[np.ndarray, np.ndarray]:
        """The two model levels bracketing each pressure and their log-pressure weights, ``[M, 2]`` each."""
        owner = str(self.name)
        levels = np.asarray(spec.levels, dtype=np.float64)
        if self.out_of_range == "error" and levels.size:
            bad = (self.pressure < levels.min()) | (self.pressure > levels.max())
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(
                    f"{owner}: field 'pressure' has value {self.pressure[i]} at index {i} outside the model levels "
                    f"[{levels.min():g}, {levels.max():g}] hPa (out_of_range='error')"
                )
        # channel of each (variable, level): one lookup per distinct variable
        table = np.empty((self.size, max(levels.size, 1)), dtype=np.int64)
        for code, v in enumerate(self._names):  # distinct variables, not observations
            sel = self._codes == code
            first = int(np.flatnonzero(sel)[0])
            if v not in spec.atmospheric:
                kind = "a surface variable" if v in spec.surface else "not modelled"
                raise ValueError(
                    f"{owner}: field 'variable' has value {v!r} at index {first}, which is {kind}; pressure-level "
                    f"variables are {list(spec.atmospheric)}"
                )
            table[sel] = np.array([spec.index(v, lev, owner=owner) for lev in spec.levels])
        k, beta = log_pressure_weights(levels, self.pressure)
        return np.take_along_axis(table, k, axis=1), beta

    def _point_metadata(self) -> dict[str, np.ndarray]:
        return {"pressure": self.pressure}
