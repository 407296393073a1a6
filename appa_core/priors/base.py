r"""The contract between a prior and the guided sampler.

The sampler never looks inside a prior: it draws a diffusion variable ``z`` of shape
``[B, *prior.event_shape(T)]``, asks the prior for the posterior mean :math:`E[z \mid z_t]` at noise level
:math:`\sigma`, and maps ``z`` to physical states ``[B, T, C, H, W]`` with ``prior.decode``. For the
:class:`~appa_core.GaussianPrior` the diffusion variable is the (standardized) state itself; for the latent
:class:`~appa_core.Prior` it is the autoencoder's latent trajectory.

A prior may also have ``linearize_decode(z) -> (decode(z), v -> J_decode(z) v)``, a tangent map cheaper than
``torch.func.jvp`` of ``decode``; the guidance then uses it for its solver's products (optional: without it the
guidance differentiates ``decode`` in forward mode). If it also takes ``graph=True`` (``decode(z)`` then keeps its
autograd graph from ``z``), one decoder pass per guided call serves both the observation of the denoised state and
the tangent map. A subclass that overrides ``decode`` must override ``linearize_decode`` too (or set it to
``None``): the guidance would otherwise linearize the parent's decoder and, with ``graph``, also observe the
denoised state through it.
"""

from __future__ import annotations

import abc

import numpy as np
from torch import Tensor

from appa_core.diffusion.schedule import Schedule
from appa_core.grid import Grid
from appa_core.spec import StateSpec

__all__ = ["DiffusionPrior"]


class DiffusionPrior(abc.ABC):
    """A prior over trajectories ``x[1..T]`` that the guided sampler can condition.

    Attributes:
        grid: the horizontal grid of decoded states.
        spec: the variables and levels of decoded states (channel order of ``C``).
        schedule: the noise schedule the denoiser was trained with.
        window: the largest number of time steps denoised jointly (``K``), or ``None`` if unbounded.
        timestep: the spacing between consecutive states, a ``numpy.timedelta64``.
    """

    grid: Grid
    spec: StateSpec
    schedule: Schedule
    window: int | None
    timestep: np.timedelta64

    @abc.abstractmethod
    def event_shape(self, length: int) -> tuple[int, ...]:
        """Shape (without batch) of the diffusion variable for a trajectory of ``length`` states."""

    @abc.abstractmethod
    def denoise(self, z_t: Tensor, sigma: Tensor, times: np.ndarray | None = None) -> Tensor:
        r"""Posterior mean :math:`E[z \mid z_t]`.

        Args:
            z_t: noisy diffusion variable ``[B, *event_shape(T)]``.
            sigma: noise levels ``[B]`` (or a 0-d tensor).
            times: the ``T`` valid times (``datetime64``) of the window, for time features.

        Returns:
            ``[B, *event_shape(T)]``, differentiable with respect to ``z_t``.
        """

    @abc.abstractmethod
    def decode(self, z: Tensor) -> Tensor:
        """Diffusion variable ``[B, *event_shape(T)]`` -> physical states ``[B, T, C, H, W]``."""

    @abc.abstractmethod
    def encode(self, x: Tensor) -> Tensor:
        """Physical states ``[B, T, C, H, W]`` -> diffusion variable ``[B, *event_shape(T)]``."""
