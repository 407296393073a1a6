"""Registration with appa-core (entry point ``workflows = "appa_workflows.plugin"`` in group ``appa.plugins``).

Registers the subcommands ``appa demo``, ``appa assimilate``, ``appa evaluate`` and ``appa plot``. The targets are
lazy strings: ``appa --help`` imports none of the workflow modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from appa_core.plugins import hookimpl


@hookimpl
def appa_register_commands(register: Callable[..., Any]) -> None:
    register(
        "demo",
        "appa_workflows.demo:main",
        help="run the embedded default: bundled prior, truth slice, synthetic observations",
    )
    register("assimilate", "appa_workflows.assimilate:main", help="assimilate observations described by a CONFIG file")
    register("evaluate", "appa_workflows.evaluate:main", help="score a POSTERIOR zarr store against a TRUTH store")
    register("plot", "appa_workflows.plot:main", help="maps of a POSTERIOR zarr store: mean, spread, truth, departures")
