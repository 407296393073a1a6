"""The bundled truth slice: make_truth_slice packing bounds, and the shipped asset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from appa_core.data import DEMO_SPEC, load_truth_slice, make_truth_slice, open_wb2, read_truth_slice, synthetic_wb2
from appa_core.data.truth import truth_slice_resource
from appa_core.grid import Grid
from appa_core.state import dataset_to_tensor

GRID = Grid.equiangular(8, 16, poles=False)
TIMES = np.datetime64("2001-02-27T00", "ns") + np.arange(16) * np.timedelta64(6, "h")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, xr.Dataset]:
    ds = synthetic_wb2(DEMO_SPEC, GRID, TIMES, seed=2, all_levels=(100, 250, 500, 700, 850, 1000), lat_ascending=True)
    ds["temperature"][5, 4, 2, 5] = np.nan  # (time, level=850, lat, lon)
    ds.attrs["seed"] = 2
    path = tmp_path_factory.mktemp("truth") / "src.zarr"
    ds.to_zarr(path, zarr_format=2, consolidated=True)
    return path, ds


@pytest.mark.parametrize("suffix", [".zarr.zip", ".zarr"])
def test_make_truth_slice_round_trip_within_packing_error(
    tmp_path: Path, source: tuple[Path, xr.Dataset], suffix: str
) -> None:
    src, ds = source
    out = make_truth_slice(src, tmp_path / f"truth{suffix}", start="2001-02-28T00", days=1.5)
    assert out.exists() and (out.is_file() == (suffix == ".zarr.zip"))
    truth = read_truth_slice(out)
    np.testing.assert_array_equal(truth["time"].values, TIMES[4:10])  # [start, start + 1.5 d): 6 steps
    assert truth["temperature"].dims == ("time", "level", "latitude", "longitude")
    assert truth["latitude"].values[0] > 0 and list(truth["level"].values) == [250, 500, 700, 850]
    assert {"land_sea_mask", "geopotential_at_surface"} <= set(truth.data_vars)
    assert all(truth[v].dtype == np.float32 for v in truth.data_vars)
    assert truth.attrs["seed"] == 2 and truth.attrs["days"] == 1.5
    packed = open_wb2(out, chunks=None)
    assert packed["geopotential"].encoding["dtype"] == np.int16 and packed["geopotential"].encoding["scale_factor"] > 0
    x, _, _ = dataset_to_tensor(truth, DEMO_SPEC)
    ref, _, _ = dataset_to_tensor(ds.sel(time=slice(TIMES[4], TIMES[9])), DEMO_SPEC)
    x, ref = x.numpy().astype(np.float64), ref.numpy().astype(np.float64)
    nan = np.isnan(ref)
    assert nan.sum() == 1 and np.array_equal(np.isnan(x), nan)
    # error bound per variable: scale/2 = (max - min) / 65532 / 2, plus float32 rounding of the decoded value
    c = 0
    for var in DEMO_SPEC.variables:
        n = len(DEMO_SPEC.levels) if var in DEMO_SPEC.atmospheric else 1
        r, y = ref[:, c : c + n], x[:, c : c + n]
        bound = (np.nanmax(r) - np.nanmin(r)) / 65532 / 2 + 1e-7 * np.nanmax(np.abs(r))
        err = np.nanmax(np.abs(y - r))
        assert err <= bound, (var, err, bound)
        c += n


def test_make_truth_slice_errors(tmp_path: Path, source: tuple[Path, xr.Dataset]) -> None:
    src, _ = source
    with pytest.raises(ValueError, match="make_truth_slice: no time step in"):
        make_truth_slice(src, tmp_path / "t.zarr.zip", start="1999-01-01", days=1)
    with pytest.raises(ValueError, match="make_truth_slice: field 'days' must be positive"):
        make_truth_slice(src, tmp_path / "t.zarr.zip", start=None, days=0)


def test_bundled_truth_slice() -> None:
    resource = truth_slice_resource()
    assert resource.is_file(), "appa_core/assets/truth_slice.zarr.zip is missing"
    with __import__("importlib.resources").resources.as_file(resource) as path:
        assert path.stat().st_size < 8e6
    truth = load_truth_slice()
    x, times, grid = dataset_to_tensor(truth, DEMO_SPEC)
    assert x.shape[1] == DEMO_SPEC.n_channels and times.size >= 16
    assert np.all(np.diff(times) == np.timedelta64(6, "h"))
    assert grid.lat[0] > grid.lat[-1]
    assert bool(np.isfinite(x.numpy()).all())
    t2m = x[:, DEMO_SPEC.index("2m_temperature")]
    assert float(t2m.min()) > 180 and float(t2m.max()) < 340
    q = x[:, DEMO_SPEC.index("specific_humidity", 850)]
    assert float(q.min()) >= 0
    assert 9e4 < float(x[:, DEMO_SPEC.index("mean_sea_level_pressure")].mean()) < 1.1e5
