"""Install sets: with only some operator distributions installed, ``appa demo`` runs with the families it has and
names the others, or stops with one line naming the distribution to ``pip install`` (never a traceback, never a
repository path). Plugins are left out with the registry's ``disable`` option, the way ``APPA_DISABLE_PLUGINS``
does; nothing is sampled."""

from __future__ import annotations

import pytest

import appa_core.cli as cli
import appa_core.plugins.registry as registry_module
from appa_workflows.demo import _choose_families, installed_families


def _without(monkeypatch: pytest.MonkeyPatch, *plugins: str) -> None:
    monkeypatch.setattr(registry_module, "_DEFAULT", registry_module.load_plugins(disable=list(plugins)))


def test_all_installed() -> None:
    assert installed_families() == (["stations", "swath", "radiance", "sondes"], {})


@pytest.mark.parametrize(
    ("disabled", "available", "hint"),
    [
        (("fields",), ["stations", "swath", "radiance"], "skipping sondes: not installed; pip install appa-op-fields"),
        (
            ("satellite",),
            ["stations", "sondes"],
            "skipping swath, radiance: not installed; pip install appa-op-satellite",
        ),
        (("stations", "fields"), ["swath", "radiance"], "pip install appa-op-stations appa-op-fields"),
    ],
)
def test_demo_adapts_to_the_installed_operators(
    disabled: tuple[str, ...],
    available: list[str],
    hint: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _without(monkeypatch, *disabled)
    assert _choose_families(None) == available
    assert hint in capsys.readouterr().out


@pytest.mark.parametrize(
    ("disabled", "argv", "message"),
    [
        (
            ("fields",),
            ["--operators", "sondes"],
            "operator 'pressure_level' is not installed: pip install appa-op-fields",
        ),
        (("satellite",), ["--operators", "stations,radiance"], "pip install appa-op-satellite"),
        (
            ("stations", "satellite", "fields"),
            [],
            "no observation operator is installed: pip install appa-op-stations appa-op-satellite appa-op-fields",
        ),
    ],
)
def test_demo_names_the_distribution_to_install(
    disabled: tuple[str, ...],
    argv: list[str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path,
) -> None:
    _without(monkeypatch, *disabled)
    code = cli.main(["demo", "--out", str(tmp_path / "demo"), *argv])
    _, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert "operators/" not in err  # a pip user has no repository paths
    assert not (tmp_path / "demo").exists()  # stopped before writing anything


def test_observing_system_names_the_distribution(monkeypatch: pytest.MonkeyPatch) -> None:
    from appa_workflows.observing import _operator_class

    _without(monkeypatch, "fields")
    with pytest.raises(RuntimeError, match=r"operator 'pressure_level' is not installed: pip install appa-op-fields"):
        _operator_class("pressure_level")


def test_missing_workflows_names_the_distribution(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    _without(monkeypatch, "workflows")
    assert cli.main(["demo"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install appa-workflows" in err
