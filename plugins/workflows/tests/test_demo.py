"""``appa demo`` end to end on the bundled prior and truth slice (small settings: 4 members, 8 steps, 6 h)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import xarray as xr

pytest.importorskip("appa_op_stations")


def test_demo_writes_posterior_scores_and_maps(tmp_path: Path) -> None:
    """The README's claim at small settings: the posterior mean beats the unassimilated prior and climatology on
    all 8 headline variables (measured here with seeds 0 and 1, and with stations + sondes only), the ensemble's
    spread/skill is within [0.5, 2], QC passes (nearly) every simulated observation, and every solve is reported."""
    from appa_workflows.demo import main

    out = tmp_path / "demo"
    rc = main(["--out", str(out), "--members", "4", "--steps", "8", "--hours", "6", "--no-progress"])
    assert rc == 0
    post = xr.open_zarr(out / "posterior.zarr")
    assert post.sizes["member"] == 4 and post.sizes["time"] == 2
    assert {"temperature", "2m_temperature", "obs_stations_innovation", "obs_stations_qc"} <= set(post.data_vars)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["observations"]["stations"] == 300 * 4 * 2
    scores = summary["scores"]
    assert len(scores) == 8
    for name, row in scores.items():
        assert row["rmse_posterior"] < row["rmse_prior"], name
        assert row["rmse_posterior"] < row["rmse_climatology"], name
        assert 0.5 < row["ssr_posterior"] < 2.0, (name, row["ssr_posterior"])
    # the observations are simulated from the truth: QC may reject only a handful (measured: 7 of 10,920 radiances)
    rejected = sum(c["total"] - c["pass"] for c in summary["qc"].values())
    assert rejected < 1e-3 * sum(c["total"] for c in summary["qc"].values())
    assert summary["solve"]["calls"] == 8 and summary["solve"]["max_iterations"] <= 4
    assert sorted(p.name for p in out.glob("map_*.png")) == ["map_2m_temperature.png", "map_geopotential500.png",
                                                             "map_temperature850.png"]  # fmt: skip


def test_demo_refuses_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appa_workflows.demo import main

    assert main(["--out", str(tmp_path), "--members", "1"]) == 2
    assert "--members has value 1" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--operators", "stations,gnss"]) == 2
    assert "unknown value 'gnss'" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--hours", "96"]) == 2
    assert "does not fit" in capsys.readouterr().err
