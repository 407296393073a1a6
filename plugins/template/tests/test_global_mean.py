"""Tests of ``GlobalMeanOp``: appa-core's operator contract tests, plus closed-form values."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_core.testing import OperatorContract
from appa_op_template import GlobalMeanOp

GRID = Grid.equiangular(7, 12)
SPEC = StateSpec(surface=("2m_temperature",), atmospheric=("temperature",), levels=(500, 850))
WINDOW = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], dtype="datetime64[ns]")


def _op(**kw: object) -> GlobalMeanOp:
    args: dict[str, object] = {"variable": "temperature", "level": 500, "time": ["2020-01-01T03"], "value": [250.0]}
    return GlobalMeanOp(**{**args, **kw})  # type: ignore[arg-type]


class TestGlobalMeanOp(OperatorContract):
    """Every contract test of appa_core.testing, on a surface and an upper-air variable."""

    def make_setup(self) -> tuple[Grid, StateSpec, np.ndarray]:
        return GRID, SPEC, WINDOW

    def make_operator(self) -> GlobalMeanOp:
        return _op(time=["2020-01-01T00", "2020-01-01T07", "2020-01-01T12"], value=[250.0, 251.0, 249.0])

    def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
        return [
            (lambda: _op(value=[np.nan]), r"GlobalMeanOp: field 'value' has value nan at index 0; must be finite"),
            (lambda: _op(value=[], time=[]), r"GlobalMeanOp: field 'value' is empty"),
            (lambda: _op(value=[1.0, 2.0]), r"GlobalMeanOp: field 'time' has 1 values but field 'value' has 2"),
            (lambda: _op(error=0.0), r"GlobalMeanOp: field 'error' has value 0.0 at index 0; must be > 0"),
            (lambda: _op(error=[1.0, 2.0]), r"GlobalMeanOp: field 'error' has 2 values but there are 1"),
            (lambda: _op(variable=3), r"GlobalMeanOp: field 'variable' must be a variable name \(str\), got 3"),
            (lambda: _op(level=-5), r"GlobalMeanOp: field 'level' has value -5; must be a pressure > 0"),
            (lambda: _op(time=["later"]), r"GlobalMeanOp: field 'time' must hold times"),
            (
                lambda: _op(variable="ozone").prepare(GRID, SPEC, WINDOW),
                r"GlobalMeanOp: variable 'ozone' is not modelled",
            ),
            (
                lambda: _op(level=300).prepare(GRID, SPEC, WINDOW),
                r"GlobalMeanOp: level 300 hPa of 'temperature' is not modelled",
            ),
            (
                lambda: _op(time=["2020-01-01T13"]).prepare(GRID, SPEC, WINDOW),
                r"GlobalMeanOp: field 'time' has value 2020-01-01T13.* outside the window",
            ),
        ]


class TestGlobalMeanOpSurface(TestGlobalMeanOp):
    def make_operator(self) -> GlobalMeanOp:
        return _op(variable="2m_temperature", level=None, error=[0.2])


def _state(field: Callable[[np.ndarray, np.ndarray, int], np.ndarray]) -> torch.Tensor:
    lat, lon = np.meshgrid(GRID.lat, GRID.lon, indexing="ij")
    x = np.zeros((1, len(WINDOW), SPEC.n_channels, *GRID.shape))
    for t in range(len(WINDOW)):
        x[0, t, SPEC.index("temperature", 500)] = field(lat, lon, t)
    return torch.as_tensor(x)


def test_closed_forms() -> None:
    op = _op(time=["2020-01-01T00", "2020-01-01T03", "2020-01-01T10"], value=[0.0, 0.0, 0.0]).prepare(
        GRID, SPEC, WINDOW
    )
    # A constant field has that constant as its mean.
    torch.testing.assert_close(
        op(_state(lambda lat, lon, t: np.full(lat.shape, 260.0)))[0], torch.full((3,), 260.0, dtype=torch.float64)
    )
    # An odd field in latitude (and any zonal wave) has mean zero.
    odd = op(_state(lambda lat, lon, t: np.sin(np.deg2rad(lat)) + np.cos(np.deg2rad(3 * lon))))[0]
    torch.testing.assert_close(odd, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    # Linear in time: a field equal to the state's index gives the fractional index of each observation time.
    torch.testing.assert_close(
        op(_state(lambda lat, lon, t: np.full(lat.shape, float(t))))[0],
        torch.tensor([0.0, 0.5, 10 / 6], dtype=torch.float64),
    )
    # Area weighting: the same as weighting rows by Grid.area_weights() and averaging.
    field = lambda lat, lon, t: 250.0 + 30.0 * np.cos(np.deg2rad(lat)) ** 2  # noqa: E731
    expected = (GRID.area_weights()[:, None] * field(*np.meshgrid(GRID.lat, GRID.lon, indexing="ij"), 0)).mean()
    assert op(_state(field))[0, 0].item() == pytest.approx(expected, rel=1e-14)
    assert op.matrix().sum(1) == pytest.approx(np.ones(3))


def test_metadata_and_noise() -> None:
    op = _op(time=["2020-01-01T03", "2020-01-01T06"], value=[250.0, 251.0], error=[0.5, 0.25])
    assert op.noise.variance().tolist() == [0.25, 0.0625]
    meta = op.metadata()
    assert meta["variable"].tolist() == ["temperature", "temperature"] and meta["level"].tolist() == [500.0, 500.0]
