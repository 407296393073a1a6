"""The modules that left appa-core keep importing from their 0.1 paths for one release, with a DeprecationWarning
that names the new path (appa_core._moved); each old path gives the new module's objects."""

from __future__ import annotations

import importlib
import sys

import pytest

MOVED = [
    ("appa_core.assimilate", "appa_workflows.assimilate", "load_config"),
    ("appa_core.demo", "appa_workflows.demo", "run_demo"),
    ("appa_core.observing", "appa_workflows.observing", "ObservingSystem"),
    ("appa_core.baselines", "appa_workflows.baselines", "oi_prior"),
]


@pytest.mark.parametrize(("old", "new", "name"), MOVED)
def test_old_module_path_warns_and_resolves(old: str, new: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)
    with pytest.warns(
        DeprecationWarning, match=rf"{old} is deprecated .* it moved to {new} \(distribution appa-workflows\)"
    ):
        module = importlib.import_module(old)
    target = importlib.import_module(new)
    assert module is target and getattr(module, name) is getattr(target, name)
    # `from old import name` (the form plugins and scripts use) gives the same object
    monkeypatch.delitem(sys.modules, old)
    with pytest.warns(DeprecationWarning, match=new):
        namespace: dict[str, object] = {}
        exec(f"from {old} import {name}", namespace)
    assert namespace[name] is getattr(target, name)


def test_top_level_observing_system_warns_and_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    import appa_core
    from appa_workflows.observing import ObservingSystem

    monkeypatch.delitem(sys.modules, "appa_core.observing", raising=False)
    monkeypatch.delitem(vars(appa_core), "ObservingSystem", raising=False)
    with pytest.warns(DeprecationWarning, match=r"appa_core.observing is deprecated"):
        assert appa_core.ObservingSystem is ObservingSystem
    assert "ObservingSystem" not in appa_core.__all__  # `from appa_core import *` imports no plugin


def test_metrics_main_evaluate_warns_and_resolves() -> None:
    import appa_core.metrics as metrics
    from appa_workflows.evaluate import main

    with pytest.warns(DeprecationWarning, match=r"main_evaluate is deprecated .* appa_workflows.evaluate.main"):
        assert metrics.main_evaluate is main
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        metrics.nope  # noqa: B018


def test_python_dash_m_old_baselines_still_runs() -> None:
    """``python -m appa_core.baselines --help`` (the documented 0.1 way to rebuild the climatology) still works."""
    import subprocess

    cmd = [sys.executable, "-W", "always::DeprecationWarning", "-m", "appa_core.baselines", "--help"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "usage:" in res.stdout, res.stderr
    assert "appa_core.baselines is deprecated" in res.stderr and "appa_workflows.baselines" in res.stderr
