"""The one great-circle distance, Gaspari-Cohn taper and Woodbury solve of the repository."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from appa_core.geo import EARTH_RADIUS_KM, gaspari_cohn, great_circle_km, haversine
from appa_core.linalg import woodbury_capacitance, woodbury_solve


def test_earth_radius_is_the_iugg_mean_radius() -> None:
    a, f = 6378.137, 1 / 298.257223563  # WGS84
    assert pytest.approx((2 * a + a * (1 - f)) / 3, abs=1e-4) == EARTH_RADIUS_KM


def test_great_circle_closed_forms_numpy_and_torch() -> None:
    r = EARTH_RADIUS_KM
    assert great_circle_km(0.0, 0.0, 0.0, 90.0) == pytest.approx(math.pi / 2 * r, rel=1e-14)
    assert great_circle_km(90.0, 0.0, -90.0, 17.0) == pytest.approx(math.pi * r, rel=1e-14)
    assert great_circle_km(10.0, 359.0, 10.0, 1.0) == pytest.approx(
        2 * r * math.asin(math.cos(math.radians(10)) * math.sin(math.radians(1))), rel=1e-12
    )
    # tiny distances are accurate (the law of cosines loses them): 1 m along a meridian
    assert great_circle_km(45.0, 7.0, 45.0 + math.degrees(1e-3 / r), 7.0) == pytest.approx(1e-3, rel=1e-8)
    lat = np.array([0.0, 30.0, -60.0])
    lon = np.array([0.0, 120.0, 300.0])
    d_np = great_circle_km(lat[:, None], lon[:, None], lat[None], lon[None])
    d_t = great_circle_km(*(torch.as_tensor(a) for a in (lat[:, None], lon[:, None], lat[None], lon[None])))
    assert isinstance(d_t, torch.Tensor) and np.allclose(d_t.numpy(), d_np, rtol=1e-14)
    assert np.allclose(d_np, d_np.T) and np.all(np.diag(d_np) == 0)
    assert haversine(0.0, 0.0, 0.0, 180.0) == pytest.approx(1.0)


def test_gaspari_cohn_convention_and_values() -> None:
    z = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0])
    g = gaspari_cohn(z)
    assert g[0] == 1.0 and g[4] == 0.0 and g[5] == 0.0
    assert g[2] == pytest.approx(1 - 5 / 3 + 0.625 + 0.5 - 0.25)  # 0.2083 at the half-width
    assert g[1] == pytest.approx(-0.25 / 32 + 0.5 / 16 + 0.625 / 8 - 5 / 12 + 1)
    # continuous (with its first derivatives) at z = 1 and z = 2
    for z0 in (1.0, 2.0):
        lo, hi = gaspari_cohn(np.array([z0 - 1e-7, z0 + 1e-7]))
        assert lo == pytest.approx(hi, abs=1e-6)
    # torch agrees with numpy, keeps its dtype and is differentiable
    zt = torch.linspace(0, 2.5, 51, dtype=torch.float64, requires_grad=True)
    gt = gaspari_cohn(zt)
    assert np.allclose(gt.detach().numpy(), gaspari_cohn(zt.detach().numpy()), atol=1e-15)
    (grad,) = torch.autograd.grad(gt.sum(), zt)
    assert torch.isfinite(grad).all() and (grad <= 1e-12).all()  # monotone non-increasing
    assert gaspari_cohn(torch.tensor([0.5], dtype=torch.float32)).dtype == torch.float32


@pytest.mark.parametrize("batched", [False, True])
def test_woodbury_solve_matches_dense(batched: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    d, r, n = 40, 5, 3
    f = torch.randn(d, r, generator=gen, dtype=torch.float64)
    dinv = 1.0 / (0.1 + torch.rand((n, d) if batched else (d,), generator=gen, dtype=torch.float64))
    v = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = woodbury_solve(v, f, dinv, woodbury_capacitance(f, dinv))
    dinv_rows = dinv if batched else dinv.expand(n, d)
    for i in range(n):
        dense = torch.diag(1.0 / dinv_rows[i]) + f @ f.T
        assert torch.allclose(x[i], torch.linalg.solve(dense, v[i]), rtol=1e-10, atol=1e-12)
