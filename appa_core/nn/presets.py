"""Model presets: ``tiny`` (tests), ``demo`` (the bundled prior, trained on 2 CPU cores) and ``paper``
(the Appa configuration at 0.25 deg / 71 channels, instantiable on the ``meta`` device to count parameters).

A preset fixes the grid, the state spec, the autoencoder and the latent denoiser; :func:`build` instantiates them.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import attrs
import numpy as np
import torch

from appa_core.grid import Grid
from appa_core.nn.autoencoder import Autoencoder, AutoencoderConfig
from appa_core.nn.denoiser import DenoiserConfig, LatentDenoiser
from appa_core.spec import StateSpec

__all__ = ["PRESETS", "Preset", "build", "count_parameters", "get_preset", "main_params"]

PAPER_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)
ATMOS = ("temperature", "u_component_of_wind", "v_component_of_wind", "geopotential", "specific_humidity")


@attrs.frozen(kw_only=True)
class Preset:
    """A full prior configuration.

    Attributes:
        name: preset name.
        grid: ``(nlat, nlon, poles)`` of the equiangular grid.
        spec: the state spec.
        autoencoder: autoencoder hyper-parameters (``in_channels`` = ``spec.n_channels``).
        denoiser: denoiser hyper-parameters, without the latent shape (filled in by :func:`build`).
        timestep_hours: spacing of consecutive states.
    """

    name: str
    grid: tuple[int, int, bool]
    spec: StateSpec
    autoencoder: AutoencoderConfig
    denoiser: dict[str, object]
    timestep_hours: int = 6

    def make_grid(self) -> Grid:
        return Grid.equiangular(self.grid[0], self.grid[1], poles=self.grid[2])

    def denoiser_config(self) -> DenoiserConfig:
        c, h, w = self.autoencoder.latent_shape(self.grid[0], self.grid[1])
        return DenoiserConfig(latent_channels=c, latent_height=h, latent_width=w, **self.denoiser)  # type: ignore[arg-type]

    @property
    def timestep(self) -> np.timedelta64:
        return np.timedelta64(self.timestep_hours, "h")


_DEMO_SPEC = StateSpec(
    surface=("2m_temperature", "10m_u_component_of_wind", "10m_v_component_of_wind", "mean_sea_level_pressure"),
    atmospheric=("temperature", "u_component_of_wind", "v_component_of_wind", "specific_humidity", "geopotential"),
    levels=(250, 500, 700, 850),
)

PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        grid=(16, 32, False),
        spec=StateSpec(surface=("2m_temperature",), atmospheric=("temperature",), levels=(500, 850)),
        autoencoder=AutoencoderConfig(in_channels=3, latent_channels=4, channels=(8, 16), blocks=1, sigma_z=0.0),
        denoiser={
            "window": 4,
            "patch": 2,
            "width": 32,
            "depth": 2,
            "heads": 2,
            "lon_frequencies": 3,
            "time_frequencies": 2,
        },
    ),
    "demo": Preset(
        name="demo",
        grid=(48, 96, False),
        spec=_DEMO_SPEC,
        # latent cell 7.5 deg (twice the state cell, as in Appa's spirit), 24 channels (4x compression), static
        # fields (position, orography, land-sea mask) given to the encoder and the decoder; the decoder is lighter
        # than the encoder because guided sampling differentiates it at every solver iteration
        autoencoder=AutoencoderConfig(
            in_channels=24,
            latent_channels=24,
            channels=(48, 96),
            blocks=(1, 2),
            decoder_channels=(32, 96),
            decoder_blocks=(0, 1),
            sigma_z=0.01,
            static_channels=5,
        ),
        denoiser={
            "window": 8,
            "patch": 4,
            "width": 128,
            "depth": 6,
            "heads": 4,
            "mlp_ratio": 2.0,
            "lon_frequencies": 6,
            "time_frequencies": 4,
        },
    ),
    "paper": Preset(
        name="paper",
        grid=(721, 1440, True),
        timestep_hours=1,
        spec=StateSpec(
            surface=(
                "2m_temperature",
                "10m_u_component_of_wind",
                "10m_v_component_of_wind",
                "mean_sea_level_pressure",
                "sea_surface_temperature",
                "total_precipitation",
            ),
            atmospheric=ATMOS,
            levels=PAPER_LEVELS,
            units={"total_precipitation": "m"},
        ),
        autoencoder=AutoencoderConfig(
            in_channels=71, latent_channels=128, channels=(64, 128, 256, 512, 864, 1024), blocks=3, sigma_z=0.01
        ),
        denoiser={
            "window": 24,
            "patch": 1,
            "width": 1024,
            "depth": 16,
            "heads": 8,
            "lon_frequencies": 16,
            "time_frequencies": 16,
            "cond_dim": 256,
        },
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (``tiny``, ``demo``, ``paper``)."""
    if name not in PRESETS:
        raise ValueError(f"get_preset: unknown preset {name!r}; known presets are {sorted(PRESETS)}")
    return PRESETS[name]


def build(preset: Preset | str, device: torch.device | str | None = None) -> tuple[Autoencoder, LatentDenoiser]:
    """Instantiate the autoencoder and the denoiser of a preset (``device="meta"``: no memory)."""
    p = get_preset(preset) if isinstance(preset, str) else preset
    with torch.device(device or "cpu"):
        ae = Autoencoder(p.autoencoder, p.grid[0], p.grid[1])
        den = LatentDenoiser(p.denoiser_config())
    return ae, den


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(preset: Preset | str) -> dict[str, int]:
    """Parameter counts ``{"autoencoder", "encoder", "decoder", "denoiser", "total"}`` (built on ``meta``)."""
    ae, den = build(preset, device="meta")
    out = {
        "autoencoder": _count(ae),
        "encoder": _count(ae.encoder),
        "decoder": _count(ae.decoder) + (_count(ae.decoder_out) if hasattr(ae, "decoder_out") else 0),
        "denoiser": _count(den),
    }
    out["total"] = out["autoencoder"] + out["denoiser"]
    return out


def main_params(argv: Sequence[str] | None = None) -> int:
    """``appa prior params --preset paper``: print parameter counts and shapes of a preset."""
    parser = argparse.ArgumentParser(prog="appa prior params", description="Parameter counts of a model preset.")
    parser.add_argument("--preset", default="paper", choices=sorted(PRESETS))
    args = parser.parse_args(argv)
    p = get_preset(args.preset)
    counts = count_parameters(p)
    c, h, w = p.autoencoder.latent_shape(p.grid[0], p.grid[1])
    dcfg = p.denoiser_config()
    tokens = dcfg.window * (h // dcfg.patch) * (w // dcfg.patch)
    print(f"preset {p.name}: grid {p.grid[0]}x{p.grid[1]}, {p.spec.n_channels} channels, latent {c}x{h}x{w}")
    print(
        f"  autoencoder {counts['autoencoder'] / 1e6:9.2f} M (encoder {counts['encoder'] / 1e6:.2f} M, "
        f"decoder {counts['decoder'] / 1e6:.2f} M)"
    )
    print(f"  denoiser    {counts['denoiser'] / 1e6:9.2f} M (window K={dcfg.window}, {tokens} tokens)")
    print(f"  total       {counts['total'] / 1e6:9.2f} M")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_params())
