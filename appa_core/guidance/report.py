"""What a guided call reports: :class:`GuidanceReport` per call, :class:`GuidanceError` when guidance fails, and
the summaries the sampler keeps (:func:`solve_summary`, :func:`failure_summary`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from appa_core.guidance.posterior import PosteriorDenoiser

__all__ = ["GuidanceError", "GuidanceReport", "failure_summary", "solve_summary"]


class GuidanceError(RuntimeError):
    """The guidance failed: a non-finite residual, or (``on_failure="raise"``) an unconverged solve."""


@attrs.frozen
class GuidanceReport:
    """Outcome of one guided denoiser call.

    Attributes:
        converged: the linear solve met its tolerance for every system (always ``True`` for DPS).
        iterations: solver iterations.
        residual: worst relative residual of the solve (scaled units).
        operator_residuals: per operator, the worst relative residual norm of its rows.
        where: context (step and noise level).
    """

    converged: bool
    iterations: int
    residual: float
    operator_residuals: dict[str, float]
    where: str


def _names_or_default(names: dict[str, slice] | None, m: int) -> dict[str, slice]:
    return names if names else {"observations": slice(0, m)}


def _check_finite(v: Tensor, names: dict[str, slice], what: str, where: str) -> None:
    # one reduction: a finite sum has no inf or NaN term (a sum that overflows is checked element-wise)
    if math.isfinite(float(v.sum())) or bool(torch.isfinite(v).all()):
        return
    bad = [n for n, s in names.items() if not bool(torch.isfinite(v[..., s]).all())]
    raise GuidanceError(f"{where}: {what} is non-finite for operator(s) {bad}")


def _failure_message(reports: list[GuidanceReport], calls: int, guidance: object) -> str:
    worst = max(reports, key=lambda r: r.residual)
    solver = getattr(guidance, "solver", "solver")
    tol = getattr(guidance, "tol", None)
    ops = ", ".join(f"{k}: {v:.3g}" for k, v in worst.operator_residuals.items())
    return (
        f"MMPS: the {solver} solve did not reach tol={tol} in {len(reports)} of {calls} guided denoiser calls; "
        f"worst at {worst.where}: relative residual {worst.residual:.3g} after {worst.iterations} iterations; "
        f"per-operator relative residuals {{{ops}}}. Raise solver_iters (or use solver='gmres' for learned priors)."
    )


def solve_summary(reports: Sequence[GuidanceReport]) -> dict[str, object] | None:
    """Residuals and iterations of the guided calls (``None`` without guidance): ``calls``, ``max_iterations``,
    ``mean_iterations``, ``max_residual`` (worst relative residual, scaled units), ``unconverged`` and the
    worst residual per operator."""
    if not reports:
        return None
    its = [r.iterations for r in reports]
    res = [r.residual for r in reports if np.isfinite(r.residual)]
    per_op: dict[str, float] = {}
    for r in reports:
        for k, v in r.operator_residuals.items():
            per_op[k] = max(per_op.get(k, 0.0), float(v))
    return {
        "calls": len(reports),
        "max_iterations": int(max(its)),
        "mean_iterations": float(np.mean(its)),
        "max_residual": float(max(res)) if res else float("nan"),
        "unconverged": sum(not r.converged for r in reports),
        "operator_residuals": per_op,
    }


def failure_summary(den: PosteriorDenoiser) -> str | None:
    """A one-line summary of the unconverged solves of ``den`` (``None`` if there were none)."""
    if not den.failures:
        return None
    return _failure_message(den.failures, den.calls, den.guidance)
