"""Diffusion core: VE schedules, EDM preconditioning, the ``DiffusionPrior`` contract, samplers and blankets."""

from appa_core.diffusion.blanket import Blanket
from appa_core.diffusion.denoiser import DiffusionPrior
from appa_core.diffusion.precondition import edm_coefficients, edm_loss_weight
from appa_core.diffusion.samplers import (
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
