"""Synthetic observing systems for twin experiments, the demo and the benchmarks.

An :class:`ObservingSystem` says *what* is observed (how many surface stations, which satellite instruments, how
many radiosondes, with which errors); :meth:`ObservingSystem.build` draws the locations with a seed and simulates
the observations from a true trajectory, :math:`y = \\mathcal{H}(x_{true}) + \\epsilon` with :math:`\\epsilon`
from each operator's noise model. The same seed gives the same observations, so every method of a benchmark sees
the same data.

The operator classes are looked up in the plugin registry by name. The presets' families (surface stations,
polar orbiters with sounders and radiances, radiosondes) are drawn here and need the operator distributions
``appa-op-stations``, ``appa-op-satellite`` and ``appa-op-fields`` (the ``operators`` extra of appa-workflows).
Any other installed operator joins through ``networks``: each entry names an operator by its registry name and is
drawn by that operator class's :meth:`~appa_core.obs.ObsOperator.synthetic_network` (the operator protocol of
:mod:`appa_core.obs.config`), so a third-party family needs no edit here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.obs.base import ObsOperator
from appa_core.obs.config import ObsContext
from appa_core.spec import StateSpec

__all__ = ["ObservingSystem"]

SURFACE_STATION_VARIABLES = (
    "2m_temperature",
    "mean_sea_level_pressure",
    "10m_u_component_of_wind",
    "10m_v_component_of_wind",
)


#: The distribution that provides each operator the presets use (registry name -> distribution).
OPERATOR_DISTRIBUTIONS: dict[str, str] = {
    "station": "appa-op-stations",
    "swath": "appa-op-satellite",
    "radiance": "appa-op-satellite",
    "pressure_level": "appa-op-fields",
    "masked_field": "appa-op-fields",
}


def _operator_class(name: str) -> Any:
    from appa_core.plugins import get_registry

    try:
        return get_registry().operator(name)
    except Exception as exc:  # the registry's own error says which plugin is missing
        dist = OPERATOR_DISTRIBUTIONS.get(name)
        advice = f"pip install {dist}" if dist else "see appa plugins"
        raise RuntimeError(
            f"ObservingSystem: operator {name!r} is not installed: {advice} ({str(exc).splitlines()[0]})"
        ) from exc


def _random_points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points uniform in area on the sphere: (lat, lon) in degrees."""
    lat = np.rad2deg(np.arcsin(rng.uniform(-1.0, 1.0, n)))
    lon = rng.uniform(0.0, 360.0, n)
    return lat, lon


@attrs.define(kw_only=True)
class ObservingSystem:
    """What a synthetic observing system observes.

    Attributes:
        stations: number of surface stations (area-uniform random locations), reporting every state time.
        station_variables: surface variables each station reports (those the spec models are kept).
        swaths: number of polar orbiters carrying a cross-track sounder (``SwathOp`` of ``swath_variables``
            and, if ``radiance``, a ``RadianceOp`` of AMSU-A-like channels on the same footprints).
        swath_variables: what the swath operator observes, ``"variable@level"`` or surface names.
        radiance_channels: AMSU-A channel numbers for the radiance proxy (only those the spec's levels resolve).
        scan_interval_s: seconds between scan lines (the real AMSU-A scans every 8 s; coarser keeps the demo small).
        sondes: number of radiosonde sites, each a profile of temperature and winds at 00 and 12 UTC.
        networks: further networks of any installed operator: mappings ``{"operator": NAME, **settings}``, each
            drawn by ``registry.operator(NAME).synthetic_network(context, **settings)``.
    """

    stations: int = 300
    station_variables: tuple[str, ...] = SURFACE_STATION_VARIABLES
    swaths: int = 1
    swath_variables: tuple[str, ...] = ("temperature@850", "specific_humidity@700")
    radiance: bool = True
    radiance_channels: tuple[int, ...] = (4, 5, 6, 7)
    scan_interval_s: float = 240.0
    sondes: int = 20
    networks: tuple[Mapping[str, Any], ...] = attrs.field(default=(), converter=lambda v: tuple(dict(n) for n in v))

    def __attrs_post_init__(self) -> None:
        for i, net in enumerate(self.networks):
            if not isinstance(net.get("operator"), str) or not net["operator"]:
                raise ValueError(
                    f"ObservingSystem: field 'networks' has value {net!r} at index {i}; each network needs an "
                    "'operator' (a registry name) and that operator's synthetic_network settings"
                )

    @classmethod
    def demo(cls) -> ObservingSystem:
        """The demo's: 300 stations, one polar orbiter with a sounder, 20 radiosondes."""
        return cls()

    @classmethod
    def sparse(cls) -> ObservingSystem:
        """100 stations, one polar orbiter (radiances only), 10 radiosondes."""
        return cls(stations=100, swaths=1, swath_variables=(), sondes=10, scan_interval_s=480.0)

    @classmethod
    def dense(cls) -> ObservingSystem:
        """1000 stations, two polar orbiters, 60 radiosondes."""
        return cls(stations=1000, swaths=2, sondes=60, scan_interval_s=120.0)

    @classmethod
    def named(cls, name: str) -> ObservingSystem:
        presets = {"demo": cls.demo, "sparse": cls.sparse, "dense": cls.dense}
        if name not in presets:
            raise ValueError(f"ObservingSystem: preset {name!r} is unknown; presets are {sorted(presets)}")
        return presets[name]()

    def build(
        self,
        truth: Tensor | np.ndarray,
        grid: Grid,
        spec: StateSpec,
        times: np.ndarray,
        seed: int = 0,
    ) -> list[ObsOperator]:
        """Draw the network and simulate its observations of ``truth``.

        Args:
            truth: the true trajectory ``[T, C, H, W]`` in physical units, on ``grid``/``spec`` at ``times``.
            grid, spec: the state layout.
            times: the window's state times ``[T]`` (``datetime64``).
            seed: seeds both the locations and the observation errors.

        Returns:
            operators, prepared on ``(grid, spec, times)``, whose values are ``H(truth) + noise``.
        """
        x = torch.as_tensor(np.asarray(truth) if not isinstance(truth, Tensor) else truth).to(torch.float64)
        times = np.asarray(times).astype("datetime64[ns]")
        if x.ndim != 4 or x.shape[0] != times.size:
            raise ValueError(
                f"ObservingSystem: field 'truth' must be [T, C, H, W] with T = {times.size} times, got {list(x.shape)}"
            )
        rng = np.random.default_rng(seed)
        gen = torch.Generator().manual_seed(seed)
        ops: list[ObsOperator] = []
        ops += self._stations(rng, spec, times)
        ops += self._satellites(times, spec)
        ops += self._sondes(rng, spec, times)
        ops += self._networks(rng, grid, spec, times)
        if not ops:
            raise ValueError("ObservingSystem: observes nothing (no stations, swaths, sondes or networks)")
        return [op.simulate(x, grid, spec, times, generator=gen) for op in ops]

    # ------------------------------------------------------------------ families
    def _networks(self, rng: np.random.Generator, grid: Grid, spec: StateSpec, times: np.ndarray) -> list[ObsOperator]:
        ops: list[ObsOperator] = []
        for net in self.networks:
            settings = dict(net)
            name = settings.pop("operator")
            context = ObsContext(grid=grid, spec=spec, times=times, rng=rng, name=f"network {name!r}")
            built = _operator_class(name).synthetic_network(context, **settings)
            ops += list(built) if isinstance(built, list | tuple) else [built]
        return ops

    def _stations(self, rng: np.random.Generator, spec: StateSpec, times: np.ndarray) -> list[ObsOperator]:
        variables = [v for v in self.station_variables if v in spec.surface]
        if self.stations <= 0 or not variables:
            return []
        station = _operator_class("station")
        lat, lon = _random_points(rng, self.stations)
        t = len(times)
        # every station reports every variable at every state time
        var = np.repeat(np.array(variables), self.stations * t)
        n = len(variables)
        lat_all = np.tile(np.repeat(lat, t), n)
        lon_all = np.tile(np.repeat(lon, t), n)
        time_all = np.tile(np.tile(times, self.stations), n)
        ids = np.tile(np.repeat(np.char.add("S", np.arange(self.stations).astype(str)), t), n)
        return [
            station(
                variable=var,
                lat=lat_all,
                lon=lon_all,
                time=time_all,
                value=np.zeros(var.size),
                station_id=ids,
                name="stations",
            )
        ]

    def _satellites(self, times: np.ndarray, spec: StateSpec) -> list[ObsOperator]:
        if self.swaths <= 0:
            return []
        swath_cls = _operator_class("swath")
        package = importlib.import_module(swath_cls.__module__.split(".")[0])
        ops: list[ObsOperator] = []
        interval = np.timedelta64(int(self.scan_interval_s * 1e9), "ns")
        for k in range(self.swaths):
            # orbiters in different planes: ascending-node local times spread over the day
            orbit = package.Orbit.sun_synchronous(
                ascending_node_local_time=f"{(13 + 7 * k) % 24:02d}:30", epoch=str(times[0])
            )
            swath = package.Swath(orbit=orbit)
            variables = [v for v in self.swath_variables if _in_spec(spec, v)]
            if variables:
                ops.append(
                    swath_cls.from_orbit(
                        swath, times, scan_interval=interval, variables=variables, name=f"swath{k + 1}"
                    )
                )
            if self.radiance:
                channels = package.amsua_channels(self.radiance_channels, levels=spec.levels)
                if channels:
                    radiance_cls = _operator_class("radiance")
                    ops.append(
                        radiance_cls.from_orbit(
                            swath, times, scan_interval=interval, channels=channels, name=f"amsua{k + 1}"
                        )
                    )
        return ops

    def _sondes(self, rng: np.random.Generator, spec: StateSpec, times: np.ndarray) -> list[ObsOperator]:
        variables = [v for v in ("temperature", "u_component_of_wind", "v_component_of_wind") if v in spec.atmospheric]
        hours = (times.astype("datetime64[h]").astype(np.int64) % 24).astype(int)
        launch = times[np.isin(hours, (0, 12))]
        if self.sondes <= 0 or not variables or launch.size == 0 or not spec.levels:
            return []
        profile = _operator_class("pressure_level")
        lat, lon = _random_points(rng, self.sondes)
        # reports at the model levels and between them (linear in log p)
        levels = np.asarray(sorted(spec.levels), dtype=np.float64)
        mids = np.sqrt(levels[1:] * levels[:-1])
        pressures = np.concatenate([levels, mids])
        grid_idx = np.stack(
            np.meshgrid(
                np.arange(len(variables)), np.arange(self.sondes), np.arange(launch.size), pressures, indexing="ij"
            ),
            axis=0,
        ).reshape(4, -1)
        v_idx, s_idx, t_idx = grid_idx[0].astype(int), grid_idx[1].astype(int), grid_idx[2].astype(int)
        return [
            profile(
                variable=np.asarray(variables)[v_idx],
                pressure=grid_idx[3],
                lat=lat[s_idx],
                lon=lon[s_idx],
                time=launch[t_idx],
                value=np.zeros(v_idx.size),
                station_id=np.char.add("sonde", s_idx.astype(str)),
                name="sondes",
            )
        ]


def _in_spec(spec: StateSpec, name: str) -> bool:
    variable, _, level = name.partition("@")
    if not level:
        return variable in spec.surface
    return variable in spec.atmospheric and int(level) in spec.levels
