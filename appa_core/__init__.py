"""appa-core: score-based data assimilation of the global atmosphere.

The public API, re-exported here and imported on first use (so that ``import appa_core`` and the pytest plugin
stay cheap)::

    import appa_core

    prior = appa_core.Prior.demo()                                   # or Prior.load(path), GaussianPrior(...)
    sampler = appa_core.Sampler(prior)                               # calibrated defaults (docs/sampler.md)
    post = sampler.posterior(obs=[...], start=t0, hours=24, members=8)  # 5 states; Dataset with a member dim
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # grid and state
    "Grid": "appa_core.grid",
    "StateSpec": "appa_core.spec",
    "Channel": "appa_core.spec",
    "dataset_to_tensor": "appa_core.state",
    "tensor_to_dataset": "appa_core.state",
    # data
    "DEMO_SPEC": "appa_core.data",
    "NormStats": "appa_core.data",
    "TrajectoryWindows": "appa_core.data",
    "compute_stats": "appa_core.data",
    "load_truth_slice": "appa_core.data",
    "open_wb2": "appa_core.data",
    "time_features": "appa_core.data",
    # observations and noise
    "ObsOperator": "appa_core.obs",
    "ObsSet": "appa_core.obs",
    "SparseLinearOperator": "appa_core.obs",
    # deprecated (moved to appa_workflows.observing; importing the old path warns): not in __all__
    "ObservingSystem": "appa_core.observing",
    # observation-error models
    "NoiseModel": "appa_core.obs.errors",
    "DiagonalGaussian": "appa_core.obs.errors",
    "CorrelatedGaussian": "appa_core.obs.errors",
    "Huber": "appa_core.obs.errors",
    "StudentT": "appa_core.obs.errors",
    "BlockDiagonal": "appa_core.obs.errors",
    # priors and sampling
    "DiffusionPrior": "appa_core.priors.base",
    "Prior": "appa_core.priors.latent",
    "GaussianPrior": "appa_core.priors.gaussian",
    "Sampler": "appa_core.sampler",
    "save_zarr": "appa_core.sampler",
    "MMPS": "appa_core.guidance",
    "DPS": "appa_core.guidance",
    # plugins and scores
    "get_registry": "appa_core.plugins",
    "hookimpl": "appa_core.plugins",
    "score_table": "appa_core.metrics",
}

__all__ = [
    "DEMO_SPEC",
    "DPS",
    "MMPS",
    "BlockDiagonal",
    "Channel",
    "CorrelatedGaussian",
    "DiagonalGaussian",
    "DiffusionPrior",
    "GaussianPrior",
    "Grid",
    "Huber",
    "NoiseModel",
    "NormStats",
    "ObsOperator",
    "ObsSet",
    "Prior",
    "Sampler",
    "SparseLinearOperator",
    "StateSpec",
    "StudentT",
    "TrajectoryWindows",
    "__version__",
    "compute_stats",
    "dataset_to_tensor",
    "get_registry",
    "hookimpl",
    "load_truth_slice",
    "open_wb2",
    "save_zarr",
    "score_table",
    "tensor_to_dataset",
    "time_features",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs
    from appa_core.data import (
        DEMO_SPEC,
        NormStats,
        TrajectoryWindows,
        compute_stats,
        load_truth_slice,
        open_wb2,
        time_features,
    )
    from appa_core.grid import Grid
    from appa_core.guidance import DPS, MMPS
    from appa_core.metrics import score_table
    from appa_core.obs import ObsOperator, ObsSet, SparseLinearOperator
    from appa_core.obs.errors import BlockDiagonal, CorrelatedGaussian, DiagonalGaussian, Huber, NoiseModel, StudentT
    from appa_core.plugins import get_registry, hookimpl
    from appa_core.priors import DiffusionPrior
    from appa_core.priors.gaussian import GaussianPrior
    from appa_core.priors.latent import Prior
    from appa_core.sampler import Sampler, save_zarr
    from appa_core.spec import Channel, StateSpec
    from appa_core.state import dataset_to_tensor, tensor_to_dataset


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'appa_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
