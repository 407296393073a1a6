"""appa-op-stations: point observations (surface stations, ships, buoys, model-level reports) for appa-core.

``StationOp`` interpolates any surface or pressure-level variable to arbitrary (lat, lon, time) on the sphere;
``read_station_csv`` and ``read_ioda`` build one from files (``write_station_csv`` / ``write_ioda`` write them).
"""

from appa_op_stations.operator import DEFAULT_ERRORS, LAPSE_RATE, R_DRY, G, StationOp
from appa_op_stations.readers import IODA_VARIABLES, read_ioda, read_station_csv, write_ioda, write_station_csv

__all__ = [
    "DEFAULT_ERRORS",
    "IODA_VARIABLES",
    "LAPSE_RATE",
    "R_DRY",
    "G",
    "StationOp",
    "read_ioda",
    "read_station_csv",
    "write_ioda",
    "write_station_csv",
]
__version__ = "0.1.0"
