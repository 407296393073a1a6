"""Neural networks of the latent prior: autoencoder, latent denoiser, presets."""

from appa_core.nn.autoencoder import Autoencoder, AutoencoderConfig, autoencoder_loss
from appa_core.nn.denoiser import DenoiserConfig, LatentDenoiser, first_order_only
from appa_core.nn.presets import PRESETS, Preset, build, count_parameters, get_preset

__all__ = [
    "PRESETS",
    "Autoencoder",
    "AutoencoderConfig",
    "DenoiserConfig",
    "LatentDenoiser",
    "Preset",
    "autoencoder_loss",
    "build",
    "count_parameters",
    "first_order_only",
    "get_preset",
]
