"""Tests for appa_naturerun.letkf: exact Kalman equivalence, localisation limits, and a Lorenz-96 twin experiment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from appa_core.grid import Grid
from appa_naturerun.letkf import (
    EARTH_RADIUS_KM,
    _ball_neighbours,
    apply_weights,
    etkf,
    etkf_weights,
    gaspari_cohn,
    great_circle_km,
    letkf,
    letkf_weights,
    rtps,
)


def _linear_problem(n=12, d=7, m=5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d)
    h = rng.normal(size=(m, d))
    r = rng.uniform(0.5, 2.0, size=m)
    y = rng.normal(size=m)
    return x, h, r, y


def test_etkf_equals_kalman_formulas():
    x, h, r, y = _linear_problem()
    n = x.shape[0]
    xa, t = etkf(x, x @ h.T, y, r)
    xa = xa.numpy()
    xbar = x.mean(0)
    pb = np.cov(x.T, ddof=1)
    big_r = np.diag(r)
    k = pb @ h.T @ np.linalg.inv(h @ pb @ h.T + big_r)
    mean_kf = xbar + k @ (y - h @ xbar)
    pa_kf = (np.eye(len(xbar)) - k @ h) @ pb
    np.testing.assert_allclose(xa.mean(0), mean_kf, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.cov(xa.T, ddof=1), pa_kf, rtol=1e-9, atol=1e-10)
    # weights: columns sum to one (the analysis is an affine combination of the members)
    np.testing.assert_allclose(t.sum(0).numpy(), np.ones(n), atol=1e-12)


def test_etkf_inflation_is_prior_covariance_inflation():
    x, h, r, y = _linear_problem(seed=1)
    rho = 1.3
    xa, _ = etkf(x, x @ h.T, y, r, inflation=rho)
    pb = rho * np.cov(x.T, ddof=1)
    k = pb @ h.T @ np.linalg.inv(h @ pb @ h.T + np.diag(r))
    np.testing.assert_allclose(np.cov(xa.numpy().T, ddof=1), (np.eye(x.shape[1]) - k @ h) @ pb, rtol=1e-9, atol=1e-10)


def test_gaspari_cohn_values():
    d = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0], dtype=torch.float64)
    g = gaspari_cohn(d, 2.0)  # c = 1
    assert g[0] == 1.0 and g[4] == 0.0 and g[5] == 0.0
    # GC at z = 1 is 5/24 + 0 from both branches (continuity)
    assert g[2].item() == pytest.approx(-0.25 + 0.5 + 0.625 - 5 / 3 + 1.0)
    assert g[2].item() == pytest.approx(1 / 12 - 0.5 + 0.625 + 5 / 3 - 5 + 4 - 2 / 3)
    assert bool((torch.diff(g) <= 0).all())


def test_great_circle():
    d = great_circle_km(*(torch.tensor(v, dtype=torch.float64) for v in (0.0, 0.0, 0.0, 90.0)))
    assert d.item() == pytest.approx(math.pi / 2 * EARTH_RADIUS_KM)
    d = great_circle_km(*(torch.tensor(v, dtype=torch.float64) for v in (10.0, 359.0, 10.0, 1.0)))
    assert d.item() == pytest.approx(
        2 * EARTH_RADIUS_KM * math.asin(math.cos(math.radians(10)) * math.sin(math.radians(1)))
    )


def _grid_problem(seed=0, n=10, m=30):
    grid = Grid.equiangular(8, 16, poles=False)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3, 8, 16))
    olat = rng.uniform(-60, 60, size=m)
    olon = rng.uniform(0, 360, size=m)
    cols = rng.integers(0, 8 * 16, size=m)
    hx = x.reshape(n, 3, -1)[:, 0, cols] + 0.1 * x.reshape(n, 3, -1)[:, 1, cols]
    r = rng.uniform(0.5, 1.5, size=m)
    y = rng.normal(size=m)
    return grid, x, hx, y, r, olat, olon


def test_letkf_infinite_radius_equals_etkf():
    grid, x, hx, y, r, olat, olon = _grid_problem()
    xa, t = letkf(
        x, hx, y, r, obs_lat=olat, obs_lon=olon, grid=grid, radius_km=math.inf, inflation=1.1, max_elements=5000
    )
    xg, tg = etkf(x, hx, y, r, inflation=1.1)
    assert t.shape == (8, 16, 10, 10)
    np.testing.assert_allclose(t.numpy(), np.broadcast_to(tg.numpy(), t.shape), atol=1e-12)
    np.testing.assert_allclose(xa.numpy(), xg.numpy(), atol=1e-12)


def test_letkf_far_observation_leaves_column_unchanged():
    grid = Grid.equiangular(8, 16, poles=False)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 2, 8, 16))
    hx = x[:, 0, 1, 2][:, None]  # one observation at the column (1, 2)
    olat, olon = [float(grid.lat[1])], [float(grid.lon[2])]
    xa, t = letkf(x, hx, [5.0], [0.1], obs_lat=olat, obs_lon=olon, grid=grid, radius_km=2000.0)
    # the antipodal-side columns (>2000 km away) are unchanged: identity weights
    far = (
        great_circle_km(
            torch.tensor(float(grid.lat[1])),
            torch.tensor(float(grid.lon[2])),
            torch.tensor(np.asarray(grid.lat, dtype=np.float64))[:, None],
            torch.tensor(np.asarray(grid.lon, dtype=np.float64))[None],
        )
        > 2000.0
    )
    assert far.sum() > 50
    np.testing.assert_allclose(t[far].numpy(), np.broadcast_to(np.eye(6), (int(far.sum()), 6, 6)), atol=1e-12)
    np.testing.assert_allclose(xa.numpy()[:, :, far.numpy()], x[:, :, far.numpy()], atol=1e-12)
    # the observed column moves towards the observation
    assert abs(xa[:, 0, 1, 2].mean().item() - 5.0) < abs(x[:, 0, 1, 2].mean() - 5.0)


def test_letkf_block_locality_does_not_change_the_weights():
    """Chunks keep only the observations in reach of their columns; the weights equal those computed with every
    observation in every chunk (block = all columns), for any block size."""
    grid = Grid.equiangular(12, 24, poles=False)
    rng = np.random.default_rng(5)
    n, m = 7, 300
    hx = rng.normal(size=(n, m))
    y, r = rng.normal(size=m), rng.uniform(0.5, 2.0, size=m)
    olat, olon = rng.uniform(-80, 80, m), rng.uniform(0, 360, m)
    kw = dict(obs_lat=olat, obs_lon=olon, grid=grid, radius_km=3000.0, inflation=1.1, rtpp=0.3)
    x = rng.normal(size=(n, 1, 12, 24))
    ref = letkf_weights(
        hx, y, r, n_columns=12 * 24, distance=_grid_distance(grid, olat, olon), radius=3000.0, inflation=1.1,
        rtpp=0.3, block=12 * 24,
    )  # fmt: skip
    for block in (1, 5, 16):
        t = letkf_weights(
            hx, y, r, n_columns=12 * 24, distance=_grid_distance(grid, olat, olon), radius=3000.0, inflation=1.1,
            rtpp=0.3, block=block,
        )  # fmt: skip
        np.testing.assert_allclose(t.numpy(), ref.numpy(), atol=1e-11)
    _, t = letkf(x, hx, y, r, **kw)
    np.testing.assert_allclose(t.reshape(-1, n, n).numpy(), ref.numpy(), atol=1e-11)


def test_letkf_neighbour_search_equals_all_pairs():
    """``letkf`` finds the observations in reach with a k-d tree (``neighbours``) instead of computing every
    column-observation distance; its weights equal the all-pairs ones, with observations 1 m inside and 1 m
    outside the cut-off of a column, at the poles and across the 0/360 longitude seam."""
    grid = Grid.equiangular(24, 48)  # with poles
    rng = np.random.default_rng(11)
    n, radius = 6, 1000.0
    lat0, lon0 = float(grid.lat[10]), float(grid.lon[0])  # a column on the 0/360 longitude seam
    olat, olon = [rng.uniform(-90, 90, 400)], [rng.uniform(0, 360, 400)]
    olat.append(np.array([90.0, -90.0, 89.99, 0.0, 0.0]))
    olon.append(np.array([0.0, 123.0, 359.999, 359.9999, 0.0001]))
    for d_km in (radius - 1e-3, radius + 1e-3):  # rings at the cut-off: bearings N, E, S, W
        delta, p1 = d_km / EARTH_RADIUS_KM, np.deg2rad(lat0)
        theta = np.deg2rad([0.0, 90.0, 180.0, 270.0])
        p2 = np.arcsin(np.sin(p1) * np.cos(delta) + np.cos(p1) * np.sin(delta) * np.cos(theta))
        dl = np.arctan2(np.sin(theta) * np.sin(delta) * np.cos(p1), np.cos(delta) - np.sin(p1) * np.sin(p2))
        olat.append(np.rad2deg(p2))
        olon.append((lon0 + np.rad2deg(dl)) % 360.0)
    olat, olon = np.concatenate(olat), np.concatenate(olon)
    d_col = great_circle_km(torch.tensor(lat0), torch.tensor(lon0), torch.as_tensor(olat), torch.as_tensor(olon))
    assert ((d_col - radius).abs() < 2e-3).sum() == 8  # the rings straddle the cut-off
    m = olat.size
    hx = rng.normal(size=(n, m))
    y, r = rng.normal(size=m), rng.uniform(0.5, 2.0, size=m)
    ref = letkf_weights(
        hx, y, r, n_columns=24 * 48, distance=_grid_distance(grid, olat, olon), radius=radius, inflation=1.1,
        rtpp=0.3, block=24 * 48,
    )  # fmt: skip
    _, t = letkf(rng.normal(size=(n, 1, 24, 48)), hx, y, r, obs_lat=olat, obs_lon=olon, grid=grid,
                 radius_km=radius, inflation=1.1, rtpp=0.3)  # fmt: skip
    np.testing.assert_allclose(t.reshape(-1, n, n).numpy(), ref.numpy(), atol=1e-12)
    assert not np.allclose(ref.numpy(), np.eye(n))  # the observations do move columns
    # the search itself: every observation within the cut-off of a column is among its neighbours
    lat2, lon2 = np.meshgrid(np.asarray(grid.lat, float), np.asarray(grid.lon, float), indexing="ij")
    near = _ball_neighbours(lat2.reshape(-1), lon2.reshape(-1), torch.as_tensor(olat), torch.as_tensor(olon), radius)
    inside = (_grid_distance(grid, olat, olon)(0, 24 * 48) < radius).numpy()
    for g in range(24 * 48):
        assert set(np.flatnonzero(inside[g])) <= set(near(g, g + 1).tolist()), g


@pytest.mark.parametrize("radius", [19000.0, 25000.0])
def test_letkf_neighbour_search_far_cut_off_and_unplaced_observations(radius):
    """A cut-off near or past the antipode (the chord's rounding could drop an antipodal observation: the search
    is skipped there), one-column blocks (no neighbouring column to bring a missed observation back), and
    observations without a finite position (no weight, as on the all-pairs path)."""
    grid = Grid.equiangular(12, 24, poles=False)  # 12 of its columns' antipodes fall outside a chord-2 ball
    rng = np.random.default_rng(4)
    lat2, lon2 = np.meshgrid(np.asarray(grid.lat, float), np.asarray(grid.lon, float), indexing="ij")
    olat = np.concatenate([-lat2.reshape(-1), rng.uniform(-90, 90, 30), [np.nan, 10.0]])
    olon = np.concatenate([(lon2.reshape(-1) + 180.0) % 360.0, rng.uniform(0, 360, 30), [10.0, np.inf]])
    n, m, g = 5, olat.size, 12 * 24
    hx = rng.normal(size=(n, m))
    y, r = rng.normal(size=m), rng.uniform(0.5, 2.0, size=m)
    kw = dict(radius=radius, inflation=1.1, rtpp=0.3)
    ref = letkf_weights(hx, y, r, n_columns=g, distance=_grid_distance(grid, olat, olon), block=g, **kw)
    _, t = letkf(
        rng.normal(size=(n, 1, 12, 24)),
        hx,
        y,
        r,
        obs_lat=olat,
        obs_lon=olon,
        grid=grid,
        radius_km=radius,
        inflation=1.1,
        rtpp=0.3,
        max_elements=n * m,
    )  # one column per block
    assert torch.isfinite(t).all()
    np.testing.assert_allclose(t.reshape(-1, n, n).numpy(), ref.numpy(), atol=1e-12)


def _grid_distance(grid, olat, olon):
    lat2, lon2 = np.meshgrid(np.asarray(grid.lat, float), np.asarray(grid.lon, float), indexing="ij")
    clat, clon = torch.as_tensor(lat2.reshape(-1)), torch.as_tensor(lon2.reshape(-1))
    ola, olo = torch.as_tensor(olat), torch.as_tensor(olon)
    return lambda s, e: great_circle_km(clat[s:e, None], clon[s:e, None], ola[None], olo[None])


def test_apply_weights_and_rtps():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(5, 3, 4)))
    t = torch.as_tensor(rng.normal(size=(4, 5, 5)))
    out = apply_weights(x, t)
    ref = np.einsum("wij,icw->jcw", t.numpy(), x.numpy())
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    # RTPS with alpha = 1 restores the prior spread, keeps the analysis mean
    xa = 0.3 * x + 1.0
    back = rtps(x, xa, 1.0)
    np.testing.assert_allclose(back.std(0).numpy(), x.std(0).numpy(), rtol=1e-10)
    np.testing.assert_allclose(back.mean(0).numpy(), xa.mean(0).numpy(), atol=1e-12)


def test_letkf_bad_input():
    with pytest.raises(ValueError, match=r"letkf: field 'R' has value -1"):
        letkf_weights(
            np.zeros((3, 2)),
            np.zeros(2),
            np.array([1.0, -1.0]),
            n_columns=1,
            distance=lambda s, e: torch.zeros(e - s, 2),
            radius=1.0,
        )
    with pytest.raises(ValueError, match=r"etkf: field 'HX' has 1 member"):
        etkf_weights(np.zeros((1, 2)), np.zeros(2), np.ones(2))


# ------------------------------------------------------------------------------------------------------------
# Lorenz-96 twin (DAPPER sakov2008 setting: Nx=40, F=8, dt=0.05 RK4, all observed every step, R = I)
# ------------------------------------------------------------------------------------------------------------


def _l96_tendency(x: np.ndarray, forcing: float = 8.0) -> np.ndarray:
    return (np.roll(x, -1, -1) - np.roll(x, 2, -1)) * np.roll(x, 1, -1) - x + forcing


def _l96_step(x: np.ndarray, dt: float = 0.05) -> np.ndarray:
    k1 = _l96_tendency(x)
    k2 = _l96_tendency(x + 0.5 * dt * k1)
    k3 = _l96_tendency(x + 0.5 * dt * k2)
    k4 = _l96_tendency(x + dt * k3)
    return x + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)


def test_letkf_lorenz96_twin():
    nx, n, steps, burn = 40, 20, 700, 200
    rng = np.random.default_rng(1)
    truth = 8.0 + rng.normal(size=nx)
    for _ in range(1000):
        truth = _l96_step(truth)
    clim = []
    ens = truth + rng.normal(size=(n, nx)) * 3.0
    idx = torch.arange(nx, dtype=torch.float64)

    def dist(s: int, e: int) -> torch.Tensor:  # periodic 1-D distance between grid points and observations
        dd = (idx[s:e, None] - idx[None]).abs()
        return torch.minimum(dd, nx - dd)

    err = []
    for k in range(steps):
        truth = _l96_step(truth)
        ens = _l96_step(ens)
        y = truth + rng.normal(size=nx)
        t = letkf_weights(ens, y, np.ones(nx), n_columns=nx, distance=dist, radius=12.0, inflation=1.04)
        ens = apply_weights(torch.as_tensor(ens), t).numpy()
        if k >= burn:
            err.append(np.sqrt(np.mean((ens.mean(0) - truth) ** 2)))
            clim.append(truth)
    rmse = float(np.mean(err))
    clim = np.asarray(clim)
    clim_rmse = float(np.sqrt(np.mean((clim - clim.mean()) ** 2)))
    # DAPPER (data.md section 3): climatology 3.6, LETKF(N=7) 0.22, tuned EnKF (N=24..40) 0.18
    assert clim_rmse > 3.0
    print(f"L96 LETKF N=20: analysis RMSE {rmse:.3f}, climatology {clim_rmse:.2f}")
    assert rmse < 0.26, rmse


def test_old_letkf_path_warns_and_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    """appa_core.letkf (0.1) moved next to the EnKF that cycles it; the old path warns for one release."""
    import importlib
    import sys

    import appa_naturerun.letkf as new

    monkeypatch.delitem(sys.modules, "appa_core.letkf", raising=False)
    with pytest.warns(DeprecationWarning, match=r"appa_core.letkf is deprecated .* moved to appa_naturerun.letkf"):
        old = importlib.import_module("appa_core.letkf")
    assert old is new and old.letkf is new.letkf
