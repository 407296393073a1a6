r"""Noise schedules for variance-exploding diffusion.

A schedule maps diffusion time :math:`t \in [0, 1]` to a noise level :math:`\sigma_t`, with the
perturbation kernel :math:`p(x_t \mid x) = \mathcal{N}(x, \sigma_t^2 I)` (alpha = 1 throughout
appa-core: every state lives in standardized units, so the data variance is about 1).

* :class:`LogLinearSchedule`: :math:`\log \sigma_t = (1-t) \log \sigma_{min} + t \log \sigma_{max}`.
* :class:`RectifiedSchedule`: the rectified-flow schedule :math:`\alpha_t = 1 - t`, :math:`s_t = t + (1-t)\sigma_{min}`
  rewritten in VE form, :math:`\sigma_t = s_t / \alpha_t`, clipped to ``sigma_max`` at ``t = 1``.
"""

from __future__ import annotations

import math

import attrs
import torch
from torch import Tensor

__all__ = ["LogLinearSchedule", "RectifiedSchedule", "Schedule"]


@attrs.frozen
class Schedule:
    """Base class: ``sigma(t)`` for ``t`` in [0, 1], increasing, and its inverse ``t(sigma)``."""

    sigma_min: float = 1e-3
    sigma_max: float = 1e3

    def __attrs_post_init__(self) -> None:
        if not (0 < self.sigma_min < self.sigma_max):
            raise ValueError(
                f"{type(self).__name__}: need 0 < sigma_min < sigma_max, got "
                f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}"
            )

    def sigma(self, t: Tensor) -> Tensor:
        raise NotImplementedError

    def t(self, sigma: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, t: Tensor) -> Tensor:
        return self.sigma(t)


@attrs.frozen
class LogLinearSchedule(Schedule):
    r""":math:`\sigma_t = \exp((1-t)\log\sigma_{min} + t\log\sigma_{max})`."""

    def sigma(self, t: Tensor) -> Tensor:
        a, b = math.log(self.sigma_min), math.log(self.sigma_max)
        return torch.exp(a + t * (b - a))

    def t(self, sigma: Tensor) -> Tensor:
        a, b = math.log(self.sigma_min), math.log(self.sigma_max)
        return (torch.log(sigma) - a) / (b - a)


@attrs.frozen
class RectifiedSchedule(Schedule):
    r"""Rectified-flow schedule in VE form.

    With :math:`\alpha_t = 1 - t` and :math:`s_t = t + (1-t)\sigma_{min}`, the VE noise level is
    :math:`\sigma_t = s_t/\alpha_t`.  Time is rescaled so that ``t = 1`` reaches ``sigma_max``
    exactly: :math:`t \mapsto t\,\tau_{max}` with :math:`\tau_{max}` solving
    :math:`\sigma(\tau_{max}) = \sigma_{max}`.
    """

    def _tau_max(self) -> float:
        # s/(1-s) form: sigma = (tau + (1 - tau) smin) / (1 - tau)  =>  tau = (sigma - smin) / (1 + sigma - smin)
        return (self.sigma_max - self.sigma_min) / (1.0 + self.sigma_max - self.sigma_min)

    def sigma(self, t: Tensor) -> Tensor:
        tau = t * self._tau_max()
        return (tau + (1 - tau) * self.sigma_min) / (1 - tau)

    def t(self, sigma: Tensor) -> Tensor:
        tau = (sigma - self.sigma_min) / (1.0 + sigma - self.sigma_min)
        return tau / self._tau_max()
