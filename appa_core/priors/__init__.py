"""Priors over trajectories: the ``DiffusionPrior`` contract and its two implementations.

* :mod:`appa_core.priors.base`: :class:`DiffusionPrior`, what the guided sampler needs from a prior (denoise,
  encode / decode, event shape, schedule, window).
* :mod:`appa_core.priors.latent`: :class:`Prior`, the learned latent prior (autoencoder + denoiser + statistics,
  safetensors + JSON).
* :mod:`appa_core.priors.gaussian`: :class:`GaussianPrior`, the exact Gaussian oracle and the optimal-interpolation
  prior (:class:`LowRankDiag` covariances).

Names are imported on first use, so that ``appa_core.diffusion`` (which re-exports ``DiffusionPrior``) and the
networks of :mod:`appa_core.nn` can import :mod:`appa_core.priors.base` without loading the latent prior.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = ["DiffusionPrior", "GaussianPrior", "LowRankDiag", "Prior"]

_WHERE = {
    "DiffusionPrior": "appa_core.priors.base",
    "Prior": "appa_core.priors.latent",
    "GaussianPrior": "appa_core.priors.gaussian",
    "LowRankDiag": "appa_core.priors.gaussian",
}

if TYPE_CHECKING:
    from appa_core.priors.base import DiffusionPrior
    from appa_core.priors.gaussian import GaussianPrior, LowRankDiag
    from appa_core.priors.latent import Prior


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'appa_core.priors' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
