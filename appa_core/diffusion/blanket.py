r"""Overlapping windows ("blankets", SDA / Appa) over a long trajectory.

A trajectory of ``L`` states is covered by windows of ``K`` states with stride ``S = K - overlap``: starts
``0, S, 2S, ...`` and a last window ending exactly at ``L`` (no padding). Each window is denoised independently;
the trajectory is re-assembled by keeping from each window its **central** slice: the boundary between two
consecutive windows is the midpoint of their overlap, the first window keeps its head and the last its tail
(Appa's ``mode="symmetrical"``: with K = 24, S = 12 the first window keeps [0, 18), the others 12 states each).
"""

from __future__ import annotations

from itertools import pairwise

import attrs
import torch
from torch import Tensor

__all__ = ["Blanket"]


@attrs.frozen
class Blanket:
    """Window layout for ``length`` states with windows of ``window`` states overlapping by ``overlap``.

    Attributes:
        length: number of states ``L``.
        window: states per window ``K`` (``min(K, L)`` is used).
        overlap: states shared by consecutive windows (``0 <= overlap < K``).
    """

    length: int
    window: int
    overlap: int

    def __attrs_post_init__(self) -> None:
        if self.window < 1 or self.length < 1:
            raise ValueError(
                f"Blanket: need window >= 1 and length >= 1, got window={self.window}, length={self.length}"
            )
        if not 0 <= self.overlap < self.window:
            raise ValueError(f"Blanket: field 'overlap' has value {self.overlap}; must be in [0, {self.window})")

    @property
    def size(self) -> int:
        """Effective window length ``min(K, L)``."""
        return min(self.window, self.length)

    @property
    def starts(self) -> list[int]:
        """First state of each window."""
        k, n = self.size, self.length
        if n <= k:
            return [0]
        stride = self.window - self.overlap
        starts = list(range(0, n - k + 1, stride))
        if starts[-1] != n - k:
            starts.append(n - k)
        return starts

    @property
    def keep(self) -> list[tuple[int, int]]:
        """For each window, the ``[lo, hi)`` range of trajectory states it provides (a partition of ``[0, L)``)."""
        starts, k = self.starts, self.size
        bounds = [0]
        for a, b in pairwise(starts):
            # midpoint of the overlap [b, a + k)
            bounds.append((b + a + k + 1) // 2 if a + k > b else b)
        bounds.append(self.length)
        return list(pairwise(bounds))

    def unfold(self, x: Tensor) -> Tensor:
        """``[B, L, *] -> [W, B, K, *]`` (``W`` windows)."""
        k = self.size
        return torch.stack([x[:, a : a + k] for a in self.starts])

    def fold(self, xw: Tensor) -> Tensor:
        """``[W, B, K, *] -> [B, L, *]``: each window's kept slice."""
        parts = [xw[i, :, lo - a : hi - a] for i, (a, (lo, hi)) in enumerate(zip(self.starts, self.keep, strict=True))]
        return torch.cat(parts, dim=1)
