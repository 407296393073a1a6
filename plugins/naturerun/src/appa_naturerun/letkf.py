r"""Ensemble transform Kalman filters: global ETKF and the local ETKF (LETKF, Hunt et al. 2007) on gridded states.

Notation (one analysis): ``N`` members, ``D`` state elements, ``M`` observations.

- background ensemble :math:`x_i` (``X [N, D]`` or ``[N, C, H, W]``), mean :math:`\bar x`, perturbations
  :math:`X'_i = x_i - \bar x`;
- observed ensemble :math:`\mathcal{H}(x_i)` (``HX [N, M]``), mean :math:`\bar y`, perturbations
  :math:`Y_i = \mathcal{H}(x_i) - \bar y` (for nonlinear operators this is the usual ensemble linearisation);
- observations :math:`y` ``[M]`` with a **diagonal** error covariance :math:`R = \mathrm{diag}(r)` ``[M]``.
  Correlated observation noise is treated by its diagonal (``noise.variance()``): the off-diagonal terms are
  ignored, which is the common practice of operational LETKFs (they thin or inflate instead).

In ensemble space (Hunt et al. 2007, eqs. 20--26), with multiplicative prior inflation :math:`\rho \ge 1`:

.. math::

    \tilde P_a = \Big[\tfrac{N-1}{\rho} I + Y R^{-1} Y^\top\Big]^{-1},\quad
    \bar w = \tilde P_a Y R^{-1} (y - \bar y),\quad
    W_a = \big[(N-1)\tilde P_a\big]^{1/2}\ \text{(symmetric square root)},

and the analysis members are :math:`x^a_j = \bar x + \sum_i X'_i (\bar w_i + W_{a,ij})`. This module returns the
equivalent **total weights** :math:`T_{ij}` with :math:`x^a_j = \sum_i T_{ij} x_i` (columns of ``T`` sum to one), so
they can be applied to any other representation of the same members (e.g. a GCM's native state):
:func:`apply_weights`.

**Localisation (LETKF).** Each grid column ``g`` gets its own analysis with every observation's precision
:math:`r_k^{-1}` multiplied by the Gaspari--Cohn taper :math:`\rho_{gk} = GC(d_{gk} / c)` of the great-circle
distance between the column and the observation (R-localisation). ``radius`` is the **cut-off** :math:`2c`:
observations farther than ``radius`` have no weight at all. A column without observations in reach gets
:math:`T = \sqrt{\rho}\,(I - \tfrac1N 11^\top) + \tfrac1N 11^\top` (inflated prior), i.e. it is unchanged for
:math:`\rho = 1`.

**Spread control.** Multiplicative prior inflation (``inflation`` = :math:`\rho`, on the covariance),
relaxation-to-prior-perturbations (``rtpp`` = :math:`\alpha`: :math:`W_a \leftarrow (1-\alpha) W_a + \alpha I`,
still a weight) and relaxation-to-prior-spread (:func:`rtps`, elementwise on a state representation, Whitaker &
Hamill 2012).

Everything is vectorised over columns: the ``k x k`` (``k = N``) eigen-decompositions are batched with
``torch.linalg.eigh`` in chunks of columns sized so that the ``[chunk, N, M]`` intermediate stays below
``max_elements``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from appa_core import geo
from appa_core.geo import EARTH_RADIUS_KM, great_circle_km
from appa_core.grid import Grid

__all__ = [
    "EARTH_RADIUS_KM",
    "apply_weights",
    "etkf",
    "etkf_weights",
    "gaspari_cohn",
    "great_circle_km",
    "letkf",
    "letkf_weights",
    "rtps",
]


ArrayLike = Tensor | np.ndarray


def _t(x: ArrayLike | float, dtype: torch.dtype = torch.float64) -> Tensor:
    if isinstance(x, Tensor):
        return x.to(dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def gaspari_cohn(distance: Tensor, radius: float) -> Tensor:
    r"""The Gaspari-Cohn taper (:func:`appa_core.geo.gaspari_cohn`) with the LETKF's cut-off convention.

    Args:
        distance: distances ``[...]`` (any unit, >= 0).
        radius: cut-off :math:`2c` in the same unit (``inf`` gives 1 everywhere).
    Returns:
        taper ``[...]`` in [0, 1], 1 at distance 0.
    """
    if math.isinf(radius):
        return torch.ones_like(distance)
    if not radius > 0:
        raise ValueError(f"gaspari_cohn: field 'radius' has value {radius}, must be > 0")
    return geo.gaspari_cohn(distance / (radius / 2.0))


def _transform(yb: Tensor, d: Tensor, prec: Tensor, n: int, inflation: float, rtpp: float) -> Tensor:
    """Total weights ``[G, N, N]`` from perturbations ``yb [N, M]``, innovations ``d [M]`` and localised
    precisions ``prec [G, M]``."""
    c = yb[None] * prec[:, None, :]  # [G, N, M] = Y R_loc^-1
    a = c @ yb.T  # [G, N, N]
    eye = torch.eye(n, dtype=yb.dtype, device=yb.device)
    a = a + (n - 1) / inflation * eye
    a = 0.5 * (a + a.transpose(-1, -2))
    lam, q = torch.linalg.eigh(a)
    pa = (q / lam[:, None, :]) @ q.transpose(-1, -2)  # [G, N, N]
    wa = (q * torch.sqrt((n - 1) / lam)[:, None, :]) @ q.transpose(-1, -2)
    if rtpp:
        wa = (1.0 - rtpp) * wa + rtpp * eye
    wbar = pa @ (c @ d)[..., None]  # [G, N, 1]
    w = wa + wbar  # perturbation weights W_ij (x_a_j = xbar + sum_i X'_i W_ij)
    # total weights: T_ij = W_ij + (1 - sum_k W_kj) / N
    return w + (1.0 - w.sum(dim=-2, keepdim=True)) / n


def _check(hx: Tensor, y: Tensor, r: Tensor, owner: str) -> None:
    if hx.ndim != 2:
        raise ValueError(f"{owner}: field 'HX' must be [N, M], got shape {list(hx.shape)}")
    n, m = hx.shape
    if n < 2:
        raise ValueError(f"{owner}: field 'HX' has {n} member(s), need at least 2")
    if y.shape != (m,) or r.shape != (m,):
        raise ValueError(f"{owner}: fields 'y' and 'R' must be [M={m}], got {list(y.shape)} and {list(r.shape)}")
    if m and not bool((r > 0).all()):
        raise ValueError(f"{owner}: field 'R' has value {float(r.min())}, variances must be > 0")


def etkf_weights(hx: ArrayLike, y: ArrayLike, r: ArrayLike, *, inflation: float = 1.0, rtpp: float = 0.0) -> Tensor:
    """Global ETKF total weights ``T [N, N]`` (float64): ``x_a[j] = sum_i T[i, j] x_b[i]``.

    Args:
        hx: observed ensemble ``[N, M]``; y: observations ``[M]``; r: observation-error variances ``[M]``.
        inflation: multiplicative prior covariance inflation rho >= 1; rtpp: relaxation to prior perturbations.
    """
    hx, y, r = _t(hx), _t(y), _t(r)
    _check(hx, y, r, "etkf")
    n = hx.shape[0]
    ybar = hx.mean(0)
    return _transform(hx - ybar, y - ybar, (1.0 / r)[None], n, inflation, rtpp)[0]


def etkf(
    x: ArrayLike, hx: ArrayLike, y: ArrayLike, r: ArrayLike, *, inflation: float = 1.0, rtpp: float = 0.0
) -> tuple[Tensor, Tensor]:
    """Global ETKF analysis: ``(X_a [N, ...] float64, T [N, N])`` for a background ``x [N, ...]``."""
    t = etkf_weights(hx, y, r, inflation=inflation, rtpp=rtpp)
    xb = _t(x)
    return torch.einsum("ij,i...->j...", t, xb), t


def letkf_weights(
    hx: ArrayLike,
    y: ArrayLike,
    r: ArrayLike,
    *,
    n_columns: int,
    distance: Callable[..., Tensor],
    radius: float,
    inflation: float = 1.0,
    rtpp: float = 0.0,
    max_elements: int = 20_000_000,
    block: int = 16,
    neighbours: Callable[[int, int], np.ndarray] | None = None,
) -> Tensor:
    """LETKF total weights ``[G, N, N]`` for ``G = n_columns`` analysis points with any distance.

    Args:
        hx, y, r: observed ensemble ``[N, M]``, observations ``[M]``, error variances ``[M]`` (diagonal of R).
        n_columns: number of analysis points ``G``.
        distance: ``distance(start, stop) -> Tensor [stop - start, M]``: distances from analysis points
            ``start:stop`` to every observation (same unit as ``radius``).
        radius: Gaspari-Cohn cut-off (``math.inf``: no localisation).
        inflation, rtpp: as in :func:`etkf_weights`.
        max_elements: bound on the ``[chunk, N, M]`` intermediate (caps the column chunk size).
        block: columns per chunk (at most). Each chunk keeps only the observations within ``radius`` of one of
            its columns, so neighbouring columns (``distance``'s order) make the chunks cheap: with a 2500 km
            cut-off on a 48 x 96 grid a block of 16 columns in a latitude row sees a few percent of a global
            network instead of all of it. The result does not depend on ``block`` (up to rounding).
        neighbours: optional ``neighbours(start, stop) -> int array [K]``: the observations that may lie
            within ``radius`` of a column ``start:stop`` (a superset is fine: the taper drops the others). With
            it, ``distance`` is called as ``distance(start, stop, idx) -> [stop - start, K]`` for those
            observations only, instead of every observation: the distances and tapers of a dense network cost
            ``O(G * K)`` instead of ``O(G * M)`` (:func:`letkf` builds it from a k-d tree). The indices are
            sorted and de-duplicated here, so the result is the same (the same observations, in the same order,
            get the same weights).
    """
    hx, y, r = _t(hx), _t(y), _t(r)
    _check(hx, y, r, "letkf")
    n, m = hx.shape
    ybar = hx.mean(0)
    yb, d = hx - ybar, y - ybar
    inv_r = 1.0 / r
    chunk = max(1, min(int(block), int(max_elements) // max(1, n * max(m, 1))))
    out = torch.empty((n_columns, n, n), dtype=torch.float64)
    for s in range(0, n_columns, chunk):
        e = min(n_columns, s + chunk)
        if not m:
            out[s:e] = _transform(yb, d, torch.zeros((e - s, 0), dtype=torch.float64), n, inflation, rtpp)
            continue
        if neighbours is None:
            rho = gaspari_cohn(_t(distance(s, e)), radius)  # [chunk, M]
            near = (rho > 0).any(0)  # the observations in reach of some column of the block: the others weigh 0
            if bool(near.all()):
                out[s:e] = _transform(yb, d, rho * inv_r[None], n, inflation, rtpp)
                continue
            idx = near.nonzero()[:, 0]
        else:
            cand = torch.as_tensor(np.unique(np.asarray(neighbours(s, e), dtype=np.int64)))  # sorted, once each
            rho = gaspari_cohn(_t(distance(s, e, cand)), radius)  # [chunk, K]
            near = (rho > 0).any(0)
            idx = cand[near]
        out[s:e] = _transform(yb[:, idx], d[idx], rho[:, near] * inv_r[idx][None], n, inflation, rtpp)
    return out


def letkf(
    x: ArrayLike,
    hx: ArrayLike,
    y: ArrayLike,
    r: ArrayLike,
    *,
    obs_lat: ArrayLike,
    obs_lon: ArrayLike,
    grid: Grid,
    radius_km: float,
    inflation: float = 1.0,
    rtpp: float = 0.0,
    max_elements: int = 20_000_000,
) -> tuple[Tensor, Tensor]:
    """LETKF on a lat-lon grid with great-circle R-localisation.

    Args:
        x: background ensemble ``[N, ..., H, W]`` (e.g. ``[N, C, H, W]``) on ``grid``, or ``None``-free arrays of
            any representation whose last two axes are the grid.
        hx: observed ensemble ``[N, M]``; y: observations ``[M]``; r: error variances ``[M]`` (diagonal of R:
            correlated noise is treated by its diagonal).
        obs_lat, obs_lon: observation locations ``[M]`` (degrees).
        grid: the analysis grid ``(H, W)``.
        radius_km: Gaspari-Cohn cut-off (km); ``math.inf`` reproduces the global ETKF.
        inflation: multiplicative prior inflation; rtpp: relaxation to prior perturbations (weights).
    Returns:
        ``(X_a [N, ..., H, W] float64, T [H, W, N, N])`` with
        ``x_a[j, ..., h, w] = sum_i T[h, w, i, j] x[i, ..., h, w]``.
    """
    h, w = grid.shape
    xb = _t(x)
    if xb.shape[-2:] != (h, w):
        raise ValueError(f"letkf: field 'x' must end with the grid shape {(h, w)}, got {list(xb.shape)}")
    olat, olon = _t(obs_lat).reshape(-1), _t(obs_lon).reshape(-1)
    lat2, lon2 = np.meshgrid(
        np.asarray(grid.lat, dtype=np.float64), np.asarray(grid.lon, dtype=np.float64), indexing="ij"
    )
    clat, clon = torch.as_tensor(lat2.reshape(-1)), torch.as_tensor(lon2.reshape(-1))

    def dist(s: int, e: int, idx: Tensor | slice = slice(None)) -> Tensor:
        return great_circle_km(clat[s:e, None], clon[s:e, None], olat[None, idx], olon[None, idx])

    near = _ball_neighbours(clat.numpy(), clon.numpy(), olat, olon, radius_km)

    t = letkf_weights(
        hx,
        y,
        r,
        n_columns=h * w,
        distance=dist,
        radius=radius_km,
        inflation=inflation,
        rtpp=rtpp,
        max_elements=max_elements,
        neighbours=near,
    ).reshape(h, w, *([_t(hx).shape[0]] * 2))
    return apply_weights(xb, t), t


def _unit_vectors(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Points on the unit sphere ``[P, 3]`` from degrees."""
    p, q = np.deg2rad(lat), np.deg2rad(lon)
    return np.stack([np.cos(p) * np.cos(q), np.cos(p) * np.sin(q), np.sin(p)], axis=-1)


def _ball_neighbours(
    col_lat: np.ndarray, col_lon: np.ndarray, obs_lat: Tensor, obs_lon: Tensor, radius_km: float
) -> Callable[[int, int], np.ndarray] | None:
    """``neighbours(start, stop)`` for :func:`letkf_weights`: the indices of the observations within ``radius_km``
    (plus 1 m, for rounding) of one of the columns ``start:stop`` (with repeats: ``letkf_weights`` sorts them), from a
    :class:`scipy.spatial.cKDTree` ball query per column on the unit sphere (chord = ``2 sin(d / 2R)``), made
    when a block asks (memory ``O(block x neighbours)``). ``None`` (every observation) when the cut-off reaches
    the antipode (or is infinite), where the chord's rounding could drop one. Observations with a non-finite
    position are never neighbours (their taper is 0 on the all-pairs path too)."""
    from scipy.spatial import cKDTree

    if radius_km + 1e-3 >= math.pi * EARTH_RADIUS_KM:
        return None
    obs = _unit_vectors(obs_lat.numpy(), obs_lon.numpy())
    finite = np.flatnonzero(np.isfinite(obs).all(axis=-1))
    tree = cKDTree(obs[finite])
    cols = _unit_vectors(col_lat, col_lon)
    chord = 2.0 * math.sin((radius_km + 1e-3) / (2.0 * EARTH_RADIUS_KM))

    def neighbours(start: int, stop: int) -> np.ndarray:
        balls = tree.query_ball_point(cols[start:stop], chord)
        found = np.concatenate([np.asarray(b, dtype=np.int64) for b in balls]) if len(balls) else np.zeros(0, int)
        return finite[found]

    return neighbours


def apply_weights(x: ArrayLike, weights: ArrayLike) -> Tensor:
    """Apply per-column total weights: ``x_a[j, ..., *cols] = sum_i T[*cols, i, j] x[i, ..., *cols]``.

    Args:
        x: ensemble ``[N, ..., *cols]`` (e.g. ``[N, C, H, W]`` with cols = ``(H, W)``, or ``[N, D]`` with cols =
            ``(D,)``).
        weights: ``[*cols, N, N]``.
    Returns:
        analysis ensemble, same shape as ``x``, in ``x``'s float dtype (float64 for numpy input).
    """
    xt = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x, dtype=np.float64))
    t = _t(weights, xt.dtype)
    n = xt.shape[0]
    cols = t.shape[:-2]
    if t.shape[-2:] != (n, n) or tuple(xt.shape[xt.ndim - len(cols) :]) != tuple(cols):
        raise ValueError(
            f"apply_weights: field 'weights' has shape {list(t.shape)}, incompatible with x {list(xt.shape)}"
        )
    k = len(cols)
    # move member axis last: [..., *cols, N]
    xm = torch.movedim(xt, 0, -1)
    out = (xm[..., None, :] @ t).squeeze(-2) if k else xm @ t  # [..., *cols, 1, N] @ [*cols, N, N]
    return torch.movedim(out, -1, 0)


def rtps(xb: ArrayLike, xa: ArrayLike, alpha: float, eps: float = 1e-12) -> Tensor:
    r"""Relaxation to prior spread (Whitaker & Hamill 2012), elementwise on ``[N, ...]``:
    :math:`X'_a \leftarrow X'_a \,(1 + \alpha (\sigma_b - \sigma_a) / \sigma_a)`; the analysis mean is kept."""
    xb_t, xa_t = _t(xb) if not isinstance(xb, Tensor) else xb, _t(xa) if not isinstance(xa, Tensor) else xa
    if alpha == 0.0:
        return xa_t
    ma = xa_t.mean(0, keepdim=True)
    sb = xb_t.std(0, keepdim=True, unbiased=True)
    sa = (xa_t - ma).std(0, keepdim=True, unbiased=True)
    factor = 1.0 + alpha * (sb - sa) / sa.clamp_min(eps)
    return ma + (xa_t - ma) * torch.where(sa > eps, factor, torch.ones_like(factor))
