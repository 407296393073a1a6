r"""Point observations: the shared geometry and the base class of point operators.

A point observation :math:`m` at latitude :math:`\varphi_m`, longitude :math:`\lambda_m` and time :math:`t_m`
reads the state through a separable stencil, the same for every point family:

.. math:: y_m = s_m \sum_{a\in\{0,1\}} \omega_{ma} \sum_{b} \gamma_{mb} \sum_{k=1}^{4} w_{mk}\,
          x[i_{ma}, c_{mb}, j_{mk}] + o_m

* :math:`w_{mk}, j_{mk}`: the horizontal stencil of :func:`appa_core.obs.interp.bilinear_weights` (or
  :func:`~appa_core.obs.interp.nearest_weights`), flat indices into ``H*W``;
* :math:`\omega_{ma}, i_{ma}`: linear interpolation in time between the two window states bracketing
  :math:`t_m` (:func:`appa_core.obs.time_interpolation`);
* :math:`\gamma_{mb}, c_{mb}`: the channel stencil of the family (one channel with weight 1 for a variable on a
  model level; two levels weighted in log-pressure for a profile; ...);
* :math:`s_m, o_m`: an optional per-observation scale and offset (altitude corrections), 1 and 0 by default.

:func:`point_stencil` computes the time and horizontal parts once, vectorised (:class:`PointStencil`); a linear
family derives from :class:`PointOperator` and implements only its channel stencil (and, optionally, the affine
correction); a nonlinear family (wind speed from ``u`` and ``v``) builds a :class:`PointStencil` in its
``_prepare`` and reads the channels it needs with :meth:`PointStencil.gather`, differentiably.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar, Self

import attrs
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.obs.base import SparseLinearOperator, time_interpolation
from appa_core.obs.errors import DiagonalGaussian, NoiseModel
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

__all__ = ["POINT_METHODS", "PointOperator", "PointStencil", "point_stencil"]

#: Horizontal interpolation methods of point operators.
POINT_METHODS = ("bilinear", "nearest")


@attrs.frozen(eq=False)
class PointStencil:
    """The time and horizontal stencils of ``M`` point observations (see the module docstring).

    Attributes:
        time_index: ``[M, 2]`` int64 window-state indices :math:`i_{ma}`.
        time_weight: ``[M, 2]`` float64 weights :math:`\\omega_{ma}` (rows sum to 1).
        cell: ``[M, 4]`` int64 flat horizontal indices :math:`j_{mk}` into ``H*W``.
        weight: ``[M, 4]`` float64 horizontal weights :math:`w_{mk}` (rows sum to 1).
        shape: ``(T, H, W)`` of the window and grid the stencil was built for.
    """

    time_index: np.ndarray
    time_weight: np.ndarray
    cell: np.ndarray
    weight: np.ndarray
    shape: tuple[int, int, int]

    @property
    def size(self) -> int:
        return int(self.cell.shape[0])

    def horizontal(self, field: np.ndarray) -> np.ndarray:
        """A static field ``[H, W]`` (numpy) at the points ``[M]`` (e.g. the model orography)."""
        return (np.asarray(field).reshape(-1)[self.cell] * self.weight).sum(1)

    def matrix(
        self,
        n_channels: int,
        channel: tuple[np.ndarray, np.ndarray],
        scale: np.ndarray | None = None,
    ) -> sp.csr_array:
        """The sparse matrix ``[M, T*C*H*W]`` of the stencil for the channel stencil ``channel``.

        Args:
            n_channels: ``C``, the state's channel count.
            channel: ``(c [M, K] int, gamma [M, K] float)`` channel indices and weights.
            scale: per-observation factor :math:`s_m` ``[M]`` (``None``: 1).
        """
        t, h, w = self.shape
        ic, wc = (np.asarray(a) for a in channel)
        space_w = self.weight if scale is None else self.weight * np.asarray(scale, dtype=np.float64)[:, None]
        return product_stencil_matrix(
            (t, n_channels, h * w),
            time=(self.time_index, self.time_weight),
            channel=(ic.reshape(self.size, -1), wc.reshape(self.size, -1)),
            space=(self.cell, space_w),
        )

    def gather(self, x: Tensor, channel: np.ndarray | Tensor) -> Tensor:
        """Channel ``channel[m]`` of ``x`` at each point, interpolated in space and time (differentiable).

        Args:
            x: states ``[B, T, C, H, W]`` (the window and grid of the stencil).
            channel: ``[M]`` int channel index per observation (``spec.index(variable, level)``).

        Returns:
            ``[B, M]`` in the units of ``x``.
        """
        b, t, c, h, w = x.shape
        if (t, h, w) != self.shape:
            raise ValueError(f"PointStencil.gather: state is [B, {t}, C, {h}, {w}] but the stencil is for {self.shape}")
        dev = x.device
        ti = torch.as_tensor(self.time_index, device=dev)
        ch = torch.as_tensor(np.asarray(channel), dtype=torch.int64, device=dev).reshape(-1, 1, 1)
        cells = torch.as_tensor(self.cell, device=dev)
        cols = (ti[:, :, None] * c + ch) * (h * w) + cells[:, None, :]  # [M, 2, 4]
        wts = (
            torch.as_tensor(self.time_weight, dtype=x.dtype, device=dev)[:, :, None]
            * torch.as_tensor(self.weight, dtype=x.dtype, device=dev)[:, None, :]
        )
        vals = x.reshape(b, -1).index_select(1, cols.reshape(-1)).reshape(b, self.size, -1)
        return (vals * wts.reshape(self.size, -1)).sum(-1)


def point_stencil(
    owner: str,
    grid: Grid,
    window: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    time: np.ndarray,
    method: str = "bilinear",
) -> PointStencil:
    """Time and horizontal stencils of ``M`` points, vectorised.

    Args:
        owner: the operator's name, for error messages.
        grid: the state grid.
        window: the window's state times ``datetime64[ns]`` ``[T]`` (strictly increasing).
        lat, lon: degrees ``[M]`` (lat in [-90, 90], lon in [-180, 360]).
        time: observation times ``datetime64[ns]`` ``[M]``, inside the window (else ``ValueError``).
        method: ``"bilinear"`` or ``"nearest"``.
    """
    if method not in POINT_METHODS:
        raise ValueError(f"{owner}: field 'method' has value {method!r}; use one of {list(POINT_METHODS)}")
    i0, i1, w1 = time_interpolation(owner, time, window)
    weights = bilinear_weights if method == "bilinear" else nearest_weights
    idx, w = weights(grid, lat, lon)
    return PointStencil(
        time_index=np.stack([i0, i1], 1),
        time_weight=np.stack([1.0 - w1, w1], 1),
        cell=idx,
        weight=w,
        shape=(int(window.size), grid.nlat, grid.nlon),
    )


@attrs.define(kw_only=True, eq=False)
class PointOperator(SparseLinearOperator):
    """Base class of linear point operators: ``M`` observations at arbitrary ``(lat, lon, time)``.

    It validates the common fields, builds the space-time stencil (:func:`point_stencil`) and the sparse matrix at
    ``prepare``; a family implements :meth:`_channel_stencil` (which state channels, with which weights, each
    observation reads), and optionally :meth:`_point_fields` / :meth:`_validate_point_fields` for its own
    per-observation fields, :meth:`_affine` for a per-observation scale and offset, :meth:`_point_metadata` and
    :meth:`default_noise`. Every per-observation field accepts a scalar (broadcast) or an array ``[M]``;
    ``value`` fixes ``M``.

    Attributes:
        variable: variable name per observation (ERA5 names), or one name for all.
        lat: latitudes ``[M]``, degrees north, in [-90, 90].
        lon: longitudes ``[M]``, degrees east, in [-180, 360].
        time: observation times ``[M]`` (``datetime64`` or ISO strings), inside the window at ``prepare``.
        value: observed values ``[M]`` in the variable's units, finite.
        error: observation-error standard deviation per observation (units of ``value``) for the default
            :class:`~appa_core.obs.errors.DiagonalGaussian` noise.
        station_id: identifiers ``[M]`` (metadata only).
        method: horizontal interpolation, ``"bilinear"`` (default) or ``"nearest"``.
    """

    variable: str | Sequence[str] | np.ndarray = attrs.field()
    lat: Any = attrs.field()
    lon: Any = attrs.field()
    time: Any = attrs.field()
    value: Any = attrs.field()
    error: Any = attrs.field(default=None)
    station_id: Any = attrs.field(default=None)
    method: str = attrs.field(default="bilinear")

    _names: list[str] = attrs.field(factory=list, init=False, repr=False)
    _codes: np.ndarray = attrs.field(default=None, init=False, repr=False)
    _stencil: PointStencil | None = attrs.field(default=None, init=False, repr=False)

    values_field: ClassVar[str | None] = "value"
    row_fields: ClassVar[tuple[str, ...] | None] = ("variable", "lat", "lon", "time", "value", "error", "station_id")

    # ------------------------------------------------------------------ hooks
    def _point_fields(self, owner: str, m: int) -> dict[str, np.ndarray]:
        """The family's own per-observation fields, broadcast to ``[m]`` (their lengths are checked together; list
        them in ``row_fields`` too, for :meth:`select`)."""
        return {}

    def _validate_point_fields(self, owner: str, arrays: dict[str, np.ndarray]) -> None:
        """Check and store the family's fields (``arrays`` holds those of :meth:`_point_fields`, checked lengths)."""

    @abc.abstractmethod
    def _channel_stencil(self, spec: StateSpec) -> tuple[np.ndarray, np.ndarray]:
        """``(c [M, K] int64, gamma [M, K] float64)``: the channels each observation reads and their weights.

        Refuse variables and levels the state does not model here (``ValueError`` naming the field and index).
        """

    def _affine(
        self, grid: Grid, spec: StateSpec, stencil: PointStencil
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(scale [M] or None, offset [M] or None)``, the per-observation :math:`s_m` and :math:`o_m`."""
        return None, None

    def _point_metadata(self) -> dict[str, np.ndarray]:
        """The family's own metadata arrays ``[M]``."""
        return {}

    # ------------------------------------------------------------------ construction
    def validate(self) -> None:
        owner = str(self.name)
        value = np.atleast_1d(to_float_array(owner, "value", self.value, ndim=None))
        if value.ndim != 1:
            raise ValueError(f"{owner}: field 'value' must be 1-D, got shape {value.shape}")
        check_nonempty(owner, "value", value)
        m = value.size
        time = to_datetime64(owner, "time", self.time)
        if time.size == 1 and m > 1:
            time = np.repeat(time, m)
        arrays: dict[str, np.ndarray] = {
            "value": value,
            "lat": broadcast_floats(owner, "lat", self.lat, m),
            "lon": broadcast_floats(owner, "lon", self.lon, m),
            "time": time,
        }
        if isinstance(self.variable, str):  # fast path: one variable for all observations
            arrays["variable"] = np.full(m, self.variable)
            names, codes = [self.variable], np.zeros(m, dtype=np.int64)
        else:
            arrays["variable"] = broadcast_strings(owner, "variable", self.variable, m)
            unique, codes = np.unique(arrays["variable"], return_inverse=True)
            names = [str(v) for v in unique]
        if self.error is not None:
            arrays["error"] = broadcast_floats(owner, "error", self.error, m)
        if self.station_id is not None:
            arrays["station_id"] = broadcast_strings(owner, "station_id", self.station_id, m)
        extra = self._point_fields(owner, m)
        check_same_length(owner, **arrays, **extra)

        check_finite(owner, "value", value)
        check_lat(owner, arrays["lat"])
        check_lon(owner, arrays["lon"])
        if "error" in arrays:
            check_positive(owner, "error", arrays["error"])
        if self.method not in POINT_METHODS:
            raise ValueError(f"{owner}: field 'method' has value {self.method!r}; use one of {list(POINT_METHODS)}")
        self.value, self.lat, self.lon, self.time = value, arrays["lat"], arrays["lon"], time
        self.variable, self.error, self.station_id = arrays["variable"], arrays.get("error"), arrays.get("station_id")
        self._names, self._codes = names, codes.reshape(-1)
        self._validate_point_fields(owner, extra)

    def default_noise(self) -> NoiseModel:
        """``DiagonalGaussian(error)``; families with default errors per variable override this."""
        if self.error is None:
            raise ValueError(
                f"{self.name}: field 'error' is None and {type(self).__name__} has no default errors; give 'error' "
                "(std per observation) or 'noise'"
            )
        return DiagonalGaussian(self.error)

    @property
    def size(self) -> int:
        return int(np.asarray(self.value).size)

    @property
    def values(self) -> Tensor:
        return torch.as_tensor(self.value, dtype=torch.float64)

    def _is(self, variables: Sequence[str]) -> np.ndarray:
        """Whether each observation's variable is one of ``variables``, ``[M]`` bool (one test per distinct name)."""
        return np.isin(self._codes, [k for k, v in enumerate(self._names) if v in variables])

    # ------------------------------------------------------------------ prepare
    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
        owner = str(self.name)
        channel = self._channel_stencil(spec)
        stencil = point_stencil(owner, grid, times, self.lat, self.lon, self.time, self.method)
        scale, offset = self._affine(grid, spec, stencil)
        self._stencil = stencil
        self._set_matrix(stencil.matrix(spec.n_channels, channel, scale), offset)

    def point_stencil(self) -> PointStencil:
        """The time and horizontal stencil (after :meth:`prepare`)."""
        if self._stencil is None:
            raise RuntimeError(f"{self.name}: call prepare(grid, spec, times) first")
        return self._stencil

    def _adopt_prepared(self, other: Self) -> None:
        """The matrix does not depend on the values: share ``other``'s instead of preparing again."""
        self.grid, self.spec, self.window = other.grid, other.spec, other.window
        self._stencil, self._A, self._b, self._csr = other._stencil, other._A, other._b, other._csr
        self._b_cache = other._b_cache

    # ------------------------------------------------------------------ diagnostics
    def metadata(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"lat": self.lat, "lon": self.lon, "time": self.time, "variable": self.variable}
        out.update(self._point_metadata())
        if self.station_id is not None:
            out["station_id"] = self.station_id
        return out
