"""Registration of the stations plugin (entry point and hooks)."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any


def test_entry_point_is_declared() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="appa.plugins")}
    assert eps.get("stations") == "appa_op_stations.plugin"


class _Registry:
    def __init__(self) -> None:
        self.operators: dict[str, Any] = {}
        self.readers: dict[str, Any] = {}

    def add_operator(self, name: str, cls: Any, **_: Any) -> None:
        self.operators[name] = cls

    def add_obs_reader(self, name: str, fn: Any, **_: Any) -> None:
        self.readers[name] = fn


def test_hooks_register_the_operator_and_readers() -> None:
    from appa_op_stations import StationOp, plugin, read_ioda, read_station_csv

    registry = _Registry()
    plugin.appa_register_operators(registry=registry)
    plugin.appa_register_obs_readers(registry=registry)
    assert registry.operators == {"station": StationOp}
    assert registry.readers == {"station_csv": read_station_csv, "ioda": read_ioda}
