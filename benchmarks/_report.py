"""Shared by the benchmark scripts: the machine in words and the update of one section of docs/benchmarks.md."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """CPU model, core count, Python and torch versions."""
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, torch {torch.__version__}"


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
