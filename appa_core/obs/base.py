r"""Observation operators: the base classes every operator family derives from.

An operator :math:`\mathcal{H}` maps a state trajectory ``x`` ``[B, T, C, H, W]`` (physical units) to predicted
observations ``[B, M]``. Its life cycle:

1. **construction** (attrs): observation values, locations, times and a noise model; the input is validated here
   (NaN values, latitudes outside [-90, 90], mismatched lengths, empty input).
2. ``prepare(grid, spec, times)``: checks the operator against the state's grid, variables and time window (an
   unknown variable, a level the prior does not model, a time outside the window) and precomputes the geometry
   (interpolation weights, swath footprints) once, vectorised.
3. ``op(x)``: batched and differentiable.

Linear operators (:class:`SparseLinearOperator`) are affine maps :math:`\mathcal{H}(x) = A\,\mathrm{vec}(x) + b`
with a sparse ``A`` ``[M, T*C*H*W]`` (``matrix()``), acting on ``x[b].reshape(-1)``.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

import attrs
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.obs.errors import DiagonalGaussian, NoiseModel
from appa_core.obs.sparse import CSRMatrix, csr_matmul
from appa_core.obs.validate import check_times_in_window, to_datetime64
from appa_core.spec import StateSpec

if TYPE_CHECKING:
    from appa_core.obs.config import ObsContext

__all__ = ["ObsOperator", "SparseLinearOperator", "time_interpolation"]


def time_interpolation(
    owner: str, obs_times: np.ndarray, window: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation in time between the window's states.

    Args:
        owner: operator name for error messages.
        obs_times: observation times ``datetime64[ns]`` ``[M]``.
        window: the window's state times ``datetime64[ns]`` ``[T]``, strictly increasing.

    Returns:
        ``(i0, i1, w1)``, each ``[M]``: the observation at time ``t`` is ``(1 - w1) x[i0] + w1 x[i1]``.
    """
    check_times_in_window(owner, obs_times, window)
    t = obs_times.astype("int64").astype(np.float64)
    w = window.astype("int64").astype(np.float64)
    if w.size == 1:
        zeros = np.zeros(t.shape, dtype=np.int64)
        return zeros, zeros, np.zeros(t.shape)
    i1 = np.clip(np.searchsorted(w, t, side="right"), 1, w.size - 1)
    i0 = i1 - 1
    w1 = np.clip((t - w[i0]) / (w[i1] - w[i0]), 0.0, 1.0)
    return i0.astype(np.int64), i1.astype(np.int64), w1


@attrs.define(kw_only=True, eq=False)
class ObsOperator(abc.ABC):
    """Base class of observation operators.

    Attributes:
        noise: the noise model of this operator's observations; ``None`` picks :meth:`default_noise`. It is bound
            to the operator's ``M`` observations at construction. A default noise model is recomputed by
            :meth:`with_values` and :meth:`simulate` (it may depend on the values, e.g. a relative error); a noise
            model given explicitly is kept.
        name: a label for diagnostics (defaults to the class name).

    Caches computed in ``_prepare`` must be declared as fields, e.g.
    ``_weights: np.ndarray | None = attrs.field(default=None, init=False, repr=False)``: operators are slotted attrs
    classes, which refuse undeclared attributes (:meth:`prepare` says so by name).
    """

    noise: NoiseModel | None = attrs.field(default=None)
    name: str | None = attrs.field(default=None)

    linear: ClassVar[bool] = False
    #: name of the constructor field holding the observed values (used by :meth:`with_values`); ``None`` if the
    #: family cannot be rebuilt from a flat ``[M]`` vector.
    values_field: ClassVar[str | None] = "value"
    #: keys of a configuration table whose lists enumerate what each location observes (not one entry per
    #: observation); see :meth:`from_config`.
    config_component_keys: ClassVar[tuple[str, ...]] = ("channels", "variables", "levels")

    #: the constructor fields holding one value per observation (leading axis ``M``), for :meth:`select`;
    #: ``None``: every constructor field whose value is a 1-D array of length ``M`` (families that declare a
    #: ``values_field``), else :meth:`select` refuses.
    row_fields: ClassVar[tuple[str, ...] | None] = None

    grid: Grid | None = attrs.field(default=None, init=False, repr=False)
    spec: StateSpec | None = attrs.field(default=None, init=False, repr=False)
    window: np.ndarray | None = attrs.field(default=None, init=False, repr=False)
    _noise_is_default: bool = attrs.field(default=False, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.name is None:
            self.name = type(self).__name__
        self.validate()
        if self.noise is None:
            self.noise = self.default_noise()
            self._noise_is_default = True
        if not isinstance(self.noise, NoiseModel):
            raise TypeError(f"{self.name}: field 'noise' must be a NoiseModel, got {type(self.noise).__name__}")
        self.noise = self.noise.expand(self.size)

    # ------------------------------------------------------------------ to implement
    def validate(self) -> None:
        """Check the constructor's fields; raise ``ValueError``/``TypeError`` naming the field and value."""

    def default_noise(self) -> NoiseModel:
        """The family's default noise model (unsized models are expanded to ``M``)."""
        return DiagonalGaussian(1.0)

    @property
    @abc.abstractmethod
    def size(self) -> int:
        """Number of observations ``M``."""

    @property
    @abc.abstractmethod
    def values(self) -> Tensor:
        """The observations ``y`` ``[M]`` float64, in the observed quantity's units."""

    @abc.abstractmethod
    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
        """Validate against the state and precompute geometry (called by :meth:`prepare`)."""

    @abc.abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Predicted observations ``[B, M]`` from states ``[B, T, C, H, W]`` (after :meth:`prepare`)."""

    def metadata(self) -> dict[str, np.ndarray]:
        """Per-observation arrays (``[M]`` each) for diagnostics: location, time, variable, ..."""
        return {}

    def bounds(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Physically plausible ``(low, high)`` per observation ``[M]`` each, in the observed units, for quality
        control (NaN: no bound); ``None``: unknown.

        The default reads :meth:`metadata`: a ``"variable"`` array (ERA5 names) with ``"level"`` or ``"pressure"``
        in hPa, or ``"channel"`` names such as ``"temperature@850"``, and looks them up in
        :data:`appa_core.obs.qc.PLAUSIBLE_RANGES`. Families observing other quantities (radiances) override it.
        """
        from appa_core.obs.qc import rows_bounds

        return rows_bounds(self.metadata(), self.size)

    # ------------------------------------------------------------------ provided
    @property
    def prepared(self) -> bool:
        return self.grid is not None

    def prepare(self, grid: Grid, spec: StateSpec, times: object) -> Self:
        """Bind the operator to a state layout and a window of ``T`` times, precomputing its geometry.

        Args:
            grid: the state's horizontal grid.
            spec: the state's variables and levels.
            times: the window's state times ``[T]`` (``datetime64`` or ISO strings), strictly increasing.
        """
        window = to_datetime64(f"{self.name}.prepare", "times", times)
        if window.size > 1 and np.any(np.diff(window.astype("int64")) <= 0):
            raise ValueError(f"{self.name}.prepare: field 'times' must be strictly increasing, got {window}")
        try:
            self._prepare(grid, spec, window)
        except AttributeError as exc:
            undeclared = _undeclared_attribute(self, exc)
            if undeclared is None:
                raise
            raise AttributeError(
                f"{self.name}: _prepare set the attribute {undeclared!r}, which {type(self).__name__} does not "
                f"declare; operators are slotted attrs classes, so declare caches as fields: "
                f"`{undeclared}: object = attrs.field(default=None, init=False, repr=False)` (docs/plugins.md)"
            ) from exc
        self.grid, self.spec, self.window = grid, spec, window
        return self

    def _check_state(self, x: Tensor) -> None:
        if not self.prepared:
            raise RuntimeError(f"{self.name}: call prepare(grid, spec, times) before applying the operator")
        assert self.grid is not None and self.spec is not None and self.window is not None
        expected = (self.window.size, self.spec.n_channels, *self.grid.shape)
        if x.ndim != 5 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"{self.name}: state must have shape [B, {', '.join(map(str, expected))}] ([B, T, C, H, W]), "
                f"got {list(x.shape)}"
            )

    def __call__(self, x: Tensor) -> Tensor:
        self._check_state(x)
        return self.forward(x)

    def linearize(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """The tangent-linear map at ``x`` ``[B, T, C, H, W]``: ``dx -> (d forward / dx)(x) dx`` ``[B, M]`` (JEDI's
        TL operator; the adjoint is autograd's VJP).

        The guidance calls this once per guided call and the returned map once per solver iteration. The default:
        a linear operator with no offset (``H(0) = 0``) is its own tangent map (``forward(dx)``, no forward-mode
        AD); otherwise ``torch.func.jvp`` of the operator at ``x`` on every call of the map. A nonlinear family may
        override it to precompute its Jacobian once.
        """
        self._check_state(x)
        x = x.detach()
        if self.linear:
            with torch.no_grad():
                no_offset = bool((self.forward(torch.zeros_like(x[:1])) == 0).all())
            if no_offset:
                return self.forward
        return lambda dx: torch.func.jvp(self.forward, (x,), (dx,))[1]

    def matrix(self) -> sp.csr_array:
        """The sparse matrix ``A`` ``[M, T*C*H*W]`` of a linear operator (after :meth:`prepare`)."""
        raise TypeError(f"{self.name}: operator is nonlinear and has no matrix")

    def with_values(self, values: object) -> Self:
        """A copy of this operator observing ``values`` ``[M]`` (same locations and times).

        The copy keeps a noise model given explicitly; a default one (``noise=None`` at construction) is
        recomputed from the new values by :meth:`default_noise`. It is prepared on the same grid, spec and window
        if this operator was.
        """
        new = self._evolve_values(values)
        if self.prepared:
            new._adopt_prepared(self)
        return new

    def _evolve_values(self, values: object) -> Self:
        """An unprepared copy observing ``values`` (see :meth:`with_values`)."""
        if self.values_field is None:
            raise TypeError(f"{self.name}: {type(self).__name__} cannot be rebuilt from a flat vector of values")
        flat = np.asarray(torch.as_tensor(values).detach().cpu(), dtype=np.float64).reshape(-1)
        if flat.size != self.size:
            raise ValueError(f"{self.name}: field 'values' has {flat.size} values but the operator has {self.size}")
        field = next(a for a in attrs.fields(type(self)) if a.alias == self.values_field)
        current = np.shape(np.asarray(getattr(self, field.name), dtype=object))
        changes: dict[str, object] = {self.values_field: flat.reshape(current)}
        if self._noise_is_default:
            changes["noise"] = None
        return attrs.evolve(self, **changes)

    def _adopt_prepared(self, other: Self) -> None:
        """Prepare this copy as ``other`` is (same locations and times, other values).

        The default prepares again; families whose geometry does not depend on the values may copy it instead.
        """
        assert other.grid is not None and other.spec is not None
        self.prepare(other.grid, other.spec, other.window)

    # ------------------------------------------------------------------ workflows: configs and synthetic networks
    @classmethod
    def from_config(cls, table: Mapping[str, Any], context: ObsContext) -> list[ObsOperator]:
        r"""Operators from one ``[[observations]]`` table of an ``appa assimilate`` config (keys = constructor fields).

        With ``context.simulate`` their values are :math:`\mathcal{H}(x_{true}) + \epsilon` and the table must not
        give them. The default (:func:`appa_core.obs.config.operators_from_table`) suits families whose values field
        holds one value per observation; families built another way (satellite ground tracks, gridded fields)
        override it. Raise ``ValueError`` / ``TypeError`` naming the key; the workflow adds which table it was.
        """
        from appa_core.obs.config import operators_from_table

        return operators_from_table(cls, table, context)

    @classmethod
    def placeholder_values(cls, table: Mapping[str, Any], n: int) -> np.ndarray:
        """Values that construct a geometry-only operator of ``n`` locations from ``table`` (before simulating).

        Default zeros ``[n]``; families with several values per location return ``[n, K]``.
        """
        return np.zeros(n)

    @classmethod
    def synthetic_network(cls, context: ObsContext, **settings: Any) -> list[ObsOperator]:
        """Unsimulated operators of a synthetic network for an observing system (twin experiments).

        ``context.rng`` draws the locations; ``settings`` are the family's (documented by the override). The
        observing system simulates the values. The default refuses: the family defines no network.
        """
        raise NotImplementedError(
            f"{cls.__name__} defines no synthetic network (classmethod synthetic_network); it cannot be part of an "
            "observing system"
        )

    def observation_times(self) -> np.ndarray:
        """The time of each observation ``[M]`` ``datetime64[ns]`` (default: ``metadata()["time"]``)."""
        meta = self.metadata()
        if "time" not in meta:
            raise TypeError(f"{self.name}: {type(self).__name__} has no per-observation times in metadata()")
        return np.asarray(meta["time"]).astype("datetime64[ns]")

    def subset(self, t0: object, t1: object) -> Self | None:
        """The observations with times in ``[t0, t1]`` (inclusive), as a new, unprepared operator; ``None`` if
        there are none.

        For long windows: a window's sampler needs only the observations inside it, prepared on its own ``K``
        times instead of the whole trajectory's. Noise as in :meth:`select`.
        """
        lo = to_datetime64(f"{self.name}.subset", "t0", t0)[0]
        hi = to_datetime64(f"{self.name}.subset", "t1", t1)[0]
        times = self.observation_times()
        keep = (times >= lo) & (times <= hi)
        if not keep.any():
            return None
        return self.select(np.flatnonzero(keep))

    def select(self, rows: object) -> Self:
        """A new, unprepared operator observing only ``rows`` (int positions ``[M']``, increasing, or a bool mask
        ``[M]``), in the same order.

        A default noise model is recomputed for the selected observations; an explicit one is restricted with
        :meth:`~appa_core.obs.errors.NoiseModel.subset`.
        """
        ix = np.asarray(rows)
        if ix.dtype == bool:
            if ix.shape != (self.size,):
                raise ValueError(f"{self.name}: select() mask has shape {ix.shape}, expected ({self.size},)")
            ix = np.flatnonzero(ix)
        ix = ix.astype(np.int64).reshape(-1)
        if ix.size == 0:
            raise ValueError(f"{self.name}: select() needs at least one observation")
        if ix.min() < 0 or ix.max() >= self.size or np.any(np.diff(ix) <= 0):
            raise ValueError(f"{self.name}: select() rows must be increasing positions in [0, {self.size})")
        changes = self._select_fields(ix)
        assert self.noise is not None
        changes["noise"] = None if self._noise_is_default else self.noise.subset(ix)
        return attrs.evolve(self, **changes)

    def _select_fields(self, rows: np.ndarray) -> dict[str, object]:
        """Constructor keywords for the observations ``rows`` (see :attr:`row_fields`); override for families
        whose observations are not one value per field entry."""
        if self.row_fields is None and self.values_field is None:
            raise TypeError(
                f"{self.name}: {type(self).__name__} cannot select observations (declare row_fields or override "
                "_select_fields)"
            )
        m, out = self.size, {}
        for a in attrs.fields(type(self)):
            if not a.init or a.alias in ("noise", "name"):
                continue
            if self.row_fields is not None and a.alias not in self.row_fields:
                continue
            value = getattr(self, a.name)
            if isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == m:
                if self.row_fields is None and value.ndim != 1:
                    continue
                out[a.alias] = value[rows]
        return out

    def simulate(
        self,
        truth: object,
        grid: Grid,
        spec: StateSpec,
        times: object,
        *,
        noise: bool = True,
        generator: torch.Generator | None = None,
    ) -> Self:
        r"""Synthetic observations of a true trajectory: a copy observing :math:`\mathcal{H}(x) + \epsilon`.

        Args:
            truth: the true trajectory ``[T, C, H, W]`` or ``[1, T, C, H, W]`` in physical units.
            grid, spec, times: the state layout and window, as for :meth:`prepare`.
            noise: draw :math:`\epsilon` from the operator's noise model (``False``: exact values).
            generator: torch generator for reproducible noise.

        Returns:
            the new operator, prepared on ``(grid, spec, times)``. With a default noise model, :math:`\epsilon`
            is drawn from the default noise at the exact values :math:`\mathcal{H}(x)` and the returned operator's
            noise is the default at its own values :math:`\mathcal{H}(x) + \epsilon`; an explicit noise model is
            used and kept as it is.
        """
        x = torch.as_tensor(np.asarray(truth) if not isinstance(truth, Tensor) else truth).to(torch.float64)
        if x.ndim == 4:
            x = x[None]
        if x.ndim != 5 or x.shape[0] != 1:
            raise ValueError(f"{self.name}: field 'truth' must be [T, C, H, W] or [1, T, C, H, W], got {list(x.shape)}")
        self.prepare(grid, spec, times)
        with torch.no_grad():
            y = self(x)[0]
            if noise:
                model = self._evolve_values(y).noise if self._noise_is_default else self.noise
                assert model is not None
                y = y + model.sample((), generator=generator, dtype=torch.float64)
        return self.with_values(y)


def _undeclared_attribute(op: ObsOperator, exc: AttributeError) -> str | None:
    """The attribute name if ``exc`` is the slotted-class refusal of an undeclared attribute of ``op``."""
    match = re.fullmatch(r"'(\w+)' object has no attribute '(\w+)'", str(exc))
    if match is None or match.group(1) != type(op).__name__ or hasattr(type(op), match.group(2)):
        return None
    return match.group(2)


@attrs.define(kw_only=True, eq=False)
class SparseLinearOperator(ObsOperator):
    r"""An affine operator :math:`\mathcal{H}(x) = A\,\mathrm{vec}(x) + b` with a sparse ``A``.

    Subclasses build ``A`` (scipy CSR, ``[M, T*C*H*W]``) and optionally ``b`` (``[M]``) in ``_prepare`` and store
    them with :meth:`_set_matrix`; ``forward`` is then a sparse matrix product (:func:`appa_core.obs.sparse.
    csr_matmul`: forward CSR product, backward transposed CSR product), batched over ``B`` and differentiable
    with respect to ``x`` (backward, double backward, ``jvp``, ``vmap``).
    """

    linear: ClassVar[bool] = True

    _A: sp.csr_array | None = attrs.field(default=None, init=False, repr=False)
    _b: np.ndarray | None = attrs.field(default=None, init=False, repr=False)
    _csr: CSRMatrix | None = attrs.field(default=None, init=False, repr=False)
    _b_cache: dict[tuple[torch.dtype, str], Tensor] = attrs.field(factory=dict, init=False, repr=False)

    def _set_matrix(self, A: sp.sparray | sp.spmatrix, b: np.ndarray | None = None) -> None:
        A = sp.csr_array(A, dtype=np.float64)
        if A.shape[0] != self.size:
            raise ValueError(f"{self.name}: matrix has {A.shape[0]} rows but there are {self.size} observations")
        A.sum_duplicates()
        self._A, self._b, self._b_cache = A, None if b is None else np.asarray(b, dtype=np.float64), {}
        # rows sorted by their first column for the products (memory locality: benchmarks/operators.py)
        self._csr = CSRMatrix(A, reorder=True)

    def matrix(self) -> sp.csr_array:
        if self._A is None:
            raise RuntimeError(f"{self.name}: call prepare(grid, spec, times) before matrix()")
        return self._A

    def offset(self) -> np.ndarray:
        """The affine offset ``b`` ``[M]`` (zeros for purely linear operators)."""
        return np.zeros(self.size) if self._b is None else self._b

    def linearize(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """``dx -> A vec(dx)`` (the offset ``b`` drops out), with no forward-mode AD; a subclass with its own
        ``forward`` gets the default."""
        if type(self).forward is not SparseLinearOperator.forward or self._csr is None:
            return super().linearize(x)
        self._check_state(x)
        csr = self._csr
        return lambda dx: csr_matmul(dx.reshape(dx.shape[0], -1), csr)

    def forward(self, x: Tensor) -> Tensor:
        # the CSR product of appa_core.obs.sparse (backward = transposed product; jvp, vmap and double backward,
        # which the guidance needs): a custom autograd function, or torch gathers for a small matrix
        self.matrix()  # raises if not prepared
        assert self._csr is not None
        out = csr_matmul(x.reshape(x.shape[0], -1), self._csr)
        if self._b is None:
            return out
        key = (x.dtype, str(x.device))
        if key not in self._b_cache:
            self._b_cache[key] = torch.as_tensor(self._b, dtype=x.dtype, device=x.device)
        return out + self._b_cache[key]
