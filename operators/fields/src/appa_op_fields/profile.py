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
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.noise import DiagonalGaussian, NoiseModel, default_errors
from appa_core.obs import SparseLinearOperator, time_interpolation
from appa_core.obs.interp import bilinear_weights, nearest_weights, product_stencil_matrix
from appa_core.obs.validate import (
    broadcast_floats,
    broadcast_strings,
    check_finite,
    check_lat,
    check_lon,
    check_nonempty,
    check_positive,
    check_same_length,
    to_datetime64,
    to_float_array,
)
from appa_core.spec import StateSpec

__all__ = ["PressureLevelOp", "log_pressure_weights"]

_METHODS = ("bilinear", "nearest")
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
class PressureLevelOp(SparseLinearOperator):
    """Profile observations at arbitrary pressures, interpolated in log-pressure between model levels.

    Every per-observation field accepts a scalar (broadcast) or an array ``[M]``; ``value`` fixes ``M``.

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

    variable: str | Sequence[str] | np.ndarray = attrs.field()
    pressure: Any = attrs.field()
    lat: Any = attrs.field()
    lon: Any = attrs.field()
    time: Any = attrs.field()
    value: Any = attrs.field()
    error: Any = attrs.field(default=None)
    station_id: Any = attrs.field(default=None)
    method: str = attrs.field(default="bilinear")
    out_of_range: str = attrs.field(default="clamp")

    _names: list[str] = attrs.field(factory=list, init=False, repr=False)
    _codes: np.ndarray = attrs.field(default=None, init=False, repr=False)

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

    def validate(self) -> None:
        owner = str(self.name)
        value = np.atleast_1d(to_float_array(owner, "value", self.value, ndim=None))
        if value.ndim != 1:
            raise ValueError(f"{owner}: field 'value' must be 1-D, got shape {value.shape}")
        check_nonempty(owner, "value", value)
        m = value.size
        arrays: dict[str, np.ndarray] = {
            "value": value,
            "pressure": broadcast_floats(owner, "pressure", self.pressure, m),
            "lat": broadcast_floats(owner, "lat", self.lat, m),
            "lon": broadcast_floats(owner, "lon", self.lon, m),
        }
        if isinstance(self.variable, str):  # fast path: one variable for all observations
            arrays["variable"] = np.full(m, self.variable)
            names, codes = [self.variable], np.zeros(m, dtype=np.int64)
        else:
            arrays["variable"] = broadcast_strings(owner, "variable", self.variable, m)
            unique, codes = np.unique(arrays["variable"], return_inverse=True)
            names = [str(v) for v in unique]
        time = to_datetime64(owner, "time", self.time)
        arrays["time"] = np.repeat(time, m) if time.size == 1 and m > 1 else time
        if self.error is not None:
            arrays["error"] = broadcast_floats(owner, "error", self.error, m)
        if self.station_id is not None:
            arrays["station_id"] = broadcast_strings(owner, "station_id", self.station_id, m)
        check_same_length(owner, **arrays)
        check_finite(owner, "value", value)
        check_positive(owner, "pressure", arrays["pressure"])
        if arrays["pressure"].max() > 1100.0:  # the deepest surface pressure on Earth is ~1085 hPa
            i = int(np.argmax(arrays["pressure"]))
            raise ValueError(
                f"{owner}: field 'pressure' has value {arrays['pressure'][i]:g} at index {i}, above 1100 hPa; "
                "pressures are in hPa (was it given in Pa?)"
            )
        check_lat(owner, arrays["lat"])
        check_lon(owner, arrays["lon"])
        if "error" in arrays:
            check_positive(owner, "error", arrays["error"])
        if self.method not in _METHODS:
            raise ValueError(f"{owner}: field 'method' has value {self.method!r}; use one of {list(_METHODS)}")
        if self.out_of_range not in _OUT_OF_RANGE:
            raise ValueError(
                f"{owner}: field 'out_of_range' has value {self.out_of_range!r}; use one of {list(_OUT_OF_RANGE)}"
            )
        self.value, self.pressure, self.lat, self.lon = value, arrays["pressure"], arrays["lat"], arrays["lon"]
        self.variable, self.time = arrays["variable"], arrays["time"]
        self.error, self.station_id = arrays.get("error"), arrays.get("station_id")
        self._names, self._codes = names, codes.reshape(-1)

    def default_noise(self) -> NoiseModel:
        if self.error is not None:
            return DiagonalGaussian(self.error)
        return DiagonalGaussian(default_errors(str(self.name), self._names, self._codes))

    @property
    def size(self) -> int:
        return int(np.asarray(self.value).size)

    @property
    def values(self) -> Tensor:
        return torch.as_tensor(self.value, dtype=torch.float64)

    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
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
        channel = np.take_along_axis(table, k, axis=1)
        i0, i1, w1 = time_interpolation(owner, self.time, times)
        weights = bilinear_weights if self.method == "bilinear" else nearest_weights
        idx, w = weights(grid, self.lat, self.lon)
        A = product_stencil_matrix(
            (times.size, spec.n_channels, grid.nlat * grid.nlon),
            time=(np.stack([i0, i1], 1), np.stack([1.0 - w1, w1], 1)),
            channel=(channel, beta),
            space=(idx, w),
        )
        self._set_matrix(A)

    def metadata(self) -> dict[str, np.ndarray]:
        out = {
            "lat": self.lat,
            "lon": self.lon,
            "time": self.time,
            "variable": self.variable,
            "pressure": self.pressure,
        }
        if self.station_id is not None:
            out["station_id"] = self.station_id
        return out
