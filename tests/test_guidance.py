"""Guidance: Krylov solvers, MMPS exactness on Gaussian problems, DPS, failure reporting, nonlinear operators."""

from __future__ import annotations

import types

import attrs
import numpy as np
import pytest
import torch
from _guided_helpers import DT, T0, MaskedMean, PointPick, WindSpeed, ar1_prior, make_spec, window_times

from appa_core.diffusion.integrators import init_noise, make_sampler, sigma_grid
from appa_core.distributed import member_generators
from appa_core.grid import Grid
from appa_core.guidance import MMPS, GuidanceError, ObservationMap, guided_denoiser
from appa_core.linalg import cg, gmres
from appa_core.obs import ObsSet
from appa_core.obs.errors import CorrelatedGaussian, DiagonalGaussian, Huber
from appa_core.priors.gaussian import GaussianPrior, LowRankDiag
from appa_core.sampler import Sampler

GRID = Grid.equiangular(4, 5)
SPEC = make_spec()
F64 = torch.float64


# ---------------------------------------------------------------------- linalg
@pytest.mark.parametrize("solver", [cg, gmres])
def test_krylov_solvers_batched_float64(solver) -> None:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 25, 25, generator=g, dtype=F64)
    a = q @ q.transpose(-1, -2) + 0.5 * torch.eye(25, dtype=F64)
    b = torch.randn(3, 25, generator=g, dtype=F64)
    b[1] = 0.0
    x, info = solver(lambda v: (a @ v[..., None])[..., 0], b, tol=1e-11, maxiter=200)
    assert info.converged and float(info.residual.max()) <= 1e-11
    assert float((x - torch.linalg.solve(a, b)).abs().max()) < 1e-8
    assert float(x[1].abs().max()) == 0.0
    x, info = solver(lambda v: (a @ v[..., None])[..., 0], b.float(), tol=1e-3, maxiter=2)
    assert not info.converged and info.iterations == 2 and x.dtype == torch.float32
    x, info = solver(lambda v: (a @ v[..., None])[..., 0], b, tol=None, maxiter=3)
    assert info.converged and info.iterations == 3


@pytest.mark.parametrize("maxiter", [15, 1])
@pytest.mark.parametrize("solver", [cg, gmres])
@pytest.mark.parametrize("start", ["zero", "x0", "scaled x0"])
def test_krylov_coefficients_rebuild_the_solution_from_the_product_inputs(solver, start: str, maxiter: int) -> None:  # type: ignore[no-untyped-def]
    """``SolveInfo.coefficients``: the solution is the combination of the vectors ``A`` was called with (what MMPS
    uses to get its step without a VJP), with systems frozen at different iterations."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(3, 20, 20, generator=g, dtype=F64)
    a = q @ q.transpose(-1, -2) + 0.5 * torch.eye(20, dtype=F64)
    b = torch.randn(3, 20, generator=g, dtype=F64)
    b[1] = a[1] @ torch.ones(20, dtype=F64)  # this one converges in one step from x0 = ones
    _, vec = torch.linalg.eigh(a[2])
    b[2] = vec[:, :2] @ torch.tensor([1.0, 2.0], dtype=F64)  # two eigenvectors: frozen after 2 iterations from zero
    inputs: list[torch.Tensor] = []

    def op(v: torch.Tensor) -> torch.Tensor:
        inputs.append(v.clone())
        return (a @ v[..., None])[..., 0]

    x0 = None if start == "zero" else torch.ones(3, 20, dtype=F64)
    x, info = solver(op, b, x0, tol=1e-6, maxiter=maxiter, scale_x0=start == "scaled x0")
    assert info.coefficients is not None and info.coefficients.shape == (3, len(inputs))
    rebuilt = (torch.stack(inputs, -1) * info.coefficients[:, None, :]).sum(-1)
    assert float((rebuilt - x).abs().max() / x.abs().max()) < 1e-12


def test_gmres_one_iteration_is_the_least_residual_step() -> None:
    """GMRES with maxiter=1 (computed in closed form) gives the least-residual multiple of r0's direction,
    min_y ||r0 - y A r0||, from zero and from a scaled x0 (numpy's least squares as the reference), reports the true
    residual, and freezes a system that has already converged (b = 0 with a tolerance: x = 0, no product)."""
    gen = torch.Generator().manual_seed(8)
    a = torch.randn(12, 12, generator=gen, dtype=F64) + 4 * torch.eye(12, dtype=F64)
    b = torch.randn(3, 12, generator=gen, dtype=F64)
    x0 = torch.randn(3, 12, generator=gen, dtype=F64)
    for start in (None, x0):
        x, info = gmres(lambda v: v @ a.T, b, start, tol=None, maxiter=1, scale_x0=True)
        for i in range(3):
            xs = np.zeros(12) if start is None else start[i].numpy()
            A, bi = a.numpy(), b[i].numpy()
            if start is not None:  # the scaled start: the least-residual multiple of x0
                w0 = A @ xs
                xs = xs * float(w0 @ bi / (w0 @ w0))
            r0 = bi - A @ xs
            y = np.linalg.lstsq((A @ r0)[:, None], r0, rcond=None)[0][0]
            np.testing.assert_allclose(x[i].numpy(), xs + y * r0, rtol=1e-10, atol=1e-12)
        true = b - x @ a.T
        torch.testing.assert_close(info.residual_vector, true, rtol=1e-10, atol=1e-12)
        assert info.iterations == 1 and info.converged
    for scale in (1e-200, 1e-160, 1e160):  # |A v|^2 would under/overflow float64: the step must not
        x, info = gmres(lambda v, s=scale: s * v, b[:1], tol=None, maxiter=1)
        torch.testing.assert_close(x, b[:1] / scale, rtol=1e-12, atol=0)
        assert float(info.residual.max()) < 1e-12
    b[1] = 0.0
    calls: list[torch.Tensor] = []
    x, info = gmres(lambda v: calls.append(v) or v @ a.T, b, tol=1e-3, maxiter=1)
    assert len(calls) == 1 and float(x[1].abs().max()) == 0.0 and not info.converged  # one step cannot reach 1e-3
    x, info = gmres(lambda v: calls.append(v) or v @ a.T, b[1:2], tol=1e-3, maxiter=1)
    assert len(calls) == 1 and info.iterations == 0 and info.converged  # nothing to solve: no product


def test_gmres_solves_nonsymmetric() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(30, 30, generator=g, dtype=F64) + 8 * torch.eye(30, dtype=F64)
    b = torch.randn(2, 30, generator=g, dtype=F64)
    x, info = gmres(lambda v: v @ a.T, b, tol=1e-12)
    assert info.converged and info.iterations <= 30
    assert float((x - torch.linalg.solve(a, b.T).T).abs().max()) < 1e-10


# ---------------------------------------------------------------------- Gaussian exactness
def _problem(prior: GaussianPrior, seed: int = 0) -> ObsSet:
    """Three operators, 34 observations, one with correlated noise."""
    g = np.random.default_rng(seed)
    t, (h, w) = prior.window, GRID.shape
    d = prior.dim
    truth = prior.sample(1, torch.Generator().manual_seed(seed))[0].reshape(-1).numpy()
    idx = g.choice(d, 20, replace=False)
    picks = PointPick(index=idx, obs=truth[idx] + g.normal(0, 0.5, 20), noise=DiagonalGaussian(0.5), name="picks")
    masks = np.zeros((8, t, 3, h, w), dtype=bool)
    for i in range(8):
        masks[i, i % t, 2, i % h, :] = True  # zonal-band mean of temperature
    m = torch.as_tensor(g.normal(size=(8, 8)) * 0.2)
    cov = m @ m.T + 0.3 * torch.eye(8, dtype=F64)
    zonal = MaskedMean(
        masks=masks, obs=np.full(8, 281.0) + g.normal(size=8), noise=CorrelatedGaussian(cov=cov), name="zonal"
    )
    idx2 = g.choice(d, 6, replace=False)
    picks2 = PointPick(index=idx2, obs=truth[idx2] * 2, weight=2.0, noise=DiagonalGaussian(np.linspace(0.3, 1, 6)))
    return ObsSet([picks, zonal, picks2]).prepare(GRID, SPEC, window_times(t))


def _priors() -> list[GaussianPrior]:
    dense = ar1_prior(2, GRID, SPEC, rho=0.7, gen=torch.Generator().manual_seed(0))  # D = 120
    g = torch.Generator().manual_seed(3)
    f = torch.randn(dense.dim, 6, generator=g, dtype=F64) * 2
    low = GaussianPrior(dense.mean, LowRankDiag(f, torch.full((dense.dim,), 0.5, dtype=F64)), GRID, SPEC, DT)
    return [dense, low]


@pytest.mark.parametrize("kind", [0, 1], ids=["dense", "lowrank"])
@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_mmps_equals_exact_posterior_denoiser(kind: int, solver: str) -> None:
    prior = _priors()[kind]
    obs = _problem(prior)
    assert obs.size == 34 and prior.dim >= 100
    post = prior.condition(obs.matrix(), obs.values, obs.noise.dense_cov())
    d = guided_denoiser(
        lambda z, s: prior.denoise(z, s), lambda z: obs(prior.decode(z)), obs.values, obs.noise,
        MMPS(solver=solver, maxiter=200, tol=1e-13),
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    errors = {}
    for sigma in (1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 1e3):
        z = prior.encode(prior.sample(3, g)) + sigma * torch.randn(3, *prior.state_shape, generator=g, dtype=F64)
        sig = torch.full((3,), sigma, dtype=F64)
        errors[sigma] = float((d(z, sig) - post.denoise(z, sig)).abs().max())
    # |z_t| grows like sigma: the error is relative to it at the largest noise levels
    assert all(e <= 1e-8 * max(1.0, s / 100) for s, e in errors.items()), errors


def test_guided_sampler_follows_the_exact_posterior_path() -> None:
    """Same seed, same sampler: MMPS-guided sampling == sampling the exact posterior denoiser, pathwise."""
    prior = _priors()[0]
    obs = _problem(prior)
    post = prior.condition(obs.matrix(), obs.values, obs.noise.dense_cov())
    for name in ("pc", "ddim", "lms"):
        smp = Sampler(
            prior, steps=6, sampler=name, eta=1.0, solver="cg", solver_iters=200, solver_tol=1e-12, progress=False
        )
        res = smp.sample(obs=list(obs), start=T0, length=prior.window, members=3, seed=7)
        g = member_generators(7, range(3))  # one stream per member, seeded by (seed, member)
        sigmas = sigma_grid(prior.schedule, 6)
        z = init_noise((3, *prior.state_shape), float(sigmas[0]), g, F64)
        ref = make_sampler(name, eta=1.0)(lambda z, s: post.denoise(z, s), z, sigmas, g)
        assert float((res.z - ref).abs().max()) < 1e-7, name


# ---------------------------------------------------------------------- failures
@attrs.define(kw_only=True, eq=False)
class _NaNMean(MaskedMean):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * float("nan")


def test_nonfinite_residual_names_the_operator() -> None:
    prior = _priors()[0]
    ops = list(_problem(prior))
    z = ops[1]
    ops[1] = _NaNMean(masks=z.masks, obs=z.obs, noise=z.noise, name="zonal")
    smp = Sampler(prior, steps=3, sampler="ddim", solver="cg", progress=False, qc=None)
    with pytest.raises(GuidanceError, match=r"step 0 \(sigma=1000\): the residual .* operator\(s\) \['zonal'\]"):
        smp.sample(obs=ops, start=T0, length=2, members=2, seed=0)
    # with quality control (the default) the operator is named before sampling starts
    with pytest.raises(GuidanceError, match=r"quality control: operator\(s\) \['zonal'\] predict non-finite values"):
        Sampler(prior, steps=3, progress=False).sample(obs=ops, start=T0, length=2, members=2, seed=0)


def test_unconverged_solve_is_reported() -> None:
    prior = _priors()[0]
    obs = _problem(prior)
    smp = Sampler(prior, steps=3, sampler="ddim", solver="cg", solver_iters=1, solver_tol=1e-8, progress=False)
    with pytest.warns(RuntimeWarning, match=r"did not reach tol=1e-08 in 3 of 3 .* worst at step \d.*picks"):
        smp.sample(obs=obs, start=T0, length=2, members=2, seed=0)
    smp = Sampler(prior, steps=3, sampler="ddim", solver_iters=1, solver_tol=1e-8, on_failure="raise", progress=False)
    with pytest.raises(GuidanceError, match=r"gmres solve did not reach tol=1e-08 .* step 0"):
        smp.sample(obs=obs, start=T0, length=2, members=2, seed=0)


def test_observation_outside_window_is_refused_up_front() -> None:
    prior = _priors()[0]
    op = PointPick(index=[prior.dim + 5], obs=[1.0], name="far")
    with pytest.raises(ValueError, match=r"PointPick: field 'index' has value 125"):
        Sampler(prior, steps=2, progress=False).sample(obs=[op], start=T0, length=2, members=1)


# ---------------------------------------------------------------------- DPS, IRLS
def test_dps_pulls_towards_the_observations() -> None:
    prior = _priors()[0]
    obs = _problem(prior)
    kw = dict(start=T0, length=2, members=8, seed=0)
    free = Sampler(prior, steps=16, sampler="ddim", guidance="none", progress=False).sample(**kw)
    dps = Sampler(prior, steps=16, sampler="ddim", guidance="dps", zeta=0.2, progress=False).sample(obs=obs, **kw)
    w = obs.noise.variance().rsqrt()
    r_free = float(((obs(free.x) - obs.values) * w).pow(2).mean())
    r_dps = float(((obs(dps.x) - obs.values) * w).pow(2).mean())
    assert r_dps < 0.2 * r_free, (r_dps, r_free)  # 12.6 vs 185 (MMPS: 0.85)


def test_irls_weights_enter_the_solve() -> None:
    """With a Huber model, MMPS equals Gaussian MMPS whose variances are divided by the IRLS weights, the weights
    being those of the residual standardised by the full innovation variance R + diag(H V_t H^T) (exact diagonal,
    ``probes=None``)."""
    prior = _priors()[0]
    times = window_times(2)
    idx = np.arange(0, 120, 6)
    y = np.where(np.arange(20) % 5 == 0, 50.0, 0.0)  # gross outliers on every 5th observation
    hub = PointPick(index=idx, obs=y, noise=Huber(0.5, c=1.5)).prepare(GRID, SPEC, times)
    obs = ObsSet([hub])
    observe = lambda z: obs(prior.decode(z))  # noqa: E731
    z = torch.zeros(1, *prior.state_shape, dtype=F64)
    sig = torch.tensor([0.3], dtype=F64)
    mmps = MMPS("cg", 200, 1e-12, probes=None)
    out = guided_denoiser(lambda z, s: prior.denoise(z, s), observe, obs.values, obs.noise, mmps)(z, sig)
    r = obs.values - observe(prior.denoise(z, sig).detach())
    # exact predicted variance: V_t = Cov[z | z_t] = (C^-1 + I / sigma^2)^-1 in the prior's standardized space
    s_z = prior.scale.reshape(-1)
    c_z = prior.dense_cov() / s_z[:, None] / s_z[None, :]
    v_t = torch.linalg.inv(torch.linalg.inv(c_z) + torch.eye(c_z.shape[0], dtype=F64) / 0.09)
    h = torch.as_tensor(obs.matrix().toarray()) * s_z[None, :]
    b = torch.diagonal(h @ v_t @ h.T)
    w = obs.noise.irls_weights(r * (0.25 / (0.25 + b)).sqrt())[0]
    var = 0.25 / w
    gauss = PointPick(index=idx, obs=y, noise=DiagonalGaussian(var.sqrt().numpy())).prepare(GRID, SPEC, times)
    post = prior.condition(gauss.matrix(), gauss.values, var)
    assert float(w.min()) < 0.2
    assert float((out - post.denoise(z, sig)).abs().max()) < 1e-9


# ---------------------------------------------------------------------- nonlinear operator
def test_wind_speed_posterior_matches_importance_sampling() -> None:
    """Nonlinear H = |(u, v)| on a 12-dim Gaussian prior, strong mean wind (|U| = 9 m/s, sd 1.5 m/s, so H is
    nearly linear over the prior). Reference: self-normalised importance sampling with 400k prior draws.
    MMPS linearises H at E[x|x_t], so it is approximate here: measured (64 LMS steps; the same at 256 steps, so
    it is the approximation, not the discretisation) max mean error 0.104 prior sd for a posterior shift of
    1.14 prior sd, max std error 0.023 prior sd; MC error of the 2000-member ensemble ~0.02 prior sd.
    Tolerances: mean 0.15, std 0.08 prior sd."""
    grid = Grid.equiangular(2, 2)
    g = torch.Generator().manual_seed(0)
    mean = torch.zeros(1, 3, 2, 2, dtype=F64)
    mean[:, 0], mean[:, 1], mean[:, 2] = 8.0, 4.0, 280.0
    a = torch.randn(12, 12, generator=g, dtype=F64) * 0.3
    corr = a @ a.T + torch.eye(12, dtype=F64)
    sd = torch.tensor([1.5] * 8 + [2.0] * 4, dtype=F64)
    dcorr = corr.diagonal().sqrt()
    cov = corr / dcorr[:, None] / dcorr[None] * sd[:, None] * sd[None]
    prior = GaussianPrior(mean, cov, grid, SPEC, DT)
    where = np.array([[0, 0, 0], [0, 1, 1], [0, 0, 1]])
    op = WindSpeed(where=where, obs=[11.0, 7.0, 9.5], noise=DiagonalGaussian(0.5), name="wspd")
    smp = Sampler(prior, steps=64, sampler="lms", solver="gmres", solver_iters=20, solver_tol=1e-10, progress=False)
    res = smp.sample(obs=[op], start=T0, length=1, members=2000, seed=1)
    x = res.x.reshape(2000, -1)
    # importance sampling reference
    xs = prior.sample(400_000, torch.Generator().manual_seed(2))
    op.prepare(grid, SPEC, window_times(1))
    logw = op.noise.log_prob(op.values - op(xs))
    w = torch.softmax(logw, 0)
    xs = xs.reshape(xs.shape[0], -1)
    ref_mean = (w[:, None] * xs).sum(0)
    ref_sd = (w[:, None] * (xs - ref_mean) ** 2).sum(0).sqrt()
    ess = float(1 / (w**2).sum())
    assert ess > 5000
    prior_sd = sd
    err_mean = ((x.mean(0) - ref_mean) / prior_sd).abs().max()
    err_sd = ((x.std(0) - ref_sd) / prior_sd).abs().max()
    assert float(err_mean) < 0.15 and float(err_sd) < 0.08, (float(err_mean), float(err_sd))
    # the observations moved the wind: the posterior is far from the prior at the observed points
    assert float((ref_mean[:8] - mean.reshape(-1)[:8]).abs().max()) > 1.0


def test_gmres_spends_one_product_per_iteration() -> None:
    """GMRES costs exactly one product with A per iteration, with or without a tolerance: the residual vector it
    reports (per-operator residuals) comes from the Arnoldi relation, not from an extra product (before: one more
    product with a tolerance, a third of the solve at 2 iterations), and equals the true residual to rounding."""
    from appa_core.linalg import gmres

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64) + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    for tol, maxiter in ((None, 2), (1e-3, 6)):
        calls: list[int] = []

        def matvec(v: torch.Tensor, calls: list[int] = calls) -> torch.Tensor:
            calls.append(1)
            return (a @ v[..., None])[..., 0]

        x, info = gmres(matvec, b, tol=tol, maxiter=maxiter)
        assert len(calls) == info.iterations and info.converged
        true = b - (a @ x[..., None])[..., 0]
        torch.testing.assert_close(info.residual_vector, true, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(info.residual, true.norm(dim=-1) / b.norm(dim=-1), rtol=1e-10, atol=1e-12)


def test_finite_check_names_the_operator_and_survives_an_overflowing_sum() -> None:
    """The guidance's finiteness check sums first (one reduction): a sum that overflows float32 while every value is
    finite passes (it falls back to the element-wise check), NaN and inf anywhere fail with the operator's name."""
    from appa_core.guidance.report import _check_finite

    names = {"a": slice(0, 2), "b": slice(2, 4)}
    big = torch.full((2, 4), 3e38, dtype=torch.float32)
    assert not torch.isfinite(big.sum())
    _check_finite(big, names, "the residual", "here")  # no error
    for bad in (float("nan"), float("inf"), -float("inf")):
        v = torch.zeros(2, 4)
        v[1, 3] = bad
        with pytest.raises(GuidanceError, match=r"here: the residual is non-finite for operator\(s\) \['b'\]"):
            _check_finite(v, names, "the residual", "here")


def test_gmres_breakdown_and_frozen_systems() -> None:
    """Arnoldi breakdowns (an exactly zero rotated column) and frozen systems:

    * a right-hand side in an invariant subspace (a unit vector of a diagonal A: exact arithmetic) exhausts its
      Krylov space after one step while another system of the batch needs 4; with and without a tolerance both get
      the exact solution, finite (the next column is exactly zero: the breakdown path runs);
    * a singular system (S e1 = 0, b = e1) breaks down at once: GMRES makes no progress there and must say so --
      not converged, x = 0, the residual |b| carried (an identity rotation reported convergence with x = e1)."""
    from appa_core.linalg import gmres

    d = torch.tensor([2.0, 3.0, 5.0, 7.0], dtype=torch.float64)
    b = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    for tol in (None, 1e-12):
        x, info = gmres(lambda v: v * d, b, tol=tol, maxiter=4)
        assert bool(torch.isfinite(x).all()) and info.converged
        torch.testing.assert_close(x, b / d, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(info.residual, torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    s = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    e1 = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    for tol, maxiter in ((1e-6, 3), (None, 3), (1e-6, 1), (None, 1)):
        x, info = gmres(lambda v: v @ s.T, e1, tol=tol, maxiter=maxiter)
        true = (e1 - x @ s.T).norm(dim=-1)
        assert bool(torch.isfinite(x).all())
        torch.testing.assert_close(info.residual, true, rtol=1e-12, atol=0)  # what it reports is what it reached
        assert float(true) == pytest.approx(1.0)
        if tol is not None:
            assert not info.converged


def test_solvers_do_not_alias_the_callers_right_hand_side() -> None:
    """With no iteration (b = 0 here, or maxiter reached at once) the residual vector a solver reports is r0 = b:
    a copy, not the caller's tensor."""
    from appa_core.linalg import cg, gmres

    for solver in (cg, gmres):
        b = torch.zeros(2, 5, dtype=torch.float64)
        _, info = solver(lambda v: 2 * v, b, tol=1e-6)
        assert info.iterations == 0 and info.residual_vector is not None and info.residual_vector is not b
        info.residual_vector.add_(1.0)
        assert float(b.abs().max()) == 0.0


def test_dps_divergence_is_reported() -> None:
    """Issue: DPS with a huge step size diverged unreported (finite but meaningless states)."""
    prior = _priors()[0]
    obs = _problem(prior)
    with pytest.raises(GuidanceError, match=r"DPS diverges: the guidance step is .* times the size of the state.*zeta"):
        Sampler(prior, steps=4, guidance="dps", zeta=1e9, progress=False, qc=None).sample(
            obs=obs, start=T0, length=2, members=2, seed=0
        )
    res = Sampler(prior, steps=4, guidance="dps", zeta=0.1, progress=False, qc=None).sample(
        obs=obs, start=T0, length=2, members=2, seed=0
    )
    assert bool(torch.isfinite(res.x).all())


# ---------------------------------------------------------------------- warm start
def _count_jvps(observe):  # type: ignore[no-untyped-def]
    """``observe`` wrapped to count its calls under forward-mode AD (one per product with the MMPS operator)."""
    calls = []

    def wrapped(z: torch.Tensor) -> torch.Tensor:
        if torch._C._functorch.is_functorch_wrapped_tensor(z):
            calls.append(1)
        return observe(z)

    return wrapped, calls


def test_warm_start_cuts_the_products_at_equal_error() -> None:
    """Along one LMS trajectory (24 steps), each solve started from the previous call's solution (rescaled) needs
    fewer products than a cold start at the same tolerance, and the final samples are as close to the exact
    posterior path (measured on this 34-observation problem: 380 vs 543 products at tol 1e-3, RMS errors 3.9e-4
    and 5.7e-4; on the benchmark's 200-observation problem the saving is 2-3x, docs/benchmarks.md)."""
    prior = _priors()[0]
    obs = _problem(prior)
    post = prior.condition(obs.matrix(), obs.values, obs.noise.dense_cov())
    sigmas = sigma_grid(prior.schedule, 24)
    z0 = init_noise((3, *prior.state_shape), float(sigmas[0]), member_generators(0, range(3)), F64)
    ref = make_sampler("lms")(lambda z, s: post.denoise(z, s), z0.clone(), sigmas)
    out = {}
    for warm in (True, False):
        observe, calls = _count_jvps(lambda z: obs(prior.decode(z)))
        d = guided_denoiser(prior.denoise, observe, obs.values, obs.noise, MMPS(tol=1e-3, maxiter=64, warm_start=warm))
        x = make_sampler("lms")(d, z0.clone(), sigmas)
        out[warm] = (len(calls), float((x - ref).pow(2).mean().sqrt()))
    (p_warm, e_warm), (p_cold, e_cold) = out[True], out[False]
    assert p_warm <= 0.75 * p_cold, out
    assert e_warm <= 1.5 * e_cold and e_warm < 1e-3, out


def test_scaled_initial_guess_is_free_and_exact_along_its_direction() -> None:
    """``scale_x0``: a guess of the right direction but the wrong size (the system's scale changed between
    diffusion steps) is rescaled with the one product a warm start costs anyway: exact here, 0 iterations."""
    from appa_core.linalg import solve

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(8, 8, generator=gen, dtype=F64)
    a = a @ a.T + 8 * torch.eye(8, dtype=F64)
    x_true = torch.randn(2, 8, generator=gen, dtype=F64)
    b = (a @ x_true[..., None])[..., 0]
    for method in ("cg", "gmres"):
        x, info = solve(method, lambda v: (a @ v[..., None])[..., 0], b, 0.25 * x_true, tol=1e-10, scale_x0=True)
        assert info.iterations == 0 and float((x - x_true).abs().max()) < 1e-12, method
        # unscaled, the same guess needs iterations
        _, info = solve(method, lambda v: (a @ v[..., None])[..., 0], b, 0.25 * x_true, tol=1e-10)
        assert info.iterations > 0, method


def test_warm_start_ignores_a_guess_of_another_shape() -> None:
    from appa_core.guidance import WarmStart

    w = WarmStart(torch.ones(2, 5))
    assert w.guess(torch.zeros(2, 5)) is not None and w.guess(torch.zeros(3, 5)) is None


def test_observation_map_through_decoder_equals_forward_mode_ad() -> None:
    """``ObservationMap.through_decoder``: on the latent prior, the guided output with the linearized decoder equals
    the one with ``torch.func.jvp`` of the whole map (linear and nonlinear operators); on a prior without
    ``linearize_decode`` it falls back to ``torch.func.jvp``."""
    from _guided_helpers import tiny_latent_prior

    prior = tiny_latent_prior()
    times = window_times(2)
    n, (h, w) = prior.spec.n_channels, prior.grid.shape
    d = n * h * w
    pick = PointPick(index=[3, d + 70, 2 * d - 11, 40], obs=[280.0, 275.0, 262.0, 281.0], noise=DiagonalGaussian(0.5))
    wspd = WindSpeed(where=[[0, 2, 3], [1, 5, 9]], obs=[11.0, 7.0], noise=DiagonalGaussian(0.5), name="wspd")
    obs = ObsSet([pick, wspd]).prepare(prior.grid, prior.spec, times)
    fast = ObservationMap.through_decoder(prior, obs)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(2, *prior.event_shape(2), generator=gen)
    assert fast.linearize(z) is not None
    torch.testing.assert_close(fast(z), obs(prior.decode(z)))
    sig = torch.tensor([0.8, 3.0])
    mmps = MMPS("gmres", 5, None, warm_start=False)

    def guided(observe) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return guided_denoiser(lambda zz, s: prior.denoise(zz, s), observe, obs.values, obs.noise, mmps)(z, sig)

    ae, counts = prior.autoencoder, {"decode": 0, "linearize": 0}
    decode, linearize = ae.decode, ae.linearize_decode
    ae.decode = lambda zz: (counts.__setitem__("decode", counts["decode"] + 1), decode(zz))[1]
    ae.linearize_decode = lambda zz, graph=False: (
        counts.__setitem__("linearize", counts["linearize"] + 1),
        linearize(zz, graph),
    )[1]
    import appa_core.nn.denoiser as denoiser_module

    math_kernel: list[object] = []
    sdpa_kernel = denoiser_module.sdpa_kernel
    denoiser_module.sdpa_kernel = lambda *k: (math_kernel.append(k), sdpa_kernel(*k))[1]  # type: ignore[assignment]
    try:
        a = guided(fast)
    finally:
        denoiser_module.sdpa_kernel = sdpa_kernel
    assert counts == {"decode": 0, "linearize": 1}  # one decoder pass: the observations and the tangent map
    assert math_kernel == []  # VJPs of the denoiser only: its fused attention kernels (first_order_only)
    del ae.decode, ae.linearize_decode
    b = guided(lambda zz: obs(prior.decode(zz)))
    assert float((b - z).abs().max()) > 1e-2
    assert float((a - b).abs().max() / (b - z).abs().max()) < 1e-4
    no_linearization = types.SimpleNamespace(decode=prior.decode)  # a prior without linearize_decode
    assert ObservationMap.through_decoder(no_linearization, obs).linearize(z) is None  # type: ignore[arg-type]
    # the Gaussian prior's (affine decoder) and the operators' tangent maps: torch.func.jvp's, to float64 rounding
    gauss = _priors()[0]
    gobs = ObsSet([PointPick(index=[0, 7, 30], obs=[1.0, 2.0, 3.0]), WindSpeed(where=[[0, 1, 1]], obs=[2.0])])
    gobs.prepare(GRID, SPEC, window_times(gauss.window))
    zg = torch.randn(2, *gauss.state_shape, dtype=F64, generator=gen)
    vg = torch.randn_like(zg)
    lin = ObservationMap.through_decoder(gauss, gobs).linearize(zg)
    ref = torch.func.jvp(lambda zz: gobs(gauss.decode(zz)), (zg,), (vg,))[1]
    torch.testing.assert_close(lin(vg), ref, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("solver", ["cg", "gmres"])
def test_mmps_step_from_the_products_equals_the_vjp(solver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """MMPS builds its step from the denoiser-space vectors of its products (no final VJP); it equals the step of
    the VJP to rounding, warm-started or not, and it is what runs."""
    import appa_core.guidance.mmps as guidance

    prior = _priors()[0]
    obs = _problem(prior)
    g = torch.Generator().manual_seed(2)
    z = prior.encode(prior.sample(2, g)) + 0.7 * torch.randn(2, *prior.state_shape, generator=g, dtype=F64)
    sig = torch.full((2,), 0.7, dtype=F64)
    used = []
    combine = guidance._from_products

    def counted(products, coefficients):  # type: ignore[no-untyped-def]
        out = combine(products, coefficients)
        used.append(out is not None and bool(out[1].all()))
        return out

    def run() -> torch.Tensor:
        d = guided_denoiser(
            lambda zz, s: prior.denoise(zz, s), lambda zz: obs(prior.decode(zz)), obs.values, obs.noise,
            MMPS(solver=solver, maxiter=6, tol=1e-3),
        )  # fmt: skip
        return torch.stack([d(z, sig), d(z, 0.9 * sig)])  # the second call starts warm

    monkeypatch.setattr(guidance, "_from_products", counted)
    fast = run()
    assert used == [True, True]
    monkeypatch.setattr(guidance, "_from_products", lambda products, coefficients: None)
    slow = run()
    assert float((fast - slow).abs().max() / (slow - z).abs().max()) < 1e-12


def test_decode_with_tangent_falls_back_to_two_passes() -> None:
    """``decode_with_tangent`` uses a prior's ``linearize_decode`` in one pass only when it takes ``graph`` and
    honours it; a callable object (unhashable: attrs' eq), a method without ``graph``, or one that ignores it and
    returns a detached primal give ``None`` (the guidance then decodes and linearizes apart), without an error."""
    from appa_core.guidance.observation_map import decode_with_tangent

    z = torch.randn(2, 3, requires_grad=True)

    @attrs.define
    class Lin:  # eq=True: unhashable
        def __call__(self, zz: torch.Tensor) -> tuple[torch.Tensor, object]:
            return zz.detach() * 2, lambda v: 2 * v

    class Ignores:
        def linearize_decode(self, zz: torch.Tensor, graph: bool = False) -> tuple[torch.Tensor, object]:
            return zz.detach() * 2, lambda v: 2 * v

    class Honours:
        def linearize_decode(self, zz: torch.Tensor, graph: bool = False) -> tuple[torch.Tensor, object]:
            return (zz if graph else zz.detach()) * 2, lambda v: 2 * v

    with torch.enable_grad():
        assert decode_with_tangent(types.SimpleNamespace(linearize_decode=Lin()), z) is None  # type: ignore[arg-type]
        assert decode_with_tangent(types.SimpleNamespace(linearize_decode=None), z) is None  # type: ignore[arg-type]
        assert decode_with_tangent(Ignores(), z) is None  # type: ignore[arg-type]
        x, dx_of = decode_with_tangent(Honours(), z)  # type: ignore[arg-type,misc]
    assert x.requires_grad and torch.equal(dx_of(torch.ones(2, 3)), 2 * torch.ones(2, 3))
