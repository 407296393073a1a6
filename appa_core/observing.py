"""Deprecated: moved to :mod:`appa_workflows.observing` (distribution ``appa-workflows``, ``plugins/workflows``).

Importing this module warns and gives the new module; it will be removed in the next release.
"""

from appa_core._moved import alias_moved_module

_new = alias_moved_module("appa_core.observing", "appa_workflows.observing", "appa-workflows", "-e plugins/workflows")
