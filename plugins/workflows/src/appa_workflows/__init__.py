"""appa-workflows: the applications built on appa-core.

* :mod:`appa_workflows.demo`: ``appa demo``, the embedded default end to end;
* :mod:`appa_workflows.assimilate`: ``appa assimilate CONFIG`` (schema, parser, builders, runner);
* :mod:`appa_workflows.evaluate`: ``appa evaluate POSTERIOR TRUTH`` (the scores are :mod:`appa_core.metrics`);
* :mod:`appa_workflows.observing`: :class:`~appa_workflows.observing.ObservingSystem`, synthetic observing systems;
* :mod:`appa_workflows.baselines`: climatology, persistence and the optimal-interpolation prior.

The subcommands are registered with ``appa`` by :mod:`appa_workflows.plugin` (hook ``appa_register_commands``).
Submodules are imported on first use, so ``import appa_workflows`` is cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ObservingSystem", "assimilate", "baselines", "demo", "evaluate", "observing"]
__version__ = "0.1.0"

_SUBMODULES = {"assimilate", "baselines", "demo", "evaluate", "observing"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"appa_workflows.{name}")
    if name == "ObservingSystem":
        from appa_workflows.observing import ObservingSystem

        return ObservingSystem
    raise AttributeError(f"module 'appa_workflows' has no attribute {name!r}")
