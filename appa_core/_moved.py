"""Deprecated module paths: a module that moved out of appa-core, or was renamed within it, keeps importing from its
old path for one release.

An old module (``appa_core/baselines.py``, ``appa_core/noise.py``, ...) is a two-line shim that calls
:func:`alias_moved_module`: importing it
warns with a :class:`DeprecationWarning` that names the new path, then imports the new module and puts it in
``sys.modules`` under the old name, so that ``from appa_core.baselines import oi_prior`` and
``import appa_core.baselines as b; b.oi_prior`` both give the new module's objects (the same objects: patching one
patches the other). Nothing here runs when ``appa_core`` itself is imported; the new module is imported only when the
old path is.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from types import ModuleType

__all__ = ["alias_moved_module"]


def alias_moved_module(old: str, new: str, distribution: str, install: str) -> ModuleType:
    """Warn that ``old`` moved to ``new`` (in ``distribution``), import ``new`` and register it as ``old``.

    Args:
        old: the deprecated module path, e.g. ``"appa_core.baselines"``.
        new: the module it moved to, e.g. ``"appa_workflows.baselines"``.
        distribution: the distribution that ships ``new``, e.g. ``"appa-workflows"``.
        install: the pip argument that installs it, e.g. ``"-e plugins/workflows"``.
    """
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: it moved to {new} (distribution "
        f"{distribution}); import from {new}",
        DeprecationWarning,
        stacklevel=3,  # the line importing the old module (warnings skips the importlib frames)
    )
    try:
        module = importlib.import_module(new)
    except ModuleNotFoundError as exc:
        if exc.name is None or not new.startswith(exc.name):
            raise
        raise ModuleNotFoundError(
            f"{old} moved to {new} (distribution {distribution}), which is not installed: pip install {install}",
            name=exc.name,
        ) from exc
    sys.modules[old] = module
    return module
