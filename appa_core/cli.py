"""The ``appa`` command line.

Subcommands implemented here: ``appa version``, ``appa plugins [--json] [--verbose] [--strict]`` (installed plugins,
their components, failures with their errors, name clashes) and ``appa plugins check NAME`` (operator contract tests
on a plugin's operators, or on one operator).

The others delegate to the module that implements them, imported only when the subcommand runs, and receive every
argument after the subcommand:

=======================  ===================================================================
``appa demo ...``        ``appa_core.demo:main(argv)``
``appa train ...``       ``appa_core.train.cli:main_train(argv)``
``appa prior params``    ``appa_core.nn.presets:main_params(argv)``
``appa assimilate ...``  ``appa_core.assimilate:main(argv)``
``appa evaluate ...``    ``appa_core.metrics:main_evaluate(argv)``
``appa naturerun ...``   the ``main(argv)`` of the registered data source ``naturerun`` (plugin ``appa-naturerun``)
=======================  ===================================================================

To add a subcommand, add an entry to :data:`DELEGATES` pointing to a ``main(argv: list[str] | None) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["DELEGATES", "main"]

#: ``subcommand -> (module, function, help)``; the function takes the remaining arguments and returns an exit code.
DELEGATES: dict[str, tuple[str, str, str]] = {
    "demo": ("appa_core.demo", "main", "run the embedded default: bundled prior, truth slice, synthetic observations"),
    "train": ("appa_core.train.cli", "main_train", "train the autoencoder or the latent denoiser"),
    "assimilate": ("appa_core.assimilate", "main", "assimilate observations described by a CONFIG file"),
    "evaluate": ("appa_core.metrics", "main_evaluate", "score a POSTERIOR zarr store against a TRUTH store"),
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


def _naturerun(argv: list[str]) -> int:
    """``appa naturerun ...``: the registered data source ``naturerun``, else the ``appa_naturerun`` package."""
    from appa_core.plugins import UnknownComponentError, get_registry

    fn = None
    try:
        source = get_registry().data_source("naturerun")
        fn = getattr(source, "main", None)
    except UnknownComponentError:
        pass
    if not callable(fn):
        try:
            fn = importlib.import_module("appa_naturerun").main
        except Exception as exc:  # not installed, or broken
            print(
                "appa naturerun: the nature-run plugin is not available "
                f"({type(exc).__name__}: {exc}); install it with `pip install -e plugins/naturerun`",
                file=sys.stderr,
            )
            return 1
    return _run(fn, argv)


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
        alias_of = {c["name"]: c["alias"] for kind in KINDS for c in report["components"][kind]}
        kind_of = {c.full_name: c.kind for c in reg.components()}
        for p in plugins:
            dist = f"{p.distribution} {p.version or ''}".strip() if p.distribution else f"({p.source})"
            print(f"  {p.name:<12} {dist:<28} {_STATUS[p.status]}")
            for err in p.errors:
                print(f"      error: {err}")
            if p.reason:
                print(f"      reason: {p.reason}")
            for kind, label in KINDS.items():
                names = [n for n in p.components if kind_of.get(n) == kind]
                if names:
                    shown = ", ".join(n if alias_of.get(n) is None else f"{n} ({alias_of[n]})" for n in names)
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
def _parser() -> argparse.ArgumentParser:
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
    sub.add_parser("naturerun", help="generate a nature run with the jcm GCM (plugin appa-naturerun)", add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``appa`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
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
    if command == "naturerun":
        return _naturerun(rest)
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
