r"""The shared engine of the satellite operators (private).

Both operators predict, for each of ``N`` footprints and each of its ``K`` components (observed variables for
``SwathOp``, channels for ``RadianceOp``),

.. math:: y_{n,c} = \sum_l V_{n,c,l}\, P_{n,l}, \qquad
          P_{n,l} = \sum_k w_{n,k}\,\big[(1-\alpha_n)\, x_{t_0(n),\,s_l,\,k} + \alpha_n\, x_{t_1(n),\,s_l,\,k}\big],

where :math:`w_{n,k}` is the footprint-averaging stencil (:mod:`appa_op_satellite.footprint`), :math:`(t_0, t_1,
\alpha)` the linear time interpolation between the window's states (:func:`appa_core.obs.time_interpolation`),
:math:`s_l` the ``L`` state channels the operator reads (its "profile") and :math:`V` ``[N or 1, K, L]`` the
vertical weights (identity for ``SwathOp``, the weighting functions for ``RadianceOp``). Observations are ordered
footprint-major: ``m = n * K + c``.

The forward pass is factored: the profile ``P`` ``[B, L, N]`` is a sparse CSR product, then it is contracted with
``V``; this costs ``O(L * nnz(w))`` instead of ``O(K * L * nnz(w))`` for the explicit matrix. The footprints are
grouped by the window interval that brackets their time (contiguous for a chronological swath; otherwise they are
permuted once in ``prepare``); for the footprints of interval ``[t_g, t_{g+1}]`` with stencil rows ``W_g``
(CSR ``[N_g, H*W]``, the footprint weights :math:`w_{n,k}` themselves),

.. math:: P_{g} = (1 - \alpha) \odot (W_g\, x_{t_g}) + \alpha \odot (W_g\, x_{t_{g+1}}),

each product through :func:`appa_core.obs.sparse.csr_matmul` (a custom autograd function: forward CSR product,
backward transposed CSR product, jvp, vmap). ``prepare`` only builds the footprint stencil (vectorised, directly in
CSR form) and views of its rows: no expanded space-time copy. The full sparse matrix ``[N*K, T*C*H*W]`` is only
built when :meth:`matrix` is called.
"""

from __future__ import annotations

import datetime as _dt
import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

import attrs
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.obs import SparseLinearOperator, time_interpolation
from appa_core.obs.sparse import CSRMatrix, linear_apply
from appa_core.obs.validate import (
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
from appa_op_satellite.footprint import KERNELS, FootprintStencil, concat_stencils, footprint_stencil
from appa_op_satellite.orbit import Footprints, Orbit, Swath

if TYPE_CHECKING:
    from appa_core.obs import ObsContext, ObsOperator

__all__ = ["FootprintOperator"]


def _optional_per_footprint(owner: str, field: str, value: object, n: int, positive: bool) -> np.ndarray | None:
    if value is None:
        return None
    array = to_float_array(owner, field, value, ndim=None)
    if array.ndim == 0:
        array = np.full(n, float(array))
    if array.ndim != 1 or array.size != n:
        raise ValueError(f"{owner}: field {field!r} must be a scalar or have {n} values (one per footprint)")
    if positive:
        check_positive(owner, field, array)
    else:
        check_finite(owner, field, array)
    return array


class ProfileMap:
    """The profile map :math:`x \\mapsto P` of the module docstring, a :class:`~appa_core.obs.sparse.LinearMap`:
    ``[..., T, C, H, W]`` -> ``[..., L, N]`` and its adjoint, one CSR product per window interval and profile
    channel (scipy kernels on CPU, torch sparse CSR elsewhere; :class:`~appa_core.obs.sparse.CSRMatrix`).

    Args:
        groups: per window interval ``(first, end, t0, t1, W_g)``: footprints ``first:end`` (in group order) read
            states ``t0`` and ``t1`` through their stencil rows ``W_g`` ``[N_g, H*W]``.
        channels: the ``L`` profile channels ``[L]``.
        alpha: the time weight of ``t1`` per footprint ``[N]``, in group order.
        order: footprint ``order[m]`` is the ``m``-th in group order (``None``: the same order).
        layout: ``(T, C, H, W)`` of the state.
    """

    def __init__(
        self,
        groups: list[tuple[int, int, int, int, CSRMatrix]],
        channels: np.ndarray,
        alpha: np.ndarray,
        order: np.ndarray | None,
        layout: tuple[int, int, int, int],
    ) -> None:
        self.groups, self.channels, self.alpha, self.order, self.layout = groups, channels, alpha, order, layout
        self.inverse = None if order is None else np.argsort(order)
        self.n = int(alpha.size)

    def matvec(self, x: Tensor) -> Tensor:
        t, c, h, w = self.layout
        lead = x.shape[:-4]
        xb = x.reshape(-1, t, c, h * w)
        n_l = self.channels.size
        ch = torch.as_tensor(self.channels, device=x.device)
        alpha = torch.as_tensor(self.alpha, dtype=x.dtype, device=x.device)
        parts = []
        for lo, hi, t0, t1, mat in self.groups:
            a = alpha[lo:hi]
            p0 = mat.matvec(xb[:, t0].index_select(1, ch))  # [R, L, N_g]
            parts.append(p0 if t1 == t0 else (1.0 - a) * p0 + a * mat.matvec(xb[:, t1].index_select(1, ch)))
        profile = torch.cat(parts, dim=-1)
        if self.inverse is not None:
            profile = profile[..., torch.as_tensor(self.inverse, device=x.device)]
        return profile.reshape(*lead, n_l, self.n)

    def rmatvec(self, g: Tensor) -> Tensor:
        t, c, h, w = self.layout
        lead, n_l = g.shape[:-2], self.channels.size
        gb = g.reshape(-1, n_l, self.n)
        if self.order is not None:
            gb = gb[..., torch.as_tensor(self.order, device=g.device)]
        if g.device.type == "cpu":  # numpy allocates (huge pages): ~10x cheaper than a torch allocation this size
            work = np.float64 if g.dtype == torch.float64 else np.float32
            grad = torch.from_numpy(np.zeros((gb.shape[0], t, c, h * w), dtype=work))
        else:
            grad = torch.zeros(gb.shape[0], t, c, h * w, dtype=g.dtype, device=g.device)
        ch = torch.as_tensor(self.channels, device=g.device)
        alpha = torch.as_tensor(self.alpha, dtype=g.dtype, device=g.device)
        for lo, hi, t0, t1, mat in self.groups:
            a, gg = alpha[lo:hi], gb[..., lo:hi]
            if t1 == t0:
                grad[:, t0].index_add_(1, ch, mat.rmatvec(gg).to(grad.dtype))
                continue
            grad[:, t0].index_add_(1, ch, mat.rmatvec((1.0 - a) * gg).to(grad.dtype))
            grad[:, t1].index_add_(1, ch, mat.rmatvec(a * gg).to(grad.dtype))
        return grad.to(g.dtype).reshape(*lead, t, c, h, w)


@attrs.define(kw_only=True, eq=False)
class FootprintOperator(SparseLinearOperator):
    """Base of the footprint operators: ``N`` footprints with ``K`` observed components each.

    Attributes:
        lat, lon: footprint centres ``[N]``, degrees (lon in [-180, 360], wrapped to [0, 360)).
        time: observation times ``[N]`` (``datetime64`` or ISO strings), within the window at ``prepare``.
        values: observations ``[N, K]`` (``[N]`` when ``K = 1``).
        radius_km: footprint radius, km, scalar or ``[N]``; ``None`` = point observations (bilinear).
        kernel: footprint weighting, ``"gaussian"`` (half power at the radius) or ``"tophat"``.
        method: ``"auto"`` (kernel if the radius is at least the grid spacing, else bilinear), ``"kernel"``,
            ``"bilinear"``.
        zenith_deg: satellite zenith angle per footprint ``[N]``, degrees (metadata; ``RadianceOp`` uses it).
        scan_position: scan position per footprint ``[N]`` (metadata).
    """

    lat: Any = attrs.field()
    lon: Any = attrs.field()
    time: Any = attrs.field()
    _y: Any = attrs.field(alias="values")
    radius_km: Any = attrs.field(default=None)
    kernel: str = attrs.field(default="gaussian")
    method: str = attrs.field(default="auto")
    zenith_deg: Any = attrs.field(default=None)
    scan_position: Any = attrs.field(default=None)

    _stencil: FootprintStencil | None = attrs.field(default=None, init=False, repr=False)
    _profile_channels: np.ndarray | None = attrs.field(default=None, init=False, repr=False)
    _vertical: np.ndarray | None = attrs.field(default=None, init=False, repr=False)
    _time_weights: tuple[np.ndarray, np.ndarray, np.ndarray] | None = attrs.field(default=None, init=False, repr=False)
    _profile_map: ProfileMap | None = attrs.field(default=None, init=False, repr=False)
    _order: np.ndarray | None = attrs.field(default=None, init=False, repr=False)
    _group_stencils: list[FootprintStencil] | None = attrs.field(default=None, init=False, repr=False)
    _tensors: dict[tuple[torch.dtype, str], tuple[Tensor, ...]] = attrs.field(factory=dict, init=False, repr=False)

    linear: ClassVar[bool] = True
    values_field: ClassVar[str | None] = "values"

    # ------------------------------------------------------------------ subclass hooks
    @property
    def n_components(self) -> int:
        """``K``, the observations per footprint."""
        raise NotImplementedError

    def _validate_components(self) -> None:
        """Check the subclass's own fields (variables, channels...)."""

    def _vertical_weights(self, spec: StateSpec) -> tuple[np.ndarray, np.ndarray]:
        """``(profile_channels [L] int64, V [N or 1, K, L] float64)`` for the state layout ``spec``."""
        raise NotImplementedError

    def _component_metadata(self) -> dict[str, np.ndarray]:
        """Per-component metadata arrays ``[K]`` (repeated over footprints by :meth:`metadata`)."""
        return {}

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        owner = str(self.name)
        self._validate_components()
        lat = np.atleast_1d(to_float_array(owner, "lat", self.lat, ndim=None))
        lon = np.atleast_1d(to_float_array(owner, "lon", self.lon, ndim=None))
        if lat.ndim != 1 or lon.ndim != 1:
            raise ValueError(f"{owner}: fields 'lat' and 'lon' must be 1-D, got shapes {lat.shape} and {lon.shape}")
        time = to_datetime64(owner, "time", self.time)
        values = to_float_array(owner, "values", self._y, ndim=None)
        check_nonempty(owner, "lat", lat)
        k = self.n_components
        if values.ndim == 1 and k == 1:
            values = values[:, None]
        if values.ndim != 2 or values.shape[1] != k:
            raise ValueError(
                f"{owner}: field 'values' must have shape [N, {k}] (one column per {self._component_word}), "
                f"got {list(values.shape)}"
            )
        check_same_length(owner, lat=lat, lon=lon, time=time, values=values)
        check_lat(owner, lat)
        check_lon(owner, lon)
        check_finite(owner, "values", values)
        n = lat.size
        radius = _optional_per_footprint(owner, "radius_km", self.radius_km, n, positive=True)
        zenith = _optional_per_footprint(owner, "zenith_deg", self.zenith_deg, n, positive=False)
        if zenith is not None and (np.abs(zenith) >= 90).any():
            i = int(np.flatnonzero(np.abs(zenith) >= 90)[0])
            raise ValueError(f"{owner}: field 'zenith_deg' has value {zenith[i]} at index {i} outside (-90, 90)")
        scan = None
        if self.scan_position is not None:
            scan = np.asarray(self.scan_position)
            if scan.shape != (n,):
                raise ValueError(f"{owner}: field 'scan_position' must have {n} values, got shape {scan.shape}")
        if self.kernel not in KERNELS:
            raise ValueError(f"{owner}: field 'kernel' has value {self.kernel!r}; use one of {sorted(KERNELS)}")
        if self.method not in ("auto", "kernel", "bilinear"):
            raise ValueError(f"{owner}: field 'method' has value {self.method!r}; use 'auto', 'kernel' or 'bilinear'")
        self.lat, self.lon, self.time, self._y = lat, np.mod(lon, 360.0), time, values
        self.radius_km, self.zenith_deg, self.scan_position = radius, zenith, scan

    _component_word: ClassVar[str] = "component"

    # ------------------------------------------------------------------ ObsOperator API
    @property
    def n_footprints(self) -> int:
        return int(self.lat.size)

    @property
    def size(self) -> int:
        return self.n_footprints * self.n_components

    @property
    def values(self) -> Tensor:
        """Observations ``[N * K]`` float64, footprint-major."""
        return torch.as_tensor(np.ascontiguousarray(self._y).reshape(-1), dtype=torch.float64)

    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
        channels, vertical = self._vertical_weights(spec)
        i0, i1, w1 = time_interpolation(str(self.name), self.time, times)
        self._profile_channels = np.asarray(channels, dtype=np.int64)
        self._vertical = np.asarray(vertical, dtype=np.float64)
        self._time_weights = (i0, i1, w1)
        self._A, self._b, self._csr, self._tensors, self._stencil = None, None, None, {}, None
        # group the footprints by their window interval (contiguous for a chronological swath), one stencil each
        order = None if np.all(np.diff(i0) >= 0) else np.argsort(i0, kind="stable")
        sel = slice(None) if order is None else order
        lat, lon, t0s, t1s = self.lat[sel], self.lon[sel], i0[sel], i1[sel]
        radius = None if self.radius_km is None else np.broadcast_to(self.radius_km, lat.shape)[sel]
        bounds = np.flatnonzero(np.diff(t0s)) + 1
        groups, stencils = [], []
        for a, b in itertools.pairwise([0, *bounds.tolist(), lat.size]):
            r = None if radius is None else radius[a:b]
            st = footprint_stencil(grid, lat[a:b], lon[a:b], r, self.kernel, self.method)  # type: ignore[arg-type]
            stencils.append(st)
            # distinct cells per row: no duplicate to sum, and the products need no sorted columns
            groups.append(
                (a, b, int(t0s[a]), int(t1s[a]), CSRMatrix(st.matrix(grid.nlat * grid.nlon), canonical=False))
            )
        alpha = w1 if order is None else w1[order]
        layout = (times.size, spec.n_channels, grid.nlat, grid.nlon)
        self._profile_map = ProfileMap(groups, self._profile_channels, alpha, order, layout)
        self._order, self._group_stencils = order, stencils

    def forward(self, x: Tensor) -> Tensor:
        """``[B, T, C, H, W]`` -> ``[B, N * K]`` (see the module docstring)."""
        assert self._profile_map is not None and self._vertical is not None
        key = (x.dtype, str(x.device))
        if key not in self._tensors:
            self._tensors[key] = (torch.as_tensor(self._vertical, dtype=x.dtype, device=x.device),)
        (vertical,) = self._tensors[key]
        profile = linear_apply(x, self._profile_map)  # [B, L, N]
        out = torch.einsum("bln,nkl->bnk", profile, vertical.expand(self.n_footprints, -1, -1))
        return out.reshape(x.shape[0], -1)

    def matrix(self) -> sp.csr_array:
        """The sparse matrix ``[N * K, T*C*H*W]`` (built on first call, vectorised, loop over ``K x L`` only)."""
        if self._A is None:
            if not self.prepared or self._vertical is None:
                raise RuntimeError(f"{self.name}: call prepare(grid, spec, times) before matrix()")
            assert self.grid is not None and self.spec is not None and self.window is not None
            assert self._time_weights is not None
            st = self.footprint_weights()
            i0, i1, w1 = self._time_weights
            hw = self.grid.nlat * self.grid.nlon
            r = st.rows
            rows = np.concatenate([r, r])
            w = np.concatenate([st.weights * (1.0 - w1[r]), st.weights * w1[r]])
            base = np.concatenate([i0[r], i1[r]]) * (self.spec.n_channels * hw) + np.concatenate([st.cells, st.cells])
            k = self.n_components
            vert = self._vertical
            shared = vert.shape[0] == 1
            parts_r, parts_c, parts_d = [], [], []
            for c in range(k):
                for l, ch in enumerate(self._profile_channels):
                    v = vert[0, c, l] if shared else vert[rows, c, l]
                    if shared and v == 0:
                        continue
                    parts_r.append(rows * k + c)
                    parts_c.append(base + ch * hw)
                    parts_d.append(w * v)
            n_cols = self.window.size * self.spec.n_channels * hw
            A = sp.coo_array(
                (np.concatenate(parts_d), (np.concatenate(parts_r), np.concatenate(parts_c))),
                shape=(self.size, n_cols),
            ).tocsr()
            A.sum_duplicates()
            A.eliminate_zeros()
            self._A = A
        return self._A

    def footprint_weights(self) -> FootprintStencil:
        """The horizontal footprint-averaging stencil (after :meth:`prepare`)."""
        if self._stencil is None:
            if self._group_stencils is None or self.grid is None:
                raise RuntimeError(f"{self.name}: call prepare(grid, spec, times) first")
            self._stencil = concat_stencils(self._group_stencils, self._order)
        return self._stencil

    def metadata(self) -> dict[str, np.ndarray]:
        """Per-observation arrays ``[N * K]``: footprint index, lat, lon, time, radius, zenith, scan position, and
        the component's own fields."""
        k = self.n_components
        out: dict[str, np.ndarray] = {
            "footprint": np.repeat(np.arange(self.n_footprints), k),
            "lat": np.repeat(self.lat, k),
            "lon": np.repeat(self.lon, k),
            "time": np.repeat(self.time, k),
        }
        for field in ("radius_km", "zenith_deg", "scan_position"):
            value = getattr(self, field)
            if value is not None:
                out[field] = np.repeat(value, k)
        for key, value in self._component_metadata().items():
            out[key] = np.tile(np.asarray(value), self.n_footprints)
        return out

    def _select_fields(self, rows: np.ndarray) -> dict[str, object]:
        """Whole footprints only (all ``K`` observations of each selected footprint)."""
        k = self.n_components
        fp = np.unique(rows // k)
        if fp.size * k != rows.size or np.any(np.repeat(fp, k) * k + np.tile(np.arange(k), fp.size) != rows):
            raise ValueError(f"{self.name}: select() must take all {k} observations of each footprint it keeps")
        out: dict[str, object] = {
            "lat": self.lat[fp],
            "lon": self.lon[fp],
            "time": self.time[fp],
            "values": self._y[fp],
        }
        for field in ("radius_km", "zenith_deg", "scan_position"):
            value = getattr(self, field)
            if value is not None:
                out[field] = np.asarray(value)[fp]
        return out

    # ------------------------------------------------------------------ synthetic observations
    def _adopt_prepared(self, other: Self) -> None:
        """Reuse ``other``'s prepared geometry (same footprints and times): no second ``prepare``."""
        self.grid, self.spec, self.window = other.grid, other.spec, other.window
        self._stencil, self._time_weights = other._stencil, other._time_weights
        self._profile_channels, self._vertical = other._profile_channels, other._vertical
        self._profile_map, self._order, self._tensors = other._profile_map, other._order, other._tensors
        self._group_stencils = other._group_stencils

    @classmethod
    def from_orbit(
        cls,
        swath: Swath | Orbit,
        window: object,
        *,
        start: object | None = None,
        end: object | None = None,
        scan_interval: object | None = None,
        values: object | None = None,
        truth: object | None = None,
        grid: Grid | None = None,
        spec: StateSpec | None = None,
        generator: torch.Generator | None = None,
        mask: np.ndarray | None = None,
        **kwargs: Any,
    ) -> Self:
        """An operator on the footprints an instrument scans during the window.

        Args:
            swath: the instrument (an :class:`Orbit` gets the default AMSU-A-like :class:`Swath`).
            window: the state window's times ``[T]``; footprints are scanned from ``start`` (default the first
                time) to ``end`` (default the last).
            scan_interval: time between scan lines (default the swath's, 8 s).
            values: observations ``[M, K]``; default zeros (geometry only) unless ``truth`` is given.
            truth: a true trajectory ``[T, C, H, W]``: the values become ``H(truth) + noise`` (needs ``grid`` and
                ``spec``), see :meth:`simulate`.
            generator: torch generator for the synthetic noise.
            mask: optional boolean ``[M]`` (e.g. from ``Swath.footprints``) to keep a subset of footprints.
            **kwargs: the operator's own fields (``variables``, ``channels``, ``noise``, ``kernel``...).
        """
        if isinstance(swath, Orbit):
            swath = Swath(orbit=swath)
        if not isinstance(swath, Swath):
            raise TypeError(f"{cls.__name__}: field 'swath' must be a Swath or an Orbit, got {type(swath).__name__}")
        win = to_datetime64(cls.__name__, "window", window)
        fp: Footprints = swath.footprints(
            win[0] if start is None else start, win[-1] if end is None else end, scan_interval
        )
        if mask is not None:
            fp = fp.select(np.asarray(mask))
        k_kwargs = dict(kwargs)
        k_kwargs.setdefault("radius_km", fp.radius_km)
        k_kwargs.setdefault("zenith_deg", fp.zenith_deg)
        k_kwargs.setdefault("scan_position", fp.scan_position)
        if values is None:
            n_comp = cls._count_components(k_kwargs)
            values = np.zeros((fp.size, n_comp))
        op = cls(lat=fp.lat, lon=fp.lon, time=fp.time, values=values, **k_kwargs)
        if truth is not None:
            if grid is None or spec is None:
                raise ValueError(f"{cls.__name__}: simulating from 'truth' needs 'grid' and 'spec'")
            op = op.simulate(truth, grid, spec, win, generator=generator)
        return op

    @classmethod
    def _count_components(cls, kwargs: dict[str, Any]) -> int:
        """``K`` from the constructor keywords (for geometry-only operators)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ operator protocol (appa_core.obs.config)
    @classmethod
    def placeholder_values(cls, table: Mapping[str, Any], n: int) -> np.ndarray:
        """Zeros ``[n, K]``, ``K`` from the table's ``variables`` / ``channels``."""
        return np.zeros((n, cls._count_components(dict(table))))

    @classmethod
    def from_config(cls, table: Mapping[str, Any], context: ObsContext) -> list[ObsOperator]:
        """Footprints along a ground track (keys ``orbit`` and/or ``swath``), else the default (given footprints).

        ``orbit``: the :class:`Orbit` fields, or ``ascending_node_local_time`` for :meth:`Orbit.sun_synchronous`;
        ``epoch`` defaults to the window's first time. ``swath``: the :class:`Swath` fields, with
        ``scan_interval_minutes`` for ``scan_interval``. A ground track gives geometry only: it needs
        ``simulate = true``. The other keys are the operator's fields (``variables``, ``channels``, ``noise``...).
        """
        if "orbit" not in table and "swath" not in table:
            return super().from_config(table, context)
        if not context.simulate:
            raise ValueError("an 'orbit'/'swath' gives footprint geometry only; set simulate = true")
        params = dict(table)
        orbit_cfg = dict(params.pop("orbit", {}) or {})
        swath_cfg = dict(params.pop("swath", {}) or {})
        epoch = orbit_cfg.get("epoch", context.times[0])
        if isinstance(epoch, _dt.datetime) and epoch.tzinfo is not None:  # TOML / YAML parse bare times
            epoch = epoch.astimezone(_dt.UTC).replace(tzinfo=None)
        if isinstance(epoch, _dt.date | np.datetime64):
            epoch = str(np.datetime_as_string(np.datetime64(epoch, "s"), unit="s"))
        orbit_cfg["epoch"] = epoch
        sun_synchronous = "ascending_node_local_time" in orbit_cfg
        orbit = Orbit.sun_synchronous(**orbit_cfg) if sun_synchronous else Orbit(**orbit_cfg)
        if "scan_interval_minutes" in swath_cfg:
            minutes = float(swath_cfg.pop("scan_interval_minutes"))
            swath_cfg["scan_interval"] = np.timedelta64(round(minutes * 60e9), "ns")
        swath = Swath(orbit=orbit, **swath_cfg)
        op = cls.from_orbit(
            swath, context.times, truth=context.truth, grid=context.grid, spec=context.spec,
            generator=context.generator, **params,
        )  # fmt: skip
        return [op]
