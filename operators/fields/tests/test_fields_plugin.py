"""Registration of the fields plugin (entry point and hooks)."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any


def test_entry_point_is_declared() -> None:
    eps = {ep.name: ep.value for ep in entry_points(group="appa.plugins")}
    assert eps.get("fields") == "appa_op_fields.plugin"


def test_hooks_register_both_operators() -> None:
    from appa_op_fields import MaskedFieldOp, PressureLevelOp, plugin

    added: dict[str, Any] = {}

    class Registry:
        def add_operator(self, name: str, cls: Any, **_: Any) -> None:
            added[name] = cls

    plugin.appa_register_operators(registry=Registry())
    assert added == {"masked_field": MaskedFieldOp, "pressure_level": PressureLevelOp}
