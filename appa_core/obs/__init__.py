"""Observation operators: the base classes, the stacked ``ObsSet`` and validation helpers."""

from appa_core.obs.base import ObsOperator, SparseLinearOperator, time_interpolation
from appa_core.obs.obsset import ObsSet

__all__ = ["ObsOperator", "ObsSet", "SparseLinearOperator", "time_interpolation"]
