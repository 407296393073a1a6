r"""The latent diffusion prior: autoencoder + spatio-temporal latent denoiser + normalization statistics.

The diffusion variable of :class:`Prior` is the **standardized latent trajectory** ``z [B, T, c, h, w]``:

.. math::

    x \xrightarrow{\text{NormStats}} \tilde x = (x - \mu_x)/s_x \xrightarrow{E} e \xrightarrow{} z = (e - \mu_z)/s_z

per state, and ``decode`` runs the chain backwards (``z -> e = z s_z + mu_z -> D(e) -> x = D(e) s_x + mu_x``) to
physical units ``[B, T, C, H, W]``. ``denoise`` is the EDM-preconditioned latent denoiser of
:mod:`appa_core.nn.denoiser`, trained with the rectified schedule (sigma in [1e-3, 1e3]) on windows of
``1 <= T <= K`` steps (the training length is drawn per step, so shorter windows are in-distribution).

A saved prior is a directory (no pickle anywhere):

* ``config.json``: format version, preset name, grid, spec, autoencoder and denoiser hyper-parameters,
  schedule, timestep, latent mean/std;
* ``autoencoder.safetensors``, ``denoiser.safetensors``: weights;
* ``stats.json``: the :class:`~appa_core.data.NormStats` of the physical variables.
"""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from appa_core.diffusion.schedule import LogLinearSchedule, RectifiedSchedule, Schedule
from appa_core.grid import Grid
from appa_core.nn.autoencoder import Autoencoder, AutoencoderConfig
from appa_core.nn.denoiser import DenoiserConfig, LatentDenoiser
from appa_core.priors.base import DiffusionPrior
from appa_core.spec import StateSpec

__all__ = ["FORMAT_VERSION", "Prior"]

FORMAT_VERSION = 1
_SCHEDULES: dict[str, type[Schedule]] = {"rectified": RectifiedSchedule, "loglinear": LogLinearSchedule}


def _time_features(times: np.ndarray) -> np.ndarray:
    from appa_core.data.windows import time_features

    return time_features(times)


class Prior(DiffusionPrior, nn.Module):
    """A latent diffusion prior over weather trajectories (see the module docstring).

    Attributes:
        grid, spec: grid and variables of decoded states.
        schedule: noise schedule of the denoiser (rectified, sigma in [1e-3, 1e3]).
        window: ``K``, the largest number of steps denoised jointly.
        timestep: spacing of consecutive states (``numpy.timedelta64``).
        autoencoder: :class:`~appa_core.nn.autoencoder.Autoencoder` on standardized states.
        denoiser: :class:`~appa_core.nn.denoiser.LatentDenoiser` on standardized latents.
        stats: :class:`~appa_core.data.NormStats` (physical <-> standardized states).
        latent_mean, latent_std: buffers ``[c]`` (standardization of the encoder output).
        preset: name of the preset it was built from (informational).
    """

    def __init__(
        self,
        autoencoder: Autoencoder,
        denoiser: LatentDenoiser,
        stats: Any,
        grid: Grid,
        spec: StateSpec,
        *,
        latent_mean: Tensor | None = None,
        latent_std: Tensor | None = None,
        schedule: Schedule | None = None,
        timestep: np.timedelta64 = np.timedelta64(6, "h"),  # noqa: B008
        preset: str | None = None,
    ) -> None:
        nn.Module.__init__(self)
        c = autoencoder.config.latent_channels
        if autoencoder.config.in_channels != spec.n_channels:
            raise ValueError(
                f"Prior: autoencoder has {autoencoder.config.in_channels} input channels but the spec has "
                f"{spec.n_channels}"
            )
        if grid.shape != (autoencoder.height, autoencoder.width):
            raise ValueError(
                f"Prior: grid {grid.shape} does not match the autoencoder's {(autoencoder.height, autoencoder.width)}"
            )
        dc = denoiser.config
        if (dc.latent_channels, dc.latent_height, dc.latent_width) != autoencoder.latent_shape:
            raise ValueError(
                f"Prior: denoiser latent shape {(dc.latent_channels, dc.latent_height, dc.latent_width)} does not "
                f"match the autoencoder's {autoencoder.latent_shape}"
            )
        self.autoencoder = autoencoder
        self.denoiser = denoiser
        self.stats = stats
        self.grid = grid
        self.spec = spec
        self.schedule = schedule or RectifiedSchedule()
        self.window = dc.window
        self.timestep = np.timedelta64(timestep).astype("timedelta64[ns]")
        self.preset = preset
        self.register_buffer("latent_mean", torch.zeros(c) if latent_mean is None else latent_mean.float().clone())
        self.register_buffer("latent_std", torch.ones(c) if latent_std is None else latent_std.float().clone())
        mean = torch.as_tensor(np.array(stats.mean), dtype=torch.float32)
        std = torch.as_tensor(np.array(stats.std), dtype=torch.float32)
        self.register_buffer("state_mean", mean.reshape(-1, 1, 1), persistent=False)
        self.register_buffer("state_std", std.reshape(-1, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)

    # ------------------------------------------------------------------ contract
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(c, h, w)`` of one latent state."""
        return self.autoencoder.latent_shape

    def event_shape(self, length: int) -> tuple[int, ...]:
        """``(T, c, h, w)``."""
        if length < 1:
            raise ValueError(f"Prior.event_shape: length {length} < 1")
        return (int(length), *self.latent_shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.latent_mean.dtype

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    def _check_event(self, z: Tensor, owner: str) -> None:
        if z.dim() != 5 or tuple(z.shape[2:]) != self.latent_shape:
            raise ValueError(
                f"{owner}: expected z of shape [B, T, {', '.join(map(str, self.latent_shape))}], got {list(z.shape)}"
            )

    def time_features(self, times: np.ndarray | None, length: int) -> Tensor | None:
        """``[T, 4]`` time features of ``times`` (``None`` -> ``None``, i.e. date unknown)."""
        if times is None:
            return None
        times = np.asarray(times).astype("datetime64[ns]").reshape(-1)
        if times.size != length:
            raise ValueError(f"Prior.denoise: got {times.size} times for a window of T={length} steps")
        return torch.as_tensor(_time_features(times), dtype=self.dtype, device=self.device)

    def denoise(self, z_t: Tensor, sigma: Tensor, times: np.ndarray | None = None) -> Tensor:
        r"""Posterior mean :math:`E[z \mid z_t]` of standardized latents.

        Args:
            z_t: ``[B, T, c, h, w]`` with ``1 <= T <= K`` (any float dtype; computed in the model dtype, returned
                in ``z_t``'s dtype).
            sigma: ``[B]`` or 0-d noise levels.
            times: ``[T]`` ``datetime64`` valid times (time-of-day and season features), or ``None``.

        Differentiable w.r.t. ``z_t`` (forward- and reverse-mode, double backward).
        """
        self._check_event(z_t, "Prior.denoise")
        t_len = z_t.shape[1]
        if t_len > self.window:
            raise ValueError(
                f"Prior.denoise: window length T={t_len} exceeds the prior's window K={self.window}; "
                "denoise longer trajectories by overlapping windows"
            )
        tf = self.time_features(times, t_len)
        sigma = torch.as_tensor(sigma, device=z_t.device)
        out = self.denoiser.denoise(z_t.to(self.dtype), sigma.to(self.dtype), tf)
        return out.to(z_t.dtype)

    def decode(self, z: Tensor) -> Tensor:
        """Standardized latents ``[B, T, c, h, w]`` -> physical states ``[B, T, C, H, W]`` (differentiable)."""
        self._check_event(z, "Prior.decode")
        b, t = z.shape[:2]
        x = self.autoencoder.decode(self._autoencoder_latent(z))
        x = x * self.state_std + self.state_mean
        return x.reshape(b, t, *x.shape[1:]).to(z.dtype)

    def _autoencoder_latent(self, z: Tensor) -> Tensor:
        """Standardized latents ``[B, T, c, h, w]`` -> the autoencoder's latents ``[B*T, c, h, w]`` (model dtype)."""
        e = z.to(self.dtype) * self.latent_std[:, None, None] + self.latent_mean[:, None, None]
        return e.reshape(-1, *self.latent_shape)

    def linearize_decode(self, z: Tensor, graph: bool = False) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``decode(z)`` ``[B, T, C, H, W]`` and its tangent map ``v [B, T, c, h, w] -> J_decode(z) v``, without
        autograd (:meth:`Autoencoder.linearize_decode`): guidance calls the map once per solver iteration.
        ``graph=True``: ``decode(z)`` keeps its autograd graph from ``z`` (one decoder pass for both)."""
        self._check_event(z, "Prior.linearize_decode")
        b, t = z.shape[:2]
        x, dx_of = self.autoencoder.linearize_decode(self._autoencoder_latent(z if graph else z.detach()), graph)
        x = (x * self.state_std + self.state_mean).reshape(b, t, *x.shape[1:]).to(z.dtype)

        def tangent(v: Tensor) -> Tensor:
            dv = (v.to(self.dtype) * self.latent_std[:, None, None]).reshape(b * t, *self.latent_shape)
            dx = dx_of(dv) * self.state_std
            return dx.reshape(b, t, *dx.shape[1:]).to(v.dtype)

        return x, tangent

    def encode(self, x: Tensor) -> Tensor:
        """Physical states ``[B, T, C, H, W]`` -> standardized latents ``[B, T, c, h, w]``."""
        shape = (self.spec.n_channels, *self.grid.shape)
        if x.dim() != 5 or tuple(x.shape[2:]) != shape:
            raise ValueError(
                f"Prior.encode: expected x of shape [B, T, {', '.join(map(str, shape))}], got {list(x.shape)}"
            )
        b, t = x.shape[:2]
        xs = (x.to(self.dtype) - self.state_mean) / self.state_std
        e = self.autoencoder.encode(xs.reshape(b * t, *shape))
        z = (e - self.latent_mean[:, None, None]) / self.latent_std[:, None, None]
        return z.reshape(b, t, *self.latent_shape).to(x.dtype)

    def standardize(self, x: Tensor) -> Tensor:
        """Physical ``[..., C, H, W]`` -> standardized (the autoencoder's input space)."""
        return (x - self.state_mean.to(x.dtype)) / self.state_std.to(x.dtype)

    def destandardize(self, x: Tensor) -> Tensor:
        return x * self.state_std.to(x.dtype) + self.state_mean.to(x.dtype)

    def sample_prior_noise(self, batch: int, length: int, generator: torch.Generator | None = None) -> Tensor:
        """``sigma_max * N(0, I)`` of shape ``[batch, *event_shape(length)]`` (start of unconditional sampling)."""
        eps = torch.randn((batch, *self.event_shape(length)), generator=generator, device=self.device)
        return self.schedule.sigma_max * eps

    # ------------------------------------------------------------------ I/O
    def config_dict(self) -> dict[str, object]:
        return {
            "format": "appa-core-prior",
            "format_version": FORMAT_VERSION,
            "preset": self.preset,
            "grid": self.grid.to_dict(),
            "spec": self.spec.to_dict(),
            "autoencoder": self.autoencoder.config.to_dict(),
            "denoiser": self.denoiser.config.to_dict(),
            "schedule": {
                "name": "rectified" if isinstance(self.schedule, RectifiedSchedule) else "loglinear",
                "sigma_min": self.schedule.sigma_min,
                "sigma_max": self.schedule.sigma_max,
            },
            "timestep_hours": float(self.timestep / np.timedelta64(1, "h")),
            "latent_mean": self.latent_mean.tolist(),
            "latent_std": self.latent_std.tolist(),
        }

    def save(self, path: str | os.PathLike[str], dtype: torch.dtype | None = None) -> Path:
        """Write ``config.json``, ``autoencoder.safetensors``, ``denoiser.safetensors``, ``stats.json`` into ``path``.

        ``dtype=torch.float16`` stores the weights in half precision (loaded back as float32).
        Each file is written to a temporary name and moved into place (``os.replace``).
        """
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)

        def weights(module: nn.Module) -> dict[str, Tensor]:
            sd = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
            return {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v for k, v in sd.items()}

        meta = {
            "grid_shape": "x".join(map(str, self.grid.shape)),
            "latent_shape": "x".join(map(str, self.latent_shape)),
        }
        _atomic(out / "autoencoder.safetensors", lambda p: save_file(weights(self.autoencoder), p, metadata=meta))
        _atomic(out / "denoiser.safetensors", lambda p: save_file(weights(self.denoiser), p, metadata=meta))
        _atomic(out / "stats.json", lambda p: self.stats.save(p))
        _atomic(out / "config.json", lambda p: Path(p).write_text(json.dumps(self.config_dict(), indent=1)))
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: torch.device | str = "cpu") -> Prior:
        """Rebuild a prior from a directory written by :meth:`save` (safetensors + JSON only, nothing executed).

        Raises:
            FileNotFoundError / ValueError: starting with ``Prior.load:``, naming the file and the key.
        """
        from appa_core.data.stats import NormStats

        root = Path(path)
        if not root.is_dir():
            raise FileNotFoundError(f"Prior.load: {str(root)!r} is not a directory")
        cfg_path = root / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"Prior.load: missing file {str(cfg_path)!r}")
        try:
            cfg = json.loads(cfg_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"Prior.load: file {str(cfg_path)!r} is not valid JSON: {err}") from err
        if not isinstance(cfg, dict):
            raise ValueError(f"Prior.load: file {str(cfg_path)!r} must hold a JSON object")
        version = cfg.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"Prior.load: file {str(cfg_path)!r} key 'format_version' is {version!r}, expected {FORMAT_VERSION}"
            )

        def section(key: str, build: Any) -> Any:
            if key not in cfg:
                raise ValueError(f"Prior.load: file {str(cfg_path)!r} has no key {key!r}")
            try:
                return build(cfg[key])
            except (TypeError, ValueError, KeyError) as err:
                raise ValueError(f"Prior.load: file {str(cfg_path)!r} key {key!r} is invalid: {err}") from err

        grid = section("grid", Grid.from_dict)
        spec = section("spec", StateSpec.from_dict)
        ae_cfg = section("autoencoder", lambda d: AutoencoderConfig.from_dict(dict(d)))
        den_cfg = section("denoiser", lambda d: DenoiserConfig.from_dict(dict(d)))
        schedule = section(
            "schedule",
            lambda d: _SCHEDULES[d["name"]](sigma_min=float(d["sigma_min"]), sigma_max=float(d["sigma_max"])),
        )
        step = section("timestep_hours", _timestep)
        c = ae_cfg.latent_channels
        lat_mean = section("latent_mean", lambda v: _vector(v, c))
        lat_std = section("latent_std", lambda v: _positive(_vector(v, c)))

        stats_path = root / "stats.json"
        if not stats_path.is_file():
            raise FileNotFoundError(f"Prior.load: missing file {str(stats_path)!r}")
        try:
            stats = NormStats.load(stats_path)
        except Exception as err:
            raise ValueError(f"Prior.load: file {str(stats_path)!r} is invalid: {err}") from err
        if len(np.asarray(stats.mean).reshape(-1)) != spec.n_channels:
            raise ValueError(
                f"Prior.load: file {str(stats_path)!r} has {len(np.asarray(stats.mean).reshape(-1))} channels, "
                f"the spec in config.json has {spec.n_channels}"
            )

        try:
            with torch.device("meta"):
                ae = Autoencoder(ae_cfg, *grid.shape)
                den = LatentDenoiser(den_cfg)
        except ValueError as err:
            raise ValueError(f"Prior.load: file {str(cfg_path)!r} describes an invalid model: {err}") from err
        shapes = {"grid_shape": "x".join(map(str, grid.shape)), "latent_shape": "x".join(map(str, ae.latent_shape))}
        for name, module in (("autoencoder", ae), ("denoiser", den)):
            _load_weights(module, root / f"{name}.safetensors", device, shapes)
        prior = cls(
            ae,
            den,
            stats,
            grid,
            spec,
            latent_mean=lat_mean,
            latent_std=lat_std,
            schedule=schedule,
            timestep=step,
            preset=cfg.get("preset"),
        )
        return prior.to(device)

    @classmethod
    def demo(cls, device: torch.device | str = "cpu") -> Prior:
        """The bundled demo prior (``appa_core/assets/demo_prior``, 48x96 grid, 24 channels, 6-hourly, K=8)."""
        ref = importlib.resources.files("appa_core") / "assets" / "demo_prior"
        with importlib.resources.as_file(ref) as path:
            if not (Path(path) / "config.json").is_file():
                raise FileNotFoundError(f"Prior.demo: the bundled demo prior is missing from {str(path)!r}")
            return cls.load(path, device=device)

    def __repr__(self) -> str:
        return f"Prior({self.extra_repr()})"

    def extra_repr(self) -> str:
        return (
            f"preset={self.preset}, grid={self.grid.shape}, channels={self.spec.n_channels}, "
            f"latent={self.latent_shape}, window={self.window}"
        )


def _timestep(hours: object) -> np.timedelta64:
    h = float(hours)  # type: ignore[arg-type]
    if not (np.isfinite(h) and h > 0):
        raise ValueError(f"must be a positive number of hours, got {hours!r}")
    return np.timedelta64(round(h * 3600), "s")


def _positive(t: Tensor) -> Tensor:
    if not bool((t > 0).all()):
        raise ValueError(f"every value must be > 0, got {t.tolist()}")
    return t


def _vector(values: object, n: int) -> Tensor:
    t = torch.as_tensor(values, dtype=torch.float32)
    if t.shape != (n,):
        raise ValueError(f"expected {n} numbers, got shape {list(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError("non-finite value")
    return t


def _load_weights(module: nn.Module, path: Path, device: torch.device | str, shapes: dict[str, str]) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"Prior.load: missing file {str(path)!r}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"Prior.load: file {str(path)!r} is not a valid safetensors file: {err}") from err
    for key, expected in shapes.items():  # recorded by Prior.save (priors saved before had no metadata)
        if key in meta and meta[key] != expected:
            raise ValueError(
                f"Prior.load: file {str(path)!r} was trained for {key} {meta[key]}, but config.json describes "
                f"{expected}"
            )
    try:
        # clone: load_file may memory-map the file, and a checkpoint overwritten on disk must not change (or crash)
        # a prior that is already loaded
        tensors = {k: v.clone() for k, v in load_file(str(path), device=str(device)).items()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"Prior.load: file {str(path)!r} is not a valid safetensors file: {err}") from err
    expected = module.state_dict()
    for key, ref in expected.items():
        if key not in tensors:
            raise ValueError(f"Prior.load: file {str(path)!r} has no key {key!r}")
        if tuple(tensors[key].shape) != tuple(ref.shape):
            raise ValueError(
                f"Prior.load: file {str(path)!r} key {key!r} has shape {list(tensors[key].shape)}, "
                f"the config expects {list(ref.shape)}"
            )
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ValueError(f"Prior.load: file {str(path)!r} has unexpected key {extra[0]!r}")
    floats = {k: (v.float() if v.is_floating_point() else v) for k, v in tensors.items()}
    module.load_state_dict(floats, strict=True, assign=True)


def _atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(str(tmp))
    os.chmod(tmp, 0o644)  # readable package data (some writers create 0600 files)
    os.replace(tmp, path)
