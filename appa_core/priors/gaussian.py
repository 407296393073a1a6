r"""``GaussianPrior``: a Gaussian prior over trajectories with an exact denoiser.

It is the sampler's correctness oracle (with linear operators and Gaussian noise the exact posterior is the Kalman
update, :meth:`GaussianPrior.condition`) and, built from a training set (:meth:`GaussianPrior.from_data`), the
climatological optimal-interpolation baseline run through the very same sampler.

**Diffusion space.** The prior is :math:`x \sim \mathcal{N}(\mu, \Sigma)` over states ``[T, C, H, W]`` in physical
units (``D = T*C*H*W``). The diffusion variable is the standardized state :math:`z = (x - c)/s` with a centre
``c`` (default: the mean) and a per-element scale ``s`` (default: :math:`\sqrt{\mathrm{diag}\,\Sigma}`), so
:math:`z \sim \mathcal{N}(m, \Sigma_z)` with :math:`m = (\mu - c)/s`, :math:`\Sigma_z = S^{-1}\Sigma S^{-1}`
(unit diagonal by default), which suits the VE schedules (data of unit variance). ``decode`` returns physical
units, ``encode`` is its inverse; both are affine, so an affine observation operator stays affine through the
decoder and MMPS is exact.

**Exact denoiser** (:math:`z_t = z + \sigma \xi`):

.. math:: E[z \mid z_t] = z_t - \sigma^2 (\Sigma_z + \sigma^2 I)^{-1} (z_t - m),\qquad
          \mathrm{Cov}[z \mid z_t] = \sigma^2 \big(I - \sigma^2 (\Sigma_z + \sigma^2 I)^{-1}\big)
          = \sigma^2\,\partial E[z \mid z_t]/\partial z_t.

Covariance forms: ``"dense"`` (``D <= 8192``; eigendecomposition once, each call O(B D^2)) or low rank plus
diagonal :math:`\Sigma_z = F F^\top + \mathrm{diag}(d)` (:class:`LowRankDiag`; Woodbury, O(B D r^2) per call).
A window shorter than ``T`` is denoised with the marginal prior of the first states (:meth:`marginal`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import attrs
import numpy as np
import torch
from torch import Tensor

from appa_core.diffusion.schedule import RectifiedSchedule, Schedule
from appa_core.geo import gaspari_cohn, great_circle_km
from appa_core.grid import Grid
from appa_core.linalg import woodbury_capacitance, woodbury_solve
from appa_core.priors.base import DiffusionPrior
from appa_core.spec import StateSpec

__all__ = ["GaussianPrior", "LowRankDiag", "gaspari_cohn"]

_MAX_DENSE = 8192
_SIX_HOURS = np.timedelta64(6, "h")


@attrs.frozen(eq=False)
class LowRankDiag:
    r"""A covariance :math:`F F^\top + \mathrm{diag}(d)` with ``factor`` ``[D, r]`` and ``diag`` ``[D]`` (>= 0)."""

    factor: Tensor = attrs.field(converter=lambda v: torch.as_tensor(v, dtype=torch.float64))
    diag: Tensor = attrs.field(converter=lambda v: torch.as_tensor(v, dtype=torch.float64))

    def __attrs_post_init__(self) -> None:
        if self.factor.ndim != 2 or self.diag.ndim != 1 or self.factor.shape[0] != self.diag.shape[0]:
            raise ValueError(
                f"LowRankDiag: fields 'factor' [D, r] and 'diag' [D] disagree: {tuple(self.factor.shape)} vs "
                f"{tuple(self.diag.shape)}"
            )
        if bool((self.diag < 0).any()) or not bool(torch.isfinite(self.diag).all()):
            raise ValueError("LowRankDiag: field 'diag' must be finite and >= 0")

    @property
    def dim(self) -> int:
        return int(self.diag.shape[0])

    def diagonal(self) -> Tensor:
        return (self.factor**2).sum(-1) + self.diag

    def dense(self) -> Tensor:
        return self.factor @ self.factor.T + torch.diag(self.diag)

    def scaled(self, s: Tensor) -> LowRankDiag:
        """:math:`S^{-1} (F F^T + D) S^{-1}`."""
        return LowRankDiag(self.factor / s[:, None], self.diag / s**2)


def _great_circle_km(grid: Grid) -> np.ndarray:
    """Distances between all cells ``[H*W, H*W]``, km."""
    lat, lon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    lat, lon = lat.ravel(), lon.ravel()
    return great_circle_km(lat[:, None], lon[:, None], lat[None], lon[None])


def _as_f64(value: object) -> Tensor:
    if isinstance(value, Tensor):
        return value.detach().to(torch.float64).cpu()
    return torch.as_tensor(np.asarray(value, dtype=np.float64))


class GaussianPrior(DiffusionPrior):
    """A Gaussian prior :math:`\\mathcal{N}(\\mu, \\Sigma)` over trajectories ``[T, C, H, W]`` (see module docs).

    Args:
        mean: :math:`\\mu` ``[T, C, H, W]`` in physical units.
        cov: :math:`\\Sigma` in physical units: a dense ``[D, D]`` matrix or a :class:`LowRankDiag`.
        grid: horizontal grid (``H, W``).
        spec: state variables (``C``).
        timestep: spacing of consecutive states.
        schedule: noise schedule (default rectified, sigma from 1e-3 to 1e3: the latent priors' schedule, on which the
            sampler's defaults are calibrated; see docs/sampler.md).
        center: ``c`` ``[T, C, H, W]`` (default ``mean``).
        scale: ``s`` ``[T, C, H, W]`` > 0 (default ``sqrt(diag(cov))``).
        dtype: dtype of the tensors the prior works in (float64 by default: it is an oracle).
    """

    def __init__(
        self,
        mean: object,
        cov: object,
        grid: Grid,
        spec: StateSpec,
        timestep: np.timedelta64 = _SIX_HOURS,
        schedule: Schedule | None = None,
        center: object | None = None,
        scale: object | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        mu = _as_f64(mean)
        if mu.ndim != 4 or mu.shape[1] != spec.n_channels or tuple(mu.shape[2:]) != grid.shape:
            raise ValueError(
                f"GaussianPrior: field 'mean' must have shape [T, {spec.n_channels}, {grid.shape[0]}, "
                f"{grid.shape[1]}], got {list(mu.shape)}"
            )
        if not bool(torch.isfinite(mu).all()):
            raise ValueError("GaussianPrior: field 'mean' has non-finite values")
        d = mu.numel()
        self.grid, self.spec, self.schedule = grid, spec, schedule or RectifiedSchedule()
        self.timestep = np.timedelta64(timestep).astype("timedelta64[ns]")
        self.window = int(mu.shape[0])
        self.dtype = dtype
        self.mean = mu
        if isinstance(cov, LowRankDiag):
            if cov.dim != d:
                raise ValueError(f"GaussianPrior: field 'cov' has dimension {cov.dim}, expected D = {d}")
            var = cov.diagonal()
            self.cov: Tensor | LowRankDiag = cov
        else:
            c = _as_f64(cov)
            if c.shape != (d, d):
                raise ValueError(f"GaussianPrior: field 'cov' must be [D, D] = [{d}, {d}], got {list(c.shape)}")
            if d > _MAX_DENSE:
                raise ValueError(f"GaussianPrior: field 'cov' is dense with D = {d} > {_MAX_DENSE}; use LowRankDiag")
            if not bool(torch.isfinite(c).all()):
                raise ValueError("GaussianPrior: field 'cov' has non-finite values")
            c = 0.5 * (c + c.T)
            var = torch.diagonal(c).clone()
            self.cov = c
        if bool((var <= 0).any()) and scale is None:
            raise ValueError("GaussianPrior: field 'cov' has a zero or negative variance; pass 'scale' explicitly")
        self.center = mu.clone() if center is None else _as_f64(center).reshape(mu.shape)
        self.scale = var.sqrt().reshape(mu.shape) if scale is None else _as_f64(scale).reshape(mu.shape)
        if not bool((self.scale > 0).all()):
            raise ValueError("GaussianPrior: field 'scale' must be > 0 everywhere")
        self._m = ((self.mean - self.center) / self.scale).reshape(-1)
        s = self.scale.reshape(-1)
        if isinstance(self.cov, LowRankDiag):
            self._low: LowRankDiag | None = self.cov.scaled(s)
            self._eig: tuple[Tensor, Tensor] | None = None
        else:
            cz = self.cov / s[:, None] / s[None, :]
            lam, q = torch.linalg.eigh(cz)
            self._low, self._eig = None, (lam.clamp_min(0.0), q)
        self._marginals: dict[int, GaussianPrior] = {}
        self._cast: dict[tuple[torch.dtype, str], tuple[Tensor, ...]] = {}

    # ------------------------------------------------------------------ DiffusionPrior API
    @property
    def state_shape(self) -> tuple[int, int, int, int]:
        """``(T, C, H, W)``."""
        return tuple(self.mean.shape)  # type: ignore[return-value]

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def event_shape(self, length: int) -> tuple[int, ...]:
        if not 1 <= length <= self.window:
            raise ValueError(f"GaussianPrior: length {length} outside [1, {self.window}] (the prior's window)")
        return (length, *self.state_shape[1:])

    def marginal(self, length: int) -> GaussianPrior:
        """The prior of the first ``length`` states (same centre and scale)."""
        if length == self.window:
            return self
        self.event_shape(length)
        if length not in self._marginals:
            n = length * int(np.prod(self.state_shape[1:]))
            cov = (
                LowRankDiag(self.cov.factor[:n], self.cov.diag[:n])
                if isinstance(self.cov, LowRankDiag)
                else self.cov[:n, :n]
            )
            self._marginals[length] = type(self)(  # subclasses (e.g. the OI baseline's) keep their type
                self.mean[:length], cov, self.grid, self.spec, self.timestep, self.schedule,
                center=self.center[:length], scale=self.scale[:length], dtype=self.dtype,
            )  # fmt: skip
        return self._marginals[length]

    def _tensors(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, ...]:
        key = (dtype, str(device))
        if key not in self._cast:
            if self._eig is not None:
                lam, q = self._eig
                vals: tuple[Tensor, ...] = (lam, q)
            else:
                assert self._low is not None
                vals = (self._low.factor, self._low.diag)
            self._cast[key] = tuple(
                v.to(dtype=dtype, device=device)
                for v in (*vals, self._m, self.center.reshape(-1), self.scale.reshape(-1))
            )
        return self._cast[key]

    def _solve_shifted(self, v: Tensor, sigma: Tensor) -> Tensor:
        """:math:`(\\Sigma_z + \\sigma^2 I)^{-1} v` for ``v`` ``[B, D]``, ``sigma`` ``[B]``."""
        s2 = (sigma**2)[:, None]
        if self._eig is not None:
            lam, q = self._tensors(v.dtype, v.device)[:2]
            return ((v @ q) / (lam[None] + s2)) @ q.T
        f, dg = self._tensors(v.dtype, v.device)[:2]
        dinv = 1.0 / (dg[None] + s2)  # [B, D]
        return woodbury_solve(v, f, dinv, woodbury_capacitance(f, dinv))

    def _flat(self, z: Tensor, owner: str) -> tuple[Tensor, int]:
        length = z.shape[1] if z.ndim >= 2 else -1
        expected = self.event_shape(length) if 1 <= length <= self.window else None
        if z.ndim != 5 or expected is None or tuple(z.shape[1:]) != expected:
            raise ValueError(
                f"GaussianPrior.{owner}: expected [B, T<={self.window}, {', '.join(map(str, self.state_shape[1:]))}], "
                f"got {list(z.shape)}"
            )
        return z.reshape(z.shape[0], -1), length

    def _sigma(self, sigma: Tensor, batch: int, like: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
        return sigma.expand(batch) if sigma.ndim == 0 else sigma.reshape(batch)

    def denoise(self, z_t: Tensor, sigma: Tensor, times: np.ndarray | None = None) -> Tensor:
        """Exact :math:`E[z \\mid z_t]` for ``z_t`` ``[B, T', C, H, W]`` (``T' <= T``), ``sigma`` ``[B]`` or 0-d."""
        flat, length = self._flat(z_t, "denoise")
        if length != self.window:
            return self.marginal(length).denoise(z_t, sigma, times)
        sig = self._sigma(sigma, z_t.shape[0], z_t)
        m = self._tensors(z_t.dtype, z_t.device)[2]
        out = flat - (sig**2)[:, None] * self._solve_shifted(flat - m, sig)
        return out.reshape(z_t.shape)

    def tweedie_cov_matvec(self, v: Tensor, sigma: Tensor) -> Tensor:
        """Exact :math:`\\mathrm{Cov}[z \\mid z_t]\\,v = \\sigma^2 (v - \\sigma^2 (\\Sigma_z+\\sigma^2)^{-1} v)`."""
        flat, length = self._flat(v, "tweedie_cov_matvec")
        if length != self.window:
            return self.marginal(length).tweedie_cov_matvec(v, sigma)
        sig = self._sigma(sigma, v.shape[0], v)
        s2 = (sig**2)[:, None]
        return (s2 * (flat - s2 * self._solve_shifted(flat, sig))).reshape(v.shape)

    def decode(self, z: Tensor) -> Tensor:
        """``x = c + s * z`` ``[B, T', C, H, W]`` in physical units."""
        flat, _ = self._flat(z, "decode")
        n = flat.shape[1]
        _, _, _, c, s = self._tensors(z.dtype, z.device)
        return (c[:n] + s[:n] * flat).reshape(z.shape)

    def linearize_decode(self, z: Tensor, graph: bool = False) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``decode(z)`` and its tangent map ``v -> s * v`` (the decoder is affine); ``graph=True``: ``decode(z)``
        keeps its autograd graph from ``z``."""
        x = self.decode(z if graph else z.detach())
        flat, _ = self._flat(z, "linearize_decode")
        s = self._tensors(z.dtype, z.device)[4][: flat.shape[1]]
        return x, lambda v: (s.to(v.dtype) * v.reshape(v.shape[0], -1)).reshape(v.shape)

    def encode(self, x: Tensor) -> Tensor:
        """``z = (x - c) / s``."""
        flat, _ = self._flat(x, "encode")
        n = flat.shape[1]
        _, _, _, c, s = self._tensors(x.dtype, x.device)
        return ((flat - c[:n]) / s[:n]).reshape(x.shape)

    # ------------------------------------------------------------------ Gaussian algebra
    def dense_cov(self) -> Tensor:
        """:math:`\\Sigma` ``[D, D]`` float64 (physical units)."""
        return self.cov.dense() if isinstance(self.cov, LowRankDiag) else self.cov

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` exact prior draws ``[n, T, C, H, W]`` (physical units, float64)."""
        s = self.scale.reshape(-1)
        if self._eig is not None:
            lam, q = self._eig
            e = torch.randn(n, lam.numel(), generator=generator, dtype=torch.float64)
            z = (e * lam.sqrt()) @ q.T
        else:
            assert self._low is not None
            f, dg = self._low.factor, self._low.diag
            e1 = torch.randn(n, f.shape[1], generator=generator, dtype=torch.float64)
            e2 = torch.randn(n, dg.numel(), generator=generator, dtype=torch.float64)
            z = e1 @ f.T + e2 * dg.sqrt()
        return (self.mean.reshape(-1) + s * z).reshape(n, *self.state_shape)

    def condition(self, H: object, y: object, R: object, b: object | None = None) -> GaussianPrior:
        r"""The exact posterior given :math:`y = H x + b + \eta`, :math:`\eta \sim \mathcal{N}(0, R)` (Kalman).

        Args:
            H: ``[M, D]`` (dense array/tensor or scipy sparse) acting on ``x.reshape(-1)`` in physical units.
            y: ``[M]``; R: ``[M, M]`` (or ``[M]`` variances); b: offset ``[M]``.

        Returns:
            A dense ``GaussianPrior`` with :math:`\mu_y = \mu + K(y - H\mu - b)`, :math:`\Sigma_y = \Sigma - K H
            \Sigma`, :math:`K = \Sigma H^\top (H \Sigma H^\top + R)^{-1}`, and the **same centre and scale**
            (so its diffusion space is this prior's, and its denoiser is the exact guided denoiser).
        """
        h = torch.as_tensor(H.toarray() if hasattr(H, "toarray") else np.asarray(H), dtype=torch.float64)
        yv = _as_f64(y).reshape(-1)
        rr = _as_f64(R)
        rr = torch.diag(rr) if rr.ndim == 1 else rr
        bv = torch.zeros_like(yv) if b is None else _as_f64(b).reshape(-1)
        sig = self.dense_cov()
        mu = self.mean.reshape(-1)
        sht = sig @ h.T
        s_y = h @ sht + rr
        k = torch.linalg.solve(s_y, sht.T).T
        mu_post = mu + k @ (yv - h @ mu - bv)
        cov_post = sig - k @ sht.T
        cov_post = 0.5 * (cov_post + cov_post.T)
        return GaussianPrior(
            mu_post.reshape(self.state_shape), cov_post, self.grid, self.spec, self.timestep, self.schedule,
            center=self.center, scale=self.scale, dtype=self.dtype,
        )  # fmt: skip

    # ------------------------------------------------------------------ climatology
    @classmethod
    def from_data(
        cls,
        samples: object,
        grid: Grid,
        spec: StateSpec,
        rank: int | None = None,
        localization: float | None = None,
        timestep: np.timedelta64 = _SIX_HOURS,
        schedule: Schedule | None = None,
        min_var: float = 1e-3,
        dtype: torch.dtype = torch.float64,
    ) -> GaussianPrior:
        r"""Climatological prior (the optimal-interpolation baseline) from training states.

        Args:
            samples: ``[N, T, C, H, W]`` physical units (``N >= 2``), e.g. windows from ``TrajectoryWindows``.
            rank: keep the ``rank`` leading principal components of the standardized anomalies and a diagonal
                remainder, :math:`\Sigma_z = F F^\top + \mathrm{diag}(\max(1 - \|F_i\|^2, \text{min\_var}))`
                (unit variances preserved); ``None``: dense sample correlation.
            localization: Gaspari-Cohn half-width in km applied (Schur product) to the horizontal part of the dense
                sample correlation (same taper for every time and channel pair); dense only (``rank=None``).
            min_var: floor of the diagonal remainder (standardized units).

        Returns:
            A ``GaussianPrior`` with the sample mean and per-element sample std as centre/scale.
        """
        x = _as_f64(samples)
        if x.ndim != 5 or x.shape[0] < 2:
            raise ValueError(
                f"GaussianPrior.from_data: field 'samples' must be [N >= 2, T, C, H, W], got {list(x.shape)}"
            )
        n = x.shape[0]
        mean = x.mean(0)
        anom = (x - mean).reshape(n, -1)
        std = anom.std(0, correction=1).clamp_min(1e-12)
        xs = anom / std / math.sqrt(n - 1)  # [N, D]
        d = xs.shape[1]
        if rank is not None:
            if localization is not None:
                raise ValueError("GaussianPrior.from_data: 'localization' needs the dense form (rank=None)")
            if not 1 <= rank <= n:
                raise ValueError(f"GaussianPrior.from_data: field 'rank' has value {rank}; must be in [1, N={n}]")
            _, sv, vh = torch.linalg.svd(xs, full_matrices=False)
            f = vh[:rank].T * sv[:rank]
            diag = (1.0 - (f**2).sum(-1)).clamp_min(min_var)
            cov: Tensor | LowRankDiag = LowRankDiag(f * std[:, None], diag * std**2)
        else:
            if d > _MAX_DENSE:
                raise ValueError(f"GaussianPrior.from_data: D = {d} > {_MAX_DENSE} for a dense covariance; give 'rank'")
            corr = xs.T @ xs
            if localization is not None:
                taper_hw = torch.as_tensor(gaspari_cohn(_great_circle_km(grid) / float(localization)))
                tc = d // taper_hw.shape[0]
                corr = corr * torch.kron(torch.ones(tc, tc, dtype=torch.float64), taper_hw)
            corr = corr + min_var * torch.eye(d, dtype=torch.float64)
            cov = corr * std[:, None] * std[None, :]
        return cls(mean, cov, grid, spec, timestep, schedule, dtype=dtype)
