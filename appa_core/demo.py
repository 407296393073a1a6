"""Deprecated: moved to :mod:`appa_workflows.demo` (distribution ``appa-workflows``, ``plugins/workflows``).

Importing this module warns and gives the new module; it will be removed in the next release.
"""

from appa_core._moved import alias_moved_module

_new = alias_moved_module("appa_core.demo", "appa_workflows.demo", "appa-workflows", "-e plugins/workflows")
