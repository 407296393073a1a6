"""Tests for appa_naturerun.enkf without jcm: weight mapping to the model grid, and LETKF cycling with a fake
ensemble model (linear advection on the native grid). One end-to-end test runs jcm and is skipped without it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

sys.path.insert(0, str(Path(__file__).parent))

from fake_model import GAUSS_LAT, LON, SIGMA

from appa_naturerun import convert as C
from appa_naturerun.enkf import apply_native, climatological_dates, nearest_index, run_enkf, weights_to_native

torch = pytest.importorskip("torch")
pytest.importorskip("appa_core")


def test_nearest_index_periodic():
    idx = nearest_index(np.array([0.0, 90.0, 180.0, 270.0]), np.array([359.0, 44.0, 46.0]), periodic=360.0)
    assert idx.tolist() == [0, 0, 1]


def test_weights_to_native_takes_nearest_wb2_column():
    wb2_lat, wb2_lon = C.target_latitudes(48), C.target_longitudes(96)
    n = 3
    w = np.zeros((48, 96, n, n))
    w[..., 0, 0] = np.arange(48)[:, None]  # row index
    w[..., 0, 1] = np.arange(96)[None, :]  # column index
    wn = weights_to_native(w, wb2_lat, wb2_lon, GAUSS_LAT, LON)
    assert wn.shape == (96, 48, n, n)
    rows = wn[0, :, 0, 0].astype(int)
    # every Gaussian latitude maps to the nearest equiangular row
    np.testing.assert_array_equal(rows, np.abs(GAUSS_LAT[:, None] - wb2_lat[None]).argmin(1))
    assert np.all(np.abs(wb2_lat[rows] - GAUSS_LAT) <= 1.875 + 1e-9)
    np.testing.assert_array_equal(wn[:, 5, 0, 1], np.arange(96))


def test_apply_native_matches_member_combination():
    rng = np.random.default_rng(0)
    n = 4
    fields = {"a": rng.normal(size=(n, 2, 96, 48)), "b": rng.normal(size=(n, 1, 96, 48))}
    wn = rng.normal(size=(96, 48, n, n))
    out = apply_native(fields, wn)
    j, lo, la = 2, 7, 11
    ref = sum(wn[lo, la, i, j] * fields["a"][i, :, lo, la] for i in range(n))
    np.testing.assert_allclose(out["a"][j, :, lo, la], ref, atol=1e-12)
    eye = np.broadcast_to(np.eye(n), (96, 48, n, n))
    np.testing.assert_allclose(apply_native(fields, eye)["b"], fields["b"], atol=1e-14)


# ------------------------------------------------------------------------------------------------------------
# fake ensemble: prognostic nodal fields on the native grid, advected one longitude per 6 h
# ------------------------------------------------------------------------------------------------------------


def _base_state() -> dict[str, np.ndarray]:
    lat = np.deg2rad(GAUSS_LAT)[None, None, :]
    lon = np.deg2rad(LON)[None, :, None]
    sig = SIGMA[:, None, None]
    return {
        "temperature": 220.0 + 70.0 * sig**0.3 * np.cos(lat) ** 2 + 3.0 * np.sin(2 * lon) * np.cos(lat),
        "u_wind": 30.0 * np.cos(lat) * (1 - sig) + 3.0 * np.sin(lon) + 0 * lat,
        "v_wind": 2.0 * np.sin(3 * lon) * np.cos(lat) + 0 * sig,
        "specific_humidity": 0.012 * sig**3 * np.cos(lat) ** 2 + 0 * lon,
        "normalized_surface_pressure": (1.0 + 0.01 * np.sin(lon) * np.cos(lat))[0][None],
    }


class FakeEnsemble:
    def __init__(self, states: list[dict[str, np.ndarray]], t0: np.datetime64):
        self.states = states
        self.members = len(states)
        self.t = np.datetime64(t0, "m")
        self.native_lat, self.native_lon = GAUSS_LAT, LON
        self.phis_native = np.zeros((48, 96))

    def now(self):
        return self.t

    def _native(self, s, times):
        t = s["temperature"]
        z = 287.0 * np.cumsum((t * -np.log(SIGMA)[:, None, None] / 3)[::-1], axis=0)[::-1]  # smooth, monotone
        data = {k: (("time", "level", "lon", "lat"), v[None]) for k, v in s.items() if v.shape[0] == 8}
        data["geopotential"] = (("time", "level", "lon", "lat"), z[None])
        data["normalized_surface_pressure"] = (("time", "lon", "lat"), s["normalized_surface_pressure"])
        return xr.Dataset(data, coords={"time": times, "level": SIGMA, "lon": LON, "lat": GAUSS_LAT})

    def advance(self, hours, save_hours):
        outs = [[] for _ in range(self.members)]
        for _ in range(hours // 6):
            self.t = self.t + np.timedelta64(6, "h")
            for i, s in enumerate(self.states):
                self.states[i] = {k: np.roll(v, 1, axis=1) for k, v in s.items()}
                outs[i].append(self._native(self.states[i], np.array([self.t], dtype="datetime64[ns]")))
        every = save_hours // 6
        return [xr.concat(o[every - 1 :: every], dim="time") for o in outs]

    def get_nodal(self):
        return {k: np.stack([s[k] for s in self.states]) for k in self.states[0]}

    def set_nodal(self, fields):
        for i in range(self.members):
            self.states[i] = {k: np.asarray(v[i]) for k, v in fields.items()}


def _perturbed(rng, scale):
    base = _base_state()
    lat = np.deg2rad(GAUSS_LAT)[None, None, :]
    lon = np.deg2rad(LON)[None, :, None]
    out = dict(base)
    k, phase = rng.integers(1, 4), rng.uniform(0, 2 * np.pi)
    pattern = np.cos(lat) * np.sin(k * lon + phase)
    out["temperature"] = base["temperature"] + scale * rng.normal() * pattern + scale * 0.5 * rng.normal() * np.cos(lat)
    return out


def test_run_enkf_with_fake_model_reduces_error(tmp_path):
    from appa_workflows.observing import ObservingSystem

    t0 = np.datetime64("2000-03-01T00:00")
    start = {k: np.roll(v, -1, axis=1) for k, v in _base_state().items()}  # truth at t0 - 6 h
    truth_model = FakeEnsemble([start], t0 - np.timedelta64(6, "h"))
    natives = truth_model.advance(6 * 7, 6)[0]
    truth = C.convert_chunk(natives, np.zeros((48, 96)))
    rng = np.random.default_rng(0)
    # biased, spread-out initial ensemble: the truth plus a shared offset pattern plus member noise
    states = [_perturbed(rng, 4.0) for _ in range(8)]
    for s in states:
        s["temperature"] = s["temperature"] + 2.0
    ens = FakeEnsemble(states, t0)
    observing = ObservingSystem(stations=200, station_variables=("2m_temperature",), swaths=0, sondes=0, radiance=False)
    res = run_enkf(
        ens, truth, tmp_path / "out", cycles=3, observing=observing, seed=1, forecast_hours=12, inflation=1.0, rtpp=0.0
    )
    s = res.summary
    assert len(s["cycles"]) == 3
    assert all(c["n_obs"] > 0 for c in s["cycles"])
    first, last = s["cycles"][0], s["cycles"][-1]
    assert first["analysis"]["T850"] < 0.7 * first["background"]["T850"]
    assert first["analysis"]["T2M"] < 0.7 * first["background"]["T2M"]
    assert last["analysis"]["T850"] < 0.3 * first["background"]["T850"]
    a = xr.open_zarr(res.analysis)
    assert dict(a["temperature"].sizes) == {"member": 8, "time": 3, "level": 4, "latitude": 48, "longitude": 96}
    assert a.attrs["kind"] == "analysis"
    f = xr.open_zarr(res.forecast)
    assert f["lead_hours"].values.tolist() == [6, 12]
    # the model state got the analysis: the fake's WB2 forecast of the first lead matches the advected analysis
    assert s["forecast"]["6"]["forecast"]["T850"] < s["cycles"][0]["background"]["T850"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["config"]["members"] == 8


def test_run_enkf_rtps_relaxes_the_analysis_spread_to_the_background_spread(tmp_path):
    """RTPS with alpha = 1 gives the analysis the background spread elementwise (Whitaker & Hamill 2012), so its
    analysis spread is larger than without it, and the mean (hence the error reduction) is unchanged."""
    from appa_workflows.observing import ObservingSystem

    t0 = np.datetime64("2000-03-01T00:00")
    start = {k: np.roll(v, -1, axis=1) for k, v in _base_state().items()}
    natives = FakeEnsemble([start], t0 - np.timedelta64(6, "h")).advance(6 * 3, 6)[0]
    truth = C.convert_chunk(natives, np.zeros((48, 96)))
    observing = ObservingSystem(stations=200, station_variables=("2m_temperature",), swaths=0, sondes=0, radiance=False)
    out = {}
    for alpha in (0.0, 1.0):
        rng = np.random.default_rng(0)
        ens = FakeEnsemble([_perturbed(rng, 4.0) for _ in range(8)], t0)
        out[alpha] = run_enkf(
            ens, truth, tmp_path / f"a{alpha}", cycles=1, observing=observing, seed=1, forecast_hours=0,
            inflation=1.0, rtpp=0.0, rtps=alpha,
        ).summary["cycles"][0]  # fmt: skip
    assert out[1.0]["analysis_spread"]["T850"] > 1.5 * out[0.0]["analysis_spread"]["T850"]
    assert out[1.0]["analysis"]["T850"] == pytest.approx(out[0.0]["analysis"]["T850"], rel=1e-6)
    assert out[1.0]["analysis"]["T850"] < 0.8 * out[1.0]["background"]["T850"]


def test_climatological_dates_nearest_in_day_of_year(tmp_path):
    """Members come from the climate run's dates nearest in day of year (cyclic across the year's end), skipping
    the dates within exclude_days of the start (for a truth that is the climate run itself)."""
    store = tmp_path / "train.zarr"
    (tmp_path / "train.zarr.state").mkdir()
    (tmp_path / "train.zarr.state" / "run.json").write_text(
        json.dumps({"start": "2000-01-01T00:00", "last_time": "2000-12-30T18:00", "seed": 1, "spinup_days": 0})
    )
    d = lambda *s: [np.datetime64(x, "m") for x in s]  # noqa: E731
    t = np.datetime64("2000-02-01T00:00")
    assert climatological_dates(store, t, 5) == d("2000-01-25", "2000-01-28", "2000-01-31", "2000-02-03", "2000-02-06")
    assert climatological_dates(store, t, 3, exclude_days=10) == d("2000-01-19", "2000-01-22", "2000-02-12")
    wrap = climatological_dates(store, np.datetime64("2000-01-02T00:00"), 4)
    assert wrap == d("2000-01-01", "2000-01-04", "2000-01-07", "2000-12-29")
    with pytest.raises(ValueError, match="need members=200"):
        climatological_dates(store, t, 200, every_days=3, exclude_days=30)


@pytest.mark.jcm
@pytest.mark.skipif(importlib.util.find_spec("jcm") is None, reason="jcm is not installed")
def test_jcm_ensemble_roundtrip_identity_weights(tmp_path):
    """Identity weights through nodal -> modal leave the jcm members' spectral state unchanged (on a 1-day nature
    run written here, so that the test reads no machine-local data)."""
    from appa_naturerun import run_nature
    from appa_naturerun.enkf import JcmEnsemble

    store = run_nature(tmp_path / "nr.zarr", days=1, seed=3, spinup_days=0, progress=False, levels=(500, 850))
    ens = JcmEnsemble(store, np.datetime64("2000-01-01T18:00"), members=2, seed=0, perturbation=0.05)
    before = np.asarray(ens.dyn[1].temperature_variation)
    nodal = ens.get_nodal()
    ens.set_nodal(apply_native(nodal, np.broadcast_to(np.eye(2), (96, 48, 2, 2))))
    after = np.asarray(ens.dyn[1].temperature_variation)
    np.testing.assert_allclose(after, before, atol=1e-5 * np.abs(before).max())
