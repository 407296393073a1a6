"""``subset(t0, t1)`` of ``StationOp`` and of an ``ObsSet``."""

from __future__ import annotations

import numpy as np
import torch

from appa_core.grid import Grid
from appa_core.obs import ObsSet
from appa_core.spec import StateSpec
from appa_core.testing import make_state
from appa_op_stations import StationOp

GRID = Grid.equiangular(9, 16)
SPEC = StateSpec(surface=("2m_temperature", "surface_pressure"), atmospheric=("temperature",), levels=(500, 850))
TIMES = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12", "2020-01-01T18"], dtype="datetime64[ns]")


def _stations() -> StationOp:
    rng = np.random.default_rng(0)
    m = 40
    kind = rng.integers(0, 3, m)
    return StationOp(
        variable=np.where(kind == 0, "2m_temperature", np.where(kind == 1, "surface_pressure", "temperature")),
        level=np.where(kind == 2, 500.0, np.nan),
        lat=rng.uniform(-89, 89, m),
        lon=rng.uniform(0, 360, m),
        time=TIMES[0] + np.sort(rng.integers(0, 18 * 3600, m)).astype("timedelta64[s]").astype("timedelta64[ns]"),
        value=rng.normal(280, 5, m),
        elevation=rng.uniform(0, 2000, m),
        surface_geopotential=np.full(GRID.shape, 300.0 * 9.80665),
        station_id=[f"s{i}" for i in range(m)],
    )


def test_station_subset_equals_the_full_operator_on_its_sub_window() -> None:
    op = _stations()
    full = op.prepare(GRID, SPEC, TIMES)
    sub = op.subset(TIMES[1], TIMES[2])
    keep = (op.time >= TIMES[1]) & (op.time <= TIMES[2])
    assert sub is not None and sub.size == keep.sum()
    np.testing.assert_array_equal(sub.station_id, op.station_id[keep])
    np.testing.assert_allclose(sub.noise.std.numpy(), op.noise.std.numpy()[keep])
    x = make_state(GRID, SPEC, TIMES, batch=2, seed=2)
    sub.prepare(GRID, SPEC, TIMES[1:3])
    assert torch.allclose(sub(x[:, 1:3]), full(x)[:, keep], rtol=1e-13)


def test_obsset_subset_leaves_out_operators_without_observations() -> None:
    late = StationOp(
        variable="2m_temperature", lat=10.0, lon=20.0, time=["2020-01-01T13", "2020-01-01T17"], value=[280.0, 281.0]
    )
    both = ObsSet([_stations(), late])
    cut = TIMES[0] + np.timedelta64(2, "h")
    early = both.subset(TIMES[0], cut)
    assert early is not None and len(early) == 1
    assert early.size == int((_stations().time <= cut).sum())
    assert both.subset("2021-01-01", "2021-01-02") is None
