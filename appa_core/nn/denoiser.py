r"""Spatio-temporal latent denoiser: a diffusion transformer over latent patches of a K-step window.

Input: latent trajectory :math:`z_t` ``[B, T, c, h, w]`` (``T <= K`` steps), noise level ``sigma [B]`` and time
features ``[B, T, 4]`` (``appa_core.data.time_features``: sin/cos of year progress, sin/cos of time of day).

* **Tokens**: each time step is cut into ``p x p`` latent patches -> ``T * (h/p) * (w/p)`` tokens of width ``D``.
* **Positions**: longitude and time enter through **rotary** embeddings inside attention, latitude through a
  learned embedding per patch row (the sphere is not translation invariant in latitude):

  - longitude: rotation angles :math:`2\pi k \lambda / 360` for integer :math:`k = 1..n_\lambda`, so attention
    scores depend on longitude only through :math:`\cos(2\pi k \Delta\lambda/360)`: **exactly periodic**, and a
    roll of the latent by whole patches rolls the output (relative positions only);
  - time: rotation angles :math:`\omega_j \tau` with geometric frequencies; relative in time, so any window length
    ``T <= K`` (or a shifted window) is handled by the same weights.

* **Conditioning**: adaptive LayerNorm (DiT "adaLN-Zero"). The modulation of a token is an MLP of
  ``embed(c_noise) + embed(time_features[t])``: per sample *and per time step*.
* **Attention**: ``torch.nn.functional.scaled_dot_product_attention`` with QK RMS-normalisation. The fused kernels
  have neither forward-mode AD (``torch.func.jvp``) nor double backward, so the module uses the *math* backend
  whenever gradients are enabled outside of training, unless the caller says that it takes only first-order VJPs
  (:func:`first_order_only`, as the guidance does): the math backend saves the ``N x N`` attention weights of every
  head and layer for the backward pass (``N`` tokens: 24,840 for the paper preset's window, about 20 GB per layer and
  member in float32), the fused kernels do not.

:class:`LatentDenoiser` is the raw network :math:`F`; :meth:`LatentDenoiser.denoise` applies EDM
preconditioning (``appa_core.diffusion.precondition.edm_coefficients``):
:math:`D(z_t, \sigma) = c_{skip} z_t + c_{out} F(c_{in} z_t, c_{noise}, \text{times})`.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import attrs
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from appa_core.diffusion.precondition import edm_coefficients

__all__ = ["DenoiserConfig", "LatentDenoiser", "first_order_only"]

_FIRST_ORDER: contextvars.ContextVar[bool] = contextvars.ContextVar("appa_first_order_only", default=False)


@contextlib.contextmanager
def first_order_only() -> Iterator[None]:
    """A context in which the caller takes only first-order reverse-mode derivatives (VJPs) of the networks it runs.

    :class:`LatentDenoiser` then keeps the fused attention kernels under autograd outside of training (less time,
    and no ``N x N`` attention weights saved for the backward pass). ``torch.func.jvp`` or a double backward through a
    denoiser called inside raise torch's ``NotImplementedError`` / ``RuntimeError``; the backward passes of the
    calls made inside may run after the context has ended.
    """
    token = _FIRST_ORDER.set(True)
    try:
        yield
    finally:
        _FIRST_ORDER.reset(token)


@attrs.frozen(kw_only=True)
class DenoiserConfig:
    """Hyper-parameters of :class:`LatentDenoiser`.

    Attributes:
        latent_channels: ``c``.
        latent_height, latent_width: ``h, w`` of the latent grid.
        window: ``K``, the largest number of time steps.
        patch: spatial patch size ``p`` (``h`` and ``w`` must be multiples).
        width: token width ``D``.
        depth: number of transformer blocks.
        heads: attention heads (``D / heads`` must be a multiple of 4).
        mlp_ratio: hidden width of the MLPs relative to ``D``.
        lon_frequencies: number of integer longitude wavenumbers ``k`` in the rotary embedding.
        time_frequencies: number of time frequencies in the rotary embedding.
        time_feature_dim: number of time features per step (4).
        cond_dim: width of the conditioning vector feeding the adaLN modulations (``None`` = ``width``).
    """

    latent_channels: int
    latent_height: int
    latent_width: int
    window: int = 8
    patch: int = 2
    width: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    lon_frequencies: int = 6
    time_frequencies: int = 4
    time_feature_dim: int = 4
    cond_dim: int | None = None

    def __attrs_post_init__(self) -> None:
        if self.latent_height % self.patch or self.latent_width % self.patch:
            raise ValueError(
                f"DenoiserConfig: latent grid {self.latent_height}x{self.latent_width} is not a multiple of "
                f"field 'patch' = {self.patch}"
            )
        if self.width % self.heads or (self.width // self.heads) % 4:
            raise ValueError(
                f"DenoiserConfig: field 'width' = {self.width} must split into {self.heads} heads of a size "
                "divisible by 4"
            )
        half = self.width // self.heads // 2
        if self.lon_frequencies + self.time_frequencies > half:
            raise ValueError(
                f"DenoiserConfig: lon_frequencies + time_frequencies = "
                f"{self.lon_frequencies + self.time_frequencies} exceeds the {half} rotary pairs of a head"
            )
        if self.window < 1:
            raise ValueError(f"DenoiserConfig: field 'window' has value {self.window} < 1")

    def to_dict(self) -> dict[str, object]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> DenoiserConfig:
        return cls(**data)  # type: ignore[arg-type]


def _sine_embedding(x: Tensor, dim: int, fmin: float = 0.5, fmax: float = 500.0) -> Tensor:
    """``[...]`` -> ``[..., dim]`` sin/cos features with geometric frequencies in [fmin, fmax]."""
    freqs = torch.exp(torch.linspace(math.log(fmin), math.log(fmax), dim // 2, device=x.device, dtype=x.dtype))
    a = x[..., None] * freqs
    return torch.cat([a.sin(), a.cos()], dim=-1)


class _RMSNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.square().mean(dim=-1, keepdim=True) + 1e-6)


class _Block(nn.Module):
    """adaLN-Zero transformer block: ``x + g1 * Attn(mod(LN(x))) ; x + g2 * MLP(mod(LN(x)))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, cond_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.SiLU(), nn.Linear(hidden, width))
        self.modulation = nn.Linear(cond_dim, 6 * width)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)
        self.qk_norm = _RMSNorm()

    def forward(self, x: Tensor, cond: Tensor, rope: tuple[Tensor, Tensor], math_attention: bool) -> Tensor:
        # x [B, T, S, D] tokens (S spatial tokens per step), cond [B, T, 1, Dc] (activated conditioning)
        s1, b1, g1, s2, b2, g2 = self.modulation(cond).chunk(6, dim=-1)
        bsz, steps, ns, d = x.shape
        n = steps * ns
        y = self.norm(x) * (1 + s1) + b1
        q, k, v = self.qkv(y).view(bsz, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k = _apply_rope(self.qk_norm(q), rope), _apply_rope(self.qk_norm(k), rope)
        if math_attention:
            with sdpa_kernel(SDPBackend.MATH):
                a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = F.scaled_dot_product_attention(q, k, v)
        x = x + g1 * self.proj(a.transpose(1, 2).reshape(bsz, steps, ns, d))
        y = self.norm(x) * (1 + s2) + b2
        return x + g2 * self.mlp(y)


def _apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate pairs ``(x[..., :r], x[..., r:2r])`` by the angles whose cos/sin are ``rope`` ``[N, r]``."""
    cos, sin = rope
    r = cos.shape[-1]
    x1, x2, rest = x[..., :r], x[..., r : 2 * r], x[..., 2 * r :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest], dim=-1)


class LatentDenoiser(nn.Module):
    """The raw network :math:`F(c_{in} z_t, c_{noise}, \\text{time features})` and its EDM-preconditioned wrapper.

    Shapes: ``z [B, T, c, h, w]`` with ``1 <= T <= K``; ``c_noise [B]``; ``time_features [B, T, 4]`` or ``None``
    (zeros: "date unknown"; training drops the features to zero 10% of the time so that this is meaningful).
    """

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        cfg = config
        p, d = cfg.patch, cfg.width
        dc = cfg.cond_dim or d
        self.tokens_h, self.tokens_w = cfg.latent_height // p, cfg.latent_width // p
        self.embed_in = nn.Linear(cfg.latent_channels * p * p, d)
        self.lat_embedding = nn.Parameter(torch.zeros(self.tokens_h, d))
        nn.init.normal_(self.lat_embedding, std=0.02)
        self.noise_mlp = nn.Sequential(nn.Linear(dc, dc), nn.SiLU(), nn.Linear(dc, dc))
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_feature_dim, dc), nn.SiLU(), nn.Linear(dc, dc))
        self.blocks = nn.ModuleList([_Block(d, cfg.heads, cfg.mlp_ratio, dc) for _ in range(cfg.depth)])
        self.norm_out = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.modulation_out = nn.Linear(dc, 2 * d)
        self.embed_out = nn.Linear(d, cfg.latent_channels * p * p)
        for lin in (self.modulation_out, self.embed_out):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)
        #: force the math attention kernel (forward-mode AD / double backward); ``None`` = automatic: the math kernel
        #: when gradients are enabled outside of training, unless inside :func:`first_order_only`.
        self.math_attention: bool | None = None

    # ---------------------------------------------------------------- positions
    def _rope(self, steps: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        cfg = self.config
        half = cfg.width // cfg.heads // 2
        tw, th = self.tokens_w, self.tokens_h
        # token order: (t, i, j) with i the latitude row and j the longitude column of the patch
        lon = torch.arange(tw, device=device, dtype=torch.float64) * (360.0 / tw)  # patch longitude (degrees)
        k = torch.arange(1, cfg.lon_frequencies + 1, device=device, dtype=torch.float64)
        ang_lon = 2 * math.pi * lon[:, None] * k / 360.0  # [tw, nl]
        tau = torch.arange(steps, device=device, dtype=torch.float64)
        om = 1.0 / (
            cfg.window
            ** (torch.arange(cfg.time_frequencies, device=device, dtype=torch.float64) / max(cfg.time_frequencies, 1))
        )
        ang_t = tau[:, None] * om  # [T, nt]
        ang = torch.zeros(steps, th, tw, half, device=device, dtype=torch.float64)
        ang[..., : cfg.lon_frequencies] = ang_lon[None, None, :, :]
        ang[..., cfg.lon_frequencies : cfg.lon_frequencies + cfg.time_frequencies] = ang_t[:, None, None, :]
        ang = ang.reshape(steps * th * tw, half)
        return ang.cos().to(dtype), ang.sin().to(dtype)

    # ---------------------------------------------------------------- network
    def forward(self, z: Tensor, c_noise: Tensor, time_features: Tensor | None = None) -> Tensor:
        """Raw network ``F``: ``z [B, T, c, h, w]``, ``c_noise [B]``, ``time_features [B, T, 4]`` or ``[T, 4]``
        -> ``[B, T, c, h, w]``."""
        cfg = self.config
        bsz, steps = z.shape[:2]
        if z.shape[2:] != (cfg.latent_channels, cfg.latent_height, cfg.latent_width):
            raise ValueError(
                f"LatentDenoiser: expected z of shape [B, T, {cfg.latent_channels}, {cfg.latent_height}, "
                f"{cfg.latent_width}], got {list(z.shape)}"
            )
        if not 1 <= steps <= cfg.window:
            raise ValueError(f"LatentDenoiser: window length T={steps} outside [1, K={cfg.window}]")
        p, th, tw = cfg.patch, self.tokens_h, self.tokens_w
        x = z.reshape(bsz, steps, cfg.latent_channels, th, p, tw, p)
        x = x.permute(0, 1, 3, 5, 2, 4, 6).reshape(bsz, steps * th * tw, cfg.latent_channels * p * p)
        x = self.embed_in(x)
        x = (x.view(bsz, steps, th, tw, -1) + self.lat_embedding[None, None, :, None, :]).reshape(
            bsz, steps, th * tw, cfg.width
        )

        c_noise = c_noise.reshape(-1).expand(bsz).to(z.dtype)
        dc = cfg.cond_dim or cfg.width
        cond = self.noise_mlp(_sine_embedding(c_noise, dc))[:, None, :]  # [B, 1, Dc]
        if time_features is None:
            time_features = torch.zeros(bsz, steps, cfg.time_feature_dim, dtype=z.dtype, device=z.device)
        cond = cond + self.time_mlp(time_features.to(z.dtype).expand(bsz, steps, -1))  # [B, T, D]
        cond = F.silu(cond)[:, :, None, :]  # [B, T, 1, Dc], broadcast over the spatial tokens

        rope = self._rope(steps, z.device, z.dtype)
        math_attention = self.math_attention
        if math_attention is None:
            math_attention = torch.is_grad_enabled() and not self.training and not _FIRST_ORDER.get()
        for block in self.blocks:
            x = block(x, cond, rope, math_attention)
        s, b = self.modulation_out(cond).chunk(2, dim=-1)
        x = self.embed_out(self.norm_out(x) * (1 + s) + b)
        x = x.view(bsz, steps, th, tw, cfg.latent_channels, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(bsz, steps, cfg.latent_channels, cfg.latent_height, cfg.latent_width)

    def denoise(self, z_t: Tensor, sigma: Tensor, time_features: Tensor | None = None) -> Tensor:
        r"""EDM-preconditioned denoiser :math:`D(z_t, \sigma) = c_{skip} z_t + c_{out} F(c_{in} z_t, c_{noise})`.

        ``z_t [B, T, c, h, w]`` standardized latents, ``sigma [B]`` or 0-d, ``time_features [B, T, 4]`` or ``None``.
        """
        bsz = z_t.shape[0]
        sigma = torch.as_tensor(sigma, dtype=z_t.dtype, device=z_t.device).reshape(-1).expand(bsz)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma)
        shape = (bsz,) + (1,) * (z_t.dim() - 1)
        f = self(z_t * c_in.view(shape), c_noise, time_features)
        return c_skip.view(shape) * z_t + c_out.view(shape) * f
