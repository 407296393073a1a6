"""Training: autoencoder and latent denoiser loops, checkpoints, DDP, CLI (``appa train``)."""

from appa_core.train.autoencoder import train_autoencoder
from appa_core.train.config import RunConfig, TrainConfig, load_config
from appa_core.train.data import StateData, load_states
from appa_core.train.denoiser import train_denoiser

__all__ = ["RunConfig", "StateData", "TrainConfig", "load_config", "load_states", "train_autoencoder", "train_denoiser"]
