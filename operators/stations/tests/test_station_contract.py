"""``appa_core.testing.OperatorContract`` on ``StationOp`` (shapes, batching, gradients, adjoint, bad input)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from appa_core import testing  # the contract suite must run: a broken import fails, never skips
from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_op_stations import G, StationOp

SPEC = StateSpec(surface=("2m_temperature", "surface_pressure"), atmospheric=("temperature",), levels=(850, 500))
GRID = Grid.equiangular(7, 12, poles=False)
WINDOW = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], dtype="datetime64[ns]")


def _points(m: int, seed: int = 0) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    lat = np.concatenate([rng.uniform(-90, 90, m - 3), [90.0, -89.0, 0.0]])
    lon = np.concatenate([rng.uniform(-180, 360, m - 3), [10.0, 359.9, -0.1]])
    time = WINDOW[0] + (rng.uniform(0, 12, m) * 3600e9).astype("timedelta64[ns]")
    return {"lat": lat, "lon": lon, "time": time}


def _mixed(method: str = "bilinear", **kw: object) -> StationOp:
    m = 9
    variable = ["2m_temperature", "surface_pressure", "temperature"] * 3
    level = [np.nan, np.nan, 850.0, np.nan, np.nan, 500.0, np.nan, np.nan, 850.0]
    value = np.tile([280.0, 95000.0, 260.0], 3)
    return StationOp(variable=variable, level=level, value=value, method=method, **_points(m), **kw)  # type: ignore[arg-type]


def _bad() -> list[tuple[Callable[[], object], str]]:
    base = {
        "variable": "2m_temperature",
        "value": [280.0, 281.0],
        "lat": [10.0, -20.0],
        "lon": [0.0, 200.0],
        "time": ["2020-01-01T00", "2020-01-01T07"],
    }
    return [
        (lambda: StationOp(**{**base, "lat": [95.0, 0.0]}), r"StationOp: field 'lat' has value 95\.0"),
        (lambda: StationOp(**{**base, "value": [np.nan, 1.0]}), r"StationOp: field 'value' has value nan"),
        (lambda: StationOp(**{**base, "lon": [0.0]}), r"StationOp: field 'lon' has 1 values"),
        (lambda: StationOp(**{**base, "error": [1.0, 0.0]}), r"StationOp: field 'error' has value 0\.0"),
        (
            lambda: StationOp(**{**base, "value": [], "lat": [], "lon": [], "time": []}),
            r"StationOp: field 'value' is empty",
        ),
        (
            lambda: StationOp(**{**base, "variable": "ozone", "error": 1.0}).prepare(GRID, SPEC, WINDOW),
            r"StationOp: field 'variable' has value 'ozone'",
        ),
        (
            lambda: StationOp(**{**base, "variable": "temperature", "level": 300.0}).prepare(GRID, SPEC, WINDOW),
            r"StationOp: field 'level' has value 300\.0",
        ),
        (
            lambda: StationOp(**{**base, "time": "2020-01-02"}).prepare(GRID, SPEC, WINDOW),
            r"StationOp: field 'time' has value 2020-01-02.* outside the window",
        ),
    ]


class TestStationBilinear(testing.OperatorContract):
    def make_setup(self) -> tuple[Grid, StateSpec, np.ndarray]:
        return GRID, SPEC, WINDOW

    def make_operator(self) -> StationOp:
        return _mixed()

    def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
        return _bad()


class TestStationNearest(TestStationBilinear):
    def make_operator(self) -> StationOp:
        return _mixed(method="nearest")


class TestStationElevation(TestStationBilinear):
    def make_operator(self) -> StationOp:
        phi = G * np.linspace(0.0, 2000.0, GRID.nlat * GRID.nlon).reshape(GRID.shape)
        elevation = [100.0, 1500.0, np.nan, 800.0, np.nan, 0.0, 3000.0, 50.0, np.nan]
        return _mixed(elevation=elevation, surface_geopotential=phi)
