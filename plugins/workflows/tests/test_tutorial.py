"""``docs/tutorial_stations.md`` runs as written: its code blocks (python, toml, bash) are extracted in order and
run in an empty folder, with fewer members and diffusion steps (:data:`QUICK`, each replacement checked to apply),
so that the tutorial cannot rot.

Conventions of the tutorial: a ``toml`` block whose first line is ``# NAME`` is saved as ``NAME``; every line of a
``bash`` block is one command; ``python`` blocks run in one namespace, in order; a ``text`` block right after the
block that writes ``my_stations.csv`` shows that file's first lines.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

TUTORIAL = Path(__file__).resolve().parents[3] / "docs" / "tutorial_stations.md"
#: Quick settings for CI: ``(language, text in the tutorial, replacement)``.
QUICK = (
    ("toml", "members = 4", "members = 2"),
    ("toml", "steps = 16 ", "steps = 4  "),
    ("python", "steps=16", "steps=4"),
    ("python", "members=4", "members=2"),
)


def blocks(text: str) -> list[tuple[str, str]]:
    """The fenced code blocks of a Markdown text: ``(language, code)`` in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w+)\n(.*?)^```$", text, re.M | re.S)]


def test_tutorial_blocks_follow_the_conventions() -> None:
    found = blocks(TUTORIAL.read_text())
    languages = [lang for lang, _ in found]
    assert languages.count("python") == 2 and languages.count("bash") == 1 and languages.count("toml") == 1
    for lang, old, _ in QUICK:
        assert any(lg == lang and old in code for lg, code in found), f"QUICK replacement no longer applies: {old!r}"


def test_tutorial_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.setdefault("OMP_NUM_THREADS", "1")
    namespace: dict[str, object] = {"__name__": "__tutorial__"}
    found = blocks(TUTORIAL.read_text())
    for index, (lang, code) in enumerate(found):
        for lg, old, new in QUICK:
            if lg == lang:
                code = code.replace(old, new)
        if lang == "python":
            exec(compile(code, f"{TUTORIAL.name} block {index + 1}", "exec"), namespace)
        elif lang == "toml":
            name = code.splitlines()[0].removeprefix("#").strip()
            (tmp_path / name).write_text(code)
        elif lang == "text" and index > 0 and "my_stations.csv" in found[index - 1][1]:
            shown = code.splitlines()
            assert (tmp_path / "my_stations.csv").read_text().splitlines()[: len(shown)] == shown
        elif lang == "bash":
            for line in code.splitlines():
                res = subprocess.run(shlex.split(line), cwd=tmp_path, env=env, capture_output=True, text=True)
                assert res.returncode == 0, f"{line}\n{res.stdout}\n{res.stderr}"
                if "--check" in line:
                    assert "my_stations (250)" in res.stdout
    for name in ("map_2m_temperature.png", "departures_my_stations.png", "scores.csv", "scores_by_lead.png"):
        assert (tmp_path / "my_run" / name).is_file(), name
    assert (tmp_path / "my_maps" / "map_mean_sea_level_pressure.png").is_file()
    assert (tmp_path / "my_run_py" / "map_2m_temperature.png").is_file()
    assert (tmp_path / "my_run_py" / "departures_my_stations.png").is_file()
