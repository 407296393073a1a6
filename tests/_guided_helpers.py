"""Tiny observation operators and Gaussian priors for the sampler tests (no dependency on operators/)."""

from __future__ import annotations

import attrs
import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.obs.base import ObsOperator, SparseLinearOperator
from appa_core.obs.errors import DiagonalGaussian, NoiseModel
from appa_core.priors.gaussian import GaussianPrior
from appa_core.spec import StateSpec

T0 = np.datetime64("2021-03-21T00:00", "ns")
DT = np.timedelta64(6, "h")


def window_times(n: int, start: np.datetime64 = T0) -> np.ndarray:
    return (start + np.arange(n) * DT).astype("datetime64[ns]")


@attrs.define(kw_only=True, eq=False)
class PointPick(SparseLinearOperator):
    """Observes flat state entries ``x[b].reshape(-1)[index]`` (optionally scaled by ``weight``)."""

    index: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.int64))
    obs: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.float64))
    weight: float = 1.0

    def validate(self) -> None:
        if self.index.shape != self.obs.shape:
            raise ValueError(f"PointPick: field 'index' has {self.index.size} values but 'obs' {self.obs.size}")

    @property
    def size(self) -> int:
        return int(self.index.size)

    @property
    def values(self) -> Tensor:
        return torch.as_tensor(self.obs)

    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
        d = times.size * spec.n_channels * grid.shape[0] * grid.shape[1]
        if self.index.max() >= d:
            raise ValueError(f"PointPick: field 'index' has value {self.index.max()} outside the state (D={d})")
        a = sp.csr_array((np.full(self.size, self.weight), (np.arange(self.size), self.index)), shape=(self.size, d))
        self._set_matrix(a)


@attrs.define(kw_only=True, eq=False)
class MaskedMean(SparseLinearOperator):
    """Each row averages the state over a boolean mask ``[T, C, H, W]`` (rows = masks)."""

    masks: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=bool))
    obs: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.float64))

    @property
    def size(self) -> int:
        return int(self.obs.size)

    @property
    def values(self) -> Tensor:
        return torch.as_tensor(self.obs)

    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
        flat = self.masks.reshape(self.size, -1).astype(np.float64)
        flat = flat / flat.sum(1, keepdims=True)
        self._set_matrix(sp.csr_array(flat))


@attrs.define(kw_only=True, eq=False)
class WindSpeed(ObsOperator):
    """Nonlinear: sqrt(u^2 + v^2) at flat positions (t, h, w), channels ``cu``, ``cv``."""

    where: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.int64))  # [M, 3] (t, h, w)
    obs: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.float64))
    cu: int = 0
    cv: int = 1

    @property
    def size(self) -> int:
        return int(self.obs.size)

    @property
    def values(self) -> Tensor:
        return torch.as_tensor(self.obs)

    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
        if self.where[:, 0].max() >= times.size:
            raise ValueError(f"WindSpeed: field 'where' has time index {self.where[:, 0].max()} outside the window")

    def forward(self, x: Tensor) -> Tensor:
        t, h, w = (torch.as_tensor(self.where[:, i]) for i in range(3))
        u = x[:, t, self.cu, h, w]
        v = x[:, t, self.cv, h, w]
        return torch.sqrt(u * u + v * v)


def make_spec() -> StateSpec:
    return StateSpec(surface=("10m_u_component_of_wind", "10m_v_component_of_wind", "2m_temperature"))


def random_cov(d: int, gen: torch.Generator, corr_len: float = 2.0) -> Tensor:
    """A well-conditioned dense SPD covariance: smooth kernel plus a random low-rank part plus a nugget."""
    i = torch.arange(d, dtype=torch.float64)
    k = torch.exp(-((i[:, None] - i[None]) ** 2) / (2 * corr_len**2))
    f = torch.randn(d, 5, generator=gen, dtype=torch.float64) * 0.3
    return k + f @ f.T + 0.05 * torch.eye(d, dtype=torch.float64)


def ar1_prior(
    window: int, grid: Grid, spec: StateSpec, rho: float = 0.8, gen: torch.Generator | None = None
) -> GaussianPrior:
    """Stationary AR(1)-in-time Gaussian prior: Sigma = R_time (x) Sigma_space, R_ij = rho^|i-j|."""
    gen = gen or torch.Generator().manual_seed(0)
    n = spec.n_channels * grid.shape[0] * grid.shape[1]
    s_space = random_cov(n, gen)
    idx = torch.arange(window, dtype=torch.float64)
    r_time = rho ** (idx[:, None] - idx[None]).abs()
    cov = torch.kron(r_time, s_space)
    mean = torch.zeros(window, spec.n_channels, *grid.shape, dtype=torch.float64)
    mean[:, 2] = 280.0
    scale = torch.tensor([3.0, 3.0, 5.0], dtype=torch.float64)[None, :, None, None].expand_as(mean)
    cov = cov * scale.reshape(-1)[:, None] * scale.reshape(-1)[None]
    return GaussianPrior(mean, cov, grid, spec, timestep=DT)


def noise_of(std: float | np.ndarray) -> NoiseModel:
    return DiagonalGaussian(std)


def tiny_latent_prior(seed: int = 0, latent_stats: bool = True):  # type: ignore[no-untyped-def]
    """The ``tiny`` preset's latent ``Prior`` with random (non-zero) denoiser output weights and plausible state
    statistics; ``latent_stats``: non-trivial latent mean and std (else the defaults)."""
    from appa_core.data.stats import NormStats
    from appa_core.nn.presets import build, get_preset
    from appa_core.priors.latent import Prior

    torch.manual_seed(seed)
    p = get_preset("tiny")
    ae, den = build(p)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for prm in den.parameters():
            if prm.abs().max() == 0:
                prm.copy_(0.05 * torch.randn(prm.shape, generator=g))
    n = p.spec.n_channels
    stats = NormStats(spec=p.spec, mean=np.linspace(250, 290, n), std=np.linspace(5, 10, n))
    latent = {}
    if latent_stats:
        c = p.autoencoder.latent_channels
        latent = {"latent_mean": torch.linspace(-0.1, 0.1, c), "latent_std": torch.linspace(0.5, 1.5, c)}
    return Prior(ae, den, stats, p.make_grid(), p.spec, timestep=p.timestep, preset="tiny", **latent)
