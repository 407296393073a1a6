r"""``MaskedFieldOp``: gridded observations of whole or partial fields, optionally coarse-grained.

The observed field ``data`` has shape ``[T', C', H', W']``: ``T'`` observation times, ``C'`` channels (a surface
variable, or an atmospheric variable on a model level), and either the state grid (``H' = H``, ``W' = W``) or a
coarsening of it by blocks of ``ky x kx`` cells (``H' = H/ky``, ``W' = W/kx``). A mask ``[T', C', H', W']``
(broadcastable; boolean or non-negative weights) selects the observed entries; each one gives

.. math:: y_m = \sum_{a} \omega_{ma} \sum_{(j,i) \in B_m} \alpha_{j}\, x[i_{ma}, c_m, j, i] + \epsilon_m,
          \qquad \alpha_j = \frac{a_j}{k_x \sum_{j' \in B_m} a_{j'}},

where :math:`B_m` is the block of grid cells behind the coarse cell (a single cell without coarsening),
:math:`a_j` the cell areas (:meth:`~appa_core.grid.Grid.area_weights`, so block averages are area-weighted
means), and :math:`\omega_{ma}, i_{ma}` linear interpolation in time between the window states bracketing the
observation time (exact selection when the times coincide). This is :math:`y = S x` with a selection/averaging
matrix ``S`` (DAPPER's ``partial_Id_Obs``; average-pooling for coarse products).

Mask weights :math:`w_m \in (0, \infty)` scale the default noise: :math:`\sigma_m = \text{error}_m/\sqrt{w_m}`
(weight 1: nominal error; weight 0: unobserved). The default noise is diagonal Gaussian with :data:`DEFAULT_ERRORS`
per variable unless ``error`` is given.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
import numpy as np
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.obs import SparseLinearOperator, time_interpolation
from appa_core.obs.errors import DiagonalGaussian, NoiseModel
from appa_core.obs.interp import product_stencil_matrix
from appa_core.obs.validate import check_finite, check_positive, to_datetime64, to_float_array
from appa_core.spec import StateSpec

if TYPE_CHECKING:
    from appa_core.obs import ObsContext, ObsOperator

__all__ = ["DEFAULT_ERRORS", "MaskedFieldOp", "parse_channel"]

#: Default observation-error standard deviations per variable, in the variable's units, of this family's operators
#: (gridded fields and pressure-level profiles) when ``error`` is not given: typical in situ values (WMO/ECMWF order
#: of magnitude, plus representativeness on coarse grids); the same values as the station family's today, but each
#: family owns its defaults.
DEFAULT_ERRORS: dict[str, float] = {
    "2m_temperature": 1.0,
    "2m_dewpoint_temperature": 1.5,
    "skin_temperature": 1.5,
    "sea_surface_temperature": 0.5,
    "10m_u_component_of_wind": 1.5,
    "10m_v_component_of_wind": 1.5,
    "10m_wind_speed": 1.5,
    "mean_sea_level_pressure": 100.0,
    "surface_pressure": 100.0,
    "total_precipitation_6hr": 1e-3,
    "total_column_water_vapour": 2.0,
    "temperature": 1.0,
    "u_component_of_wind": 2.0,
    "v_component_of_wind": 2.0,
    "wind_speed": 2.0,
    "vertical_velocity": 0.1,
    "specific_humidity": 5e-4,
    "relative_humidity": 10.0,
    "geopotential": 100.0,
}

_CHANNEL = re.compile(r"^\s*([^@\s]+)\s*(?:@\s*([0-9.eE+-]+)\s*)?$")


def parse_channel(owner: str, field: str, index: int, channel: object) -> tuple[str, float | None]:
    """``"temperature@500"`` / ``"2m_temperature"`` / ``("temperature", 500)`` -> ``(variable, level or None)``."""
    if isinstance(channel, tuple | list) and len(channel) == 2:
        var, lev = channel
        if not isinstance(var, str):
            raise TypeError(f"{owner}: field {field!r} has value {channel!r} at index {index}; variable must be a str")
        return var, None if lev is None else float(lev)
    if isinstance(channel, str):
        match = _CHANNEL.match(channel)
        if match:
            return match.group(1), None if match.group(2) is None else float(match.group(2))
    raise ValueError(
        f"{owner}: field {field!r} has value {channel!r} at index {index}; use 'variable', 'variable@level' or "
        f"(variable, level)"
    )


def _from_xarray(owner: str, obj: Any) -> tuple[np.ndarray, list[str], np.ndarray | None, np.ndarray, np.ndarray]:
    """An xarray DataArray/Dataset as ``(data [T', C', H', W'], channels, times or None, lat, lon)``.

    Dims are read by name (``time``, ``level``, ``latitude``, ``longitude``); latitudes are put north to south and
    longitudes (wrapped to [0, 360)) ascending, whatever their order in the input.
    """
    import xarray as xr

    arrays = list(obj.data_vars.values()) if isinstance(obj, xr.Dataset) else [obj]
    blocks, channels, times = [], [], None
    for da in arrays:
        if da.name is None:
            raise ValueError(f"{owner}: field 'data' is a DataArray without a name; name it after the variable")
        extra = set(da.dims) - {"time", "level", "latitude", "longitude"}
        if extra or not {"latitude", "longitude"} <= set(da.dims):
            raise ValueError(
                f"{owner}: field 'data' variable {da.name!r} has dims {da.dims}; expected a subset of "
                f"('time', 'level', 'latitude', 'longitude') including latitude and longitude"
            )
        da = da.expand_dims([d for d in ("time", "level") if d not in da.dims])
        da = da.transpose("time", "level", "latitude", "longitude")
        if "time" in da.coords:
            t = np.asarray(da["time"].values).astype("datetime64[ns]")
            if times is not None and not np.array_equal(t, times):
                raise ValueError(f"{owner}: field 'data' variables have different times")
            times = t
        values = np.asarray(da.values, dtype=np.float64)
        if "level" in da.coords and da["level"].ndim == 1:
            channels += [f"{da.name}@{float(lev):g}" for lev in np.asarray(da["level"].values)]
        else:
            channels.append(str(da.name))
        blocks.append(values.reshape(values.shape[0], -1, *values.shape[2:]))
        lat = np.asarray(da["latitude"].values, dtype=np.float64)
        lon = np.mod(np.asarray(da["longitude"].values, dtype=np.float64), 360.0)
    data = np.concatenate(blocks, axis=1)
    jorder, iorder = np.argsort(-lat, kind="stable"), np.argsort(lon, kind="stable")
    return data[:, :, jorder][:, :, :, iorder], channels, times, lat[jorder], lon[iorder]


@attrs.define(kw_only=True, eq=False)
class MaskedFieldOp(SparseLinearOperator):
    """Observations of gridded fields: whole fields, regions, partial (masked) fields, coarse-grained averages.

    Attributes:
        data: observed values ``[T', C', H', W']`` (numpy, in the channel's units), or an ``xarray.DataArray``
            (named after its variable; dims among ``time``, ``level``, ``latitude``, ``longitude``) or
            ``xarray.Dataset``, which fill ``channels``, ``time``, ``lat`` and ``lon``.
        channels: ``C'`` channel names, ``"2m_temperature"``, ``"temperature@500"`` or ``("temperature", 500)``.
        time: ``T'`` observation times (``datetime64`` or ISO strings), inside the window at ``prepare``.
        mask: ``None`` (every entry observed; ``data`` must then be finite), ``"finite"`` (the finite entries of
            ``data``), or a boolean / non-negative weight array broadcastable to ``[T', C', H', W']``; entries with
            a positive mask are observed, and their noise std is divided by ``sqrt(weight)``.
        error: noise std, scalar or broadcastable to ``[T', C', H', W']``; ``None``: :data:`DEFAULT_ERRORS`.
        coarsen: block size ``k`` or ``(ky, kx)``: ``data`` lives on the grid coarsened by ``ky x kx`` blocks and
            each value is the area-weighted block mean. Default 1 (the state grid).
        lat, lon: coordinates of ``data``'s grid (optional; set from xarray input), checked against the state
            grid at ``prepare`` when ``coarsen`` is 1.
    """

    values_field: ClassVar[str | None] = None  # values come from a gridded field and a mask

    data: Any = attrs.field(repr=False)
    channels: Sequence[Any] | None = attrs.field(default=None)
    time: Any = attrs.field(default=None)
    mask: Any = attrs.field(default=None, repr=False)
    error: Any = attrs.field(default=None, repr=False)
    coarsen: int | tuple[int, int] = attrs.field(default=1)
    lat: Any = attrs.field(default=None, repr=False)
    lon: Any = attrs.field(default=None, repr=False)

    _parsed: list[tuple[str, float | None]] = attrs.field(factory=list, init=False, repr=False)
    _where: tuple[np.ndarray, ...] = attrs.field(default=(), init=False, repr=False)
    _obs: np.ndarray = attrs.field(default=None, init=False, repr=False)
    _weight: np.ndarray = attrs.field(default=None, init=False, repr=False)

    # ------------------------------------------------------------------ operator protocol (appa_core.obs.config)
    @classmethod
    def from_config(cls, table: Mapping[str, Any], context: ObsContext) -> list[ObsOperator]:
        """From a config table; with ``context.simulate``: the truth's fields at ``time`` + noise.

        Simulated tables give ``channels`` (e.g. ``["temperature@850"]``), optionally ``time`` (states of the
        window; default all) and ``region = {lat = [lo, hi], lon = [lo, hi]}`` (a box; ``lon`` may wrap through 0),
        and no ``data``; ``coarsen`` must be 1. Without ``simulate`` the keys are the constructor fields.
        """
        if not context.simulate:
            return super().from_config(table, context)
        params = dict(table)
        if "data" in params:
            raise ValueError("key 'data' is given, but simulate = true takes the fields from the truth; drop one")
        channels = params.get("channels")
        if not isinstance(channels, list) or not channels:
            raise ValueError(
                f"key 'channels' has value {channels!r}; list the observed channels, e.g. ['temperature@850']"
            )
        coarsen = params.get("coarsen", 1)
        if coarsen not in (1, [1, 1], (1, 1)):
            raise ValueError(f"key 'coarsen' has value {coarsen!r}; simulated fields need coarsen = 1")
        assert context.truth is not None
        window = context.times
        times = window if "time" not in params else np.asarray(params["time"]).astype("datetime64[ns]").reshape(-1)
        idx = np.searchsorted(window, times)
        bad = (idx >= window.size) | (window[np.minimum(idx, window.size - 1)] != times)
        if bad.any():
            raise ValueError(f"key 'time' has value {str(times[bad][0])!r}, which is not a state of the window")
        chan = [
            context.spec.index(*parse_channel(cls.__name__, "channels", i, c), owner=cls.__name__)
            for i, c in enumerate(channels)
        ]
        truth = torch.as_tensor(context.truth)
        data = truth[torch.as_tensor(idx)][:, torch.as_tensor(chan)].to(torch.float64).numpy()
        mask = None
        region = params.pop("region", None)
        if region is not None:
            grid = context.grid
            lat = np.asarray(region.get("lat", [-90, 90]), dtype=np.float64)
            lon = np.asarray(region.get("lon", [0, 360]), dtype=np.float64) % 360.0
            lat_ok = (grid.lat >= lat.min()) & (grid.lat <= lat.max())
            glon = grid.lon % 360.0
            lon_ok = (glon >= lon[0]) & (glon <= lon[1]) if lon[0] <= lon[1] else (glon >= lon[0]) | (glon <= lon[1])
            mask = np.broadcast_to((lat_ok[:, None] & lon_ok[None, :])[None, None], data.shape).copy()
        params.update(data=data, time=times, channels=channels, mask=mask)
        op = cls(**params)
        assert op.noise is not None
        eps = op.noise.sample((), generator=context.generator, dtype=torch.float64).numpy()
        where = np.nonzero(np.ones(data.shape, dtype=bool) if mask is None else mask)
        noisy = data.copy()
        noisy[where] += eps  # the operator's observation order is np.nonzero(mask) (C order)
        return [cls(**{**params, "data": noisy, "noise": op.noise})]

    @classmethod
    def full(cls, data: Any, spec: StateSpec, times: Any, **kwargs: Any) -> MaskedFieldOp:
        """Observe whole states: ``data`` ``[T, C, H, W]`` in ``spec``'s channel order at ``times`` ``[T]``."""
        return cls(data=data, channels=spec.channel_names(), time=times, **kwargs)

    @classmethod
    def example(cls) -> tuple[MaskedFieldOp, Grid, StateSpec, np.ndarray]:
        """A small valid, unprepared operator and the layout to prepare it on (``appa plugins check``)."""
        grid = Grid.equiangular(6, 12, poles=False)
        spec = StateSpec(surface=("2m_temperature",), atmospheric=("temperature",), levels=(500, 850))
        times = np.array(["2020-01-01T00", "2020-01-01T06"], dtype="datetime64[ns]")
        mask = np.zeros((1, 2, 3, 4), dtype=bool)
        mask[0, :, :2, 1:3] = True
        op = cls(
            data=np.full((1, 2, 3, 4), 270.0),
            channels=["2m_temperature", "temperature@850"],
            time=["2020-01-01T03"],
            mask=mask,
            coarsen=(2, 3),
        )
        return op, grid, spec, times

    # ------------------------------------------------------------------ construction
    def validate(self) -> None:
        owner = str(self.name)
        if hasattr(self.data, "dims") and (hasattr(self.data, "data_vars") or hasattr(self.data, "name")):
            data, channels, times, lat, lon = _from_xarray(owner, self.data)
            self.channels = channels if self.channels is None else self.channels
            self.time = times if self.time is None else self.time
            self.lat = lat if self.lat is None else self.lat
            self.lon = lon if self.lon is None else self.lon
            if hasattr(self.mask, "dims"):
                self.mask = _from_xarray(owner, self.mask.rename("mask").broadcast_like(self.data))[0]
        else:
            data = to_float_array(owner, "data", self.data, ndim=None)
            if data.ndim != 4:
                raise ValueError(f"{owner}: field 'data' must be [T', C', H', W'] (4-D), got shape {data.shape}")
        if data.size == 0:
            raise ValueError(f"{owner}: field 'data' is empty (shape {data.shape}); need at least one observation")
        n_t, n_c = data.shape[:2]
        if self.channels is None or isinstance(self.channels, str):
            raise ValueError(f"{owner}: field 'channels' must list {n_c} channel names, got {self.channels!r}")
        if len(self.channels) != n_c:
            raise ValueError(f"{owner}: field 'channels' has {len(self.channels)} values but field 'data' has {n_c}")
        self._parsed = [parse_channel(owner, "channels", i, c) for i, c in enumerate(self.channels)]
        if self.time is None:
            raise ValueError(f"{owner}: field 'time' is None; give the {n_t} observation times")
        time = to_datetime64(owner, "time", self.time)
        if time.size != n_t:
            raise ValueError(f"{owner}: field 'time' has {time.size} values but field 'data' has {n_t} times")
        self.time = time
        ky, kx = (self.coarsen, self.coarsen) if np.ndim(self.coarsen) == 0 else tuple(self.coarsen)  # type: ignore[misc]
        if int(ky) != ky or int(kx) != kx or ky < 1 or kx < 1:
            raise ValueError(f"{owner}: field 'coarsen' has value {self.coarsen!r}; must be positive integers")
        self.coarsen = (int(ky), int(kx))

        if self.mask is None:
            weight = np.ones(data.shape)
        elif isinstance(self.mask, str):
            if self.mask != "finite":
                raise ValueError(f"{owner}: field 'mask' has value {self.mask!r}; use None, 'finite' or an array")
            weight = np.isfinite(data).astype(np.float64)
        else:
            mask = to_float_array(owner, "mask", self.mask, ndim=None)
            try:
                weight = np.broadcast_to(mask, data.shape).astype(np.float64)
            except ValueError as exc:
                raise ValueError(
                    f"{owner}: field 'mask' has shape {mask.shape}, not broadcastable to data {data.shape}"
                ) from exc
            check_finite(owner, "mask", weight)
            if (weight < 0).any():
                i = int(np.flatnonzero(weight.reshape(-1) < 0)[0])
                raise ValueError(f"{owner}: field 'mask' has value {weight.reshape(-1)[i]} at index {i}; must be >= 0")
        where = np.nonzero(weight > 0)
        if where[0].size == 0:
            raise ValueError(f"{owner}: field 'mask' selects no entries; need at least one observation")
        obs = data[where]
        if not np.all(np.isfinite(obs)):
            k = int(np.flatnonzero(~np.isfinite(obs))[0])
            pos = tuple(int(w[k]) for w in where)
            raise ValueError(
                f"{owner}: field 'data' has value {obs[k]} at index {pos} (time, channel, lat, lon) inside the mask; "
                f"observed values must be finite (mask='finite' skips them)"
            )
        if self.error is not None:
            err = to_float_array(owner, "error", self.error, ndim=None)
            try:
                err = np.broadcast_to(err, data.shape)[where]
            except ValueError as exc:
                raise ValueError(
                    f"{owner}: field 'error' has shape {err.shape}, not broadcastable to {data.shape}"
                ) from exc
            check_positive(owner, "error", err)
            self.error = err
        self.data = data
        self._where, self._obs, self._weight = where, obs, weight[where]

    def default_noise(self) -> NoiseModel:
        if self.error is not None:
            std = np.asarray(self.error)
        else:
            per_channel = np.empty(len(self._parsed))
            for c, (var, _) in enumerate(self._parsed):
                if var not in DEFAULT_ERRORS:
                    raise ValueError(
                        f"{self.name}: field 'error' is not given and variable {var!r} has no default error; "
                        f"give 'error' or a noise model"
                    )
                per_channel[c] = DEFAULT_ERRORS[var]
            std = per_channel[self._where[1]]
        return DiagonalGaussian(std / np.sqrt(self._weight))

    @property
    def size(self) -> int:
        return int(self._obs.size)

    @property
    def values(self) -> Tensor:
        return torch.as_tensor(self._obs, dtype=torch.float64)

    # ------------------------------------------------------------------ prepare
    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
        owner = str(self.name)
        ky, kx = self.coarsen  # type: ignore[misc]
        h_obs, w_obs = self.data.shape[2:]
        if grid.nlat % ky or grid.nlon % kx or (grid.nlat // ky, grid.nlon // kx) != (h_obs, w_obs):
            raise ValueError(
                f"{owner}: field 'data' has grid shape {(h_obs, w_obs)} but the state grid {grid.shape} coarsened by "
                f"{(ky, kx)} is {(grid.nlat / ky, grid.nlon / kx)}"
            )
        if (ky, kx) == (1, 1) and self.lat is not None and self.lon is not None:
            lat = to_float_array(owner, "lat", self.lat)
            lon = np.mod(to_float_array(owner, "lon", self.lon), 360.0)
            if lat.shape != grid.lat.shape or not np.allclose(lat, grid.lat, atol=1e-6):
                raise ValueError(f"{owner}: field 'lat' ({lat[:3]}...) differs from the grid's latitudes")
            if lon.shape != grid.lon.shape or not np.allclose(lon, grid.lon, atol=1e-6):
                raise ValueError(f"{owner}: field 'lon' ({lon[:3]}...) differs from the grid's longitudes")
        channel_index = np.empty(len(self._parsed), dtype=np.int64)
        for c, (var, lev) in enumerate(self._parsed):
            if var not in spec.variables:
                raise ValueError(
                    f"{owner}: field 'channels' has value {self.channels[c]!r} at index {c}; variable {var!r} is "  # type: ignore[index]
                    f"not modelled, known variables are {list(spec.variables)}"
                )
            if lev is not None and spec.is_surface(var):
                raise ValueError(
                    f"{owner}: field 'channels' has value {self.channels[c]!r} at index {c}; {var!r} is a surface "  # type: ignore[index]
                    f"variable and takes no level"
                )
            if not spec.is_surface(var) and (lev is None or lev not in spec.levels):
                raise ValueError(
                    f"{owner}: field 'channels' has value {self.channels[c]!r} at index {c}; level {lev} of {var!r} "  # type: ignore[index]
                    f"is not modelled, levels are {list(spec.levels)} hPa"
                )
            channel_index[c] = spec.index(var, lev, owner=owner)
        i0, i1, w1 = time_interpolation(owner, self.time, times)
        t_obs, c_obs, j_obs, i_obs = self._where
        # block stencil: rows j_obs*ky + dy, columns i_obs*kx + dx, area weights normalised per block
        dy, dx = np.meshgrid(np.arange(ky), np.arange(kx), indexing="ij")
        rows = j_obs[:, None] * ky + dy.reshape(1, -1)
        cols = i_obs[:, None] * kx + dx.reshape(1, -1)
        area = grid.area_weights()[rows]
        space_w = area / area.sum(1, keepdims=True)
        A = product_stencil_matrix(
            (times.size, spec.n_channels, grid.nlat * grid.nlon),
            time=(np.stack([i0[t_obs], i1[t_obs]], 1), np.stack([1.0 - w1[t_obs], w1[t_obs]], 1)),
            channel=(channel_index[c_obs][:, None], np.ones((self.size, 1))),
            space=(rows * grid.nlon + cols, space_w),
        )
        self._set_matrix(A)

    def metadata(self) -> dict[str, np.ndarray]:
        t_obs, c_obs, j_obs, i_obs = self._where
        names = np.array([f"{v}@{lev:g}" if lev is not None else v for v, lev in self._parsed])
        return {
            "time": self.time[t_obs],
            "channel": names[c_obs],
            "row": j_obs,
            "col": i_obs,
            "weight": self._weight,
        }
