r"""Posterior guidance: guided denoisers :math:`E[z \mid z_t, y]` over any ``DiffusionPrior``, conditioned on
observations :math:`y = \mathcal{A}(z) + \eta` through the operators of an :class:`~appa_core.ObsSet` (composed
with the prior's decoder, plus optional known states in diffusion space).

Two methods: **MMPS** (:mod:`~appa_core.guidance.mmps`, the default: a linear solve per call, exact for a Gaussian
prior with affine operators and Gaussian noise) and **DPS** (:mod:`~appa_core.guidance.dps`: one VJP, no solve).
Their math and references are in those modules.

Failures are reported, never propagated silently: a non-finite residual or solution raises
:class:`GuidanceError` naming the step and the operator(s); a solve that misses its tolerance is reported per
``on_failure`` (see :class:`PosteriorDenoiser`).

The package, one module per concept: :mod:`~appa_core.guidance.mmps` (:class:`MMPS`, the warm start),
:mod:`~appa_core.guidance.dps` (:class:`DPS`), :mod:`~appa_core.guidance.observation_map` (:class:`ObservationMap`),
:mod:`~appa_core.guidance.posterior` (:func:`guided_denoiser`, :class:`PosteriorDenoiser`, :class:`KnownStates`) and
:mod:`~appa_core.guidance.report` (:class:`GuidanceReport`, :class:`GuidanceError`, the summaries). Every public
name imports from ``appa_core.guidance`` as well.
"""

from appa_core.guidance.dps import DPS, DPS_DIVERGENCE
from appa_core.guidance.mmps import ADAPTIVE_MAXITER, MAX_CANCELLATION, MAX_PRODUCTS_BYTES, MMPS, WarmStart
from appa_core.guidance.observation_map import ObservationMap
from appa_core.guidance.posterior import KnownStates, PosteriorDenoiser, guided_denoiser, observation_time_ranges
from appa_core.guidance.report import GuidanceError, GuidanceReport, failure_summary, solve_summary

__all__ = [
    "ADAPTIVE_MAXITER",
    "DPS",
    "DPS_DIVERGENCE",
    "MAX_CANCELLATION",
    "MAX_PRODUCTS_BYTES",
    "MMPS",
    "GuidanceError",
    "GuidanceReport",
    "KnownStates",
    "ObservationMap",
    "PosteriorDenoiser",
    "WarmStart",
    "failure_summary",
    "guided_denoiser",
    "observation_time_ranges",
    "solve_summary",
]
