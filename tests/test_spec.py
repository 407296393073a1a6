"""Tests of ``appa_core.spec.StateSpec``: channel order, lookups, units, serialisation and errors."""

from __future__ import annotations

import json

import pytest

from appa_core.spec import UNITS, Channel, StateSpec

SPEC = StateSpec(
    surface=("2m_temperature", "mean_sea_level_pressure"),
    atmospheric=("temperature", "geopotential"),
    levels=(500, 850, 1000),
)


def test_channel_order() -> None:
    assert SPEC.n_channels == 2 + 2 * 3 == len(SPEC.channels)
    assert SPEC.channel_names() == [
        "2m_temperature",
        "mean_sea_level_pressure",
        "temperature@500",
        "temperature@850",
        "temperature@1000",
        "geopotential@500",
        "geopotential@850",
        "geopotential@1000",
    ]
    assert SPEC.channels[3] == Channel("temperature", 850) and str(SPEC.channels[0]) == "2m_temperature"
    assert SPEC.variables == ("2m_temperature", "mean_sea_level_pressure", "temperature", "geopotential")
    assert SPEC.is_surface("2m_temperature") and not SPEC.is_surface("temperature")


def test_index_and_indices() -> None:
    for i, ch in enumerate(SPEC.channels):
        assert SPEC.index(ch.variable, ch.level) == i
    assert SPEC.index("geopotential", 850.0) == 6  # float levels that are whole numbers are fine
    assert SPEC.indices("temperature") == [2, 3, 4]
    assert SPEC.indices("mean_sea_level_pressure") == [1]


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (("ozone",), r"MyOp: variable 'ozone' is not modelled; known variables are \['2m_temperature'"),
        (("temperature",), r"MyOp: variable 'temperature' is on pressure levels \[500, 850, 1000\]; give a level"),
        (("temperature", 300), r"MyOp: level 300 hPa of 'temperature' is not modelled"),
        (("temperature", 500.5), r"MyOp: level 500.5 hPa of 'temperature' is not modelled"),
        (("2m_temperature", 850), r"MyOp: variable '2m_temperature' is a surface variable; got level 850"),
    ],
)
def test_index_errors_name_the_owner(args: tuple[object, ...], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        SPEC.index(*args, owner="MyOp")  # type: ignore[arg-type]


def test_check_variables_and_indices_errors() -> None:
    SPEC.check_variables(["temperature", "2m_temperature"], owner="MyOp")
    with pytest.raises(ValueError, match=r"MyOp: variable 'humidity' is not modelled"):
        SPEC.check_variables(["temperature", "humidity"], owner="MyOp")
    with pytest.raises(ValueError, match=r"StateSpec: variable 'humidity' is not modelled"):
        SPEC.indices("humidity")


def test_units_and_round_trip() -> None:
    spec = StateSpec(surface=("2m_temperature", "my_tracer"), units={"my_tracer": "ppb"})
    assert spec.units == {"2m_temperature": "K", "my_tracer": "ppb"}
    assert StateSpec(surface=("foo",)).units == {"foo": "unknown"}
    assert SPEC.units["geopotential"] == UNITS["geopotential"] == "m**2 s**-2"
    again = StateSpec.from_dict(json.loads(json.dumps(SPEC.to_dict())))
    assert again == SPEC and again.units == SPEC.units and hash(again) == hash(SPEC)
    assert StateSpec(surface=["a"], atmospheric=[], levels=[]) == StateSpec(surface=("a",))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({}, r"StateSpec: fields 'surface' and 'atmospheric' are both empty"),
        ({"surface": ("a", "b", "a")}, r"StateSpec: variable 'a' is listed twice"),
        ({"surface": ("t",), "atmospheric": ("t",), "levels": (500,)}, r"StateSpec: variable 't' is listed twice"),
        ({"atmospheric": ("temperature",)}, r"StateSpec: atmospheric variables \['temperature'\] need field 'levels'"),
        ({"atmospheric": ("t",), "levels": (500, 500)}, r"StateSpec: field 'levels' has duplicates: \[500, 500\]"),
        ({"atmospheric": ("t",), "levels": (0,)}, r"StateSpec: field 'levels' has value 0 hPa outside \(0, 1100\]"),
        ({"atmospheric": ("t",), "levels": (1200,)}, r"StateSpec: field 'levels' has value 1200 hPa"),
    ],
)
def test_bad_specs_raise(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        StateSpec(**kwargs)  # type: ignore[arg-type]
