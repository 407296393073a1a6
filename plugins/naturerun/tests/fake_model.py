"""A fake GCM with the interface of :class:`appa_naturerun.gcm.JcmDriver` (no jcm, no JAX).

Its state is a small vector evolved by a deterministic chaotic map, one iteration per 6 h; the native fields are
smooth functions of the state, time, latitude and longitude in jcm's native layout (dims (time, level, lon, lat),
Gaussian latitudes ascending, sigma levels, normalized surface pressure).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

SIGMA = np.array([0.95, 0.835, 0.685, 0.51, 0.34, 0.2, 0.095, 0.025])
GAUSS_LAT = np.rad2deg(np.arcsin(np.polynomial.legendre.leggauss(48)[0]))  # ascending
LON = np.arange(96) * 3.75
STEP = np.timedelta64(6, "h")


class Crash(RuntimeError):
    pass


class FakeDriver:
    model_name = "fake"

    def __init__(self, seed, start_time, crash_on_save: int | None = None):
        self.seed = int(seed)
        self.t = np.datetime64(start_time, "m")
        self.x = None
        self.n_saves = 0
        self.crash_on_save = crash_on_save

    def versions(self):
        return {"fake": "0"}

    def static(self):
        lat2, lon2 = np.meshgrid(GAUSS_LAT, LON)  # (lon, lat)
        lsm = (np.sin(np.deg2rad(lon2)) * np.cos(np.deg2rad(lat2)) > 0.3).astype(float)
        phis = 9.81 * 1000.0 * lsm * np.cos(np.deg2rad(lat2)) ** 2
        return xr.Dataset(
            {"lsm": (("lon", "lat"), lsm), "phis": (("lon", "lat"), phis)}, coords={"lon": LON, "lat": GAUSS_LAT}
        )

    def initialize(self):
        rng = np.random.default_rng(self.seed)
        self.x = rng.uniform(0.1, 0.9, size=3)

    def now(self):
        return self.t

    def _step(self):
        self.x = (3.9 * self.x * (1.0 - self.x) + 0.01 * np.roll(self.x, 1)) % 1.0
        self.t = self.t + STEP

    def _fields(self):
        lat = np.deg2rad(GAUSS_LAT)[None, None, :]
        lon = np.deg2rad(LON)[None, :, None]
        sig = SIGMA[:, None, None]
        a, b, c = self.x
        ps = 1.0 + 0.03 * (a - 0.5) * np.cos(lat[0]) * np.sin(lon[0] + 6 * b) - 0.1 * (self.static()["lsm"].values)
        temp = 220.0 + 70.0 * sig**0.3 * np.cos(lat) ** 2 + 5 * b * np.sin(2 * lon)
        u = 30.0 * np.cos(lat) * (1 - sig) + 5 * c * np.sin(lon)
        v = 5.0 * (a - 0.5) * np.sin(3 * lon) * np.cos(lat) + 0 * sig
        q = 0.015 * sig**3 * np.cos(lat) ** 2 * (0.5 + 0.5 * a) + 0 * lon
        z = -287.0 * 260.0 * np.log(sig) + 0 * lon + 0 * lat
        return dict(
            u_wind=u,
            v_wind=v,
            temperature=temp,
            specific_humidity=q,
            geopotential=z,
            normalized_surface_pressure=ps,
            **{"surface_flux.t0": temp[0] + 1.0, "surface_flux.u0": 0.95 * u[0], "surface_flux.v0": 0.95 * v[0]},
        )

    def advance(self, days, save_interval):
        n_steps = round(days * 4)
        every = round(save_interval * 4)
        snaps, times = [], []
        for i in range(1, n_steps + 1):
            self._step()
            if i % every == 0:
                snaps.append(self._fields())
                times.append(self.t)
        data = {}
        for k in snaps[0]:
            arr = np.stack(
                [np.broadcast_to(s[k], snaps[0][k].shape if snaps[0][k].ndim == 2 else (8, 96, 48)) for s in snaps]
            )
            dims = ("time", "level", "lon", "lat") if arr.ndim == 4 else ("time", "lon", "lat")
            data[k] = (dims, arr.astype(np.float32))
        return xr.Dataset(
            data, coords={"time": np.array(times, dtype="datetime64[ns]"), "level": SIGMA, "lon": LON, "lat": GAUSS_LAT}
        )

    def save(self, path):
        self.n_saves += 1
        if self.crash_on_save is not None and self.n_saves == self.crash_on_save:
            raise Crash(f"simulated kill at save #{self.n_saves}")
        with open(path, "wb") as f:
            np.savez(f, x=self.x, t=np.array(self.t, dtype="datetime64[m]").astype(np.int64))

    def load(self, path):
        with np.load(path) as d:
            self.x = d["x"]
            self.t = np.datetime64(int(d["t"]), "m")
