"""Issue 11: the core imports no plugin and names none. Importing every appa_core module (the deprecation shims
excepted) loads no plugin package, and no code under appa_core/ names one, except those shims."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import appa_core

CORE = Path(appa_core.__file__).resolve().parent
PLUGIN_PACKAGES = ("appa_op_", "appa_workflows", "appa_naturerun")
#: deprecated paths kept for one release; each names where its content moved (CHANGELOG.md, "Deprecated")
SHIMS = {
    "appa_core.assimilate",
    "appa_core.demo",
    "appa_core.observing",
    "appa_core.baselines",
    "appa_core.letkf",
    "appa_core.noise",
    "appa_core.prior",
    "appa_core.gaussian",
    "appa_core.diffusion.denoiser",
    "appa_core.diffusion.samplers",
}
#: strings equal to an operator's registry name that mean something else there
NOT_OPERATORS = {("appa_core.state", "pressure_level")}  # ERA5's name of the level coordinate
#: modules whose deprecation bridges name a plugin in a string (a moved name, a moved command)
BRIDGES = {"appa_core.metrics", "appa_core.obs.errors", "appa_core.cli", "appa_core.__init__"}


def _modules() -> list[str]:
    names = ["appa_core"]
    for info in pkgutil.walk_packages([str(CORE)], prefix="appa_core."):
        if not info.name.endswith("__main__"):
            names.append(info.name)
    return names


def test_importing_the_core_loads_no_plugin() -> None:
    modules = [m for m in _modules() if m not in SHIMS]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.startswith({PLUGIN_PACKAGES!r}))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr


def _code_strings(path: Path) -> list[str]:
    """String constants and imported names of a module, without its docstrings."""
    tree = ast.parse(path.read_text())
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            out.append(node.value)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
    return out


def test_no_core_code_names_a_plugin_or_a_first_party_operator() -> None:
    first_party_operators = {"station", "swath", "radiance", "pressure_level", "masked_field", "global_mean"}
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        rel = path.relative_to(CORE.parent).with_suffix("")
        module = ".".join(rel.parts)
        for text in _code_strings(path):
            if text in first_party_operators and (module, text) not in NOT_OPERATORS:
                offenders.append(f"{module}: operator name {text!r}")
            if module not in SHIMS | BRIDGES and any(p in text for p in PLUGIN_PACKAGES):
                offenders.append(f"{module}: {text!r}")
    assert offenders == []


def test_a_moved_module_that_is_not_installed_says_what_to_install() -> None:
    import pytest

    from appa_core._moved import alias_moved_module

    with (
        pytest.warns(
            DeprecationWarning, match=r"appa_core.fake_old is deprecated .* moved to appa_no_such_pkg_xyz.mod"
        ),
        pytest.raises(ModuleNotFoundError, match=r"appa-nope\), which is not installed: pip install -e plugins/nope"),
    ):
        alias_moved_module("appa_core.fake_old", "appa_no_such_pkg_xyz.mod", "appa-nope", "-e plugins/nope")
    assert "appa_core.fake_old" not in sys.modules
