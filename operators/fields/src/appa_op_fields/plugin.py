"""Registration with appa-core's plugin registry (entry point ``fields`` in group ``appa.plugins``)."""

from __future__ import annotations

from typing import Any

from appa_core.plugins import hookimpl
from appa_op_fields.masked import MaskedFieldOp
from appa_op_fields.profile import PressureLevelOp


@hookimpl
def appa_register_operators(registry: Any) -> None:
    """Operators ``masked_field`` (:class:`MaskedFieldOp`) and ``pressure_level`` (:class:`PressureLevelOp`)."""
    registry.add_operator("masked_field", MaskedFieldOp)
    registry.add_operator("pressure_level", PressureLevelOp)
