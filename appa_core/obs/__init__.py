"""Observation operators: the base classes, the stacked ``ObsSet``, and the operator-author kit.

The kit: :class:`PointOperator` (base of linear point operators), :func:`point_stencil` / :class:`PointStencil`
(time and horizontal interpolation of points, also for nonlinear operators), :func:`time_interpolation`,
:mod:`appa_core.obs.interp` (spherical interpolation weights), :mod:`appa_core.obs.validate` (input checks), and
:mod:`appa_core.obs.config` (:class:`ObsContext`: how workflows build operators from config tables and synthetic
networks through :meth:`ObsOperator.from_config` and :meth:`ObsOperator.synthetic_network`).
"""

from appa_core.obs.base import ObsOperator, SparseLinearOperator, time_interpolation
from appa_core.obs.config import ObsContext
from appa_core.obs.obsset import ObsSet
from appa_core.obs.point import PointOperator, PointStencil, point_stencil

__all__ = [
    "ObsContext",
    "ObsOperator",
    "ObsSet",
    "PointOperator",
    "PointStencil",
    "SparseLinearOperator",
    "point_stencil",
    "time_interpolation",
]
