r"""Convolutional autoencoder over the latitude-longitude grid.

The encoder maps a standardized state ``[N, C, H, W]`` to a latent grid ``[N, c, H/f, W/f]`` with ``f = 2**L``
(``L`` = number of downsamplings), the decoder maps it back. The architecture follows the convolutional AE of
Appa (Andry et al., 2025): residual blocks (channel LayerNorm -> conv -> SiLU -> conv, residual), pixel-unshuffle +
conv for downsampling and conv + pixel-shuffle for upsampling, no attention, and a soft saturation of the latent
:math:`z / \sqrt{1 + (z/5)^2}`.

**Sphere padding.** Every 3x3 convolution pads its input itself, so that the network is a function on the sphere:

* longitude is padded **circularly** (the grid is periodic), hence rolling the input by a multiple of ``f``
  columns rolls every feature map and the output by the same angle (tested);
* latitude is padded by **reflection across the pole with a 180 degree shift**: the row beyond the north pole at
  latitude :math:`90 + \delta` is the row at :math:`90 - \delta` on the opposite meridian, i.e. row ``i`` rolled by
  ``W/2``. For grids without poles (cell centres at :math:`\pm(90 - \Delta/2)`, WeatherBench2 ``without_poles``),
  and for every downsampled level of such a grid, this is the exact geometric neighbour, unlike zero padding
  (which invents a wall at the pole) or replicate padding (which ties the pole row to itself). Vector components
  (u, v) change sign across the pole; the network's features are not vectors, so this is left to learning.
  The shift is ``W // 2`` columns: exact when every level has an even width (e.g. 96 columns with ``f = 4``),
  half a column off otherwise (1440 columns with ``f = 32`` gives 45 latent columns).
  For grids whose height is not a multiple of ``f`` (e.g. 721 rows at 0.25 deg), the input is first zero-padded in
  latitude to the next multiple (as Appa does, 721 -> 736) and cropped after decoding.

**Static fields.** With ``static_channels = S > 0`` the autoencoder holds a buffer ``static [S, H, W]`` of fields
that do not change in time (:func:`static_features`: the position on the sphere as the unit vector
:math:`(\cos\phi\cos\lambda, \cos\phi\sin\lambda, \sin\phi)`, orography in km and the land-sea mask) and
gives them to both halves: concatenated to the encoder's input, and to the decoder at the latent resolution
(plain means over ``f x f`` cells) and again at full resolution before its output convolution. The latent therefore
spends no capacity on what is known everywhere and always (Appa conditions its autoencoder the same way). The
buffer is saved with the weights (``autoencoder.safetensors``), so a prior directory stays self-contained.

**Linearization.** :meth:`Autoencoder.linearize_decode` returns ``decode(z)`` and the map
:math:`v \mapsto J_{decode}(z)\, v`, built from one forward pass whose activations every later product reuses.
Guidance needs this product once per solver iteration at a fixed ``z``. ``torch.func.jvp`` reruns the primal pass
each time and, for every convolution, also convolves the input with the weights' zero tangent: three convolutions
where the tangent needs one (measured on the demo decoder: 3.4x the time of the tangent map).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable

import attrs
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["STATIC_FEATURES", "Autoencoder", "AutoencoderConfig", "SpherePad", "autoencoder_loss", "static_features"]

#: Names of the rows of :func:`static_features` (orography and land-sea mask only when given).
STATIC_FEATURES = ("position_x", "position_y", "position_z", "orography_km", "land_sea_mask")


def _tuple_int(values: object) -> tuple[int, ...]:
    return tuple(int(v) for v in values)  # type: ignore[attr-defined]


@attrs.frozen(kw_only=True)
class AutoencoderConfig:
    """Hyper-parameters of :class:`Autoencoder`.

    Attributes:
        in_channels: state channels ``C``.
        latent_channels: latent channels ``c``.
        channels: feature width per resolution level, finest first; ``len(channels) - 1`` downsamplings by 2.
        blocks: residual blocks per level (encoder and decoder each): one number for all levels, or one per level
            (finest first).
        saturation: soft-clip bound of the latent (``None`` = no clipping).
        sigma_z: std of the Gaussian noise added to the latent before decoding during training (Appa's sigma_z).
        static_channels: number of static input fields ``S`` (0: none; 5 for :func:`static_features` with
            orography and land-sea mask).
        decoder_channels, decoder_blocks: widths and residual blocks of the decoder's levels (finest first, same
            number of levels as ``channels``); ``None``: the encoder's. A lighter decoder than encoder costs nothing
            in accuracy of the encoder and makes guided sampling cheaper: every solver iteration differentiates the
            decoder (one JVP and one VJP), never the encoder.
    """

    in_channels: int
    latent_channels: int = 8
    channels: tuple[int, ...] = attrs.field(default=(32, 64, 64), converter=_tuple_int)
    blocks: int | tuple[int, ...] = attrs.field(
        default=1, converter=lambda v: v if isinstance(v, int) else _tuple_int(v)
    )
    saturation: float | None = 5.0
    sigma_z: float = 0.0
    static_channels: int = 0
    decoder_channels: tuple[int, ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else _tuple_int(v)
    )
    decoder_blocks: int | tuple[int, ...] | None = attrs.field(
        default=None, converter=lambda v: v if v is None or isinstance(v, int) else _tuple_int(v)
    )

    def __attrs_post_init__(self) -> None:
        if self.in_channels < 1 or self.latent_channels < 1:
            raise ValueError(
                f"AutoencoderConfig: fields 'in_channels' and 'latent_channels' must be >= 1, got "
                f"{self.in_channels} and {self.latent_channels}"
            )
        if self.static_channels < 0:
            raise ValueError(f"AutoencoderConfig: field 'static_channels' must be >= 0, got {self.static_channels}")
        if not self.channels or min(self.channels) < 1:
            raise ValueError(f"AutoencoderConfig: field 'channels' must be positive widths, got {self.channels}")
        if min(self.level_blocks) < 0 or len(self.level_blocks) != len(self.channels):
            raise ValueError(
                f"AutoencoderConfig: field 'blocks' has value {self.blocks}; need non-negative counts, one per level "
                f"of {self.channels}"
            )

        dec_ch = self.decoder_widths
        if len(dec_ch) != len(self.channels) or min(dec_ch) < 1:
            raise ValueError(
                f"AutoencoderConfig: field 'decoder_channels' has value {self.decoder_channels}; need positive "
                f"widths, one per level of {self.channels}"
            )
        dec_b = self.decoder_level_blocks
        if len(dec_b) != len(self.channels) or min(dec_b) < 0:
            raise ValueError(
                f"AutoencoderConfig: field 'decoder_blocks' has value {self.decoder_blocks}; need non-negative "
                f"counts, one per level of {self.channels}"
            )

    @property
    def level_blocks(self) -> tuple[int, ...]:
        """Residual blocks per level of the encoder, finest first."""
        b = self.blocks
        return (b,) * len(self.channels) if isinstance(b, int) else b

    @property
    def decoder_widths(self) -> tuple[int, ...]:
        """Widths of the decoder's levels, finest first."""
        return self.channels if self.decoder_channels is None else self.decoder_channels

    @property
    def decoder_level_blocks(self) -> tuple[int, ...]:
        """Residual blocks per level of the decoder, finest first."""
        b = self.blocks if self.decoder_blocks is None else self.decoder_blocks
        return (b,) * len(self.channels) if isinstance(b, int) else b

    @property
    def factor(self) -> int:
        """Downsampling factor ``f`` in each horizontal direction."""
        return 2 ** (len(self.channels) - 1)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """Latent ``(c, h, w)`` for a grid of ``height x width``."""
        f = self.factor
        if width % f:
            raise ValueError(f"AutoencoderConfig: grid width {width} must be a multiple of the downsampling factor {f}")
        return (self.latent_channels, math.ceil(height / f), width // f)

    def to_dict(self) -> dict[str, object]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> AutoencoderConfig:
        return cls(**data)  # type: ignore[arg-type]


def static_features(grid: object, orography: object = None, land_sea_mask: object = None) -> Tensor:
    """Static input fields ``[S, H, W]`` float32 for an autoencoder with ``static_channels = S``.

    Rows: the unit vector of each cell centre (``position_x/y/z``, smooth and periodic on the sphere, unlike raw
    latitude/longitude), then, when given, the orography in km (surface geopotential ``[H, W]`` in m**2 s**-2
    divided by ``g * 1000``) and the land-sea mask ``[H, W]`` (fraction 0-1). Names: :data:`STATIC_FEATURES`.

    Args:
        grid: a :class:`~appa_core.grid.Grid` (latitudes and longitudes in degrees).
        orography: surface geopotential ``[H, W]`` (m**2 s**-2) or ``None``.
        land_sea_mask: land fraction ``[H, W]`` or ``None``.
    """
    lat = torch.as_tensor(np.array(grid.lat, dtype=np.float64))  # type: ignore[attr-defined]
    lon = torch.as_tensor(np.array(grid.lon, dtype=np.float64))  # type: ignore[attr-defined]
    phi, lam = torch.deg2rad(lat)[:, None], torch.deg2rad(lon)[None, :]
    rows = [torch.cos(phi) * torch.cos(lam), torch.cos(phi) * torch.sin(lam), torch.sin(phi).expand(-1, lam.shape[1])]
    shape = (lat.numel(), lon.numel())
    for name, field, scale in (
        ("orography", orography, 1.0 / (9.80665 * 1000.0)),
        ("land_sea_mask", land_sea_mask, 1.0),
    ):
        if field is None:
            continue
        f = torch.as_tensor(np.array(field, dtype=np.float64))
        if tuple(f.shape) != shape:
            raise ValueError(f"static_features: field {name!r} has shape {list(f.shape)}, the grid is {list(shape)}")
        if not torch.isfinite(f).all():
            raise ValueError(f"static_features: field {name!r} has non-finite values")
        rows.append(f * scale)
    return torch.stack([r.expand(shape) for r in rows]).float()


class SpherePad(nn.Module):
    """Pad ``[N, C, H, W]`` by ``p`` cells: circular in longitude, reflection across the poles with a 180 degree
    shift in latitude (row ``-1 - i`` is row ``i`` rolled by ``W // 2``)."""

    def __init__(self, p: int) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        p = self.p
        if p == 0:
            return x
        w = x.shape[-1]
        north = torch.roll(x[..., :p, :].flip(-2), w // 2, dims=-1)
        south = torch.roll(x[..., -p:, :].flip(-2), w // 2, dims=-1)
        x = torch.cat([north, x, south], dim=-2)
        return torch.cat([x[..., -p:], x, x[..., :p]], dim=-1)


class _Conv(nn.Module):
    """3x3 (or 1x1) convolution with sphere padding."""

    def __init__(self, cin: int, cout: int, k: int = 3) -> None:
        super().__init__()
        self.pad = SpherePad(k // 2)
        self.conv = nn.Conv2d(cin, cout, k)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pad(x))

    def tangent(self, dx: Tensor, constant_tail: int = 0) -> Tensor:
        """The linear part (no bias) on ``dx`` ``[N, cin - constant_tail, H, W]``: the last ``constant_tail`` input
        channels are constant (the static fields), their tangent is zero."""
        cin = self.conv.weight.shape[1] - constant_tail
        if dx.shape[1] != cin:
            raise ValueError(f"_Conv.tangent: expected {cin} varying input channels, got {dx.shape[1]}")
        return F.conv2d(self.pad(dx), self.conv.weight[:, :cin])

    def linearize(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        return self(x), self.tangent


class _ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of ``[N, C, H, W]`` (no affine), per pixel."""

    def forward(self, x: Tensor) -> Tensor:
        mu = x.mean(dim=1, keepdim=True)
        var = (x - mu).square().mean(dim=1, keepdim=True)
        return (x - mu) * torch.rsqrt(var + 1e-5)

    def linearize(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        r"""With :math:`y = (x - \bar x)\, r`, :math:`r = (\overline{(x - \bar x)^2} + \epsilon)^{-1/2}` (means
        over channels): :math:`dy = r\,(d\tilde x - y\, \overline{y\, d\tilde x})`, :math:`d\tilde x = dx -
        \overline{dx}`."""
        mu = x.mean(dim=1, keepdim=True)
        r = torch.rsqrt((x - mu).square().mean(dim=1, keepdim=True) + 1e-5)
        y = (x - mu) * r
        r_, y_ = r.detach(), y.detach()  # the tangent keeps values, not the primal's graph (when it has one)

        def tangent(dx: Tensor) -> Tensor:
            dxc = dx - dx.mean(dim=1, keepdim=True)
            return r_ * (dxc - y_ * (y_ * dxc).mean(dim=1, keepdim=True))

        return y, tangent


class _ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = _ChannelNorm()
        self.conv1 = _Conv(c, c)
        self.conv2 = _Conv(c, c)
        with torch.no_grad():
            self.conv2.conv.weight.mul_(1e-2)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.silu(self.conv1(self.norm(x))))

    def linearize(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        r"""SiLU's derivative :math:`s(a)\,(1 + a\,(1 - s(a)))`, :math:`s` the logistic function."""
        y, norm_t = self.norm.linearize(x)
        a = self.conv1(y)
        with torch.no_grad():  # the tangent's slopes: values, outside the primal's graph (when it has one)
            s = torch.sigmoid(a)
            slope = s * (1 + a * (1 - s))
        out = x + self.conv2(F.silu(a))

        def tangent(dx: Tensor) -> Tensor:
            return dx + self.conv2.tangent(slope * self.conv1.tangent(norm_t(dx)))

        return out, tangent


class _Down(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _Conv(4 * cin, cout)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pixel_unshuffle(x, 2))


class _Up(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _Conv(cin, 4 * cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.pixel_shuffle(self.conv(x), 2)

    def linearize(self, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        return self(x), lambda dx: F.pixel_shuffle(self.conv.tangent(dx), 2)


class Autoencoder(nn.Module):
    """Convolutional lat-lon autoencoder (see the module docstring).

    ``encode``: standardized state ``[N, C, H, W]`` -> latent ``[N, c, h, w]``;
    ``decode``: latent -> standardized state ``[N, C, H, W]`` (``H`` restored by cropping).
    ``static``: ``[S, H, W]`` static fields (:func:`static_features`) when ``config.static_channels > 0``; zeros
    until given or loaded with the weights.
    """

    def __init__(self, config: AutoencoderConfig, height: int, width: int, static: Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.height, self.width = height, width
        c, h, w = config.latent_shape(height, width)
        self.latent_shape = (c, h, w)
        f = config.factor
        self.pad_rows = h * f - height
        ch = config.channels
        s_ch = config.static_channels
        if s_ch:
            buf = torch.zeros(s_ch, height, width) if static is None else torch.as_tensor(static).float().clone()
            if tuple(buf.shape) != (s_ch, height, width):
                raise ValueError(
                    f"Autoencoder: field 'static' has shape {list(buf.shape)}, expected [{s_ch}, {height}, {width}]"
                )
            self.register_buffer("static", buf)
        elif static is not None:
            raise ValueError("Autoencoder: field 'static' given but config.static_channels is 0")
        enc: list[nn.Module] = [_Conv(config.in_channels + s_ch, ch[0])]
        for i, ci in enumerate(ch):
            enc += [_ResBlock(ci) for _ in range(config.level_blocks[i])]
            if i + 1 < len(ch):
                enc.append(_Down(ci, ch[i + 1]))
        enc += [_ChannelNorm(), _Conv(ch[-1], config.latent_channels)]
        self.encoder = nn.Sequential(*enc)
        ch = config.decoder_widths
        dec: list[nn.Module] = [_Conv(config.latent_channels + s_ch, ch[-1])]
        for i in range(len(ch) - 1, -1, -1):
            dec += [_ResBlock(ch[i]) for _ in range(config.decoder_level_blocks[i])]
            if i > 0:
                dec.append(_Up(ch[i], ch[i - 1]))
        dec.append(_ChannelNorm())
        if s_ch:  # the output convolution also sees the static fields at full resolution
            self.decoder_out = _Conv(ch[0] + s_ch, config.in_channels)
        else:  # one Sequential, as in priors saved before static fields existed
            dec.append(_Conv(ch[0], config.in_channels))
        self.decoder = nn.Sequential(*dec)

    def _saturate(self, z: Tensor) -> Tensor:
        s = self.config.saturation
        return z if s is None else z / torch.sqrt(1 + (z / s) ** 2)

    def encode(self, x: Tensor) -> Tensor:
        """``[N, C, H, W]`` standardized -> ``[N, c, h, w]``."""
        if x.shape[-3:] != (self.config.in_channels, self.height, self.width):
            raise ValueError(
                f"Autoencoder.encode: expected [N, {self.config.in_channels}, {self.height}, {self.width}], "
                f"got {list(x.shape)}"
            )
        if self.config.static_channels:
            x = torch.cat([x, self.static.to(x.dtype).expand(x.shape[0], -1, -1, -1)], dim=1)
        x = self._pad(x)
        return self._saturate(self.encoder(x))

    def _pad(self, x: Tensor) -> Tensor:
        if self.pad_rows:
            top = self.pad_rows // 2
            x = F.pad(x, (0, 0, top, self.pad_rows - top))
        return x

    def _static_at(self, n: int, dtype: torch.dtype, coarse: bool) -> Tensor:
        s = self._pad(self.static.to(dtype)[None])
        if coarse:
            s = F.avg_pool2d(s, self.config.factor)
        return s.expand(n, -1, -1, -1)

    def decode(self, z: Tensor, noise: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """``[N, c, h, w]`` -> ``[N, C, H, W]``; ``noise=True`` adds ``sigma_z`` Gaussian noise to ``z`` first."""
        if z.shape[-3:] != self.latent_shape:
            raise ValueError(
                f"Autoencoder.decode: expected [N, {', '.join(map(str, self.latent_shape))}], got {list(z.shape)}"
            )
        if noise and self.config.sigma_z > 0:
            eps = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
            z = z + self.config.sigma_z * eps
        if self.config.static_channels:
            z = torch.cat([z, self._static_at(z.shape[0], z.dtype, coarse=True)], dim=1)
            h = self.decoder(z)
            x = self.decoder_out(torch.cat([h, self._static_at(z.shape[0], h.dtype, coarse=False)], dim=1))
        else:
            x = self.decoder(z)
        return self._crop(x)

    def linearize_decode(self, z: Tensor, graph: bool = False) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
        """``decode(z)`` and its tangent map ``v [N, c, h, w] -> J_decode(z) v [N, C, H, W]``, without autograd.

        One forward pass stores what the tangent needs (the channel norms' outputs and scales, the SiLU slopes);
        each call of the tangent map then costs one convolution per convolution of the decoder. Equal to
        ``torch.func.jvp(self.decode, (z,), (v,))`` to rounding (tested). Both outputs are detached from ``z``,
        unless ``graph=True``: then ``decode(z)`` keeps its autograd graph (under the ambient grad mode), so that
        one forward pass serves a VJP through the decoder as well as the tangent map (the guidance's observation
        of the denoised state); the tangent map still runs without autograd.
        """
        if z.shape[-3:] != self.latent_shape:
            raise ValueError(
                f"Autoencoder.linearize_decode: expected [N, {', '.join(map(str, self.latent_shape))}], "
                f"got {list(z.shape)}"
            )
        with contextlib.nullcontext() if graph else torch.no_grad():
            h = z
            if self.config.static_channels:
                h = torch.cat([z, self._static_at(z.shape[0], z.dtype, coarse=True)], dim=1)
            s_ch = self.config.static_channels
            tangents = []
            for i, m in enumerate(self.decoder):
                h, t = m.linearize(h)
                if i == 0 and s_ch:  # the first convolution also sees the static fields (constant)
                    t = functools.partial(m.tangent, constant_tail=s_ch)
                tangents.append(t)
            if s_ch:
                h = torch.cat([h, self._static_at(z.shape[0], h.dtype, coarse=False)], dim=1)
                h, _ = self.decoder_out.linearize(h)
                tangents.append(functools.partial(self.decoder_out.tangent, constant_tail=s_ch))
            x = self._crop(h)

        def tangent(v: Tensor) -> Tensor:
            with torch.no_grad():
                for t in tangents:
                    v = t(v)
                return self._crop(v)

        return x, tangent

    def _crop(self, x: Tensor) -> Tensor:
        if self.pad_rows:
            top = self.pad_rows // 2
            x = x[..., top : top + self.height, :]
        return x

    def forward(self, x: Tensor, eps: Tensor | None = None) -> Tensor:
        """Reconstruction ``decode(encode(x) + sigma_z * eps)`` (``eps [N, c, h, w]`` standard normal or ``None``)."""
        z = self.encode(x)
        if eps is not None and self.config.sigma_z > 0:
            z = z + self.config.sigma_z * eps.to(z.dtype)
        return self.decode(z)


def autoencoder_loss(x_hat: Tensor, x: Tensor, lat_weights: Tensor, channel_weights: Tensor | None = None) -> Tensor:
    r"""Latitude (and optionally channel/level) weighted MSE on standardized variables.

    .. math:: L = \frac{1}{N C H W} \sum_{n,c,i,j} w_i \, v_c \, (\hat x - x)^2_{n c i j}

    Args:
        x_hat, x: ``[N, C, H, W]`` standardized.
        lat_weights: ``[H, 1]`` area weights with mean 1 (``Grid.area_weights_tensor()``).
        channel_weights: ``[C]`` weights with mean 1 (e.g. GraphCast-style pressure weights), or ``None``.
    """
    err = (x_hat - x).square() * lat_weights
    if channel_weights is not None:
        err = err * channel_weights[:, None, None]
    return err.mean()


def level_weights(spec: object) -> Tensor:
    """GraphCast-style channel weights ``[C]`` (mean 1): atmospheric channels proportional to pressure,
    ``2m_temperature`` 1, other surface variables 0.1 (relative to the mean atmospheric weight)."""
    from appa_core.spec import StateSpec

    assert isinstance(spec, StateSpec)
    levels = torch.tensor(spec.levels, dtype=torch.float64) if spec.levels else torch.ones(1, dtype=torch.float64)
    lev_w = levels / levels.mean()
    w = []
    for ch in spec.channels:
        if ch.level is None:
            w.append(1.0 if ch.variable == "2m_temperature" else 0.1)
        else:
            w.append(float(lev_w[spec.levels.index(ch.level)]))
    t = torch.tensor(w, dtype=torch.float32)
    return t / t.mean()
