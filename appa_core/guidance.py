r"""Posterior guidance: MMPS (moment-matching posterior sampling) and DPS, over any ``DiffusionPrior``.

**MMPS** (Rozet et al., 2024). For observations :math:`y = \mathcal{A}(z) + \eta`, :math:`\eta \sim
\mathcal{N}(0, \Sigma_y)`, where :math:`\mathcal{A} = \mathcal{H} \circ \mathrm{decode}` is every operator of the
call stacked (an :class:`~appa_core.ObsSet`) composed with the prior's decoder (plus, optionally, known states
in diffusion space), the likelihood of the noisy state is approximated by

.. math:: q(y \mid z_t) = \mathcal{N}\big(y;\ \mathcal{A}(\hat z),\ \Sigma_y + \hat A\,V_t\,\hat A^\top\big),\qquad
          \hat z = E[z \mid z_t],\quad V_t = \sigma_t^2\,\partial \hat z / \partial z_t \ \text{(Tweedie)},

with :math:`\hat A` the Jacobian of :math:`\mathcal{A}` at :math:`\hat z` (nonlinear operators are linearised there),
and the guided denoiser is

.. math:: E[z \mid z_t, y] \approx \hat z + \sigma_t^2 J^\top \hat A^\top u,\qquad
          (\Sigma_y + \hat A V_t \hat A^\top)\,u = y - \mathcal{A}(\hat z).

All products are matrix-free: :math:`\hat A v` by the observation map's linearization when it has one
(:class:`ObservationMap`: the latent prior's decoder is linearized once per call, then each product costs one
convolution per decoder convolution), else by forward-mode AD (``torch.func.jvp``); :math:`\hat A^\top u` and
:math:`J^\top v` by vector-Jacobian products on the single retained graph of the denoiser call (``V_t v`` uses
:math:`J^\top` for :math:`J`, exact when the denoiser is exact, since then ``J`` is symmetric). The system is
solved by CG or GMRES (:mod:`appa_core.linalg`) in float64, symmetrically scaled by the diagonal of
:math:`\Sigma_y` (the residual is measured in units of observation-error standard deviations), with a tolerance
and an iteration cap (adaptive by default: iterate to the tolerance; iterations and residuals are reported).
Each solve starts from the previous call's solution :math:`u` (``warm_start``, on by default; the sampler's
calls follow one trajectory, along which :math:`u` changes slowly): with a tolerance, the solve then stops after
the few iterations that the change needs. On a Gaussian problem (D = 1024, 200 observations, LMS 24 steps) this
reaches the final-sample error of 16 cold GMRES iterations with 2.7x fewer operator products
(``benchmarks/guidance_cost.py``).
Robust noise models enter through IRLS weights :math:`w = \psi(u)/u` of the residual :math:`r = y -
\mathcal{A}(\hat z)` standardised by the **full innovation variance**, :math:`u_i = r_i / \sqrt{R_{ii} + b_{ii}}`
with :math:`b = \mathrm{diag}(\hat A V_t \hat A^\top)` (Hutchinson estimate), so that at large noise levels the
prior's spread does not make every observation an outlier: :math:`\Sigma_y \to W^{-1/2}\Sigma_y W^{-1/2}`.
For a Gaussian prior, affine :math:`\mathcal{A}` and Gaussian noise this is the exact posterior denoiser.

**DPS** (Chung et al., 2023), as a guided denoiser: :math:`\hat z - \zeta\,\nabla_{z_t}
\|\Sigma_y^{-1/2}(y - \mathcal{A}(\hat z))\|_2` per member (one VJP, no solve; approximate even for Gaussians).

Failures are reported, never propagated silently: a non-finite residual or solution raises
:class:`GuidanceError` naming the step and the operator(s); a solve that misses its tolerance is reported per
``on_failure`` (see :class:`PosteriorDenoiser`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from torch import Tensor

from appa_core.linalg import solve
from appa_core.obs.errors import BlockDiagonal, DiagonalGaussian, NoiseModel
from appa_core.obs.obsset import ObsSet
from appa_core.priors.base import DiffusionPrior

__all__ = [
    "ADAPTIVE_MAXITER",
    "DPS",
    "MMPS",
    "GuidanceError",
    "GuidanceReport",
    "KnownStates",
    "ObservationMap",
    "PosteriorDenoiser",
    "WarmStart",
    "guided_denoiser",
    "observation_time_ranges",
    "solve_summary",
]


#: A DPS step larger than this many times the state's size (plus sqrt(D)) is reported as divergence.
DPS_DIVERGENCE = 100.0

#: Largest ``sum |c_i| |v_i| / |sum c_i v_i|`` with which MMPS combines its products' denoiser-space vectors into the
#: guided step instead of running one more VJP (:func:`_from_products`): the combination's rounding error is at most
#: this many times the products' own.
MAX_CANCELLATION = 10.0

#: Most bytes of denoiser-space product vectors that one MMPS call keeps for its step (:func:`_from_products`);
#: beyond this it runs the final VJP instead (512 MiB: e.g. 16 products of 8 members of a 1e6-value state in float32).
MAX_PRODUCTS_BYTES = 2**29

#: Iteration cap of an adaptive MMPS solve (``MMPS(maxiter=None)``): the former fixed count. Small problems converge
#: well before it (8 iterations at most on the calibration problem); a learned prior with 10^4-10^5 observations
#: does not reach 1e-2 within any affordable count (relative residual 0.63 after 20 iterations on the demo), so there
#: the cap binds and the residuals are reported.
ADAPTIVE_MAXITER = 16


class GuidanceError(RuntimeError):
    """The guidance failed: a non-finite residual, or (``on_failure="raise"``) an unconverged solve."""


@attrs.define(eq=False)
class WarmStart:
    """The previous solve's solution :math:`u` ``[*N, M]`` (float64, unscaled), the initial guess of the next one.

    One per sequence of guided calls on the same systems (a :class:`PosteriorDenoiser` keeps one per window); a
    guess of another shape (another batch, another window) is ignored.
    """

    u: Tensor | None = None

    def guess(self, like: Tensor) -> Tensor | None:
        """The stored solution if it fits ``like`` ``[*N, M]``, else ``None``."""
        if self.u is None or self.u.shape != like.shape:
            return None
        return self.u


@attrs.frozen
class GuidanceReport:
    """Outcome of one guided denoiser call.

    Attributes:
        converged: the linear solve met its tolerance for every system (always ``True`` for DPS).
        iterations: solver iterations.
        residual: worst relative residual of the solve (scaled units).
        operator_residuals: per operator, the worst relative residual norm of its rows.
        where: context (step and noise level).
    """

    converged: bool
    iterations: int
    residual: float
    operator_residuals: dict[str, float]
    where: str


def _names_or_default(names: dict[str, slice] | None, m: int) -> dict[str, slice]:
    return names if names else {"observations": slice(0, m)}


def _check_finite(v: Tensor, names: dict[str, slice], what: str, where: str) -> None:
    # one reduction: a finite sum has no inf or NaN term (a sum that overflows is checked element-wise)
    if math.isfinite(float(v.sum())) or bool(torch.isfinite(v).all()):
        return
    bad = [n for n, s in names.items() if not bool(torch.isfinite(v[..., s]).all())]
    raise GuidanceError(f"{where}: {what} is non-finite for operator(s) {bad}")


def _predicted_variance(
    product: Callable[[Tensor], Tensor], like: Tensor, mask: Tensor | None, probes: int | None
) -> Tensor:
    r"""Hutchinson estimate :math:`\mathrm{diag}(B) \approx \frac1K \sum_k v_k \odot B v_k` (Rademacher
    :math:`v_k`, fixed seed, the same for every system of the batch so that a member's estimate does not depend on the
    batch it is sampled in), clamped at 0, for ``B = product`` acting on ``[..., M]``; ``probes=None``: the exact
    diagonal from the ``M`` unit vectors."""
    if probes is None or like.shape[-1] <= probes:  # exact: no more products than the probes would cost
        diag = torch.zeros_like(like)
        for i in range(like.shape[-1]):
            e = torch.zeros_like(like)
            e[..., i] = 1.0
            diag[..., i] = product(e)[..., i]
        return diag.clamp_min(0.0)
    gen = torch.Generator(device="cpu").manual_seed(0)
    acc = torch.zeros_like(like)
    for _ in range(max(1, probes)):
        v = (torch.randint(0, 2, like.shape[-1:], generator=gen).to(like) * 2 - 1).expand_as(like).contiguous()
        if mask is not None:
            v = torch.where(mask, v, torch.zeros_like(v))
        acc = acc + v * product(v)
    return (acc / max(1, probes)).clamp_min(0.0)


def _broadcast_sigma(sigma: Tensor, like: Tensor) -> Tensor:
    sigma = torch.as_tensor(sigma, dtype=like.dtype, device=like.device)
    return sigma.reshape(*sigma.shape, *([1] * (like.ndim - sigma.ndim)))


@attrs.frozen
class MMPS:
    """MMPS configuration (see module docs).

    Attributes:
        solver: ``"cg"`` (symmetric operator: exact denoisers) or ``"gmres"`` (robust for learned denoisers).
        maxiter: iteration cap of the solve; ``None`` (default): adaptive, iterate until ``tol`` is met, up to
            :data:`ADAPTIVE_MAXITER` iterations (and at most ``M``, where Krylov methods are exact).
        tol: relative tolerance on the scaled residual, or ``None`` for exactly ``maxiter`` iterations (Appa).
        irls: use the noise models' IRLS weights (robust models); Gaussian models have weights 1 anyway.
        probes: Rademacher probes of the Hutchinson estimate of :math:`\\mathrm{diag}(\\hat A V_t \\hat A^\top)`, the
            prior's predicted variance of each observation at this noise level, by which robust models'
            residuals are standardised together with the observation variance (one extra product each, robust
            models only); ``None``: the exact diagonal, one product per observation (small problems, tests).
        warm_start: start each solve from the previous call's solution (passed as ``warm`` to :meth:`guide`; one
            extra product for the initial residual, repaid many times with a tolerance). With ``tol=None`` (fixed
            iterations) it changes the result, not the iteration count.
    """

    solver: str = "gmres"
    maxiter: int | None = None
    tol: float | None = 1e-2
    irls: bool = True
    probes: int | None = 8
    warm_start: bool = True

    def __attrs_post_init__(self) -> None:
        if self.solver not in ("cg", "gmres"):
            raise ValueError(f"MMPS: field 'solver' has value {self.solver!r}; expected 'cg' or 'gmres'")
        if self.maxiter is not None and self.maxiter < 1:
            raise ValueError(f"MMPS: field 'maxiter' has value {self.maxiter}; must be >= 1")
        if self.maxiter is None and self.tol is None:
            raise ValueError("MMPS: fields 'maxiter' and 'tol' are both None; give a tolerance or an iteration count")

    def guide(
        self,
        z_t: Tensor,
        z_hat: Tensor,
        y_hat: Tensor,
        observe: Callable[[Tensor], Tensor],
        y: Tensor,
        noise: NoiseModel,
        sigma: Tensor,
        mask: Tensor | None = None,
        names: dict[str, slice] | None = None,
        where: str = "MMPS",
        unit_rows: Tensor | None = None,
        warm: WarmStart | None = None,
    ) -> tuple[Tensor, GuidanceReport]:
        r"""One guided denoiser evaluation.

        Args:
            z_t: the noisy state ``[*N, *event]``, a leaf with ``requires_grad`` (``N`` batch dims).
            z_hat: the denoiser output computed from ``z_t`` with its graph.
            y_hat: ``observe(z_hat)`` ``[*N, M]`` with its graph from ``z_hat``.
            observe: the observation map ``[*N, *event] -> [*N, M]`` (differentiable, forward-mode capable).
            y: observations, broadcastable to ``[*N, M]``.
            noise: the observation noise (size ``M``).
            sigma: noise levels ``[*N]``.
            mask: optional bool ``[*N, M]``: rows used by each system (others are ignored).
            names: operator name -> slice of ``M`` for messages.
            where: context for messages (e.g. ``"step 3 (sigma=1.2)"``).
            unit_rows: optional bool ``[M]``: rows observing the diffusion variable directly (known states); their
                scaling adds the unit-variance prior term :math:`\sigma^2/(1+\sigma^2)`, which keeps the system
                well conditioned when their noise is tiny.
            warm: the previous solution of these systems, updated in place (used when ``warm_start``).

        Returns:
            ``(E[z | z_t, y], report)``, the guided estimate detached.
        """
        f64, dt = torch.float64, z_hat.dtype
        names = _names_or_default(names, y_hat.shape[-1])
        s2 = _broadcast_sigma(sigma, z_hat) ** 2
        r = y.to(f64) - y_hat.detach().to(f64)
        if mask is not None:
            r = torch.where(mask, r, torch.zeros_like(r))
        _check_finite(r, names, "the residual y - H(E[x|x_t])", where)
        var0 = noise.variance().to(device=r.device)

        def cov_obs(u: Tensor) -> Tensor:
            """sigma^2 J^T A^T u: one backward pass from y_hat through z_hat to z_t."""
            return s2 * torch.autograd.grad(y_hat, z_t, u.to(dt), retain_graph=True)[0]

        jvp_obs = _tangent_map(observe, z_hat)

        w = None  # IRLS weights (Gaussian models: all ones, left out)
        if self.irls and not noise.gaussian:
            # robust models standardise the residual by the full innovation variance R + diag(A V_t A^T), not by R
            # alone: at large sigma the prior's spread would otherwise make every observation look like an outlier
            bvar = _predicted_variance(lambda u: jvp_obs(cov_obs(u)).to(f64), r, mask, self.probes)
            w = noise.irls_weights(r * (var0 / (var0 + bvar)).sqrt())
        var = var0 if w is None else var0 / w
        if unit_rows is not None:
            s2r = (torch.as_tensor(sigma, dtype=f64, device=r.device) ** 2)[..., None]
            var = var + unit_rows.to(r.device) * (s2r / (1 + s2r))
        if mask is not None:
            var = torch.where(mask, var, torch.ones_like(var))
        dis = var.rsqrt()

        # sigma^2 J^T A^T u of each product, combined into the step at the end (no final VJP), while they fit in
        # MAX_PRODUCTS_BYTES; past that, the list is dropped and the VJP runs
        products: list[Tensor] | None = []

        def operator(u_s: Tensor) -> Tensor:
            u = u_s * dis
            if mask is not None:
                u = torch.where(mask, u, torch.zeros_like(u))
            v_z = cov_obs(u)
            nonlocal products
            if products is not None:
                products.append(v_z)
                if sum(t.numel() * t.element_size() for t in products) > MAX_PRODUCTS_BYTES:
                    products = None
            out = noise.cov_matvec(u, w).to(f64) + jvp_obs(v_z).to(f64)
            out = out * dis
            if mask is not None:
                out = torch.where(mask, out, u_s)
            return out

        b = r * dis
        cap = min(ADAPTIVE_MAXITER, b.shape[-1]) if self.maxiter is None else self.maxiter
        guess = warm.guess(b) if (warm is not None and self.warm_start) else None
        x0 = None if guess is None else guess / dis
        u_s, info = solve(self.solver, operator, b, x0, tol=self.tol, maxiter=cap, scale_x0=True)
        u = u_s * dis
        _check_finite(u, names, "the MMPS solve's solution", where)
        if warm is not None and self.warm_start:
            warm.u = u.detach()
        combined = None if products is None else _from_products(products, info.coefficients)
        if combined is None or not bool(combined[1].all()):
            step = s2 * torch.autograd.grad(y_hat, z_t, u.to(dt))[0]
            if combined is not None:  # the combination where it does not cancel: as if the VJP had not run
                ok = combined[1].reshape(*combined[1].shape, *([1] * (step.dim() - combined[1].dim())))
                step = torch.where(ok, combined[0].to(step.dtype), step)
        else:
            step = combined[0]
        out = z_hat.detach() + step.to(dt)
        _check_finite(out.reshape(-1, 1), {"guided state": slice(0, 1)}, "the guided denoiser output", where)
        per_op = {}
        if info.residual_vector is not None:  # None: fixed-iteration GMRES, nothing to report per operator
            if len(names) == 1 and next(iter(names.values())) == slice(0, b.shape[-1]):
                per_op[next(iter(names))] = float(info.residual.max())  # one operator: the solve's own residual
            else:
                bn = b.norm(dim=-1, keepdim=True)
                for n, s in names.items():
                    rn = info.residual_vector[..., s].norm(dim=-1)
                    bs = b[..., s].norm(dim=-1)
                    per_op[n] = float(
                        torch.where(bs > 0, rn / bs.clamp_min(1e-300), rn / bn[..., 0].clamp_min(1e-300)).max()
                    )
        report = GuidanceReport(info.converged, info.iterations, float(info.residual.max()), per_op, where)
        return out, report


def _from_products(products: list[Tensor], coefficients: Tensor | None) -> tuple[Tensor, Tensor] | None:
    r""":math:`\sigma^2 J^\top \hat A^\top u` for the solve's solution :math:`u = \sum_i c_i v_i` without a VJP:
    each product computed :math:`\sigma^2 J^\top \hat A^\top v_i` on the way (``products``), which is linear in
    :math:`v_i`, and the solver reports the :math:`c_i` (:attr:`~appa_core.linalg.SolveInfo.coefficients`).

    Returns ``(step, ok)``, ``ok`` ``[*N]`` False where the combination cancels by more than
    :data:`MAX_CANCELLATION` (its rounding would exceed the products' own; the caller runs the VJP there), or
    ``None`` when there is nothing to combine. Accumulates one product at a time (one state-sized float64 buffer)."""
    if coefficients is None or not products or coefficients.shape[-1] != len(products):
        return None
    n_batch = coefficients.dim() - 1
    event = tuple(range(n_batch, products[0].dim()))
    if len(products) == 1:  # c v: nothing to cancel
        c = coefficients[..., 0]
        step = c.reshape(*c.shape, *([1] * len(event))) * products[0].to(torch.float64)
        return step, torch.ones(c.shape, dtype=torch.bool, device=c.device)
    step = torch.zeros(products[0].shape, dtype=torch.float64, device=products[0].device)
    gross = torch.zeros(coefficients.shape[:-1], dtype=torch.float64, device=coefficients.device)
    for i, v in enumerate(products):
        c = coefficients[..., i]
        v64 = v.to(torch.float64)
        step += c.reshape(*c.shape, *([1] * len(event))) * v64
        gross += c.abs() * torch.linalg.vector_norm(v64, dim=event)
    ok = gross <= MAX_CANCELLATION * torch.linalg.vector_norm(step, dim=event)
    return step, ok


@attrs.frozen
class ObservationMap:
    r"""An observation map ``fn(z) -> y`` with a cheaper linearization than ``torch.func.jvp`` of ``fn``.

    ``linearize(z)`` returns the tangent map ``v -> d fn(z) v`` (or ``None`` when it has none here). MMPS calls it
    once per guided call, at :math:`\hat z`, and the tangent map once per solver iteration (and once per
    Hutchinson probe for robust noise models). ``torch.func.jvp``
    would rerun the primal pass every iteration and, through each convolution, also convolve the primal with
    the weights' zero tangent. :class:`PosteriorDenoiser` builds one from the prior's ``linearize_decode`` (when
    the prior has it) and the operators' tangent-linear maps (:meth:`~appa_core.obs.ObsOperator.linearize`). Any
    callable works where an ``observe`` is expected; this one only adds the shortcut.
    """

    fn: Callable[[Tensor], Tensor]
    linearize: Callable[[Tensor], Callable[[Tensor], Tensor] | None]

    def __call__(self, z: Tensor) -> Tensor:
        return self.fn(z)

    @classmethod
    def through_decoder(cls, prior: DiffusionPrior, observe_states: Callable[[Tensor], Tensor]) -> ObservationMap:
        """``z -> observe_states(prior.decode(z))`` (e.g. an :class:`~appa_core.ObsSet` of states ``[B, T, C, H, W]``),
        linearized through ``prior.linearize_decode`` when the prior has it, then through ``observe_states``'s
        ``linearize`` (an :class:`~appa_core.ObsSet`, an operator) or ``torch.func.jvp`` of it."""

        def linearize(z: Tensor) -> Callable[[Tensor], Tensor] | None:
            linearize_decode = getattr(prior, "linearize_decode", None)
            if linearize_decode is None:
                return None
            x, dx_of = linearize_decode(z)
            h = _tangent_map(observe_states, x)
            return lambda v: h(dx_of(v))

        return cls(lambda z: observe_states(prior.decode(z)), linearize)


def _tangent_map(f: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[Tensor], Tensor]:
    """``v -> d f(x) v``: ``f.linearize(x)`` when ``f`` has one that gives a map here (an :class:`ObservationMap`,
    an :class:`~appa_core.ObsSet`, an operator), else ``torch.func.jvp`` of ``f`` at ``x`` per call."""
    x = x.detach()
    linearize = getattr(f, "linearize", None)
    lin = None if linearize is None else linearize(x)
    if lin is not None:
        return lin
    return lambda v: torch.func.jvp(f, (x,), (v,))[1]


@attrs.frozen
class DPS:
    """DPS configuration: step size ``zeta`` on the whitened residual norm (see module docs)."""

    zeta: float = 0.1
    irls: bool = True

    def guide(
        self,
        z_t: Tensor,
        z_hat: Tensor,
        y_hat: Tensor,
        observe: Callable[[Tensor], Tensor],
        y: Tensor,
        noise: NoiseModel,
        sigma: Tensor,
        mask: Tensor | None = None,
        names: dict[str, slice] | None = None,
        where: str = "DPS",
        unit_rows: Tensor | None = None,
        warm: WarmStart | None = None,
    ) -> tuple[Tensor, GuidanceReport]:
        """As :meth:`MMPS.guide`, with a single VJP and no solve (``unit_rows`` and ``warm`` are not used)."""
        names = _names_or_default(names, y_hat.shape[-1])
        r = y.to(y_hat.dtype) - y_hat
        if mask is not None:
            r = torch.where(mask, r, torch.zeros_like(r))
        _check_finite(r.detach(), names, "the residual y - H(E[x|x_t])", where)
        w = noise.irls_weights(r.detach().double()) if self.irls else torch.ones_like(r, dtype=torch.float64)
        var = (noise.variance().to(device=r.device) / w).to(r.dtype)
        norm = torch.sqrt((r**2 / var).sum(-1) + 1e-30)
        g = torch.autograd.grad(norm.sum(), z_t)[0]
        step = self.zeta * g
        ratio = float(step.norm() / (z_hat.detach().norm() + z_hat[0].numel() ** 0.5))
        if not ratio < DPS_DIVERGENCE:  # a step many times the state: the sample would be garbage, not a posterior
            raise GuidanceError(
                f"{where}: DPS diverges: the guidance step is {ratio:.3g} times the size of the state (limit "
                f"{DPS_DIVERGENCE:g}); lower zeta (now {self.zeta:g}) or use MMPS"
            )
        out = z_hat.detach() - step
        _check_finite(out.reshape(-1, 1), {"guided state": slice(0, 1)}, "the guided denoiser output", where)
        return out, GuidanceReport(True, 0, float("nan"), {}, where)


def guided_denoiser(
    denoise: Callable[[Tensor, Tensor], Tensor],
    observe: Callable[[Tensor], Tensor],
    y: Tensor,
    noise: NoiseModel,
    guidance: MMPS | DPS | None = None,
    names: dict[str, slice] | None = None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """The simplest form: ``d(z_t [B, *], sigma [B]) -> E[z | z_t, y]`` for any denoiser and observation map.

    Args:
        denoise: ``denoise(z_t, sigma) -> E[z | z_t]`` (differentiable).
        observe: ``observe(z) -> [B, M]`` (e.g. ``lambda z: obsset(prior.decode(z))``; with
            ``ObservationMap.through_decoder(prior, obsset)`` each solver iteration runs the linearized decoder).
        y: ``[M]`` or ``[B, M]``; noise: size ``M``; guidance: default ``MMPS()``.

    The returned function is meant for one sampling trajectory: with ``MMPS(warm_start=True)`` each call's solve
    starts from the previous call's solution (use a new function per trajectory, or ``warm_start=False`` for
    independent calls).
    """
    guidance = guidance or MMPS()
    warm = WarmStart()

    def d(z_t: Tensor, sigma: Tensor) -> Tensor:
        with torch.enable_grad():
            leaf = z_t.detach().requires_grad_(True)
            z_hat = denoise(leaf, sigma)
            y_hat = observe(z_hat)
            out, _ = guidance.guide(leaf, z_hat, y_hat, observe, y, noise, sigma, names=names, warm=warm)
        return out

    return d


@attrs.define
class KnownStates:
    """States known in diffusion space (e.g. encoded initial conditions, or the previous forecast window).

    Attributes:
        index: frame time indices ``[n]`` of the known states.
        values: ``[B or 1, n, *event_rest]`` in diffusion units.
        std: observation-error std in diffusion units (Appa: :math:`\\sigma_z` / latent std).
    """

    index: np.ndarray
    values: Tensor
    std: float = 1e-2

    @property
    def size(self) -> int:
        return int(self.values[0].numel())


def _latent_rows(known: KnownStates) -> np.ndarray:
    per = int(known.values[0, 0].numel())
    return np.repeat(np.asarray(known.index, dtype=np.int64), per)


def observation_time_ranges(
    obs: ObsSet, prior: DiffusionPrior, length: int, generator: torch.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """For each row of a prepared ``obs`` (on ``length`` frame times), the first and last state it depends on.

    Linear operators: from the sparse matrix's columns. Nonlinear operators: by forward-mode probing (one JVP
    per frame time, with a tangent supported on that time only) at a plausible decoded state. Rows that depend on
    no state get ``(0, 0)``.

    Returns:
        ``(tmin, tmax)`` int arrays ``[M]``.
    """
    tmin_all, tmax_all = [], []
    shape = (length, prior.spec.n_channels, *prior.grid.shape)
    chw = int(np.prod(shape[1:]))
    probe = None
    for op in obs:
        m = op.size
        tmin = np.full(m, length, dtype=np.int64)
        tmax = np.full(m, -1, dtype=np.int64)
        if op.linear:
            a = op.matrix().tocoo()
            t = a.col.astype(np.int64) // chw
            np.minimum.at(tmin, a.row, t)
            np.maximum.at(tmax, a.row, t)
        else:
            if probe is None:
                z = 0.1 * torch.randn((length, *prior.event_shape(1)), generator=generator, dtype=torch.float64)
                dtype = getattr(prior, "dtype", torch.float32)
                with torch.no_grad():
                    probe = prior.decode(z.to(dtype)).reshape(1, *shape).to(torch.float64)
            for tau in range(length):
                tan = torch.zeros_like(probe)
                tan[:, tau] = torch.randn(shape[1:], generator=generator, dtype=torch.float64)
                _, jv = torch.func.jvp(op, (probe,), (tan,))
                dep = (jv[0].abs() > 0).numpy()
                tmin[dep] = np.minimum(tmin[dep], tau)
                tmax[dep] = np.maximum(tmax[dep], tau)
        none = tmax < 0
        tmin[none], tmax[none] = 0, 0
        tmin_all.append(tmin)
        tmax_all.append(tmax)
    return np.concatenate(tmin_all), np.concatenate(tmax_all)


class PosteriorDenoiser:
    """The guided denoiser the sampler calls on (part of) a trajectory, with blankets and known states.

    The sampler's state ``z`` ``[B, Lz, *event_rest]`` covers frame times ``[offset, offset + Lz)`` of a frame of
    ``len(frame_times)`` states on which the operators were prepared. It is split into windows of ``size`` states
    starting at ``starts`` (frame indices); each window is denoised independently by the prior (with its own
    times), guided by the observation rows that lie entirely inside it (``mask``), and the trajectory is
    re-assembled from each window's ``keep`` range (frame indices, a partition of the state's range).

    Args:
        prior: the diffusion prior.
        frame_times: ``datetime64[ns]`` ``[L]``.
        starts, size, keep, offset, length: the window layout (see above).
        obs: prepared operators (on ``frame_times``) or ``None``.
        known: known states or ``None``.
        row_range: ``(tmin, tmax)`` per row of ``obs`` (see :func:`observation_time_ranges`).
        row_allowed: bool ``[M_obs]``: rows this call may use (autoregressive chunks use each row once).
        guidance: :class:`MMPS`, :class:`DPS` or ``None`` (unguided).
        on_failure: ``"warn"`` (unconverged solves are listed in :attr:`failures`; the sampler warns once),
            ``"raise"`` (raise :class:`GuidanceError` at once) or ``"ignore"``.
        windowed: denoise and guide the windows one after the other, each with only its own observations
            (:meth:`~appa_core.obs.ObsOperator.select` of its rows, prepared on its ``size`` times) and only its
            own graph: memory is bounded by one window, whatever the trajectory's length. ``None`` (default): when
            there are several windows and every operator has observation times and can select its rows
            (:meth:`~appa_core.obs.ObsOperator.observation_times`, :meth:`~appa_core.obs.ObsOperator.select`);
            ``False``: all windows at once, on operators prepared on the whole frame (memory grows with windows x
            frame length). The two agree to rounding for Gaussian noise (the windows' systems are independent in
            both); robust models' Hutchinson estimates use other probes.

    Every guided call's :class:`GuidanceReport` is kept in :attr:`reports` (windowed: one report per call, the
    worst over the windows).
    """

    def __init__(
        self,
        prior: DiffusionPrior,
        frame_times: np.ndarray,
        starts: Sequence[int],
        size: int,
        keep: Sequence[tuple[int, int]],
        offset: int,
        length: int,
        obs: ObsSet | None = None,
        known: KnownStates | None = None,
        row_range: tuple[np.ndarray, np.ndarray] | None = None,
        row_allowed: np.ndarray | None = None,
        guidance: MMPS | DPS | None = None,
        on_failure: str = "warn",
        windowed: bool | None = None,
    ) -> None:
        if on_failure not in ("warn", "raise", "ignore"):
            raise ValueError(f"PosteriorDenoiser: field 'on_failure' has value {on_failure!r}")
        self.prior, self.frame_times = prior, frame_times
        self.starts, self.size, self.keep = list(starts), int(size), list(keep)
        self.offset, self.length = int(offset), int(length)
        self.obs, self.known, self.guidance, self.on_failure = obs, known, guidance, on_failure
        self.step: int = 0
        self.reports: list[GuidanceReport] = []
        self.calls = 0
        frame_len = len(frame_times)
        self._embed = len(self.starts) > 1 or self.size != frame_len
        # rows and masks
        m_obs = obs.size if obs is not None else 0
        m_k = known.size if known is not None else 0
        self.names: dict[str, slice] = dict(obs.slices) if obs is not None else {}
        if known is not None:
            self.names["known_states"] = slice(m_obs, m_obs + m_k)
        tmin = np.zeros(0, dtype=np.int64)
        tmax = np.zeros(0, dtype=np.int64)
        if obs is not None:
            if row_range is None:
                row_range = observation_time_ranges(obs, prior, frame_len)
            tmin, tmax = row_range
        allowed = np.ones(m_obs, dtype=bool) if row_allowed is None else np.asarray(row_allowed, dtype=bool)
        if known is not None:
            kr = _latent_rows(known)
            tmin, tmax = np.concatenate([tmin, kr]), np.concatenate([tmax, kr])
            allowed = np.concatenate([allowed, np.ones(m_k, dtype=bool)])
        masks = [allowed & (tmin >= a) & (tmax < a + self.size) for a in self.starts]
        self.mask = torch.as_tensor(np.stack(masks)) if masks and tmin.size else None  # [W, M]
        self.used_rows = np.any(np.stack(masks), axis=0) if masks and tmin.size else np.zeros(0, dtype=bool)
        self.active = guidance is not None and self.mask is not None and bool(self.mask.any())
        if self.active:
            models: list[NoiseModel] = []
            if obs is not None:
                models.append(obs.noise)
            if known is not None:
                models.append(DiagonalGaussian(known.std).expand(m_k))
            self.noise: NoiseModel = models[0] if len(models) == 1 else BlockDiagonal(models)
        self._fill: Tensor | None = None
        self._warm = [WarmStart() for _ in range(len(self.starts) + 1)]  # per window (windowed), then all at once
        self._unit_rows = None
        if known is not None:
            self._unit_rows = torch.cat([torch.zeros(m_obs), torch.ones(m_k)]).to(torch.float64)
        self.windows: list[_Window | None] | None = None
        if self.active and (windowed or (windowed is None and len(self.starts) > 1)):
            assert self.mask is not None
            try:
                self.windows = [_Window.build(self, a, self.mask[i].numpy(), m_obs) for i, a in enumerate(self.starts)]
            except TypeError:  # an operator that cannot select its rows: all windows at once
                if windowed:
                    raise
                self.windows = None

    @property
    def failures(self) -> list[GuidanceReport]:
        """The reports of unconverged solves (empty with ``on_failure="ignore"``)."""
        return [] if self.on_failure == "ignore" else [r for r in self.reports if not r.converged]

    # -------------------------------------------------------------- helpers
    def _fill_state(self, like: Tensor) -> Tensor:
        if self._fill is None:
            ev1 = self.prior.event_shape(1)
            with torch.no_grad():
                x0 = self.prior.decode(torch.zeros((1, *ev1), dtype=like.dtype, device=like.device))
            self._fill = x0.detach()
        return self._fill.to(dtype=like.dtype, device=like.device)

    def _embed_time(self, parts: Tensor, fill: Tensor) -> Tensor:
        """``[W, N, K, *] -> [W*N, L, *]`` placing window ``w`` at ``starts[w]``, ``fill`` ``[1, 1, *]`` elsewhere."""
        frame_len = len(self.frame_times)
        out = []
        for i, a in enumerate(self.starts):
            n = parts.shape[1]
            before = fill.expand(n, a, *fill.shape[2:])
            after = fill.expand(n, frame_len - a - self.size, *fill.shape[2:])
            out.append(torch.cat([before, parts[i], after], dim=1))
        return torch.cat(out, dim=0)

    def _observe(self, zh: Tensor) -> Tensor:
        """``[W, B, K, *event_rest] -> [W, B, M]``."""
        nw, b = zh.shape[:2]
        ys = []
        if self.obs is not None:
            x = self.prior.decode(zh.reshape(nw * b, *zh.shape[2:]))
            ys.append(self.obs(self._frame(x.reshape(nw, b, *x.shape[1:]), self._fill_state(x))).reshape(nw, b, -1))
        if self.known is not None:
            ys.append(self._known_rows(zh))
        return torch.cat(ys, dim=-1)

    def _frame(self, x: Tensor, fill: Tensor) -> Tensor:
        """``[W, B, K, *] -> [W*B, L or K, *]``: the windows' states placed in the frame (``fill`` elsewhere)."""
        return self._embed_time(x, fill) if self._embed else x.reshape(-1, *x.shape[2:])

    def _known_rows(self, zh: Tensor) -> Tensor:
        """The known-state rows ``[W, B, M_known]`` of ``zh`` (linear in ``zh``)."""
        assert self.known is not None
        nw, b = zh.shape[:2]
        z_frame = self._frame(zh, torch.zeros((1, 1, *zh.shape[3:]), dtype=zh.dtype, device=zh.device))
        idx = torch.as_tensor(np.asarray(self.known.index), device=zh.device)
        return z_frame[:, idx].reshape(nw, b, -1)

    def _linearize_observe(self, zh: Tensor) -> Callable[[Tensor], Tensor] | None:
        """The tangent map of :meth:`_observe` at ``zh`` (see :class:`ObservationMap`); ``None`` when the prior has
        no ``linearize_decode``."""
        linearize_decode = getattr(self.prior, "linearize_decode", None)
        if self.obs is not None and linearize_decode is None:
            return None
        nw, b = zh.shape[:2]
        obs = self.obs
        if obs is not None:
            x, dx_of = linearize_decode(zh.reshape(nw * b, *zh.shape[2:]))
            h = obs.linearize(self._frame(x.reshape(nw, b, *x.shape[1:]), self._fill_state(x)))

        def tangent(v: Tensor) -> Tensor:
            ys = []
            if obs is not None:
                dx = dx_of(v.reshape(nw * b, *v.shape[2:]))
                dx_frame = self._frame(dx.reshape(nw, b, *dx.shape[1:]), torch.zeros_like(self._fill_state(dx)))
                ys.append(h(dx_frame).reshape(nw, b, -1))
            if self.known is not None:
                ys.append(self._known_rows(v))
            return torch.cat(ys, dim=-1)

        return tangent

    def _targets(self, nw: int, b: int, like: Tensor) -> Tensor:
        ys = []
        if self.obs is not None:
            ys.append(self.obs.values.to(device=like.device).expand(nw, b, -1))
        if self.known is not None:
            kv = self.known.values.reshape(self.known.values.shape[0], -1).to(torch.float64).to(like.device)
            ys.append(kv.expand(b, -1).expand(nw, b, -1))
        return torch.cat(ys, dim=-1)

    # -------------------------------------------------------------- call
    def __call__(self, z: Tensor, sigma: Tensor) -> Tensor:
        """``z`` ``[B, Lz, *event_rest]``, ``sigma`` ``[B]`` -> guided :math:`E[z \\mid z_t, y]`."""
        self.calls += 1
        b = z.shape[0]
        sig0 = float(sigma.reshape(-1)[0])
        where = f"step {self.step} (sigma={sig0:.4g})"
        if self.windows is not None:
            return self._call_windowed(z, sigma, where)
        zw = torch.stack([z[:, a - self.offset : a - self.offset + self.size] for a in self.starts]).detach()
        with torch.enable_grad():
            if self.active:
                zw.requires_grad_(True)
            zh = torch.stack(
                [
                    self.prior.denoise(zw[i], sigma, self.frame_times[a : a + self.size])
                    for i, a in enumerate(self.starts)
                ]
            )
            if not bool(torch.isfinite(zh).all()):
                raise GuidanceError(f"{where}: the prior's denoiser returned non-finite values")
            if self.active:
                assert self.guidance is not None and self.mask is not None
                nw = len(self.starts)
                y_hat = self._observe(zh)
                y = self._targets(nw, b, y_hat)
                mask = self.mask[:, None, :].to(y_hat.device).expand(nw, b, -1)
                sig_wb = sigma.reshape(1, b).expand(nw, b)
                out, report = self.guidance.guide(
                    zw,
                    zh,
                    y_hat,
                    ObservationMap(self._observe, self._linearize_observe),
                    y,
                    self.noise,
                    sig_wb,
                    mask,
                    self.names,
                    where,
                    self._unit_rows,
                    self._warm[-1],
                )
                self.reports.append(report)
                if not report.converged and self.on_failure == "raise":
                    raise GuidanceError(_failure_message([report], self.calls, self.guidance))
            else:
                out = zh.detach()
        parts = [out[i, :, lo - a : hi - a] for i, (a, (lo, hi)) in enumerate(zip(self.starts, self.keep, strict=True))]
        return torch.cat(parts, dim=1)

    def _call_windowed(self, z: Tensor, sigma: Tensor, where: str) -> Tensor:
        """One window after the other, each with its own observations and graph (see ``windowed``)."""
        assert self.windows is not None and self.guidance is not None
        b = z.shape[0]
        outs, reports = [], []
        for a, win, warm in zip(self.starts, self.windows, self._warm[:-1], strict=True):
            zi = z[:, a - self.offset : a - self.offset + self.size].detach()
            times = self.frame_times[a : a + self.size]
            if win is None:  # no observation in this window
                with torch.no_grad():
                    outs.append(self.prior.denoise(zi, sigma, times).detach())
                continue
            with torch.enable_grad():
                leaf = zi[None].requires_grad_(True)
                zh = self.prior.denoise(leaf[0], sigma, times)[None]
                if not bool(torch.isfinite(zh).all()):
                    raise GuidanceError(f"{where}: the prior's denoiser returned non-finite values")
                y_hat = win.observe(zh)
                y = win.targets(b, y_hat)
                out, report = self.guidance.guide(
                    leaf, zh, y_hat, ObservationMap(win.observe, win.linearize), y, win.noise, sigma.reshape(1, b),
                    None, win.names, where, win.unit_rows, warm,
                )  # fmt: skip
            reports.append(report)
            outs.append(out[0])
            del leaf, zh, y_hat, y  # this window's graph: freed before the next window's is built
        if reports:
            per_op: dict[str, float] = {}
            for r in reports:
                for k, v in r.operator_residuals.items():
                    per_op[k] = max(per_op.get(k, 0.0), v)
            report = GuidanceReport(
                all(r.converged for r in reports),
                max(r.iterations for r in reports),
                max(r.residual for r in reports),
                per_op,
                where,
            )
            self.reports.append(report)
            if not report.converged and self.on_failure == "raise":
                raise GuidanceError(_failure_message([report], self.calls, self.guidance))
        parts = [o[:, lo - a : hi - a] for o, a, (lo, hi) in zip(outs, self.starts, self.keep, strict=True)]
        return torch.cat(parts, dim=1)


@attrs.define(eq=False)
class _Window:
    """One window's observations for :meth:`PosteriorDenoiser._call_windowed`: its rows of every operator
    (selected and prepared on the window's times) and its known states, with their noise and names."""

    prior: DiffusionPrior
    ops: list[Any]
    known: KnownStates | None
    names: dict[str, slice]
    noise: NoiseModel
    unit_rows: Tensor | None
    values: Tensor

    @classmethod
    def build(cls, den: PosteriorDenoiser, start: int, mask: np.ndarray, m_obs: int) -> _Window | None:
        times = den.frame_times[start : start + den.size]
        ops, names, models, values, pos = [], {}, [], [], 0
        if den.obs is not None:
            for op in den.obs.operators:  # TypeError for operators without times: they cannot move to a window
                op.observation_times()
            rows = np.flatnonzero(mask[:m_obs])
            for name, op in zip(den.obs.names, den.obs.operators, strict=True):
                sl = den.obs.slices[name]
                local = rows[(rows >= sl.start) & (rows < sl.stop)] - sl.start
                if local.size == 0:
                    continue
                sub = op.select(local).prepare(op.grid, op.spec, times)  # type: ignore[arg-type]
                ops.append(sub)
                names[name] = slice(pos, pos + sub.size)
                models.append(sub.noise)
                values.append(sub.values)
                pos += sub.size
        known, unit_rows = None, None
        if den.known is not None:
            index = np.asarray(den.known.index)
            sel = np.flatnonzero((index >= start) & (index < start + den.size))
            if sel.size:
                known = KnownStates(index[sel] - start, den.known.values[:, sel], den.known.std)
                m_k = known.size
                names["known_states"] = slice(pos, pos + m_k)
                models.append(DiagonalGaussian(known.std).expand(m_k))
                unit_rows = torch.cat([torch.zeros(pos), torch.ones(m_k)]).to(torch.float64)
        if not models:
            return None
        noise = models[0] if len(models) == 1 else BlockDiagonal(models)
        obs_values = torch.cat(values).to(torch.float64) if values else torch.zeros(0, dtype=torch.float64)
        return cls(den.prior, ops, known, names, noise, unit_rows, obs_values)

    def observe(self, zh: Tensor) -> Tensor:
        """``[1, B, K, *event_rest] -> [1, B, M_w]``."""
        ys = []
        if self.ops:
            x = self.prior.decode(zh[0])
            ys.extend(op(x) for op in self.ops)
        if self.known is not None:
            ys.append(self._known_rows(zh))
        return torch.cat(ys, dim=-1)[None]

    def _known_rows(self, zh: Tensor) -> Tensor:
        """The known-state rows ``[B, M_known]`` of ``zh`` ``[1, B, K, *]`` (linear in ``zh``)."""
        assert self.known is not None
        idx = torch.as_tensor(np.asarray(self.known.index), device=zh.device)
        return zh[0][:, idx].reshape(zh.shape[1], -1)

    def linearize(self, zh: Tensor) -> Callable[[Tensor], Tensor] | None:
        """The tangent map of :meth:`observe` at ``zh`` (``None`` when the prior has no ``linearize_decode``)."""
        linearize_decode = getattr(self.prior, "linearize_decode", None)
        if self.ops and linearize_decode is None:
            return None
        if self.ops:
            x, dx_of = linearize_decode(zh[0])
            maps = [op.linearize(x) for op in self.ops]

        def tangent(v: Tensor) -> Tensor:
            ys = []
            if self.ops:
                dx = dx_of(v[0])
                ys.extend(h(dx) for h in maps)
            if self.known is not None:
                ys.append(self._known_rows(v))
            return torch.cat(ys, dim=-1)[None]

        return tangent

    def targets(self, b: int, like: Tensor) -> Tensor:
        ys = [self.values.to(device=like.device).expand(b, -1)] if self.ops else []
        if self.known is not None:
            kv = self.known.values.reshape(self.known.values.shape[0], -1).to(torch.float64).to(like.device)
            ys.append(kv.expand(b, -1))
        return torch.cat(ys, dim=-1)[None]


def _failure_message(reports: list[GuidanceReport], calls: int, guidance: object) -> str:
    worst = max(reports, key=lambda r: r.residual)
    solver = getattr(guidance, "solver", "solver")
    tol = getattr(guidance, "tol", None)
    ops = ", ".join(f"{k}: {v:.3g}" for k, v in worst.operator_residuals.items())
    return (
        f"MMPS: the {solver} solve did not reach tol={tol} in {len(reports)} of {calls} guided denoiser calls; "
        f"worst at {worst.where}: relative residual {worst.residual:.3g} after {worst.iterations} iterations; "
        f"per-operator relative residuals {{{ops}}}. Raise solver_iters (or use solver='gmres' for learned priors)."
    )


def solve_summary(reports: Sequence[GuidanceReport]) -> dict[str, object] | None:
    """Residuals and iterations of the guided calls (``None`` without guidance): ``calls``, ``max_iterations``,
    ``mean_iterations``, ``max_residual`` (worst relative residual, scaled units), ``unconverged`` and the
    worst residual per operator."""
    if not reports:
        return None
    its = [r.iterations for r in reports]
    res = [r.residual for r in reports if np.isfinite(r.residual)]
    per_op: dict[str, float] = {}
    for r in reports:
        for k, v in r.operator_residuals.items():
            per_op[k] = max(per_op.get(k, 0.0), float(v))
    return {
        "calls": len(reports),
        "max_iterations": int(max(its)),
        "mean_iterations": float(np.mean(its)),
        "max_residual": float(max(res)) if res else float("nan"),
        "unconverged": sum(not r.converged for r in reports),
        "operator_residuals": per_op,
    }


def failure_summary(den: PosteriorDenoiser) -> str | None:
    """A one-line summary of the unconverged solves of ``den`` (``None`` if there were none)."""
    if not den.failures:
        return None
    return _failure_message(den.failures, den.calls, den.guidance)
