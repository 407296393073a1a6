"""The CSR engine of the footprint operators: the vectorised stencil against a brute-force reference, and the
operator (time groups, shuffled times, adjoint, gradients) against its explicit matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _satellite_setup import state, tiny_setup

from appa_core.geo import EARTH_RADIUS_KM, great_circle_km
from appa_core.grid import Grid
from appa_op_satellite import FootprintStencil, RadianceOp, SwathOp, amsua_channels, footprint_stencil
from appa_op_satellite.footprint import KERNELS, concat_stencils


def _brute_force(grid: Grid, lat: np.ndarray, lon: np.ndarray, radius: np.ndarray, kernel: str) -> np.ndarray:
    """Dense ``[N, H*W]`` weights from every cell's great-circle distance (the module docstring's formula)."""
    glat, glon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    d = great_circle_km(lat[:, None], lon[:, None], glat.reshape(1, -1), glon.reshape(1, -1))
    q = d / radius[:, None]
    inside = q <= KERNELS[kernel] * (1 + 1e-12)
    k = np.where(inside, np.exp2(-(q**2)) if kernel == "gaussian" else 1.0, 0.0)
    w = k * np.repeat(grid.area_weights(), grid.nlon)[None]
    return w / w.sum(1, keepdims=True)


@pytest.mark.parametrize("kernel", ["gaussian", "tophat"])
@pytest.mark.parametrize("poles", [True, False])
def test_stencil_matches_brute_force(kernel: str, poles: bool) -> None:
    """Interior, seam (lon 359.9 / 0.05), both poles, tiny and huge supports: every weight to 1e-12."""
    grid = Grid.equiangular(37, 72, poles=poles)  # 5 deg
    rng = np.random.default_rng(1)
    lat = np.concatenate([[0.0, 45.0, 89.9, -89.5, 88.0, -60.0, 10.0], rng.uniform(-90, 90, 40)])
    lon = np.concatenate([[359.9, 0.05, 10.0, 200.0, 180.0, 359.0, 2.5], rng.uniform(0, 360, 40)])
    radius = np.concatenate([[700.0, 900.0, 1500.0, 2000.0, 3000.0, 800.0, 5000.0], rng.uniform(600, 2500, 40)])
    st = footprint_stencil(grid, lat, lon, radius, kernel=kernel, method="kernel")
    assert not st.bilinear.any()
    dense = st.matrix(grid.nlat * grid.nlon).toarray()
    ref = _brute_force(grid, lat, lon, radius, kernel)
    np.testing.assert_allclose(dense, ref, atol=1e-12)
    # each row lists distinct cells, and the CSR arrays are consistent
    for n in range(st.size):
        cells = st.cells[st.indptr[n] : st.indptr[n + 1]]
        assert np.unique(cells).size == cells.size


def test_mixed_bilinear_and_kernel_rows_are_in_footprint_order() -> None:
    grid = Grid.equiangular(37, 72)
    cell = EARTH_RADIUS_KM * np.radians(5.0)
    lat = np.array([10.0, 20.0, -30.0, 40.0, 0.0])
    lon = np.array([5.0, 100.0, 200.0, 300.0, 359.0])
    radius = np.array([2 * cell, 0.5 * cell, 3 * cell, 0.2 * cell, 2 * cell])  # 2nd and 4th: bilinear
    st = footprint_stencil(grid, lat, lon, radius)
    assert st.bilinear.tolist() == [False, True, False, True, False]
    for n, (a, b) in enumerate(zip(st.indptr[:-1], st.indptr[1:], strict=True)):
        alone = footprint_stencil(grid, lat[n : n + 1], lon[n : n + 1], radius[n : n + 1])
        np.testing.assert_array_equal(st.cells[a:b], alone.cells)
        np.testing.assert_allclose(st.weights[a:b], alone.weights, rtol=1e-15)
    # concatenating stencils of groups, with a permutation, gives the stencil of the whole list
    order = np.array([3, 0, 4, 1, 2])
    parts = [footprint_stencil(grid, lat[order[:2]], lon[order[:2]], radius[order[:2]])]
    parts.append(footprint_stencil(grid, lat[order[2:]], lon[order[2:]], radius[order[2:]]))
    merged = concat_stencils(parts, order)
    np.testing.assert_array_equal(merged.indptr, st.indptr)
    np.testing.assert_array_equal(merged.cells, st.cells)
    np.testing.assert_allclose(merged.weights, st.weights, rtol=1e-15)


def _shuffled_swath(radius: float = 900.0) -> SwathOp:
    """Footprints whose times are not chronological (every window interval, out of order)."""
    _, _, times = tiny_setup()
    rng = np.random.default_rng(2)
    n = 40
    span = (times[-1] - times[0]).astype("int64")
    t = times[0] + rng.integers(0, span + 1, n).astype("timedelta64[ns]")
    return SwathOp(
        lat=rng.uniform(-85, 85, n),
        lon=rng.uniform(0, 360, n),
        time=t,
        values=np.zeros((n, 2)),
        variables=["temperature@500", "2m_temperature"],
        radius_km=np.where(rng.random(n) < 0.3, 50.0, radius),  # some fall back to bilinear
    )


@pytest.mark.parametrize("make", [_shuffled_swath, lambda: RadianceOp(**_radiance_fields())])
def test_forward_adjoint_and_gradient_against_the_matrix(make) -> None:  # type: ignore[no-untyped-def]
    grid, spec, times = tiny_setup()
    op = make().prepare(grid, spec, times)
    assert op._order is not None or isinstance(op, RadianceOp)
    A = torch.as_tensor(op.matrix().toarray())
    x = state(grid, spec, times, batch=2, seed=3)
    y = op(x)
    assert torch.allclose(y, x.reshape(2, -1) @ A.T, rtol=1e-13, atol=1e-10)
    # adjoint: <A u, v> = <u, A^T v> with A^T v from the custom backward
    u = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    v = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    ur = u.clone().requires_grad_(True)
    (atv,) = torch.autograd.grad(op(ur), ur, v)
    lhs = (op(u) * v).sum() - (op(torch.zeros_like(u)) * v).sum()
    assert lhs.item() == pytest.approx((u * atv).sum().item(), rel=1e-12)
    assert torch.allclose(atv.reshape(2, -1), v @ A, atol=1e-12)
    # gradient of a nonlinear functional against a central difference (float64, tiny grid)
    d = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((op(xr) ** 2).sum(), xr)
    h = 1e-2  # the functional is quadratic: the central difference is exact but for rounding
    fd = ((op(x + h * d) ** 2).sum() - (op(x - h * d) ** 2).sum()) / (2 * h)
    assert (g * d).sum().item() == pytest.approx(fd.item(), rel=1e-9)
    # float32 states give float32 observations close to float64
    y32 = op(x.float())
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), y, rtol=1e-5)


def _radiance_fields() -> dict:
    _, spec, times = tiny_setup()
    rng = np.random.default_rng(7)
    n = 20
    return {
        "lat": rng.uniform(-60, 60, n),
        "lon": rng.uniform(0, 360, n),
        "time": times[0] + (rng.uniform(0, 12, n) * 3600e9).astype("timedelta64[ns]"),
        "values": np.zeros((n, 3)),
        "channels": amsua_channels(levels=spec.levels)[:3],
        "radius_km": 1000.0,
        "zenith_deg": rng.uniform(-50, 50, n),
    }


def test_from_coo_builds_the_same_stencil() -> None:
    grid = Grid.equiangular(37, 72)
    st = footprint_stencil(grid, np.array([10.0, -40.0]), np.array([3.0, 200.0]), np.array([900.0, 1500.0]))
    shuffle = np.random.default_rng(0).permutation(st.nnz)
    again = FootprintStencil.from_coo(st.rows[shuffle], st.cells[shuffle], st.weights[shuffle], st.size, st.bilinear)
    np.testing.assert_array_equal(again.indptr, st.indptr)
    np.testing.assert_allclose(
        again.matrix(grid.nlat * grid.nlon).toarray(), st.matrix(grid.nlat * grid.nlon).toarray()
    )
