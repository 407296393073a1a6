r"""``SwathOp``: chosen variables observed over satellite footprints.

Each of the ``N`` footprints observes ``V`` state channels (a surface variable, or an atmospheric variable on one
pressure level); its value is the footprint average (:mod:`appa_op_satellite.footprint`) of the state linearly
interpolated in time between the window's two bracketing states:

.. math:: y_{n,v} = \sum_k w_{n,k}\,\big[(1-\alpha_n)\, x_{t_0(n),\,v,\,k} + \alpha_n\, x_{t_1(n),\,v,\,k}\big].

Observations are ordered footprint-major (``m = n * V + v``). The operator is linear; its sparse matrix is
``matrix()``. Build it from explicit footprints, or from an orbit with :meth:`SwathOp.from_orbit` (synthetic
values ``H(truth) + noise`` with ``truth=``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import numpy as np

from appa_core.obs.errors import DiagonalGaussian, NoiseModel
from appa_core.obs.validate import check_positive, to_float_array
from appa_core.spec import StateSpec
from appa_op_satellite._base import FootprintOperator

__all__ = ["DEFAULT_ERRORS", "SwathOp", "parse_variable"]

#: Default observation error standard deviations per variable (physical units), used when ``error`` is not given.
DEFAULT_ERRORS: dict[str, float] = {
    "temperature": 1.0,
    "2m_temperature": 1.0,
    "skin_temperature": 1.0,
    "sea_surface_temperature": 0.5,
    "2m_dewpoint_temperature": 1.5,
    "u_component_of_wind": 2.0,
    "v_component_of_wind": 2.0,
    "10m_u_component_of_wind": 1.5,
    "10m_v_component_of_wind": 1.5,
    "10m_wind_speed": 1.5,
    "wind_speed": 2.0,
    "geopotential": 100.0,
    "specific_humidity": 5e-4,
    "relative_humidity": 10.0,
    "mean_sea_level_pressure": 100.0,
    "surface_pressure": 100.0,
    "total_column_water_vapour": 2.0,
}


def parse_variable(owner: str, item: object) -> tuple[str, int | None]:
    """``"temperature@500"`` / ``("temperature", 500)`` / ``"2m_temperature"`` -> ``(variable, level or None)``."""
    if isinstance(item, str):
        name, sep, level = item.partition("@")
        if not sep:
            return name, None
        try:
            lev = float(level)
        except ValueError as exc:
            raise ValueError(f"{owner}: field 'variables' has value {item!r}; the level must be a number") from exc
        return name, int(lev) if lev == int(lev) else lev  # type: ignore[return-value]
    if isinstance(item, tuple | list) and len(item) == 2 and isinstance(item[0], str):
        return item[0], None if item[1] is None else item[1]
    raise TypeError(f"{owner}: field 'variables' has value {item!r}; use 'var', 'var@level' or (var, level)")


@attrs.define(kw_only=True, eq=False)
class SwathOp(FootprintOperator):
    """Footprint-averaged observations of chosen variables (see the module docstring).

    Attributes:
        variables: observed channels, e.g. ``("temperature@850", "2m_temperature")`` or ``[("temperature", 850)]``.
        values: observations ``[N, V]`` (``[N]`` for one variable), physical units.
        error: observation error std per variable (scalar or ``[V]``) for the default noise
            (``DiagonalGaussian``); default :data:`DEFAULT_ERRORS` (1.0 for unknown variables).
        lat, lon, time, radius_km, kernel, method, zenith_deg, scan_position: see
            :class:`~appa_op_satellite._base.FootprintOperator`.
    """

    variables: Any = attrs.field()
    error: Any = attrs.field(default=None)

    _component_word: ClassVar[str] = "variable"

    @property
    def n_components(self) -> int:
        return len(self.variables)

    def _validate_components(self) -> None:
        owner = str(self.name)
        items = [self.variables] if isinstance(self.variables, str) else self.variables
        if not isinstance(items, Sequence | np.ndarray):
            raise TypeError(f"{owner}: field 'variables' must be a sequence of names, got {self.variables!r:.80}")
        if len(items) == 0:
            raise ValueError(f"{owner}: field 'variables' is empty; name at least one observed variable")
        parsed = tuple(parse_variable(owner, v) for v in items)
        if len(set(parsed)) != len(parsed):
            dup = next(p for p in parsed if parsed.count(p) > 1)
            raise ValueError(f"{owner}: field 'variables' lists {dup} twice")
        self.variables = parsed
        if self.error is not None:
            err = np.atleast_1d(to_float_array(owner, "error", self.error, ndim=None))
            if err.ndim != 1 or err.size not in (1, len(parsed)):
                raise ValueError(
                    f"{owner}: field 'error' must be a scalar or have {len(parsed)} values (one per variable)"
                )
            check_positive(owner, "error", err)
            self.error = np.broadcast_to(err, (len(parsed),)).copy()

    @classmethod
    def _count_components(cls, kwargs: dict[str, Any]) -> int:
        v = kwargs.get("variables")
        return 1 if isinstance(v, str) else len(v or ())

    def default_noise(self) -> NoiseModel:
        if self.error is None:
            std = np.array([DEFAULT_ERRORS.get(v, 1.0) for v, _ in self.variables])
        else:
            std = np.asarray(self.error)
        return DiagonalGaussian(np.tile(std, self.n_footprints))

    def _vertical_weights(self, spec: StateSpec) -> tuple[np.ndarray, np.ndarray]:
        owner = str(self.name)
        channels = np.array([spec.index(v, lev, owner=owner) for v, lev in self.variables], dtype=np.int64)
        return channels, np.eye(len(channels))[None]

    def _component_metadata(self) -> dict[str, np.ndarray]:
        return {
            "variable": np.array([v for v, _ in self.variables]),
            "level": np.array([np.nan if lev is None else float(lev) for _, lev in self.variables]),
        }

    @property
    def variable_names(self) -> list[str]:
        """``["temperature@850", "2m_temperature"]``."""
        return [v if lev is None else f"{v}@{lev}" for v, lev in self.variables]
