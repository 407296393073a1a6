"""Observation quality control: plausibility bounds, background check, flags in the diagnostics, QCError, and
operator-name collisions refused before sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _guided_helpers import T0, PointPick, ar1_prior, make_spec, window_times

from appa_core.grid import Grid
from appa_core.obs import ObsSet
from appa_core.obs.errors import DiagonalGaussian
from appa_core.obs.qc import (
    FLAG_BACKGROUND,
    FLAG_BOUNDS,
    FLAG_PASS,
    QC,
    QCError,
    plausible_range,
    rows_bounds,
)
from appa_core.sampler import Sampler

SPEC = make_spec()


def test_plausible_ranges_catch_unit_mistakes() -> None:
    lo, hi = plausible_range("2m_temperature")
    assert lo <= 230.0 <= hi and not lo <= 15.0 <= hi  # kelvin yes, degrees Celsius no
    lo, hi = plausible_range("mean_sea_level_pressure")
    assert lo <= 101_325.0 <= hi and not lo <= 1013.25 <= hi  # Pa yes, hPa no
    lo, hi = plausible_range("geopotential", [500.0, 850.0])
    np.testing.assert_array_less(lo, [55_000.0, 14_000.0])
    np.testing.assert_array_less([58_000.0, 16_000.0], hi)
    assert hi[0] < 9.80665 * 8000  # a 500 hPa height in metres*g*1.6 is refused
    assert plausible_range("geopotential") is None and plausible_range("made_up_quantity") is None


def test_rows_bounds_from_metadata() -> None:
    lo, hi = rows_bounds({"variable": np.array(["2m_temperature", "temperature", "xyz"]), "level": [np.nan, 850, 1]}, 3)
    assert lo[0] == 180.0 and lo[1] == 150.0 and np.isnan(lo[2]) and np.isnan(hi[2])
    lo, hi = rows_bounds({"channel": np.array(["geopotential@500", "10m_u_component_of_wind"])}, 2)
    assert 40_000 < lo[0] < 56_000 < hi[0] and hi[1] == 80.0
    assert rows_bounds({"lat": np.zeros(2)}, 2) is None


def _problem(n_obs: int = 20, bad: int = 1, shift: float = 60.0):  # type: ignore[no-untyped-def]
    grid = Grid.equiangular(3, 4)
    prior = ar1_prior(2, grid, SPEC, rho=0.8, gen=torch.Generator().manual_seed(0))
    g = np.random.default_rng(0)
    truth = prior.sample(1, torch.Generator().manual_seed(1))[0].reshape(-1).numpy()
    idx = g.choice(prior.dim, n_obs, replace=False)
    std = 0.3 * prior.scale.reshape(-1).numpy()[idx]
    y = truth[idx] + g.normal(0, std)
    y[:bad] += shift * prior.scale.reshape(-1).numpy()[idx[:bad]]
    op = PointPick(index=idx, obs=y, noise=DiagonalGaussian(std), name="picks")
    return grid, prior, op, idx, y, std


def test_background_check_rejects_a_gross_error_and_the_rest_is_the_exact_posterior() -> None:
    """One observation 60 prior std off: flagged by the background check (its departure printed in the
    diagnostics), left out of the guidance, so the ensemble matches the Kalman posterior of the other 19."""
    grid, prior, op, idx, y, std = _problem()
    ds = Sampler(prior, progress=False).posterior(obs=[op], start=T0, length=2, members=400, seed=0)
    flags = ds["obs_picks_qc"].values
    assert flags[0] == FLAG_BACKGROUND and (flags[1:] == FLAG_PASS).all()
    assert ds["obs_picks_qc"].attrs["flag_meanings"] == "pass outside_plausible_range background_check"
    dep = ds["obs_picks_departure"].values
    assert abs(dep[0]) > 20 and np.abs(dep[1:]).max() < 5
    assert json.loads(ds.attrs["appa_qc"])["picks"] == {
        "total": 20, "pass": 19, "outside_plausible_range": 0, "background_check": 1,
    }  # fmt: skip
    keep = PointPick(index=idx[1:], obs=y[1:], noise=DiagonalGaussian(std[1:]), name="keep")
    obs = ObsSet([keep]).prepare(grid, SPEC, window_times(2))
    post = prior.condition(obs.matrix(), obs.values, obs.noise.dense_cov())
    x = np.stack([ds[v].values for v in SPEC.surface], axis=2).reshape(400, -1)
    sd = np.sqrt(np.diag(post.dense_cov().numpy()))
    err = (x.mean(0) - post.mean.reshape(-1).numpy()) / sd
    assert np.sqrt((err**2).mean()) < 0.1  # Monte-Carlo error 0.05
    # without QC the gross error drags the analysis: the same check fails by far
    ds_raw = Sampler(prior, progress=False, qc=None).posterior(obs=[op], start=T0, length=2, members=400, seed=0)
    x_raw = np.stack([ds_raw[v].values for v in SPEC.surface], axis=2).reshape(400, -1)
    err_raw = (x_raw.mean(0) - post.mean.reshape(-1).numpy()) / sd
    assert np.sqrt((err_raw**2).mean()) > 0.5
    assert "obs_picks_qc" not in ds_raw


def test_bounds_check_uses_the_operator_bounds() -> None:
    _, prior, _, idx, y, std = _problem(bad=0)

    class Bounded(PointPick):
        def bounds(self):  # type: ignore[no-untyped-def]
            return np.full(self.size, -1e9), np.where(np.arange(self.size) == 3, y[3] - 6 * std[3], 1e9)  # > 5 sd

    op = Bounded(index=idx, obs=y, noise=DiagonalGaussian(std), name="picks")
    res = Sampler(prior, progress=False, qc=QC(background=False)).sample(obs=[op], start=T0, length=2, members=2)
    assert res.qc is not None and res.qc.flags[3] == FLAG_BOUNDS and (np.delete(res.qc.flags, 3) == 0).all()
    assert res.qc.summary() == "QC picks: 1 of 20 rejected (1 outside plausible range, 0 background check)"


def test_mostly_rejected_observations_stop_the_run() -> None:
    _, prior, op, *_ = _problem(bad=15)
    with pytest.raises(QCError, match=r"quality control rejected 75% of the 20 observations .* QC picks: 15 of 20"):
        Sampler(prior, progress=False).sample(obs=[op], start=T0, length=2, members=2, seed=0)
    with pytest.raises(ValueError, match=r"QC: field 'k' has value 0"):
        QC(k=0)


def test_operator_names_that_collide_are_refused_before_sampling() -> None:
    """Issue: names 'a-b' and 'a_b' failed in xarray after sampling had finished; 'st', 'st', 'st#2' lost the
    second one's diagnostics."""
    _, prior, _, idx, y, std = _problem(bad=0)

    def pick(name: str, k: slice) -> PointPick:
        return PointPick(index=idx[k], obs=y[k], noise=DiagonalGaussian(std[k]), name=name)

    with pytest.raises(ValueError, match=r"operator names 'a-b' and 'a_b' both give the output key 'a_b'"):
        Sampler(prior, progress=False).posterior(
            obs=[pick("a-b", slice(0, 5)), pick("a_b", slice(5, 10))], start=T0, length=2, members=2
        )
    ops = [pick("st", slice(0, 5)), pick("st", slice(5, 10)), pick("st#2", slice(10, 15))]
    assert ObsSet(ops).names == ["st", "st#2", "st#2#2"]
    ds = Sampler(prior, progress=False, qc=None).posterior(obs=ops, start=T0, length=2, members=2, seed=0)
    assert json.loads(ds.attrs["appa_operators"]) == ["st", "st_2", "st_2_2"]
    np.testing.assert_allclose(ds["obs_st_2_value"].values, y[5:10])
    np.testing.assert_allclose(ds["obs_st_2_2_value"].values, y[10:15])


def test_qc_with_autoregressive_chunks_and_per_member_context() -> None:
    """QC in autoregressive mode flags the gross row and the run completes; a per-member context (4 members)
    works with the 8-member background ensemble (review finding: it raised before)."""
    grid = Grid.equiangular(3, 4)
    prior = ar1_prior(2, grid, SPEC, rho=0.8, gen=torch.Generator().manual_seed(0))
    g = np.random.default_rng(0)
    d_state = SPEC.n_channels * 12
    idx = g.choice(4 * d_state, 12, replace=False)  # rows over 4 states
    idx[0] = 5  # a row in the first state, made a gross error
    std = np.full(12, 0.5)
    y = g.normal(0, 1.0, 12) * 3 + 280.0 * np.isin(idx % d_state // 12, [2])
    y[0] += 500.0
    op = PointPick(index=idx, obs=y, noise=DiagonalGaussian(std), name="picks")
    context = torch.as_tensor(prior.mean[:1]).expand(4, 1, *prior.mean.shape[1:]) + torch.randn(4, 1, 3, 3, 4)
    smp = Sampler(prior, steps=6, strategy="autoregressive", ar_context=1, progress=False)
    res = smp.sample(obs=[op], start=T0, length=4, members=4, seed=0, context=context)
    assert res.qc is not None and res.qc.flags[0] == FLAG_BACKGROUND
    assert res.solve is not None and bool(torch.isfinite(res.x).all())


def test_thresholds_account_for_noise_and_ensemble_size() -> None:
    """Noisy observations of a bounded quantity pass the plausibility check (without the 5-sigma margin 894 of
    the demo's 21,660 swath retrievals of humidity were flagged), and the background threshold is the Student-t
    equivalent of k Gaussian sigmas for the ensemble size (a plain 5 rejected 946 good demo observations)."""
    from appa_core.obs.qc import bounds_flags

    class Q:
        size = 3

        def bounds(self):  # type: ignore[no-untyped-def]
            return rows_bounds({"variable": np.array(["specific_humidity"] * 3)}, 3)

    values = torch.tensor([-1e-3, -1e-2, 0.005], dtype=torch.float64)  # kg/kg; error std 5e-4
    flags = bounds_flags([Q()], {"q": slice(0, 3)}, values, torch.full((3,), 5e-4, dtype=torch.float64))
    assert flags.tolist() == [FLAG_PASS, FLAG_BOUNDS, FLAG_PASS]
    assert QC().threshold() == pytest.approx(8.267, abs=1e-3) and QC(members=1000).threshold() < 5.1
