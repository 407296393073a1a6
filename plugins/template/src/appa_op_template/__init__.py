"""appa-op-template: a minimal appa-core plugin with one operator, :class:`GlobalMeanOp`."""

from appa_op_template.operator import GlobalMeanOp

__all__ = ["GlobalMeanOp"]
__version__ = "0.1.0"
