"""Registration with appa-core's plugin registry (entry point ``stations`` in group ``appa.plugins``)."""

from __future__ import annotations

from typing import Any

from appa_core.plugins import hookimpl
from appa_op_stations.operator import StationOp
from appa_op_stations.readers import read_ioda, read_station_csv


@hookimpl
def appa_register_operators(registry: Any) -> None:
    """Operator ``station``: :class:`~appa_op_stations.StationOp`."""
    registry.add_operator("station", StationOp)


@hookimpl
def appa_register_obs_readers(registry: Any) -> None:
    """Readers ``station_csv`` (long-format CSV) and ``ioda`` (JEDI IODA NetCDF), both returning a ``StationOp``."""
    registry.add_obs_reader("station_csv", read_station_csv)
    registry.add_obs_reader("ioda", read_ioda)
