"""Deprecated home of the operator input checks: use :mod:`appa_core.obs.validate` (same names).

Kept for one release so that plugins written against appa-core 0.1 keep working; importing it warns.
"""

import warnings

from appa_core.obs.validate import *  # noqa: F403
from appa_core.obs.validate import __all__  # noqa: F401

warnings.warn(
    "appa_core.obs._validate is deprecated; import the same names from appa_core.obs.validate",
    DeprecationWarning,
    stacklevel=2,
)
