"""In-memory training data: states ``[N, C, H, W]`` (physical units) with their valid times.

The training loops index samples by integer, which makes the data order a pure function of ``(seed, step)``:
exact resume and DDP sharding need nothing else. A store is read once with xarray (``appa_core.state``) and the
selected split is held in memory (one year of the demo store is ~650 MB in float32).
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import numpy as np
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.spec import StateSpec

__all__ = ["STATIC_VARIABLES", "StateData", "contiguous_starts", "load_splits", "load_states", "sample_stream"]


#: Static fields read next to the states when a store has them (inputs of autoencoders with static channels).
STATIC_VARIABLES = ("geopotential_at_surface", "land_sea_mask")


@attrs.frozen(eq=False)
class StateData:
    """States ``x [N, C, H, W]`` float32 in physical units, ``times [N]`` datetime64[ns], their grid and spec, and
    the static fields of the store (``statics``: name -> ``[H, W]`` float32, e.g. ``geopotential_at_surface`` in
    m**2 s**-2 and ``land_sea_mask`` 0-1; empty when the store has none)."""

    x: Tensor
    times: np.ndarray
    grid: Grid
    spec: StateSpec
    statics: dict[str, np.ndarray] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.x.dim() != 4 or self.x.shape[0] != len(self.times):
            raise ValueError(
                f"StateData: field 'x' must be [N, C, H, W] with N = len(times) = {len(self.times)}, got "
                f"{list(self.x.shape)}"
            )
        if self.x.shape[1] != self.spec.n_channels or tuple(self.x.shape[2:]) != self.grid.shape:
            raise ValueError(
                f"StateData: field 'x' has shape {list(self.x.shape)}, expected [N, {self.spec.n_channels}, "
                f"{self.grid.shape[0]}, {self.grid.shape[1]}]"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    def select(self, time_range: tuple[str, str] | None) -> StateData:
        """The states with ``start <= time <= end`` (dates inclusive to the end of ``end``'s day)."""
        if time_range is None:
            return self
        lo = np.datetime64(time_range[0], "ns")
        hi = np.datetime64(time_range[1], "ns")
        if len(time_range[1]) <= 10:
            hi = hi + np.timedelta64(1, "D") - np.timedelta64(1, "ns")
        keep = np.flatnonzero((self.times >= lo) & (self.times <= hi))
        if keep.size == 0:
            raise ValueError(
                f"StateData.select: no state in {time_range}; data covers {self.times[0]} .. {self.times[-1]}"
            )
        return StateData(self.x[keep], self.times[keep], self.grid, self.spec, self.statics)


def load_states(
    data: str | os.PathLike[str] | StateData,
    spec: StateSpec,
    time_range: tuple[str, str] | None = None,
) -> StateData:
    """Read ``spec``'s channels of a WeatherBench2-layout zarr store or URL into memory (``open_wb2``), or select
    ``time_range`` of a :class:`StateData`. ``time_range`` dates are inclusive (whole days)."""
    if isinstance(data, StateData):
        return data.select(time_range)
    from appa_core.data.reader import open_wb2
    from appa_core.state import dataset_to_tensor

    if "://" not in str(data) and not Path(data).exists():
        raise FileNotFoundError(f"load_states: data store {str(data)!r} does not exist")
    ds = open_wb2(data, variables=list(spec.variables), levels=list(spec.levels) or None, time=time_range)
    x, times, grid = dataset_to_tensor(ds, spec)
    statics = {}
    present = [v for v in STATIC_VARIABLES if v not in spec.variables]
    if present:
        full = open_wb2(data, time=time_range)
        for name in present:
            if name in full.data_vars and "time" not in full[name].dims:
                arr = full[name].transpose("latitude", "longitude").values.astype(np.float32)
                statics[name] = arr
    return StateData(x.float().contiguous(), np.asarray(times).astype("datetime64[ns]"), grid, spec, statics)


def load_splits(
    data: str | os.PathLike[str] | StateData,
    spec: StateSpec,
    train_range: tuple[str, str] | None,
    valid_range: tuple[str, str] | None,
    val_data: str | os.PathLike[str] | StateData | None = None,
) -> tuple[StateData, StateData | None]:
    """The training split of ``data`` and the validation split: all of ``val_data`` if given, else
    ``valid_range`` of ``data`` (``None`` if neither)."""
    train = load_states(data, spec, train_range)
    if val_data is not None:
        return train, load_states(val_data, spec, None)
    return train, None if valid_range is None else load_states(data, spec, valid_range)


def contiguous_starts(times: np.ndarray, length: int, timestep: np.timedelta64) -> np.ndarray:
    """Indices ``i`` such that ``times[i : i + length]`` are consecutive states ``timestep`` apart."""
    times = np.asarray(times).astype("datetime64[ns]")
    n = len(times) - length + 1
    if n <= 0:
        return np.zeros(0, dtype=np.int64)
    ok = np.diff(times) == np.timedelta64(timestep).astype("timedelta64[ns]")
    bad = np.concatenate([[0], np.cumsum(~ok)])
    starts = np.arange(n)
    return starts[bad[starts + length - 1] - bad[starts] == 0].astype(np.int64)


def sample_stream(seed: int, n_items: int, start: int, count: int) -> np.ndarray:
    """Items ``start .. start + count - 1`` of the infinite stream of epochs ``perm(seed, 0), perm(seed, 1), ...``.

    Returns ``[count, 2]`` int64: (item index in ``[0, n_items)``, stream position). The stream position keys the
    per-sample random draws, so a sample gets the same noise whichever process or micro-batch handles it.
    """
    out = np.empty((count, 2), dtype=np.int64)
    pos = np.arange(start, start + count, dtype=np.int64)
    epochs = pos // n_items
    for e in np.unique(epochs):
        perm = np.random.default_rng([seed, int(e)]).permutation(n_items)
        sel = epochs == e
        out[sel, 0] = perm[pos[sel] % n_items]
    out[:, 1] = pos
    return out


def sample_generator(seed: int, position: int, salt: int = 0) -> torch.Generator:
    """A CPU generator keyed by ``(seed, stream position, salt)``."""
    g = torch.Generator()
    g.manual_seed(int(np.random.default_rng([seed, int(position), salt]).integers(2**62)))
    return g
