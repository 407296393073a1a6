"""xarray <-> tensor conversion: round trips, dim order, latitude direction, longitude convention, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from appa_core.data import synthetic_wb2
from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_core.state import dataset_to_tensor, grid_from_dataset, normalize_layout, tensor_to_dataset

SPEC = StateSpec(
    surface=("2m_temperature", "mean_sea_level_pressure"),
    atmospheric=("temperature", "geopotential"),
    levels=(500, 850),
)
GRID = Grid.equiangular(6, 12, poles=False)
TIMES = np.datetime64("2001-03-01T00", "ns") + np.arange(3) * np.timedelta64(6, "h")


def _reference(ds: xr.Dataset) -> np.ndarray:
    """Channels gathered by hand from a canonical (descending, 0..360, lat-before-lon) dataset."""
    chans = [ds[v].transpose("time", "latitude", "longitude").values for v in SPEC.surface]
    for v in SPEC.atmospheric:
        for lev in SPEC.levels:
            chans.append(ds[v].sel(level=lev).transpose("time", "latitude", "longitude").values)
    return np.stack(chans, axis=1)


@pytest.fixture
def canonical() -> xr.Dataset:
    return synthetic_wb2(SPEC, GRID, TIMES, seed=3, all_levels=(250, 500, 700, 850))


def test_channel_order_and_values(canonical: xr.Dataset) -> None:
    x, times, grid = dataset_to_tensor(canonical, SPEC)
    assert x.dtype == torch.float32 and x.shape == (3, SPEC.n_channels, 6, 12)
    assert times.dtype == np.dtype("datetime64[ns]") and np.array_equal(times, TIMES)
    assert grid == GRID
    np.testing.assert_array_equal(x.numpy(), _reference(canonical))
    # temperature@850 is channel index 2 + 0*2 + 1 = 3, selected by value from 4 stored levels
    i = SPEC.index("temperature", 850)
    np.testing.assert_array_equal(x[:, i].numpy(), canonical["temperature"].sel(level=850).values)


@pytest.mark.parametrize("lat_ascending", [False, True])
@pytest.mark.parametrize("lon_first", [False, True])
@pytest.mark.parametrize("lon_180", [False, True])
def test_layout_variants_give_the_same_tensor(
    canonical: xr.Dataset, lat_ascending: bool, lon_first: bool, lon_180: bool
) -> None:
    variant = synthetic_wb2(
        SPEC,
        GRID,
        TIMES,
        seed=3,
        all_levels=(250, 500, 700, 850),
        lat_ascending=lat_ascending,
        lon_first=lon_first,
        lon_180=lon_180,
    )
    if lat_ascending:
        assert variant["latitude"].values[0] < variant["latitude"].values[-1]
    if lon_180:
        assert variant["longitude"].values.min() < 0
    x_ref, _, _ = dataset_to_tensor(canonical, SPEC)
    x, _, grid = dataset_to_tensor(variant, SPEC)
    assert grid == GRID
    np.testing.assert_array_equal(x.numpy(), x_ref.numpy())


def test_arbitrary_dim_order_and_aliases(canonical: xr.Dataset) -> None:
    shuffled = canonical.transpose("longitude", "level", "latitude", "time").rename(
        latitude="lat", longitude="lon", level="pressure_level"
    )
    x_ref, _, _ = dataset_to_tensor(canonical, SPEC)
    x, _, _ = dataset_to_tensor(shuffled, SPEC)
    np.testing.assert_array_equal(x.numpy(), x_ref.numpy())


def test_levels_in_pa_are_converted(canonical: xr.Dataset) -> None:
    pa = canonical.assign_coords(level=("level", canonical["level"].values * 100, {"units": "Pa"}))
    assert list(normalize_layout(pa)["level"].values) == [250, 500, 700, 850]
    x_ref, _, _ = dataset_to_tensor(canonical, SPEC)
    np.testing.assert_array_equal(dataset_to_tensor(pa, SPEC)[0].numpy(), x_ref.numpy())


def test_round_trip_tensor_dataset_tensor() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, SPEC.n_channels, *GRID.shape, generator=gen) * 10 + 280
    ds = tensor_to_dataset(x, SPEC, GRID, TIMES)
    assert ds["temperature"].dims == ("time", "level", "latitude", "longitude")
    assert ds["2m_temperature"].dims == ("time", "latitude", "longitude")
    assert ds["level"].dtype == np.int64 and list(ds["level"].values) == [500, 850]
    assert ds["temperature"].dtype == np.float32
    assert ds["mean_sea_level_pressure"].attrs["units"] == "Pa"
    assert ds["geopotential"].attrs["units"] == "m**2 s**-2"
    y, times, grid = dataset_to_tensor(ds, SPEC)
    assert torch.equal(x, y) and np.array_equal(times, TIMES) and grid == GRID


def test_round_trip_dataset_tensor_dataset(canonical: xr.Dataset) -> None:
    x, times, grid = dataset_to_tensor(canonical, SPEC)
    back = tensor_to_dataset(x, SPEC, grid, times)
    for var in SPEC.variables:
        ref = canonical[var].sel(level=list(SPEC.levels)) if var in SPEC.atmospheric else canonical[var]
        np.testing.assert_array_equal(back[var].values, ref.transpose(*back[var].dims).values)


def test_members_and_prefix() -> None:
    x = torch.arange(2 * 3 * SPEC.n_channels * 72, dtype=torch.float32).reshape(2, 3, SPEC.n_channels, 6, 12)
    ds = tensor_to_dataset(x, SPEC, GRID, TIMES, member_dim="ens", name_prefix="analysis_")
    assert set(ds.data_vars) == {f"analysis_{v}" for v in SPEC.variables}
    assert ds["analysis_temperature"].dims == ("ens", "time", "level", "latitude", "longitude")
    assert list(ds["ens"].values) == [0, 1]
    member1 = ds.isel(ens=1).rename({f"analysis_{v}": v for v in SPEC.variables})
    np.testing.assert_array_equal(dataset_to_tensor(member1, SPEC)[0].numpy(), x[1].numpy())
    # float64 stays float64
    assert tensor_to_dataset(x.double(), SPEC, GRID, TIMES)["temperature"].dtype == np.float64


def test_static_variables_broadcast_over_time(canonical: xr.Dataset) -> None:
    spec = StateSpec(surface=("2m_temperature", "land_sea_mask"))
    x, _, _ = dataset_to_tensor(canonical, spec)
    lsm = canonical["land_sea_mask"].values
    for t in range(3):
        np.testing.assert_array_equal(x[t, 1].numpy(), lsm)


def test_nans_are_kept(canonical: xr.Dataset) -> None:
    ds = canonical.copy(deep=True)
    ds["2m_temperature"][1, 2, 3] = np.nan
    x, _, _ = dataset_to_tensor(ds, SPEC)
    assert torch.isnan(x[1, 0, 2, 3]) and int(torch.isnan(x).sum()) == 1


def test_lazy_dask_input(canonical: xr.Dataset) -> None:
    lazy = canonical.chunk({"time": 1})
    x_ref, _, _ = dataset_to_tensor(canonical, SPEC)
    np.testing.assert_array_equal(dataset_to_tensor(lazy, SPEC)[0].numpy(), x_ref.numpy())


def test_errors_name_the_problem(canonical: xr.Dataset) -> None:
    with pytest.raises(
        ValueError, match=r"dataset_to_tensor: variable 'geopotential' is not in the dataset; available"
    ):
        dataset_to_tensor(canonical.drop_vars("geopotential"), SPEC)
    with pytest.raises(
        ValueError,
        match=r"dataset_to_tensor: variable 'temperature' has no level 850 hPa; available levels are \[250, 500, 700\]",
    ):
        dataset_to_tensor(canonical.sel(level=[250, 500, 700]), SPEC)
    with pytest.raises(ValueError, match=r"dataset_to_tensor: field 'grid'"):
        dataset_to_tensor(canonical, SPEC, grid=Grid.equiangular(6, 12, poles=True))
    with pytest.raises(ValueError, match=r"has no 'latitude' coordinate"):
        dataset_to_tensor(canonical.rename(latitude="y"), SPEC)
    with pytest.raises(TypeError, match="dataset_to_tensor: field 'ds'"):
        dataset_to_tensor(canonical["temperature"], SPEC)  # type: ignore[arg-type]
    x = torch.zeros(3, SPEC.n_channels, *GRID.shape)
    with pytest.raises(ValueError, match="tensor_to_dataset: field 'x' has 5 channels"):
        tensor_to_dataset(x[:, :5], SPEC, GRID, TIMES)
    with pytest.raises(ValueError, match="tensor_to_dataset: field 'times' has 2 values"):
        tensor_to_dataset(x, SPEC, GRID, TIMES[:2])
    with pytest.raises(ValueError, match="tensor_to_dataset: field 'x' has spatial shape"):
        tensor_to_dataset(x[..., :5], SPEC, GRID, TIMES)


def test_grid_from_dataset_with_poles() -> None:
    grid = Grid.equiangular(7, 12, poles=True)
    ds = synthetic_wb2(SPEC, grid, TIMES, lat_ascending=True)
    g = grid_from_dataset(ds)
    assert g == grid and g.has_poles and g.lat[0] == 90.0
