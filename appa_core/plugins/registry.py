"""The component registry and plugin loading.

A **plugin** is a module (or any object) with ``@hookimpl`` functions named after the hooks in
:mod:`appa_core.plugins.hookspecs`; installed plugins are found through the entry-point group ``appa.plugins``
(``name = "package.module"``). Each hook adds **components** of five kinds: operators, noise models, observation
readers and data sources (through the :class:`Registry`), and subcommands of ``appa`` (through the ``register``
callback of ``appa_register_commands``).

Names. A component is addressed as ``plugin:component`` (``stations:station``), where ``plugin`` is the entry-point
name. Every installed plugin's components, and the core's built-in ones, also get a bare alias (``station``): an
installed third-party operator is used by its bare name exactly as a first-party one (in-process plugins get aliases
when registered with ``aliases=True``). Two components claiming one alias make it ambiguous: the clash is recorded in
:attr:`Registry.problems` (``appa plugins`` shows it) and looking the alias up raises, naming both full names; nothing
is silently overwritten.

Isolation. Each entry point is loaded, and each hook implementation called, in its own ``try``/``except``: a
failure is recorded on the plugin's :class:`PluginInfo` (distribution, version, one-line error, traceback), the
components the failing hook had added are rolled back, and every other plugin still loads.

Environment (read by :func:`load_plugins` / :meth:`Registry.load_entry_points`):

* ``APPA_PLUGINS=a,b``: load only these entry points (by entry-point or distribution name);
* ``APPA_DISABLE_PLUGINS=a,b``: do not load these;
* ``APPA_PLUGINS_AUTOLOAD=0``: load no entry point at all (built-ins and in-process plugins still work);
* ``APPA_PLUGIN_TIMEOUT=S``: seconds an entry point's import may take (default 20); a plugin whose import blocks
  longer is reported as failed, by name, and the others load (the import goes on in a daemon thread, holding its
  module's import lock: do not import that module again in the same process). A module that installs signal
  handlers at import, which only the main thread may do, is imported again in the main thread.

Entry-point names are unique. When two installed distributions declare an entry point of the same name, neither is
loaded: the plugin is listed as failed with an error naming both distributions, the clash is recorded in
:attr:`Registry.problems` and logged as a warning, and ``appa plugins --strict`` fails. No distribution takes
precedence over another, so none can silently replace another's plugin; uninstall one of the two.

Plugins skipped by these switches are listed with status ``disabled`` and the reason.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import re
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs
import pluggy

from appa_core.plugins import hookspecs
from appa_core.plugins.hookspecs import HOOK_NAMES, PROJECT

__all__ = [
    "ENTRY_POINT_GROUP",
    "KINDS",
    "RESERVED_COMMANDS",
    "Component",
    "PluginError",
    "PluginInfo",
    "PluginTimeoutError",
    "Registry",
    "UnknownComponentError",
    "get_registry",
    "load_plugins",
]

logger = logging.getLogger("appa_core.plugins")

#: Entry-point group that installed plugins declare.
ENTRY_POINT_GROUP = "appa.plugins"

#: Component kinds, with the words used in messages.
KINDS: dict[str, str] = {
    "operator": "operator",
    "noise_model": "noise model",
    "obs_reader": "observation reader",
    "data_source": "data source",
    "command": "command",
}

#: Subcommands of ``appa`` that the core implements itself; plugins cannot register these names.
RESERVED_COMMANDS = frozenset({"version", "plugins", "train", "prior", "help"})

#: Name of the plugin that holds the core's built-in components.
BUILTIN_PLUGIN = "appa"
#: Name of the plugin that holds components added outside any hook (``registry.add_operator(...)`` in a notebook).
LOCAL_PLUGIN = "local"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-]*$")


class PluginError(RuntimeError):
    """An in-process plugin failed to register (raised by :meth:`Registry.register_plugin` when ``strict``)."""


class UnknownComponentError(LookupError, ValueError):
    """A component name that the registry does not know, or an ambiguous alias."""


def _normalize(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _summary(exc: BaseException) -> str:
    """One line: ``Type: message (file.py:12)`` with the innermost frame of the traceback."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    if frames:
        text += f" ({os.path.basename(frames[-1].filename)}:{frames[-1].lineno})"
    return text if len(text) <= 400 else text[:397] + "..."


@attrs.define(eq=False)
class Component:
    """A registered component.

    Attributes:
        kind: one of :data:`KINDS`.
        plugin: the registering plugin's name.
        name: the component's short name (the part after ``plugin:``).
        target: the object (a class, a factory, ...) or a lazy ``"package.module:attr"`` string.
        example: operators only: a callable returning ``(operator, grid, spec, times)`` for ``appa plugins check``.
        help: commands only: the one-line summary ``appa --help`` lists.
    """

    kind: str
    plugin: str
    name: str
    target: Any
    example: Callable[[], tuple[Any, ...]] | None = None
    help: str = ""
    _loaded: Any = attrs.field(default=None, init=False, repr=False)

    @property
    def full_name(self) -> str:
        return f"{self.plugin}:{self.name}"

    def load(self) -> Any:
        """The component object (imports a lazy ``"module:attr"`` target on first use)."""
        if not isinstance(self.target, str):
            return self.target
        if self._loaded is None:
            module, _, attr = self.target.partition(":")
            try:
                obj: Any = importlib.import_module(module)
                for part in attr.split(".") if attr else ():
                    obj = getattr(obj, part)
            except Exception as exc:
                raise ImportError(
                    f"Registry: {KINDS[self.kind]} {self.full_name!r} points to {self.target!r}, which failed to "
                    f"import: {_summary(exc)}"
                ) from exc
            _check_component(self.kind, self.full_name, obj)
            self._loaded = obj
        return self._loaded


def _check_component(kind: str, name: str, obj: Any) -> None:
    """Refuse objects that cannot be components of ``kind`` (lazy strings are checked when loaded)."""
    if obj is None:
        raise TypeError(f"Registry: {KINDS[kind]} {name!r} is None")
    if kind == "operator":
        from appa_core.obs.base import ObsOperator

        if not (isinstance(obj, type) and issubclass(obj, ObsOperator)):
            raise TypeError(f"Registry: operator {name!r} must be an ObsOperator subclass, got {obj!r:.100}")
    elif kind == "noise_model":
        from appa_core.obs.errors import NoiseModel

        if not (isinstance(obj, type) and issubclass(obj, NoiseModel)):
            raise TypeError(f"Registry: noise model {name!r} must be a NoiseModel subclass, got {obj!r:.100}")
    elif kind == "command" and not callable(obj):
        raise TypeError(f"Registry: command {name!r} must be a function main(argv) -> int, got {obj!r:.100}")


@attrs.define(eq=False)
class PluginInfo:
    """What the registry knows about one plugin.

    Attributes:
        name: plugin name (the entry-point name; the prefix of its components' full names).
        distribution: the installed distribution that declares it (``None`` for in-process plugins).
        version: the distribution's version.
        source: ``"builtin"``, ``"entry point"`` or ``"in-process"``.
        status: ``"ok"``, ``"failed"`` (``errors`` says why) or ``"disabled"`` (``reason`` says why).
        module: the entry point's target, or the module / object registered in-process.
        aliases: whether its components get bare aliases (installed and built-in plugins; in-process ones on request).
        hooks: the hooks it implements.
        components: full names of the components it registered.
        errors: one line per failure (import, registration or hook).
        traceback: the full traceback(s) of the failures.
        reason: why a disabled plugin was not loaded.
        load_ms: time spent importing and calling its hooks.
    """

    name: str
    distribution: str | None = None
    version: str | None = None
    source: str = "in-process"
    status: str = "ok"
    module: str | None = None
    aliases: bool = False
    hooks: list[str] = attrs.field(factory=list)
    components: list[str] = attrs.field(factory=list)
    errors: list[str] = attrs.field(factory=list)
    traceback: str = ""
    reason: str | None = None
    load_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def error(self) -> str | None:
        """All failures on one line, or ``None``."""
        return "; ".join(self.errors) if self.errors else None

    def to_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["error"] = self.error
        return d


class Registry:
    """Components registered by plugins, looked up by name.

    Args:
        builtins: register the core's built-in components (the noise models) under the plugin ``appa``.
    """

    def __init__(self, *, builtins: bool = True) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.problems: list[str] = []
        self._components: dict[str, dict[str, Component]] = {k: {} for k in KINDS}
        self._aliases: dict[str, dict[str, list[str]]] = {k: {} for k in KINDS}
        self._current: PluginInfo | None = None
        if builtins:
            from appa_core.plugins import builtin

            version = _version("appa-core")
            info = PluginInfo(
                BUILTIN_PLUGIN, "appa-core", version, source="builtin", module=builtin.__name__, aliases=True
            )
            self._register(info, builtin)

    # ------------------------------------------------------------------------------------------ registration API
    def add_operator(self, name: str, cls: type | str, *, example: Callable[[], tuple[Any, ...]] | None = None) -> None:
        """Register an observation operator class (or a lazy ``"package.module:Class"`` string).

        Args:
            name: short name (letters, digits, ``_ . -``); the full name is ``plugin:name``.
            cls: an :class:`~appa_core.obs.ObsOperator` subclass.
            example: optional zero-argument callable returning ``(operator, grid, spec, times)``: a small valid,
                unprepared operator and the state layout to prepare it on. ``appa plugins check`` runs the
                operator contract tests on it. Without it, ``cls.example()`` is used if the class defines one.
        """
        if example is not None and not callable(example):
            raise TypeError(f"Registry.add_operator: field 'example' of {name!r} must be callable, got {example!r:.80}")
        self._add("operator", name, cls, example)

    def add_noise_model(self, name: str, cls: type | str) -> None:
        """Register a :class:`~appa_core.obs.errors.NoiseModel` subclass (or a lazy ``"package.module:Class"``
        string)."""
        self._add("noise_model", name, cls)

    def add_obs_reader(self, name: str, reader: object) -> None:
        """Register an observation reader (an object or callable turning observation files into operators)."""
        self._add("obs_reader", name, reader)

    def add_data_source(self, name: str, source: object) -> None:
        """Register a data source of state trajectories (e.g. the nature run: ``generate``/``open``/``main``)."""
        self._add("data_source", name, source)

    def add_command(self, name: str, main: Callable[..., Any] | str, *, help: str = "") -> None:
        """Register a subcommand ``appa NAME`` (the ``register`` callback of ``appa_register_commands``).

        Args:
            name: the subcommand (letters, digits, ``_ . -``); not one of :data:`RESERVED_COMMANDS`.
            main: ``main(argv: list[str] | None) -> int | None`` or a lazy ``"package.module:function"`` string.
            help: the one-line summary listed by ``appa --help``.
        """
        if name in RESERVED_COMMANDS:
            raise ValueError(
                f"Registry.add_command: field 'name' has value {name!r}, a command of appa-core itself; reserved "
                f"names are {sorted(RESERVED_COMMANDS)}"
            )
        if not isinstance(help, str):
            raise TypeError(f"Registry.add_command: field 'help' of {name!r} must be a string, got {help!r:.80}")
        self._add("command", name, main, help=help)

    def _add(
        self,
        kind: str,
        name: str,
        target: Any,
        example: Callable[[], tuple[Any, ...]] | None = None,
        help: str = "",
    ) -> None:
        owner = f"Registry.add_{kind}"
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(
                f"{owner}: field 'name' has value {name!r}; use letters, digits, '_', '.', '-' (no ':', the plugin "
                "prefix is added for you)"
            )
        if not isinstance(target, str):
            _check_component(kind, name, target)
        elif ":" not in target:
            raise ValueError(f"{owner}: lazy target {target!r} of {name!r} must look like 'package.module:attr'")
        plugin = self._current or self._local_plugin()
        comp = Component(kind, plugin.name, name, target, example, help)
        table = self._components[kind]
        if comp.full_name in table:
            self._problem(f"plugin {plugin.name!r} registers {KINDS[kind]} {name!r} twice; the first one is kept")
            return
        table[comp.full_name] = comp
        plugin.components.append(comp.full_name)
        if plugin.aliases:
            holders = self._aliases[kind].setdefault(name, [])
            holders.append(comp.full_name)
            if len(holders) > 1:
                self._problem(
                    f"name clash: {KINDS[kind]} {name!r} is registered by {' and '.join(map(repr, holders))}; "
                    "the short name is ambiguous, use a full name"
                )

    def _local_plugin(self) -> PluginInfo:
        if LOCAL_PLUGIN not in self.plugins:
            self.plugins[LOCAL_PLUGIN] = PluginInfo(LOCAL_PLUGIN, source="in-process", aliases=True)
        return self.plugins[LOCAL_PLUGIN]

    def _remove(self, full_names: Iterable[str], kinds: Iterable[str] | None = None) -> None:
        """Remove components by full name (of the given kinds only, default all)."""
        tables = {k: self._components[k] for k in (KINDS if kinds is None else kinds)}
        for full in list(full_names):
            for kind, table in tables.items():
                comp = table.pop(full, None)
                if comp is None:
                    continue
                holders = self._aliases[kind].get(comp.name, [])
                if full in holders:
                    holders.remove(full)
                    if not holders:
                        del self._aliases[kind][comp.name]
                if comp.plugin in self.plugins and full in self.plugins[comp.plugin].components:
                    self.plugins[comp.plugin].components.remove(full)

    def _problem(self, message: str) -> None:
        logger.warning("appa plugins: %s", message)
        self.problems.append(message)

    # ------------------------------------------------------------------------------------------ plugins
    def register_plugin(
        self, plugin: object, name: str | None = None, *, aliases: bool = False, strict: bool = True
    ) -> PluginInfo:
        """Register a plugin in-process (a module or object with ``@hookimpl`` functions) and call its hooks.

        For notebooks and tests, where there is no installed entry point.

        Args:
            plugin: the module or object.
            name: the plugin's name (default: the module's ``__name__`` or the class name).
            aliases: give its components bare aliases, as installed plugins get.
            strict: raise :class:`PluginError` if it fails (it is recorded either way).
        """
        if name is None:
            name = getattr(plugin, "__name__", None) or type(plugin).__name__
        if name in self.plugins:
            raise ValueError(f"Registry.register_plugin: a plugin named {name!r} is already registered")
        info = PluginInfo(name, source="in-process", module=getattr(plugin, "__name__", repr(plugin)), aliases=aliases)
        self._register(info, plugin)
        if strict and not info.ok:
            raise PluginError(f"plugin {name!r} failed: {info.error}\n{info.traceback}")
        return info

    def unregister_plugin(self, name: str) -> None:
        """Remove a plugin and its components."""
        info = self.plugins.pop(name, None)
        if info is None:
            raise KeyError(f"Registry.unregister_plugin: no plugin named {name!r}")
        self._remove(list(info.components))
        if self.pm.has_plugin(name):
            self.pm.unregister(name=name)

    def _fail(self, info: PluginInfo, stage: str, exc: BaseException) -> None:
        info.status = "failed"
        info.errors.append(f"{stage}: {_summary(exc)}")
        info.traceback += "".join(traceback.format_exception(exc))
        where = f" ({info.distribution} {info.version})" if info.distribution else ""
        logger.warning("appa plugin %r%s failed: %s", info.name, where, info.errors[-1])

    def _register(self, info: PluginInfo, plugin: object) -> None:
        """Register ``plugin`` with pluggy and call each of its hook implementations in isolation."""
        self.plugins[info.name] = info
        t0 = time.perf_counter()
        try:
            self.pm.register(plugin, name=info.name)
        except Exception as exc:
            self._fail(info, "registration", exc)
            return
        unknown = [
            impl.function.__name__
            for caller in self.pm.get_hookcallers(plugin) or []
            if caller.spec is None
            for impl in caller.get_hookimpls()
            if impl.plugin is plugin and not impl.optionalhook
        ]
        if unknown:
            self.pm.unregister(plugin)
            self._fail(
                info, "registration", ValueError(f"unknown hook(s) {unknown}; appa hooks are {list(HOOK_NAMES)}")
            )
            return
        for hook_name in HOOK_NAMES:
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                info.hooks.append(hook_name)
                if impl.hookwrapper or impl.wrapper:
                    self._fail(info, hook_name, TypeError("registration hooks cannot be wrappers"))
                    continue
                before = {k: set(self._components[k]) for k in KINDS}
                self._current = info
                arguments = {"registry": self, "register": self.add_command}
                try:
                    impl.function(**{arg: arguments[arg] for arg in impl.argnames})
                except Exception as exc:
                    for kind in KINDS:  # roll back what this hook added (names may repeat across kinds)
                        self._remove([n for n in self._components[kind] if n not in before[kind]], [kind])
                    self._fail(info, hook_name, exc)
                finally:
                    self._current = None
        if not info.hooks and info.ok:
            self._problem(f"plugin {info.name!r} implements no appa hook (is its hook marked with @hookimpl?)")
        info.load_ms = (time.perf_counter() - t0) * 1e3

    def load_entry_points(
        self,
        *,
        env: Mapping[str, str] | None = None,
        autoload: bool | None = None,
        only: Iterable[str] | None = None,
        disable: Iterable[str] | None = None,
    ) -> Registry:
        """Load the installed plugins (entry-point group ``appa.plugins``), each in isolation.

        Args:
            env: environment to read ``APPA_PLUGINS``, ``APPA_DISABLE_PLUGINS``, ``APPA_PLUGINS_AUTOLOAD`` from
                (default ``os.environ``); the keyword arguments below override it.
            autoload: load entry points at all.
            only: load only these (entry-point or distribution names).
            disable: do not load these.
        """
        env = os.environ if env is None else env
        if autoload is None:
            autoload = env.get("APPA_PLUGINS_AUTOLOAD", "1").strip().lower() not in {"0", "false", "no", "off"}
        if only is None and env.get("APPA_PLUGINS", "").strip():
            only = env["APPA_PLUGINS"].split(",")
        only_set = None if only is None else {s.strip() for s in only if s.strip()}
        disable_set = {
            s.strip() for s in (env.get("APPA_DISABLE_PLUGINS", "").split(",") if disable is None else disable)
        }
        disable_set.discard("")
        timeout = _timeout(env) if autoload else 0.0
        found: set[str] = set()
        eps = _entry_points()
        claims: dict[str, list[importlib.metadata.EntryPoint]] = {}
        for ep in eps:
            claims.setdefault(ep.name, []).append(ep)
        for ep in eps:
            dist, version = _distribution(ep)
            keys = {ep.name} | ({dist, _normalize(dist)} if dist else set())
            found |= keys
            if len(claims[ep.name]) > 1:
                if ep is claims[ep.name][0] and ep.name not in self.plugins:
                    self._clash(ep.name, claims[ep.name])
                continue
            if ep.name in self.plugins:
                prev = self.plugins[ep.name]
                if prev.source == "entry point" and prev.distribution == dist and prev.module == ep.value:
                    continue  # already loaded by an earlier call
                self._problem(
                    f"plugin name clash: entry point {ep.name!r} of {dist or ep.value} is not loaded because a plugin "
                    f"with that name is already registered ({prev.distribution or prev.source})"
                )
                continue
            info = PluginInfo(ep.name, dist, version, source="entry point", module=ep.value, aliases=True)
            reason = None
            if not autoload:
                reason = "APPA_PLUGINS_AUTOLOAD=0"
            elif only_set is not None and not keys & only_set:
                reason = "not listed in APPA_PLUGINS"
            elif keys & disable_set:
                reason = "listed in APPA_DISABLE_PLUGINS"
            if reason is not None:
                info.status, info.reason = "disabled", reason
                self.plugins[ep.name] = info
                continue
            t0 = time.perf_counter()
            try:
                obj = _load_with_timeout(ep, timeout)
            except (Exception, SystemExit) as exc:
                self.plugins[ep.name] = info
                self._fail(info, "import", exc)
                info.load_ms = (time.perf_counter() - t0) * 1e3
                continue
            self._register(info, obj)
            info.load_ms += (time.perf_counter() - t0) * 1e3
        for name in sorted((only_set or set()) - found) if autoload else ():
            self._problem(f"APPA_PLUGINS names {name!r} but no installed plugin has that name")
        return self

    def _clash(self, name: str, eps: list[importlib.metadata.EntryPoint]) -> None:
        """Entry point ``name`` declared by several distributions: load none of them, and say so."""
        owners = [f"{_distribution(ep)[0] or '?'} ({ep.value})" for ep in eps]
        message = (
            f"plugin name clash: entry point {name!r} is declared by {' and '.join(owners)}; none of them is loaded "
            "(entry-point names must be unique: uninstall one)"
        )
        dists = sorted({d for d in (_distribution(ep)[0] for ep in eps) if d})
        info = PluginInfo(name, ", ".join(dists) or None, source="entry point", module=eps[0].value, aliases=True)
        info.status = "failed"
        info.errors.append(message)
        self.plugins[name] = info
        self._problem(message)

    # ------------------------------------------------------------------------------------------ lookups
    def component(self, kind: str, name: str) -> Component:
        """The :class:`Component` of ``kind`` named ``name`` (full ``plugin:component`` name or alias)."""
        if kind not in KINDS:
            raise ValueError(f"Registry: unknown component kind {kind!r}; kinds are {list(KINDS)}")
        table, label = self._components[kind], KINDS[kind]
        if name in table:
            return table[name]
        holders = self._aliases[kind].get(name, [])
        if len(holders) == 1:
            return table[holders[0]]
        if len(holders) > 1:
            raise UnknownComponentError(
                f"Registry: {label} name {name!r} is ambiguous; it is registered by {' and '.join(map(repr, holders))}"
            )
        similar = [full for full, c in table.items() if c.name == name]
        hint = f"; did you mean {' or '.join(map(repr, similar))}?" if similar else ""
        known = ", ".join(sorted(table)) or "none"
        failed = [f"{p.name} ({p.errors[-1]})" for p in self.plugins.values() if p.status == "failed" and p.errors]
        why = f"; plugin(s) that failed to load, which may hold it: {'; '.join(failed)}" if failed else ""
        raise UnknownComponentError(f"Registry: unknown {label} {name!r}{hint} (known: {known}){why}")

    def operator(self, name: str) -> Any:
        """The operator class named ``name``."""
        return self.component("operator", name).load()

    def noise_model(self, name: str) -> Any:
        """The noise model class named ``name``."""
        return self.component("noise_model", name).load()

    def obs_reader(self, name: str) -> Any:
        """The observation reader named ``name``."""
        return self.component("obs_reader", name).load()

    def data_source(self, name: str) -> Any:
        """The data source named ``name``."""
        return self.component("data_source", name).load()

    def command(self, name: str) -> Any:
        """The ``main(argv)`` function of the subcommand ``appa NAME``."""
        return self.component("command", name).load()

    def names(self, kind: str) -> list[str]:
        """Full names of the components of ``kind``, sorted."""
        return sorted(self._components[kind])

    def aliases(self, kind: str) -> dict[str, str]:
        """Unambiguous bare aliases of ``kind``: alias -> full name."""
        return {a: h[0] for a, h in sorted(self._aliases[kind].items()) if len(h) == 1}

    def components(self, kind: str | None = None) -> list[Component]:
        """All components (of one kind), sorted by kind and full name."""
        kinds = list(KINDS) if kind is None else [kind]
        return [self._components[k][n] for k in kinds for n in sorted(self._components[k])]

    def report(self) -> dict[str, Any]:
        """A JSON-serialisable summary: plugins (with status and components), components, problems."""
        comps: dict[str, list[dict[str, Any]]] = {}
        for kind in KINDS:
            alias_of = {full: a for a, full in self.aliases(kind).items()}
            comps[kind] = [
                {
                    "name": c.full_name,
                    "alias": alias_of.get(c.full_name),
                    "plugin": c.plugin,
                    "target": c.target if isinstance(c.target, str) else _qualname(c.target),
                    "example": _has_example(c),
                }
                for c in self.components(kind)
            ]
        return {
            "plugins": [info.to_dict() for info in self.plugins.values()],
            "components": comps,
            "problems": list(self.problems),
        }

    def __repr__(self) -> str:
        counts = ", ".join(f"{len(self._components[k])} {KINDS[k]}s" for k in KINDS)
        return f"Registry({len(self.plugins)} plugins: {counts})"


def _has_example(comp: Component) -> bool | None:
    """Whether an operator has a contract-check example (``None``: unknown until its lazy target is imported)."""
    if comp.kind != "operator":
        return None
    if comp.example is not None:
        return True
    if isinstance(comp.target, str) and comp._loaded is None:
        return None
    return callable(getattr(comp.load(), "example", None))


def _qualname(obj: Any) -> str:
    mod = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{mod}:{name}"


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """Entry points of :data:`ENTRY_POINT_GROUP`, without exact duplicates (a distribution seen twice on the path),
    sorted by name and distribution so that the load order does not depend on the order of ``sys.path``."""
    seen: set[tuple[str, str]] = set()
    out = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            out.append(ep)
    return sorted(out, key=lambda ep: (ep.name, _distribution(ep)[0] or "", ep.value))


class PluginTimeoutError(TimeoutError):
    """An entry point's import did not finish within ``APPA_PLUGIN_TIMEOUT`` seconds."""


def _timeout(env: Mapping[str, str]) -> float:
    raw = env.get("APPA_PLUGIN_TIMEOUT", "").strip()
    if not raw:
        return 20.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"APPA_PLUGIN_TIMEOUT has value {raw!r}; expected seconds, e.g. 20") from None
    if not value > 0:
        raise ValueError(f"APPA_PLUGIN_TIMEOUT has value {raw!r}; must be > 0")
    return value


def _load_with_timeout(ep: importlib.metadata.EntryPoint, seconds: float) -> Any:
    """``ep.load()`` in a daemon thread, so that a plugin whose import blocks cannot hang the host."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = ep.load()
        except BaseException as exc:  # re-raised in the caller's thread
            result["error"] = exc

    thread = threading.Thread(target=target, name=f"appa-plugin-import-{ep.name}", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise PluginTimeoutError(f"import of {ep.value!r} did not finish within {seconds:g} s (APPA_PLUGIN_TIMEOUT)")
    error = result.get("error")
    if isinstance(error, ValueError) and "main thread" in str(error):
        return ep.load()  # a module that installs signal handlers at import: it can only be imported here
    if error is not None:
        raise error
    return result["value"]


def _distribution(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    try:
        return dist.metadata["Name"], dist.version
    except Exception:  # a broken dist-info: still load the entry point
        return None, None


def load_plugins(registry: Registry | None = None, **options: Any) -> Registry:
    """Load the installed plugins into ``registry`` (a new one with the built-ins by default) and return it.

    ``options`` are those of :meth:`Registry.load_entry_points` (``env``, ``autoload``, ``only``, ``disable``).
    """
    registry = Registry() if registry is None else registry
    return registry.load_entry_points(**options)


_DEFAULT: Registry | None = None


def get_registry(*, reload: bool = False) -> Registry:
    """The process-wide registry with every installed plugin loaded (cached; ``reload=True`` rebuilds it)."""
    global _DEFAULT
    if _DEFAULT is None or reload:
        _DEFAULT = load_plugins()
    return _DEFAULT
