"""``appa plot`` and ``appa assimilate --plot`` (:mod:`appa_workflows.plot`), ``appa evaluate --plot``, and the
observation locations that :meth:`Sampler.posterior` writes for the maps.

One tiny run (a climatological ``GaussianPrior`` on a 6 x 12 grid from the bundled truth slice, 2 members, 4 steps,
6 simulated stations) is shared by the module; every test takes a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import xarray as xr

import appa_core.cli as cli
from appa_core.data import load_truth_slice
from appa_workflows.assimilate import load_config, run
from appa_workflows.plot import PANEL_SIZE, coastlines, plot_posterior, scores_by_lead, truth_of

CONFIG = """
[prior]
kind = "gaussian"
climatology = "demo"
spec = {surface = ["2m_temperature"], atmospheric = ["temperature"], levels = [850]}
spatial_stride = 8
window = 2
samples = 8
rank = 4

[window]
start = "2000-01-30T00:00"
hours = 6

[task]
members = 2
steps = 4
seed = 0

[truth]
path = "demo"

[[observations]]
operator = "station"
name = "synop"
variable = "2m_temperature"
lat = [52.5, 48.9, -33.9, 19.4, 1.3, -1.3]
lon = [13.4, 2.4, 18.4, 260.9, 103.8, 36.8]
error = 1.0
simulate = true

[output]
dir = "OUT"
"""


def _size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of a PNG in pixels."""
    h, w = matplotlib.image.imread(path).shape[:2]
    return w, h


def _expected(panels: int, dpi: int) -> tuple[int, int]:
    return round(PANEL_SIZE[0] * panels * dpi), round(PANEL_SIZE[1] * dpi)


@pytest.fixture(scope="module")
def assimilated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """``appa assimilate CONFIG --plot`` on the tiny problem: ``(output folder, AssimilationResult)``."""
    out = tmp_path_factory.mktemp("plot")
    cfg = out / "run.toml"
    cfg.write_text(CONFIG.replace("OUT", str(out / "run")))
    result = run(load_config(cfg), progress=False, echo=None, plot=True)
    return out / "run", result


def test_posterior_has_observation_locations(assimilated: tuple[Path, object]) -> None:
    """``Sampler.posterior`` writes where each observation is, and its variable's units, for the maps."""
    folder, _ = assimilated
    ds = xr.open_zarr(folder / "posterior.zarr")
    lat, lon = ds["obs_synop_lat"].values, ds["obs_synop_lon"].values
    assert ds.sizes["obs_synop"] == 12 and ds.sizes["time"] == 2  # 6 stations x 2 states (hours = 6)
    np.testing.assert_allclose(lat[:6], [52.5, 48.9, -33.9, 19.4, 1.3, -1.3])
    np.testing.assert_allclose(lon[:6], [13.4, 2.4, 18.4, 260.9, 103.8, 36.8])
    assert ds["obs_synop_time"].dtype.kind == "M"
    assert ds["obs_synop_innovation"].attrs == {"variable": "2m_temperature", "units": "K"}


def test_assimilate_plot_writes_maps(assimilated: tuple[Path, object]) -> None:
    """``--plot``: one map per channel (truth, mean, error, spread: 4 panels) and the departures, at 100 dpi."""
    folder, result = assimilated
    names = sorted(p.name for p in result.plots)  # type: ignore[attr-defined]
    assert names == ["departures_synop.png", "map_2m_temperature.png", "map_temperature850.png"]
    for name in ("map_2m_temperature.png", "map_temperature850.png"):
        assert _size(folder / name) == _expected(4, 100)
    assert _size(folder / "departures_synop.png") == (round(2 * PANEL_SIZE[0] * 100), round(1.5 * PANEL_SIZE[1] * 100))


def test_plot_command(assimilated: tuple[Path, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``appa plot POSTERIOR``: the truth is the one the run's config named ("demo"), PNG sizes follow --dpi."""
    folder, _ = assimilated
    code = cli.main(["plot", str(folder / "posterior.zarr"), "--out", str(tmp_path), "--dpi", "40", "--time", "1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert sorted(Path(line).name for line in out.split()) == [
        "departures_synop.png", "map_2m_temperature.png", "map_temperature850.png",
    ]  # fmt: skip
    assert _size(tmp_path / "map_temperature850.png") == _expected(4, 40)
    code = cli.main(
        ["plot", str(folder / "posterior.zarr"), "--out", str(tmp_path / "one"), "--channels", "temperature@850",
         "--no-departures", "--dpi", "40"]
    )  # fmt: skip
    assert code == 0 and [p.name for p in (tmp_path / "one").iterdir()] == ["map_temperature850.png"]


def test_plot_without_truth_has_two_panels(assimilated: tuple[Path, object], tmp_path: Path) -> None:
    folder, _ = assimilated
    ds = xr.open_zarr(folder / "posterior.zarr")
    paths = plot_posterior(ds, tmp_path, channels=["2m_temperature"], departures=False, dpi=30)
    assert [p.name for p in paths] == ["map_2m_temperature.png"]
    assert _size(paths[0]) == _expected(2, 30)  # posterior mean and spread


def test_coastlines_are_closed_on_the_demo_grid() -> None:
    """The 0.5 contour of the bundled land-sea mask: closed paths, at least the continents, on the globe."""
    paths = coastlines(load_truth_slice()["land_sea_mask"])
    assert len(paths) >= 6
    for p in paths:
        assert p.ndim == 2 and p.shape[1] == 2 and len(p) >= 4
        np.testing.assert_allclose(p[0], p[-1])
        assert p[:, 0].min() > -10 and p[:, 0].max() < 370 and p[:, 1].min() > -95 and p[:, 1].max() < 95
    longest = max(paths, key=len)
    assert np.ptp(longest[:, 0]) > 90  # Eurasia (or Antarctica), not only islands


def test_evaluate_plot(assimilated: tuple[Path, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``appa evaluate POSTERIOR demo --plot PNG``: the score table, and RMSE/spread/CRPS against lead time."""
    folder, _ = assimilated
    png = tmp_path / "lead.png"
    code = cli.main(["evaluate", str(folder / "posterior.zarr"), "demo", "--plot", str(png)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "2m_temperature" in out and png.is_file() and _size(png)[0] > 300
    table = scores_by_lead(xr.open_zarr(folder / "posterior.zarr"), load_truth_slice())
    assert list(table.columns) == ["crps", "rmse", "spread"]
    assert table.loc["2m_temperature"].index.tolist() == [0.0, 6.0]
    assert (table["rmse"] > 0).all()


def test_plot_finds_the_truth_of_the_run(assimilated: tuple[Path, object], tmp_path: Path) -> None:
    """The store records its truth (``appa_truth``: "demo" or an absolute path); a relative config path alone is
    not guessed."""
    folder, _ = assimilated
    assert xr.open_zarr(folder / "posterior.zarr").attrs["appa_truth"] == "demo"
    store = tmp_path / "truth.zarr"
    store.mkdir()
    assert truth_of(xr.Dataset(attrs={"appa_truth": str(store)})) == str(store)
    assert truth_of(xr.Dataset(attrs={"appa_truth": str(tmp_path / "gone.zarr")})) is None
    assert truth_of(xr.Dataset(attrs={"appa_config": json.dumps({"truth": {"path": "demo"}})})) == "demo"
    assert truth_of(xr.Dataset(attrs={"appa_config": json.dumps({"truth": {"path": "rel.zarr"}})})) is None
