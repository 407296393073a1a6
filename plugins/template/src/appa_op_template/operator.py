r"""``GlobalMeanOp``: the area-weighted global mean of one variable, observed at given times.

For observation :math:`m` at time :math:`t_m` between window states :math:`k_0 \le t_m \le k_1` (weight
:math:`w_1` on :math:`k_1`) of channel :math:`c`,

.. math:: y_m = \sum_{j,i} a_j \left[(1 - w_1)\, x_{k_0, c, j, i} + w_1\, x_{k_1, c, j, i}\right],
          \qquad a_j = \frac{A_j}{W \sum_{j'} A_{j'}},

with :math:`A_j` the area of a cell of latitude row :math:`j` (:meth:`~appa_core.grid.Grid.area_weights`), so
the weights :math:`a_j` sum to one over the grid. The operator is linear: a
:class:`~appa_core.obs.SparseLinearOperator` whose matrix has ``2 * H * W`` entries per observation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.obs import SparseLinearOperator, time_interpolation
from appa_core.obs import validate as check
from appa_core.obs.errors import DiagonalGaussian, NoiseModel
from appa_core.spec import StateSpec

if TYPE_CHECKING:
    from appa_core.obs import ObsContext

__all__ = ["GlobalMeanOp"]

_OWNER = "GlobalMeanOp"


def _floats(field: str) -> Any:
    return lambda v: np.atleast_1d(check.to_float_array(_OWNER, field, v, ndim=None))


@attrs.define(kw_only=True, eq=False)
class GlobalMeanOp(SparseLinearOperator):
    """Area-weighted global mean of ``variable`` (at pressure ``level`` in hPa for atmospheric variables).

    Attributes:
        variable: ERA5 / WeatherBench2 name, e.g. ``"2m_temperature"``.
        level: pressure level in hPa for atmospheric variables, ``None`` for surface variables.
        time: observation times ``[M]`` (``datetime64`` or ISO strings), inside the window.
        value: observed global means ``[M]``, in the variable's units.
        error: observation error standard deviation(s), scalar or ``[M]`` (default noise: diagonal Gaussian).
    """

    variable: str
    level: float | None = None
    time: np.ndarray = attrs.field(converter=lambda v: check.to_datetime64(_OWNER, "time", v))
    value: np.ndarray = attrs.field(converter=_floats("value"))
    error: np.ndarray = attrs.field(default=0.1, converter=_floats("error"))

    def validate(self) -> None:
        if not isinstance(self.variable, str) or not self.variable:
            raise TypeError(f"{_OWNER}: field 'variable' must be a variable name (str), got {self.variable!r}")
        if self.level is not None and not (isinstance(self.level, int | float) and self.level > 0):
            raise ValueError(f"{_OWNER}: field 'level' has value {self.level!r}; must be a pressure > 0 in hPa")
        check.check_nonempty(_OWNER, "value", self.value)
        check.check_same_length(_OWNER, value=self.value, time=self.time)
        check.check_finite(_OWNER, "value", self.value)
        check.check_positive(_OWNER, "error", self.error)
        if self.error.size not in (1, self.value.size):
            raise ValueError(f"{_OWNER}: field 'error' has {self.error.size} values but there are {self.value.size}")

    def default_noise(self) -> NoiseModel:
        return DiagonalGaussian(self.error if self.error.size > 1 else float(self.error[0]))

    @property
    def size(self) -> int:
        return int(self.value.size)

    @property
    def values(self) -> Tensor:
        return torch.as_tensor(self.value, dtype=torch.float64)

    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
        c = spec.index(self.variable, self.level, owner=_OWNER)
        i0, i1, w1 = time_interpolation(_OWNER, self.time, times)
        hw = grid.nlat * grid.nlon
        cell = np.repeat(grid.area_weights() / hw, grid.nlon)  # [H*W], sums to 1
        n_ch = spec.n_channels
        rows = np.repeat(np.arange(self.size), 2 * hw)
        cols = np.concatenate([((i0 * n_ch + c) * hw)[:, None], ((i1 * n_ch + c) * hw)[:, None]], axis=1)
        cols = (cols[:, :, None] + np.arange(hw)).reshape(-1)
        data = (np.stack([1 - w1, w1], axis=1)[:, :, None] * cell).reshape(-1)
        A = sp.csr_array((data, (rows, cols)), shape=(self.size, len(times) * n_ch * hw))
        self._set_matrix(A)

    def metadata(self) -> dict[str, np.ndarray]:
        return {
            "time": self.time,
            "variable": np.full(self.size, self.variable),
            "level": np.full(self.size, np.nan if self.level is None else float(self.level)),
        }

    # ------------------------------------------------------------------ workflows (appa_core.obs.config)
    # from_config: the default fits (a table's keys are the fields above; with simulate = true and no 'time', the
    # mean is observed at every state of the window). synthetic_network: for observing systems, below.
    @classmethod
    def synthetic_network(
        cls,
        context: ObsContext,
        *,
        variable: str = "2m_temperature",
        level: float | None = None,
        every: int = 1,
        error: float = 0.1,
        name: str | None = None,
    ) -> list[GlobalMeanOp]:
        """The global mean of ``variable`` at every ``every``-th state of the window (values to be simulated)."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"{_OWNER}.synthetic_network: field 'every' has value {every!r}; must be an integer >= 1")
        times = context.times[::every]
        label = name or (f"global_mean_{variable}" + ("" if level is None else f"@{level:g}"))
        return [cls(variable=variable, level=level, time=times, value=np.zeros(times.size), error=error, name=label)]

    @classmethod
    def example(cls) -> tuple[GlobalMeanOp, Grid, StateSpec, np.ndarray]:
        """A small valid operator and the state layout to prepare it on (used by ``appa plugins check``)."""
        grid = Grid.equiangular(7, 12)
        spec = StateSpec(surface=("2m_temperature",), atmospheric=("temperature",), levels=(500, 850))
        times = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], dtype="datetime64[ns]")
        op = cls(variable="temperature", level=500, time=["2020-01-01T03", "2020-01-01T12"], value=[252.0, 251.5])
        return op, grid, spec, times
