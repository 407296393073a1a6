"""Footprint-averaging weights: normalisation, placement, spread, fallback to bilinear, poles and the seam."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _satellite_setup import WINDOW, tiny_setup, tiny_swath

from appa_core.grid import Grid
from appa_core.obs.interp import bilinear_weights
from appa_op_satellite import SwathOp, footprint_stencil
from appa_op_satellite.footprint import cell_size_km

R = 6371.0088


def unit(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    p, l = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(p) * np.cos(l), np.cos(p) * np.sin(l), np.sin(p)], axis=-1)


def cell_vectors(grid: Grid) -> np.ndarray:
    lat, lon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    return unit(lat.reshape(-1), lon.reshape(-1))


CENTRES = (np.array([0.3, 47.0, -61.5, 84.0, -89.2, 10.0]), np.array([12.0, 359.6, 180.2, 33.0, 200.0, 0.1]))


@pytest.mark.parametrize("kernel", ["gaussian", "tophat"])
def test_weights_sum_to_one_and_are_centred(kernel: str) -> None:
    grid = Grid.equiangular(91, 180)  # 2 deg
    lat, lon = CENTRES
    radius = np.full(lat.size, 600.0)
    st = footprint_stencil(grid, lat, lon, radius, kernel=kernel)
    assert not st.bilinear.any()
    assert np.all(st.weights > 0)
    np.testing.assert_allclose(st.row_sums(), 1.0, atol=1e-12)
    # weighted centroid (3-D unit vectors) points at the footprint centre, within a fraction of a cell
    cells = cell_vectors(grid)
    centroid = np.zeros((lat.size, 3))
    np.add.at(centroid, st.rows, st.weights[:, None] * cells[st.cells])
    centroid /= np.linalg.norm(centroid, axis=1, keepdims=True)
    err = np.degrees(np.arccos(np.clip((centroid * unit(lat, lon)).sum(1), -1, 1)))
    assert err.max() < 0.25 * 2.0, err
    # every cell used is inside the support, and (top-hat) every cell inside the radius is used
    dist = R * np.arccos(np.clip((cells[st.cells] * unit(lat, lon)[st.rows]).sum(1), -1, 1))
    support = 2.5 if kernel == "gaussian" else 1.0
    assert dist.max() <= support * 600.0 + 1e-6
    if kernel == "tophat":
        inside = R * np.arccos(np.clip(unit(lat, lon) @ cells.T, -1, 1)) <= 600.0
        assert st.nnz == inside.sum()


def test_gaussian_spread_matches_kernel() -> None:
    # E[d^2] of K(q) = 2^(-q^2) truncated at q = 2.5, for a planar footprint: int q^3 K / int q K (times r^2)
    q = np.linspace(0, 2.5, 20001)
    kq = np.exp2(-(q**2))
    expected_q2 = np.trapezoid(q**3 * kq, q) / np.trapezoid(q * kq, q)
    grid = Grid.equiangular(181, 360)  # 1 deg, 111 km
    lat, lon = np.array([0.0, 45.0, -70.0]), np.array([100.3, 359.7, 20.0])
    r = 500.0
    st = footprint_stencil(grid, lat, lon, np.full(3, r))
    cells = cell_vectors(grid)
    d = R * np.arccos(np.clip((cells[st.cells] * unit(lat, lon)[st.rows]).sum(1), -1, 1))
    q2 = np.bincount(st.rows, weights=st.weights * (d / r) ** 2, minlength=3)
    np.testing.assert_allclose(q2, expected_q2, rtol=0.03)


def test_small_footprints_fall_back_to_bilinear() -> None:
    grid = Grid.equiangular(19, 36)  # 10 deg ~ 1112 km
    lat, lon = np.array([12.0, -80.0, 89.0]), np.array([359.0, 5.0, 123.0])
    st = footprint_stencil(grid, lat, lon, np.full(3, 0.5 * cell_size_km(grid)))
    assert st.bilinear.all()
    idx, w = bilinear_weights(grid, lat, lon)
    dense = np.zeros((3, grid.nlat * grid.nlon))
    np.add.at(dense, (np.repeat(np.arange(3), 4), idx.reshape(-1)), w.reshape(-1))
    mine = np.zeros_like(dense)
    np.add.at(mine, (st.rows, st.cells), st.weights)
    np.testing.assert_allclose(mine, dense, atol=1e-15)
    # same footprints larger than a cell use the kernel
    assert not footprint_stencil(grid, lat, lon, np.full(3, 1.5 * cell_size_km(grid))).bilinear.any()
    # explicit methods
    assert footprint_stencil(grid, lat, lon, np.full(3, 5000.0), method="bilinear").bilinear.all()
    assert not footprint_stencil(grid, lat, lon, np.full(3, 600.0), method="kernel").bilinear[:2].any()


@pytest.mark.parametrize("radius", [None, 300.0, 900.0, 3000.0])
def test_constant_field_reproduced_exactly(radius: float | None) -> None:
    grid, spec, times = tiny_setup()
    op = SwathOp.from_orbit(tiny_swath(), times, variables=["temperature@500", "2m_temperature"])
    if radius is not None:
        op = SwathOp(lat=op.lat, lon=op.lon, time=op.time, values=op._y, variables=op.variables, radius_km=radius)
    else:
        op = SwathOp(lat=op.lat, lon=op.lon, time=op.time, values=op._y, variables=op.variables)
    op.prepare(grid, spec, times)
    x = torch.full((2, times.size, spec.n_channels, *grid.shape), 273.15, dtype=torch.float64)
    np.testing.assert_allclose(op(x).numpy(), 273.15, rtol=0, atol=1e-12)
    np.testing.assert_allclose(op.footprint_weights().row_sums(), 1.0, atol=1e-12)


def test_time_interpolation_between_states() -> None:
    grid, spec, times = tiny_setup()
    op = SwathOp.from_orbit(tiny_swath(), times, variables=["temperature@850"]).prepare(grid, spec, times)
    # a state that is constant in space and linear in time: the operator returns the value at the obs time
    hours = (times - times[0]) / np.timedelta64(1, "h")
    x = torch.as_tensor(200.0 + 2.0 * hours, dtype=torch.float64)[None, :, None, None, None].expand(
        1, times.size, spec.n_channels, *grid.shape
    )
    obs_hours = (op.time - times[0]) / np.timedelta64(1, "h")
    np.testing.assert_allclose(op(x.contiguous())[0].numpy(), 200.0 + 2.0 * obs_hours, atol=1e-10)


def test_day_of_amsua_footprints_on_a_coarse_grid_is_fast_and_normalised() -> None:
    grid = Grid.equiangular(33, 64)
    swath = tiny_swath(radius_km=24.0)
    fp = swath.footprints(WINDOW[0], WINDOW[-1], np.timedelta64(8, "s"))
    st = footprint_stencil(grid, fp.lat, fp.lon, fp.radius_km)
    np.testing.assert_allclose(st.row_sums(), 1.0, atol=1e-12)
    assert st.bilinear.all()  # 24-60 km footprints on a 5.6 deg grid are points
    big = footprint_stencil(grid, fp.lat, fp.lon, fp.radius_km * 30)
    np.testing.assert_allclose(big.row_sums(), 1.0, atol=1e-12)
    assert math.isclose(big.bilinear.mean(), 0.0, abs_tol=0.2)
