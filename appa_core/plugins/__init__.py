"""Plugin registry of appa-core (pluggy project ``appa``, entry-point group ``appa.plugins``).

A plugin module implements hooks with :data:`hookimpl`::

    from appa_core.plugins import hookimpl

    @hookimpl
    def appa_register_operators(registry):
        registry.add_operator("gnssro", "appa_op_gnssro.operator:GnssRO")

and declares itself in its ``pyproject.toml``::

    [project.entry-points."appa.plugins"]
    gnssro = "appa_op_gnssro.plugin"

Use :func:`get_registry` for the process-wide registry, ``get_registry().operator("station")`` to look a component
up, and ``appa plugins`` to see what is installed, what failed and why. See ``docs/plugins.md``.
"""

from appa_core.plugins.hookspecs import HOOK_NAMES, hookimpl, hookspec
from appa_core.plugins.registry import (
    ENTRY_POINT_GROUP,
    KINDS,
    RESERVED_COMMANDS,
    Component,
    PluginError,
    PluginInfo,
    Registry,
    UnknownComponentError,
    get_registry,
    load_plugins,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOK_NAMES",
    "KINDS",
    "RESERVED_COMMANDS",
    "Component",
    "PluginError",
    "PluginInfo",
    "Registry",
    "UnknownComponentError",
    "get_registry",
    "hookimpl",
    "hookspec",
    "load_plugins",
]
