"""Thin driver around jcm 3.0.0 (SPEEDY physics, dinosaur dynamical core).

Importing this module does not import jcm; :class:`JcmDriver` does, when constructed.

The driver interface used by :func:`appa_naturerun.run.run_nature` (and imitated by the tests' fake model):

- ``JcmDriver(seed, start_time)``: a model whose clock starts at ``start_time`` (numpy datetime64);
- ``static() -> xr.Dataset`` with ``lsm`` and ``phis`` on ``(lon, lat)`` (native grid);
- ``initialize()``: fresh random initial state from ``seed``;
- ``advance(days, save_interval) -> xr.Dataset``: integrate ``days`` model days and return jcm's native output
  (snapshots every ``save_interval`` days, the first one ``save_interval`` after the current time);
- ``now() -> np.datetime64``: the model clock;
- ``save(path)`` / ``load(path)``: the complete resumable state (jcm's own msgpack checkpoint of named arrays,
  written to a temporary file and renamed; no pickle).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import xarray as xr

GRAV = 9.81  # jcm.constants.grav
_EPOCH = np.datetime64("1970-01-01T00:00:00", "s")

#: jcm native variables the conversion needs (everything else in jcm's output is dropped right away).
NATIVE_VARS = (
    "u_wind",
    "v_wind",
    "temperature",
    "specific_humidity",
    "geopotential",
    "normalized_surface_pressure",
    "surface_flux.t0",
    "surface_flux.u0",
    "surface_flux.v0",
)


def versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("jcm", "jax", "jaxlib", "dinosaur", "numpy", "xarray", "zarr", "appa-naturerun"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


class JcmDriver:
    """jcm ``Model`` at T31 (spectral truncation 31), 8 sigma levels, 30-min step, climatological T30 boundary
    data shipped in the jcm wheel (``jcm.data.bc.t30.clim``), forcing aligned with ``wrap_year``."""

    model_name = "jcm 3.0.0 SPEEDY physics, dinosaur dynamical core, T31 L8, 48x96 Gaussian grid"

    def __init__(self, seed: int, start_time: np.datetime64, layers: int = 8, truncation: int = 31):
        from importlib import resources

        from jcm.forcing import ForcingData
        from jcm.model import Model
        from jcm.physics.speedy.speedy_coords import get_speedy_coords
        from jcm.terrain import TerrainData

        self.seed = int(seed)
        self.coords = get_speedy_coords(layers=layers, spectral_truncation=truncation)
        bc = resources.files("jcm.data.bc.t30.clim")
        self.terrain = TerrainData.from_file(bc / "terrain.nc", coords=self.coords)
        self.forcing = ForcingData.from_file(bc / "forcing.nc", coords=self.coords, align_mode="wrap_year")
        start = str(np.datetime64(start_time, "s"))
        self.model = Model(coords=self.coords, terrain=self.terrain, start_time=start)
        self._lat = np.rad2deg(np.asarray(self.coords.horizontal.latitudes, dtype=np.float64))
        self._lon = np.rad2deg(np.asarray(self.coords.horizontal.longitudes, dtype=np.float64))

    def surface_geopotential(self) -> tuple[np.ndarray, str]:
        """Surface geopotential (m2/s2, (lon, lat)) that the dynamics uses, and where it came from.

        The dinosaur dycore integrates over ``truncated_modal_orography(terrain.orog, wavenumbers_to_clip=2)``
        (metres) and computes the output geopotential from it; ``TerrainData.phis0`` (used by parts of SPEEDY's
        physics) is much smoother (e.g. 1180 m instead of 2760 m on the Altiplano) and does not match the
        surface pressure. Falls back to ``phis0`` if the private attribute disappears in another jcm version.
        """
        oro = getattr(self.model.dycore, "_truncated_orography", None)
        if oro is not None:
            nodal = np.asarray(self.coords.horizontal.to_nodal(oro), dtype=np.float64)
            return GRAV * nodal, "g * nodal(jcm dycore truncated_modal_orography(orog, wavenumbers_to_clip=2))"
        return np.asarray(self.terrain.phis0, dtype=np.float64), "jcm TerrainData.phis0"

    def static(self) -> xr.Dataset:
        phis, source = self.surface_geopotential()
        ds = xr.Dataset(
            {
                "lsm": (("lon", "lat"), np.asarray(self.terrain.fmask, dtype=np.float64)),
                "phis": (("lon", "lat"), phis),
            },
            coords={"lon": self._lon, "lat": self._lat},
        )
        ds["phis"].attrs["source"] = source
        return ds

    def initialize(self) -> None:
        self.model.bootstrap_state(self.model.initial_state(random_seed=self.seed))

    def now(self) -> np.datetime64:
        t = self.model.run_state.time
        return _EPOCH + np.timedelta64(int(t.delta.days), "D") + np.timedelta64(int(t.delta.seconds), "s")

    def advance(self, days: float, save_interval: float) -> xr.Dataset:
        pred = self.model.resume(forcing=self.forcing, save_interval=save_interval, total_time=days)
        ds = pred.to_xarray()
        keep = [v for v in NATIVE_VARS if v in ds]
        return ds[keep].load()

    def save(self, path: str | Path) -> None:
        from jcm.checkpoint import save_checkpoint

        save_checkpoint(self.model, Path(path))

    def load(self, path: str | Path) -> None:
        from jcm.checkpoint import load_checkpoint

        self.initialize()  # templates for the named arrays
        load_checkpoint(self.model, Path(path))
