"""The observation map of a guided call, with a linearization cheaper than forward-mode AD."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable

import attrs
import torch
from torch import Tensor

from appa_core.priors.base import DiffusionPrior

__all__ = ["ObservationMap"]


@attrs.frozen
class ObservationMap:
    r"""An observation map ``fn(z) -> y`` with a cheaper linearization than ``torch.func.jvp`` of ``fn``.

    ``linearize(z)`` returns the tangent map ``v -> d fn(z) v`` (or ``None`` when it has none here). MMPS calls it
    once per guided call, at :math:`\hat z`, and the tangent map once per solver iteration (and once per
    Hutchinson probe for robust noise models). ``torch.func.jvp`` would rerun the primal pass every iteration
    and, through each convolution, also convolve the primal with the weights' zero tangent.
    :class:`~appa_core.guidance.PosteriorDenoiser` builds one from the prior's ``linearize_decode`` (when the
    prior has it) and the operators' tangent-linear maps (:meth:`~appa_core.obs.ObsOperator.linearize`). Any
    callable works where an ``observe`` is expected; this one only adds the shortcut.

    ``with_tangent(z)`` (optional) gives ``(fn(z), tangent map or None)`` from one pass: ``fn(z)`` with its autograd
    graph, for the call's VJPs, and the tangent map at ``z`` (a prior whose ``linearize_decode`` takes ``graph``
    decodes once per call instead of twice).
    """

    fn: Callable[[Tensor], Tensor]
    linearize: Callable[[Tensor], Callable[[Tensor], Tensor] | None]
    with_tangent: Callable[[Tensor], tuple[Tensor, Callable[[Tensor], Tensor] | None]] | None = None

    def __call__(self, z: Tensor) -> Tensor:
        return self.fn(z)

    @classmethod
    def through_decoder(cls, prior: DiffusionPrior, observe_states: Callable[[Tensor], Tensor]) -> ObservationMap:
        """``z -> observe_states(prior.decode(z))`` (e.g. an :class:`~appa_core.ObsSet` of states ``[B, T, C, H, W]``),
        linearized through ``prior.linearize_decode`` when the prior has it, then through ``observe_states``'s
        ``linearize`` (an :class:`~appa_core.ObsSet`, an operator) or ``torch.func.jvp`` of it."""

        def linearize(z: Tensor) -> Callable[[Tensor], Tensor] | None:
            linearize_decode = getattr(prior, "linearize_decode", None)
            if linearize_decode is None:
                return None
            x, dx_of = linearize_decode(z)
            h = _tangent_map(observe_states, x)
            return lambda v: h(dx_of(v))

        def with_tangent(z: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor] | None]:
            decoded = decode_with_tangent(prior, z)
            if decoded is None:
                return observe_states(prior.decode(z)), None
            x, dx_of = decoded
            h = _tangent_map(observe_states, x)
            return observe_states(x), lambda v: h(dx_of(v))

        return cls(lambda z: observe_states(prior.decode(z)), linearize, with_tangent)


_TAKES_GRAPH: weakref.WeakKeyDictionary[Callable[..., object], bool] = weakref.WeakKeyDictionary()


def _takes_graph(method: Callable[..., object]) -> bool:
    """Whether ``method`` has a ``graph`` parameter (kept per function of a class, weakly; read anew for other
    callables, which need not be hashable)."""
    func = getattr(method, "__func__", None)
    if func is not None and func in _TAKES_GRAPH:
        return _TAKES_GRAPH[func]
    try:
        takes = "graph" in inspect.signature(method).parameters
    except (TypeError, ValueError):  # no signature to read: do not guess
        takes = False
    if func is not None:
        _TAKES_GRAPH[func] = takes
    return takes


def decode_with_tangent(prior: DiffusionPrior, z: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]] | None:
    """``(prior.decode(z)`` with its autograd graph from ``z``, the decoder's tangent map at ``z)`` from one pass,
    when the prior's ``linearize_decode`` takes ``graph``; else ``None`` (decode and linearize apart). Also ``None``
    when a ``linearize_decode`` that takes ``graph`` returned ``decode(z)`` without a graph that ``z`` has."""
    linearize_decode = getattr(prior, "linearize_decode", None)
    if linearize_decode is None or not _takes_graph(linearize_decode):
        return None
    x, dx_of = linearize_decode(z, graph=True)
    if torch.is_grad_enabled() and z.requires_grad and not x.requires_grad:
        return None
    return x, dx_of


def _tangent_map(f: Callable[[Tensor], Tensor], x: Tensor) -> Callable[[Tensor], Tensor]:
    """``v -> d f(x) v``: ``f.linearize(x)`` when ``f`` has one that gives a map here (an :class:`ObservationMap`,
    an :class:`~appa_core.ObsSet`, an operator), else ``torch.func.jvp`` of ``f`` at ``x`` per call."""
    x = x.detach()
    linearize = getattr(f, "linearize", None)
    lin = None if linearize is None else linearize(x)
    if lin is not None:
        return lin
    return lambda v: torch.func.jvp(f, (x,), (v,))[1]
