"""Plugin entry point (``appa.plugins``: ``satellite = "appa_op_satellite.plugin"``).

Registers the operators ``swath`` (:class:`~appa_op_satellite.SwathOp`) and ``radiance``
(:class:`~appa_op_satellite.RadianceOp`), each with a small example for ``appa plugins check``, and the noise model
``block_correlated_gaussian`` (:class:`~appa_op_satellite.BlockCorrelatedGaussian`). Targets are lazy strings, so
listing plugins imports nothing heavy.
"""

from __future__ import annotations

from typing import Any

from appa_core.plugins import hookimpl


def _swath_example() -> tuple[Any, ...]:
    from appa_op_satellite._examples import swath_example

    return swath_example()


def _radiance_example() -> tuple[Any, ...]:
    from appa_op_satellite._examples import radiance_example

    return radiance_example()


@hookimpl
def appa_register_operators(registry: Any) -> None:
    registry.add_operator("swath", "appa_op_satellite.swath:SwathOp", example=_swath_example)
    registry.add_operator("radiance", "appa_op_satellite.radiance:RadianceOp", example=_radiance_example)


@hookimpl
def appa_register_noise_models(registry: Any) -> None:
    registry.add_noise_model("block_correlated_gaussian", "appa_op_satellite._noise:BlockCorrelatedGaussian")
