"""Baselines: climatology (streaming statistics, packing, bundled asset), persistence, the OI prior."""

from __future__ import annotations

import importlib.resources

import attrs
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import xarray as xr

from appa_core.data import DEMO_SPEC, TrajectoryWindows, synthetic_wb2
from appa_core.grid import Grid
from appa_core.obs import SparseLinearOperator
from appa_core.obs.errors import DiagonalGaussian
from appa_core.priors.gaussian import GaussianPrior, LowRankDiag
from appa_core.sampler import Sampler
from appa_core.spec import StateSpec
from appa_core.state import dataset_to_tensor, tensor_to_dataset
from appa_workflows.baselines import (
    CLIMATOLOGY_NAME,
    Climatology,
    _SharedSigmaGaussianPrior,
    climatology_resource,
    load_climatology,
    oi_prior,
    persistence,
)


@attrs.define(kw_only=True, eq=False)
class PointPick(SparseLinearOperator):
    """Observes flat state entries ``x.reshape(-1)[index]`` (the OI test's operator)."""

    index: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.int64))
    obs: np.ndarray = attrs.field(converter=lambda v: np.asarray(v, dtype=np.float64))

    @property
    def size(self) -> int:
        return int(self.index.size)

    @property
    def values(self) -> torch.Tensor:
        return torch.as_tensor(self.obs)

    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
        d = times.size * spec.n_channels * grid.shape[0] * grid.shape[1]
        self._set_matrix(sp.csr_array((np.ones(self.size), (np.arange(self.size), self.index)), shape=(self.size, d)))


SPEC = StateSpec(surface=("2m_temperature",), atmospheric=("temperature",), levels=(500, 850))
GRID = Grid.equiangular(4, 8, poles=False)
T0 = np.datetime64("2000-01-01T00", "ns")
STEP = np.timedelta64(6, "h")


def _times(n: int, start: np.datetime64 = T0) -> np.ndarray:
    return (start + np.arange(n) * STEP).astype("datetime64[ns]")


def _numpy_climatology(x: np.ndarray, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hours = (times.astype("datetime64[h]").astype(np.int64) % 24).astype(int)
    hs = np.unique(hours)
    x = x.astype(np.float64)
    mean = np.stack([np.nanmean(x[hours == h], axis=0) for h in hs])
    std = np.stack([np.nanstd(x[hours == h], axis=0, ddof=1) for h in hs])
    return hs, mean, std


# ---------------------------------------------------------------------------------------------- climatology
def test_climatology_of_a_store_equals_numpy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    times = _times(30, T0 + 2 * STEP)  # starts at 12 UTC: blocks of 7 never align with days
    ds = synthetic_wb2(SPEC, GRID, times, seed=3, all_levels=[250, 500, 850])
    ds["2m_temperature"] = ds["2m_temperature"] + 1e4  # large offset: the shifted sums must not cancel
    store = tmp_path / "train.zarr"
    ds.to_zarr(store, zarr_format=2, consolidated=True)
    split = (str(times[1]), str(times[-2]))
    clim = Climatology.compute(store, SPEC, time=split, block=7)
    x, t, _ = dataset_to_tensor(ds.sel(time=slice(*split)), SPEC)
    hours, mean, std = _numpy_climatology(x.numpy(), t)
    assert clim.hours.tolist() == hours.tolist() == [0, 6, 12, 18]
    assert clim.count.tolist() == [7, 7, 7, 7]
    np.testing.assert_allclose(clim.mean, mean, rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(clim.std, std, rtol=1e-4, atol=1e-5)
    assert clim.metadata["steps"] == 28 and clim.grid == GRID


def test_climatology_skips_nans_and_accepts_a_dataset() -> None:
    times = _times(16)
    ds = synthetic_wb2(SPEC, GRID, times, seed=1)
    t2m = ds["2m_temperature"].values.copy()
    t2m[0, 1, 2] = np.nan  # first sample of that point at 00 UTC: the shift comes from the next one
    t2m[8, 3, 3] = np.nan
    ds["2m_temperature"] = (ds["2m_temperature"].dims, t2m)
    clim = Climatology.compute(ds, SPEC, block=3)
    x, t, _ = dataset_to_tensor(ds, SPEC)
    _, mean, std = _numpy_climatology(x.numpy(), t)
    np.testing.assert_allclose(clim.mean, mean, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(clim.std, std, rtol=1e-4, atol=1e-5)


def _random_climatology(seed: int = 0) -> Climatology:
    rng = np.random.default_rng(seed)
    shape = (4, SPEC.n_channels, *GRID.shape)
    mean = 250.0 + 30.0 * rng.random(shape)
    std = 0.5 + 3.0 * rng.random(shape)
    return Climatology(mean, std, [0, 6, 12, 18], GRID, SPEC, count=[9, 9, 9, 9], metadata={"source": "test"})


def test_climatology_forecast_ensemble_and_errors() -> None:
    clim = _random_climatology()
    times = np.array(["2000-02-01T18", "2000-02-02T00", "2000-02-02T06"], dtype="datetime64[ns]")
    fc = clim.forecast(times)
    assert fc["temperature"].dims == ("time", "level", "latitude", "longitude")
    x, t, grid = dataset_to_tensor(fc, SPEC)
    assert grid == GRID and np.array_equal(t, times)
    np.testing.assert_array_equal(x.numpy(), clim.mean[[3, 0, 1]])
    ens = clim.ensemble(times[:1], members=4000, seed=1)
    assert ens["2m_temperature"].dims == ("member", "time", "latitude", "longitude")
    xe = np.stack([dataset_to_tensor(ens.isel(member=i), SPEC)[0].numpy() for i in range(0, 4000, 40)])
    z = ens["2m_temperature"].values[:, 0]
    assert np.abs(z.mean(0) - clim.mean[3, 0]).max() < 5 * 3.5 / np.sqrt(4000)
    assert np.abs(z.std(0) / clim.std[3, 0] - 1).max() < 0.1  # 4000 draws: sd of the ratio ~0.011
    assert xe.shape == (100, 1, SPEC.n_channels, *GRID.shape)
    with pytest.raises(ValueError, match=r"Climatology.forecast: field 'times' has hour 3 UTC"):
        clim.forecast(np.array(["2000-02-01T03"], dtype="datetime64[ns]"))
    with pytest.raises(ValueError, match=r"Climatology.ensemble: field 'times' has value .* not on the hour"):
        clim.ensemble(np.array(["2000-02-01T06:30"], dtype="datetime64[ns]"), members=2)
    with pytest.raises(ValueError, match=r"Climatology: field 'std' has shape"):
        Climatology(clim.mean, clim.std[:2], [0, 6, 12, 18], GRID, SPEC)
    with pytest.raises(ValueError, match=r"Climatology: field 'hours' has value \[0, 0, 12, 18\]"):
        Climatology(clim.mean, clim.std, [0, 0, 12, 18], GRID, SPEC)


@pytest.mark.parametrize("suffix", [".zarr.zip", ".zarr"])
def test_climatology_save_load_roundtrip(tmp_path, suffix: str) -> None:  # type: ignore[no-untyped-def]
    clim = _random_climatology(2)
    exact = Climatology.load(clim.save(tmp_path / f"exact{suffix}", packed=False))
    np.testing.assert_array_equal(exact.mean, clim.mean)
    np.testing.assert_array_equal(exact.std, clim.std)
    assert exact.hours.tolist() == [0, 6, 12, 18] and exact.count.tolist() == [9, 9, 9, 9]
    assert exact.spec == SPEC and exact.grid == GRID and exact.metadata["source"] == "test"
    packed = Climatology.load(clim.save(tmp_path / f"packed{suffix}", packed=True))
    for field in ("mean", "std"):
        a, b = getattr(clim, field), getattr(packed, field)
        for c, var in enumerate(SPEC.channel_names()):
            name = var.split("@")[0]
            chans = SPEC.indices(name) if "@" in var else [c]
            span = float(a[:, chans].max() - a[:, chans].min())
            assert np.abs(b[:, c] - a[:, c]).max() <= 0.5 * span / 65532 * 1.01 + 1e-5 * np.abs(a[:, c]).max()


def test_bundled_climatology() -> None:
    ref = climatology_resource()
    assert ref.name == CLIMATOLOGY_NAME and ref.is_file()
    with importlib.resources.as_file(ref) as path:
        assert path.stat().st_size < 2_000_000
    clim = load_climatology()
    assert clim.hours.tolist() == [0, 6, 12, 18]
    assert clim.spec == DEMO_SPEC and clim.grid.shape == (48, 96)
    assert clim.mean.shape == (4, DEMO_SPEC.n_channels, 48, 96)
    t2m = clim.mean[:, DEMO_SPEC.index("2m_temperature")]
    w = clim.grid.area_weights()[:, None]
    assert 270.0 < float((t2m * w).mean()) < 295.0
    z500 = clim.mean[:, DEMO_SPEC.index("geopotential", 500)]
    assert 4.5e4 < float(z500.mean()) < 6.0e4  # ~5.6 km
    assert bool((clim.std > 0).all())
    assert clim.count.tolist() == [335, 335, 335, 335]


# ---------------------------------------------------------------------------------------------- persistence
def test_persistence_repeats_the_last_state() -> None:
    x = torch.randn(2, 3, SPEC.n_channels, *GRID.shape) + 280
    times = _times(3)
    ens = tensor_to_dataset(x, SPEC, GRID, times)
    ens["obs_stations_value"] = xr.Variable(("obs_stations",), np.arange(5.0))
    later = _times(4, times[-1] + STEP)
    out = persistence(ens, later)
    assert "obs_stations_value" not in out
    assert out["temperature"].dims == ("member", "time", "level", "latitude", "longitude")
    assert np.array_equal(out["time"].values, later)
    got = np.stack([dataset_to_tensor(out.isel(member=m), SPEC)[0].numpy() for m in range(2)])
    np.testing.assert_array_equal(got, np.broadcast_to(x[:, -1:].numpy(), got.shape))
    single = persistence(tensor_to_dataset(x[0, 1:2], SPEC, GRID, times[1:2]).isel(time=0), later[:2])
    np.testing.assert_array_equal(dataset_to_tensor(single, SPEC)[0].numpy()[1], x[0, 1].numpy())
    with pytest.raises(TypeError, match=r"persistence: field 'state' must be an xarray.Dataset"):
        persistence(x, later)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"persistence: field 'times' is empty"):
        persistence(ens, later[:0])


# ---------------------------------------------------------------------------------------------- OI
OI_SPEC = StateSpec(surface=("2m_temperature", "mean_sea_level_pressure"))
OI_GRID = Grid.equiangular(6, 12, poles=False)


def _correlated_store(n: int, seed: int) -> xr.Dataset:
    """Anomalies = 3 smooth global modes with AR(1) amplitudes (+ small noise): what OI can exploit."""
    rng = np.random.default_rng(seed)
    lat, lon = np.deg2rad(OI_GRID.lat)[:, None], np.deg2rad(OI_GRID.lon)[None]
    modes = np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(2 * lon), np.sin(lat) * np.ones_like(lon)])
    amp = np.zeros((n, 3))
    for i in range(1, n):
        amp[i] = 0.9 * amp[i - 1] + np.sqrt(1 - 0.81) * rng.standard_normal(3)
    field = np.einsum("tk,khw->thw", amp, modes)
    noise = 0.1 * rng.standard_normal((2, n, *OI_GRID.shape))
    times = _times(n)
    return xr.Dataset(
        {
            "2m_temperature": (("time", "latitude", "longitude"), 280 + 5 * (field + noise[0])),
            "mean_sea_level_pressure": (("time", "latitude", "longitude"), 1e5 - 800 * (field + noise[1])),
        },
        coords={"time": times, "latitude": OI_GRID.lat, "longitude": OI_GRID.lon},
    )


def test_oi_prior_matches_from_data_and_shares_the_solve() -> None:
    ds = _correlated_store(60, seed=0)
    oi = oi_prior(ds, OI_SPEC, window=2, rank=6, n_samples=1000, dtype=torch.float64)
    wins = TrajectoryWindows(ds, OI_SPEC, length=2)
    x = torch.stack([wins[i]["x"] for i in range(len(wins))])
    ref = GaussianPrior.from_data(x, OI_GRID, OI_SPEC, rank=6)
    assert isinstance(oi, _SharedSigmaGaussianPrior) and oi.window == 2
    torch.testing.assert_close(oi.mean, ref.mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(oi.dense_cov(), ref.dense_cov(), rtol=1e-8, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    zt = torch.randn(3, *oi.state_shape, generator=g, dtype=torch.float64) * 2
    for sig in ([0.3, 0.3, 0.3], [0.1, 1.0, 30.0]):  # shared noise level, and the per-member fallback
        s = torch.tensor(sig, dtype=torch.float64)
        torch.testing.assert_close(oi.denoise(zt, s), ref.denoise(zt, s), rtol=1e-10, atol=1e-10)
    m1 = oi.marginal(1)
    assert isinstance(m1, _SharedSigmaGaussianPrior)
    s = torch.tensor([2.0, 2.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(m1.denoise(zt[:, :1], s), ref.marginal(1).denoise(zt[:, :1], s), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match=r"oi_prior: field 'localization_km' has value 500"):
        oi_prior(ds, OI_SPEC, window=2, rank=6, localization_km=500.0)
    with pytest.raises(ValueError, match=r"oi_prior: field 'rank' has value 100; must be in \[1, N=59\]"):
        oi_prior(ds, OI_SPEC, window=2, rank=100, n_samples=1000)


def test_oi_posterior_mean_beats_the_prior_mean() -> None:
    oi = oi_prior(_correlated_store(200, seed=0), OI_SPEC, window=2, rank=8, n_samples=120, dtype=torch.float64)
    truth_ds = _correlated_store(50, seed=7).isel(time=slice(30, 32))
    truth, times, _ = dataset_to_tensor(truth_ds, OI_SPEC)
    flat = truth.reshape(-1).double()
    rng = np.random.default_rng(3)
    idx = rng.choice(flat.numel(), size=12, replace=False)
    std = np.where((idx // 72) % 2 == 0, 0.3, 50.0)  # T2M in K, MSLP in Pa: flat index [T, C, H, W], H*W = 72
    y = flat[idx].numpy() + std * rng.standard_normal(idx.size)
    op = PointPick(index=idx, obs=y, noise=DiagonalGaussian(std))
    scale = oi.scale.reshape(-1)

    def err(x: torch.Tensor) -> float:  # RMSE in units of the prior std
        return float((((x.reshape(-1) - flat) / scale) ** 2).mean().sqrt())

    exact = oi.condition(op.prepare(OI_GRID, OI_SPEC, times).matrix(), y, std**2).mean
    sampler = Sampler(oi, steps=24, sampler="ddim", solver="cg", solver_iters=64, solver_tol=1e-8, progress=False)
    post = sampler.posterior(obs=[op], start=times[0], length=2, members=16, seed=0)
    x_post, _, _ = dataset_to_tensor(post.mean("member"), OI_SPEC)
    e_prior, e_exact, e_post = err(oi.mean), err(exact), err(x_post.double())
    assert e_exact < 0.3 * e_prior  # 12 point observations pin down the 3 smooth modes (0.17 here)
    assert e_post < 0.3 * e_prior  # the sampler's 16-member mean (0.18 here)
    assert abs(e_post - e_exact) < 0.05 * e_prior  # near the Kalman mean


def test_low_rank_cov_is_positive_with_unit_standardized_variance() -> None:
    x = torch.randn(30, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 3 + 1
    from appa_workflows.baselines import _low_rank_cov

    mean, cov = _low_rank_cov(x.float(), rank=5, min_var=1e-3)
    assert isinstance(cov, LowRankDiag)
    torch.testing.assert_close(mean, x.float().double().mean(0))
    var = x.float().double().var(0, correction=1)
    torch.testing.assert_close(cov.diagonal(), var, rtol=1e-6, atol=1e-9)  # rank 5 < N: diag remainder > min_var
