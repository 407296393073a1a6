"""Scores against brute-force and closed-form references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import xarray as xr

from appa_core.metrics import (
    area_weights,
    crps,
    ensemble_mean_rmse,
    score_table,
    spread_skill_ratio,
    zonal_power_spectrum,
)

LAT = np.linspace(80.0, -80.0, 9)
LON = np.arange(16) * 22.5


def _ds(values: np.ndarray, dims: tuple[str, ...]) -> xr.Dataset:
    coords = {"latitude": LAT, "longitude": LON, "time": np.arange(values.shape[dims.index("time")])}
    return xr.Dataset({"t": (dims, values)}, coords=coords)


def test_area_weights_mean_one_and_order_free() -> None:
    w = area_weights(LAT)
    assert float(w.mean()) == pytest.approx(1.0)
    w_rev = area_weights(LAT[::-1])
    np.testing.assert_allclose(w.values, w_rev.values[::-1])
    # cell areas are proportional to cos(lat) for interior rows of an equiangular grid
    np.testing.assert_allclose(w.values[2] / w.values[4], math.cos(math.radians(LAT[2])), rtol=1e-12)


def test_rmse_matches_hand_computation() -> None:
    rng = np.random.default_rng(0)
    truth = _ds(rng.normal(size=(2, 9, 16)), ("time", "latitude", "longitude"))
    ens = _ds(rng.normal(size=(3, 2, 9, 16)), ("member", "time", "latitude", "longitude"))
    got = ensemble_mean_rmse(ens, truth).t.values
    w = area_weights(LAT).values[:, None]
    err = ens.t.values.mean(0) - truth.t.values
    want = np.sqrt((err**2 * w).mean(axis=(1, 2)))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_fair_crps_equals_pairwise_definition() -> None:
    rng = np.random.default_rng(1)
    m = 5
    truth = _ds(rng.normal(size=(1, 9, 16)), ("time", "latitude", "longitude"))
    ens = _ds(rng.normal(size=(m, 1, 9, 16)), ("member", "time", "latitude", "longitude"))
    x, y = ens.t.values, truth.t.values
    skill = np.abs(x - y).mean(0)
    pair = np.abs(x[:, None] - x[None, :]).sum((0, 1))
    point = skill - pair / (2 * m * (m - 1))
    want = (point * area_weights(LAT).values[:, None]).mean(axis=(1, 2))
    np.testing.assert_allclose(crps(ens, truth).t.values, want, rtol=1e-12)


def test_crps_of_large_gaussian_ensemble_matches_closed_form() -> None:
    # CRPS(N(0, 1), y) = y (2 Phi(y) - 1) + 2 phi(y) - 1/sqrt(pi); at y = 0: 2 phi(0) - 1/sqrt(pi)
    rng = np.random.default_rng(2)
    ens = _ds(rng.normal(size=(400, 1, 9, 16)), ("member", "time", "latitude", "longitude"))
    truth = _ds(np.zeros((1, 9, 16)), ("time", "latitude", "longitude"))
    want = 2 / math.sqrt(2 * math.pi) - 1 / math.sqrt(math.pi)
    assert float(crps(ens, truth).t.mean()) == pytest.approx(want, abs=0.01)


def test_spread_skill_ratio_is_one_when_truth_is_a_member_draw() -> None:
    rng = np.random.default_rng(3)
    m, nt = 10, 40
    centre = rng.normal(size=(nt, 9, 16))
    ens = _ds(centre + rng.normal(size=(m, nt, 9, 16)), ("member", "time", "latitude", "longitude"))
    truth = _ds(centre + rng.normal(size=(nt, 9, 16)), ("time", "latitude", "longitude"))
    assert float(spread_skill_ratio(ens, truth).t) == pytest.approx(1.0, abs=0.03)
    table = score_table(ens, truth)
    assert list(table.columns) == ["rmse", "crps", "spread", "ssr"]
    assert table.loc["t", "ssr"] == pytest.approx(1.0, abs=0.03)


def test_score_table_splits_levels() -> None:
    rng = np.random.default_rng(4)
    dims = ("member", "time", "level", "latitude", "longitude")
    coords = {"latitude": LAT, "longitude": LON, "time": [0], "level": [500, 850]}
    ens = xr.Dataset({"z": (dims, rng.normal(size=(4, 1, 2, 9, 16)))}, coords=coords)
    truth = ens.isel(member=0, drop=True)
    table = score_table(ens, truth)
    assert list(table.index) == ["z@500", "z@850"]


def test_zonal_spectrum_parseval_and_peak() -> None:
    lon = np.deg2rad(LON)
    field = 3.0 * np.cos(4 * lon)[None, :] * np.ones((9, 1)) + 0.5
    da = xr.DataArray(field, dims=("latitude", "longitude"), coords={"latitude": LAT, "longitude": LON})
    spec = zonal_power_spectrum(da)
    assert int(spec.argmax("wavenumber")) == 4
    assert float(spec.sum()) == pytest.approx(float((field**2).mean()), rel=1e-12)
    assert float(spec.sel(wavenumber=0)) == pytest.approx(0.25)


def test_mismatched_inputs_raise() -> None:
    truth = _ds(np.zeros((1, 9, 16)), ("time", "latitude", "longitude")).rename(t="q")
    ens = _ds(np.zeros((2, 1, 9, 16)), ("member", "time", "latitude", "longitude"))
    with pytest.raises(ValueError, match="share no gridded variable"):
        score_table(ens, truth)
