"""Tests of the ``appa`` command line (``appa_core.cli``): version, plugins listing and contract checks, lazy
delegation of the core's subcommands, subcommands registered by plugins (hook ``appa_register_commands``), and the
README / CI commands staying identical. Plugin commands are tested with in-process plugins: these tests import no
plugin of this repository."""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import appa_core.cli as cli
import appa_core.plugins.registry as registry_module
from appa_core.grid import Grid
from appa_core.plugins import Registry, hookimpl
from appa_core.spec import StateSpec

ROOT = Path(__file__).resolve().parents[1]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------- version, help
def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "version")
    assert code == 0
    assert out.splitlines()[0] == f"appa-core {importlib.metadata.version('appa-core')}"
    assert re.search(r"python 3\.\d+\.\d+, torch \S+, numpy \S+", out)


class _Commands:
    """An in-process plugin with two subcommands: one a function, one a lazy string that cannot be imported."""

    calls: ClassVar[list[list[str]]] = []

    @hookimpl
    def appa_register_commands(self, register: Any) -> None:
        def hello(argv: list[str] | None = None) -> int:
            _Commands.calls.append(list(argv or []))
            return 7

        register("hello", hello, help="say hello")
        register("broken-import", "appa_no_such_package_xyz.cli:main", help="cannot be imported")


@pytest.fixture
def command_registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    reg = Registry()
    reg.register_plugin(_Commands(), name="greeter", aliases=True)
    monkeypatch.setattr(registry_module, "_DEFAULT", reg)
    _Commands.calls.clear()
    return reg


def test_help_lists_core_and_plugin_commands(capsys: pytest.CaptureFixture[str], command_registry: Registry) -> None:
    code, out, _ = _run(capsys)
    assert code == 0 and "usage: appa" in out
    for name in ("version", "plugins", "train", "prior", "hello"):
        assert re.search(rf"^\s+{name}\b", out, re.M), name
    assert re.search(r"^\s+hello\s+say hello \(plugin greeter\)$", out, re.M)
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "hello" in out


def test_plugin_commands_receive_their_arguments(
    capsys: pytest.CaptureFixture[str], command_registry: Registry
) -> None:
    assert cli.main(["hello", "--steps", "4", "-h", "--", "-1"]) == 7
    assert cli.main(["greeter:hello"]) == 7  # the full name works too
    assert _Commands.calls == [["--steps", "4", "-h", "--", "-1"], []]
    code, _, err = _run(capsys, "broken-import")  # a lazy target that fails to import: one line, no traceback
    assert code == 1 and err.count("\n") == 1 and "appa_no_such_package_xyz" in err and "Traceback" not in err


def test_unknown_and_moved_commands_give_one_line(
    capsys: pytest.CaptureFixture[str], command_registry: Registry
) -> None:
    code, out, err = _run(capsys, "frobnicate")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "appa: unknown command 'frobnicate'" in err and "hello" in err
    # a command that appa-core 0.1 had built in, now from a plugin that is not installed here: what to install
    for command, (dist, pip_arg) in cli.MOVED_COMMANDS.items():
        code, _, err = _run(capsys, command, "--help")
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"provided by the plugin distribution {dist}" in err and f"pip install {pip_arg}" in err


def test_command_names_are_checked(command_registry: Registry) -> None:
    from appa_core.plugins import RESERVED_COMMANDS

    assert {"version", "plugins", "train", "prior"} <= RESERVED_COMMANDS
    with pytest.raises(ValueError, match=r"field 'name' has value 'plugins', a command of appa-core itself"):
        command_registry.add_command("plugins", lambda argv: 0)
    with pytest.raises(TypeError, match=r"command 'nope' must be a function main\(argv\)"):
        command_registry.add_command("nope", 42)  # type: ignore[arg-type]

    class Twice:
        @hookimpl
        def appa_register_commands(self, register: Any) -> None:
            register("hello", lambda argv: 0, help="another hello")

    command_registry.register_plugin(Twice(), name="twice", aliases=True)
    assert any("name clash: command 'hello'" in p for p in command_registry.problems)
    code = cli.main(["hello"])
    assert code == 2  # ambiguous: one line naming both full names; each full name still works
    assert cli.main(["twice:hello"]) == 0 and cli.main(["greeter:hello"]) == 7


def test_bad_core_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "version", "--extra")
    assert code == 2 and "unrecognized arguments: --extra" in err
    code, out, _ = _run(capsys, "prior")
    assert code == 0 and "params" in out


def test_console_script_is_declared() -> None:
    scripts = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}
    assert scripts.get("appa") == "appa_core.cli:main"
    pytest11 = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert pytest11.get("appa") == "appa_core.testing"


# ---------------------------------------------------------------------------------------------- appa plugins
class _Good:
    @hookimpl
    def appa_register_operators(self, registry: Registry) -> None:
        from test_obs import GRID, SPEC, WINDOW, _picker

        registry.add_operator("picker", type(_picker()), example=lambda: (_picker(), GRID, SPEC, WINDOW))

    @hookimpl
    def appa_register_data_sources(self, registry: Registry) -> None:
        registry.add_data_source("archive", {"kind": "zarr"})


class _Broken:
    @hookimpl
    def appa_register_operators(self, registry: Registry) -> None:
        raise RuntimeError("cannot reach the catalogue")


class _BadOperator:
    """An operator whose example breaks the contract (a wrong gradient) and one without an example."""

    @hookimpl
    def appa_register_operators(self, registry: Registry) -> None:
        from test_obs import GRID, SPEC, WINDOW, WindSpeed, WrongGradientWind, _wind

        registry.add_operator("wind", WrongGradientWind, example=lambda: (_wind(WrongGradientWind), GRID, SPEC, WINDOW))
        registry.add_operator("plain", WindSpeed)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The registry the CLI sees: built-ins plus three in-process plugins."""
    reg = Registry()
    reg.register_plugin(_Good(), name="good", aliases=True)
    reg.register_plugin(_Broken(), name="broken", strict=False)
    reg.register_plugin(_BadOperator(), name="bad")
    monkeypatch.setattr(registry_module, "_DEFAULT", reg)
    return reg


def test_plugins_listing(capsys: pytest.CaptureFixture[str], registry: Registry) -> None:
    code, out, _ = _run(capsys, "plugins")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "appa plugins: 3 ok, 1 failed, 0 disabled"
    assert re.search(r"^  good\s+\(in-process\)\s+ok$", out, re.M)
    assert "      operators: good:picker (picker)" in lines
    assert "      data sources: good:archive (archive)" in lines
    assert re.search(r"^  broken\s+\(in-process\)\s+FAILED$", out, re.M)
    assert "      error: appa_register_operators: RuntimeError: cannot reach the catalogue (test_cli.py:" in out
    assert "Traceback" not in out
    assert "Traceback" in _run(capsys, "plugins", "--verbose")[1]
    assert _run(capsys, "plugins", "--strict")[0] == 1


def test_plugins_json(capsys: pytest.CaptureFixture[str], registry: Registry) -> None:
    code, out, _ = _run(capsys, "plugins", "--json")
    assert code == 0
    data = json.loads(out)
    plugins = {p["name"]: p for p in data["plugins"]}
    assert plugins["good"]["status"] == "ok" and plugins["good"]["components"] == ["good:picker", "good:archive"]
    assert plugins["broken"]["status"] == "failed"
    assert plugins["broken"]["error"].startswith("appa_register_operators: RuntimeError: cannot reach the catalogue")
    assert plugins["appa"]["distribution"] == "appa-core"
    picker = next(c for c in data["components"]["operator"] if c["name"] == "good:picker")
    assert picker["alias"] == "picker" and picker["example"] is True
    assert data["problems"] == []


def test_plugins_check(capsys: pytest.CaptureFixture[str], registry: Registry) -> None:
    code, out, _ = _run(capsys, "plugins", "check", "good")
    assert code == 0 and out.startswith("good:picker: passed (15/16 passed)")  # bad_inputs: none in an example
    code, out, _ = _run(capsys, "plugins", "check", "picker", "--json")
    assert code == 0 and json.loads(out)["good:picker"]["status"] == "passed"

    code, out, _ = _run(capsys, "plugins", "check", "bad")
    assert code == 1
    assert "bad:wind: failed" in out and "failed   test_gradient_finite_differences: WrongGradientWind" in out
    assert "bad:plain: skipped (0/0 passed) no example registered" in out

    code, _, err = _run(capsys, "plugins", "check", "broken")
    assert code == 1 and "plugin 'broken' is failed: appa_register_operators: RuntimeError" in err
    code, _, err = _run(capsys, "plugins", "check", "nothing_here")
    assert code == 1 and "'nothing_here' is neither a plugin nor an operator" in err
    code, out, _ = _run(capsys, "plugins", "check", "appa")
    assert code == 0 and "registers no operator; nothing to check" in out


def test_installed_plugins_load_cleanly() -> None:
    """Every plugin installed here loads without error or name clash, and gets bare aliases (none is special)."""
    reg = registry_module.load_plugins(env={})
    installed = [p for p in reg.plugins.values() if p.source == "entry point"]
    assert [(p.name, p.error) for p in installed if not p.ok] == []
    assert all(p.aliases for p in installed)
    assert reg.problems == []


# ---------------------------------------------------------------------------------------------- delegation
@pytest.fixture
def fake_module(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """``appa_fake_cli`` with ``main``/``fail``/``exit3``, recording the arguments it receives."""
    calls: list[list[str]] = []
    module = types.ModuleType("appa_fake_cli")

    def main(argv: list[str] | None = None) -> int:
        calls.append(list(argv or []))
        return 0

    def exit3(argv: list[str] | None = None) -> int:
        raise SystemExit(3)

    module.main, module.exit3 = main, exit3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "appa_fake_cli", module)
    return calls


def test_delegated_commands_receive_their_arguments(
    capsys: pytest.CaptureFixture[str], fake_module: list[list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(cli.DELEGATES, "train", ("appa_fake_cli", "main", "train"))
    monkeypatch.setitem(cli.PRIOR_DELEGATES, "params", ("appa_fake_cli", "main", "params"))
    assert cli.main(["train", "--steps", "4", "out.zarr", "--json", "-h", "--", "-1"]) == 0
    assert cli.main(["train"]) == 0
    assert cli.main(["prior", "params", "--preset", "paper"]) == 0
    assert fake_module == [["--steps", "4", "out.zarr", "--json", "-h", "--", "-1"], [], ["--preset", "paper"]]
    monkeypatch.setitem(cli.DELEGATES, "train", ("appa_fake_cli", "exit3", "train"))
    assert cli.main(["train"]) == 3


def test_missing_delegates_say_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(cli.DELEGATES, "train", ("appa_core.no_such_module", "main", "x"))
    code, _, err = _run(capsys, "train", "config.toml")
    assert code == 1
    assert "appa train: not available: module appa_core.no_such_module is not installed" in err
    monkeypatch.setitem(cli.DELEGATES, "train", ("appa_core.grid", "main", "x"))
    code, _, err = _run(capsys, "train")
    assert code == 1 and "appa train: not available: appa_core.grid has no function main()" in err
    # The module exists but one of its own imports is missing: say which.
    (tmp_path / "appa_fake_dep_user.py").write_text("import appa_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.DELEGATES, "train", ("appa_fake_dep_user", "main", "x"))
    code, _, err = _run(capsys, "train")
    assert code == 1
    assert "appa train: cannot import appa_fake_dep_user: ModuleNotFoundError: No module named 'appa_missing" in err


def test_check_accepts_example_classmethods(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_obs import PointPicker, _picker

    class WithExample(PointPicker):
        @classmethod
        def example(cls) -> tuple[Any, ...]:
            grid, spec = Grid.equiangular(5, 8), StateSpec(atmospheric=("temperature",), levels=(500,))
            return _picker(cls), grid, spec, np.array(["2020-01-01T00", "2020-01-01T12"], dtype="datetime64[ns]")

    reg = Registry(builtins=False)
    reg.add_operator("with_example", WithExample)
    monkeypatch.setattr(registry_module, "_DEFAULT", reg)
    code, out, _ = _run(capsys, "plugins", "check", "with_example")
    assert code == 0 and "local:with_example: passed" in out


# ---------------------------------------------------------------------------------------------- README and CI
def _readme_block(title: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(title, 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_makefile_runs_the_readme_steps() -> None:
    """``make demo`` / ``make test`` (the README's two commands) run the README's explicit steps line for line, in an
    environment activated the same way, and ``make test`` ends in the command CI runs."""
    makefile = (ROOT / "Makefile").read_text()
    recipes = [line.strip() for line in makefile.splitlines() if line.startswith("\t")]
    prefix = "$(ACTIVATE) && "
    assert "ACTIVATE = . $(VENV)/bin/activate" in makefile and "VENV ?= .venv" in makefile
    in_env = [line.removeprefix(prefix).removesuffix(" $(DEMO_ARGS)") for line in recipes if line.startswith(prefix)]
    demo, tests = _readme_block("Run the demo")[1:], _readme_block("Run the tests")[1:]
    for line in demo + tests:
        assert line in in_env, f"README step not in the Makefile: {line!r}"
    lines = makefile.splitlines()
    for target, command in (("demo", demo[-1]), ("test", tests[-1])):  # each target's recipe ends in that command
        start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
        assert lines[start + 1].strip() in (prefix + command, f"{prefix}{command} $(DEMO_ARGS)")
    assert "make demo\nmake test\n" in (ROOT / "README.md").read_text()


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    venv, *commands = _readme_block("Run the tests")
    assert venv.replace(".venv", ".venv-ci") in ci  # a differently named environment, created the same way
    for line in commands:
        assert line in ci, f"README test command line not in .ci/run: {line!r}"
    assert commands[-1] == "python -m pytest -q tests operators plugins"
    demo = _readme_block("Run the demo")
    assert demo[0] == venv and demo[1] == commands[0] and demo[-1] == "appa demo"
    assert "-e plugins/workflows" in demo[2]  # appa demo comes from the workflows plugin
    assert {"set -euo pipefail", "ruff check .", "ruff format --check .", "pip install torch==2.13.0"} <= set(ci)
