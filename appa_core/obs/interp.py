r"""Horizontal interpolation on the sphere, shared by every observation-operator family.

All functions return the same sparse stencil: for ``M`` points, ``idx`` ``[M, 4]`` int64 flat indices into a field
of shape ``[H, W]`` (``idx = j * W + i``) and ``w`` ``[M, 4]`` float64 weights summing to 1, so that the value at
the points is ``(field.reshape(..., H*W)[..., idx] * w).sum(-1)``. Unused stencil slots carry weight 0 (and a
valid index).

**Longitude** is periodic: with :math:`\lambda_0` the grid's first longitude and :math:`\Delta\lambda = 360/W`,
:math:`t = ((\lambda - \lambda_0) \bmod 360)/\Delta\lambda`, :math:`i_0 = \lfloor t \rfloor`,
:math:`i_1 = (i_0 + 1) \bmod W`, :math:`w_\lambda = t - i_0`. Points may be given in [-180, 360]; the dateline and
the 0/360 seam need no special case.

**Latitude** may be any strictly descending array (equiangular, Gaussian, irregular). A point between rows
:math:`j` (north) and :math:`j + 1` (south) gets :math:`w_\varphi = (\varphi_j - \varphi)/(\varphi_j -
\varphi_{j+1})` and the bilinear value

.. math:: f = (1-w_\varphi)[(1-w_\lambda) f_{j,i_0} + w_\lambda f_{j,i_1}]
              + w_\varphi[(1-w_\lambda) f_{j+1,i_0} + w_\lambda f_{j+1,i_1}].

**Poles.** On a grid whose first (last) row is the pole (:math:`\pm 90`) the formula above is exact there: every
point of a pole row is the same physical point. On a grid *without* pole rows, a point poleward of the first row
:math:`\varphi_0` is interpolated **across the pole** along its meridian great circle: that circle meets the first
row at :math:`\lambda` and at :math:`\lambda + 180`, which are :math:`2(90 - \varphi_0)` degrees apart through
the pole, so

.. math:: f(\varphi, \lambda) = (1 - s)\, f(\varphi_0, \lambda) + s\, f(\varphi_0, \lambda + 180),
          \qquad s = \frac{\varphi - \varphi_0}{2 (90 - \varphi_0)} \in [0, \tfrac12],

each row value being interpolated linearly in longitude (likewise past the last row at the south pole). This is
linear interpolation along a great circle, so its error is :math:`O(\Delta\varphi^2)` like the interior's, and it
is continuous with the interior at :math:`\varphi_0`. At the pole itself (:math:`s = 1/2`) the value is the mean of
two opposite first-row values; it still depends on :math:`\lambda` by :math:`O(\Delta\varphi^2)` for smooth
fields (a smooth field's value at the pole is only known to interpolation accuracy anyway).

**Nearest neighbour** picks, among the (up to four) stencil points above, the one at the smallest great-circle
distance (chordal distance between unit vectors): for latitude spacing at least about the longitude spacing times
the cosine of the latitude (every equiangular grid) this is the nearest grid point.

Shapes: ``lat``, ``lon`` ``[M]`` degrees; grid fields ``[..., H, W]``. Everything is vectorised numpy (no loop
over points); :func:`interp_matrix` builds the ``[M, H*W]`` scipy CSR matrix and :func:`apply_weights` applies a
stencil to a torch tensor (differentiable, batched).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.obs.validate import check_lat, check_lon, check_same_length, to_float_array

__all__ = ["apply_weights", "bilinear_weights", "interp_matrix", "nearest_weights", "product_stencil_matrix"]


def _check_points(owner: str, grid: Grid, lat: object, lon: object) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(grid, Grid):
        raise TypeError(f"{owner}: field 'grid' must be an appa_core.grid.Grid, got {type(grid).__name__}")
    lat_a = np.atleast_1d(to_float_array(owner, "lat", lat, ndim=None))
    lon_a = np.atleast_1d(to_float_array(owner, "lon", lon, ndim=None))
    if lat_a.ndim != 1 or lon_a.ndim != 1:
        raise ValueError(f"{owner}: fields 'lat' and 'lon' must be 1-D, got shapes {lat_a.shape} and {lon_a.shape}")
    check_same_length(owner, lat=lat_a, lon=lon_a)
    check_lat(owner, lat_a)
    check_lon(owner, lon_a)
    return lat_a, lon_a


def _lon_stencil(grid: Grid, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(i0, i1, w1)`` ``[M]``: the longitude neighbours of each point and the weight of ``i1``."""
    nlon = grid.nlon
    t = np.mod(lon - grid.lon[0], 360.0) / grid.dlon
    f = np.floor(t)
    w1 = t - f
    i0 = f.astype(np.int64) % nlon  # t may round to exactly nlon for tiny negative offsets
    i1 = (i0 + 1) % nlon
    return i0, i1, w1


def _lat_stencil(grid: Grid, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(j, w_south, north_cap, south_cap, s_cap)`` ``[M]``.

    ``j`` is the northern row of the bracketing pair (``j + 1`` the southern one), ``w_south`` the weight of row
    ``j + 1``. ``north_cap`` / ``south_cap`` flag points poleward of the first / last row (grids without pole
    rows); for those ``s_cap`` is the across-pole weight of the opposite meridian.
    """
    rows = grid.lat
    asc = -rows  # ascending copy: searchsorted needs ascending values
    x = -lat
    j = np.clip(np.searchsorted(asc, x, side="right") - 1, 0, rows.size - 2)
    w_south = np.clip((rows[j] - lat) / (rows[j] - rows[j + 1]), 0.0, 1.0)
    north_cap = lat > rows[0]
    south_cap = lat < rows[-1]
    s_cap = np.zeros_like(lat)
    if north_cap.any():
        s_cap[north_cap] = (lat[north_cap] - rows[0]) / (2.0 * (90.0 - rows[0]))
    if south_cap.any():
        s_cap[south_cap] = (rows[-1] - lat[south_cap]) / (2.0 * (90.0 + rows[-1]))
    return j, w_south, north_cap, south_cap, s_cap


def bilinear_weights(grid: Grid, lat: object, lon: object) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear interpolation stencil on the sphere (see the module docstring for the formulas and the poles).

    Args:
        grid: the state grid (descending latitudes, periodic longitudes).
        lat: point latitudes ``[M]`` in degrees, within [-90, 90].
        lon: point longitudes ``[M]`` in degrees, within [-180, 360].

    Returns:
        ``(idx, w)``: ``idx`` ``[M, 4]`` int64 flat indices into ``H*W``, ``w`` ``[M, 4]`` float64, rows summing to 1.
    """
    lat_a, lon_a = _check_points("bilinear_weights", grid, lat, lon)
    nlon = grid.nlon
    i0, i1, wl = _lon_stencil(grid, lon_a)
    j, wp, north_cap, south_cap, s_cap = _lat_stencil(grid, lat_a)

    idx = np.stack([j * nlon + i0, j * nlon + i1, (j + 1) * nlon + i0, (j + 1) * nlon + i1], axis=1)
    w = np.stack([(1 - wp) * (1 - wl), (1 - wp) * wl, wp * (1 - wl), wp * wl], axis=1)

    cap = north_cap | south_cap
    if cap.any():
        # across-pole: the point's meridian row values and the opposite meridian's, both on the edge row
        row = np.where(north_cap[cap], 0, grid.nlat - 1)
        k0, k1, kl = i0[cap], i1[cap], wl[cap]
        o0, o1, ol = _lon_stencil(grid, lon_a[cap] + 180.0)
        s = s_cap[cap]
        idx[cap] = np.stack([row * nlon + k0, row * nlon + k1, row * nlon + o0, row * nlon + o1], axis=1)
        w[cap] = np.stack([(1 - s) * (1 - kl), (1 - s) * kl, s * (1 - ol), s * ol], axis=1)
    return idx.astype(np.int64), w


def nearest_weights(grid: Grid, lat: object, lon: object) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-grid-point stencil, same return as :func:`bilinear_weights` (one weight 1, the others 0).

    The nearest point is chosen by great-circle distance among the bilinear stencil's points.
    """
    lat_a, lon_a = _check_points("nearest_weights", grid, lat, lon)
    idx, _ = bilinear_weights(grid, lat_a, lon_a)
    jj, ii = np.divmod(idx, grid.nlon)
    glat = np.deg2rad(grid.lat[jj])
    glon = np.deg2rad(grid.lon[ii])
    plat = np.deg2rad(lat_a)[:, None]
    plon = np.deg2rad(lon_a)[:, None]
    # squared chordal distance between unit vectors, monotone in the great-circle distance
    d2 = (
        (np.cos(glat) * np.cos(glon) - np.cos(plat) * np.cos(plon)) ** 2
        + (np.cos(glat) * np.sin(glon) - np.cos(plat) * np.sin(plon)) ** 2
        + (np.sin(glat) - np.sin(plat)) ** 2
    )
    best = np.argmin(d2, axis=1)
    w = np.zeros(idx.shape, dtype=np.float64)
    w[np.arange(idx.shape[0]), best] = 1.0
    return idx, w


def interp_matrix(grid: Grid, lat: object, lon: object, method: str = "bilinear") -> sp.csr_array:
    """The interpolation as a sparse matrix ``[M, H*W]`` acting on ``field.reshape(H*W)``.

    Args:
        method: ``"bilinear"`` or ``"nearest"``.
    """
    if method == "bilinear":
        idx, w = bilinear_weights(grid, lat, lon)
    elif method == "nearest":
        idx, w = nearest_weights(grid, lat, lon)
    else:
        raise ValueError(f"interp_matrix: field 'method' has value {method!r}; use 'bilinear' or 'nearest'")
    m = idx.shape[0]
    rows = np.repeat(np.arange(m, dtype=np.int64), idx.shape[1])
    A = sp.csr_array((w.reshape(-1), (rows, idx.reshape(-1))), shape=(m, grid.nlat * grid.nlon))
    A.sum_duplicates()
    A.eliminate_zeros()
    return A


def apply_weights(field: Tensor, idx: np.ndarray | Tensor, w: np.ndarray | Tensor) -> Tensor:
    """Apply a stencil to a field: ``field`` ``[..., H, W]`` -> ``[..., M]`` (differentiable, batched)."""
    flat = field.reshape(*field.shape[:-2], -1)
    idx_t = torch.as_tensor(idx, dtype=torch.int64, device=field.device)
    w_t = torch.as_tensor(w, dtype=field.dtype, device=field.device)
    return (flat[..., idx_t] * w_t).sum(-1)


def product_stencil_matrix(
    shape: tuple[int, int, int],
    time: tuple[np.ndarray, np.ndarray],
    channel: tuple[np.ndarray, np.ndarray],
    space: tuple[np.ndarray, np.ndarray],
) -> sp.csr_array:
    r"""The sparse matrix ``[M, T*C*H*W]`` of a separable space-time-channel stencil.

    Observation ``m`` is :math:`\sum_{a,b,c} w^t_{ma} w^c_{mb} w^s_{mc}\, x[i^t_{ma}, i^c_{mb}, i^s_{mc}]` with
    ``x`` one member's state ``[T, C, H*W]`` (flattened as ``x[b].reshape(-1)``). Zero weights are dropped and
    duplicate entries summed.

    Args:
        shape: ``(T, C, H*W)``.
        time: ``(i [M, Kt] int, w [M, Kt])`` time indices and weights (e.g. from ``time_interpolation``).
        channel: ``(i [M, Kc] int, w [M, Kc])`` channel indices and weights (e.g. two levels in log-pressure).
        space: ``(i [M, Ks] int, w [M, Ks])`` flat horizontal indices and weights (e.g. :func:`bilinear_weights`).
    """
    n_t, n_c, n_s = shape
    it, wt = (np.asarray(a) for a in time)
    ic, wc = (np.asarray(a) for a in channel)
    isp, wsp = (np.asarray(a) for a in space)
    it, wt, ic, wc, isp, wsp = (a.reshape(a.shape[0], -1) for a in (it, wt, ic, wc, isp, wsp))
    m = isp.shape[0]
    if not it.shape[0] == ic.shape[0] == m:
        raise ValueError(
            f"product_stencil_matrix: stencils have {it.shape[0]}, {ic.shape[0]}, {m} rows; they must match"
        )
    cols = (
        it[:, :, None, None].astype(np.int64) * (n_c * n_s)
        + ic[:, None, :, None].astype(np.int64) * n_s
        + isp[:, None, None, :].astype(np.int64)
    )
    data = wt[:, :, None, None] * wc[:, None, :, None] * wsp[:, None, None, :]
    k = cols.shape[1] * cols.shape[2] * cols.shape[3]
    indptr = np.arange(0, m * k + 1, k, dtype=np.int64)
    # rows have exactly k entries each: build CSR directly (no COO sort), then merge duplicates and drop zeros
    A = sp.csr_array(
        (data.reshape(-1).astype(np.float64, copy=False), cols.reshape(-1), indptr), shape=(m, n_t * n_c * n_s)
    )
    A.sum_duplicates()
    A.eliminate_zeros()
    return A
