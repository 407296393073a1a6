"""appa-op-fields: gridded and profile observations for appa-core.

``MaskedFieldOp`` observes whole, partial (masked) or coarse-grained fields on the model grid; ``PressureLevelOp``
observes atmospheric variables at arbitrary pressures (radiosonde and aircraft profiles), linear in log-pressure.
"""

from appa_op_fields.masked import DEFAULT_ERRORS, MaskedFieldOp, parse_channel
from appa_op_fields.profile import PressureLevelOp, log_pressure_weights

__all__ = ["DEFAULT_ERRORS", "MaskedFieldOp", "PressureLevelOp", "log_pressure_weights", "parse_channel"]
__version__ = "0.1.0"
