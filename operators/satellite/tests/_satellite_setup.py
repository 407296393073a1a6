"""Shared tiny setups for the satellite tests (unique module name: the test dirs of several distributions share
``sys.path``)."""

from __future__ import annotations

import numpy as np
import torch

from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_op_satellite._examples import example_layout, example_swath

WINDOW = example_layout()[2]


def tiny_setup() -> tuple[Grid, StateSpec, np.ndarray]:
    """9 x 16 grid; 2m_temperature, temperature and u on 100/250/500/850 hPa; 3 states 6 h apart."""
    return example_layout()


def tiny_swath(radius_km: float = 1200.0):  # type: ignore[no-untyped-def]
    """7 footprints per line, a line every 30 min: 25 lines x 7 over the 12 h window."""
    return example_swath(radius_km)


def state(grid: Grid, spec: StateSpec, times: np.ndarray, batch: int, seed: int = 0) -> torch.Tensor:
    """Plausible random states ``[B, T, C, H, W]`` float64 (250 K +- 10)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, times.size, spec.n_channels, *grid.shape), generator=g, dtype=torch.float64)
    return 250.0 + 10.0 * x
