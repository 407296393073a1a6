r"""Equiangular latitude-longitude grids.

Latitudes are **descending** (north to south, as in ERA5) and longitudes ascending in [0, 360), both in
degrees. ``Grid.equiangular(nlat, nlon, poles=True)`` gives the ERA5 / WeatherBench2 ``with_poles`` layout
(first row at +90); ``poles=False`` gives the ``without_poles`` layout (cell centres at +/- (90 - dlat/2)).

Cell areas are proportional to :math:`\sin\varphi_{n} - \sin\varphi_{s}` between the cell's latitude bounds
(bounds are the midpoints between centres, clipped to +/- 90), which for pole rows is the polar cap of half a
cell.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from torch import Tensor

__all__ = ["Grid"]


def _as_array(values: object) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    array.setflags(write=False)
    return array


@attrs.frozen(eq=False)
class Grid:
    """A regular latitude-longitude grid.

    Attributes:
        lat: latitudes of cell centres in degrees north, shape ``[H]``, strictly descending, within [-90, 90].
        lon: longitudes of cell centres in degrees east, shape ``[W]``, strictly ascending, within [0, 360),
            evenly spaced around the whole circle.
    """

    lat: np.ndarray = attrs.field(converter=_as_array)
    lon: np.ndarray = attrs.field(converter=_as_array)

    def __attrs_post_init__(self) -> None:
        lat, lon = self.lat, self.lon
        if lat.ndim != 1 or lat.size < 2:
            raise ValueError(f"Grid: field 'lat' must be 1-D with at least 2 values, got shape {lat.shape}")
        if lon.ndim != 1 or lon.size < 2:
            raise ValueError(f"Grid: field 'lon' must be 1-D with at least 2 values, got shape {lon.shape}")
        if not np.all(np.isfinite(lat)) or np.abs(lat).max() > 90:
            bad = lat[~np.isfinite(lat) | (np.abs(lat) > 90)][0]
            raise ValueError(f"Grid: field 'lat' has value {bad} outside [-90, 90]")
        if np.any(np.diff(lat) >= 0):
            raise ValueError("Grid: field 'lat' must be strictly descending (north to south, as ERA5)")
        if np.any(lon < 0) or np.any(lon >= 360) or not np.all(np.isfinite(lon)):
            bad = lon[(lon < 0) | (lon >= 360) | ~np.isfinite(lon)][0]
            raise ValueError(f"Grid: field 'lon' has value {bad} outside [0, 360)")
        dlon = np.diff(lon)
        if np.any(dlon <= 0) or not np.allclose(dlon, 360.0 / lon.size, atol=1e-6):
            raise ValueError(
                f"Grid: field 'lon' must be {lon.size} evenly spaced ascending values covering [0, 360), "
                f"got spacing {dlon.min()}..{dlon.max()}"
            )

    @classmethod
    def equiangular(cls, nlat: int, nlon: int, poles: bool = True, lon0: float = 0.0) -> Grid:
        """The WeatherBench2 equiangular grid: ``nlat`` latitudes from north to south, ``nlon`` longitudes.

        ``poles=True``: latitudes ``90, ..., -90`` (spacing ``180/(nlat-1)``); ``poles=False``: cell centres
        ``90 - dlat/2, ..., -90 + dlat/2`` with ``dlat = 180/nlat``.
        """
        if nlat < 2 or nlon < 2:
            raise ValueError(f"Grid.equiangular: need nlat >= 2 and nlon >= 2, got nlat={nlat}, nlon={nlon}")
        if poles:
            lat = np.linspace(90.0, -90.0, nlat)
        else:
            d = 180.0 / nlat
            lat = np.linspace(90.0 - d / 2, -90.0 + d / 2, nlat)
        lon = (lon0 + np.arange(nlon) * 360.0 / nlon) % 360.0
        return cls(lat=lat, lon=np.sort(lon))

    @property
    def shape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return (self.lat.size, self.lon.size)

    @property
    def nlat(self) -> int:
        return self.lat.size

    @property
    def nlon(self) -> int:
        return self.lon.size

    @property
    def dlon(self) -> float:
        """Longitude spacing in degrees."""
        return 360.0 / self.lon.size

    @property
    def has_poles(self) -> bool:
        return bool(np.isclose(self.lat[0], 90.0) and np.isclose(self.lat[-1], -90.0))

    def lat_bounds(self) -> np.ndarray:
        """Cell boundaries in latitude, ``[H + 1]``, descending, from 90 to -90."""
        mid = 0.5 * (self.lat[1:] + self.lat[:-1])
        return np.concatenate([[90.0], mid, [-90.0]])

    def area_weights(self) -> np.ndarray:
        """Relative cell areas per latitude row, ``[H]``, normalised to mean 1 over the rows.

        Multiply by a field ``[..., H, W]`` and average over ``(H, W)`` to get an area-weighted global mean.
        """
        b = np.deg2rad(self.lat_bounds())
        w = np.sin(b[:-1]) - np.sin(b[1:])
        return w / w.mean()

    def area_weights_tensor(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> Tensor:
        """:meth:`area_weights` as a tensor of shape ``[H, 1]`` ready to broadcast over ``[..., H, W]``."""
        return torch.as_tensor(self.area_weights(), dtype=dtype, device=device)[:, None]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Grid):
            return NotImplemented
        return self.shape == other.shape and np.allclose(self.lat, other.lat) and np.allclose(self.lon, other.lon)

    def __hash__(self) -> int:
        return hash((self.shape, float(self.lat[0]), float(self.lon[0])))

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-serialisable form."""
        return {"lat": self.lat.tolist(), "lon": self.lon.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> Grid:
        return cls(lat=data["lat"], lon=data["lon"])
