"""``subset(t0, t1)`` of ``PressureLevelOp``; ``MaskedFieldOp`` refuses to select observations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from appa_core.obs.errors import DiagonalGaussian
from appa_op_fields import MaskedFieldOp, PressureLevelOp


def test_pressure_level_subset_keeps_explicit_noise_rows() -> None:
    times = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12", "2020-01-01T18"], dtype="datetime64[ns]")
    prof = PressureLevelOp(
        variable="temperature",
        pressure=[900.0, 700.0, 600.0, 300.0],
        lat=10.0,
        lon=20.0,
        time=["2020-01-01T01", "2020-01-01T05", "2020-01-01T13", "2020-01-01T17"],
        value=[280.0, 270.0, 260.0, 230.0],
        noise=DiagonalGaussian(torch.tensor([1.0, 2.0, 3.0, 4.0])),
    )
    sub = prof.subset(times[2], times[3])
    assert sub is not None and sub.pressure.tolist() == [600.0, 300.0]
    assert sub.value.tolist() == [260.0, 230.0]
    assert sub.noise.std.tolist() == [3.0, 4.0]  # explicit noise restricted, not recomputed
    default = PressureLevelOp(variable="temperature", pressure=500.0, lat=0.0, lon=0.0, time=times[:2], value=[1, 2])
    assert default.select([1]).noise.size == 1


def test_masked_field_select_is_refused() -> None:
    op = MaskedFieldOp.example()[0]
    with pytest.raises(TypeError, match="cannot select observations"):
        op.select([0])
