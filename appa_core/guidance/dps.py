r"""**DPS** (Chung et al., 2023), as a guided denoiser: :math:`\hat z - \zeta\,\nabla_{z_t}
\|\Sigma_y^{-1/2}(y - \mathcal{A}(\hat z))\|_2` per member (one VJP, no solve; approximate even for Gaussians).
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import torch
from torch import Tensor

from appa_core.guidance.mmps import WarmStart
from appa_core.guidance.report import GuidanceError, GuidanceReport, _check_finite, _names_or_default
from appa_core.obs.errors import NoiseModel

__all__ = ["DPS", "DPS_DIVERGENCE"]

#: A DPS step larger than this many times the state's size (plus sqrt(D)) is reported as divergence.
DPS_DIVERGENCE = 100.0


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
        tangent: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[Tensor, GuidanceReport]:
        """As :meth:`~appa_core.guidance.MMPS.guide`, with a single VJP and no solve (``unit_rows``, ``warm`` and
        ``tangent`` are not used)."""
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
