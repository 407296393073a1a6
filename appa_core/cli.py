"""The ``appa`` command line.

The core's own subcommands: ``appa version``, ``appa plugins [--json] [--verbose] [--strict]`` (installed plugins,
their components, failures with their errors, name clashes), ``appa plugins check NAME`` (operator contract tests on
a plugin's operators, or on one operator), and two that delegate to the core module implementing them, imported only
when the subcommand runs:

=======================  ===================================================================
``appa train ...``       ``appa_core.train.cli:main_train(argv)``
``appa prior params``    ``appa_core.nn.presets:main_params(argv)``
=======================  ===================================================================

Every other subcommand comes from a plugin, through the hook ``appa_register_commands`` (``register(name, main,
help=...)``, see :mod:`appa_core.plugins.hookspecs`), the way operators do: ``appa --help`` lists the installed ones,
and ``appa NAME ...`` calls the plugin's ``main(argv)`` with every argument after ``NAME``. A name that no installed
plugin registers gives one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DELEGATES", "MOVED_COMMANDS", "main"]

#: The core's delegated subcommands: ``subcommand -> (module, function, help)``; the function takes the remaining
#: arguments and returns an exit code.
DELEGATES: dict[str, tuple[str, str, str]] = {
    "train": ("appa_core.train.cli", "main_train", "train the autoencoder or the latent denoiser"),
}

#: Deprecated, removed with the module shims of ``appa_core._moved``: subcommands that appa-core 0.1 implemented
#: itself and that now come from a plugin (``command -> (distribution, pip argument)``). Used only to word the error
#: when the command is missing, so that an upgrade that drops them says what to install.
MOVED_COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("appa-workflows", "-e plugins/workflows"),
    "assimilate": ("appa-workflows", "-e plugins/workflows"),
    "evaluate": ("appa-workflows", "-e plugins/workflows"),
    "naturerun": ("appa-naturerun", "-e plugins/naturerun"),
}
#: ``appa prior SUBCOMMAND`` delegates.
PRIOR_DELEGATES: dict[str, tuple[str, str, str]] = {
    "params": ("appa_core.nn.presets", "main_params", "print the parameter counts of the model presets"),
}


def _distribution_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _resolve(command: str, module: str, function: str) -> Callable[[list[str]], int | None] | None:
    """Import ``module:function`` for ``appa COMMAND``; print why not and return ``None`` if impossible."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            print(f"appa {command}: not available: module {module} is not installed in this version", file=sys.stderr)
        else:
            print(f"appa {command}: cannot import {module}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    except Exception as exc:
        print(f"appa {command}: cannot import {module}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    fn = getattr(mod, function, None)
    if not callable(fn):
        print(f"appa {command}: not available: {module} has no function {function}()", file=sys.stderr)
        return None
    return fn


def _run(fn: Callable[[list[str]], int | None], argv: list[str]) -> int:
    try:
        code = fn(argv)
    except SystemExit as exc:  # delegated argparse errors and --help
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return int(code or 0)


def _plugin_commands() -> dict[str, tuple[str, str]]:
    """Installed plugin subcommands: ``bare name -> (full name, help)``; ambiguous names are listed by full name."""
    from appa_core.plugins import get_registry

    reg = get_registry()
    aliases = {full: alias for alias, full in reg.aliases("command").items()}
    return {aliases.get(c.full_name, c.full_name): (c.full_name, c.help) for c in reg.components("command")}


def _missing_command(command: str) -> int:
    """One line on stderr for a subcommand that no installed plugin provides; exit status 2."""
    from appa_core.plugins import UnknownComponentError, get_registry

    reg = get_registry()
    try:
        reg.component("command", command)
    except UnknownComponentError as exc:
        if "ambiguous" in str(exc):
            print(f"appa {command}: {exc}; run it by its full name, e.g. appa PLUGIN:{command}", file=sys.stderr)
            return 2
    failed = [p for p in reg.plugins.values() if p.status == "failed"]
    broken = f"; plugins that failed to load: {', '.join(p.name for p in failed)} (see appa plugins)" if failed else ""
    if command in MOVED_COMMANDS:
        dist, pip_arg = MOVED_COMMANDS[command]
        print(
            f"appa: command {command!r} is provided by the plugin distribution {dist}, which is not installed or "
            f"did not load: pip install {dist} (from a clone of appa-core: pip install {pip_arg}){broken}",
            file=sys.stderr,
        )
    else:
        known = ", ".join(sorted({*_CORE_COMMANDS, *_plugin_commands()}))
        print(
            f"appa: unknown command {command!r} (commands: {known}); a plugin may provide it: see appa plugins{broken}",
            file=sys.stderr,
        )
    return 2


# ---------------------------------------------------------------------------------------------- appa version
def _version(_: argparse.Namespace) -> int:
    print(f"appa-core {_distribution_version('appa-core') or 'unknown'}")
    deps = ", ".join(f"{d} {_distribution_version(d) or '-'}" for d in ("torch", "numpy", "xarray", "pluggy"))
    print(f"python {sys.version.split()[0]}, {deps}")
    return 0


# ---------------------------------------------------------------------------------------------- appa plugins
_STATUS = {"ok": "ok", "failed": "FAILED", "disabled": "disabled"}


def _plugins(args: argparse.Namespace) -> int:
    from appa_core.plugins import KINDS, get_registry

    reg = get_registry()
    report = reg.report()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        plugins = list(reg.plugins.values())
        counts = {s: sum(p.status == s for p in plugins) for s in _STATUS}
        print(f"appa plugins: {counts['ok']} ok, {counts['failed']} failed, {counts['disabled']} disabled")
        alias_of = {(kind, c["name"]): c["alias"] for kind in KINDS for c in report["components"][kind]}
        for p in plugins:
            dist = f"{p.distribution} {p.version or ''}".strip() if p.distribution else f"({p.source})"
            print(f"  {p.name:<12} {dist:<28} {_STATUS[p.status]}")
            for err in p.errors:
                print(f"      error: {err}")
            if p.reason:
                print(f"      reason: {p.reason}")
            for kind, label in KINDS.items():
                names = [c.full_name for c in reg.components(kind) if c.plugin == p.name]
                if names:
                    shown = ", ".join(
                        n if alias_of.get((kind, n)) is None else f"{n} ({alias_of[kind, n]})" for n in names
                    )
                    print(f"      {label}s: {shown}")
            if args.verbose and p.traceback:
                print("      " + p.traceback.rstrip().replace("\n", "\n      "))
        if reg.problems:
            print("problems:")
            for problem in reg.problems:
                print(f"  - {problem}")
    failed = any(p.status == "failed" for p in reg.plugins.values()) or bool(reg.problems)
    return 1 if args.strict and failed else 0


def _check(args: argparse.Namespace) -> int:
    """``appa plugins check NAME``: contract tests on a plugin's operators (or on one operator)."""
    from appa_core.plugins import UnknownComponentError, get_registry
    from appa_core.testing import contract_from_example, run_contract

    reg = get_registry()
    name = args.name
    if name in reg.plugins:
        info = reg.plugins[name]
        if info.status != "ok":
            print(f"appa plugins check: plugin {name!r} is {info.status}: {info.error or info.reason}", file=sys.stderr)
            return 1
        operators = [c for c in reg.components("operator") if c.plugin == name]
        if not operators:
            print(f"appa plugins check: plugin {name!r} registers no operator; nothing to check")
            return 0
    else:
        try:
            operators = [reg.component("operator", name)]
        except UnknownComponentError as exc:
            print(f"appa plugins check: {name!r} is neither a plugin nor an operator ({exc})", file=sys.stderr)
            return 1
    out: dict[str, Any] = {}
    bad = False
    for comp in operators:
        try:
            example = comp.example or getattr(comp.load(), "example", None)
        except Exception as exc:
            out[comp.full_name] = {"status": "error", "message": f"{type(exc).__name__}: {exc}", "tests": []}
            bad = True
            continue
        if not callable(example):
            out[comp.full_name] = {"status": "skipped", "message": "no example registered", "tests": []}
            continue
        results = run_contract(contract_from_example(example, comp.full_name))
        failed = [r for r in results if r.status in ("failed", "error")]
        bad |= bool(failed)
        out[comp.full_name] = {
            "status": "failed" if failed else "passed",
            "message": "",
            "tests": [r._asdict() for r in results],
        }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for op_name, res in out.items():
            n_pass = sum(t["status"] == "passed" for t in res["tests"])
            print(f"{op_name}: {res['status']} ({n_pass}/{len(res['tests'])} passed) {res['message']}".rstrip())
            for t in res["tests"]:
                if t["status"] != "passed":
                    print(f"  {t['status']:<8} {t['test']}: {t['message']}")
    return 1 if bad else 0


# ---------------------------------------------------------------------------------------------- parser
def _parser(plugin_commands: dict[str, tuple[str, str]] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appa", description="appa-core: score-based data assimilation of the global atmosphere."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("version", help="print the versions of appa-core and its main dependencies")

    p = sub.add_parser("plugins", help="list installed plugins, their components and load failures")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--verbose", "-v", action="store_true", help="show the tracebacks of failures")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if a plugin failed or names clash")
    psub = p.add_subparsers(dest="plugins_command", metavar="check")
    c = psub.add_parser("check", help="run the operator contract tests on a plugin's operators (or one operator)")
    c.add_argument("name", help="plugin name (e.g. stations) or operator name (e.g. station, stations:station)")
    c.add_argument("--json", dest="check_json", action="store_true", help="machine-readable output")

    for name, (_, _, help_text) in DELEGATES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    prior = sub.add_parser("prior", help="prior utilities (appa prior params)")
    prior_sub = prior.add_subparsers(dest="prior_command", metavar="params")
    for name, (_, _, help_text) in PRIOR_DELEGATES.items():
        prior_sub.add_parser(name, help=help_text, add_help=False)
    for name, (full_name, help_text) in sorted((plugin_commands or {}).items()):
        plugin = full_name.partition(":")[0]
        sub.add_parser(name, help=f"{help_text} (plugin {plugin})".strip(), add_help=False)
    return parser


#: The subcommands appa-core implements itself (plugins cannot register these names).
_CORE_COMMANDS = ("version", "plugins", "prior", *DELEGATES)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``appa`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    if command is not None and command not in _CORE_COMMANDS:
        from appa_core.plugins import UnknownComponentError, get_registry

        try:
            fn = get_registry().command(command)
        except UnknownComponentError:
            return _missing_command(command)
        except Exception as exc:  # a lazy target that fails to import: one line, no traceback
            print(f"appa {command}: {str(exc).splitlines()[0]}", file=sys.stderr)
            return 1
        return _run(fn, argv[argv.index(command) + 1 :])
    # the core's commands; --help and no command list the plugins' commands too
    parser = _parser(_plugin_commands() if command is None else None)
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    command = args.command
    if command in DELEGATES:
        module, function, _ = DELEGATES[command]
        fn = _resolve(command, module, function)
        return 1 if fn is None else _run(fn, rest)
    if command == "prior" and args.prior_command in PRIOR_DELEGATES:
        module, function, _ = PRIOR_DELEGATES[args.prior_command]
        fn = _resolve(f"prior {args.prior_command}", module, function)
        return 1 if fn is None else _run(fn, rest)
    if rest:
        try:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        except SystemExit as exc:
            return int(exc.code or 0)
    if command == "version":
        return _version(args)
    if command == "plugins":
        if args.plugins_command == "check":
            args.json = args.check_json
            return _check(args)
        return _plugins(args)
    try:
        parser.parse_args([command, "--help"] if command == "prior" else ["--help"])
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0  # pragma: no cover - --help always exits


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
