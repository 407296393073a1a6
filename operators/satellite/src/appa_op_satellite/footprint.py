r"""Footprint averaging: each footprint is a weighted mean over the grid cells it covers.

For a footprint centred at :math:`c` with radius :math:`r` (km) and a grid cell :math:`k` at great-circle
distance :math:`d_k` (spherical Earth, :math:`R` = 6371.0088 km) with area :math:`a_k`, the weight is

.. math:: w_k = \frac{K(d_k / r)\, a_k}{\sum_j K(d_j / r)\, a_j},

with the kernel

* ``"gaussian"``: :math:`K(q) = 2^{-q^2}` (half power at the radius, as a microwave beam's half-power beam
  width), truncated at :math:`q \le 2.5` (:math:`K = 0.013` there);
* ``"tophat"``: :math:`K(q) = 1` for :math:`q \le 1`.

The weights are non-negative and sum to one, so a constant field is reproduced exactly. When the footprint is
smaller than a grid cell (``r`` below the meridional grid spacing :math:`R\,\Delta\varphi`, ``method="auto"``), or
when no cell centre falls inside its support, the footprint falls back to bilinear interpolation at its centre
(:func:`appa_core.obs.interp.bilinear_weights`).

The stencil is built without a Python loop over footprints: each footprint's candidate cells (the rows within
the support's latitude band times the columns within its longitude half-width
:math:`\arcsin(\sin\rho/\cos\varphi)`, or whole rows when the support contains a pole) are enumerated by a ragged
``repeat``/``arange`` expansion, in chunks of a few million candidates to bound memory.
"""

from __future__ import annotations

import itertools
import math
from typing import Literal

import numpy as np

from appa_core.grid import Grid
from appa_core.obs.interp import bilinear_weights
from appa_op_satellite.orbit import R_EARTH_MEAN

__all__ = ["KERNELS", "FootprintStencil", "cell_size_km", "footprint_stencil"]

#: Supported kernels and their support in units of the radius.
KERNELS: dict[str, float] = {"gaussian": 2.5, "tophat": 1.0}

_CHUNK = 4_000_000  # candidate cells per chunk


class FootprintStencil:
    """A sparse horizontal averaging stencil in COO form: observation ``rows[e]`` takes ``weights[e]`` times grid
    cell ``cells[e]`` (flat index ``j * W + i`` into ``H*W``). Each row's weights sum to 1 (entries are not sorted).

    Attributes:
        rows: ``[E]`` int64 footprint index.
        cells: ``[E]`` int64 flat cell index.
        weights: ``[E]`` float64.
        size: number of footprints ``N``.
        bilinear: ``[N]`` bool, footprints that use bilinear interpolation.
    """

    def __init__(self, rows: np.ndarray, cells: np.ndarray, weights: np.ndarray, size: int, bilinear: np.ndarray):
        self.rows = rows.astype(np.int64, copy=False)
        self.cells = cells.astype(np.int64, copy=False)
        self.weights = weights.astype(np.float64, copy=False)
        self.size = int(size)
        self.bilinear = bilinear

    @property
    def nnz(self) -> int:
        return int(self.rows.size)

    def row_sums(self) -> np.ndarray:
        """``[N]`` sum of each footprint's weights (ones)."""
        return np.bincount(self.rows, weights=self.weights, minlength=self.size)

    def apply(self, field: np.ndarray) -> np.ndarray:
        """Footprint means of a field ``[..., H, W]`` -> ``[..., N]`` (numpy, for checks)."""
        flat = field.reshape(*field.shape[:-2], -1)
        out = np.zeros((*flat.shape[:-1], self.size))
        np.add.at(out, (..., self.rows), flat[..., self.cells] * self.weights)
        return out


def cell_size_km(grid: Grid) -> float:
    """Largest meridional spacing of the grid, km (the threshold below which footprints are interpolated)."""
    return R_EARTH_MEAN * math.radians(float(np.abs(np.diff(grid.lat)).max()))


def _bilinear(grid: Grid, lat: np.ndarray, lon: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, ...]:
    idx, w = bilinear_weights(grid, lat[ids], lon[ids])
    return np.repeat(ids, idx.shape[1]), idx.reshape(-1), w.reshape(-1)


def _kernel_chunk(
    grid: Grid,
    lat: np.ndarray,
    lon: np.ndarray,
    radius: np.ndarray,
    ids: np.ndarray,
    kernel: str,
    area: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kernel weights for footprints ``ids`` (unnormalised), as COO (footprint id, cell, weight)."""
    W = grid.nlon
    phi, lam, r = lat[ids], lon[ids], radius[ids]
    rho = KERNELS[kernel] * r / R_EARTH_MEAN  # support, radians
    rho_deg = np.degrees(rho)
    neg_lat = -grid.lat  # ascending
    j_lo = np.searchsorted(neg_lat, -(phi + rho_deg), side="left")
    j_hi = np.searchsorted(neg_lat, -(phi - rho_deg), side="right") - 1
    n_rows = np.maximum(j_hi - j_lo + 1, 0)
    polar = np.abs(phi) + rho_deg >= 90.0
    cos_phi = np.cos(np.radians(phi))
    ratio = np.where(polar, 1.0, np.sin(rho) / np.maximum(cos_phi, 1e-300))
    half = np.degrees(np.arcsin(np.clip(ratio, 0.0, 1.0)))
    dlon, lon0 = grid.dlon, float(grid.lon[0])
    i_start = np.ceil((lam - half - lon0) / dlon - 1e-12).astype(np.int64)
    i_end = np.floor((lam + half - lon0) / dlon + 1e-12).astype(np.int64)
    n_cols = np.minimum(i_end - i_start + 1, W)
    full = polar | (n_cols >= W)
    n_cols = np.where(full, W, np.maximum(n_cols, 0))
    i_start = np.where(full, 0, i_start)

    counts = n_rows * n_cols
    total = int(counts.sum())
    local = np.repeat(np.arange(ids.size), counts)
    k = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    nc = n_cols[local]
    j = j_lo[local] + k // nc
    i = np.mod(i_start[local] + k % nc, W)

    # great-circle distance by the haversine formula: hav = sin^2(dphi/2) + cos(phi1) cos(phi2) sin^2(dlam/2)
    half_lat = np.radians(0.5 * grid.lat)
    half_lon = np.radians(0.5 * grid.lon)
    hav = np.sin(half_lat[j] - np.radians(0.5 * phi)[local]) ** 2
    hav += (cos_phi[local] * np.cos(np.radians(grid.lat))[j]) * np.sin(half_lon[i] - np.radians(0.5 * lam)[local]) ** 2
    # keep cells inside the support (compare haversines, no arcsin needed for the test)
    keep = hav <= np.sin(0.5 * rho * (1 + 1e-12))[local] ** 2
    hav, local, j, i = hav[keep], local[keep], j[keep], i[keep]
    q = 2.0 * np.arcsin(np.sqrt(np.clip(hav, 0.0, 1.0))) * R_EARTH_MEAN / r[local]
    kern = np.exp2(-(q**2)) if kernel == "gaussian" else np.ones_like(q)
    return ids[local], j * W + i, kern * area[j]


def footprint_stencil(
    grid: Grid,
    lat: np.ndarray,
    lon: np.ndarray,
    radius_km: np.ndarray | None,
    kernel: Literal["gaussian", "tophat"] = "gaussian",
    method: Literal["auto", "kernel", "bilinear"] = "auto",
) -> FootprintStencil:
    """Footprint-averaging stencil for ``N`` footprints.

    Args:
        grid: the state grid.
        lat, lon: footprint centres ``[N]``, degrees (lon in [-180, 360]).
        radius_km: footprint radii ``[N]`` km, or ``None`` for point observations (bilinear).
        kernel: ``"gaussian"`` or ``"tophat"`` (see the module docstring).
        method: ``"auto"`` (kernel if the radius is at least the grid spacing, else bilinear), ``"kernel"``
            (always the kernel, bilinear only when no cell centre is inside the support) or ``"bilinear"``.

    Returns:
        the :class:`FootprintStencil`.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.mod(np.asarray(lon, dtype=np.float64), 360.0)
    n = lat.size
    if radius_km is None or method == "bilinear":
        use_kernel = np.zeros(n, dtype=bool)
        radius = np.zeros(n)
    else:
        radius = np.broadcast_to(np.asarray(radius_km, dtype=np.float64), (n,))
        use_kernel = np.ones(n, dtype=bool) if method == "kernel" else radius >= cell_size_km(grid)

    rows, cells, weights = [np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0)]
    bilinear = ~use_kernel
    kid = np.flatnonzero(use_kernel)
    if kid.size:
        area = grid.area_weights()
        # rough candidate count per footprint to size the chunks (box of the support in cells)
        rho_deg = np.degrees(KERNELS[kernel] * radius[kid] / R_EARTH_MEAN)
        dlat = float(np.abs(np.diff(grid.lat)).min())
        cos_phi = np.maximum(np.cos(np.radians(np.minimum(np.abs(lat[kid]) + rho_deg, 90.0))), 1e-3)
        est = (2 * rho_deg / dlat + 2) * np.minimum(2 * rho_deg / (grid.dlon * cos_phi) + 2, grid.nlon)
        chunk_id = ((np.cumsum(est) - est) // _CHUNK).astype(np.int64)
        starts = np.concatenate([[0], np.flatnonzero(np.diff(chunk_id)) + 1, [kid.size]])
        for a, b in itertools.pairwise(starts):  # chunks of footprints, not single footprints
            r_, c_, w_ = _kernel_chunk(grid, lat, lon, radius, kid[a:b], kernel, area)
            rows.append(r_)
            cells.append(c_)
            weights.append(w_)
        r_all, w_all = np.concatenate(rows), np.concatenate(weights)
        sums = np.bincount(r_all, weights=w_all, minlength=n)
        empty = use_kernel & (sums <= 0)
        bilinear = bilinear | empty
        weights = [w_all / np.where(sums > 0, sums, 1.0)[r_all]]
        rows, cells = [r_all], [np.concatenate(cells)]
    bid = np.flatnonzero(bilinear)
    if bid.size:
        r_, c_, w_ = _bilinear(grid, lat, lon, bid)
        rows.append(r_)
        cells.append(c_)
        weights.append(w_)
    rows_a, cells_a, w_a = np.concatenate(rows), np.concatenate(cells), np.concatenate(weights)
    nz = w_a != 0
    return FootprintStencil(rows_a[nz], cells_a[nz], w_a[nz], n, bilinear)
