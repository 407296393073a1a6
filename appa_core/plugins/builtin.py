"""The core's built-in components, registered as the plugin ``appa`` (bare aliases: ``huber``, ...)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from appa_core.plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from appa_core.plugins.registry import Registry


@hookimpl
def appa_register_noise_models(registry: Registry) -> None:
    from appa_core.obs.errors import BlockDiagonal, CorrelatedGaussian, DiagonalGaussian, Huber, StudentT

    registry.add_noise_model("diagonal_gaussian", DiagonalGaussian)
    registry.add_noise_model("correlated_gaussian", CorrelatedGaussian)
    registry.add_noise_model("huber", Huber)
    registry.add_noise_model("student_t", StudentT)
    registry.add_noise_model("block_diagonal", BlockDiagonal)
