r"""Observation noise models.

A noise model describes the observation error :math:`\epsilon = y - \mathcal{H}(x)` of one operator's
``M`` observations. Every model gives

* ``log_prob(r)``: the normalised log-density of residuals ``r`` ``[..., M]``, summed over ``M``;
* a Gaussian approximation for the guidance's linear solve: ``cov_matvec(v, weights)`` applies
  :math:`\Sigma_{eff} = W^{-1/2}\,\Sigma\,W^{-1/2}`, where ``weights`` are the IRLS weights
  :math:`w_i = \psi(r_i)/r_i` of the robust models (all ones for Gaussian models);
* ``sample(shape)``: synthetic errors ``[*shape, M]``.

Models may be created unsized (a scalar std) and are bound to ``M`` observations by ``expand(M)``, which
operators do at construction.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence
from typing import ClassVar

import attrs
import numpy as np
import torch
from torch import Tensor

__all__ = ["BlockDiagonal", "DiagonalGaussian", "NoiseModel"]


def _std_tensor(owner: str, field: str, value: object) -> Tensor:
    """A float64 tensor of positive finite standard deviations, scalar or 1-D."""
    t = torch.as_tensor(np.asarray(value, dtype=np.float64))
    if t.ndim > 1:
        raise ValueError(f"{owner}: field {field!r} must be a scalar or 1-D, got shape {tuple(t.shape)}")
    bad = ~torch.isfinite(t) | (t <= 0)
    if bad.any():
        value = t.reshape(-1)[bad.reshape(-1)][0].item()
        raise ValueError(f"{owner}: field {field!r} has value {value}; must be > 0 and finite")
    return t


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

    @abc.abstractmethod
    def sample(
        self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        """Synthetic observation errors ``[*shape, M]``."""

    def _require_size(self) -> int:
        if self.size is None:
            raise ValueError(f"{type(self).__name__}: the model is unsized; call expand(M) first")
        return self.size


@attrs.frozen(eq=False)
class DiagonalGaussian(NoiseModel):
    r"""Independent Gaussian errors :math:`\epsilon_i \sim \mathcal{N}(0, \sigma_i^2)`.

    Args:
        std: standard deviation(s) :math:`\sigma` in the observation's units; a scalar (shared) or ``[M]``.
    """

    std: Tensor = attrs.field(converter=lambda v: _std_tensor("DiagonalGaussian", "std", v))
    _size: int | None = attrs.field(default=None, alias="size")

    def __attrs_post_init__(self) -> None:
        if self.std.ndim == 1:
            if self._size is not None and self._size != self.std.numel():
                raise ValueError(
                    f"DiagonalGaussian: field 'std' has {self.std.numel()} values but {self._size} observations"
                )
            object.__setattr__(self, "_size", self.std.numel())

    @property
    def size(self) -> int | None:
        return self._size

    def expand(self, size: int) -> DiagonalGaussian:
        if self.std.ndim == 1:
            if self.std.numel() != size:
                raise ValueError(f"DiagonalGaussian: field 'std' has {self.std.numel()} values but {size} observations")
            return self
        return DiagonalGaussian(self.std.expand(size).clone())

    def _std(self, like: Tensor) -> Tensor:
        return self.std.to(dtype=like.dtype, device=like.device)

    def log_prob(self, residual: Tensor) -> Tensor:
        s = self._std(residual)
        m = residual.shape[-1]
        logdet = torch.log(s).sum() if s.ndim else m * torch.log(s)
        return -0.5 * ((residual / s) ** 2).sum(-1) - logdet - 0.5 * m * math.log(2 * math.pi)

    def variance(self) -> Tensor:
        return (self.std**2).expand(self._require_size())

    def cov_matvec(self, v: Tensor, weights: Tensor | None = None) -> Tensor:
        out = v * self._std(v) ** 2
        return out if weights is None else out / weights

    def dense_cov(self) -> Tensor:
        return torch.diag(self.variance())

    def sample(
        self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        m = self._require_size()
        eps = torch.randn((*shape, m), generator=generator, dtype=torch.float64)
        return (eps * self.std).to(dtype)


@attrs.frozen(eq=False)
class BlockDiagonal(NoiseModel):
    """Independent blocks: the noise of an :class:`~appa_core.ObsSet`, one sized model per operator."""

    models: tuple[NoiseModel, ...] = attrs.field(converter=tuple)

    def __attrs_post_init__(self) -> None:
        if not self.models:
            raise ValueError("BlockDiagonal: field 'models' is empty")
        for i, m in enumerate(self.models):
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

    def _split(self, v: Tensor) -> Sequence[Tensor]:
        return torch.split(v, self.sizes, dim=-1)

    def log_prob(self, residual: Tensor) -> Tensor:
        return sum(m.log_prob(r) for m, r in zip(self.models, self._split(residual), strict=True))  # type: ignore[return-value]

    def variance(self) -> Tensor:
        return torch.cat([m.variance() for m in self.models])

    def cov_matvec(self, v: Tensor, weights: Tensor | None = None) -> Tensor:
        ws = [None] * len(self.models) if weights is None else self._split(weights)
        return torch.cat([m.cov_matvec(x, w) for m, x, w in zip(self.models, self._split(v), ws, strict=True)], dim=-1)

    def dense_cov(self) -> Tensor:
        return torch.block_diag(*[m.dense_cov() for m in self.models])

    def irls_weights(self, residual: Tensor) -> Tensor:
        return torch.cat([m.irls_weights(r) for m, r in zip(self.models, self._split(residual), strict=True)], dim=-1)

    def sample(
        self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        return torch.cat([m.sample(shape, generator, dtype) for m in self.models], dim=-1)
