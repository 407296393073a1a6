"""``appa evaluate`` (:mod:`appa_workflows.evaluate`), run through the ``appa`` command line: the command comes from
this plugin (hook ``appa_register_commands``)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import appa_core.cli as cli


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_workflow_commands_are_registered(capsys: pytest.CaptureFixture[str]) -> None:
    from appa_core.plugins import get_registry

    reg = get_registry()
    assert {c.full_name for c in reg.components("command")} >= {
        "workflows:demo",
        "workflows:assimilate",
        "workflows:evaluate",
        "workflows:plot",
    }
    code, out, _ = _run(capsys, "--help")
    assert code == 0
    for name in ("demo", "assimilate", "evaluate", "plot"):
        assert re.search(rf"^\s+{name}\b", out, re.M), name
    assert " ".join(out.split()).count("(plugin workflows)") == 4  # argparse may wrap the help text


def test_evaluate_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "evaluate", "--help")
    assert code == 0 and "usage: appa evaluate" in out and "posterior" in out
    code, _, err = _run(capsys, "evaluate")
    assert code == 2 and "the following arguments are required: posterior, truth" in err


def test_evaluate_refuses_missing_and_incomplete_stores(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Issue: ``appa evaluate`` on a missing path printed a 55-line traceback, and on a store with a missing chunk
    reported a CRPS 30x too large (the chunk read as fill values)."""
    from appa_core.sampler import save_zarr

    code, _, err = _run(capsys, "evaluate", str(tmp_path / "nope.zarr"), str(tmp_path / "t.zarr"))
    assert code == 2 and err.strip().count("\n") == 0 and "posterior store" in err and "does not exist" in err
    ds = (
        xr.Dataset(
            {
                "2m_temperature": (("member", "time", "latitude", "longitude"), np.full((2, 4, 3, 2), 280.0)),
                "obs_st_qc": (("obs_st",), np.zeros(5, dtype=np.int8)),  # all fill value: still written
            }
        )
        .chunk({"time": 2})
        .assign_coords(latitude=[30.0, 0.0, -30.0], longitude=[0.0, 180.0])
    )
    save_zarr(ds, tmp_path / "t.zarr")
    ds[["2m_temperature"]].isel(member=0).to_zarr(tmp_path / "truth.zarr", zarr_format=2)
    code, out, err = _run(capsys, "evaluate", str(tmp_path / "t.zarr"), str(tmp_path / "truth.zarr"))
    assert code == 0 and "2m_temperature" in out, err  # a complete store of ours is accepted
    (tmp_path / "t.zarr" / "2m_temperature" / "0.1.0.0").unlink()
    code, _, err = _run(capsys, "evaluate", str(tmp_path / "t.zarr"), str(tmp_path / "truth.zarr"))
    assert code == 2 and "is incomplete: array '2m_temperature' has 1 of 2 chunks" in err
