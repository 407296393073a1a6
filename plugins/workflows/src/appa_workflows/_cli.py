"""Shared pieces of the workflow commands' argument parsing: a help formatter that shows defaults, and argument
types whose errors are one line (argparse prints them as ``usage`` + ``error: ...`` and exits with status 2)."""

from __future__ import annotations

import argparse
import math
from typing import NoReturn

__all__ = ["DefaultsFormatter", "Parser", "nonnegative_float", "nonnegative_int", "positive_float", "positive_int"]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line on stderr (``PROG: error: ... (see PROG --help)``) and
    exit status 2, with :class:`DefaultsFormatter` help."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``ArgumentDefaultsHelpFormatter`` that leaves out the uninformative defaults (``None``, ``False``) and keeps
    the description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS:
            return action.help
        if action.help and "%(default)" in action.help:
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = text.split("\n\n")
        return "\n\n".join(super(DefaultsFormatter, self)._fill_text(p, width, indent) for p in paragraphs)


def _number(text: str, kind: type, minimum: float, strict: bool) -> float:
    what = "a whole number" if kind is int else "a number"
    sign = ">" if strict else ">="
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be {what} {sign} {minimum:g}") from None
    if (value <= minimum if strict else value < minimum) or (kind is float and not math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be {what} {sign} {minimum:g}")
    return value


def positive_int(text: str) -> int:
    """An ``int`` >= 1 (argparse ``type=``)."""
    return int(_number(text, int, 1, strict=False))


def nonnegative_int(text: str) -> int:
    """An ``int`` >= 0 (argparse ``type=``)."""
    return int(_number(text, int, 0, strict=False))


def nonnegative_float(text: str) -> float:
    """A finite ``float`` >= 0 (argparse ``type=``)."""
    return float(_number(text, float, 0, strict=False))


def positive_float(text: str) -> float:
    """A finite ``float`` > 0 (argparse ``type=``)."""
    return float(_number(text, float, 0, strict=True))
