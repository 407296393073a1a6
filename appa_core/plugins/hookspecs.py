"""Hook specifications of the ``appa`` pluggy project.

The component hooks receive the :class:`~appa_core.plugins.Registry` and return ``None``; a plugin registers any
number of components through it. :func:`appa_register_commands` receives a narrower callback, ``register``, that adds
subcommands of ``appa``. Implement them in your plugin module with the :data:`~appa_core.plugins.hookimpl` marker::

    from appa_core.plugins import hookimpl

    @hookimpl
    def appa_register_operators(registry):
        registry.add_operator("gnssro", GnssROOperator)

New arguments, if ever added to a spec, will be optional keywords: pluggy lets an implementation take fewer
arguments than its spec, so existing plugins keep working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from appa_core.plugins.registry import Registry

__all__ = [
    "HOOK_NAMES",
    "PROJECT",
    "appa_register_commands",
    "appa_register_data_sources",
    "appa_register_noise_models",
    "appa_register_obs_readers",
    "appa_register_operators",
    "hookimpl",
    "hookspec",
]

#: The pluggy project name (also the prefix of every hook).
PROJECT = "appa"

hookspec = pluggy.HookspecMarker(PROJECT)
#: Marks a plugin's hook implementations: ``@hookimpl def appa_register_operators(registry): ...``.
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def appa_register_operators(registry: Registry) -> None:
    """Register observation operators: ``registry.add_operator(name, cls, example=None)``.

    ``cls`` is an :class:`~appa_core.obs.ObsOperator` subclass or a lazy ``"package.module:Class"`` string.
    """


@hookspec
def appa_register_noise_models(registry: Registry) -> None:
    """Register noise models: ``registry.add_noise_model(name, cls)`` (a :class:`~appa_core.obs.errors.NoiseModel`
    subclass or a lazy ``"package.module:Class"`` string)."""


@hookspec
def appa_register_obs_readers(registry: Registry) -> None:
    """Register observation readers (files of observations -> operators): ``registry.add_obs_reader(name, obj)``."""


@hookspec
def appa_register_data_sources(registry: Registry) -> None:
    """Register data sources (state trajectories, e.g. a nature run): ``registry.add_data_source(name, obj)``."""


@hookspec
def appa_register_commands(register: Callable[..., Any]) -> None:
    """Register subcommands of the ``appa`` command line: ``register(name, main, help="...")``.

    ``main`` is a function ``main(argv: list[str] | None) -> int | None`` (the exit status) or a lazy
    ``"package.module:function"`` string, imported only when the subcommand runs, so that ``appa --help`` stays fast.
    It receives every argument after the subcommand and parses them itself (``argparse`` with ``prog="appa NAME"``).
    ``help`` is the one-line summary that ``appa --help`` lists. The names of the core's own commands
    (:data:`~appa_core.plugins.registry.RESERVED_COMMANDS`) are refused. Example::

        @hookimpl
        def appa_register_commands(register):
            register("gnssro-stats", "appa_op_gnssro.cli:main", help="statistics of a GNSS-RO file")
    """


#: The hooks in the order the registry calls them.
HOOK_NAMES: tuple[str, ...] = (
    "appa_register_operators",
    "appa_register_noise_models",
    "appa_register_obs_readers",
    "appa_register_data_sources",
    "appa_register_commands",
)
