"""open_wb2 on small local stores written in the WeatherBench2 layouts (v2/v3, lat order, lon convention, dims)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from appa_core.data import WB2_ERA5, open_wb2, synthetic_wb2, wb2_era5_url
from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_core.state import dataset_to_tensor

SPEC = StateSpec(
    surface=("2m_temperature", "10m_u_component_of_wind"),
    atmospheric=("temperature", "geopotential"),
    levels=(500, 850),
)
LEVELS = (250, 500, 700, 850, 1000)
GRID = Grid.equiangular(8, 16, poles=False)
TIMES = np.datetime64("2003-12-31T00", "ns") + np.arange(8) * np.timedelta64(6, "h")
ZARR3 = int(zarr.__version__.split(".")[0]) >= 3


def _write(ds: xr.Dataset, path: Path, zarr_format: int = 2) -> Path:
    encoding = {v: {"chunks": (1, *ds[v].shape[1:])} for v in ds.data_vars if "time" in ds[v].dims}
    ds.to_zarr(path, mode="w", zarr_format=zarr_format, consolidated=zarr_format == 2, encoding=encoding)
    return path


def _source(**layout: bool) -> xr.Dataset:
    return synthetic_wb2(SPEC, GRID, TIMES, seed=1, all_levels=LEVELS, **layout)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return dataset_to_tensor(_source(), SPEC)[0].numpy()


@pytest.mark.parametrize(
    "layout",
    [
        {},  # the 0.25 deg store: lat descending, (time, level, latitude, longitude)
        {"lat_ascending": True, "lon_first": True},  # the regridded 64x32 / 240x121 stores
        {"lon_180": True},  # -180..180 longitudes
        {"lat_ascending": True, "lon_180": True, "lon_first": True},
    ],
    ids=["wb2-0p25", "wb2-regridded", "lon180", "all-variants"],
)
def test_layouts_read_bit_exactly(tmp_path: Path, reference: np.ndarray, layout: dict[str, bool]) -> None:
    store = _write(_source(**layout), tmp_path / "s.zarr")
    ds = open_wb2(store, variables=SPEC.variables, levels=SPEC.levels)
    assert ds["latitude"].values[0] > ds["latitude"].values[-1]
    lon = ds["longitude"].values
    assert lon.min() >= 0 and lon.max() < 360 and np.all(np.diff(lon) > 0)
    assert list(ds["level"].values) == [500, 850]
    assert ds["temperature"].chunks is not None, "open_wb2 must stay lazy (dask)"
    x, times, grid = dataset_to_tensor(ds, SPEC)
    assert grid == GRID and np.array_equal(times, TIMES)
    np.testing.assert_array_equal(x.numpy(), reference)


@pytest.mark.skipif(not ZARR3, reason="zarr>=3 needed to write format v3")
def test_zarr_v3_store(tmp_path: Path, reference: np.ndarray) -> None:
    store = _write(_source(lat_ascending=True), tmp_path / "v3.zarr", zarr_format=3)
    assert (store / "zarr.json").exists()
    ds = open_wb2(store, variables=SPEC.variables, levels=SPEC.levels)
    np.testing.assert_array_equal(dataset_to_tensor(ds, SPEC)[0].numpy(), reference)


def test_unconsolidated_v2_and_zip(tmp_path: Path, reference: np.ndarray) -> None:
    src = _source()
    src.to_zarr(tmp_path / "plain.zarr", mode="w", zarr_format=2, consolidated=False)
    ds = open_wb2(tmp_path / "plain.zarr", variables=SPEC.variables)
    np.testing.assert_array_equal(dataset_to_tensor(ds, SPEC)[0].numpy(), reference)
    import zipfile

    store = _write(src, tmp_path / "z.zarr")
    with zipfile.ZipFile(tmp_path / "z.zarr.zip", "w") as zf:
        for f in store.rglob("*"):
            if f.is_file():
                zf.write(f, f.relative_to(store).as_posix())
    ds = open_wb2(tmp_path / "z.zarr.zip", variables=SPEC.variables, chunks=None)
    np.testing.assert_array_equal(dataset_to_tensor(ds, SPEC)[0].numpy(), reference)


def test_fsspec_url(tmp_path: Path, reference: np.ndarray) -> None:
    _write(_source(lon_180=True), tmp_path / "u.zarr")
    ds = open_wb2(f"file://{tmp_path / 'u.zarr'}", variables=SPEC.variables)
    np.testing.assert_array_equal(dataset_to_tensor(ds, SPEC)[0].numpy(), reference)
    fsspec = pytest.importorskip("fsspec")
    mem = fsspec.filesystem("memory")
    mem.put(str(tmp_path / "u.zarr"), "/wb2test/u.zarr", recursive=True)
    try:
        ds = open_wb2("memory://wb2test/u.zarr", variables=SPEC.variables)
        np.testing.assert_array_equal(dataset_to_tensor(ds, SPEC)[0].numpy(), reference)
    finally:
        mem.rm("/wb2test", recursive=True)


def test_time_selection_and_strides(tmp_path: Path) -> None:
    store = _write(_source(), tmp_path / "t.zarr")
    ds = open_wb2(store, time=("2003-12-31T06", "2004-01-01T06"))
    assert list(ds["time"].values) == list(TIMES[1:6])
    ds = open_wb2(store, time=slice("2004-01-01", None), time_stride=2)
    assert list(ds["time"].values) == list(TIMES[4::2])
    ds = open_wb2(store, timestep="12h")
    assert list(ds["time"].values) == list(TIMES[::2])
    ds = open_wb2(store, spatial_stride=2, levels=[1000])
    assert ds.sizes["latitude"] == 4 and ds.sizes["longitude"] == 8 and list(ds["level"].values) == [1000]
    np.testing.assert_array_equal(ds["longitude"].values, GRID.lon[::2])


def test_with_poles_store(tmp_path: Path) -> None:
    grid = Grid.equiangular(9, 16, poles=True)
    store = _write(synthetic_wb2(SPEC, grid, TIMES, lat_ascending=True, lon_first=True), tmp_path / "p.zarr")
    ds = open_wb2(store)
    assert ds["latitude"].values[0] == 90.0 and ds["latitude"].values[-1] == -90.0
    assert dataset_to_tensor(ds, SPEC)[2] == grid


def test_static_fields_survive(tmp_path: Path) -> None:
    store = _write(_source(lat_ascending=True), tmp_path / "s.zarr")
    ds = open_wb2(store, variables=["land_sea_mask", "2m_temperature"], time=("2004-01-01", "2004-01-01T18"))
    assert ds["land_sea_mask"].dims == ("latitude", "longitude")
    np.testing.assert_array_equal(ds["land_sea_mask"].values, _source()["land_sea_mask"].values)


def test_errors(tmp_path: Path) -> None:
    store = _write(_source(), tmp_path / "e.zarr")
    with pytest.raises(
        ValueError, match=r"open_wb2: variable 'vorticity' is not in the store; available variables are \["
    ):
        open_wb2(store, variables=["temperature", "vorticity"])
    with pytest.raises(
        ValueError,
        match=r"open_wb2: level 300 hPa is not in the store; available levels are \[250, 500, 700, 850, 1000\]",
    ):
        open_wb2(store, levels=[500, 300])
    with pytest.raises(ValueError, match=r"open_wb2: field 'time' .* selects no time step; store covers 2003-12-31"):
        open_wb2(store, time=("1990-01-01", "1990-12-31"))
    with pytest.raises(FileNotFoundError, match="open_wb2: store"):
        open_wb2(tmp_path / "missing.zarr")
    with pytest.raises(ValueError, match="open_wb2: field 'spatial_stride' 3 does not divide 16"):
        open_wb2(store, spatial_stride=3)
    with pytest.raises(ValueError, match="open_wb2: field 'time_stride'"):
        open_wb2(store, time_stride=0)


def test_gs_url_without_gcsfs_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a))
    with pytest.raises(ImportError, match=r"gcsfs.*appa-core\[gcs\]"):
        open_wb2(wb2_era5_url("1440x721"))


def test_known_wb2_urls() -> None:
    assert wb2_era5_url("1440x721") == (
        "gs://weatherbench2/datasets/era5/1959-2023_01_10-wb13-6h-1440x721_with_derived_variables.zarr"
    )
    assert WB2_ERA5["64x32"].endswith("1959-2023_01_10-6h-64x32_equiangular_conservative.zarr")
    with pytest.raises(ValueError, match="wb2_era5_url: field 'resolution'"):
        wb2_era5_url("32x16")
