"""Every wrong invocation of the workflow commands that a user can make here ends in one line on stderr and exit
status 2, never a traceback; help texts show defaults and no reStructuredText markup.

The cases run in-process through ``appa_core.cli.main`` (the ``appa`` console script); none samples anything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import appa_core.cli as cli

#: ``(case id, argv with {d} for a temporary folder holding a good posterior store "post.zarr" and bad inputs,
#: a fragment of the one-line error)``
CASES = [
    ("unknown command", ["nosuchcommand"], "unknown command 'nosuchcommand'"),
    ("assimilate: no config", ["assimilate"], "required: config"),
    ("assimilate: missing config", ["assimilate", "{d}/missing.toml"], "does not exist"),
    ("assimilate: bad config suffix", ["assimilate", "{d}/config.txt"], "must end in .toml, .yaml or .yml"),
    ("assimilate: invalid TOML", ["assimilate", "{d}/broken.toml"], "is not valid TOML"),
    ("assimilate: unknown key", ["assimilate", "{d}/unknown_key.toml"], "did you mean 'steps'?"),
    ("assimilate: prior path", ["assimilate", "{d}/bad_prior.toml"], "is not a directory"),
    ("assimilate: --members 0", ["assimilate", "{d}/broken.toml", "--members", "0"], "must be a whole number >= 1"),
    ("assimilate: --steps abc", ["assimilate", "{d}/broken.toml", "--steps", "abc"], "invalid value 'abc'"),
    ("assimilate: --seed -1", ["assimilate", "{d}/broken.toml", "--seed", "-1"], "must be a whole number >= 0"),
    ("assimilate: unknown flag", ["assimilate", "{d}/broken.toml", "--plto"], "unrecognized arguments: --plto"),
    ("evaluate: no arguments", ["evaluate"], "required: posterior, truth"),
    ("evaluate: missing posterior", ["evaluate", "{d}/missing.zarr", "demo"], "does not exist"),
    ("evaluate: missing truth", ["evaluate", "{d}/post.zarr", "{d}/missing.zarr"], "truth store"),
    ("evaluate: not a store", ["evaluate", "{d}/config.txt", "demo"], "is not a zarr store"),
    ("evaluate: --out suffix", ["evaluate", "{d}/post.zarr", "demo", "--out", "{d}/t.txt"], "must end in .csv"),
    ("evaluate: --plot suffix", ["evaluate", "{d}/post.zarr", "demo", "--plot", "{d}/t.pdf"], "must end in .png"),
    ("plot: no arguments", ["plot"], "required: posterior"),
    ("plot: missing store", ["plot", "{d}/missing.zarr"], "does not exist"),
    ("plot: missing truth", ["plot", "{d}/post.zarr", "--truth", "{d}/missing.zarr"], "truth store"),
    ("plot: unknown channel", ["plot", "{d}/post.zarr", "--channels", "vorticity"], "--channels has value"),
    ("plot: time outside", ["plot", "{d}/post.zarr", "--time", "2099-01-01"], "not a time of the store"),
    ("plot: bad time", ["plot", "{d}/post.zarr", "--time", "noon"], "give an index or an ISO time"),
    ("plot: index outside", ["plot", "{d}/post.zarr", "--time", "7"], "the store has 2 times"),
    ("plot: --dpi 0", ["plot", "{d}/post.zarr", "--dpi", "0"], "must be a whole number >= 1"),
    ("demo: --members 1", ["demo", "--members", "1"], "need at least 2"),
    ("demo: --tol -1", ["demo", "--tol", "-1"], "must be a number >= 0"),
    ("demo: --sampler", ["demo", "--sampler", "euler"], "invalid choice: 'euler'"),
    ("demo: --hours 5", ["demo", "--hours", "5", "--no-plots"], "must be a multiple of 6"),
    ("demo: --operators", ["demo", "--operators", "stations,lidar", "--no-plots"], "unknown value 'lidar'"),
    ("demo: window too long", ["demo", "--hours", "240", "--no-plots"], "does not fit"),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A posterior store (2 members, 2 times, 2 m temperature on 3 x 4 points) and bad inputs."""
    from appa_core.sampler import save_zarr

    d = tmp_path_factory.mktemp("cli")
    times = np.array(["2000-01-30T00", "2000-01-30T06"], dtype="datetime64[ns]")
    post = xr.Dataset(
        {"2m_temperature": (("member", "time", "latitude", "longitude"), 280 + np.arange(48.0).reshape(2, 2, 3, 4))},
        coords={"time": times, "latitude": [60.0, 0.0, -60.0], "longitude": [0.0, 90.0, 180.0, 270.0]},
    )
    save_zarr(post, d / "post.zarr")
    (d / "config.txt").write_text("not a config\n")
    (d / "broken.toml").write_text("[prior\npath = 'demo'\n")
    (d / "unknown_key.toml").write_text(
        "[prior]\npath = 'demo'\n[window]\nstart = '2000-01-30'\nhours = 6\n[task]\nstep = 4\n"
    )
    (d / "bad_prior.toml").write_text("[prior]\npath = 'no_such_prior'\n[window]\nstart = '2000-01-30'\nhours = 6\n")
    return d


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_wrong_invocation_is_one_line_and_status_2(
    argv: list[str], fragment: str, folder: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(folder)  # nothing is written outside the temporary folder
    code = cli.main([a.format(d=folder) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and fragment in err, err
    assert err.startswith(("appa ", "appa:")), err


@pytest.mark.parametrize("command", ["demo", "assimilate", "evaluate", "plot"])
def test_help_shows_defaults_without_markup(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main([command, "--help"])
    out, _ = capsys.readouterr()
    assert code == 0 and f"usage: appa {command}" in out
    assert "`" not in out and ":func:" not in out and ":class:" not in out
    assert "docs/" not in out  # a wheel install has no docs folder to point to
    if command in ("demo", "plot"):
        assert "(default: " in out
    if command == "demo":
        flat = " ".join(out.split())
        assert "(default: 8)" in flat and "(default: 0.03)" in flat and "(default: appa-demo)" in flat


def test_assimilate_example_is_a_valid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``appa assimilate --example`` (what the help points to) prints a config that validates and builds."""
    from appa_workflows.assimilate import load_config

    assert cli.main(["assimilate", "--example"]) == 0
    text = capsys.readouterr().out
    (tmp_path / "example.toml").write_text(text)
    cfg = load_config(tmp_path / "example.toml")
    assert cfg.prior.path == "demo" and cfg.window.hours == 24 and len(cfg.observations) == 1
