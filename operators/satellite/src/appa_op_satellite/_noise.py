r"""Gaussian errors correlated within each footprint and independent between footprints.

:math:`\Sigma = I_N \otimes S` with one ``[K, K]`` block :math:`S = L L^\top` shared by the ``N`` footprints
(observations ordered footprint-major, ``m = n * K + k``). Everything costs :math:`O(N K^2)`, where
``CorrelatedGaussian(cov=...)`` would need the dense ``[NK, NK]`` matrix and its Cholesky factor.

.. math:: \log p(r) = -\tfrac12 \sum_n \|L^{-1} r_n\|^2 - N \sum_k \log L_{kk} - \tfrac{NK}{2}\log 2\pi,
          \qquad \psi = (I_N \otimes S^{-1})\, r .
"""

from __future__ import annotations

import math

import attrs
import numpy as np
import torch
from torch import Tensor

from appa_core.obs.errors import DiagonalGaussian, NoiseModel

__all__ = ["BlockCorrelatedGaussian", "channel_correlated_noise"]

_LOG_2PI = math.log(2 * math.pi)


def _block(value: object) -> Tensor:
    owner = "BlockCorrelatedGaussian"
    try:
        s = torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{owner}: field 'block_cov' must be numeric, got {value!r:.80}") from exc
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] == 0:
        raise ValueError(f"{owner}: field 'block_cov' must be a square [K, K] matrix, got shape {tuple(s.shape)}")
    if not torch.isfinite(s).all():
        raise ValueError(f"{owner}: field 'block_cov' has non-finite values")
    if (s - s.T).abs().max() > 1e-10 * s.abs().max():
        raise ValueError(f"{owner}: field 'block_cov' is not symmetric")
    return 0.5 * (s + s.T)


@attrs.frozen(eq=False)
class BlockCorrelatedGaussian(NoiseModel):
    """Block-diagonal Gaussian noise, one covariance block ``[K, K]`` repeated over ``n_blocks`` footprints.

    Args:
        block_cov: the per-footprint covariance ``S`` ``[K, K]`` (symmetric positive definite), units squared.
        n_blocks: number of footprints ``N`` (``None``: unsized, bound by :meth:`expand`).
    """

    block_cov: Tensor = attrs.field(converter=_block)
    n_blocks: int | None = attrs.field(default=None)
    _chol: Tensor = attrs.field(init=False, repr=False)
    _prec: Tensor = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        owner = "BlockCorrelatedGaussian"
        chol, info = torch.linalg.cholesky_ex(self.block_cov)
        if info.item() != 0:
            lam = torch.linalg.eigvalsh(self.block_cov)[0].item()
            raise ValueError(f"{owner}: field 'block_cov' is not positive definite: smallest eigenvalue {lam:.6g}")
        if self.n_blocks is not None and (isinstance(self.n_blocks, bool) or int(self.n_blocks) < 1):
            raise ValueError(f"{owner}: field 'n_blocks' has value {self.n_blocks!r}; must be a positive integer")
        object.__setattr__(self, "_chol", chol)
        object.__setattr__(self, "_prec", torch.cholesky_inverse(chol))

    @property
    def block_size(self) -> int:
        return int(self.block_cov.shape[0])

    @property
    def size(self) -> int | None:
        return None if self.n_blocks is None else int(self.n_blocks) * self.block_size

    def expand(self, size: int) -> BlockCorrelatedGaussian:
        k = self.block_size
        if isinstance(size, bool) or int(size) < 1 or int(size) % k:
            raise ValueError(f"BlockCorrelatedGaussian: cannot bind to {size!r} observations (blocks of {k})")
        if self.n_blocks is None:
            return BlockCorrelatedGaussian(self.block_cov, int(size) // k)
        if self.size != size:
            raise ValueError(f"BlockCorrelatedGaussian: has {self.size} observations, asked for {size}")
        return self

    def subset(self, index: object) -> NoiseModel:
        """Whole footprints keep this type (``n_blocks`` of them); any other selection gives the covariance's
        sub-matrix (:meth:`appa_core.obs.errors.NoiseModel.subset`)."""
        size, k = self._require_size(), self.block_size
        ix = torch.as_tensor(np.asarray(index))
        if ix.dtype == torch.bool and ix.numel() == size:
            ix = torch.nonzero(ix).reshape(-1)
        ix = ix.to(torch.int64).reshape(-1)
        if ix.numel() and ix.numel() % k == 0:
            blocks = ix.reshape(-1, k)
            whole = bool((blocks == blocks[:, :1] + torch.arange(k)).all()) and bool((blocks[:, 0] % k == 0).all())
            if whole and int(ix.max()) < size:
                return BlockCorrelatedGaussian(self.block_cov, blocks.shape[0])
        return super().subset(ix)

    def _blocks(self, v: Tensor) -> Tensor:
        self._check_residual(v)
        return v.reshape(*v.shape[:-1], -1, self.block_size)

    def _cast(self, t: Tensor, like: Tensor) -> Tensor:
        return t.to(dtype=like.dtype, device=like.device)

    def log_prob(self, residual: Tensor) -> Tensor:
        r = self._blocks(residual)
        L = self._cast(self._chol, r)
        white = torch.linalg.solve_triangular(L, r.unsqueeze(-1), upper=False).squeeze(-1)
        n = r.shape[-2]
        logdet = 2 * n * torch.log(torch.diagonal(L)).sum()
        return -0.5 * (white**2).sum((-1, -2)) - 0.5 * logdet - 0.5 * n * self.block_size * _LOG_2PI

    def precision_matvec(self, v: Tensor) -> Tensor:
        r""":math:`\Sigma^{-1} v` for ``v`` ``[..., M]``."""
        return (self._blocks(v) @ self._cast(self._prec, v)).reshape(v.shape)

    def score(self, residual: Tensor) -> Tensor:
        return self.precision_matvec(residual)

    def variance(self) -> Tensor:
        return torch.diagonal(self.block_cov).repeat(self._require_size() // self.block_size)

    def _cov_apply(self, u: Tensor) -> Tensor:
        return (self._blocks(u) @ self._cast(self.block_cov, u)).reshape(u.shape)

    def cov_matvec(self, v: Tensor, weights: Tensor | None = None) -> Tensor:
        if weights is None:
            return self._cov_apply(v)
        root = weights.sqrt()
        return self._cov_apply(v / root) / root

    def dense_cov(self) -> Tensor:
        n = self._require_size() // self.block_size
        return torch.kron(torch.eye(n, dtype=torch.float64), self.block_cov)

    def sample(
        self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
    ) -> Tensor:
        m = self._require_size()
        z = torch.randn(
            (*tuple(shape), m // self.block_size, self.block_size), generator=generator, dtype=torch.float64
        )
        return (z @ self._chol.T).reshape(*tuple(shape), m).to(dtype)


def channel_correlated_noise(std: np.ndarray, rho: float, n_footprints: int) -> NoiseModel:
    r"""Noise correlated across the ``K`` channels of each footprint: :math:`S_{ij} = \sigma_i \sigma_j
    \rho^{|i-j|}`; a :class:`~appa_core.obs.errors.DiagonalGaussian` when :math:`\rho = 0` or ``K = 1``."""
    std = np.asarray(std, dtype=np.float64)
    if rho == 0 or std.size == 1:
        return DiagonalGaussian(np.tile(std, n_footprints))
    idx = np.arange(std.size)
    corr = float(rho) ** np.abs(idx[:, None] - idx[None, :])
    return BlockCorrelatedGaussian(std[:, None] * corr * std[None, :], n_footprints)
