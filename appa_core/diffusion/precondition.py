r"""EDM preconditioning (Karras et al., 2022) for a variance-exploding denoiser.

For data of unit variance and :math:`x_t = x + \sigma z`, the denoiser is

.. math:: d(x_t, \sigma) = c_{skip}(\sigma) x_t + c_{out}(\sigma) F(c_{in}(\sigma) x_t, c_{noise}(\sigma))

with :math:`c_{skip} = 1/(1+\sigma^2)`, :math:`c_{out} = \sigma/\sqrt{1+\sigma^2}`,
:math:`c_{in} = 1/\sqrt{1+\sigma^2}`, :math:`c_{noise} = \log(\sigma)/4`. The training loss
:math:`\lambda(\sigma)\,\|d(x_t,\sigma) - x\|^2` uses :math:`\lambda = 1/\sigma^2 + 1 = 1/c_{out}^2`, so the
network's target :math:`(x - c_{skip}x_t)/c_{out}` has unit variance at every noise level.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["edm_coefficients", "edm_loss_weight"]


def edm_coefficients(sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return ``(c_skip, c_out, c_in, c_noise)`` for noise levels ``sigma`` (any shape)."""
    s2 = sigma * sigma
    c_skip = 1.0 / (1.0 + s2)
    c_out = sigma / (1.0 + s2).sqrt()
    c_in = 1.0 / (1.0 + s2).sqrt()
    c_noise = sigma.log() / 4.0
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: Tensor) -> Tensor:
    r""":math:`\lambda(\sigma) = 1/\sigma^2 + 1`."""
    return 1.0 / (sigma * sigma) + 1.0
