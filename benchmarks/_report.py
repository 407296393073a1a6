"""Shared by the benchmark scripts: the machine in words and the update of one section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    """The CPU model from ``/proc/cpuinfo`` (the processor architecture where it cannot be read)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine() -> str:
    """CPU model, core count, Python and torch versions."""
    return f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


def write_section(section: str, path: Path = ROOT / "docs" / "benchmarks.md") -> None:
    """Replace the ``## ...`` section of ``path`` whose heading is ``section``'s first line (or append it)."""
    heading = section.splitlines()[0]
    text = path.read_text()  # read just before writing: other scripts update other sections
    pattern = rf"^{re.escape(heading)}\n.*?(?=\n## |\Z)"
    if re.search(pattern, text, flags=re.S | re.M):
        text = re.sub(pattern, lambda _: section.rstrip() + "\n", text, flags=re.S | re.M)
    else:
        text = text.rstrip() + "\n\n" + section.rstrip() + "\n"
    path.write_text(text)
