"""Training configuration (TOML) for ``appa train autoencoder|denoiser``.

Example (``docs/training.md`` has the demo file)::

    preset = "demo"                      # model preset (appa_core.nn.presets); [autoencoder]/[denoiser] override it

    [data]
    train = ["2000-01-01", "2000-10-31"]  # inclusive date range of the training split
    valid = ["2000-11-01", "2000-12-31"]  # validation split (or use --val-data with another store)

    [autoencoder]                        # AutoencoderConfig overrides, e.g. latent_channels = 8
    [denoiser]                           # DenoiserConfig overrides, e.g. depth = 4

    [train.autoencoder]                  # TrainConfig of the autoencoder run
    steps = 2000
    batch_size = 16                      # global batch (all processes x accumulation)

    [train.denoiser]
    steps = 3000
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import attrs

__all__ = ["RunConfig", "TrainConfig", "load_config"]


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Optimisation settings of one training run.

    Attributes:
        steps: optimizer steps.
        batch_size: global batch size (= processes x accumulation x micro batch).
        accumulation: gradient accumulation steps per optimizer step (per process).
        lr: peak learning rate (AdamW); linear warmup over ``warmup`` steps then cosine decay to ``lr * min_lr_ratio``.
        weight_decay, betas, grad_clip: AdamW / clipping settings (``grad_clip <= 0`` disables clipping).
        checkpoint_every: steps between atomic checkpoints (and at the end); the two newest are kept.
        keep_every: checkpoints at multiples of this step (a multiple of ``checkpoint_every``) are never rotated
            away (``0``: none), e.g. to score the prior along its training (``benchmarks/training_curve.py``).
        val_every: steps between validation losses; ``val_samples``: size of the fixed validation subset.
        log_every: steps between metric lines.
        seed: seeds data order and every random draw (per sample, so results do not depend on the sharding).
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        threads: ``torch.set_num_threads`` per process (``None``: leave as is).
        level_weighting: autoencoder only: GraphCast-style pressure weights on the loss.
        full_window_prob: denoiser only: probability of training on the full window ``K`` at a step (otherwise a
            uniformly drawn length ``1..K-1``, the same for the whole batch).
        time_dropout: denoiser only: probability of replacing a sample's time features by zeros ("unknown").
    """

    steps: int = 1000
    batch_size: int = 16
    accumulation: int = 1
    lr: float = 1e-3
    warmup: int = 100
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.0
    betas: tuple[float, float] = attrs.field(default=(0.9, 0.99), converter=tuple)
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    keep_every: int = 0
    val_every: int = 200
    val_samples: int = 64
    log_every: int = 10
    seed: int = 0
    amp: bool = True
    threads: int | None = None
    level_weighting: bool = False
    full_window_prob: float = 0.5
    time_dropout: float = 0.1

    def __attrs_post_init__(self) -> None:
        for name in ("steps", "batch_size", "accumulation", "checkpoint_every", "val_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig: field {name!r} has value {getattr(self, name)} < 1")
        if self.keep_every < 0 or self.keep_every % self.checkpoint_every:
            raise ValueError(
                f"TrainConfig: field 'keep_every' has value {self.keep_every}; use 0 or a multiple of "
                f"'checkpoint_every' ({self.checkpoint_every})"
            )
        if self.lr <= 0:
            raise ValueError(f"TrainConfig: field 'lr' has value {self.lr} <= 0")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in attrs.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"TrainConfig: unknown field {unknown[0]!r}; known fields are {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen(kw_only=True)
class RunConfig:
    """A whole training configuration: preset, overrides, data splits, and one TrainConfig per stage."""

    preset: str = "demo"
    autoencoder: dict[str, Any] = attrs.field(factory=dict)
    denoiser: dict[str, Any] = attrs.field(factory=dict)
    train_range: tuple[str, str] | None = None
    valid_range: tuple[str, str] | None = None
    train_autoencoder: TrainConfig = attrs.field(factory=TrainConfig)
    train_denoiser: TrainConfig = attrs.field(factory=TrainConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        allowed = {"preset", "data", "autoencoder", "denoiser", "train"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ValueError(f"RunConfig: unknown section {unknown[0]!r}; known are {sorted(allowed)}")
        d = data.get("data", {})
        tr = data.get("train", {})
        rng = lambda v: None if v is None else (str(v[0]), str(v[1]))  # noqa: E731
        return cls(
            preset=str(data.get("preset", "demo")),
            autoencoder=dict(data.get("autoencoder", {})),
            denoiser=dict(data.get("denoiser", {})),
            train_range=rng(d.get("train")),
            valid_range=rng(d.get("valid")),
            train_autoencoder=TrainConfig.from_dict(dict(tr.get("autoencoder", {}))),
            train_denoiser=TrainConfig.from_dict(dict(tr.get("denoiser", {}))),
        )


def load_config(config: str | Path | dict[str, Any] | RunConfig) -> RunConfig:
    """A :class:`RunConfig` from a TOML file, a dict with the same structure, or a RunConfig."""
    if isinstance(config, RunConfig):
        return config
    if isinstance(config, dict):
        return RunConfig.from_dict(config)
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"load_config: config file {str(path)!r} does not exist")
    with path.open("rb") as f:
        return RunConfig.from_dict(tomllib.load(f))
