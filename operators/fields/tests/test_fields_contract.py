"""``appa_core.testing.OperatorContract`` on ``MaskedFieldOp`` and ``PressureLevelOp``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from appa_core import testing  # the contract suite must run: a broken import fails, never skips
from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_op_fields import MaskedFieldOp, PressureLevelOp

SPEC = StateSpec(surface=("2m_temperature",), atmospheric=("temperature", "u_component_of_wind"), levels=(850, 500))
GRID = Grid.equiangular(6, 12, poles=False)
WINDOW = np.array(["2020-01-01T00", "2020-01-01T06"], dtype="datetime64[ns]")


def _masked_kw(**kw: object) -> dict[str, object]:
    rng = np.random.default_rng(0)
    args: dict[str, object] = {
        "data": rng.normal(270, 5, (2, 2, 6, 12)),
        "channels": ["2m_temperature", "temperature@500"],
        "time": ["2020-01-01T00", "2020-01-01T03"],
        "mask": rng.random((2, 2, 6, 12)) < 0.3,
    }
    args.update(kw)
    return args


def _profile_kw(**kw: object) -> dict[str, object]:
    rng = np.random.default_rng(1)
    m = 10
    args: dict[str, object] = {
        "variable": np.where(rng.random(m) < 0.5, "temperature", "u_component_of_wind"),
        "pressure": np.exp(rng.uniform(np.log(300), np.log(1100), m)),
        "lat": rng.uniform(-90, 90, m),
        "lon": rng.uniform(-180, 360, m),
        "time": WINDOW[0] + (rng.uniform(0, 6, m) * 3600e9).astype("timedelta64[ns]"),
        "value": rng.normal(250, 10, m),
    }
    args.update(kw)
    return args


class TestMaskedField(testing.OperatorContract):
    def make_setup(self) -> tuple[Grid, StateSpec, np.ndarray]:
        return GRID, SPEC, WINDOW

    def make_operator(self) -> MaskedFieldOp:
        return MaskedFieldOp(**_masked_kw())  # type: ignore[arg-type]

    def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
        nan = np.zeros((2, 2, 6, 12))
        nan[1, 0, 3, 3] = np.nan
        return [
            (lambda: MaskedFieldOp(**_masked_kw(data=nan, mask=None)), r"MaskedFieldOp: field 'data' has value nan"),
            (
                lambda: MaskedFieldOp(**_masked_kw(mask=np.zeros((6, 12)))),
                r"MaskedFieldOp: field 'mask' selects no entries",
            ),
            (lambda: MaskedFieldOp(**_masked_kw(time=WINDOW[:1])), r"MaskedFieldOp: field 'time' has 1 values"),
            (lambda: MaskedFieldOp(**_masked_kw(error=-1.0)), r"MaskedFieldOp: field 'error' has value -1\.0"),
            (
                lambda: MaskedFieldOp(**_masked_kw(channels=["2m_temperature", "ozone@500"]), error=1.0).prepare(
                    GRID, SPEC, WINDOW
                ),
                r"MaskedFieldOp: field 'channels' has value 'ozone@500'",
            ),
            (
                lambda: MaskedFieldOp(**_masked_kw(time=["2020-01-01T00", "2020-01-01T09"])).prepare(
                    GRID, SPEC, WINDOW
                ),
                r"MaskedFieldOp: field 'time' has value 2020-01-01T09.* outside the window",
            ),
        ]


class TestMaskedFieldCoarse(TestMaskedField):
    def make_operator(self) -> MaskedFieldOp:
        return MaskedFieldOp(**_masked_kw(data=np.full((2, 2, 3, 4), 270.0), mask=None, coarsen=(2, 3)))  # type: ignore[arg-type]


class TestPressureLevel(testing.OperatorContract):
    def make_setup(self) -> tuple[Grid, StateSpec, np.ndarray]:
        return GRID, SPEC, WINDOW

    def make_operator(self) -> PressureLevelOp:
        return PressureLevelOp(**_profile_kw())  # type: ignore[arg-type]

    def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
        return [
            (lambda: PressureLevelOp(**_profile_kw(lat=95.0)), r"PressureLevelOp: field 'lat' has value 95\.0"),
            (lambda: PressureLevelOp(**_profile_kw(pressure=-5.0)), r"PressureLevelOp: field 'pressure' has value -5"),
            (lambda: PressureLevelOp(**_profile_kw(value=np.full(10, np.nan))), r"field 'value' has value nan"),
            (lambda: PressureLevelOp(**_profile_kw(lon=[0.0, 1.0])), r"PressureLevelOp: field 'lon' has 2 values"),
            (
                lambda: PressureLevelOp(**_profile_kw(variable="2m_temperature")).prepare(GRID, SPEC, WINDOW),
                r"PressureLevelOp: field 'variable' has value '2m_temperature'",
            ),
            (
                lambda: PressureLevelOp(**_profile_kw(time="2020-01-01T07")).prepare(GRID, SPEC, WINDOW),
                r"PressureLevelOp: field 'time' has value 2020-01-01T07",
            ),
        ]
