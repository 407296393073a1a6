"""NormStats and compute_stats against a direct numpy computation, NaN handling, JSON round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from appa_core.data import NormStats, compute_stats, open_wb2, synthetic_wb2
from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_core.state import dataset_to_tensor

SPEC = StateSpec(
    surface=("2m_temperature", "mean_sea_level_pressure", "land_sea_mask"),
    atmospheric=("temperature", "specific_humidity"),
    levels=(500, 850),
)
GRID = Grid.equiangular(8, 16, poles=False)
TIMES = np.datetime64("2000-01-01T00", "ns") + np.arange(12) * np.timedelta64(6, "h")


def _numpy_stats(x: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted NaN-aware mean/std per channel of x [T, C, H, W], straight from the definition (float64)."""
    x = x.astype(np.float64)
    w = np.broadcast_to(weights[None, None, :, None], x.shape)
    m = np.isfinite(x)
    wm = np.where(m, w, 0.0)
    xz = np.where(m, x, 0.0)
    mean = (wm * xz).sum(axis=(0, 2, 3)) / wm.sum(axis=(0, 2, 3))
    var = (wm * (xz - mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) / wm.sum(axis=(0, 2, 3))
    return mean, np.sqrt(var)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = synthetic_wb2(SPEC, GRID, TIMES, seed=7, all_levels=(250, 500, 850), lat_ascending=True, lon_first=True)
    ds["temperature"][2, 1, 3, 4] = np.nan  # (time, level=500, lon, lat) in the regridded dim order
    ds["2m_temperature"][5, :, :] = np.nan  # one whole time step missing
    path = tmp_path_factory.mktemp("stats") / "s.zarr"
    encoding = {v: {"chunks": (2, *ds[v].shape[1:])} for v in ds.data_vars if "time" in ds[v].dims}
    ds.to_zarr(path, zarr_format=2, consolidated=True, encoding=encoding)
    return path


def test_matches_numpy_on_training_split(store: Path) -> None:
    train = ("2000-01-01T00", "2000-01-02T06")  # 6 of the 12 steps
    stats = compute_stats(store, SPEC, time=train, block_bytes=1)  # 1 byte: one storage chunk per block
    x, times, grid = dataset_to_tensor(open_wb2(store, time=train), SPEC)
    assert times.size == 6
    mean, std = _numpy_stats(x.numpy(), grid.area_weights())
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(stats.std, std, rtol=1e-6)
    assert stats.metadata["n_times"] == 6 and stats.metadata["time_end"].startswith("2000-01-02T06")
    # the held-out steps changed nothing: stats over everything differ
    assert not np.allclose(compute_stats(store, SPEC).mean, stats.mean, rtol=1e-9)


def test_block_size_does_not_matter_and_dataset_input(store: Path) -> None:
    a = compute_stats(store, SPEC, block_bytes=1)
    b = compute_stats(store, SPEC, block_bytes=2**30)
    c = compute_stats(xr.open_zarr(store), SPEC)  # a lazy Dataset in the regridded layout
    d = compute_stats(open_wb2(store, chunks=None).load(), SPEC)  # in memory, no dask
    for other in (b, c, d):
        np.testing.assert_allclose(other.mean, a.mean, rtol=1e-12)
        np.testing.assert_allclose(other.std, a.std, rtol=1e-10)


def test_area_weighting_and_nan_handling_closed_form() -> None:
    """A field equal to 1 on the northern half and 0 on the southern half has mean 1/2 and std 1/2 (equal areas);
    a NaN in the north reduces the northern weight by exactly one cell."""
    spec = StateSpec(surface=("2m_temperature",))
    field = np.zeros((2, 8, 16), dtype=np.float32)
    field[:, :4] = 1.0
    ds = xr.Dataset(
        {"2m_temperature": (("time", "latitude", "longitude"), field)},
        coords={"time": TIMES[:2], "latitude": GRID.lat, "longitude": GRID.lon},
    )
    stats = compute_stats(ds, spec)
    np.testing.assert_allclose(stats.mean, [0.5], rtol=1e-12)
    np.testing.assert_allclose(stats.std, [0.5], rtol=1e-12)
    ds["2m_temperature"][0, 0, 0] = np.nan
    a = GRID.area_weights()
    north = 2 * 16 * a[:4].sum() - a[0]
    total = north + 2 * 16 * a[4:].sum()
    p = north / total
    stats = compute_stats(ds, spec)
    np.testing.assert_allclose(stats.mean, [p], rtol=1e-12)
    np.testing.assert_allclose(stats.std, [np.sqrt(p * (1 - p))], rtol=1e-10)


def test_large_offset_is_accurate() -> None:
    """Pressure-like values (1e5 + small std) keep full relative accuracy thanks to the shift."""
    spec = StateSpec(surface=("mean_sea_level_pressure",))
    rng = np.random.default_rng(0)
    values = (1.0e7 + rng.standard_normal((4, 8, 16))).astype(np.float64)
    ds = xr.Dataset(
        {"mean_sea_level_pressure": (("time", "latitude", "longitude"), values)},
        coords={"time": TIMES[:4], "latitude": GRID.lat, "longitude": GRID.lon},
    )
    stats = compute_stats(ds, spec)
    mean, std = _numpy_stats(values[:, None], GRID.area_weights())
    np.testing.assert_allclose(stats.std, std, rtol=1e-9)
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-14)


def test_all_nan_and_constant_channels_raise(store: Path) -> None:
    ds = open_wb2(store).load()
    ds["temperature"].loc[{"level": 850}] = np.nan
    with pytest.raises(ValueError, match=r"compute_stats: channel 'temperature@850' is all NaN"):
        compute_stats(ds, SPEC)
    ds = open_wb2(store).load()
    ds["2m_temperature"][:] = 273.15
    with pytest.raises(ValueError, match=r"compute_stats: channel '2m_temperature' is constant"):
        compute_stats(ds, SPEC)
    with pytest.raises(ValueError, match=r"variable 'temperature' has no level 700 hPa"):
        compute_stats(open_wb2(store), StateSpec(atmospheric=("temperature",), levels=(700,)))


def test_standardize_broadcasts_over_channel_dim() -> None:
    spec = StateSpec(surface=("2m_temperature", "mean_sea_level_pressure"))
    stats = NormStats(spec=spec, mean=[280.0, 1.0e5], std=[10.0, 1.0e3])
    x = torch.empty(2, 3, 2, 4, 5)
    x[:, :, 0] = 290.0
    x[:, :, 1] = 0.98e5
    z = stats.standardize(x)
    assert torch.allclose(z[:, :, 0], torch.ones(())) and torch.allclose(z[:, :, 1], torch.full((), -2.0))
    assert torch.allclose(stats.destandardize(z), x)
    z64 = stats.standardize(x.double())
    assert z64.dtype == torch.float64
    with pytest.raises(ValueError, match=r"NormStats.standardize: field 'x' must be \[..., C, H, W\] with C = 2"):
        stats.standardize(torch.zeros(3, 4, 5))


def test_json_round_trip_and_select(tmp_path: Path, store: Path) -> None:
    stats = compute_stats(store, SPEC)
    path = stats.save(tmp_path / "stats.json")
    back = NormStats.load(path)
    assert back.spec == SPEC and back.channel_names == SPEC.channel_names()
    np.testing.assert_array_equal(back.mean, stats.mean)
    np.testing.assert_array_equal(back.std, stats.std)
    assert back.to_dict()["channels"][3] == "temperature@500"
    sub = StateSpec(atmospheric=("specific_humidity",), levels=(850,))
    picked = stats.select(sub)
    assert picked.mean[0] == stats.mean[SPEC.index("specific_humidity", 850)]


def test_invalid_stats_refused() -> None:
    spec = StateSpec(surface=("2m_temperature", "mean_sea_level_pressure"))
    with pytest.raises(ValueError, match=r"NormStats: field 'std' has value 0.0 for channel 'mean_sea_level_pressure'"):
        NormStats(spec=spec, mean=[1.0, 2.0], std=[1.0, 0.0])
    with pytest.raises(ValueError, match=r"NormStats: field 'mean' has shape \(3,\)"):
        NormStats(spec=spec, mean=[1.0, 2.0, 3.0], std=[1.0, 1.0])
    with pytest.raises(ValueError, match=r"NormStats: field 'mean' has value nan for channel '2m_temperature'"):
        NormStats(spec=spec, mean=[np.nan, 2.0], std=[1.0, 1.0])
