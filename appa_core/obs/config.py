"""Operators from configuration tables and in synthetic networks: the operator protocol that workflows use.

A workflow (``appa assimilate``, an observing system of a twin experiment) knows an operator only by its registry
name. Everything else it needs comes from the operator class, through three classmethods and two class attributes of
:class:`~appa_core.obs.ObsOperator`, each with a default that fits most families:

==================================  ==================================================================================
``from_config(table, context)``     operators from one ``[[observations]]`` table (keys = constructor fields, plus
                                    whatever the family documents); with ``context.simulate``, their values are
                                    :math:`\\mathcal{H}(x_{true}) + \\epsilon`. Default: :func:`operators_from_table`.
``placeholder_values(table, n)``    values to construct a geometry-only operator of ``n`` locations before simulating
                                    (default zeros ``[n]``; ``[n, K]`` for ``K`` channels per location).
``synthetic_network(context, ...)`` a synthetic network for an observing system: unsimulated operators at locations
                                    drawn with ``context.rng`` (default: refused, the family has none).
``values_field``                    the constructor field holding the values (``None``: not rebuilt from a vector).
``config_component_keys``           table keys whose lists enumerate what each location observes (``channels``), not
                                    one entry per observation.
==================================  ==================================================================================

The workflow resolves ``noise = {kind = ...}`` through the registry and passes the model as the ``noise`` key, so
operators never parse noise tables. :class:`ObsContext` carries the state layout, the truth, the random generators and
named auxiliary fields: an operator class with a constructor field of the same name that the table leaves unset gets
it (``surface_geopotential``, from the truth store, for elevation corrections).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
import numpy as np
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.spec import StateSpec

if TYPE_CHECKING:
    from appa_core.obs.base import ObsOperator

__all__ = ["ObsContext", "n_locations", "operators_from_table", "replicate_over_window", "with_auxiliary"]


@attrs.frozen(kw_only=True)
class ObsContext:
    """What operators are built on, from a configuration table or for a synthetic network.

    Attributes:
        grid, spec: the state layout.
        times: the window's state times ``[T]`` (``datetime64[ns]``); observations lie inside it.
        truth: the true trajectory ``[T, C, H, W]`` in physical units on those times, or ``None``.
        simulate: build operators whose values are :math:`\\mathcal{H}(x_{true}) + \\epsilon` (needs ``truth``).
        generator: torch generator of the simulated noise.
        rng: numpy generator of random locations (synthetic networks).
        auxiliary: named fields a workflow can supply (e.g. ``surface_geopotential``, an ``[H, W]`` field); an
            operator class gets those for which it has a constructor field that the table leaves unset.
        name: a label for messages (the table's position, e.g. ``"[[observations]] #2"``).
    """

    grid: Grid
    spec: StateSpec
    times: np.ndarray = attrs.field(converter=lambda t: np.asarray(t).astype("datetime64[ns]"))
    truth: Tensor | None = None
    simulate: bool = False
    generator: torch.Generator | None = None
    rng: np.random.Generator | None = None
    auxiliary: Mapping[str, Any] = attrs.field(factory=dict)
    name: str = "observations"

    def __attrs_post_init__(self) -> None:
        if self.simulate and self.truth is None:
            raise ValueError(f"ObsContext: {self.name} simulates observations, but field 'truth' is None")

    def simulated(self, op: ObsOperator) -> ObsOperator:
        """``op`` with values :math:`\\mathcal{H}(x_{true}) + \\epsilon`, prepared on the window."""
        if self.truth is None:
            raise ValueError(f"ObsContext: {self.name} simulates observations, but field 'truth' is None")
        return op.simulate(self.truth, self.grid, self.spec, self.times, generator=self.generator)


def _auxiliary(cls: type, given: Mapping[str, Any], context: ObsContext) -> dict[str, Any]:
    """The context's auxiliary fields that ``cls`` has as constructor fields and ``given`` leaves unset."""
    fields = {a.alias for a in attrs.fields(cls) if a.init} if attrs.has(cls) else set()
    return {k: v for k, v in context.auxiliary.items() if k in fields and given.get(k) is None and v is not None}


def with_auxiliary(op: ObsOperator, context: ObsContext) -> ObsOperator:
    """``op`` (e.g. from an observation reader) with the context's auxiliary fields that it has and leaves unset."""
    current = {a.alias: getattr(op, a.name) for a in attrs.fields(type(op)) if a.init}
    extra = _auxiliary(type(op), current, context)
    return attrs.evolve(op, **extra) if extra else op


def n_locations(cls: type[ObsOperator], table: Mapping[str, Any]) -> int:
    """Observations per time implied by a table's per-observation lists (the longest; scalars broadcast)."""
    skip = set(cls.config_component_keys)
    sizes = [len(v) for k, v in table.items() if isinstance(v, list | tuple | np.ndarray) and k not in skip]
    return max(sizes, default=1)


def replicate_over_window(cls: type[ObsOperator], table: Mapping[str, Any], times: np.ndarray) -> dict[str, Any]:
    """A table without ``time``: every location observed at every window state (per-location lists are tiled)."""
    if "time" in table:
        return dict(table)
    n = n_locations(cls, table)
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, list | tuple | np.ndarray) and len(value) == n and key not in cls.config_component_keys:
            out[key] = np.concatenate([np.asarray(value, dtype=object)] * times.size).tolist()
        else:
            out[key] = value
    out["time"] = np.repeat(times, n)
    return out


def operators_from_table(cls: type[ObsOperator], table: Mapping[str, Any], context: ObsContext) -> list[ObsOperator]:
    """The default :meth:`ObsOperator.from_config`: the table's keys are constructor fields.

    With ``context.simulate``, the values field must be absent; without ``time``, every location is observed at every
    window state; the operator is built on :meth:`~ObsOperator.placeholder_values` and then simulated from the truth.
    Raises ``ValueError`` / ``TypeError`` naming the key (the workflow adds which table it was).
    """
    params = dict(table)
    params.update(_auxiliary(cls, params, context))
    if not context.simulate:
        return [cls(**params)]
    field = cls.values_field
    if field is None:
        raise ValueError(
            f"{cls.__name__} cannot simulate its values from a table (it has no values field and does not override "
            "from_config); give the observed values and simulate = false"
        )
    if field in params:
        raise ValueError(
            f"key {field!r} is given, but simulate = true replaces the values with H(truth) + noise; drop one of them"
        )
    params = replicate_over_window(cls, params, context.times)
    params[field] = cls.placeholder_values(params, n_locations(cls, params))
    return [context.simulated(cls(**params))]
