"""appa-op-satellite: satellite observation operators for appa-core.

* :class:`Orbit`, :class:`Swath`: circular (sun-synchronous by default) orbits, ground tracks and cross-track
  scans (footprint centres with ``pyproj.Geod``).
* :class:`SwathOp`: chosen variables averaged over the footprints, interpolated in time.
* :class:`RadianceOp`: a linear brightness-temperature proxy per channel (AMSU-A-like presets).
"""

from appa_op_satellite._noise import BlockCorrelatedGaussian
from appa_op_satellite.footprint import FootprintStencil, footprint_stencil
from appa_op_satellite.orbit import Footprints, Orbit, ScanGeometry, Swath
from appa_op_satellite.radiance import AMSUA, RadianceChannel, RadianceOp, amsua_channels, layer_weights
from appa_op_satellite.swath import SwathOp

__all__ = [
    "AMSUA",
    "BlockCorrelatedGaussian",
    "FootprintStencil",
    "Footprints",
    "Orbit",
    "RadianceChannel",
    "RadianceOp",
    "ScanGeometry",
    "Swath",
    "SwathOp",
    "amsua_channels",
    "footprint_stencil",
    "layer_weights",
]

__version__ = "0.1.0"
