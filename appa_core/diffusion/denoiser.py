"""Deprecated: renamed to :mod:`appa_core.priors.base` (issue #11: one module per concept, named for it).

Importing this module warns and gives the new module; it will be removed in the next release.
"""

from appa_core._moved import alias_moved_module

_new = alias_moved_module("appa_core.diffusion.denoiser", "appa_core.priors.base", "appa-core", "appa-core")
