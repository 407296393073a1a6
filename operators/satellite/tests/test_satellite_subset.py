"""``subset(t0, t1)`` / ``select`` of the footprint operators: whole footprints, same values on a sub-window."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _satellite_setup import state, tiny_setup

from appa_op_satellite import BlockCorrelatedGaussian, RadianceOp, SwathOp, amsua_channels


def _ops() -> list:
    _, spec, times = tiny_setup()
    rng = np.random.default_rng(0)
    n = 30
    t = times[0] + np.sort(rng.integers(0, 12 * 3600, n)).astype("timedelta64[s]").astype("timedelta64[ns]")
    common = {"lat": rng.uniform(-70, 70, n), "lon": rng.uniform(0, 360, n), "time": t, "radius_km": 900.0}
    swath = SwathOp(values=rng.normal(250, 5, (n, 2)), variables=["temperature@500", "2m_temperature"], **common)
    chans = amsua_channels(levels=spec.levels)
    block = BlockCorrelatedGaussian(torch.eye(len(chans), dtype=torch.float64) * 0.3 + 0.1)
    radiance = RadianceOp(values=rng.normal(230, 5, (n, len(chans))), channels=chans, noise=block, **common)
    return [swath, radiance]


@pytest.mark.parametrize("which", [0, 1])
def test_subset_is_the_full_operator_on_a_sub_window(which: int) -> None:
    grid, spec, times = tiny_setup()
    op = _ops()[which]
    full = op.prepare(grid, spec, times)
    sub = op.subset(times[1], times[2])
    assert sub is not None and not sub.prepared
    keep = op.time >= times[1]
    assert sub.n_footprints == keep.sum()
    np.testing.assert_array_equal(sub.values.numpy(), op._y[keep].reshape(-1))
    rows = np.flatnonzero(np.repeat(keep, op.n_components))
    assert type(sub.noise) is type(op.noise)
    assert torch.allclose(sub.noise.dense_cov(), op.noise.dense_cov()[rows][:, rows])
    sub.prepare(grid, spec, times[1:])
    x = state(grid, spec, times, batch=2, seed=1)
    assert torch.allclose(sub(x[:, 1:]), full(x)[:, rows], rtol=1e-12)


def test_select_refuses_part_of_a_footprint() -> None:
    op = _ops()[0]
    with pytest.raises(ValueError, match=r"select\(\) must take all 2 observations of each footprint"):
        op.select([0, 2, 3])
    assert op.select([2, 3]).n_footprints == 1
