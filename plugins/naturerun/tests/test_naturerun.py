"""Tests of appa_naturerun without jcm (one test runs the real GCM for 2 days when jcm is installed)."""

from __future__ import annotations

import importlib.util
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

sys.path.insert(0, str(Path(__file__).parent))

from fake_model import GAUSS_LAT, SIGMA, Crash, FakeDriver

from appa_naturerun import convert as C
from appa_naturerun.run import run_nature, state_dir_for

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------- vertical


def _columns(n=500):
    ps = RNG.uniform(55_000, 105_000, size=n)
    a, b = RNG.normal(size=n), RNG.normal(size=n)
    return ps, a, b


@pytest.mark.parametrize("kind", ["clamp", "temperature", "geopotential"])
def test_sigma_to_pressure_exact_for_linear_in_log_p(kind):
    ps, a, b = _columns()
    sigma = SIGMA  # descending, as in jcm
    p = sigma[:, None] * ps[None]  # (level, n)
    f = a + b * np.log(p)
    temp = 250.0 + 0 * p
    plev = np.array([50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]) * 100.0
    out = C.sigma_to_pressure(f, sigma, ps, plev, kind=kind, temperature=temp)
    assert out.shape == (13, ps.size)
    inside = (plev[:, None] >= sigma.min() * ps) & (plev[:, None] <= sigma.max() * ps)
    assert inside.sum() > 3000
    exact = a + b * np.log(plev[:, None])
    np.testing.assert_allclose(out[inside], np.broadcast_to(exact, out.shape)[inside], rtol=0, atol=1e-10)
    # model levels themselves are reproduced
    ps80 = np.full_like(ps, 80_000.0)
    back = C.sigma_to_pressure(f, sigma, ps80, [SIGMA[3] * 80_000.0], kind=kind, temperature=temp)
    np.testing.assert_allclose(back[0], f[3], atol=1e-10)


def test_sigma_to_pressure_layouts_agree():
    ps = RNG.uniform(60_000, 104_000, size=(3, 4, 5))  # (time, lat, lon)
    f = RNG.normal(size=(3, 8, 4, 5))  # (time, level, lat, lon)
    plev = [500e2, 850e2]
    out = C.sigma_to_pressure(f, SIGMA, ps, plev)
    assert out.shape == (3, 2, 4, 5)
    col = C.sigma_to_pressure(f[1, :, 2, 3][:, None], SIGMA, ps[1, 2, 3][None], plev)
    np.testing.assert_allclose(out[1, :, 2, 3], col[:, 0])


def test_sigma_to_pressure_extrapolation():
    ps = np.array([60_000.0, 101_000.0])
    t = np.stack([np.linspace(280, 200, 8)] * 2, axis=1)  # (level, col): warm at the bottom (sigma 0.95)
    z = np.stack([np.linspace(500, 20000, 8) * 9.81] * 2, axis=1)
    u = np.stack([np.linspace(5, 40, 8)] * 2, axis=1)
    plev = np.array([10.0, 1000.0 * 100])  # far above the top; 1000 hPa below both lowest levels
    uo = C.sigma_to_pressure(u, SIGMA, ps, plev, kind="clamp")
    np.testing.assert_allclose(uo[0], u[-1])  # above the top: top value (sigma 0.025 is the last row)
    np.testing.assert_allclose(uo[1], u[0])  # below: lowest level value
    to = C.sigma_to_pressure(t, SIGMA, ps, plev, kind="temperature")
    p_low = SIGMA[0] * ps
    np.testing.assert_allclose(to[1], t[0] * (1e5 / p_low) ** C.LAPSE_EXP)
    assert np.all(to[1] > t[0])  # warmer below
    np.testing.assert_allclose(to[0], t[-1])
    zo = C.sigma_to_pressure(z, SIGMA, ps, plev, kind="geopotential", temperature=t)
    # hypsometric consistency below: dZ/dln p = -R T at 1000 hPa
    eps = 1e-4
    zp = C.sigma_to_pressure(z, SIGMA, ps, plev * np.exp(eps), kind="geopotential", temperature=t)
    np.testing.assert_allclose((zp[1] - zo[1]) / eps, -C.R_DRY * to[1], rtol=1e-3)
    # continuity at the lowest level and at the top
    zl = C.sigma_to_pressure(z, SIGMA, ps, [p_low[0]], kind="geopotential", temperature=t)
    np.testing.assert_allclose(zl[0, 0], z[0, 0], rtol=1e-12)
    assert np.all(zo[0] > z[-1])  # higher above the top
    np.testing.assert_allclose(zo[0], z[-1] + C.R_DRY * t[-1] * np.log(SIGMA[-1] * ps / 10.0))


def test_sigma_to_pressure_errors():
    with pytest.raises(ValueError, match="temperature"):
        C.sigma_to_pressure(np.ones((8, 2)), SIGMA, np.ones(2), [1.0], kind="geopotential")
    with pytest.raises(ValueError, match="unknown kind"):
        C.sigma_to_pressure(np.ones((8, 2)), SIGMA, np.ones(2), [1.0], kind="cubic")


def test_mslp_reduction():
    ps = np.array([90_000.0, 100_000.0])
    phis = np.array([9.81 * 1000.0, 0.0])
    p = C.mean_sea_level_pressure(ps, phis, np.array([280.0, 280.0]))
    assert p[1] == 100_000.0
    # 1000 m of standard atmosphere is about 11-12 hPa per 100 m
    assert 100_500 < p[0] < 102_500


# ---------------------------------------------------------------------------------------------- horizontal


def test_target_grid():
    lat = C.target_latitudes(48)
    assert lat[0] == 88.125 and lat[-1] == -88.125 and np.allclose(np.diff(lat), -3.75)
    lon = C.target_longitudes(96)
    assert lon[0] == 0 and lon[-1] == 356.25 and np.allclose(np.diff(lon), 3.75)


@pytest.mark.parametrize("src_order", [1, -1])
def test_lat_regrid_exact_for_linear_fields(src_order):
    src = GAUSS_LAT[::src_order]
    dst = C.target_latitudes(48)
    w = C.lat_regrid_matrix(src, dst)
    np.testing.assert_allclose(w.sum(1), 1.0)
    f = 3.0 - 0.7 * src
    g = w @ f
    inside = np.abs(dst) <= GAUSS_LAT.max()
    np.testing.assert_allclose(g[inside], 3.0 - 0.7 * dst[inside], atol=1e-12)
    # outermost rows: nearest (constant extrapolation)
    assert inside.sum() == 46
    np.testing.assert_allclose(g[0], 3.0 - 0.7 * GAUSS_LAT.max())
    np.testing.assert_allclose(g[-1], 3.0 - 0.7 * GAUSS_LAT.min())
    # along another axis
    arr = np.broadcast_to(f[None, :, None], (2, 48, 5))
    out = C.regrid_lat(arr, w, 1)
    np.testing.assert_allclose(out[1, :, 4], g)


# ---------------------------------------------------------------------------------------------- conversion


def _native_chunk(n=4):
    d = FakeDriver(3, np.datetime64("2000-01-01T00:00"))
    d.initialize()
    return d, d.advance(n / 4, 0.25)


def test_convert_chunk_layout_names_units():
    d, native = _native_chunk()
    phis = d.static()["phis"].transpose("lat", "lon").values
    ds = C.convert_chunk(native, phis)
    assert set(ds.data_vars) == set(C.LEVEL_VARS) | set(C.SURFACE_VARS)
    for v in C.LEVEL_VARS:
        assert ds[v].dims == ("time", "level", "latitude", "longitude")
        assert ds[v].dtype == np.float32
    for v in C.SURFACE_VARS:
        assert ds[v].dims == ("time", "latitude", "longitude")
        assert ds[v].dtype == np.float32
    for v in ds.data_vars:
        assert ds[v].attrs["units"] == C.VAR_ATTRS[v][2] and ds[v].attrs["long_name"]
        assert np.isfinite(ds[v].values).all()
    assert ds["level"].dtype == np.int64 and list(ds["level"].values) == list(C.WB2_LEVELS)
    assert ds["latitude"].values[0] == np.float32(88.125) and np.all(np.diff(ds["latitude"].values) < 0)
    assert ds.sizes == {"time": 4, "level": 13, "latitude": 48, "longitude": 96}
    assert ds["time"].dtype == np.dtype("datetime64[ns]")
    assert (ds["specific_humidity"].values >= 0).all()
    # surface pressure = normalized * 1e5, regridded
    w = C.lat_regrid_matrix(GAUSS_LAT, C.target_latitudes())
    sp = native["normalized_surface_pressure"].transpose("time", "lat", "lon").values * 1e5
    np.testing.assert_allclose(ds["surface_pressure"].values, np.einsum("ij,tjk->tik", w, sp), rtol=1e-6)
    # SPEEDY's near-surface diagnostics are used as 2 m temperature and 10 m winds
    t0 = native["surface_flux.t0"].transpose("time", "lat", "lon").values
    np.testing.assert_allclose(ds["2m_temperature"].values, np.einsum("ij,tjk->tik", w, t0), rtol=1e-6)
    # mslp equals ps where the surface is at sea level
    sea = C.regrid_lat(phis, w, 0) == 0
    np.testing.assert_allclose(
        ds["mean_sea_level_pressure"].values[:, sea], ds["surface_pressure"].values[:, sea], rtol=1e-6
    )


def test_convert_chunk_fallbacks_without_diagnostics():
    d, native = _native_chunk()
    native = native.drop_vars(["surface_flux.t0", "surface_flux.u0", "surface_flux.v0"])
    ds = C.convert_chunk(native, d.static()["phis"].transpose("lat", "lon").values, levels=(500, 850))
    assert list(ds["level"].values) == [500, 850]
    w = C.lat_regrid_matrix(GAUSS_LAT, C.target_latitudes())
    u_low = native["u_wind"].transpose("time", "level", "lat", "lon").values[:, 0]
    np.testing.assert_allclose(
        ds["10m_u_component_of_wind"].values, np.einsum("ij,tjk->tik", w, u_low), rtol=1e-5, atol=1e-5
    )


def test_convert_static():
    d = FakeDriver(0, np.datetime64("2000-01-01"))
    st = C.convert_static(d.static())
    assert set(st.data_vars) == {"land_sea_mask", "geopotential_at_surface"}
    assert st["land_sea_mask"].dims == ("latitude", "longitude")
    lsm = st["land_sea_mask"].values
    assert lsm.min() >= 0 and lsm.max() <= 1 and st["land_sea_mask"].dtype == np.float32


# ---------------------------------------------------------------------------------------------- run / resume


def _run(path, days, seed=1, factory=FakeDriver, **kw):
    kw.setdefault("levels", (250, 850))
    return run_nature(
        path, days=days, seed=seed, spinup_days=2, chunk_days=1, progress=False, driver_factory=factory, **kw
    )


def _load(path):
    with xr.open_zarr(path, consolidated=True, chunks=None) as ds:
        return ds.load()


def test_run_layout(tmp_path):
    out = _run(tmp_path / "nr.zarr", days=3, levels=C.WB2_LEVELS)
    ds = _load(out)
    assert ds.sizes == {"time": 12, "level": 13, "latitude": 48, "longitude": 96}
    assert ds["time"].values[0] == np.datetime64("2000-01-01T00:00")
    assert np.all(np.diff(ds["time"].values) == np.timedelta64(6, "h"))
    assert ds["land_sea_mask"].dims == ("latitude", "longitude")
    assert ds["geopotential_at_surface"].dims == ("latitude", "longitude")
    assert ds.attrs["seed"] == "1" and "WeatherBench2" in ds.attrs["layout"]
    assert ds["temperature"].encoding["chunks"] == (4, 13, 48, 96)
    assert ds["temperature"].dtype == np.float32 and ds["latitude"].dtype == np.float32
    cfg = json.loads((state_dir_for(out) / "run.json").read_text())
    assert cfg["status"] == "done" and cfg["n_times"] == 12
    assert len(list(state_dir_for(out).glob("state-*.msgpack"))) == 2  # the last two are kept


def test_resume_and_extend_equal_one_run(tmp_path):
    ref = _load(_run(tmp_path / "ref.zarr", days=3))
    part = tmp_path / "part.zarr"
    _run(part, days=2)
    assert _load(part).sizes["time"] == 8
    _run(part, days=3)  # resumes from the checkpoint at the last stored time
    xr.testing.assert_identical(_load(part), ref)


def test_kill_between_append_and_checkpoint(tmp_path):
    ref = _load(_run(tmp_path / "ref.zarr", days=3))
    out = tmp_path / "crash.zarr"
    # save #1 is the spin-up state, #2 after day 1, #3 after day 2 -> crash with day 2 appended, no checkpoint
    with pytest.raises(Crash):
        _run(out, days=3, factory=partial(FakeDriver, crash_on_save=3))
    assert _load(out).sizes["time"] == 8  # day 2 is in the store, but has no checkpoint
    _run(out, days=3)
    xr.testing.assert_identical(_load(out), ref)


def test_kill_during_first_chunk_reuses_spinup(tmp_path):
    ref = _load(_run(tmp_path / "ref.zarr", days=2))
    out = tmp_path / "crash.zarr"
    with pytest.raises(Crash):
        _run(out, days=2, factory=partial(FakeDriver, crash_on_save=2))  # store exists, no chunk checkpoint
    _run(out, days=2)
    xr.testing.assert_identical(_load(out), ref)


def test_seeds_differ_and_config_checked(tmp_path):
    a = _load(_run(tmp_path / "a.zarr", days=1, seed=1))
    b = _load(_run(tmp_path / "b.zarr", days=1, seed=2))
    assert not np.allclose(a["u_component_of_wind"].values, b["u_component_of_wind"].values)
    with pytest.raises(ValueError, match="different configuration"):
        _run(tmp_path / "a.zarr", days=2, seed=2)
    (tmp_path / "foreign.zarr").mkdir()
    with pytest.raises(FileExistsError):
        _run(tmp_path / "foreign.zarr", days=1)


# ---------------------------------------------------------------------------------------------- cli / plugin


def test_cli_delegates(monkeypatch, tmp_path):
    import appa_naturerun.run as R
    from appa_naturerun.cli import main

    seen = {}
    monkeypatch.setattr(R, "run_nature", lambda out, **kw: seen.update(out=out, **kw) or out)
    assert (
        main(
            [
                "--out",
                str(tmp_path / "x.zarr"),
                "--seed",
                "5",
                "--days",
                "3",
                "--spinup-days",
                "7",
                "--levels",
                "500,850",
                "--no-progress",
            ]
        )
        == 0
    )
    assert seen["seed"] == 5 and seen["days"] == 3 and seen["spinup_days"] == 7 and seen["levels"] == [500, 850]
    assert seen["progress"] is False
    with pytest.raises(SystemExit):
        main(["--out", "x", "--seed", "1", "--days", "3", "--years", "1"])


def test_plugin_registers_data_source(tmp_path):
    from appa_naturerun import plugin

    class Registry:
        def __init__(self):
            self.sources = {}

        def add_data_source(self, name, obj):
            self.sources[name] = obj

    reg = Registry()
    plugin.appa_register_data_sources(reg)
    src = reg.sources["naturerun"]
    assert src is plugin.NatureRunSource
    out = _run(tmp_path / "p.zarr", days=1)
    assert src.open(out).sizes["time"] == 4


# ---------------------------------------------------------------------------------------------- real GCM


@pytest.mark.jcm
@pytest.mark.skipif(importlib.util.find_spec("jcm") is None, reason="jcm (the GCM, 1.6 GB) is not installed")
def test_real_jcm_two_days(tmp_path):
    out = run_nature(tmp_path / "jcm.zarr", days=2, seed=1, spinup_days=0, chunk_days=1, progress=False)
    ds = _load(out)
    assert ds.sizes == {"time": 8, "level": 13, "latitude": 48, "longitude": 96}
    w = np.cos(np.deg2rad(ds["latitude"]))
    t850 = float(ds["temperature"].sel(level=850).weighted(w).mean())
    assert 250 < t850 < 300
    sp = float(ds["surface_pressure"].weighted(w).mean())
    assert 95_000 < sp < 102_000
    assert float(ds["specific_humidity"].min()) >= 0 and float(ds["specific_humidity"].max()) < 0.03
    z500 = float(ds["geopotential"].sel(level=500).weighted(w).mean()) / 9.81
    assert 5000 < z500 < 6300  # no spin-up: jcm starts from a warm (about 288 K) resting state, z500 about 6050 m
    assert ds["geopotential_at_surface"].attrs["comment"].startswith("g * nodal(jcm dycore")
    assert float(ds["geopotential_at_surface"].max()) > 9.81 * 4000  # Himalaya / Tibet


def test_plausibility_summary(tmp_path):
    from appa_naturerun.stats import plausibility

    ds = _load(_run(tmp_path / "s.zarr", days=1, levels=C.WB2_LEVELS))
    s = plausibility(ds)
    assert s["n_times"] == 4 and s["first_time"] == "2000-01-01T00:00"
    # against an independent computation: cos-latitude weighted mean over time, latitude and longitude
    t850 = ds["temperature"].sel(level=850).values.astype(np.float64)  # (time, lat, lon)
    w = np.cos(np.deg2rad(ds["latitude"].values.astype(np.float64)))[None, :, None]
    np.testing.assert_allclose(
        s["T850_mean_K"], (t850 * w).sum() / (w.sum() * t850.shape[0] * t850.shape[2]), rtol=1e-6
    )
    assert (s["T850_min_K"], s["T850_max_K"]) == (pytest.approx(t850.min()), pytest.approx(t850.max()))
    mslp = ds["mean_sea_level_pressure"].values.astype(np.float64)
    np.testing.assert_allclose(s["mslp_mean_hPa"], (mslp * w).sum() / (w.sum() * mslp.shape[0] * mslp.shape[2]) / 100)
    assert s["q_min_gkg"] == pytest.approx(ds["specific_humidity"].values.min() * 1e3) and s["q_min_gkg"] >= 0


def test_eight_time_steps_and_eight_sigma_levels_are_not_confused():
    """Issue: any write of exactly 8 time steps crashed (the level axis was found by matching shapes, and 8 steps
    equal 8 sigma levels), and with 8 output levels wrong temperatures were written silently."""
    ps = RNG.uniform(60_000, 104_000, size=(8, 4, 5))  # (time, lat, lon): 8 steps
    f = RNG.normal(size=(8, 8, 4, 5))  # (time, level, lat, lon): 8 sigma levels
    plev = np.linspace(200e2, 1000e2, 8)  # 8 output levels
    out = C.sigma_to_pressure(f, SIGMA, ps, plev, level_axis=1)
    for t in (0, 5):
        ref = C.sigma_to_pressure(f[t], SIGMA, ps[t], plev)  # unambiguous: (level, lat, lon)
        np.testing.assert_allclose(out[t], ref)
    with pytest.raises(ValueError, match=r"level axis of field shape \(8, 8, 4, 5\) is ambiguous .* pass level_axis"):
        C.sigma_to_pressure(f, SIGMA, ps, plev)
    with pytest.raises(ValueError, match=r"field 'level_axis' = 2 does not fit"):
        C.sigma_to_pressure(f, SIGMA, ps, plev, level_axis=2)


def test_kill_during_an_append_resumes(tmp_path):
    """Issue: a kill in the middle of an append left arrays of different lengths that no rerun could resume
    (truncation read the stale consolidated metadata, resized nothing, then consolidated the torn metadata)."""
    import zarr

    ref = _load(_run(tmp_path / "ref.zarr", days=3))
    out = tmp_path / "torn.zarr"
    _run(out, days=2)
    group = zarr.open_group(str(out), mode="r+", use_consolidated=False)
    arr = group["temperature"]  # the append of day 3 reached this array only (consolidated metadata is stale)
    arr.resize((12, *arr.shape[1:]))
    _run(out, days=3)
    xr.testing.assert_identical(_load(out), ref)
    # the same with the time coordinate itself appended before a data array (xarray's order is not fixed)
    out2 = tmp_path / "torn2.zarr"
    _run(out2, days=2)
    group = zarr.open_group(str(out2), mode="r+", use_consolidated=False)
    for name in ("time", "temperature"):
        group[name].resize((12, *group[name].shape[1:]))
    _run(out2, days=3)
    xr.testing.assert_identical(_load(out2), ref)


def test_a_chunk_of_eight_steps_converts_like_two_chunks_of_four():
    """Issue: any write of exactly 8 time steps crashed (``appa-naturerun --days 2``), and with 8 output levels wrong
    temperatures were written silently. ``convert_chunk`` over 8 steps of the 8-sigma-level model, to 8 pressure
    levels, now equals the same steps converted 4 at a time."""
    levels = (50, 100, 200, 300, 500, 700, 850, 1000)
    d = FakeDriver(3, np.datetime64("2000-01-01T00:00"))
    d.initialize()
    native = d.advance(2.0, 0.25)  # 2 days, 6-hourly: 8 steps
    assert native.sizes["time"] == 8 and SIGMA.size == 8
    phis = d.static()["phis"].transpose("lat", "lon").values
    whole = C.convert_chunk(native, phis, levels=levels)
    halves = [C.convert_chunk(native.isel(time=slice(i, i + 4)), phis, levels=levels) for i in (0, 4)]
    xr.testing.assert_allclose(whole, xr.concat(halves, "time"), rtol=1e-12, atol=0)
