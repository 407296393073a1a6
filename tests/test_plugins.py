"""Tests of the plugin registry (``appa_core.plugins``) with fake installed distributions: tiny ``*.dist-info``
folders on ``sys.path`` whose ``appa.plugins`` entry points are good, fail to import, or have a hook that raises."""

from __future__ import annotations

import importlib
import importlib.metadata
import json
import sys
import textwrap
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pluggy
import pytest

from appa_core.obs import ObsOperator
from appa_core.obs.errors import DiagonalGaussian, Huber
from appa_core.plugins import (
    ENTRY_POINT_GROUP,
    HOOK_NAMES,
    PluginError,
    Registry,
    UnknownComponentError,
    get_registry,
    hookimpl,
    load_plugins,
)

AddDist = Callable[..., None]

GOOD = """
import torch
from appa_core.obs.errors import DiagonalGaussian
from appa_core.obs import ObsOperator
from appa_core.plugins import hookimpl


class Wide(DiagonalGaussian):
    pass


class Mean(ObsOperator):
    @property
    def size(self):
        return 1

    @property
    def values(self):
        return torch.zeros(1, dtype=torch.float64)

    def _prepare(self, grid, spec, times):
        pass

    def forward(self, x):
        return x.mean((1, 2, 3, 4))[:, None]


@hookimpl
def appa_register_operators(registry):
    registry.add_operator("{op}", Mean)


@hookimpl
def appa_register_noise_models(registry):
    registry.add_noise_model("wide", "{module}:Wide")
"""

HOOK_RAISES = """
from appa_core.obs.errors import DiagonalGaussian
from appa_core.plugins import hookimpl


@hookimpl
def appa_register_noise_models(registry):
    registry.add_noise_model("half_done", DiagonalGaussian)
    raise RuntimeError("the hook broke")


@hookimpl
def appa_register_data_sources(registry):
    registry.add_data_source("archive", {"url": "file:///archive"})
"""


@pytest.fixture
def add_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[AddDist]:
    """``add_dist(dist, module, source, ep_name=module, version="1.0.0", value=module)`` installs a fake
    distribution; ``importlib.metadata.entry_points`` then sees only the fake ones."""
    site = tmp_path / "site"
    site.mkdir()
    modules: list[str] = []

    def add(
        dist: str, module: str, source: str, ep_name: str | None = None, version: str = "1.0.0", value: str = ""
    ) -> None:
        if source:
            (site / f"{module}.py").write_text(textwrap.dedent(source))
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{ep_name or module} = {value or module}\n")
        modules.append(module)
        importlib.invalidate_caches()

    def entry_points(group: str | None = None, **_: object) -> list[importlib.metadata.EntryPoint]:
        dists = importlib.metadata.distributions(path=[str(site)])
        return sorted(
            (ep for d in dists for ep in d.entry_points if ep.group == group), key=lambda ep: ep.dist.metadata["Name"]
        )

    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    yield add
    for module in modules:
        sys.modules.pop(module, None)


def _good(add: AddDist, dist: str = "appa-fake-good", module: str = "fake_good", op: str = "mean", **kw: str) -> None:
    add(dist, module, GOOD.format(op=op, module=module), **kw)


# ---------------------------------------------------------------------------------------------- loading
def test_good_plugin_loads_with_its_distribution(add_dist: AddDist) -> None:
    _good(add_dist, version="2.3.4")
    reg = load_plugins(env={})
    info = reg.plugins["fake_good"]
    assert info.ok and info.status == "ok" and info.source == "entry point"
    assert (info.distribution, info.version, info.module) == ("appa-fake-good", "2.3.4", "fake_good")
    assert info.hooks == ["appa_register_operators", "appa_register_noise_models"]
    assert info.components == ["fake_good:mean", "fake_good:wide"]
    assert info.aliases  # every installed plugin: its bare names work (issue 11: no first-party privilege)
    op = reg.operator("fake_good:mean")
    assert issubclass(op, ObsOperator) and op.__module__ == "fake_good"
    assert reg.operator("mean") is op
    wide = reg.noise_model("fake_good:wide")  # lazy target, imported on first lookup
    assert issubclass(wide, DiagonalGaussian) and reg.component("noise_model", "fake_good:wide").load() is wide
    with pytest.raises(UnknownComponentError, match=r"unknown operator 'meen'"):
        reg.operator("meen")
    assert reg.noise_model("huber") is Huber  # built-ins are there too
    assert reg.plugins["appa"].source == "builtin" and reg.plugins["appa"].ok


def test_failing_plugins_are_recorded_and_others_still_load(add_dist: AddDist) -> None:
    add_dist("appa-fake-broken", "fake_broken", "raise ImportError('needs libfoo')\n", version="0.0.1")
    add_dist("appa-fake-missing", "fake_missing", "", value="fake_nowhere.module")
    add_dist("appa-fake-exits", "fake_exits", "import sys\nsys.exit(3)\n")
    add_dist("appa-fake-hook", "fake_hook", HOOK_RAISES, version="1.1")
    _good(add_dist, dist="appa-fake-zz", module="fake_zz")  # loaded last: after every failure
    reg = load_plugins(env={})

    broken = reg.plugins["fake_broken"]
    assert broken.status == "failed" and not broken.ok and broken.components == []
    assert (broken.distribution, broken.version) == ("appa-fake-broken", "0.0.1")
    assert broken.error == "import: ImportError: needs libfoo (fake_broken.py:1)"
    assert "Traceback" in broken.traceback and "needs libfoo" in broken.traceback

    missing = reg.plugins["fake_missing"]
    assert missing.status == "failed" and "ModuleNotFoundError: No module named 'fake_nowhere'" in missing.error
    assert reg.plugins["fake_exits"].error.startswith("import: SystemExit: 3")

    hook = reg.plugins["fake_hook"]
    assert hook.status == "failed" and hook.version == "1.1"
    assert hook.error == "appa_register_noise_models: RuntimeError: the hook broke (fake_hook.py:9)"
    # The failing hook's registrations are rolled back; the plugin's other hook still registered.
    assert hook.components == ["fake_hook:archive"]
    assert reg.names("noise_model") == sorted(["fake_zz:wide", *(f"appa:{n}" for n in _BUILTIN_NOISE)])
    assert reg.data_source("fake_hook:archive") == {"url": "file:///archive"}

    assert reg.plugins["fake_zz"].ok and reg.operator("fake_zz:mean").__name__ == "Mean"
    # an unknown name's error says which plugins failed to load (the name may have been theirs), and why
    with pytest.raises(UnknownComponentError, match=r"failed to load.*fake_broken \(import: ImportError: needs libfoo"):
        reg.operator("station")
    report = json.loads(json.dumps(reg.report()))  # JSON-serialisable
    statuses = {p["name"]: p["status"] for p in report["plugins"]}
    assert statuses == {
        "appa": "ok",
        "fake_broken": "failed",
        "fake_exits": "failed",
        "fake_hook": "failed",
        "fake_missing": "failed",
        "fake_zz": "ok",
    }
    assert next(p for p in report["plugins"] if p["name"] == "fake_broken")["error"].startswith("import: ImportError")


_BUILTIN_NOISE = ("block_diagonal", "correlated_gaussian", "diagonal_gaussian", "huber", "student_t")


def test_loading_twice_is_idempotent(add_dist: AddDist) -> None:
    _good(add_dist)
    reg = load_plugins(env={})
    load_plugins(reg, env={})
    assert reg.names("operator") == ["fake_good:mean"] and reg.problems == []


# ---------------------------------------------------------------------------------------------- names and clashes
def test_aliases_and_clashes(add_dist: AddDist) -> None:
    _good(add_dist, dist="appa-op-one", module="fake_one", op="point")
    _good(add_dist, dist="appa-op-two", module="fake_two", op="point")
    _good(add_dist, dist="Appa_Op.Two", module="fake_three", op="other", ep_name="three")  # normalised dist name
    reg = load_plugins(env={})
    assert reg.plugins["fake_one"].aliases and reg.plugins["three"].aliases
    assert reg.operator("other") is reg.operator("three:other")
    # 'point' is claimed by two plugins: recorded as a problem, ambiguous on lookup, full names still work.
    assert any("name clash: operator 'point'" in p and "'fake_one:point'" in p for p in reg.problems)
    with pytest.raises(UnknownComponentError, match=r"operator name 'point' is ambiguous.*'fake_one:point' and"):
        reg.operator("point")
    assert reg.operator("fake_one:point") is not reg.operator("fake_two:point")
    assert "point" not in reg.aliases("operator") and reg.aliases("operator")["other"] == "three:other"
    # 'wide' is claimed three times.
    assert sum("noise model 'wide'" in p for p in reg.problems) == 2


def test_entry_point_name_clash_loads_neither(add_dist: AddDist) -> None:
    """Two distributions declaring one entry-point name: neither is loaded (whichever comes first on the path), the
    plugin is listed as failed naming both distributions, and the other plugins load."""
    _good(add_dist, dist="appa-fake-b", module="fake_b", ep_name="same")
    _good(add_dist, dist="appa-fake-a", module="fake_a", ep_name="same")
    _good(add_dist, dist="appa-fake-c", module="fake_c", op="other")
    reg = load_plugins(env={})
    info = reg.plugins["same"]
    assert info.status == "failed" and info.distribution == "appa-fake-a, appa-fake-b"
    assert "entry point 'same' is declared by appa-fake-a (fake_a) and appa-fake-b (fake_b)" in str(info.error)
    assert "none of them is loaded" in str(info.error)
    assert reg.names("operator") == ["fake_c:other"] and "fake_a" not in sys.modules and "fake_b" not in sys.modules
    assert sum("plugin name clash: entry point 'same'" in p for p in reg.problems) == 1
    load_plugins(reg, env={})  # loading again reports nothing new
    assert sum("plugin name clash" in p for p in reg.problems) == 1


def test_in_process_clash_with_a_builtin_alias() -> None:
    reg = Registry()
    plugin = types.SimpleNamespace(appa_register_noise_models=hookimpl(lambda registry: None))

    class Mine:
        @hookimpl
        def appa_register_noise_models(self, registry: Registry) -> None:
            registry.add_noise_model("huber", DiagonalGaussian)

    reg.register_plugin(Mine(), name="mine", aliases=True)
    assert any("name clash: noise model 'huber'" in p for p in reg.problems)
    with pytest.raises(UnknownComponentError, match=r"'huber' is ambiguous; it is registered by 'appa:huber' and"):
        reg.noise_model("huber")
    assert reg.noise_model("appa:huber") is Huber and reg.noise_model("mine:huber") is DiagonalGaussian
    # Unregistering the newcomer restores the alias.
    reg.unregister_plugin("mine")
    assert reg.noise_model("huber") is Huber
    assert reg.register_plugin(plugin, name="ns").hooks == ["appa_register_noise_models"]


# ---------------------------------------------------------------------------------------------- environment
def test_env_only_disable_and_autoload(add_dist: AddDist, monkeypatch: pytest.MonkeyPatch) -> None:
    _good(add_dist, dist="appa-fake-a", module="fake_a")
    _good(add_dist, dist="appa-fake-b", module="fake_b")
    add_dist("appa-fake-broken", "fake_broken", "raise ImportError('no')\n")

    reg = load_plugins(env={"APPA_PLUGINS": "fake_a, appa-fake-b ,nope"})
    status = {n: (p.status, p.reason) for n, p in reg.plugins.items()}
    assert status["fake_a"] == ("ok", None) and status["fake_b"] == ("ok", None)  # by entry-point or dist name
    assert status["fake_broken"] == ("disabled", "not listed in APPA_PLUGINS")
    # (fake_a and fake_b also clash on the bare names 'mean' and 'wide': every installed plugin gets bare aliases)
    assert [p for p in reg.problems if not p.startswith("name clash")] == [
        "APPA_PLUGINS names 'nope' but no installed plugin has that name"
    ]

    reg = load_plugins(env={"APPA_DISABLE_PLUGINS": "appa-fake-broken,fake_b"})
    assert [n for n, p in reg.plugins.items() if p.status == "disabled"] == ["fake_b", "fake_broken"]
    assert reg.plugins["fake_b"].reason == "listed in APPA_DISABLE_PLUGINS" and reg.plugins["fake_a"].ok
    assert "fake_broken" not in sys.modules  # a disabled plugin is never imported

    for off in ("0", "false", "No"):
        reg = load_plugins(env={"APPA_PLUGINS_AUTOLOAD": off, "APPA_PLUGINS": "fake_a"})
        assert {p.reason for n, p in reg.plugins.items() if n != "appa"} == {"APPA_PLUGINS_AUTOLOAD=0"}
        assert reg.names("operator") == [] and reg.noise_model("huber") is Huber and reg.problems == []

    # Keyword arguments override the environment; the default environment is os.environ.
    assert load_plugins(env={"APPA_PLUGINS": "fake_a"}, only=["fake_b"]).plugins["fake_b"].ok
    monkeypatch.setenv("APPA_DISABLE_PLUGINS", "fake_a")
    reg = get_registry()
    assert reg.plugins["fake_a"].status == "disabled" and reg.plugins["fake_b"].ok
    assert get_registry() is reg and get_registry(reload=True) is not reg


# ---------------------------------------------------------------------------------------------- in-process
def test_register_plugin_in_process() -> None:
    reg = Registry(builtins=False)
    assert reg.plugins == {} and reg.names("noise_model") == []
    module = types.ModuleType("notebook_plugin")

    @hookimpl
    def appa_register_obs_readers(registry: Registry) -> None:
        registry.add_obs_reader("csv", lambda path: path)

    module.appa_register_obs_readers = appa_register_obs_readers  # type: ignore[attr-defined]
    info = reg.register_plugin(module)
    assert info.name == "notebook_plugin" and info.source == "in-process" and info.ok
    assert reg.obs_reader("notebook_plugin:csv")("x.csv") == "x.csv"
    with pytest.raises(ValueError, match=r"Registry.register_plugin: a plugin named 'notebook_plugin' is already"):
        reg.register_plugin(module)
    reg.unregister_plugin("notebook_plugin")
    assert reg.names("obs_reader") == [] and "notebook_plugin" not in reg.plugins
    with pytest.raises(KeyError, match=r"no plugin named 'notebook_plugin'"):
        reg.unregister_plugin("notebook_plugin")


def test_register_plugin_failures() -> None:
    reg = Registry()

    class Raises:
        @hookimpl
        def appa_register_operators(self, registry: Registry) -> None:
            raise ValueError("bad config")

    with pytest.raises(PluginError, match=r"plugin 'raises' failed: appa_register_operators: ValueError: bad config"):
        reg.register_plugin(Raises(), name="raises")
    assert reg.plugins["raises"].status == "failed"
    info = reg.register_plugin(Raises(), name="lenient", strict=False)
    assert info.status == "failed" and "bad config" in info.error

    class Typo:
        @hookimpl
        def appa_register_operator(self, registry: Registry) -> None:  # missing 's'
            pass

    info = reg.register_plugin(Typo(), name="typo", strict=False)
    assert info.status == "failed" and "unknown hook(s) ['appa_register_operator']" in info.error
    assert not reg.pm.has_plugin("typo")

    class WrongArgs:
        @hookimpl
        def appa_register_operators(self, registry: Registry, extra: int) -> None:
            pass

    info = reg.register_plugin(WrongArgs(), name="wrong_args", strict=False)
    assert info.status == "failed" and info.error.startswith("registration: PluginValidationError")

    class Nothing:
        def appa_register_operators(self, registry: Registry) -> None:  # not marked with @hookimpl
            pass

    assert reg.register_plugin(Nothing(), name="nothing").ok
    assert any("plugin 'nothing' implements no appa hook" in p for p in reg.problems)


def test_direct_additions_go_to_the_local_plugin() -> None:
    reg = Registry(builtins=False)
    reg.add_noise_model("mine", DiagonalGaussian)
    assert reg.noise_model("mine") is reg.noise_model("local:mine") is DiagonalGaussian
    assert reg.plugins["local"].source == "in-process"
    reg.add_noise_model("mine", Huber)
    assert reg.noise_model("mine") is DiagonalGaussian
    assert reg.problems == ["plugin 'local' registers noise model 'mine' twice; the first one is kept"]


@pytest.mark.parametrize(
    ("thunk", "error", "pattern"),
    [
        (lambda r: r.add_operator("a:b", ObsOperator), ValueError, r"Registry.add_operator: field 'name' has value"),
        (lambda r: r.add_operator("", ObsOperator), ValueError, r"field 'name' has value ''"),
        (lambda r: r.add_operator("x", DiagonalGaussian), TypeError, r"operator 'x' must be an ObsOperator subclass"),
        (lambda r: r.add_operator("x", "no_colon"), ValueError, r"lazy target 'no_colon' of 'x' must look like"),
        (lambda r: r.add_operator("x", ObsOperator, example=3), TypeError, r"field 'example' of 'x' must be callable"),
        (lambda r: r.add_noise_model("x", object), TypeError, r"noise model 'x' must be a NoiseModel subclass"),
        (lambda r: r.add_data_source("x", None), TypeError, r"Registry: data source 'x' is None"),
        (lambda r: r.component("widget", "x"), ValueError, r"Registry: unknown component kind 'widget'"),
        (lambda r: r.data_source("nope"), UnknownComponentError, r"Registry: unknown data source 'nope' \(known: n"),
    ],
)
def test_registry_refuses_bad_components(thunk: Callable[[Registry], object], error: type, pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        thunk(Registry())


def test_lazy_targets_fail_clearly_on_lookup() -> None:
    reg = Registry(builtins=False)
    reg.add_operator("ghost", "appa_no_such_module:Op")
    reg.add_operator("wrong", "appa_core.obs.errors:Huber")
    reg.add_noise_model("deep", "appa_core.obs.errors:CorrelatedGaussian.sample")
    with pytest.raises(ImportError, match=r"operator 'local:ghost' points to 'appa_no_such_module:Op', which failed"):
        reg.operator("ghost")
    with pytest.raises(TypeError, match=r"operator 'local:wrong' must be an ObsOperator subclass"):
        reg.operator("wrong")
    with pytest.raises(TypeError, match=r"noise model 'local:deep' must be a NoiseModel subclass"):
        reg.noise_model("deep")
    report = reg.report()
    assert report["components"]["operator"][0] == {
        "name": "local:ghost",
        "alias": "ghost",
        "plugin": "local",
        "target": "appa_no_such_module:Op",
        "example": None,
    }


def test_hook_names_and_pluggy_project() -> None:
    assert HOOK_NAMES == (
        "appa_register_operators",
        "appa_register_noise_models",
        "appa_register_obs_readers",
        "appa_register_data_sources",
        "appa_register_commands",
    )
    assert isinstance(hookimpl, pluggy.HookimplMarker) and hookimpl.project_name == "appa"
    reg = Registry()
    assert reg.pm.project_name == "appa"
    assert sorted(reg.aliases("noise_model")) == sorted(_BUILTIN_NOISE)
    assert [c.full_name for c in reg.components("noise_model")] == [f"appa:{n}" for n in sorted(_BUILTIN_NOISE)]
    assert repr(reg).startswith("Registry(1 plugins: 0 operators, 5 noise models")


def test_a_distribution_cannot_take_over_an_installed_plugin_name(add_dist: AddDist) -> None:
    """Issue: a third-party distribution with an entry point named ``stations`` replaced the first-party one (it
    sorted first) and only ``--strict`` noticed. Now neither loads, whatever the order on the path, and the error
    names both distributions; no distribution is privileged (issue 11)."""
    _good(add_dist, dist="aaa-evil", module="fake_evil", op="evil", ep_name="stations")
    _good(add_dist, dist="zz-appa-op-stations", module="fake_stations", op="station", ep_name="stations")
    reg = load_plugins(env={})
    assert reg.plugins["stations"].status == "failed" and reg.names("operator") == []
    assert "declared by aaa-evil (fake_evil) and zz-appa-op-stations (fake_stations)" in str(
        reg.plugins["stations"].error
    )


def test_a_plugin_whose_import_blocks_is_reported_by_name(add_dist: AddDist) -> None:
    """Issue: a plugin whose import blocked hung ``appa plugins`` and ``appa demo`` forever."""
    add_dist("appa-fake-slow", "fake_slow", "import time\ntime.sleep(30)\n")
    _good(add_dist)
    t0 = time.perf_counter()
    reg = load_plugins(env={"APPA_PLUGIN_TIMEOUT": "0.5"})
    assert time.perf_counter() - t0 < 5
    info = reg.plugins["fake_slow"]
    assert info.status == "failed" and "did not finish within 0.5 s (APPA_PLUGIN_TIMEOUT)" in str(info.error)
    assert reg.plugins["fake_good"].ok
    with pytest.raises(ValueError, match=r"APPA_PLUGIN_TIMEOUT has value 'soon'"):
        load_plugins(env={"APPA_PLUGIN_TIMEOUT": "soon"})


def test_a_plugin_that_installs_a_signal_handler_at_import_still_loads(add_dist: AddDist) -> None:
    """The timed import runs in a thread; signal.signal only works in the main thread, so such a plugin is
    imported again there (review finding: it failed otherwise)."""
    add_dist(
        "appa-fake-sig",
        "fake_sig",
        GOOD.format(op="sig", module="fake_sig") + "\nimport signal\nsignal.signal(signal.SIGUSR1, signal.SIG_IGN)\n",
    )
    reg = load_plugins(env={})
    assert reg.plugins["fake_sig"].ok and reg.names("operator") == ["fake_sig:sig"]
    assert (
        load_plugins(env={"APPA_PLUGINS_AUTOLOAD": "0", "APPA_PLUGIN_TIMEOUT": "soon"}).plugins["fake_sig"].status
        == "disabled"
    )
