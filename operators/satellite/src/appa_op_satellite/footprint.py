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

The stencil is built without a Python loop over footprints, directly in CSR form (entries grouped by footprint,
in footprint order). For each footprint and each grid row within the support's latitude band, the cells inside
the support form one run of columns, :math:`|\lambda - \lambda_c| \le \Delta\lambda` with
:math:`\sin^2\frac{\Delta\lambda}{2} = (\mathrm{hav}(\rho) - \sin^2\frac{\varphi - \varphi_c}{2}) /
(\cos\varphi \cos\varphi_c)` (the whole row when the support contains the pole), so only the cells inside
are enumerated (a ragged ``repeat``/``arange`` expansion over (footprint, row) runs, in chunks of a few million
cells to bound memory); per cell only the longitude term of the haversine is computed, from per-column sines
and cosines (no transcendental function but the kernel's).
"""

from __future__ import annotations

import functools
import itertools
import math
from typing import Literal

import numpy as np
import scipy.sparse as sp

from appa_core.grid import Grid
from appa_core.obs.interp import bilinear_weights
from appa_op_satellite.orbit import R_EARTH_MEAN

__all__ = ["KERNELS", "FootprintStencil", "cell_size_km", "concat_stencils", "footprint_stencil"]

#: Supported kernels and their support in units of the radius.
KERNELS: dict[str, float] = {"gaussian": 2.5, "tophat": 1.0}

_CHUNK = 1_000_000  # cells per chunk (temporaries stay below malloc's mmap threshold, so memory is reused)


class FootprintStencil:
    """A sparse horizontal averaging stencil in CSR form: footprint ``n`` takes ``weights[e]`` times grid cell
    ``cells[e]`` (flat index ``j * W + i`` into ``H*W``) for ``e`` in ``indptr[n]:indptr[n + 1]``. Each row's
    weights sum to 1.

    Attributes:
        indptr: ``[N + 1]`` row pointers (int32, or int64 for more than 2^31 entries).
        cells: ``[E]`` flat cell index (same integer type as ``indptr``); cells of one row are distinct (unsorted).
        weights: ``[E]`` float64.
        size: number of footprints ``N``.
        bilinear: ``[N]`` bool, footprints that use bilinear interpolation.
    """

    def __init__(self, indptr: np.ndarray, cells: np.ndarray, weights: np.ndarray, size: int, bilinear: np.ndarray):
        self.indptr = np.asarray(indptr)
        self.cells = np.asarray(cells)
        self.weights = weights.astype(np.float64, copy=False)
        self.size = int(size)
        self.bilinear = bilinear

    @classmethod
    def from_coo(
        cls, rows: np.ndarray, cells: np.ndarray, weights: np.ndarray, size: int, bilinear: np.ndarray
    ) -> FootprintStencil:
        """A stencil from COO entries (``rows [E]`` footprint index, any order): the constructor of appa-op-satellite
        0.1, whose first argument was ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=int(size)))])
        return cls(indptr, np.asarray(cells)[order], np.asarray(weights, dtype=np.float64)[order], size, bilinear)

    @functools.cached_property
    def rows(self) -> np.ndarray:
        """``[E]`` int64 footprint index of each entry."""
        return np.repeat(np.arange(self.size, dtype=np.int64), np.diff(self.indptr))

    @property
    def nnz(self) -> int:
        return int(self.cells.size)

    def matrix(self, n_cells: int) -> sp.csr_array:
        """The stencil as a scipy CSR matrix ``[N, H*W]`` (shares the arrays)."""
        return sp.csr_array((self.weights, self.cells, self.indptr), shape=(self.size, n_cells), copy=False)

    def row_sums(self) -> np.ndarray:
        """``[N]`` sum of each footprint's weights (ones)."""
        return np.add.reduceat(self.weights, self.indptr[:-1]) if self.nnz else np.zeros(self.size)

    def apply(self, field: np.ndarray) -> np.ndarray:
        """Footprint means of a field ``[..., H, W]`` -> ``[..., N]`` (numpy, for checks)."""
        flat = field.reshape(*field.shape[:-2], -1)
        out = np.zeros((*flat.shape[:-1], self.size))
        np.add.at(out, (..., self.rows), flat[..., self.cells] * self.weights)
        return out


def concat_stencils(stencils: list[FootprintStencil], order: np.ndarray | None = None) -> FootprintStencil:
    """The stencils of consecutive footprint groups as one; ``order`` ``[N]``: footprint ``order[m]`` is the
    ``m``-th of the concatenation (``None``: already in footprint order)."""
    counts = np.concatenate([np.diff(s.indptr) for s in stencils])
    cells = np.concatenate([s.cells for s in stencils])
    weights = np.concatenate([s.weights for s in stencils])
    bilinear = np.concatenate([s.bilinear for s in stencils])
    if order is not None:
        inverse = np.argsort(order)
        starts = np.cumsum(counts) - counts
        _, rank = _ragged(counts[inverse])
        take = np.repeat(starts[inverse], counts[inverse]) + rank
        counts, cells, weights, bilinear = counts[inverse], cells[take], weights[take], bilinear[inverse]
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(cells.dtype)
    return FootprintStencil(indptr, cells, weights, int(counts.size), bilinear)


def cell_size_km(grid: Grid) -> float:
    """Largest meridional spacing of the grid, km (the threshold below which footprints are interpolated)."""
    return R_EARTH_MEAN * math.radians(float(np.abs(np.diff(grid.lat)).max()))


def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(owner, rank)`` of a ragged expansion: item ``e`` belongs to run ``owner[e]`` at position ``rank[e]``."""
    total = int(counts.sum())
    owner = np.repeat(np.arange(counts.size), counts)
    rank = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)
    return owner, rank


class _Runs:
    """The runs of cells inside the supports of kernel footprints: one run per (footprint, grid row), ``[P]`` each.

    Attributes: ``fp`` (position in the footprint list, non-decreasing), ``row`` (grid row ``j``), ``hav_lat``
    (:math:`\\sin^2\frac{\varphi_j - \varphi_c}{2}`), ``coscos`` (:math:`\\cos\varphi_j\\cos\varphi_c`),
    ``start`` (first column, may be negative: columns wrap), ``count`` (cells in the run).
    """

    def __init__(self, grid: Grid, phi: np.ndarray, lam: np.ndarray, radius: np.ndarray, kernel: str) -> None:
        W = grid.nlon
        rho = KERNELS[kernel] * radius / R_EARTH_MEAN  # support, radians
        hav_max = np.sin(0.5 * rho * (1 + 1e-12)) ** 2
        rho_deg = np.degrees(rho)
        neg_lat = -grid.lat  # ascending
        j_lo = np.searchsorted(neg_lat, -(phi + rho_deg), side="left")
        j_hi = np.searchsorted(neg_lat, -(phi - rho_deg), side="right") - 1
        fp, k = _ragged(np.maximum(j_hi - j_lo + 1, 0))
        j = j_lo[fp] + k
        row_lat = np.radians(grid.lat)[j]
        phi_r = np.radians(phi)[fp]
        hav_lat = np.sin(0.5 * (row_lat - phi_r)) ** 2
        coscos = np.cos(row_lat) * np.cos(phi_r)
        room = hav_max[fp] - hav_lat
        with np.errstate(divide="ignore", invalid="ignore"):
            s = np.where(coscos > 1e-300, room / coscos, np.where(room >= 0, np.inf, -1.0))
        inside = room >= 0
        full = inside & (s >= 1.0)  # the support contains the pole: the whole row
        half = np.degrees(2.0 * np.arcsin(np.sqrt(np.clip(s, 0.0, 1.0)))) / grid.dlon  # half-width, columns
        centre = (lam[fp] - float(grid.lon[0])) / grid.dlon
        start = np.ceil(centre - half).astype(np.int64)
        count = np.where(inside, np.floor(centre + half).astype(np.int64) - start + 1, 0)
        full |= count >= W
        self.count = np.where(full, W, np.maximum(count, 0))
        self.start = np.where(full, 0, start)
        self.fp, self.row, self.hav_lat, self.coscos = fp, j, hav_lat, coscos


def _kernel_cells(
    grid: Grid,
    runs: _Runs,
    sel: slice,
    lam: np.ndarray,
    radius: np.ndarray,
    kernel: str,
    area: np.ndarray,
    lon_tables: tuple[np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The cells of runs ``sel`` (whole footprints): ``(run [E] within sel, position in the run [E], cells [E],
    normalised weights [E])``."""
    W = grid.nlon
    fp, j, count = runs.fp[sel], runs.row[sel], runs.count[sel]
    run, pos = _ragged(count)
    i = runs.start[sel][run] + pos
    i = np.where(i < 0, i + W, np.where(i >= W, i - W, i))
    # the haversine's longitude term from per-column tables: sin((l - lc)/2) = sin(l/2) cos(lc/2) - ...
    sin_l, cos_l = lon_tables
    lam_r = 0.5 * np.radians(lam)[fp]
    half_dl = sin_l[i] * np.cos(lam_r)[run] - cos_l[i] * np.sin(lam_r)[run]
    area_run = area[j]
    if kernel == "gaussian":
        hav = runs.hav_lat[sel][run] + runs.coscos[sel][run] * (half_dl * half_dl)
        scale = (2.0 * R_EARTH_MEAN) / radius[fp]
        q = np.arcsin(np.sqrt(np.clip(hav, 0.0, 1.0))) * scale[run]
        w = np.exp2(-(q * q)) * area_run[run]
    else:
        w = area_run[run]
    local = fp - fp[0]
    owner = local[run]
    sums = np.bincount(owner, weights=w, minlength=int(local[-1]) + 1)
    w /= np.where(sums > 0, sums, 1.0)[owner]
    return run, pos, j[run] * W + i, w


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

    # 1. how many cells each footprint takes (runs of kernel footprints; bilinear stencils), then the CSR layout
    counts = np.zeros(n, dtype=np.int64)
    kid = np.flatnonzero(use_kernel)
    runs = None
    if kid.size:
        runs = _Runs(grid, lat[kid], lon[kid], radius[kid], kernel)
        counts[kid] = np.bincount(runs.fp, weights=runs.count, minlength=kid.size).astype(np.int64)
    empty = use_kernel & (counts == 0)  # no cell centre inside the support
    bilinear = ~use_kernel | empty
    bid = np.flatnonzero(bilinear)
    if bid.size:
        b_idx, b_w = bilinear_weights(grid, lat[bid], lon[bid])
        keep = b_w != 0
        counts[bid] = keep.sum(1)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    nnz = int(indptr[-1])
    index_dtype = np.int32 if max(nnz, grid.nlat * grid.nlon) < 2**31 - 1 else np.int64
    cells = np.empty(nnz, dtype=index_dtype)
    weights = np.empty(nnz)

    # 2. fill it: bilinear rows, then the kernel rows chunk by chunk (whole footprints per chunk)
    if bid.size:
        _, rank = _ragged(counts[bid])
        dest = np.repeat(indptr[bid], counts[bid]) + rank
        cells[dest] = b_idx[keep]
        weights[dest] = b_w[keep]
    if runs is not None:
        kept = counts[kid] > 0
        run_offset = np.cumsum(runs.count) - runs.count  # exclusive, over all runs
        first_run = np.searchsorted(runs.fp, np.arange(kid.size))
        run_dest = indptr[kid][runs.fp] + run_offset - run_offset[np.minimum(first_run, runs.fp.size - 1)][runs.fp]
        ck = np.where(kept, counts[kid], 0)
        chunk_id = (np.cumsum(ck) - ck) // _CHUNK
        fp_bounds = np.concatenate([[0], np.flatnonzero(np.diff(chunk_id)) + 1, [kid.size]])
        run_bounds = np.searchsorted(runs.fp, fp_bounds)
        area = grid.area_weights()
        half_lon = 0.5 * np.radians(grid.lon)
        tables = (np.sin(half_lon), np.cos(half_lon))
        lam_k, rad_k = lon[kid], radius[kid]
        for a, b in itertools.pairwise(run_bounds.tolist()):  # chunks of footprints, not single footprints
            if b <= a:
                continue
            sel = slice(a, b)
            run, pos, cells_, w_ = _kernel_cells(grid, runs, sel, lam_k, rad_k, kernel, area, tables)
            lo = int(run_dest[a])
            if int(run_dest[b - 1] + runs.count[b - 1]) - lo == w_.size:  # contiguous in the CSR arrays
                cells[lo : lo + w_.size] = cells_
                weights[lo : lo + w_.size] = w_
            else:
                dest = run_dest[sel][run] + pos
                cells[dest] = cells_
                weights[dest] = w_
    return FootprintStencil(indptr.astype(index_dtype), cells, weights, n, bilinear)
