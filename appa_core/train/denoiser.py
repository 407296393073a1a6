r"""Latent denoiser training and assembly of the final :class:`~appa_core.priors.latent.Prior`.

1. **Encode** the dataset with a trained autoencoder into a latent cache ``latents.safetensors``
   (``latents [N, c, h, w]`` raw encoder outputs, ``times [N]`` int64 ns; the validation split in
   ``latents_valid.safetensors``). The cache is reused when its metadata matches the autoencoder's weights.
2. **Latent statistics**: per-channel mean and std of the training latents; as in Appa, the std includes the
   latent noise, :math:`s_z = \sqrt{\mathrm{std}^2 + \sigma_z^2}`, and training windows get
   :math:`\mathcal N(0, \sigma_z^2)` added before standardization (the prior models :math:`z \sim N(E(x), \sigma_z^2)`).
3. **Train** the EDM-preconditioned denoiser on windows of ``T`` consecutive latents: at each step ``T = K`` with
   probability ``full_window_prob``, else uniform in ``1..K-1`` (the window's first ``T`` states); noise level
   ``sigma = schedule.sigma(u)``, ``u ~ U(0, 1)`` (rectified schedule, sigma in [1e-3, 1e3]); loss
   :math:`\lambda(\sigma)\|D(z_t,\sigma) - z\|^2 = \|F(c_{in} z_t) - (z - c_{skip} z_t)/c_{out}\|^2`; time features
   dropped to zeros with probability ``time_dropout``.
4. **Assemble** ``out_dir/prior``: ``Prior.save`` of autoencoder + denoiser + stats + latent stats.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from appa_core.diffusion.precondition import edm_coefficients
from appa_core.diffusion.schedule import RectifiedSchedule
from appa_core.nn.autoencoder import Autoencoder
from appa_core.nn.denoiser import DenoiserConfig, LatentDenoiser
from appa_core.nn.presets import get_preset
from appa_core.priors.latent import Prior
from appa_core.train.autoencoder import _standardize, load_autoencoder_run
from appa_core.train.config import RunConfig, load_config
from appa_core.train.data import StateData, contiguous_starts, load_splits, sample_generator
from appa_core.train.loop import init_distributed, run_training

__all__ = ["denoiser_loss", "encode_latents", "train_denoiser"]


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


@torch.no_grad()
def encode_latents(
    ae: Autoencoder, data: StateData, stats: Any, path: Path, digest: str, batch: int = 32
) -> tuple[Tensor, np.ndarray]:
    """Encode ``data`` into ``[N, c, h, w]`` raw latents, cached in ``path`` (reused if ``digest`` matches)."""
    times_ns = data.times.astype("datetime64[ns]").astype(np.int64)
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("autoencoder") == digest and meta.get("n") == str(len(data)):
                z = f.get_tensor("latents")
                t = f.get_tensor("times").numpy()
                if np.array_equal(t, times_ns):
                    return z, data.times
    ae.eval()
    device = next(ae.parameters()).device
    out = []
    for i in range(0, len(data), batch):
        out.append(ae.encode(_standardize(data.x[i : i + batch].to(device), stats)).float().cpu())
    z = torch.cat(out)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_file(
        {"latents": z.contiguous(), "times": torch.as_tensor(times_ns)},
        str(tmp),
        metadata={"autoencoder": digest, "n": str(len(data))},
    )
    os.replace(tmp, path)
    return z, data.times


def denoiser_loss(model: nn.Module, z: Tensor, sigma: Tensor, eps: Tensor, tf: Tensor | None) -> Tensor:
    r"""EDM loss :math:`\lambda(\sigma)\|D(z+\sigma\epsilon, \sigma) - z\|^2` written in the network's output space."""
    shape = (-1,) + (1,) * (z.dim() - 1)
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma)
    z_t = z + sigma.view(shape) * eps
    target = (z - c_skip.view(shape) * z_t) / c_out.view(shape)
    f = model(z_t * c_in.view(shape), c_noise, tf)
    return (f.float() - target).square().mean()


def _time_features(times: np.ndarray) -> np.ndarray:
    from appa_core.data.windows import time_features

    return time_features(times)


def train_denoiser(
    config: str | os.PathLike[str] | dict[str, Any] | RunConfig,
    data: str | os.PathLike[str] | StateData,
    out_dir: str | os.PathLike[str],
    *,
    autoencoder: str | os.PathLike[str],
    val_data: str | os.PathLike[str] | StateData | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
    save_dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Train the latent denoiser on ``data`` encoded by the autoencoder run ``autoencoder``; save the Prior.

    Writes ``out_dir/latents*.safetensors``, ``checkpoints/``, ``metrics.jsonl`` and, when finished,
    ``out_dir/prior`` (``Prior.save``; ``save_dtype=torch.float16`` halves the weights for shipping).
    Returns the loop summary plus ``"prior"``.
    """
    run = load_config(config)
    info = init_distributed()
    ae_dir = Path(autoencoder)
    ae, stats, grid, spec, _ = load_autoencoder_run(ae_dir)
    ae = ae.to(info.device)
    preset = get_preset(run.preset)
    train, valid = load_splits(data, spec, run.train_range, run.valid_range, val_data)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    digest = _file_digest(ae_dir / "autoencoder.safetensors")
    if info.main:
        encode_latents(ae, train, stats, out / "latents.safetensors", digest)
        if valid is not None:
            encode_latents(ae, valid, stats, out / "latents_valid.safetensors", digest)
    if info.enabled:
        torch.distributed.barrier()
    z_train, t_train = encode_latents(ae, train, stats, out / "latents.safetensors", digest)
    sigma_z = ae.config.sigma_z
    lat_mean = z_train.double().mean(dim=(0, 2, 3))
    lat_std = (z_train.double().var(dim=(0, 2, 3)) + sigma_z**2).sqrt()
    norm = lambda z: (z - lat_mean.float()[:, None, None]) / lat_std.float()[:, None, None]  # noqa: E731

    c, h, w = ae.latent_shape
    den_cfg = DenoiserConfig(latent_channels=c, latent_height=h, latent_width=w, **{**preset.denoiser, **run.denoiser})
    cfg = run.train_denoiser
    K = den_cfg.window
    timestep = preset.timestep
    starts = contiguous_starts(t_train, K, timestep)
    if starts.size == 0:
        raise ValueError(f"train_denoiser: no window of {K} consecutive states {timestep} apart in the training data")
    tf_train = torch.as_tensor(_time_features(t_train), dtype=torch.float32)
    torch.manual_seed(cfg.seed)
    den = LatentDenoiser(den_cfg).to(info.device)
    schedule = RectifiedSchedule()

    def window_length(step: int) -> int:
        rng = np.random.default_rng([cfg.seed, step, 7])
        return K if (K == 1 or rng.random() < cfg.full_window_prob) else int(rng.integers(1, K))

    def draws(positions: np.ndarray, length: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        sig, eps, lat_eps, keep = [], [], [], []
        for k in positions:
            g = sample_generator(cfg.seed, int(k), salt=1)
            sig.append(schedule.sigma(torch.rand((), generator=g)))
            eps.append(torch.randn((length, c, h, w), generator=g))
            lat_eps.append(torch.randn((length, c, h, w), generator=g))
            keep.append(float(torch.rand((), generator=g) >= cfg.time_dropout))
        return torch.stack(sig), torch.stack(eps), torch.stack(lat_eps), torch.tensor(keep)

    def batch(z_all: Tensor, tf_all: Tensor, st: np.ndarray, positions: np.ndarray, length: int) -> tuple[Tensor, ...]:
        idx = torch.as_tensor(st)[:, None] + torch.arange(length)[None, :]
        sig, eps, lat_eps, keep = draws(positions, length)
        z = norm(z_all[idx] + sigma_z * lat_eps)
        tf = tf_all[idx] * keep[:, None, None]
        return tuple(t.to(info.device) for t in (z, sig, eps, tf))

    def loss_fn(model: nn.Module, items: np.ndarray, step: int) -> Tensor:
        length = window_length(step)
        z, sig, eps, tf = batch(z_train, tf_train, starts[items[:, 0]], items[:, 1], length)
        return denoiser_loss(model, z, sig, eps, tf)

    val_fn = None
    if valid is not None:
        z_val, t_val = encode_latents(ae, valid, stats, out / "latents_valid.safetensors", digest)
        v_starts = contiguous_starts(t_val, K, timestep)
        if v_starts.size:
            v_starts = v_starts[
                np.unique(np.linspace(0, v_starts.size - 1, min(v_starts.size, cfg.val_samples)).round().astype(int))
            ]
            tf_val = torch.as_tensor(_time_features(t_val), dtype=torch.float32)
            v_batch = batch(z_val, tf_val, v_starts, 10**12 + np.arange(v_starts.size), K)

            def val_fn(model: nn.Module) -> float:
                z, sig, eps, tf = v_batch
                tot = 0.0
                for i in range(0, len(z), 8):
                    s = slice(i, i + 8)
                    tot += float(denoiser_loss(model, z[s], sig[s], eps[s], tf[s])) * len(z[s])
                return tot / len(z)

    summary = run_training(
        den,
        loss_fn,
        int(starts.size),
        cfg,
        out,
        val_fn=val_fn,
        resume=resume,
        stop_after=stop_after,
        progress=progress,
        desc="denoiser",
        extra_state={"windows": int(starts.size), "latent_mean": lat_mean.tolist(), "latent_std": lat_std.tolist()},
    )
    if summary["step"] >= cfg.steps:
        prior = Prior(
            ae.cpu(),
            den.cpu(),
            stats,
            grid,
            spec,
            latent_mean=lat_mean.float(),
            latent_std=lat_std.float(),
            schedule=schedule,
            timestep=timestep,
            preset=run.preset,
        )
        if info.main:
            prior.save(out / "prior", dtype=save_dtype)
        summary["prior"] = prior
    return summary
