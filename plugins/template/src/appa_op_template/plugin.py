"""Registration with appa-core (entry point ``template = "appa_op_template.plugin"`` in group ``appa.plugins``).

appa-core imports this module and calls each ``@hookimpl`` function with its registry. Keep the module light: the
target may be given as a lazy ``"package.module:Class"`` string, so that ``appa plugins`` imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

from appa_core.plugins import hookimpl


def _example() -> tuple[Any, ...]:
    from appa_op_template.operator import GlobalMeanOp

    return GlobalMeanOp.example()


@hookimpl
def appa_register_operators(registry: Any) -> None:
    """Operator ``global_mean`` (full name ``template:global_mean``); ``appa plugins check`` uses the example."""
    registry.add_operator("global_mean", "appa_op_template.operator:GlobalMeanOp", example=_example)
