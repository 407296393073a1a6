"""Diffusion core: sigma grid, Adams-Bashforth coefficients, blankets, samplers on exact Gaussian denoisers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from appa_core.diffusion.blanket import Blanket
from appa_core.diffusion.integrators import (
    DDIMSampler,
    LMSSampler,
    PCSampler,
    adams_bashforth_coefficients,
    init_noise,
    make_sampler,
    sigma_grid,
)
from appa_core.diffusion.schedule import LogLinearSchedule, RectifiedSchedule


def test_sigma_grid_endpoints() -> None:
    for sched in (LogLinearSchedule(), RectifiedSchedule()):
        s = sigma_grid(sched, 8)
        assert s.shape == (9,)
        assert torch.allclose(s[[0, -1]], torch.tensor([1e3, 1e-3], dtype=torch.float64), rtol=1e-9)
        assert bool((s[1:] < s[:-1]).all())


@pytest.mark.parametrize("nodes", [[1.0], [1.0, 2.5], [0.3, 0.7, 2.0], [1e-2, 3e-2, 1e-1, 0.5]])
def test_adams_bashforth_integrates_polynomials_exactly(nodes: list[float]) -> None:
    a, b = nodes[0], nodes[0] * 0.4
    c = adams_bashforth_coefficients(nodes, a, b)
    for k in range(len(nodes)):
        exact = (b ** (k + 1) - a ** (k + 1)) / (k + 1)
        assert abs(sum(ci * s**k for ci, s in zip(c, nodes, strict=True)) - exact) < 1e-13 * max(1, abs(a) ** k)


def test_adams_bashforth_no_nodes() -> None:
    assert adams_bashforth_coefficients([], 1.0, 0.5).shape == (0,)


def test_ab3_known_coefficients_uniform_grid() -> None:
    # classic AB3 on a uniform grid with step h: (23, -16, 5) / 12 * h
    c = adams_bashforth_coefficients([2.0, 3.0, 4.0], 2.0, 1.0)
    np.testing.assert_allclose(c, np.array([23, -16, 5]) / 12 * -1.0, rtol=1e-13)


def test_blanket_layout_partitions_and_folds() -> None:
    bl = Blanket(48, 24, 12)
    assert bl.starts == [0, 12, 24]
    assert bl.keep == [(0, 18), (18, 30), (30, 48)]  # Appa's symmetrical mode
    for length, k, ov in [(9, 4, 2), (10, 4, 1), (7, 3, 0), (5, 8, 4), (13, 5, 3), (6, 1, 0)]:
        bl = Blanket(length, k, ov)
        keep = bl.keep
        assert keep[0][0] == 0 and keep[-1][1] == length
        assert all(a[1] == b[0] for a, b in itertools.pairwise(keep))
        assert all(s <= lo and hi <= s + bl.size for s, (lo, hi) in zip(bl.starts, keep, strict=True))
        x = torch.arange(2 * length, dtype=torch.float64).reshape(2, length)
        assert torch.equal(bl.fold(bl.unfold(x)), x)
    with pytest.raises(ValueError, match=r"Blanket: field 'overlap'"):
        Blanket(10, 4, 4)


def _gauss_denoiser(lam: torch.Tensor):  # type: ignore[no-untyped-def]
    """Exact E[x|x_t] for x ~ N(0, diag(lam)) and its closed-form marginal at every sigma."""

    def d(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma[:, None] ** 2
        return lam / (lam + s2) * x

    return d


@pytest.mark.parametrize(
    ("sampler", "steps", "tol"),
    [
        (LMSSampler(), 64, 0.03),
        (LMSSampler(), 256, 0.01),
        (DDIMSampler(eta=0.0), 256, 0.03),
        (PCSampler(), 128, 0.03),
        (DDIMSampler(eta=1.0), 256, 0.04),
    ],
)
def test_samplers_reach_the_gaussian_target(sampler, steps: int, tol: float) -> None:  # type: ignore[no-untyped-def]
    """Output std of N(0, diag(lam)) by Monte Carlo with 20k members (MC sd of a std ratio: 0.5%); the tolerance
    is the discretisation error, which shrinks with the number of steps."""
    lam = torch.tensor([0.05, 0.3, 1.0, 4.0], dtype=torch.float64)
    sigmas = sigma_grid(LogLinearSchedule(), steps)
    g = torch.Generator().manual_seed(0)
    x = init_noise((20000, 4), float(sigmas[0]), g, torch.float64)
    out = sampler(_gauss_denoiser(lam), x, sigmas, g)
    ratio = out.var(0) / (lam + 1e-6)
    assert float((ratio.sqrt() - 1).abs().max()) < tol, ratio


def test_sampler_seeded_and_batch_independent() -> None:
    lam = torch.tensor([0.5, 2.0], dtype=torch.float64)
    sigmas = sigma_grid(LogLinearSchedule(), 8)
    for name in ("pc", "ddim", "lms"):
        s = make_sampler(name, eta=1.0)
        runs = []
        for _ in range(2):
            g = torch.Generator().manual_seed(3)
            x = init_noise((5, 2), float(sigmas[0]), g, torch.float64)
            runs.append(s(_gauss_denoiser(lam), x, sigmas, g))
        assert torch.equal(runs[0], runs[1])
    # deterministic samplers act on each member independently
    g = torch.Generator().manual_seed(4)
    x = init_noise((5, 2), float(sigmas[0]), g, torch.float64)
    full = LMSSampler()(_gauss_denoiser(lam), x, sigmas)
    one = LMSSampler()(_gauss_denoiser(lam), x[2:3], sigmas)
    assert torch.allclose(full[2:3], one, atol=1e-12)


def test_make_sampler_rejects_unknown() -> None:
    with pytest.raises(ValueError, match=r"make_sampler: field 'sampler' has value 'euler'"):
        make_sampler("euler")
    with pytest.raises(ValueError, match=r"LMSSampler: field 'order'"):
        LMSSampler(order=7)
