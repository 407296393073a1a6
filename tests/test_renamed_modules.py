"""Modules renamed within appa-core (issue #11: one module per concept, named for it) keep importing from their 0.1
paths for one release, with a DeprecationWarning naming the new path; the old path gives the very same objects."""

from __future__ import annotations

import importlib
import sys

import pytest

RENAMED = [
    ("appa_core.noise", "appa_core.obs.errors", "DiagonalGaussian"),
    ("appa_core.prior", "appa_core.priors.latent", "Prior"),
    ("appa_core.gaussian", "appa_core.priors.gaussian", "GaussianPrior"),
    ("appa_core.diffusion.denoiser", "appa_core.priors.base", "DiffusionPrior"),
    ("appa_core.diffusion.samplers", "appa_core.diffusion.integrators", "LMSSampler"),
]


@pytest.mark.parametrize(("old", "new", "name"), RENAMED)
def test_old_module_path_warns_and_gives_the_same_objects(
    old: str, new: str, name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(DeprecationWarning, match=rf"{old} is deprecated .* it moved to {new} .*import from {new}"):
        module = importlib.import_module(old)
    target = importlib.import_module(new)
    assert module is target
    monkeypatch.delitem(sys.modules, old)
    with pytest.warns(DeprecationWarning, match=new):
        namespace: dict[str, object] = {}
        exec(f"from {old} import {name}", namespace)
    assert namespace[name] is getattr(target, name)


def test_the_priors_package_and_the_old_reexports_agree() -> None:
    import appa_core
    import appa_core.diffusion as diffusion
    import appa_core.priors as priors
    from appa_core.priors.base import DiffusionPrior
    from appa_core.priors.gaussian import GaussianPrior, LowRankDiag
    from appa_core.priors.latent import Prior

    assert priors.Prior is Prior and priors.GaussianPrior is GaussianPrior and priors.LowRankDiag is LowRankDiag
    assert priors.DiffusionPrior is DiffusionPrior is diffusion.DiffusionPrior is appa_core.DiffusionPrior
    assert appa_core.Prior is Prior and appa_core.GaussianPrior is GaussianPrior
    assert issubclass(Prior, DiffusionPrior) and issubclass(GaussianPrior, DiffusionPrior)
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        priors.Nope  # noqa: B018


def test_sampler_solve_fields_renamed_with_the_old_names_kept() -> None:
    """``cg_iters`` / ``cg_tol`` configured GMRES too (issue #11): they are ``solver_iters`` / ``solver_tol`` now;
    the 0.1 keywords and attributes still work for one release, with a DeprecationWarning naming the new field."""
    import torch

    from appa_core import GaussianPrior, Sampler
    from appa_core.grid import Grid
    from appa_core.spec import StateSpec

    spec = StateSpec(surface=("2m_temperature",))
    prior = GaussianPrior(torch.zeros(1, 1, 2, 3, dtype=torch.float64), torch.eye(6, dtype=torch.float64),
                          Grid.equiangular(2, 3), spec)  # fmt: skip
    with pytest.warns(DeprecationWarning, match=r"field 'cg_iters' is deprecated .* use 'solver_iters'"):
        s = Sampler(prior, cg_iters=2, solver_tol=None)
    assert s.solver_iters == 2 and s.solver_tol is None
    with pytest.warns(DeprecationWarning, match=r"field 'cg_tol' is deprecated .* use 'solver_tol'"):
        assert Sampler(prior, cg_tol=3e-2).solver_tol == 3e-2
    with pytest.warns(DeprecationWarning, match="use 'solver_iters'"):
        assert s.cg_iters == 2
    with pytest.raises(TypeError, match="give 'solver_iters' only"):
        Sampler(prior, cg_iters=2, solver_iters=3)
    with pytest.raises(ValueError, match="field 'solver_iters' has value 0"):
        Sampler(prior, solver_iters=0)


SPLIT = [  # (the documented path, the module that now defines the name): both stay, without a warning
    ("appa_core.guidance", "appa_core.guidance.mmps", ["MMPS", "WarmStart", "ADAPTIVE_MAXITER", "MAX_PRODUCTS_BYTES"]),
    ("appa_core.guidance", "appa_core.guidance.dps", ["DPS", "DPS_DIVERGENCE"]),
    ("appa_core.guidance", "appa_core.guidance.observation_map", ["ObservationMap"]),
    ("appa_core.guidance", "appa_core.guidance.posterior",
     ["PosteriorDenoiser", "KnownStates", "guided_denoiser", "observation_time_ranges"]),
    ("appa_core.guidance", "appa_core.guidance.report",
     ["GuidanceError", "GuidanceReport", "solve_summary", "failure_summary"]),
    ("appa_core.sampler", "appa_core.store", ["save_zarr", "SHARD_ATTR", "WRITTEN_BY"]),
]  # fmt: skip


@pytest.mark.parametrize(("documented", "home", "names"), SPLIT)
def test_split_modules_keep_the_documented_import_paths(documented: str, home: str, names: list[str]) -> None:
    """``appa_core.guidance`` became a package of one module per concept and ``save_zarr`` moved to
    ``appa_core.store``: every documented name still imports from its documented path, as the same object, with no
    warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        old = importlib.import_module(documented)
        new = importlib.import_module(home)
        for name in names:
            assert getattr(old, name) is getattr(new, name), name
