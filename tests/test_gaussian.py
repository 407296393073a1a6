"""GaussianPrior: exact denoiser and Tweedie covariance, low-rank form, Kalman conditioning, climatology."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _guided_helpers import DT, ar1_prior, make_spec, random_cov

from appa_core.grid import Grid
from appa_core.priors.gaussian import GaussianPrior, LowRankDiag, gaspari_cohn

GRID = Grid.equiangular(3, 4)
SPEC = make_spec()


def _prior(window: int = 2) -> GaussianPrior:
    return ar1_prior(window, GRID, SPEC, rho=0.6, gen=torch.Generator().manual_seed(1))


def test_denoiser_matches_closed_form_and_tweedie_is_sigma2_jacobian() -> None:
    p = _prior()
    d = p.dim
    s = p.scale.reshape(-1)
    cz = p.dense_cov() / s[:, None] / s[None]
    m = ((p.mean - p.center) / p.scale).reshape(-1)
    g = torch.Generator().manual_seed(0)
    for sigma in (1e-2, 0.5, 30.0):
        zt = torch.randn(1, *p.state_shape, generator=g, dtype=torch.float64) * (1 + sigma)
        exact = m + cz @ torch.linalg.solve(cz + sigma**2 * torch.eye(d, dtype=torch.float64), zt.reshape(-1) - m)
        got = p.denoise(zt, torch.tensor(sigma, dtype=torch.float64))
        assert float((got.reshape(-1) - exact).abs().max()) < 1e-11
        sig_t = torch.tensor(sigma)
        jac = torch.autograd.functional.jacobian(lambda z, s=sig_t: p.denoise(z, s).reshape(-1), zt)
        jac = jac.reshape(d, d)
        v_t = sigma**2 * cz @ torch.linalg.inv(cz + sigma**2 * torch.eye(d, dtype=torch.float64))
        assert float((sigma**2 * jac - v_t).abs().max()) < 1e-10
        assert float((jac - jac.T).abs().max()) < 1e-12
        v = torch.randn(1, *p.state_shape, generator=g, dtype=torch.float64)
        tw = p.tweedie_cov_matvec(v, torch.tensor([sigma], dtype=torch.float64)).reshape(-1)
        assert float((tw - v_t @ v.reshape(-1)).abs().max()) < 1e-10


def test_low_rank_form_equals_dense() -> None:
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(1, 3, *GRID.shape, generator=g, dtype=torch.float64) + 10
    d = mean.numel()
    f = torch.randn(d, 4, generator=g, dtype=torch.float64)
    dg = torch.rand(d, generator=g, dtype=torch.float64) + 0.1
    low = GaussianPrior(mean, LowRankDiag(f, dg), GRID, SPEC)
    dense = GaussianPrior(mean, f @ f.T + torch.diag(dg), GRID, SPEC)
    zt = torch.randn(3, *low.state_shape, generator=g, dtype=torch.float64)
    sig = torch.tensor([0.01, 1.0, 100.0], dtype=torch.float64)
    assert float((low.denoise(zt, sig) - dense.denoise(zt, sig)).abs().max()) < 1e-10
    assert float((low.tweedie_cov_matvec(zt, sig) - dense.tweedie_cov_matvec(zt, sig)).abs().max()) < 1e-9
    x = low.sample(4000, torch.Generator().manual_seed(0)).reshape(4000, -1)
    assert float((x.var(0) / low.dense_cov().diagonal() - 1).abs().max()) < 0.12  # 4000 draws: sd 0.022


def test_encode_decode_roundtrip_and_marginal() -> None:
    p = _prior(window=3)
    x = p.sample(2, torch.Generator().manual_seed(0))
    assert torch.allclose(p.decode(p.encode(x)), x, atol=1e-10)
    m = p.marginal(2)
    assert m.window == 2 and m.state_shape == (2, *p.state_shape[1:])
    zt = torch.randn(2, *m.state_shape, dtype=torch.float64)
    assert torch.allclose(p.denoise(zt, torch.tensor(0.7)), m.denoise(zt, torch.tensor(0.7)))
    with pytest.raises(ValueError, match=r"GaussianPrior: length 4 outside \[1, 3\]"):
        p.event_shape(4)
    with pytest.raises(ValueError, match=r"GaussianPrior: field 'mean' must have shape"):
        GaussianPrior(torch.zeros(2, 3), torch.eye(6), GRID, SPEC)


def test_condition_is_the_kalman_update() -> None:
    p = _prior()
    g = torch.Generator().manual_seed(5)
    h = torch.randn(7, p.dim, generator=g, dtype=torch.float64)
    r = torch.diag(torch.rand(7, generator=g, dtype=torch.float64) + 0.1)
    y = torch.randn(7, generator=g, dtype=torch.float64) * 3
    post = p.condition(h, y, r)
    # information form: P^-1 = S^-1 + H^T R^-1 H, mu = P (S^-1 mu0 + H^T R^-1 y)
    s_inv = torch.linalg.inv(p.dense_cov())
    prec = s_inv + h.T @ torch.linalg.inv(r) @ h
    cov = torch.linalg.inv(prec)
    mu = cov @ (s_inv @ p.mean.reshape(-1) + h.T @ torch.linalg.inv(r) @ y)
    assert float((post.mean.reshape(-1) - mu).abs().max()) < 1e-8
    assert float((post.dense_cov() - cov).abs().max()) < 1e-8
    assert torch.equal(post.center, p.center) and torch.equal(post.scale, p.scale)


def test_from_data_climatology() -> None:
    truth = _prior(window=1)
    x = truth.sample(3000, torch.Generator().manual_seed(0))
    clim = GaussianPrior.from_data(x, GRID, SPEC, timestep=DT)
    sd = truth.dense_cov().diagonal().sqrt()
    assert float(((clim.mean - truth.mean).reshape(-1) / sd).abs().max()) < 0.1  # MC sd 0.018
    rel = (clim.dense_cov() - truth.dense_cov()) / (sd[:, None] * sd[None])
    assert float(rel.abs().max()) < 0.1
    low = GaussianPrior.from_data(x, GRID, SPEC, rank=8)
    assert isinstance(low.cov, LowRankDiag) and low.cov.factor.shape[1] == 8
    np.testing.assert_allclose(
        low.cov.diagonal().numpy(), clim.dense_cov().diagonal().numpy(), rtol=2e-3
    )  # dense adds a 1e-3 nugget
    loc = GaussianPrior.from_data(x[:50], GRID, SPEC, localization=3000.0)
    c = loc.dense_cov()
    # points 180 degrees apart on the equator (> 2 half-widths) are decorrelated by the taper
    n_hw = GRID.shape[0] * GRID.shape[1]
    i, j = 1 * GRID.shape[1] + 0, 1 * GRID.shape[1] + 2
    assert float(c[i, j]) == 0.0 and float(c[i + n_hw, j]) == 0.0
    assert gaspari_cohn(np.array([0.0, 2.0, 3.0])).tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match=r"GaussianPrior.from_data: field 'rank' has value 0"):
        GaussianPrior.from_data(x[:10], GRID, SPEC, rank=0)


def test_random_cov_helper_is_spd() -> None:
    c = random_cov(20, torch.Generator().manual_seed(0))
    assert float(torch.linalg.eigvalsh(c).min()) > 0.04
