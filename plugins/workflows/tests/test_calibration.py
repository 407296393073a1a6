"""SpreadCalibration: fitted factors, exact pooled spread/skill on the fitting cases, unchanged means, errors."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from appa_core.metrics import ensemble_mean_rmse, spread_skill_ratio
from appa_workflows.calibration import SpreadCalibration

LAT = np.linspace(80.0, -80.0, 16)
LON = np.arange(32) * 11.25
TIME = np.array(["2000-12-05T00", "2000-12-05T06", "2000-12-05T12"], dtype="datetime64[ns]")


def _case(rng: np.random.Generator, widen: dict[str, float], members: int = 8) -> tuple[xr.Dataset, xr.Dataset]:
    """A calibrated ensemble (truth and members exchangeable around a common centre), then each variable's
    deviations from the ensemble mean multiplied by ``widen``: its ideal factor is ``1 / widen``."""
    shape2 = (TIME.size, LAT.size, LON.size)
    shape3 = (TIME.size, 2, LAT.size, LON.size)

    def field(shape: tuple[int, ...], scale: float) -> tuple[np.ndarray, np.ndarray]:
        centre = rng.normal(0.0, 3.0 * scale, shape)
        truth = centre + rng.normal(0.0, scale, shape)
        ens = centre + rng.normal(0.0, scale, (members, *shape))
        return truth, ens

    t2, e2 = field(shape2, 1.5)
    t3, e3 = field(shape3, 2.0)
    dims2, dims3 = ("time", "latitude", "longitude"), ("time", "level", "latitude", "longitude")
    coords = {"time": TIME, "latitude": LAT, "longitude": LON, "level": [500, 850]}
    truth = xr.Dataset({"2m_temperature": (dims2, t2), "temperature": (dims3, t3)}, coords=coords)
    ens = xr.Dataset(
        {"2m_temperature": (("member", *dims2), e2), "temperature": (("member", *dims3), e3)}, coords=coords
    )
    mean = ens.mean("member")
    ens["2m_temperature"] = mean["2m_temperature"] + widen["t2m"] * (ens["2m_temperature"] - mean["2m_temperature"])
    w = xr.DataArray([widen["t500"], widen["t850"]], dims=("level",), coords={"level": [500, 850]})
    ens["temperature"] = (mean["temperature"] + w * (ens["temperature"] - mean["temperature"])).transpose(
        "member", *dims3
    )
    return ens, truth


WIDEN = {"t2m": 2.0, "t500": 0.5, "t850": 1.6}


def test_fit_recovers_the_factors_and_makes_the_pooled_ratio_one() -> None:
    rng = np.random.default_rng(0)
    cases = [_case(rng, WIDEN) for _ in range(3)]
    cal = SpreadCalibration.fit([c[0] for c in cases], [c[1] for c in cases])
    assert set(cal.factors) == {"2m_temperature", "temperature@500", "temperature@850"}
    # 3 cases x 3 times x 512 points x 8 members: the factor is within a few % of 1 / widen
    assert cal.factors["2m_temperature"] == pytest.approx(1 / 2.0, rel=0.05)
    assert cal.factors["temperature@500"] == pytest.approx(1 / 0.5, rel=0.05)
    assert cal.factors["temperature@850"] == pytest.approx(1 / 1.6, rel=0.05)

    # on the fitting cases pooled, the spread/skill ratio is exactly 1 and the ensemble mean is untouched
    fitted = [cal.apply(ens) for ens, _ in cases]
    ens_all = xr.concat(fitted, "time", coords="minimal")
    truth_all = xr.concat([c[1] for c in cases], "time")
    ens_all["time"] = truth_all["time"] = np.arange(ens_all.sizes["time"])  # repeated dates: positions as time
    ssr = spread_skill_ratio(ens_all, truth_all)
    np.testing.assert_allclose(ssr["2m_temperature"].values, 1.0, rtol=1e-10)
    np.testing.assert_allclose(ssr["temperature"].values, [1.0, 1.0], rtol=1e-10)
    for (ens, truth), cal_ens in zip(cases, fitted, strict=True):
        before, after = ensemble_mean_rmse(ens, truth), ensemble_mean_rmse(cal_ens, truth)
        for v in before.data_vars:
            np.testing.assert_allclose(after[v].values, before[v].values, rtol=1e-12)

    # before calibration the same ratios were far from 1 (the test can fail)
    raw = xr.concat([c[0] for c in cases], "time", coords="minimal")
    raw["time"] = truth_all["time"]
    raw_ssr = spread_skill_ratio(raw, truth_all)
    assert float(raw_ssr["2m_temperature"]) > 1.8
    assert float(raw_ssr["temperature"].sel(level=500)) < 0.6


def test_factors_carry_to_new_cases() -> None:
    rng = np.random.default_rng(1)
    train = [_case(rng, WIDEN) for _ in range(3)]
    cal = SpreadCalibration.fit([c[0] for c in train], [c[1] for c in train])
    ens, truth = _case(rng, WIDEN)
    ssr = spread_skill_ratio(cal.apply(ens), truth)
    np.testing.assert_allclose(ssr["2m_temperature"].values, 1.0, atol=0.1)
    np.testing.assert_allclose(ssr["temperature"].values, 1.0, atol=0.1)


def test_fit_uses_only_the_times_and_points_the_truth_has() -> None:
    """A truth that covers fewer times, or has a missing (NaN) time, gives the factors of the times it has."""
    rng = np.random.default_rng(4)
    ens, truth = _case(rng, WIDEN)
    ref = SpreadCalibration.fit([ens.isel(time=[0, 1])], [truth.isel(time=[0, 1])])
    short = SpreadCalibration.fit([ens], [truth.isel(time=[0, 1])])
    holed = truth.copy(deep=True)
    holed["2m_temperature"][2] = np.nan
    holed["temperature"][2] = np.nan
    nan = SpreadCalibration.fit([ens], [holed])
    for k, v in ref.factors.items():
        assert short.factors[k] == pytest.approx(v, rel=1e-12)
        assert nan.factors[k] == pytest.approx(v, rel=1e-12)
    ens["deterministic"] = ens["2m_temperature"].mean("member")  # no member dim: not calibrated, not refused
    assert set(SpreadCalibration.fit([ens], [truth]).factors) == set(ref.factors)


def test_variables_without_a_factor_and_diagnostics_are_left_alone() -> None:
    rng = np.random.default_rng(2)
    ens, _ = _case(rng, WIDEN)
    ens["obs_st_innovation"] = (("member", "obs"), rng.normal(size=(8, 5)))
    cal = SpreadCalibration({"temperature@850": 2.0})
    out = cal.apply(ens)
    xr.testing.assert_identical(out["2m_temperature"], ens["2m_temperature"])
    xr.testing.assert_identical(out["obs_st_innovation"], ens["obs_st_innovation"])
    xr.testing.assert_identical(out["temperature"].sel(level=500), ens["temperature"].sel(level=500))
    dev_in = ens["temperature"].sel(level=850) - ens["temperature"].sel(level=850).mean("member")
    dev_out = out["temperature"].sel(level=850) - out["temperature"].sel(level=850).mean("member")
    np.testing.assert_allclose(dev_out.values, 2.0 * dev_in.values, rtol=1e-12, atol=1e-12)
    assert SpreadCalibration.from_dict(cal.to_dict()) == cal


def test_bad_input_is_refused_in_one_line() -> None:
    rng = np.random.default_rng(3)
    ens, truth = _case(rng, WIDEN)
    with pytest.raises(ValueError, match=r"factor 'T2M' has value -1.0"):
        SpreadCalibration({"T2M": -1.0})
    with pytest.raises(ValueError, match=r"factor 'T2M' has value nan"):
        SpreadCalibration({"T2M": float("nan")})
    with pytest.raises(ValueError, match=r"as many truths as forecasts.*2 forecasts and 1 truths"):
        SpreadCalibration.fit([ens, ens], [truth])
    with pytest.raises(ValueError, match=r"1 member\(s\) along 'member'"):
        SpreadCalibration.fit([ens.isel(member=[0])], [truth])
    with pytest.raises(ValueError, match=r"zero ensemble spread for \['2m_temperature'"):
        flat = ens.copy()
        flat["2m_temperature"] = flat["2m_temperature"] * 0 + 1.0
        SpreadCalibration.fit([flat], [truth])
    with pytest.raises(ValueError, match=r"no ensemble dimension 'member'"):
        SpreadCalibration({"2m_temperature": 0.5}).apply(truth)
    with pytest.raises(ValueError, match=r"no 'factors' key"):
        SpreadCalibration.from_dict({"T2M": 0.5})
