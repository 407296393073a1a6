r"""Matrix-free Krylov solvers for batches of linear systems, in float64.

Both solvers act on the **last axis**: ``b`` is ``[..., M]`` and every leading index is an independent system
:math:`A_n x_n = b_n`; ``A`` is a callable mapping ``[..., M] -> [..., M]`` (it must act independently on each
leading index). Inner products, residuals and Krylov bases are kept in float64 whatever the dtype of ``b``.

* :func:`cg`: conjugate gradients, for symmetric positive definite ``A``.
* :func:`woodbury_capacitance`, :func:`woodbury_solve`: the one low-rank-plus-diagonal solve of the repository,
  :math:`(D + F F^\top)^{-1} v` by the Woodbury identity (observation errors, Gaussian priors, the OI baseline).
* :func:`gmres`: GMRES (Arnoldi with modified Gram-Schmidt and Givens rotations, no restart), for any
  non-singular ``A`` -- use it when the operator is not exactly symmetric (a learned denoiser's Jacobian is not).

Both stop when every system satisfies :math:`\|b - A x\| \le \max(\mathrm{tol}\,\|b\|, \mathrm{atol})` or after
``maxiter`` iterations, and return ``(x, SolveInfo)``; systems that converge early are frozen (no further
updates). With ``tol=None`` they run exactly ``maxiter`` iterations (the fixed-iteration mode of azula / Appa,
no convergence test). In exact arithmetic both reach the exact solution in at most ``M`` iterations.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
from torch import Tensor

__all__ = ["SolveInfo", "cg", "gmres", "solve", "woodbury_capacitance", "woodbury_solve"]

_EPS = 1e-300


@attrs.frozen
class SolveInfo:
    """Convergence report of a batched solve.

    Attributes:
        converged: ``True`` when every system met the tolerance (always ``True`` with ``tol=None``).
        iterations: iterations done (the largest over systems).
        residual: relative residual norms :math:`\\|b - A x\\| / \\|b\\|` per system ``[...]`` float64
            (recursive estimate; 0 where ``b = 0``).
        residual_vector: the residual :math:`b - A x` ``[..., M]`` float64 (CG: recursive; GMRES: from the Arnoldi
            relation, without an extra product).
        tol: the relative tolerance used (``None`` for fixed iterations).
        coefficients: ``[..., P]`` float64: the solution is :math:`x = \\sum_i c_i v_i` over the ``P`` vectors
            :math:`v_i` that ``A`` was called with, in call order (the initial guess's product first, then one per
            iteration). A caller that computed something linear in :math:`v_i` alongside each product (MMPS: the
            step in denoiser space) gets it for ``x`` without another pass.
    """

    converged: bool
    iterations: int
    residual: Tensor
    residual_vector: Tensor | None
    tol: float | None
    coefficients: Tensor | None = None


def _threshold(bnorm: Tensor, tol: float | None, atol: float) -> Tensor:
    if tol is None:
        return torch.full_like(bnorm, -1.0)
    return torch.clamp(tol * bnorm, min=atol)


def _norm(v: Tensor) -> Tensor:
    """Euclidean norm over the last axis (``torch.linalg.vector_norm``: ``Tensor.norm``'s Python wrapper costs
    more than the reduction on the solvers' small vectors)."""
    return torch.linalg.vector_norm(v, dim=-1)


def _relative(rnorm: Tensor, bnorm: Tensor) -> Tensor:
    return torch.where(bnorm > 0, rnorm / bnorm.clamp_min(_EPS), torch.zeros_like(rnorm))


def _initial(
    A: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None, scale_x0: bool, energy: bool
) -> tuple[Tensor, Tensor, list[Tensor]]:
    r"""Initial iterate and residual ``(x, b - A x)``: zero, ``x0``, or (``scale_x0``) the best multiple
    :math:`\alpha x_0` -- :math:`\alpha = \langle A x_0, b\rangle / \|A x_0\|^2` (least residual, GMRES) or
    :math:`\langle x_0, b\rangle / \langle x_0, A x_0\rangle` (least A-norm error, CG) -- which costs the same one
    product and is never worse than zero or ``x0`` alone (a warm start whose size is off, e.g. because the system's
    scale changed, is rescaled for free). Third: the coefficient of ``x0`` in ``x`` (empty without ``x0``)."""
    if x0 is None:
        return torch.zeros_like(b), b, []  # the solvers never write into b or r0
    x = x0.to(torch.float64)
    w = A(x).to(torch.float64)
    alpha = torch.ones_like(b[..., 0])
    if scale_x0:
        num = ((x if energy else w) * b).sum(-1)
        den = ((x * w) if energy else (w * w)).sum(-1)
        alpha = torch.where(den.abs() > _EPS, num / torch.where(den.abs() > _EPS, den, torch.ones_like(den)), 0.0)
        x, w = alpha[..., None] * x, alpha[..., None] * w
    return x.clone(), b - w, [alpha]


def cg(
    A: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    *,
    tol: float | None = 1e-6,
    atol: float = 0.0,
    maxiter: int | None = None,
    scale_x0: bool = False,
) -> tuple[Tensor, SolveInfo]:
    r"""Conjugate gradients for SPD systems :math:`A x = b`, batched over leading axes.

    Args:
        A: the operator ``[..., M] -> [..., M]`` (called with float64 tensors).
        b: right-hand sides ``[..., M]``.
        x0: initial guess (zeros by default).
        scale_x0: start from the multiple of ``x0`` with the least A-norm error instead (same cost).
        tol: relative tolerance on the residual norm, or ``None`` for exactly ``maxiter`` iterations.
        atol: absolute tolerance floor.
        maxiter: iteration cap (default ``2 M``).

    Returns:
        ``(x, info)`` with ``x`` ``[..., M]`` in ``b``'s dtype.
    """
    out_dtype = b.dtype
    b = b.to(torch.float64)
    m = b.shape[-1]
    maxiter = 2 * m if maxiter is None else int(maxiter)
    x, r, coefs = _initial(A, b, x0, scale_x0, energy=True)
    bnorm = b.norm(dim=-1)
    thresh = _threshold(bnorm, tol, atol)
    p = r.clone()
    rr = (r * r).sum(-1)
    active = rr.sqrt() > thresh
    it = 0
    while it < maxiter and bool(active.any()):
        Ap = A(p).to(torch.float64)
        pAp = (p * Ap).sum(-1)
        alpha = torch.where(active, rr / torch.where(pAp.abs() > _EPS, pAp, torch.full_like(pAp, _EPS)), 0.0)
        x = x + alpha[..., None] * p
        coefs.append(alpha)
        r = r - alpha[..., None] * Ap
        rr_new = (r * r).sum(-1)
        beta = torch.where(active, rr_new / rr.clamp_min(_EPS), 0.0)
        p = torch.where(active[..., None], r + beta[..., None] * p, p)
        rr = torch.where(active, rr_new, rr)
        it += 1
        active = active & (rr.sqrt() > thresh)
    rel = _relative(rr.sqrt(), bnorm)
    converged = True if tol is None else bool((rr.sqrt() <= thresh).all())
    r = r.clone() if r is b else r  # no iteration from zero: r0 is b, which may be the caller's tensor
    return x.to(out_dtype), SolveInfo(converged, it, rel, r, tol, _stack(coefs, b))


def gmres(
    A: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    *,
    tol: float | None = 1e-6,
    atol: float = 0.0,
    maxiter: int | None = None,
    scale_x0: bool = False,
) -> tuple[Tensor, SolveInfo]:
    r"""GMRES for non-singular (possibly non-symmetric) systems, batched over leading axes.

    The residual vector is obtained from the Arnoldi relation :math:`A V_k = V_{k+1} \bar H_k` as
    :math:`r = r_0 - V_{k+1} \bar H_k y_k` (exact up to rounding, whatever the loss of orthogonality), so a solve
    costs one product with ``A`` per iteration (plus one for :math:`r_0` when ``x0`` is given) and no extra one to
    report its residual. Stores ``maxiter + 1`` basis vectors per system. Arguments and return as :func:`cg`
    (default cap ``M``; ``scale_x0`` starts from the multiple of ``x0`` with the least residual).
    """
    out_dtype = b.dtype
    b = b.to(torch.float64)
    m = b.shape[-1]
    maxiter = min(m, 200) if maxiter is None else int(maxiter)
    batch = b.shape[:-1]
    x, r0, coefs = _initial(A, b, x0, scale_x0, energy=False)
    bnorm = _norm(b)
    thresh = _threshold(bnorm, tol, atol)
    beta = bnorm if x0 is None else _norm(r0)  # r0 is b from zero
    V = [r0 / beta.clamp_min(_EPS)[..., None]]
    g = [beta]
    cs: list[Tensor] = []
    sn: list[Tensor] = []
    R_cols: list[Tensor] = []  # column j holds R[0..j, j] (after the Givens rotations)
    H_cols: list[Tensor] = []  # column j holds Hbar[0..j+1, j] (Arnoldi, before rotations)
    res = beta.clone()
    active = res > thresh
    if maxiter == 1 and bool(active.any()):
        return _gmres_one(A, b, x, r0, V[0], beta, bnorm, thresh, active, coefs, out_dtype, tol)
    it = 0
    while it < maxiter and bool(active.any()):
        j = it
        w = A(V[j]).to(torch.float64)
        h = []
        for i in range(j + 1):
            hij = (w * V[i]).sum(-1)
            w = w - hij[..., None] * V[i]
            h.append(hij)
        hnext = _norm(w)
        V.append(w / hnext.clamp_min(_EPS)[..., None])
        h.append(hnext)  # h[0..j+1]
        H_cols.append(torch.stack(h, dim=-1))
        for i in range(j):  # previous rotations
            a = cs[i] * h[i] + sn[i] * h[i + 1]
            h[i + 1] = -sn[i] * h[i] + cs[i] * h[i + 1]
            h[i] = a
        denom = torch.hypot(h[j], h[j + 1])
        safe = denom > _EPS
        safe_denom = denom.clamp_min(_EPS)
        c, s = h[j] / safe_denom, h[j + 1] / safe_denom
        h[j] = denom
        if not bool(safe.all()):
            # a breakdown (the rotated column is zero: the Krylov space is exhausted, or A is singular on it): the
            # swap rotation with a unit pivot gives y_j = 0 and carries the residual |g_j| (an identity rotation
            # would zero it and report a convergence that a singular system did not reach)
            c = torch.where(safe, c, torch.zeros_like(denom))
            s = torch.where(safe, s, torch.ones_like(denom))
            h[j] = torch.where(safe, denom, torch.ones_like(denom))
        h = h[: j + 1]
        gj = g[j]
        g_next = -s * gj
        g[j] = c * gj
        col = torch.stack(h, dim=-1)  # [..., j+1]
        if not bool(active.all()):  # frozen systems: column e_j, rotation identity, coefficient 0, residual carried
            ej = torch.zeros_like(col)
            ej[..., j] = 1.0
            col = torch.where(active[..., None], col, ej)
            c = torch.where(active, c, torch.ones_like(c))
            s = torch.where(active, s, torch.zeros_like(s))
            g_next = torch.where(active, g_next, gj)
            g[j] = torch.where(active, g[j], torch.zeros_like(gj))
        cs.append(c)
        sn.append(s)
        R_cols.append(col)
        g.append(g_next)
        res = torch.where(active, g_next.abs(), res)
        it += 1
        active = active & (res > thresh)
    r = r0
    if it > 0:
        k = it
        R = torch.zeros((*batch, k, k), dtype=torch.float64, device=b.device)
        Hbar = torch.zeros((*batch, k + 1, k), dtype=torch.float64, device=b.device)
        for jj, (col, hcol) in enumerate(zip(R_cols, H_cols, strict=True)):
            R[..., : jj + 1, jj] = col
            Hbar[..., : jj + 2, jj] = hcol
        gv = torch.stack(g[:k], dim=-1)[..., None]
        y = torch.linalg.solve_triangular(R, gv, upper=True)[..., 0]  # 0 past each system's last active column
        Vk1 = torch.stack(V, dim=-1)  # [..., M, k+1]
        x = x + (Vk1[..., :k] @ y[..., None])[..., 0]
        r = r0 - (Vk1 @ (Hbar @ y[..., None]))[..., 0]
        coefs.extend(y.unbind(-1))  # A was called with V[0..k-1]
    rel = _relative(_norm(r), bnorm)
    converged = True if tol is None else bool((res <= thresh).all())
    r = r.clone() if r is b else r  # no iteration from zero: r0 is b, which may be the caller's tensor
    return x.to(out_dtype), SolveInfo(converged, it, rel, r, tol, _stack(coefs, b))


def _gmres_one(
    A: Callable[[Tensor], Tensor],
    b: Tensor,
    x: Tensor,
    r0: Tensor,
    v: Tensor,
    beta: Tensor,
    bnorm: Tensor,
    thresh: Tensor,
    active: Tensor,
    coefs: list[Tensor],
    out_dtype: torch.dtype,
    tol: float | None,
) -> tuple[Tensor, SolveInfo]:
    r"""One GMRES iteration in closed form (``maxiter=1``, the setting of Appa and of azula's MMPS): with
    :math:`v = r_0 / \beta` and :math:`w = A v`, the least residual :math:`\min_y \|r_0 - y w\|` is at
    :math:`y = \beta \langle w, v\rangle / \|w\|^2`; the same minimiser as the Arnoldi-Givens steps of
    :func:`gmres`, with fewer small tensor operations. :math:`w = 0` (a breakdown) gives :math:`y = 0`."""
    w = A(v).to(torch.float64)
    h = (w * v).sum(-1)
    # |w| as hypot(<w, v>, |w - <w, v> v|), as the Arnoldi-Givens steps do: |w|^2 itself under/overflows float64
    # for |w| below 1e-154 or above 1e154
    wn = torch.hypot(h, _norm(w - h[..., None] * v))
    ok = active & (wn > _EPS)
    safe = torch.where(ok, wn, torch.ones_like(wn))
    y = torch.where(ok, beta * (h / safe) / safe, 0.0)
    x = x + y[..., None] * v
    r = r0 - y[..., None] * w
    rnorm = _norm(r)
    converged = True if tol is None else bool((rnorm <= thresh).all())
    coefs.append(y)  # A was called with v
    return x.to(out_dtype), SolveInfo(converged, 1, _relative(rnorm, bnorm), r, tol, _stack(coefs, b))


def _stack(coefs: list[Tensor], b: Tensor) -> Tensor:
    return torch.stack(coefs, dim=-1) if coefs else b.new_zeros((*b.shape[:-1], 0))


def solve(
    method: str,
    A: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor | None = None,
    *,
    tol: float | None = 1e-6,
    atol: float = 0.0,
    maxiter: int | None = None,
    scale_x0: bool = False,
) -> tuple[Tensor, SolveInfo]:
    """Dispatch to :func:`cg` or :func:`gmres` by name."""
    if method == "cg":
        return cg(A, b, x0, tol=tol, atol=atol, maxiter=maxiter, scale_x0=scale_x0)
    if method == "gmres":
        return gmres(A, b, x0, tol=tol, atol=atol, maxiter=maxiter, scale_x0=scale_x0)
    raise ValueError(f"solve: field 'method' has value {method!r}; expected 'cg' or 'gmres'")


def woodbury_capacitance(factor: Tensor, dinv: Tensor) -> Tensor:
    r"""Cholesky factor :math:`L_A` of the capacitance :math:`A = I_r + F^\top D^{-1} F` (lower triangular).

    Args:
        factor: :math:`F` ``[D, r]``.
        dinv: the inverse diagonal :math:`D^{-1}` ``[D]`` or a batch of them ``[B, D]`` (e.g. :math:`1/(d +
            \sigma_b^2)`), > 0.

    Returns:
        :math:`L_A` ``[r, r]`` (or ``[B, r, r]``), for :func:`woodbury_solve` and :math:`\log\det(D + F F^\top)
        = \sum \log d + 2 \sum \log \mathrm{diag}(L_A)`.
    """
    r = factor.shape[-1]
    eye = torch.eye(r, dtype=factor.dtype, device=factor.device)
    if dinv.ndim == 1:
        cap = eye + (factor * dinv[:, None]).T @ factor
    else:
        cap = eye + torch.einsum("dr,bd,ds->brs", factor, dinv, factor)
    return torch.linalg.cholesky(cap)


def woodbury_solve(v: Tensor, factor: Tensor, dinv: Tensor, chol: Tensor) -> Tensor:
    r""":math:`(D + F F^\top)^{-1} v = D^{-1} v - D^{-1} F A^{-1} F^\top D^{-1} v` in :math:`O(N D r)`.

    Args:
        v: right-hand sides ``[N, D]``.
        factor: :math:`F` ``[D, r]``.
        dinv: :math:`D^{-1}` ``[D]`` (shared) or ``[N, D]`` (one per right-hand side).
        chol: :func:`woodbury_capacitance` of ``(factor, dinv)``: ``[r, r]`` or ``[N, r, r]``.

    Returns:
        ``[N, D]``.
    """
    vd = v * dinv
    rhs = vd @ factor  # [N, r]
    shared = chol.ndim == 2
    w = torch.cholesky_solve(rhs.T, chol).T if shared else torch.cholesky_solve(rhs[..., None], chol)[..., 0]
    return vd - dinv * (w @ factor.T)
