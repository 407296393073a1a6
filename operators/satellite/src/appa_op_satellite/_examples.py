"""Small valid operators for ``appa plugins check`` (the registry's contract examples) and the tests."""

from __future__ import annotations

import numpy as np

from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_op_satellite.orbit import Orbit, Swath
from appa_op_satellite.radiance import RadianceOp, amsua_channels
from appa_op_satellite.swath import SwathOp

__all__ = ["example_layout", "example_swath", "radiance_example", "swath_example"]


def example_layout() -> tuple[Grid, StateSpec, np.ndarray]:
    """A 9 x 16 grid, 2 m temperature plus temperature and u wind on 4 levels, a 12 h window of 3 states."""
    grid = Grid.equiangular(9, 16)
    spec = StateSpec(
        surface=("2m_temperature",), atmospheric=("temperature", "u_component_of_wind"), levels=(100, 250, 500, 850)
    )
    times = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], dtype="datetime64[ns]")
    return grid, spec, times


def example_swath(radius_km: float = 1200.0) -> Swath:
    """7 footprints per scan line, a line every 30 min (25 lines over the 12 h window); footprints of
    ``radius_km`` at nadir, so that on the 22.5 deg example grid some use the kernel and some are points."""
    orbit = Orbit.sun_synchronous(epoch="2020-01-01T00:20")
    return Swath(orbit=orbit, n_footprints=7, footprint_radius_km=radius_km, scan_interval=np.timedelta64(30, "m"))


def swath_example() -> tuple[SwathOp, Grid, StateSpec, np.ndarray]:
    grid, spec, times = example_layout()
    op = SwathOp.from_orbit(example_swath(), times, variables=["temperature@500", "u_component_of_wind@250"])
    return op, grid, spec, times


def radiance_example() -> tuple[RadianceOp, Grid, StateSpec, np.ndarray]:
    grid, spec, times = example_layout()
    op = RadianceOp.from_orbit(example_swath(), times, channels=amsua_channels((4, 5, 6, 7, 8), levels=spec.levels))
    return op, grid, spec, times
