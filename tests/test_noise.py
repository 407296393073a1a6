"""Tests of the observation noise models (``appa_core.obs.errors``): normalisation by quadrature, closed-form scores and
IRLS weights against autograd and textbook formulas, sampling moments, and errors on bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from appa_core.obs.errors import BlockDiagonal, CorrelatedGaussian, DiagonalGaussian, Huber, NoiseModel, StudentT

DENSE_COV = [[2.0, 0.6, -0.3], [0.6, 1.0, 0.2], [-0.3, 0.2, 0.5]]
FACTOR = [[1.0, 0.2], [0.5, -0.4], [-0.3, 0.8]]
DIAG = [0.3, 0.5, 0.2]


def _models_1d() -> dict[str, NoiseModel]:
    return {
        "gauss": DiagonalGaussian(1.7),
        "huber": Huber(2.0),
        "huber-small-c": Huber(0.5, c=0.3),
        "huber-large-c": Huber(1.0, c=3.0),
        "cauchy": StudentT(1.5, 1.0),
        "student4": StudentT(1.0, 4.0),
        "student30": StudentT(0.7, 30.0),
    }


def _models_3() -> dict[str, NoiseModel]:
    """Sized models with M = 3 (per-observation scales where applicable)."""
    return {
        "gauss": DiagonalGaussian([0.5, 1.0, 2.0]),
        "huber": Huber([0.5, 1.0, 2.0], c=1.0),
        "student": StudentT([0.5, 1.0, 2.0], 10.0),
        "dense": CorrelatedGaussian(cov=DENSE_COV),
        "lowrank": CorrelatedGaussian(factor=FACTOR, diag=DIAG),
        "block": BlockDiagonal([Huber(1.0, c=1.5).expand(1), CorrelatedGaussian(cov=[[1.0, 0.4], [0.4, 0.8]])]),
    }


# ---------------------------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("name", list(_models_1d()))
def test_log_prob_normalises_1d(name: str) -> None:
    model = _models_1d()[name].expand(1)

    def density(r: float) -> float:
        return math.exp(model.log_prob(torch.tensor([r], dtype=torch.float64)).item())

    total, err = integrate.quad(density, -np.inf, np.inf, limit=200)
    assert err < 1e-7
    assert total == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize(
    ("model", "half_width", "kinks"),
    [
        (CorrelatedGaussian(cov=[[1.5, 0.7], [0.7, 0.8]]), 15.0, None),
        (CorrelatedGaussian(factor=[[1.0], [-0.6]], diag=[0.4, 0.3]), 15.0, None),
        (BlockDiagonal([Huber(0.8, c=1.0).expand(1), DiagonalGaussian(1.2).expand(1)]), 20.0, [-0.8, 0.8]),
    ],
    ids=["dense", "lowrank", "block-huber-gauss"],
)
def test_log_prob_normalises_2d(model: NoiseModel, half_width: float, kinks: list[float] | None) -> None:
    """2-D adaptive cubature over a box holding all but ~1e-16 of the mass (Gaussian: 12+ std; Huber tails e^-24),
    split at the Huber kinks |r_1| = c sigma."""

    def density(r: np.ndarray) -> np.ndarray:  # [N, 2] -> [N]
        return np.exp(model.log_prob(torch.from_numpy(np.ascontiguousarray(r))).numpy())

    points = None if kinks is None else [np.array([k, 0.0]) for k in kinks]
    res = integrate.cubature(density, [-half_width] * 2, [half_width] * 2, rtol=1e-10, atol=1e-12, points=points)
    assert res.status == "converged"
    assert res.estimate == pytest.approx(1.0, abs=1e-8)


# ---------------------------------------------------------------------------------------------- closed forms
def test_log_prob_matches_reference_densities() -> None:
    rng = np.random.default_rng(0)
    r = rng.normal(size=(5, 3)) * 3
    rt = torch.from_numpy(r)
    s = np.array([0.5, 1.0, 2.0])
    np.testing.assert_allclose(
        DiagonalGaussian(s).log_prob(rt).numpy(), stats.norm.logpdf(r, scale=s).sum(-1), rtol=1e-12
    )
    np.testing.assert_allclose(
        StudentT(s, 4.0).log_prob(rt).numpy(), stats.t.logpdf(r, df=4.0, scale=s).sum(-1), rtol=1e-12
    )
    np.testing.assert_allclose(
        CorrelatedGaussian(cov=DENSE_COV).log_prob(rt).numpy(),
        stats.multivariate_normal(cov=DENSE_COV).logpdf(r),
        rtol=1e-12,
    )
    low_cov = np.array(FACTOR) @ np.array(FACTOR).T + np.diag(DIAG)
    np.testing.assert_allclose(
        CorrelatedGaussian(factor=FACTOR, diag=DIAG).log_prob(rt).numpy(),
        stats.multivariate_normal(cov=low_cov).logpdf(r),
        rtol=1e-12,
    )
    # Huber: rho_c(z) + log sigma + log Z, with Z in closed form.
    c = 1.2
    z = np.abs(r / s)
    rho = np.where(z <= c, 0.5 * z**2, c * z - 0.5 * c**2)
    log_z = math.log(math.sqrt(2 * math.pi) * (2 * stats.norm.cdf(c) - 1) + 2 * math.exp(-0.5 * c**2) / c)
    expected = -(rho + np.log(s) + log_z).sum(-1)
    np.testing.assert_allclose(Huber(s, c=c).log_prob(rt).numpy(), expected, rtol=1e-12)


def test_unsized_scalar_model_broadcasts_over_any_length() -> None:
    r = torch.tensor([[0.3, -1.0], [2.0, 0.1]], dtype=torch.float64)
    np.testing.assert_allclose(
        DiagonalGaussian(0.5).log_prob(r).numpy(), DiagonalGaussian([0.5, 0.5]).log_prob(r).numpy(), rtol=1e-14
    )
    np.testing.assert_allclose(Huber(0.5).log_prob(r).numpy(), Huber([0.5, 0.5]).log_prob(r).numpy(), rtol=1e-14)


@pytest.mark.parametrize("name", list(_models_3()))
def test_score_is_minus_gradient_of_log_prob(name: str) -> None:
    model = _models_3()[name]
    r = (torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4).requires_grad_()
    (grad,) = torch.autograd.grad(model.log_prob(r).sum(), r)
    torch.testing.assert_close(model.score(r.detach()), -grad, rtol=1e-10, atol=1e-12)
    # The autograd default of the base class agrees with the closed form.
    torch.testing.assert_close(NoiseModel.score(model, r.detach()), -grad, rtol=1e-10, atol=1e-12)


def test_scores_match_textbook_formulas() -> None:
    r = torch.tensor([-5.0, -1.0, 0.0, 0.4, 3.0], dtype=torch.float64)
    s, c, nu = 1.3, 1.1, 3.5
    z = r / s
    torch.testing.assert_close(DiagonalGaussian(s).score(r), r / s**2)
    torch.testing.assert_close(Huber(s, c=c).score(r), z.clamp(-c, c) / s)
    torch.testing.assert_close(StudentT(s, nu).score(r), (nu + 1) * r / (nu * s**2 + r**2))
    cov = torch.tensor(DENSE_COV, dtype=torch.float64)
    v = r[:3]
    torch.testing.assert_close(CorrelatedGaussian(cov=cov).score(v), torch.linalg.solve(cov, v))


def test_irls_weights_closed_forms() -> None:
    r = torch.tensor([[-6.0, -1.0, 0.0], [0.5, 2.6, 9.0]], dtype=torch.float64)
    s = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    z = (r / s).numpy()
    c, nu = 1.345, 4.0
    np.testing.assert_allclose(
        Huber(s, c=c).irls_weights(r).numpy(), np.minimum(1.0, c / np.maximum(np.abs(z), 1e-300)), rtol=1e-14
    )
    np.testing.assert_allclose(StudentT(s, nu).irls_weights(r).numpy(), (nu + 1) / (nu + z**2), rtol=1e-14)
    torch.testing.assert_close(DiagonalGaussian(s).irls_weights(r), torch.ones_like(r))
    torch.testing.assert_close(CorrelatedGaussian(cov=DENSE_COV).irls_weights(r), torch.ones_like(r))
    # w = psi / (r / sigma^2) wherever r != 0.
    for model in (Huber(s, c=c), StudentT(s, nu)):
        nz = r != 0
        torch.testing.assert_close(model.irls_weights(r)[nz], (model.score(r) * s**2 / r)[nz])


@pytest.mark.parametrize("name", list(_models_3()))
def test_cov_matvec_weighted_matches_dense(name: str) -> None:
    model = _models_3()[name]
    gen = torch.Generator().manual_seed(2)
    v = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    w = torch.rand(5, 3, generator=gen, dtype=torch.float64) + 0.1
    cov = model.dense_cov()
    assert cov.shape == (3, 3)
    torch.testing.assert_close(torch.diagonal(cov), model.variance())
    torch.testing.assert_close(model.cov_matvec(v), v @ cov)
    expected = torch.stack([(cov / torch.outer(wi.sqrt(), wi.sqrt())) @ vi for vi, wi in zip(v, w, strict=True)])
    torch.testing.assert_close(model.cov_matvec(v, w), expected)


@pytest.mark.parametrize("kind", ["dense", "lowrank"])
def test_precision_matvec_inverts_cov(kind: str) -> None:
    model = _models_3()[kind]
    assert isinstance(model, CorrelatedGaussian)
    v = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    torch.testing.assert_close(model.precision_matvec(model.cov_matvec(v)), v)
    torch.testing.assert_close(model.precision_matvec(v), v @ torch.linalg.inv(model.dense_cov()))


def test_lowrank_equals_dense_equivalent() -> None:
    low = CorrelatedGaussian(factor=FACTOR, diag=DIAG)
    dense = CorrelatedGaussian(cov=low.dense_cov())
    r = torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(low.log_prob(r), dense.log_prob(r))
    torch.testing.assert_close(low.score(r), dense.score(r))
    assert low.low_rank and not dense.low_rank


def test_float32_residuals_keep_their_dtype() -> None:
    r = torch.randn(2, 3)
    for model in _models_3().values():
        assert model.log_prob(r).dtype == torch.float32
        assert model.score(r).dtype == torch.float32
        assert model.cov_matvec(r).dtype == torch.float32


def test_block_diagonal_combines_blocks() -> None:
    a, b = Huber([1.0, 2.0], c=1.0), CorrelatedGaussian(cov=[[1.0, 0.4], [0.4, 0.8]])
    block = BlockDiagonal([a, b])
    r = torch.tensor([[3.0, -0.5, 0.2, 1.0]], dtype=torch.float64)
    assert block.size == 4 and block.sizes == [2, 2] and not block.gaussian
    torch.testing.assert_close(block.log_prob(r), a.log_prob(r[:, :2]) + b.log_prob(r[:, 2:]))
    torch.testing.assert_close(block.irls_weights(r), torch.cat([a.irls_weights(r[:, :2]), torch.ones(1, 2)], -1))
    torch.testing.assert_close(block.dense_cov(), torch.block_diag(a.dense_cov(), b.dense_cov()))
    torch.testing.assert_close(block.marginal_variance()[2:], b.variance())
    assert block.sample((7,)).shape == (7, 4)
    assert BlockDiagonal([DiagonalGaussian(1.0, 2), b]).gaussian


# ---------------------------------------------------------------------------------------------- sampling
def _huber_abs_moment(c: float, k: int) -> float:
    """E|z|^k for the standard Huber density, by quadrature (independent of the closed form in the code)."""

    def rho(z: float) -> float:
        return 0.5 * z * z if abs(z) <= c else c * abs(z) - 0.5 * c * c

    def integral(f) -> float:  # split at the kinks +-c
        return sum(
            integrate.quad(f, a, b, epsabs=1e-13, epsrel=1e-13)[0] for a, b in ((-np.inf, -c), (-c, c), (c, np.inf))
        )

    return integral(lambda z: abs(z) ** k * math.exp(-rho(z))) / integral(lambda z: math.exp(-rho(z)))


@pytest.mark.parametrize("c", [0.5, 1.345, 2.5])
def test_huber_marginal_variance_matches_quadrature(c: float) -> None:
    model = Huber(2.0, c=c).expand(1)
    assert model.marginal_variance().item() == pytest.approx(4.0 * _huber_abs_moment(c, 2), rel=1e-10)
    assert StudentT(1.0, 2.0).expand(1).marginal_variance().item() == math.inf


def _fourth_moment(model: NoiseModel) -> np.ndarray:
    """E[e^4] per observation for the independent models (standardised moments times std^4)."""
    s4 = (model.variance() ** 2).numpy()  # sigma^4
    if isinstance(model, DiagonalGaussian):
        return 3 * s4
    if isinstance(model, Huber):
        return _huber_abs_moment(model.c, 4) * s4
    assert isinstance(model, StudentT)
    nu = model.dof
    return 3 * nu**2 / ((nu - 2) * (nu - 4)) * s4


@pytest.mark.parametrize("name", ["gauss", "huber", "student"])
def test_independent_sampling_moments(name: str) -> None:
    model = _models_3()[name]
    n = 200_000
    e = model.sample((n,), generator=torch.Generator().manual_seed(5)).numpy()
    assert e.shape == (n, 3) and e.dtype == np.float64
    var = model.marginal_variance().numpy()
    assert np.all(np.abs(e.mean(0)) < 5 * np.sqrt(var / n))
    se_var = np.sqrt((_fourth_moment(model) - var**2) / n)
    assert np.all(np.abs((e**2).mean(0) - var) < 5 * se_var)


@pytest.mark.parametrize("name", ["dense", "lowrank"])
def test_correlated_sampling_covariance(name: str) -> None:
    model = _models_3()[name]
    n = 200_000
    e = model.sample((n,), generator=torch.Generator().manual_seed(6)).numpy()
    cov = model.dense_cov().numpy()
    assert np.all(np.abs(e.mean(0)) < 5 * np.sqrt(np.diag(cov) / n))
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n)
    assert np.all(np.abs(e.T @ e / n - cov) < 5 * se)


def _huber_cdf(z: np.ndarray, c: float) -> np.ndarray:
    zc = math.sqrt(2 * math.pi) * (2 * stats.norm.cdf(c) - 1) + 2 * math.exp(-0.5 * c * c) / c
    left = np.exp(c * np.minimum(z, -c) + 0.5 * c * c) / (c * zc)
    f_minus_c = math.exp(-0.5 * c * c) / (c * zc)
    mid = f_minus_c + math.sqrt(2 * math.pi) * (stats.norm.cdf(np.clip(z, -c, c)) - stats.norm.cdf(-c)) / zc
    right = 1 - np.exp(-c * np.maximum(z, c) + 0.5 * c * c) / (c * zc)
    return np.where(z < -c, left, np.where(z > c, right, mid))


def test_huber_and_student_samples_follow_their_distributions() -> None:
    gen = torch.Generator().manual_seed(7)
    c = 0.8
    z = Huber(1.0, c=c).expand(1).sample((20_000,), generator=gen).numpy()[:, 0]
    assert stats.kstest(z, lambda x: _huber_cdf(np.asarray(x), c)).pvalue > 1e-3
    t = StudentT(2.0, 3.0).expand(1).sample((20_000,), generator=gen).numpy()[:, 0]
    assert stats.kstest(t, stats.t(df=3.0, scale=2.0).cdf).pvalue > 1e-3
    # The closed-form Huber CDF is the integral of the density.
    model = Huber(1.0, c=c).expand(1)
    pieces = ((-np.inf, -c), (-c, c), (c, 1.7))
    f = sum(
        integrate.quad(lambda r: math.exp(model.log_prob(torch.tensor([r], dtype=torch.float64)).item()), a, b)[0]
        for a, b in pieces
    )
    assert _huber_cdf(np.array([1.7]), c)[0] == pytest.approx(f, abs=1e-9)


def test_sampling_is_reproducible_and_respects_dtype() -> None:
    for model in _models_3().values():
        a = model.sample((4,), generator=torch.Generator().manual_seed(8))
        b = model.sample((4,), generator=torch.Generator().manual_seed(8))
        torch.testing.assert_close(a, b)
        assert model.sample((2, 5), dtype=torch.float32).shape == (2, 5, 3)
        assert model.sample(dtype=torch.float32).dtype == torch.float32


# ---------------------------------------------------------------------------------------------- sizes and errors
def test_expand_binds_scalar_models_and_checks_sized_ones() -> None:
    for cls, extra in ((DiagonalGaussian, ()), (Huber, ()), (StudentT, (5.0,))):
        model = cls(0.5, *extra)
        assert model.size is None
        sized = model.expand(4)
        assert sized.size == 4 and sized.variance().shape == (4,)
        assert sized.expand(4) is sized
        with pytest.raises(ValueError, match=rf"{cls.__name__}: field 'std' has 4 values but 3 observations"):
            sized.expand(3)
        with pytest.raises(ValueError, match=rf"{cls.__name__}: the model is unsized"):
            model.sample()
        with pytest.raises(ValueError, match=rf"{cls.__name__}: expand\(\) needs a positive integer .* got 0"):
            model.expand(0)
    with pytest.raises(ValueError, match=r"CorrelatedGaussian: has 3 observations, asked for 2"):
        CorrelatedGaussian(cov=DENSE_COV).expand(2)
    assert StudentT(1.0, dof=3.0, size=2).size == 2


@pytest.mark.parametrize(
    ("thunk", "pattern"),
    [
        (lambda: DiagonalGaussian(-1.0), r"DiagonalGaussian: field 'std' has value -1.0; must be > 0"),
        (lambda: DiagonalGaussian([1.0, float("nan")]), r"DiagonalGaussian: field 'std' has value nan"),
        (lambda: DiagonalGaussian([[1.0]]), r"DiagonalGaussian: field 'std' must be a scalar or 1-D"),
        (lambda: DiagonalGaussian([1.0, 2.0], size=3), r"DiagonalGaussian: field 'std' has 2 values but 3"),
        (lambda: Huber(0.0), r"Huber: field 'std' has value 0.0; must be > 0"),
        (lambda: Huber(1.0, c=-1.0), r"Huber: field 'c' has value -1.0; must be > 0"),
        (lambda: Huber(1.0, c=float("inf")), r"Huber: field 'c' has value inf; must be > 0 and finite"),
        (lambda: Huber(1.0, c="big"), r"Huber: field 'c' must be a number, got 'big'"),
        (lambda: Huber("one"), r"Huber: field 'std' must be numeric, got 'one'"),
        (lambda: StudentT(1.0, 0.0), r"StudentT: field 'dof' has value 0.0; must be > 0"),
        (lambda: StudentT(1.0, float("nan")), r"StudentT: field 'dof' has value nan"),
        (lambda: StudentT(-2.0, 3.0), r"StudentT: field 'std' has value -2.0"),
        (lambda: CorrelatedGaussian(), r"CorrelatedGaussian: needs field 'cov'"),
        (lambda: CorrelatedGaussian(cov=[[1.0, 0.0, 0.0]]), r"CorrelatedGaussian: field 'cov' must be a square"),
        (lambda: CorrelatedGaussian(cov=[1.0, 2.0]), r"CorrelatedGaussian: field 'cov' must be a 2-D matrix"),
        (
            lambda: CorrelatedGaussian(cov=[[1.0, 0.5], [0.4, 1.0]]),
            r"CorrelatedGaussian: field 'cov' is not symmetric: cov\[0, 1\] = 0.5 but cov\[1, 0\] = 0.4",
        ),
        (
            lambda: CorrelatedGaussian(cov=[[1.0, 2.0], [2.0, 1.0]]),
            r"CorrelatedGaussian: field 'cov' is not positive definite: its smallest eigenvalue is -1",
        ),
        (
            lambda: CorrelatedGaussian(cov=[[1.0, float("nan")], [0.0, 1.0]]),
            r"CorrelatedGaussian: field 'cov' has value nan at index \(0, 1\)",
        ),
        (
            lambda: CorrelatedGaussian(cov=DENSE_COV, factor=FACTOR, diag=DIAG),
            r"CorrelatedGaussian: give either field 'cov' or fields 'factor' and 'diag', not both",
        ),
        (lambda: CorrelatedGaussian(factor=FACTOR), r"CorrelatedGaussian: field 'diag' is missing"),
        (lambda: CorrelatedGaussian(diag=DIAG), r"CorrelatedGaussian: field 'factor' is missing"),
        (
            lambda: CorrelatedGaussian(factor=FACTOR, diag=[1.0, 1.0]),
            r"CorrelatedGaussian: field 'factor' has 3 rows but field 'diag' has 2 values",
        ),
        (
            lambda: CorrelatedGaussian(factor=FACTOR, diag=[1.0, -1.0, 1.0]),
            r"CorrelatedGaussian: field 'diag' has value -1.0; must be > 0",
        ),
        (
            lambda: CorrelatedGaussian(factor=[[1.0], [float("inf")]], diag=[1.0, 1.0]),
            r"CorrelatedGaussian: field 'factor' has value inf at index \(1, 0\)",
        ),
        (lambda: BlockDiagonal([]), r"BlockDiagonal: field 'models' is empty"),
        (lambda: BlockDiagonal([Huber(1.0)]), r"BlockDiagonal: model 0 \(Huber\) is unsized"),
        (lambda: BlockDiagonal(["x"]), r"BlockDiagonal: model 0 is a str, not a NoiseModel"),
    ],
)
def test_bad_parameters_raise_naming_the_field(thunk, pattern: str) -> None:
    with pytest.raises((ValueError, TypeError), match=pattern):
        thunk()


def test_residual_of_the_wrong_length_raises() -> None:
    for model in _models_3().values():
        name = type(model).__name__
        with pytest.raises(ValueError, match=rf"{name}: residual has shape \[2, 4\]; its last dimension must be"):
            model.log_prob(torch.zeros(2, 4))
    with pytest.raises(TypeError, match=r"Huber: residual must be a torch.Tensor, got list"):
        Huber(1.0).log_prob([1.0, 2.0])  # type: ignore[arg-type]
