r"""**MMPS** (Rozet et al., 2024). For observations :math:`y = \mathcal{A}(z) + \eta`, :math:`\eta \sim
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
(:class:`~appa_core.guidance.ObservationMap`: the latent prior's decoder is linearized once per call, then each
product costs one convolution per decoder convolution), else by forward-mode AD (``torch.func.jvp``);
:math:`\hat A^\top u` and
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

This module holds the configuration (:class:`MMPS`), the warm start (:class:`WarmStart`) and the combination of
the solver's products into the guided step (no final VJP).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
from torch import Tensor

from appa_core.guidance.observation_map import _tangent_map
from appa_core.guidance.report import GuidanceReport, _check_finite, _names_or_default
from appa_core.linalg import solve
from appa_core.obs.errors import NoiseModel

__all__ = ["ADAPTIVE_MAXITER", "MAX_CANCELLATION", "MAX_PRODUCTS_BYTES", "MMPS", "WarmStart"]

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


@attrs.define(eq=False)
class WarmStart:
    """The previous solve's solution :math:`u` ``[*N, M]`` (float64, unscaled), the initial guess of the next one.

    One per sequence of guided calls on the same systems (a :class:`~appa_core.guidance.PosteriorDenoiser` keeps
    one per window); a guess of another shape (another batch, another window) is ignored.
    """

    u: Tensor | None = None

    def guess(self, like: Tensor) -> Tensor | None:
        """The stored solution if it fits ``like`` ``[*N, M]``, else ``None``."""
        if self.u is None or self.u.shape != like.shape:
            return None
        return self.u


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
        tangent: Callable[[Tensor], Tensor] | None = None,
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
            tangent: the tangent map of ``observe`` at ``z_hat`` when the caller has it (e.g. from the pass that
                computed ``y_hat``: :meth:`~appa_core.guidance.ObservationMap.with_tangent`); ``None``: linearized
                here.

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

        jvp_obs = tangent if tangent is not None else _tangent_map(observe, z_hat)

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
