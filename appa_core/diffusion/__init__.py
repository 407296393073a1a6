"""Diffusion core: VE schedules, EDM preconditioning, the integrators of the reverse process (LMS, Heun, DDIM, PC)
and blankets. The ``DiffusionPrior`` contract lives in :mod:`appa_core.priors.base`; ``appa_core.diffusion``
re-exports it (imported on first use: the priors import this package)."""

from typing import Any

from appa_core.diffusion.blanket import Blanket
from appa_core.diffusion.integrators import (
    DDIMSampler,
    DiffusionSampler,
    HeunSampler,
    LMSSampler,
    PCSampler,
    adams_bashforth_coefficients,
    init_noise,
    make_sampler,
    sigma_grid,
)
from appa_core.diffusion.precondition import edm_coefficients, edm_loss_weight
from appa_core.diffusion.schedule import LogLinearSchedule, RectifiedSchedule, Schedule

__all__ = [
    "Blanket",
    "DDIMSampler",
    "DiffusionPrior",
    "DiffusionSampler",
    "HeunSampler",
    "LMSSampler",
    "LogLinearSchedule",
    "PCSampler",
    "RectifiedSchedule",
    "Schedule",
    "adams_bashforth_coefficients",
    "edm_coefficients",
    "edm_loss_weight",
    "init_noise",
    "make_sampler",
    "sigma_grid",
]


def __getattr__(name: str) -> Any:
    if name == "DiffusionPrior":
        from appa_core.priors.base import DiffusionPrior

        return DiffusionPrior
    raise AttributeError(f"module 'appa_core.diffusion' has no attribute {name!r}")
