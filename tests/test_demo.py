"""``appa demo`` end to end on the bundled prior and truth slice (tiny settings: 2 members, 2 steps, 6 h)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xarray as xr

pytest.importorskip("appa_op_stations")


def test_demo_writes_posterior_scores_and_maps(tmp_path: Path) -> None:
    from appa_core.demo import main

    out = tmp_path / "demo"
    rc = main(
        ["--out", str(out), "--members", "2", "--steps", "2", "--hours", "6", "--operators", "stations,sondes",
         "--no-progress"]
    )  # fmt: skip
    assert rc == 0
    post = xr.open_zarr(out / "posterior.zarr")
    assert post.sizes["member"] == 2 and post.sizes["time"] == 2
    assert {"temperature", "2m_temperature", "obs_stations_innovation"} <= set(post.data_vars)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["observations"]["stations"] == 300 * 4 * 2
    scores = summary["scores"]
    assert "T850 [K]" in scores and scores["T850 [K]"]["rmse_posterior"] > 0
    assert 0 < scores["T850 [K]"]["ssr_posterior"] < 10
    assert sorted(p.name for p in out.glob("map_*.png")) == ["map_2m_temperature.png", "map_geopotential500.png",
                                                             "map_temperature850.png"]  # fmt: skip


def test_demo_refuses_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appa_core.demo import main

    assert main(["--out", str(tmp_path), "--members", "1"]) == 2
    assert "--members has value 1" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--operators", "stations,gnss"]) == 2
    assert "unknown value 'gnss'" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--hours", "96"]) == 2
    assert "does not fit" in capsys.readouterr().err
