"""time_features closed forms, TrajectoryWindows contents, worker safety, DistributedSampler, date splits."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from appa_core.data import TrajectoryWindows, open_wb2, split_by_date, synthetic_wb2, time_features
from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_core.state import dataset_to_tensor

SPEC = StateSpec(surface=("2m_temperature",), atmospheric=("temperature", "geopotential"), levels=(500, 850))
GRID = Grid.equiangular(4, 8, poles=False)
TIMES = np.datetime64("2000-01-01T00", "ns") + np.arange(20) * np.timedelta64(6, "h")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ds = synthetic_wb2(SPEC, GRID, TIMES, seed=5, all_levels=(500, 700, 850), lat_ascending=True, lon_first=True)
    path = tmp_path_factory.mktemp("windows") / "w.zarr"
    encoding = {v: {"chunks": (3, *ds[v].shape[1:])} for v in ds.data_vars if "time" in ds[v].dims}
    ds.to_zarr(path, zarr_format=2, consolidated=True, encoding=encoding)
    return path


def test_time_features_closed_forms() -> None:
    t = np.array(
        ["2000-01-01T00", "2001-01-01T06", "2001-07-02T12", "2000-07-02T00", "2003-12-31T18"], dtype="datetime64[ns]"
    )
    f = time_features(t)
    assert f.shape == (5, 4) and f.dtype == np.float32
    np.testing.assert_allclose(f[0], [0, 1, 0, 1], atol=1e-7)
    np.testing.assert_allclose(f[1, 2:], [1, 0], atol=1e-7)  # 06 UTC: a quarter day
    # 2001 (365 d): 2 July 12:00 is day 182.5 = exactly half the year -> (0, -1); 18 UTC -> (-1, 0)
    np.testing.assert_allclose(f[2], [0, -1, 0, -1], atol=1e-6)
    # 2000 is a leap year (366 d): 2 July 00:00 is day 183 = half the year
    np.testing.assert_allclose(f[3, :2], [0, -1], atol=1e-6)
    a = 2 * np.pi * (364.75 / 365)
    np.testing.assert_allclose(f[4], [np.sin(a), np.cos(a), -1, 0], atol=1e-6)
    np.testing.assert_allclose(f[:, 0] ** 2 + f[:, 1] ** 2, 1, atol=1e-6)
    with pytest.raises(ValueError, match="time_features: field 'times' contains NaT"):
        time_features(np.array(["NaT"], dtype="datetime64[ns]"))


def test_windows_equal_direct_slicing(store: Path) -> None:
    windows = TrajectoryWindows(store, SPEC, length=4, stride=3)
    assert windows._ds is None, "the constructor must not keep the store open"
    assert len(windows) == 6 and list(windows.starts) == [0, 3, 6, 9, 12, 15]
    assert windows.timestep == np.timedelta64(6, "h") and windows.grid == GRID
    full, times, _ = dataset_to_tensor(open_wb2(store), SPEC)
    for i in (0, 2, 5, -1):
        item = windows[i]
        s = int(windows.starts[i])
        assert item["x"].dtype == torch.float32 and item["x"].shape == (4, SPEC.n_channels, *GRID.shape)
        assert torch.equal(item["x"], full[s : s + 4])
        assert torch.equal(item["time_features"], torch.from_numpy(time_features(times[s : s + 4])))
        assert item["start"].dtype == torch.int64 and int(item["start"]) == int(times[s].astype(np.int64))
    with pytest.raises(IndexError):
        windows[6]


def test_step_time_range_and_gaps(store: Path) -> None:
    full, times, _ = dataset_to_tensor(open_wb2(store), SPEC)
    w = TrajectoryWindows(store, SPEC, length=3, stride=1, step=2, time=("2000-01-02T00", "2000-01-04T00"))
    # times 4..12 (9 steps); a window spans 5 steps: starts 0..4 of the selection
    assert len(w) == 5 and w.timestep == np.timedelta64(12, "h")
    assert torch.equal(w[1]["x"], full[5:10:2])
    np.testing.assert_array_equal(w.window_times(1), times[5:10:2])
    # a gap in the time axis: windows spanning it are skipped
    ds = synthetic_wb2(SPEC, GRID, np.delete(TIMES, 7), seed=1)
    gapped = TrajectoryWindows(ds, SPEC, length=3)
    assert list(gapped.starts) == [0, 1, 2, 3, 4, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]
    with pytest.raises(ValueError, match="TrajectoryWindows: field 'length' 30"):
        TrajectoryWindows(store, SPEC, length=30)
    with pytest.raises(ValueError, match="TrajectoryWindows: field 'stride' must be a positive integer"):
        TrajectoryWindows(store, SPEC, length=3, stride=0)
    with pytest.raises(ValueError, match=r"TrajectoryWindows: variable 'specific_humidity' is not in the dataset"):
        TrajectoryWindows(store, StateSpec(surface=("specific_humidity",)), length=2)


def _batches(loader: DataLoader) -> list[dict[str, torch.Tensor]]:
    return list(loader)


def test_dataloader_two_workers_matches_zero(store: Path) -> None:
    windows = TrajectoryWindows(store, SPEC, length=3, stride=2)
    clone = pickle.loads(pickle.dumps(windows))
    assert clone._ds is None and torch.equal(clone[1]["x"], windows[1]["x"])
    windows._close()
    serial = _batches(DataLoader(windows, batch_size=3, num_workers=0))
    parallel = _batches(DataLoader(windows, batch_size=3, num_workers=2, persistent_workers=False))
    assert len(serial) == len(parallel) == 3
    for a, b in zip(serial, parallel, strict=True):
        assert a["x"].shape == (3, 3, SPEC.n_channels, *GRID.shape)
        for key in ("x", "time_features", "start"):
            assert torch.equal(a[key], b[key])


def test_distributed_sampler_partitions_windows(store: Path) -> None:
    windows = TrajectoryWindows(store, SPEC, length=2, stride=2)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(windows, num_replicas=2, rank=rank, shuffle=True, seed=3, drop_last=True)
        sampler.set_epoch(1)
        for batch in DataLoader(windows, batch_size=2, sampler=sampler):
            seen += batch["start"].tolist()
    starts_ns = [int(windows.times[s].astype(np.int64)) for s in windows.starts]
    assert sorted(seen) == sorted(starts_ns)  # 10 windows: each seen exactly once across the 2 ranks


def test_split_by_date(store: Path) -> None:
    splits = split_by_date(TIMES, valid_start="2000-01-03", test_start="2000-01-04")
    assert set(splits) == {"train", "valid", "test"}
    ds = open_wb2(store)
    sizes = {k: ds.sel(time=v).sizes["time"] for k, v in splits.items()}
    assert sizes == {"train": 8, "valid": 4, "test": 8}
    picked = np.concatenate([ds.sel(time=v)["time"].values for v in splits.values()])
    np.testing.assert_array_equal(picked, TIMES)  # disjoint and complete
    train = TrajectoryWindows(store, SPEC, length=4, time=splits["train"])
    assert train.times[-1] < np.datetime64("2000-01-03")
    assert len(train) == 5
    open_ended = split_by_date(None, "2000-01-03")
    assert open_ended["train"].start is None and open_ended["valid"].stop is None
    with pytest.raises(ValueError, match="split_by_date: split 'test'"):
        split_by_date(TIMES, "2000-01-02", "2001-01-01")
    with pytest.raises(ValueError, match="split_by_date: field 'test_start'"):
        split_by_date(TIMES, "2000-01-03", "2000-01-02")
