r"""``ObsSet``: several operators stacked into one observation vector.

For operators :math:`\mathcal{H}_1, \dots, \mathcal{H}_n` with observations :math:`y_k` ``[M_k]`` and noise
models :math:`\Sigma_k`, the set is :math:`\mathcal{H}(x) = [\mathcal{H}_1(x); \dots; \mathcal{H}_n(x)]`,
:math:`y = [y_1; \dots; y_n]`, and the noise is block-diagonal, :math:`\Sigma = \mathrm{diag}(\Sigma_1, \dots,
\Sigma_n)`. This is what the guided sampler consumes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.obs.base import ObsOperator
from appa_core.obs.errors import BlockDiagonal
from appa_core.spec import StateSpec

__all__ = ["ObsSet"]


class ObsSet:
    """An ordered collection of observation operators seen as one operator.

    Args:
        operators: the operators; their ``name`` must be unique within the set (duplicates get ``#2``, ``#3``...).
    """

    def __init__(self, operators: Iterable[ObsOperator]) -> None:
        ops = list(operators)
        if not ops:
            raise ValueError("ObsSet: field 'operators' is empty; give at least one observation operator")
        for i, op in enumerate(ops):
            if not isinstance(op, ObsOperator):
                raise TypeError(f"ObsSet: operator {i} is a {type(op).__name__}, not an ObsOperator")
        names: list[str] = []
        taken: set[str] = set()
        for op in ops:  # duplicates get "#2", "#3"..., skipping names that are taken (e.g. "st", "st", "st#2")
            base = name = str(op.name)
            k = 1
            while name in taken:
                k += 1
                name = f"{base}#{k}"
            taken.add(name)
            names.append(name)
        self.operators: list[ObsOperator] = ops
        self.names: list[str] = names
        self.noise = BlockDiagonal([op.noise for op in ops])  # type: ignore[misc]
        bounds = np.cumsum([0, *(op.size for op in ops)])
        self.slices: dict[str, slice] = {
            n: slice(int(a), int(b)) for n, a, b in zip(names, bounds[:-1], bounds[1:], strict=True)
        }

    def __iter__(self) -> Iterator[ObsOperator]:
        return iter(self.operators)

    def __len__(self) -> int:
        return len(self.operators)

    @property
    def size(self) -> int:
        return sum(op.size for op in self.operators)

    @property
    def linear(self) -> bool:
        return all(op.linear for op in self.operators)

    @property
    def values(self) -> Tensor:
        """Stacked observations ``[M]`` float64."""
        return torch.cat([op.values.to(torch.float64) for op in self.operators])

    def prepare(self, grid: Grid, spec: StateSpec, times: object) -> ObsSet:
        for op in self.operators:
            op.prepare(grid, spec, times)
        return self

    def subset(self, t0: object, t1: object) -> ObsSet | None:
        """The operators' :meth:`~appa_core.obs.ObsOperator.subset` (unprepared; operators with no observation in
        ``[t0, t1]`` are left out, names kept); ``None`` if none is left."""
        ops = [s for s in (op.subset(t0, t1) for op in self.operators) if s is not None]
        return ObsSet(ops) if ops else None

    def __call__(self, x: Tensor) -> Tensor:
        """Predicted observations ``[B, M]`` for states ``[B, T, C, H, W]``."""
        ys = [op(x) for op in self.operators]
        return ys[0] if len(ys) == 1 else torch.cat(ys, dim=-1)  # one operator: no concatenation (a copy)

    def linearize(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        """The tangent-linear map at states ``x`` ``[B, T, C, H, W]``: ``dx -> [B, M]``, every operator's
        :meth:`~appa_core.obs.ObsOperator.linearize` stacked."""
        maps = [op.linearize(x) for op in self.operators]
        if len(maps) == 1:
            return maps[0]
        return lambda dx: torch.cat([m(dx) for m in maps], dim=-1)

    def matrix(self) -> sp.csr_array:
        """Stacked sparse matrix ``[M, T*C*H*W]`` (all operators must be linear)."""
        for name, op in zip(self.names, self.operators, strict=True):
            if not op.linear:
                raise TypeError(f"ObsSet: operator {name!r} is nonlinear and has no matrix")
        return sp.csr_array(sp.vstack([op.matrix() for op in self.operators], format="csr"))

    def split(self, v: Tensor) -> dict[str, Tensor]:
        """Split a stacked vector ``[..., M]`` into one tensor per operator."""
        return {n: v[..., s] for n, s in self.slices.items()}

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}[{op.size}]" for n, op in zip(self.names, self.operators, strict=True))
        return f"ObsSet({inner})"
