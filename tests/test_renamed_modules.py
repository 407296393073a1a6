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
