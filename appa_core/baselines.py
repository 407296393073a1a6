"""Deprecated: moved to :mod:`appa_workflows.baselines` (distribution ``appa-workflows``, ``plugins/workflows``).

Importing this module warns and gives the new module; it will be removed in the next release.
"""

from appa_core._moved import alias_moved_module

_new = alias_moved_module("appa_core.baselines", "appa_workflows.baselines", "appa-workflows", "-e plugins/workflows")

if __name__ == "__main__":  # python -m appa_core.baselines STORE ...: the climatology builder
    raise SystemExit(_new.main())
