"""Autoencoder training: latitude-weighted MSE on standardized states, with latent noise ``sigma_z``.

``train_autoencoder(config, data, out_dir)`` writes into ``out_dir``:

* ``stats.json``: the :class:`~appa_core.data.NormStats` of the training split;
* ``autoencoder.safetensors`` + ``autoencoder.json`` (config, grid, spec, preset) at the end;
* ``checkpoints/``, ``metrics.jsonl`` (loss, lr, grad norm, validation loss);
* ``reconstruction.json``: RMSE per channel on the validation split, standardized and in physical units.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from appa_core.grid import Grid
from appa_core.nn.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    autoencoder_loss,
    level_weights,
    static_features,
)
from appa_core.nn.presets import get_preset
from appa_core.spec import StateSpec
from appa_core.train.config import RunConfig, load_config
from appa_core.train.data import StateData, load_splits, sample_generator
from appa_core.train.loop import init_distributed, run_training

__all__ = ["load_autoencoder_run", "make_stats", "reconstruction_rmse", "train_autoencoder", "training_statics"]


def make_stats(data: StateData) -> Any:
    """Per-channel mean/std of ``data`` (area-weighted over the grid, all times): a ``NormStats``."""
    from appa_core.data.stats import NormStats

    w = data.grid.area_weights_tensor(torch.float64)  # [H, 1]
    mean = torch.zeros(data.x.shape[1], dtype=torch.float64)
    sq = torch.zeros_like(mean)
    n = len(data)
    for i in range(0, n, 64):
        xb = data.x[i : i + 64].double()
        mean += (xb * w).mean(dim=(-2, -1)).sum(0)
        sq += (xb.square() * w).mean(dim=(-2, -1)).sum(0)
    mean /= n
    std = (sq / n - mean.square()).clamp_min(1e-12).sqrt()
    return NormStats(spec=data.spec, mean=mean.numpy(), std=std.numpy())


def _standardize(x: Tensor, stats: Any) -> Tensor:
    mean = torch.as_tensor(np.array(stats.mean), dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.as_tensor(np.array(stats.std), dtype=x.dtype, device=x.device)[:, None, None]
    return (x - mean) / std


def _val_indices(n: int, count: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, count)).round().astype(np.int64))


@torch.no_grad()
def reconstruction_rmse(ae: Autoencoder, data: StateData, stats: Any, batch: int = 32) -> dict[str, dict[str, float]]:
    """Area-weighted RMSE per channel of ``decode(encode(x))`` on ``data``: standardized and physical units."""
    ae.eval()
    w = data.grid.area_weights_tensor(torch.float64)
    se = torch.zeros(data.x.shape[1], dtype=torch.float64)
    device = next(ae.parameters()).device
    for i in range(0, len(data), batch):
        xs = _standardize(data.x[i : i + batch].to(device), stats)
        err = (ae(xs) - xs).double().cpu()
        se += (err.square() * w).mean(dim=(-2, -1)).sum(0)
    rmse = (se / len(data)).sqrt()
    std = torch.as_tensor(np.array(stats.std), dtype=torch.float64)
    names = data.spec.channel_names()
    return {
        "standardized": {n: float(v) for n, v in zip(names, rmse, strict=True)},
        "physical": {n: float(v) for n, v in zip(names, rmse * std, strict=True)},
    }


def training_statics(data: StateData, config: AutoencoderConfig) -> Tensor | None:
    """The static input fields ``[S, H, W]`` of an autoencoder with ``config.static_channels = S`` on ``data``:
    position features, plus orography and land-sea mask from the store (``S = 5`` needs both)."""
    s = config.static_channels
    if s == 0:
        return None
    oro, lsm = data.statics.get("geopotential_at_surface"), data.statics.get("land_sea_mask")
    if s == 5 and (oro is None or lsm is None):
        missing = [n for n, v in (("geopotential_at_surface", oro), ("land_sea_mask", lsm)) if v is None]
        raise ValueError(
            f"train_autoencoder: static_channels = 5 needs the static field {missing[0]!r}, which the training "
            "store does not have"
        )
    if s not in (3, 5):
        raise ValueError(
            f"train_autoencoder: field 'static_channels' has value {s}; expected 0, 3 (position) or 5 (position, "
            "orography, land-sea mask)"
        )
    return static_features(data.grid, oro if s == 5 else None, lsm if s == 5 else None)


def _ae_config(run: RunConfig, spec: StateSpec) -> AutoencoderConfig:
    base = get_preset(run.preset).autoencoder
    return attrs.evolve(base, in_channels=spec.n_channels, **run.autoencoder)


def train_autoencoder(
    config: str | os.PathLike[str] | dict[str, Any] | RunConfig,
    data: str | os.PathLike[str] | StateData,
    out_dir: str | os.PathLike[str],
    *,
    val_data: str | os.PathLike[str] | StateData | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the autoencoder of ``config``'s preset on ``data`` (a WB2 zarr store or :class:`StateData`).

    The validation split is ``val_data`` if given, else ``config``'s ``[data] valid`` range of ``data``.
    Returns the loop summary plus ``"rmse"`` (validation reconstruction RMSE per channel).
    """
    run = load_config(config)
    info = init_distributed()
    preset = get_preset(run.preset)
    spec = data.spec if isinstance(data, StateData) else preset.spec
    train, valid = load_splits(data, spec, run.train_range, run.valid_range, val_data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stats_path = out / "stats.json"
    if stats_path.is_file():
        from appa_core.data.stats import NormStats

        stats = NormStats.load(stats_path)
    else:
        stats = make_stats(train)
        if info.main:
            tmp = out / f".stats.json.tmp{os.getpid()}"
            stats.save(tmp)
            os.replace(tmp, stats_path)
    cfg = run.train_autoencoder
    ae_cfg = _ae_config(run, spec)
    torch.manual_seed(cfg.seed)
    ae = Autoencoder(ae_cfg, *train.grid.shape, static=training_statics(train, ae_cfg)).to(info.device)
    lat_w = train.grid.area_weights_tensor(device=info.device)
    ch_w = level_weights(spec).to(info.device) if cfg.level_weighting else None
    x_std = _standardize(train.x, stats)  # standardized once, [N, C, H, W]
    latent_shape = ae.latent_shape

    def loss_fn(model: nn.Module, items: np.ndarray, step: int) -> Tensor:
        xb = x_std[torch.as_tensor(items[:, 0])].to(info.device)
        eps = torch.stack([torch.randn(latent_shape, generator=sample_generator(cfg.seed, k)) for k in items[:, 1]])
        return autoencoder_loss(model(xb, eps.to(info.device)), xb, lat_w, ch_w)

    val_fn = None
    if valid is not None:
        v_idx = _val_indices(len(valid), cfg.val_samples)
        v_x = _standardize(valid.x[torch.as_tensor(v_idx)], stats)

        def val_fn(model: nn.Module) -> float:
            tot = 0.0
            for i in range(0, len(v_x), 16):
                xb = v_x[i : i + 16].to(info.device)
                tot += float(autoencoder_loss(model(xb), xb, lat_w, ch_w)) * len(xb)
            return tot / len(v_x)

    summary = run_training(
        ae,
        loss_fn,
        len(train),
        cfg,
        out,
        val_fn=val_fn,
        resume=resume,
        stop_after=stop_after,
        progress=progress,
        desc="autoencoder",
        extra_state={"train_times": [str(train.times[0]), str(train.times[-1])]},
    )
    if info.main and summary["step"] >= cfg.steps:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in ae.state_dict().items()}, str(out / "autoencoder.safetensors")
        )
        meta = {
            "preset": run.preset,
            "autoencoder": ae_cfg.to_dict(),
            "grid": train.grid.to_dict(),
            "spec": spec.to_dict(),
        }
        (out / "autoencoder.json").write_text(json.dumps(meta, indent=1))
        if valid is not None:
            summary["rmse"] = reconstruction_rmse(ae, valid, stats)
            (out / "reconstruction.json").write_text(json.dumps(summary["rmse"], indent=1))
    summary["autoencoder"] = ae
    summary["stats"] = stats
    return summary


def load_autoencoder_run(path: str | os.PathLike[str]) -> tuple[Autoencoder, Any, Grid, StateSpec, str]:
    """``(autoencoder, stats, grid, spec, preset)`` from a finished :func:`train_autoencoder` directory."""
    from appa_core.data.stats import NormStats

    root = Path(path)
    meta_path = root / "autoencoder.json"
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"load_autoencoder_run: {str(meta_path)!r} is missing; is {str(root)!r} a finished autoencoder run?"
        )
    meta = json.loads(meta_path.read_text())
    grid = Grid.from_dict(meta["grid"])
    ae = Autoencoder(AutoencoderConfig.from_dict(meta["autoencoder"]), *grid.shape)
    ae.load_state_dict(load_file(str(root / "autoencoder.safetensors")))
    ae.eval()
    return ae, NormStats.load(root / "stats.json"), grid, StateSpec.from_dict(meta["spec"]), meta["preset"]
