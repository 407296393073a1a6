"""Tests of the horizontal interpolation on the sphere (``appa_core.obs.interp``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from appa_core.grid import Grid
from appa_core.obs.interp import (
    apply_weights,
    bilinear_weights,
    interp_matrix,
    nearest_weights,
    product_stencil_matrix,
)

D2R = np.pi / 180.0
Field = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _y21(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Real part of Y_2^1 (up to normalisation): sin(phi) cos(phi) cos(lambda)."""
    return np.sin(lat * D2R) * np.cos(lat * D2R) * np.cos(lon * D2R)


def _y32(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Y_3^2-like: sin(phi) cos^2(phi) cos(2 lambda + 0.3)."""
    return np.sin(lat * D2R) * np.cos(lat * D2R) ** 2 * np.cos(2 * lon * D2R + 0.3)


def _on_grid(grid: Grid, f: Field) -> np.ndarray:
    lat, lon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    return f(lat, lon)


def _interp(grid: Grid, field: np.ndarray, lat: np.ndarray, lon: np.ndarray, method: str = "bilinear") -> np.ndarray:
    fn = bilinear_weights if method == "bilinear" else nearest_weights
    idx, w = fn(grid, lat, lon)
    return (field.reshape(-1)[idx] * w).sum(1)


def _grid(h: float, poles: bool) -> Grid:
    return Grid.equiangular(round(180 / h) + (1 if poles else 0), round(360 / h), poles=poles)


def _points(kind: str, n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    if kind == "random":  # uniform on the sphere, longitudes given in [-180, 360]
        return np.rad2deg(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 360, n)
    if kind == "poles":
        return rng.choice([-1.0, 1.0], n) * rng.uniform(80, 90, n), rng.uniform(0, 360, n)
    if kind == "seam":  # across 0/360 and given as negative longitudes half of the time
        return rng.uniform(-85, 85, n), rng.uniform(-3, 3, n)
    raise AssertionError(kind)


# ----------------------------------------------------------------------------------------------- stencil basics


@pytest.mark.parametrize("poles", [True, False])
def test_weights_are_a_partition_of_unity(poles: bool) -> None:
    grid = _grid(10, poles)
    lat, lon = _points("random", 500)
    idx, w = bilinear_weights(grid, lat, lon)
    assert idx.shape == w.shape == (500, 4)
    assert idx.dtype == np.int64 and w.dtype == np.float64
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-14)
    assert w.min() >= 0 and idx.min() >= 0 and idx.max() < grid.nlat * grid.nlon


def test_exact_on_fields_bilinear_in_lat_lon_irregular_latitudes() -> None:
    rng = np.random.default_rng(1)
    lat = np.sort(rng.uniform(-88, 88, 13))[::-1]
    grid = Grid(lat=lat, lon=np.arange(24) * 15.0)

    def f(la: np.ndarray, lo: np.ndarray) -> np.ndarray:
        return (2.0 + 0.3 * la) * (1.0 - 0.01 * lo) + 0.05 * la

    field = _on_grid(grid, f)
    # points whose stencil does not cross the 345 -> 0 seam (f is not periodic)
    plat = rng.uniform(lat[-1], lat[0], 300)
    plon = rng.uniform(0, 345, 300)
    np.testing.assert_allclose(_interp(grid, field, plat, plon), f(plat, plon), rtol=0, atol=1e-11)
    # grid nodes are reproduced exactly
    la, lo = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    np.testing.assert_allclose(_interp(grid, field, la.ravel(), lo.ravel()), field.ravel(), atol=1e-12)


def test_periodic_longitude_across_seam_and_negative_longitudes() -> None:
    grid = Grid.equiangular(5, 8, poles=True)  # lon 0, 45, ..., 315
    field = np.arange(40, dtype=np.float64).reshape(5, 8) ** 1.5
    # 337.5 is half way between the last column (315) and the first (0 == 360)
    v = _interp(grid, field, np.array([45.0]), np.array([337.5]))
    np.testing.assert_allclose(v, 0.5 * (field[1, 7] + field[1, 0]), atol=1e-12)
    lat = np.array([10.0, -30.0, 60.0, 0.0])
    lon = np.array([350.0, 190.0, 181.0, 359.999])
    np.testing.assert_allclose(_interp(grid, field, lat, lon), _interp(grid, field, lat, lon - 360.0), atol=1e-10)
    # 360 is the same as 0
    np.testing.assert_allclose(
        _interp(grid, field, lat, np.full(4, 360.0)), _interp(grid, field, lat, np.zeros(4)), atol=1e-12
    )


def test_grid_with_poles_is_exact_at_the_pole() -> None:
    grid = _grid(10, poles=True)
    field = _on_grid(grid, lambda la, lo: np.sin(la * D2R) + _y21(la, lo))  # constant on the pole rows
    lon = np.linspace(-180, 360, 37)
    np.testing.assert_allclose(_interp(grid, field, np.full(37, 90.0), lon), 1.0, atol=1e-14)
    np.testing.assert_allclose(_interp(grid, field, np.full(37, -90.0), lon), -1.0, atol=1e-14)


def test_grid_without_poles_interpolates_across_the_pole() -> None:
    grid = _grid(10, poles=False)  # first row at 85
    lat0 = grid.lat[0]
    field = np.random.default_rng(2).normal(size=grid.shape)
    lon = np.array([10.0, 10.0, 10.0])
    idx, w = bilinear_weights(grid, np.array([90.0, lat0, 87.5]), lon)
    # at the pole: half on (85, 10) and half on (85, 190), each interpolated in longitude
    row = field[0]
    along = lambda lo: np.interp(lo, np.append(grid.lon, 360.0), np.append(row, row[0]))  # noqa: E731
    values = (field.reshape(-1)[idx] * w).sum(1)
    np.testing.assert_allclose(values[0], 0.5 * along(10.0) + 0.5 * along(190.0), atol=1e-12)
    np.testing.assert_allclose(values[1], along(10.0), atol=1e-12)  # continuous with the interior at the row
    np.testing.assert_allclose(values[2], 0.75 * along(10.0) + 0.25 * along(190.0), atol=1e-12)
    # south pole, same rule on the last row
    v = _interp(grid, field, np.array([-90.0]), np.array([10.0]))
    last = field[-1]
    along_s = lambda lo: np.interp(lo, np.append(grid.lon, 360.0), np.append(last, last[0]))  # noqa: E731
    np.testing.assert_allclose(v, 0.5 * along_s(10.0) + 0.5 * along_s(190.0), atol=1e-12)
    # continuity across the first row: a hair poleward and equatorward agree
    eps = 1e-7
    up = _interp(grid, field, np.array([lat0 + eps]), np.array([33.0]))
    down = _interp(grid, field, np.array([lat0 - eps]), np.array([33.0]))
    np.testing.assert_allclose(up, down, atol=1e-5)


# ----------------------------------------------------------------------------------------------- accuracy


@pytest.mark.parametrize("poles", [True, False])
@pytest.mark.parametrize("kind", ["random", "poles", "seam"])
@pytest.mark.parametrize("f", [_y21, _y32], ids=["Y21", "Y32"])
def test_spherical_harmonics_second_order_convergence(poles: bool, kind: str, f: Field) -> None:
    """Errors at random points, near the poles and across 0/360 obey the bilinear bound and drop ~4x per halving.

    Bound: |err| <= h^2/8 (max|f_phiphi| + max|f_lambdalambda|) with h the spacing in radians; for Y21 the second
    derivatives are bounded by 2 and 1/2, for Y32 by 3 and 4 (both generously).
    """
    lat, lon = _points(kind)
    bound_coef = {"_y21": 2.5, "_y32": 7.0}[f.__name__]
    errors = []
    for h in (5.0, 2.5, 1.25):
        grid = _grid(h, poles)
        err = np.abs(_interp(grid, _on_grid(grid, f), lat, lon) - f(lat, lon)).max()
        assert err <= (h * D2R) ** 2 / 8 * bound_coef
        errors.append(err)
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(ratios > 3.3) and np.all(ratios < 4.7), ratios


def test_nearest_is_the_great_circle_nearest_grid_point() -> None:
    for poles in (True, False):
        grid = _grid(15, poles)
        lat, lon = _points("random", 400, seed=3)
        lat = np.concatenate([lat, [90.0, -90.0, 89.0, -88.0]])
        lon = np.concatenate([lon, [0.0, 100.0, 200.0, -20.0]])
        idx, w = nearest_weights(grid, lat, lon)
        assert np.all(np.sort(w, axis=1) == np.array([0.0, 0.0, 0.0, 1.0]))
        chosen = (idx * w).sum(1).astype(np.int64)
        la, lo = np.meshgrid(grid.lat * D2R, grid.lon * D2R, indexing="ij")
        g = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)], -1).reshape(-1, 3)
        p = np.stack(
            [np.cos(lat * D2R) * np.cos(lon * D2R), np.cos(lat * D2R) * np.sin(lon * D2R), np.sin(lat * D2R)], -1
        )
        dist = np.linalg.norm(p[:, None, :] - g[None], axis=-1)
        np.testing.assert_allclose(dist[np.arange(lat.size), chosen], dist.min(1), atol=1e-12)


# ----------------------------------------------------------------------------------------------- matrix and torch


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_matrix_and_apply_weights_agree_with_the_stencil(method: str) -> None:
    grid = _grid(15, poles=False)
    lat, lon = _points("random", 200, seed=4)
    field = np.random.default_rng(5).normal(size=(3, *grid.shape))
    A = interp_matrix(grid, lat, lon, method=method)
    assert A.shape == (200, grid.nlat * grid.nlon)
    fn = bilinear_weights if method == "bilinear" else nearest_weights
    idx, w = fn(grid, lat, lon)
    expected = (field.reshape(3, -1)[:, idx] * w).sum(-1)
    np.testing.assert_allclose((A @ field.reshape(3, -1).T).T, expected, atol=1e-12)
    x = torch.tensor(field, dtype=torch.float64, requires_grad=True)
    y = apply_weights(x, idx, w)
    np.testing.assert_allclose(y.detach().numpy(), expected, atol=1e-12)
    # adjoint: the gradient of <y, v> is A^T v
    v = torch.randn(3, 200, dtype=torch.float64)
    (g,) = torch.autograd.grad((y * v).sum(), x)
    np.testing.assert_allclose(g.reshape(3, -1).numpy(), (A.T @ v.numpy().T).T, atol=1e-12)


def test_bad_inputs_are_refused_with_clear_messages() -> None:
    grid = _grid(30, poles=True)
    with pytest.raises(ValueError, match=r"bilinear_weights: field 'lat' has value 95\.0"):
        bilinear_weights(grid, [95.0], [0.0])
    with pytest.raises(ValueError, match=r"nearest_weights: field 'lon' has value nan"):
        nearest_weights(grid, [0.0], [np.nan])
    with pytest.raises(ValueError, match=r"bilinear_weights: field 'lon' has value 400\.0"):
        bilinear_weights(grid, [0.0], [400.0])
    with pytest.raises(ValueError, match=r"bilinear_weights: field 'lon' has 2 values but field 'lat' has 1"):
        bilinear_weights(grid, [0.0], [0.0, 1.0])
    with pytest.raises(ValueError, match=r"interp_matrix: field 'method' has value 'cubic'"):
        interp_matrix(grid, [0.0], [0.0], method="cubic")
    with pytest.raises(TypeError, match=r"bilinear_weights: field 'grid'"):
        bilinear_weights("grid", [0.0], [0.0])  # type: ignore[arg-type]


def test_product_stencil_matrix_is_the_separable_tensor_product() -> None:
    rng = np.random.default_rng(6)
    n_t, n_c, n_s, m = 3, 4, 10, 7
    it, wt = rng.integers(0, n_t, (m, 2)), rng.random((m, 2))
    ic, wc = rng.integers(0, n_c, (m, 2)), rng.random((m, 2))
    isp, wsp = rng.integers(0, n_s, (m, 4)), rng.random((m, 4))
    wsp[0, 1] = 0.0  # zero weights are dropped
    A = product_stencil_matrix((n_t, n_c, n_s), time=(it, wt), channel=(ic, wc), space=(isp, wsp))
    x = rng.normal(size=(n_t, n_c, n_s))
    expected = np.einsum(
        "ma,mb,mc,mabc->m", wt, wc, wsp, x[it[:, :, None, None], ic[:, None, :, None], isp[:, None, None, :]]
    )
    np.testing.assert_allclose(A @ x.reshape(-1), expected, atol=1e-12)
    assert A.shape == (m, n_t * n_c * n_s)
    with pytest.raises(ValueError, match="product_stencil_matrix: stencils have 7, 6, 7 rows"):
        product_stencil_matrix((n_t, n_c, n_s), time=(it, wt), channel=(ic[:6], wc[:6]), space=(isp, wsp))
