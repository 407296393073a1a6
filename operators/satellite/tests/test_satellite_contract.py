"""The core's operator contract tests (``appa_core.testing.OperatorContract``) on the satellite operators."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from _satellite_setup import tiny_setup, tiny_swath

from appa_core.grid import Grid
from appa_core.obs import ObsOperator
from appa_core.spec import StateSpec
from appa_core.testing import OperatorContract
from appa_op_satellite import RadianceOp, SwathOp, amsua_channels

T0 = np.datetime64("2020-01-01T03", "ns")


class _Base(OperatorContract):
    def make_setup(self) -> tuple[Grid, StateSpec, np.ndarray]:
        return tiny_setup()


class TestSwathOpContract(_Base):
    """Footprint kernels (large footprints on the coarse grid) and bilinear points mixed, two variables."""

    def make_operator(self) -> ObsOperator:
        _, _, times = tiny_setup()
        return SwathOp.from_orbit(tiny_swath(), times, variables=["temperature@500", "2m_temperature"])

    def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
        ok = {"lon": [5.0], "time": [T0], "values": [1.0], "variables": ["temperature@500"]}
        return [
            (lambda: SwathOp(**{**ok, "lat": [95.0]}), r"SwathOp: field 'lat' has value 95.0"),
            (
                lambda: SwathOp(**{**ok, "lat": [0.0], "values": [float("nan")]}),
                r"SwathOp: field 'values' has value nan",
            ),
            (lambda: SwathOp(**{**ok, "lat": [0.0], "radius_km": 0.0}), r"SwathOp: field 'radius_km' has value 0.0"),
            (
                lambda: SwathOp(**{**ok, "lat": [], "lon": [], "time": [], "values": []}),
                r"SwathOp: field 'lat' is empty",
            ),
            (
                lambda: SwathOp(**{**ok, "lat": [0.0], "variables": ["vorticity@500"]}).prepare(*tiny_setup()),
                r"SwathOp: variable 'vorticity' is not modelled",
            ),
            (
                lambda: SwathOp(**{**ok, "lat": [0.0], "time": ["2021-01-01"]}).prepare(*tiny_setup()),
                r"SwathOp: field 'time' has value 2021-01-01",
            ),
        ]


class TestSwathOpPointsContract(TestSwathOpContract):
    """Small (24-60 km) footprints on the coarse grid: bilinear point observations."""

    def make_operator(self) -> ObsOperator:
        _, _, times = tiny_setup()
        return SwathOp.from_orbit(tiny_swath(24.0), times, variables=["u_component_of_wind@250"])


class TestRadianceOpContract(_Base):
    """AMSU-A channels 4-8 on footprints with the zenith-dependent weighting functions and the surface term."""

    def make_operator(self) -> ObsOperator:
        _, spec, times = tiny_setup()
        return RadianceOp.from_orbit(tiny_swath(), times, channels=amsua_channels((4, 5, 6, 7, 8), levels=spec.levels))

    def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
        ok = {"lat": [0.0], "lon": [5.0], "time": [T0], "values": [[250.0, 240.0]], "channels": [5, 6]}
        return [
            (lambda: RadianceOp(**{**ok, "lat": [-95.0]}), r"RadianceOp: field 'lat' has value -95.0"),
            (
                lambda: RadianceOp(**{**ok, "values": [[250.0, float("inf")]]}),
                r"RadianceOp: field 'values' has value inf",
            ),
            (lambda: RadianceOp(**{**ok, "channels": []}), r"RadianceOp: field 'channels' is empty"),
            (lambda: RadianceOp(**{**ok, "noise": "gauss"}), r"RadianceOp: field 'noise' must be a NoiseModel"),
            (
                lambda: RadianceOp(**{**ok, "channels": [12, 13]}).prepare(*tiny_setup()),
                r"RadianceOp: channel 'amsua-12' \(peak 10 hPa\) has no model level",
            ),
        ]


class TestRadianceOpPointsContract(TestRadianceOpContract):
    def make_operator(self) -> ObsOperator:
        _, spec, times = tiny_setup()
        return RadianceOp.from_orbit(
            tiny_swath(), times, channels=amsua_channels((5, 6), levels=spec.levels), radius_km=None, zenith_deg=None
        )
