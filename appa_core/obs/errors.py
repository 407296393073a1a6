r"""Observation noise models.

A noise model describes the observation error :math:`\epsilon = y - \mathcal{H}(x)` of one operator's
``M`` observations. Every model gives

* ``log_prob(r)``: the normalised log-density of residuals ``r`` ``[..., M]``, summed over ``M``;
* ``score(r)``: :math:`\psi = \partial \log p(y - h)/\partial h = -\nabla_r \log p(r)` ``[..., M]``, so that the
  likelihood's gradient with respect to the state is :math:`J^\top \psi` (closed form for every built-in model);
* a Gaussian approximation for the guidance's linear solve: ``cov_matvec(v, weights)`` applies
  :math:`\Sigma_{eff} = W^{-1/2}\,\Sigma\,W^{-1/2}`, where ``weights`` are the IRLS weights
  :math:`w_i = \psi(r_i)/r_i \cdot \sigma_i^2` of the robust models (all ones for Gaussian models), i.e. the
  Gaussianised precision of observation ``i`` is :math:`w_i / \sigma_i^2`;
* ``sample(shape)``: synthetic errors ``[*shape, M]``.

``variance()`` is the diagonal of the *nominal* covariance :math:`\Sigma` (:math:`\sigma^2` for the robust
models, the scale that the IRLS weights divide); ``marginal_variance()`` is the variance of the error
distribution itself (they differ only for the robust models).

Models may be created unsized (a scalar std) and are bound to ``M`` observations by ``expand(M)``, which
operators do at construction. Parameters are stored as float64 CPU tensors and cast to the residual's dtype and
device on use.

Models:

==========================  =====================================================================================
:class:`DiagonalGaussian`   :math:`\epsilon_i \sim \mathcal{N}(0, \sigma_i^2)` independent
:class:`CorrelatedGaussian` :math:`\epsilon \sim \mathcal{N}(0, \Sigma)`, dense :math:`\Sigma` (Cholesky) or
                            :math:`\Sigma = F F^\top + \mathrm{diag}(d)` (Woodbury)
:class:`Huber`              density :math:`\propto e^{-\rho_c(r/\sigma)}`, Gaussian core, exponential tails
:class:`StudentT`           Student-t with :math:`\nu` degrees of freedom and scale :math:`\sigma`
:class:`BlockDiagonal`      independent blocks (the noise of an ``ObsSet``)
==========================  =====================================================================================
"""

from __future__ import annotations

import abc
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import ClassVar

import attrs
import numpy as np
import torch
from torch import Tensor

from appa_core.linalg import woodbury_capacitance, woodbury_solve

__all__ = [
    "BlockDiagonal",
    "CorrelatedGaussian",
    "DiagonalGaussian",
    "Huber",
    "NoiseModel",
    "StudentT",
    "default_errors",
]

_LOG_2PI = math.log(2 * math.pi)


def default_errors(
    owner: str, variables: Sequence[str], codes: np.ndarray, table: Mapping[str, float] | None = None
) -> np.ndarray:
    """Per-observation default error stds ``[M]`` from an operator family's per-variable ``table``.

    Each family owns its table (``appa_op_stations.DEFAULT_ERRORS``, ``appa_op_fields.DEFAULT_ERRORS``, ...): the core
    holds none.

    Args:
        owner: the operator's name, for the error message.
        variables: the distinct observed variables.
        codes: index into ``variables`` per observation ``[M]``.
        table: ``variable -> std`` in the variable's units. ``None`` is deprecated (appa-core 0.1 had one table for
            every family): it warns and uses the station family's table.
    """
    if table is None:
        warnings.warn(
            "default_errors() without 'table' is deprecated and will be removed in the next release: pass the "
            "family's table (the station family's is appa_op_stations.DEFAULT_ERRORS)",
            DeprecationWarning,
            stacklevel=2,
        )
        table = _moved_default_errors()
    missing = [v for v in variables if v not in table]
    if missing:
        raise ValueError(
            f"{owner}: field 'error' is not given and variable {missing[0]!r} has no default error; "
            f"give 'error' (std per observation) or a noise model"
        )
    return np.array([table[v] for v in variables])[codes]


def _moved_default_errors() -> Mapping[str, float]:
    """The 0.1 table ``appa_core.noise.DEFAULT_ERRORS``, now the station family's (deprecated path)."""
    import importlib

    try:
        return importlib.import_module("appa_op_stations").DEFAULT_ERRORS  # type: ignore[no-any-return]
    except ImportError as exc:
        raise ImportError(
            "appa_core.noise.DEFAULT_ERRORS moved to appa_op_stations.DEFAULT_ERRORS (distribution "
            "appa-op-stations), which is not installed: pip install -e operators/stations"
        ) from exc


def __getattr__(name: str) -> object:
    """Deprecated: ``DEFAULT_ERRORS`` (per-variable default errors) belongs to the operator families."""
    if name == "DEFAULT_ERRORS":
        warnings.warn(
            "appa_core.noise.DEFAULT_ERRORS is deprecated and will be removed in the next release: it moved to "
            "appa_op_stations.DEFAULT_ERRORS (each operator family owns its default errors, e.g. "
            "appa_op_fields.DEFAULT_ERRORS)",
            DeprecationWarning,
            stacklevel=2,
        )
        return _moved_default_errors()
    raise AttributeError(f"module 'appa_core.obs.errors' has no attribute {name!r}")


def _std_tensor(owner: str, field: str, value: object) -> Tensor:
    """A float64 tensor of positive finite standard deviations, scalar or 1-D."""
    t = _float_tensor(owner, field, value)
    if t.ndim > 1:
        raise ValueError(f"{owner}: field {field!r} must be a scalar or 1-D, got shape {tuple(t.shape)}")
    bad = ~torch.isfinite(t) | (t <= 0)
    if bad.any():
        value = t.reshape(-1)[bad.reshape(-1)][0].item()
        raise ValueError(f"{owner}: field {field!r} has value {value}; must be > 0 and finite")
    return t


def _float_tensor(owner: str, field: str, value: object) -> Tensor:
    """``value`` as a float64 CPU tensor, refusing non-numeric input."""
    if isinstance(value, Tensor):
        return value.detach().to(device="cpu", dtype=torch.float64)
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{owner}: field {field!r} must be numeric, got {value!r:.80}") from exc


def _positive_float(owner: str, field: str, value: object) -> float:
    """A finite scalar > 0 (shape parameters: Huber's ``c``, Student-t's ``dof``)."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{owner}: field {field!r} must be a number, got {value!r:.80}") from exc
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{owner}: field {field!r} has value {v}; must be > 0 and finite")
    return v


def _check_finite(owner: str, field: str, t: Tensor) -> None:
    bad = ~torch.isfinite(t)
    if bad.any():
        idx = tuple(int(i) for i in torch.nonzero(bad)[0])
        raise ValueError(f"{owner}: field {field!r} has value {t[idx].item()} at index {idx}; must be finite")


class NoiseModel(abc.ABC):
    """Base class of observation noise models (see the module docstring for the contract)."""

    gaussian: ClassVar[bool] = True

    @property
    @abc.abstractmethod
    def size(self) -> int | None:
        """Number of observations ``M`` the model is bound to, or ``None`` if unsized."""

    @abc.abstractmethod
    def expand(self, size: int) -> NoiseModel:
        """This model bound to ``size`` observations (raises if its own length differs)."""

    @abc.abstractmethod
    def log_prob(self, residual: Tensor) -> Tensor:
        """``log p(residual)``, residual ``[..., M]`` -> ``[...]``."""

    @abc.abstractmethod
    def variance(self) -> Tensor:
        """Diagonal of the nominal covariance, ``[M]`` float64."""

    @abc.abstractmethod
    def cov_matvec(self, v: Tensor, weights: Tensor | None = None) -> Tensor:
        r""":math:`\Sigma_{eff} v` for ``v`` ``[..., M]``; ``weights`` ``[..., M]`` are IRLS weights."""

    @abc.abstractmethod
    def dense_cov(self) -> Tensor:
        """The nominal covariance as a dense ``[M, M]`` float64 matrix (for small problems and tests)."""

    def irls_weights(self, residual: Tensor) -> Tensor:
        r"""IRLS weights :math:`w_i = \psi(r_i)/r_i` for residuals ``[..., M]``; ones for Gaussian models."""
        return torch.ones_like(residual)

    def score(self, residual: Tensor) -> Tensor:
        r""":math:`\psi = \partial \log p(y - h) / \partial h = -\nabla_r \log p(r)`, ``[..., M]``.

        The default differentiates :meth:`log_prob` with autograd; the built-in models override it with closed
        forms (which are themselves differentiable).
        """
        with torch.enable_grad():
            r = residual.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self.log_prob(r).sum(), r)
        return -grad

    def marginal_variance(self) -> Tensor:
        """Variance of each error under the model's density, ``[M]`` float64 (``inf`` where it does not exist)."""
        return self.variance()

    @abc.abstractmethod
    def sample(
        self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        """Synthetic observation errors ``[*shape, M]``."""

    def subset(self, index: object) -> NoiseModel:
        """This model restricted to observations ``index`` (``[M']`` int, or ``[M]`` bool), e.g. for
        :meth:`appa_core.obs.ObsOperator.subset`.

        The default keeps the Gaussian covariance's sub-matrix (a :class:`CorrelatedGaussian`); the built-in models
        keep their own type. A non-Gaussian model without its own ``subset`` raises ``TypeError``.
        """
        ix = _subset_index(type(self).__name__, index, self._require_size())
        if not self.gaussian:
            raise TypeError(f"{type(self).__name__}: this noise model does not implement subset()")
        cov = self.dense_cov()
        return CorrelatedGaussian(cov=cov[ix][:, ix])

    def _require_size(self) -> int:
        if self.size is None:
            raise ValueError(f"{type(self).__name__}: the model is unsized; call expand(M) first")
        return self.size

    def _check_residual(self, residual: Tensor, field: str = "residual") -> None:
        if not isinstance(residual, Tensor):
            raise TypeError(f"{type(self).__name__}: {field} must be a torch.Tensor, got {type(residual).__name__}")
        if residual.ndim == 0 or (self.size is not None and residual.shape[-1] != self.size):
            raise ValueError(
                f"{type(self).__name__}: {field} has shape {list(residual.shape)}; its last dimension must be "
                f"the {self.size if self.size is not None else 'M'} observations"
            )


def _subset_index(owner: str, index: object, size: int) -> Tensor:
    """``index`` (int ``[M']`` or bool ``[M]``) as an int64 tensor of positions in ``[0, size)``, non-empty."""
    ix = torch.as_tensor(np.asarray(index))
    if ix.dtype == torch.bool:
        if ix.numel() != size:
            raise ValueError(f"{owner}: subset mask has {ix.numel()} values but the model has {size} observations")
        ix = torch.nonzero(ix).reshape(-1)
    ix = ix.to(torch.int64).reshape(-1)
    if ix.numel() == 0:
        raise ValueError(f"{owner}: subset() needs at least one observation")
    if int(ix.min()) < 0 or int(ix.max()) >= size:
        raise ValueError(f"{owner}: subset index outside [0, {size})")
    return ix


def _check_expand_size(owner: str, size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
        raise ValueError(f"{owner}: expand() needs a positive integer number of observations, got {size!r}")
    return int(size)


class _Scaled(NoiseModel):
    """Shared machinery of independent models with a per-observation scale ``std`` (scalar or ``[M]``)."""

    std: Tensor
    _size: int | None

    def _bind_size(self) -> None:
        owner = type(self).__name__
        if self._size is not None:
            _check_expand_size(owner, self._size)
        if self.std.ndim == 1:
            if self._size is not None and self._size != self.std.numel():
                raise ValueError(f"{owner}: field 'std' has {self.std.numel()} values but {self._size} observations")
            object.__setattr__(self, "_size", self.std.numel())

    @property
    def size(self) -> int | None:
        return self._size

    def expand(self, size: int) -> NoiseModel:
        owner = type(self).__name__
        size = _check_expand_size(owner, size)
        if self.std.ndim == 1 or self._size is not None:
            if self._size != size:
                raise ValueError(f"{owner}: field 'std' has {self._size} values but {size} observations")
            return self
        return attrs.evolve(self, std=self.std.expand(size).clone())  # type: ignore[misc]

    def subset(self, index: object) -> NoiseModel:
        ix = _subset_index(type(self).__name__, index, self._require_size())
        if self.std.ndim == 0:
            return attrs.evolve(self, size=int(ix.numel()))  # type: ignore[misc]
        return attrs.evolve(self, std=self.std[ix].clone(), size=None)  # type: ignore[misc]

    def _std(self, like: Tensor) -> Tensor:
        return self.std.to(dtype=like.dtype, device=like.device)

    def _sum_log_std(self, like: Tensor) -> Tensor:
        s = self._std(like)
        return torch.log(s).sum() if s.ndim else like.shape[-1] * torch.log(s)

    def variance(self) -> Tensor:
        return (self.std**2).expand(self._require_size())

    def cov_matvec(self, v: Tensor, weights: Tensor | None = None) -> Tensor:
        out = v * self._std(v) ** 2
        return out if weights is None else out / weights

    def dense_cov(self) -> Tensor:
        return torch.diag(self.variance())

    def _standard_sample(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        """Standardised errors ``z`` ``[*shape, M]`` float64 (the error is ``std * z``)."""
        raise NotImplementedError

    def sample(
        self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        z = self._standard_sample((*tuple(shape), self._require_size()), generator)
        return (z * self.std).to(dtype)


@attrs.frozen(eq=False)
class DiagonalGaussian(_Scaled):
    r"""Independent Gaussian errors :math:`\epsilon_i \sim \mathcal{N}(0, \sigma_i^2)`.

    .. math:: \log p(r) = -\sum_i \left[\tfrac12 (r_i/\sigma_i)^2 + \log\sigma_i + \tfrac12\log 2\pi\right],
              \qquad \psi_i = r_i / \sigma_i^2.

    Args:
        std: standard deviation(s) :math:`\sigma` in the observation's units; a scalar (shared) or ``[M]``.
        size: number of observations ``M`` (optional; inferred from a 1-D ``std``).
    """

    std: Tensor = attrs.field(converter=lambda v: _std_tensor("DiagonalGaussian", "std", v))
    _size: int | None = attrs.field(default=None, alias="size")

    def __attrs_post_init__(self) -> None:
        self._bind_size()

    def log_prob(self, residual: Tensor) -> Tensor:
        self._check_residual(residual)
        s = self._std(residual)
        return -0.5 * ((residual / s) ** 2).sum(-1) - self._sum_log_std(residual) - 0.5 * residual.shape[-1] * _LOG_2PI

    def score(self, residual: Tensor) -> Tensor:
        self._check_residual(residual)
        return residual / self._std(residual) ** 2

    def _standard_sample(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float64)


@attrs.frozen(eq=False)
class Huber(_Scaled):
    r"""Huber-norm errors (variational quality control): a Gaussian core with exponential tails.

    With :math:`z = r/\sigma` and :math:`\rho_c(z) = z^2/2` for :math:`|z| \le c`, :math:`c|z| - c^2/2` otherwise,

    .. math:: p(r) = \frac{e^{-\rho_c(r/\sigma)}}{\sigma Z_c}, \qquad
              Z_c = \sqrt{2\pi}\,(2\Phi(c) - 1) + \frac{2 e^{-c^2/2}}{c},

    :math:`\psi = \mathrm{clip}(z, -c, c)/\sigma`, IRLS weight :math:`w = \min(1, c/|z|)`, and
    :math:`\mathrm{Var}[\epsilon] = \sigma^2\,[\sqrt{2\pi}(2\Phi(c)-1) + e^{-c^2/2}(4/c + 4/c^3)]/Z_c`.

    Args:
        std: scale :math:`\sigma` (the standard deviation of the Gaussian core); scalar or ``[M]``.
        c: threshold in units of :math:`\sigma` beyond which the penalty is linear (ECMWF uses 1 to 2).
        size: number of observations ``M`` (keyword; inferred from a 1-D ``std``).
    """

    gaussian: ClassVar[bool] = False

    std: Tensor = attrs.field(converter=lambda v: _std_tensor("Huber", "std", v))
    c: float = attrs.field(default=1.345, converter=lambda v: _positive_float("Huber", "c", v))
    _size: int | None = attrs.field(default=None, alias="size", kw_only=True)

    def __attrs_post_init__(self) -> None:
        self._bind_size()

    @property
    def _core_mass(self) -> float:
        r""":math:`\int_{-c}^{c} e^{-z^2/2} dz = \sqrt{2\pi}\,(2\Phi(c) - 1)`."""
        return math.sqrt(2 * math.pi) * math.erf(self.c / math.sqrt(2))

    @property
    def _tail_mass(self) -> float:
        r""":math:`2\int_c^\infty e^{-(cz - c^2/2)} dz = 2 e^{-c^2/2}/c`."""
        return 2 * math.exp(-0.5 * self.c**2) / self.c

    @property
    def log_normalizer(self) -> float:
        r""":math:`\log Z_c` (per observation, for :math:`\sigma = 1`)."""
        return math.log(self._core_mass + self._tail_mass)

    def log_prob(self, residual: Tensor) -> Tensor:
        self._check_residual(residual)
        az = (residual / self._std(residual)).abs()
        rho = torch.where(az <= self.c, 0.5 * az**2, self.c * az - 0.5 * self.c**2)
        return -rho.sum(-1) - self._sum_log_std(residual) - residual.shape[-1] * self.log_normalizer

    def score(self, residual: Tensor) -> Tensor:
        self._check_residual(residual)
        s = self._std(residual)
        return (residual / s).clamp(-self.c, self.c) / s

    def irls_weights(self, residual: Tensor) -> Tensor:
        self._check_residual(residual)
        az = (residual / self._std(residual)).abs()
        return self.c / torch.clamp(az, min=self.c)  # = min(1, c/|z|), 1 at z = 0

    def marginal_variance(self) -> Tensor:
        c, e = self.c, math.exp(-0.5 * self.c**2)
        ez2 = (self._core_mass + e * (4 / c + 4 / c**3)) / (self._core_mass + self._tail_mass)
        return self.variance() * ez2

    def _standard_sample(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        # Mixture of the core (a normal truncated to [-c, c], by inverse CDF) and the two exponential tails.
        p_core = self._core_mass / (self._core_mass + self._tail_mass)
        u_pick, u_core, u_tail, u_sign = torch.rand((4, *shape), generator=generator, dtype=torch.float64)
        lo = 0.5 * math.erfc(self.c / math.sqrt(2))  # Phi(-c)
        core = torch.special.ndtri(lo + u_core * (1 - 2 * lo))
        tail = self.c - torch.log1p(-u_tail) / self.c
        tail = torch.where(u_sign < 0.5, -tail, tail)
        return torch.where(u_pick < p_core, core, tail)


@attrs.frozen(eq=False)
class StudentT(_Scaled):
    r"""Student-t errors with :math:`\nu` degrees of freedom and scale :math:`\sigma` (robust, heavy tails).

    .. math:: \log p(r) = \log\Gamma(\tfrac{\nu+1}{2}) - \log\Gamma(\tfrac{\nu}{2}) - \tfrac12\log(\nu\pi)
              - \log\sigma - \tfrac{\nu+1}{2}\log\left(1 + \frac{z^2}{\nu}\right), \qquad z = r/\sigma,

    :math:`\psi = (\nu+1)\,r/(\nu\sigma^2 + r^2)`, IRLS weight :math:`w = (\nu+1)/(\nu+z^2)` (exact as a Gaussian
    scale mixture given the weights), :math:`\mathrm{Var}[\epsilon] = \sigma^2\nu/(\nu-2)` for :math:`\nu > 2`.

    Args:
        std: scale :math:`\sigma`; scalar or ``[M]``.
        dof: degrees of freedom :math:`\nu > 0` (3 to 5 is typical for observation errors; large is Gaussian).
        size: number of observations ``M`` (keyword; inferred from a 1-D ``std``).
    """

    gaussian: ClassVar[bool] = False

    std: Tensor = attrs.field(converter=lambda v: _std_tensor("StudentT", "std", v))
    dof: float = attrs.field(converter=lambda v: _positive_float("StudentT", "dof", v))
    _size: int | None = attrs.field(default=None, alias="size", kw_only=True)

    def __attrs_post_init__(self) -> None:
        self._bind_size()

    @property
    def log_normalizer(self) -> float:
        r"""Per-observation :math:`\log\Gamma(\tfrac{\nu+1}{2}) - \log\Gamma(\tfrac{\nu}{2}) - \tfrac12\log(\nu\pi)`."""
        nu = self.dof
        return math.lgamma(0.5 * (nu + 1)) - math.lgamma(0.5 * nu) - 0.5 * math.log(nu * math.pi)

    def log_prob(self, residual: Tensor) -> Tensor:
        self._check_residual(residual)
        z2 = (residual / self._std(residual)) ** 2
        nu = self.dof
        return (
            -0.5 * (nu + 1) * torch.log1p(z2 / nu).sum(-1)
            - self._sum_log_std(residual)
            + residual.shape[-1] * self.log_normalizer
        )

    def score(self, residual: Tensor) -> Tensor:
        self._check_residual(residual)
        s2 = self._std(residual) ** 2
        return (self.dof + 1) * residual / (self.dof * s2 + residual**2)

    def irls_weights(self, residual: Tensor) -> Tensor:
        self._check_residual(residual)
        z2 = (residual / self._std(residual)) ** 2
        return (self.dof + 1) / (self.dof + z2)

    def marginal_variance(self) -> Tensor:
        factor = self.dof / (self.dof - 2) if self.dof > 2 else math.inf
        return self.variance() * factor

    def _standard_sample(self, shape: tuple[int, ...], generator: torch.Generator | None) -> Tensor:
        # torch's gamma sampler takes no generator: seed numpy's from the torch generator (reproducible).
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        return torch.from_numpy(np.random.default_rng(seed).standard_t(self.dof, size=shape))


def _matrix(owner: str, field: str, value: object) -> Tensor:
    t = _float_tensor(owner, field, value)
    if t.ndim != 2:
        raise ValueError(f"{owner}: field {field!r} must be a 2-D matrix, got shape {tuple(t.shape)}")
    _check_finite(owner, field, t)
    return t


@attrs.frozen(eq=False)
class CorrelatedGaussian(NoiseModel):
    r"""Correlated Gaussian errors :math:`\epsilon \sim \mathcal{N}(0, \Sigma)`.

    Two forms:

    * dense: ``CorrelatedGaussian(cov=S)`` with :math:`\Sigma` ``[M, M]`` symmetric positive definite, factored
      once as :math:`\Sigma = L L^\top` (Cholesky). :math:`\log p(r) = -\tfrac12\|L^{-1}r\|^2 - \sum_i \log L_{ii}
      - \tfrac{M}{2}\log 2\pi`.
    * low rank plus diagonal: ``CorrelatedGaussian(factor=F, diag=d)`` with :math:`\Sigma = F F^\top +
      \mathrm{diag}(d)`, ``F`` ``[M, k]``, ``d`` ``[M]`` > 0 (variances). With the capacitance
      :math:`A = I_k + F^\top D^{-1} F = L_A L_A^\top`, Woodbury gives
      :math:`\Sigma^{-1} = D^{-1} - D^{-1} F A^{-1} F^\top D^{-1}` and :math:`\log\det\Sigma = \sum_i \log d_i +
      \log\det A`, in :math:`O(M k^2)`.

    :math:`\psi = \Sigma^{-1} r` (:meth:`precision_matvec`); IRLS weights are ones.
    """

    cov: Tensor | None = attrs.field(default=None, kw_only=True)
    factor: Tensor | None = attrs.field(default=None, kw_only=True)
    diag: Tensor | None = attrs.field(default=None, kw_only=True)
    _chol: Tensor = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        owner = "CorrelatedGaussian"
        if self.cov is not None:
            if self.factor is not None or self.diag is not None:
                raise ValueError(f"{owner}: give either field 'cov' or fields 'factor' and 'diag', not both")
            self._init_dense(owner)
        elif self.factor is not None and self.diag is not None:
            self._init_low_rank(owner)
        elif self.factor is not None or self.diag is not None:
            missing = "diag" if self.diag is None else "factor"
            raise ValueError(
                f"{owner}: field {missing!r} is missing; the low-rank form is cov = factor @ factor.T + diag(diag)"
            )
        else:
            raise ValueError(f"{owner}: needs field 'cov' ([M, M]) or fields 'factor' ([M, k]) and 'diag' ([M])")

    def _init_dense(self, owner: str) -> None:
        cov = _matrix(owner, "cov", self.cov)
        m = cov.shape[0]
        if m == 0 or cov.shape[1] != m:
            raise ValueError(f"{owner}: field 'cov' must be a square [M, M] matrix, got shape {tuple(cov.shape)}")
        asym = (cov - cov.T).abs()
        if asym.max() > 1e-10 * cov.abs().max():
            i, j = (int(k) for k in divmod(int(asym.argmax()), m))
            raise ValueError(
                f"{owner}: field 'cov' is not symmetric: cov[{i}, {j}] = {cov[i, j].item()} "
                f"but cov[{j}, {i}] = {cov[j, i].item()}"
            )
        cov = 0.5 * (cov + cov.T)
        chol, info = torch.linalg.cholesky_ex(cov)
        if info.item() != 0:
            lam = torch.linalg.eigvalsh(cov)[0].item()
            raise ValueError(f"{owner}: field 'cov' is not positive definite: its smallest eigenvalue is {lam:.6g}")
        object.__setattr__(self, "cov", cov)
        object.__setattr__(self, "_chol", chol)

    def _init_low_rank(self, owner: str) -> None:
        factor = _matrix(owner, "factor", self.factor)
        diag = _std_tensor(owner, "diag", self.diag)
        if diag.ndim != 1:
            raise ValueError(f"{owner}: field 'diag' must be 1-D [M], got shape {tuple(diag.shape)}")
        if factor.shape[0] != diag.numel():
            raise ValueError(
                f"{owner}: field 'factor' has {factor.shape[0]} rows but field 'diag' has {diag.numel()} values"
            )
        object.__setattr__(self, "factor", factor)
        object.__setattr__(self, "diag", diag)
        object.__setattr__(self, "_chol", woodbury_capacitance(factor, 1.0 / diag))

    @property
    def low_rank(self) -> bool:
        return self.cov is None

    @property
    def size(self) -> int:
        return int(self.diag.numel()) if self.cov is None else int(self.cov.shape[0])  # type: ignore[union-attr]

    def expand(self, size: int) -> CorrelatedGaussian:
        size = _check_expand_size("CorrelatedGaussian", size)
        if size != self.size:
            raise ValueError(f"CorrelatedGaussian: has {self.size} observations, asked for {size}")
        return self

    @staticmethod
    def _rows(v: Tensor) -> Tensor:
        return v.reshape(-1, v.shape[-1])

    def _cast(self, t: Tensor, like: Tensor) -> Tensor:
        return t.to(dtype=like.dtype, device=like.device)

    def log_prob(self, residual: Tensor) -> Tensor:
        self._check_residual(residual)
        r = self._rows(residual)
        L = self._cast(self._chol, r)
        m = self.size
        if self.cov is not None:
            white = torch.linalg.solve_triangular(L, r.T, upper=False)  # [M, N]
            quad = (white**2).sum(0)
            logdet = 2 * torch.log(torch.diagonal(L)).sum()
        else:
            d, F = self._cast(self.diag, r), self._cast(self.factor, r)  # type: ignore[arg-type]
            u = torch.linalg.solve_triangular(L, ((r / d) @ F).T, upper=False)  # [k, N]
            quad = (r**2 / d).sum(-1) - (u**2).sum(0)
            logdet = torch.log(d).sum() + 2 * torch.log(torch.diagonal(L)).sum()
        out = -0.5 * quad - 0.5 * logdet - 0.5 * m * _LOG_2PI
        return out.reshape(residual.shape[:-1])

    def precision_matvec(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma^{-1} v` for ``v`` ``[..., M]`` (Cholesky solve, or Woodbury in the low-rank form)."""
        self._check_residual(v, "v")
        r = self._rows(v)
        L = self._cast(self._chol, r)
        if self.cov is not None:
            out = torch.cholesky_solve(r.T, L, upper=False).T
        else:
            d, F = self._cast(self.diag, r), self._cast(self.factor, r)  # type: ignore[arg-type]
            out = woodbury_solve(r, F, 1.0 / d, L)
        return out.reshape(v.shape)

    def score(self, residual: Tensor) -> Tensor:
        return self.precision_matvec(residual)

    def variance(self) -> Tensor:
        if self.cov is not None:
            return torch.diagonal(self.cov).clone()
        return (self.factor**2).sum(1) + self.diag  # type: ignore[operator]

    def _cov_apply(self, u: Tensor) -> Tensor:
        if self.cov is not None:
            return u @ self._cast(self.cov, u)
        d, F = self._cast(self.diag, u), self._cast(self.factor, u)  # type: ignore[arg-type]
        return (u @ F) @ F.T + u * d

    def cov_matvec(self, v: Tensor, weights: Tensor | None = None) -> Tensor:
        self._check_residual(v, "v")
        if weights is None:
            return self._cov_apply(v)
        root = weights.sqrt()
        return self._cov_apply(v / root) / root

    def subset(self, index: object) -> CorrelatedGaussian:
        ix = _subset_index("CorrelatedGaussian", index, self.size)
        if self.cov is not None:
            return CorrelatedGaussian(cov=self.cov[ix][:, ix])
        return CorrelatedGaussian(factor=self.factor[ix], diag=self.diag[ix])  # type: ignore[index]

    def dense_cov(self) -> Tensor:
        if self.cov is not None:
            return self.cov.clone()
        return self.factor @ self.factor.T + torch.diag(self.diag)  # type: ignore[operator,arg-type]

    def sample(
        self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        shape = tuple(shape)
        if self.cov is not None:
            z = torch.randn((*shape, self.size), generator=generator, dtype=torch.float64)
            return (z @ self._chol.T).to(dtype)
        k = self.factor.shape[1]  # type: ignore[union-attr]
        z = torch.randn((*shape, k), generator=generator, dtype=torch.float64)
        e = torch.randn((*shape, self.size), generator=generator, dtype=torch.float64)
        return (z @ self.factor.T + e * self.diag.sqrt()).to(dtype)  # type: ignore[union-attr]


@attrs.frozen(eq=False)
class BlockDiagonal(NoiseModel):
    """Independent blocks: the noise of an :class:`~appa_core.obs.ObsSet`, one sized model per operator."""

    models: tuple[NoiseModel, ...] = attrs.field(converter=tuple)

    def __attrs_post_init__(self) -> None:
        if not self.models:
            raise ValueError("BlockDiagonal: field 'models' is empty")
        for i, m in enumerate(self.models):
            if not isinstance(m, NoiseModel):
                raise TypeError(f"BlockDiagonal: model {i} is a {type(m).__name__}, not a NoiseModel")
            if m.size is None:
                raise ValueError(f"BlockDiagonal: model {i} ({type(m).__name__}) is unsized; call expand(M) first")

    @property
    def gaussian(self) -> bool:  # type: ignore[override]
        return all(m.gaussian for m in self.models)

    @property
    def sizes(self) -> list[int]:
        return [int(m.size) for m in self.models]  # type: ignore[arg-type]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    def expand(self, size: int) -> BlockDiagonal:
        if size != self.size:
            raise ValueError(f"BlockDiagonal: has {self.size} observations, asked for {size}")
        return self

    def subset(self, index: object) -> NoiseModel:
        """The blocks' own subsets (blocks left with no observation are dropped); positions must be increasing."""
        ix = _subset_index("BlockDiagonal", index, self.size)
        if bool((ix[1:] <= ix[:-1]).any()):
            raise ValueError("BlockDiagonal: subset() needs increasing positions")
        bounds = np.cumsum([0, *self.sizes])
        models = []
        for m, a, b in zip(self.models, bounds[:-1], bounds[1:], strict=True):
            local = ix[(ix >= a) & (ix < b)] - int(a)
            if local.numel():
                models.append(m.subset(local))
        return models[0] if len(models) == 1 else BlockDiagonal(models)

    def _split(self, v: Tensor, field: str = "residual") -> Sequence[Tensor]:
        self._check_residual(v, field)
        return (v,) if len(self.models) == 1 else torch.split(v, self.sizes, dim=-1)  # one block: as it is

    def log_prob(self, residual: Tensor) -> Tensor:
        return sum(m.log_prob(r) for m, r in zip(self.models, self._split(residual), strict=True))  # type: ignore[return-value]

    def score(self, residual: Tensor) -> Tensor:
        return torch.cat([m.score(r) for m, r in zip(self.models, self._split(residual), strict=True)], dim=-1)

    def variance(self) -> Tensor:
        return torch.cat([m.variance() for m in self.models])

    def marginal_variance(self) -> Tensor:
        return torch.cat([m.marginal_variance() for m in self.models])

    def cov_matvec(self, v: Tensor, weights: Tensor | None = None) -> Tensor:
        ws = [None] * len(self.models) if weights is None else self._split(weights, "weights")
        parts = [m.cov_matvec(x, w) for m, x, w in zip(self.models, self._split(v, "v"), ws, strict=True)]
        # one block: no concatenation (a copy; a guided call runs this once per solver iteration)
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def dense_cov(self) -> Tensor:
        return torch.block_diag(*[m.dense_cov() for m in self.models])

    def irls_weights(self, residual: Tensor) -> Tensor:
        return torch.cat([m.irls_weights(r) for m, r in zip(self.models, self._split(residual), strict=True)], dim=-1)

    def sample(
        self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        return torch.cat([m.sample(shape, generator, dtype) for m in self.models], dim=-1)
