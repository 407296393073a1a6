"""Deprecated: moved to :mod:`appa_naturerun.letkf` (distribution ``appa-naturerun``, ``plugins/naturerun``).

Importing this module warns and gives the new module; it will be removed in the next release.
"""

from appa_core._moved import alias_moved_module

_new = alias_moved_module("appa_core.letkf", "appa_naturerun.letkf", "appa-naturerun", "-e plugins/naturerun")
