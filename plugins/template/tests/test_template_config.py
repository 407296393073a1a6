"""The template operator in an ``appa assimilate`` config file, by its registry name (``examples/global_mean.toml``):
the operator protocol (``from_config``, ``synthetic_network``) is all a workflow needs from a plugin operator.

Needs the workflows plugin (``appa-workflows``, the ``test`` extra of this distribution); it runs in CI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from appa_core.cli import main as appa
from appa_core.data import load_truth_slice
from appa_core.grid import Grid
from appa_core.state import dataset_to_tensor
from appa_op_template import GlobalMeanOp

CONFIG = Path(__file__).resolve().parents[1] / "examples" / "global_mean.toml"


def _apply(op: GlobalMeanOp, ds: xr.Dataset) -> np.ndarray:
    """The prepared operator applied to a dataset on its grid and window (no noise)."""
    x, _, _ = dataset_to_tensor(ds, op.spec, op.grid)
    return op(x[None].to(torch.float64))[0].numpy()


def test_config_uses_the_template_operator_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appa_workflows.assimilate import load_config, run

    cfg = load_config(CONFIG, {"output.dir": str(tmp_path / "out")})
    res = run(cfg, progress=False, echo=None)
    # one operator from the [[observations]] table, one from the observing system's network; 3 window states each
    assert res.n_obs == {"t2m_mean": 3, "t850_mean": 3}
    assert [type(op) for op in res.operators] == [GlobalMeanOp, GlobalMeanOp]
    t2m, t850 = res.operators
    assert (t2m.variable, t2m.level, t850.variable, t850.level) == ("2m_temperature", None, "temperature", 850)

    # the simulated values are the truth's global means plus noise of the configured size (0.05 K and 0.1 K)
    truth = load_truth_slice().sel(time=t2m.window).isel(latitude=slice(None, None, 8), longitude=slice(None, None, 8))
    exact_t2m, exact_t850 = _apply(t2m, truth), _apply(t850, truth)
    assert np.abs(t2m.value - exact_t2m).max() < 4 * 0.05
    assert np.abs(t850.value - exact_t850).max() < 4 * 0.1

    # the posterior ensemble mean agrees with the observed global means (to 3 observation-error std)
    post = res.dataset[list(t2m.spec.variables)].mean("member")
    assert np.abs(_apply(t2m, post) - t2m.value).max() < 3 * 0.05
    assert np.abs(_apply(t850, post) - t850.value).max() < 3 * 0.1

    # the same file through the command line: exit 0 and the scores written
    code = appa(["assimilate", str(CONFIG), "--out", str(tmp_path / "cli"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "t2m_mean (3)" in out and "t850_mean (3)" in out
    assert (tmp_path / "cli" / "scores.csv").is_file()
    echoed = json.loads(xr.open_zarr(tmp_path / "cli" / "posterior.zarr").attrs["appa_config"])
    assert echoed["observations"][0]["operator"] == "global_mean"


def test_observed_global_mean_moves_the_posterior(tmp_path: Path) -> None:
    """Given values (simulate = false): a global-mean 2 m temperature 1 K above the truth's pulls the posterior mean's
    global mean up, by the Kalman gain (prior variance of the global mean over prior plus observation variance; the
    climatology of a 4-day slice has a global-mean spread comparable to the 0.05 K error, so about half: 0.5-0.6 K
    measured). Without the observation the posterior mean stays within 0.05 K of the truth (first test)."""
    from appa_workflows.assimilate import load_config, run

    truth = load_truth_slice().isel(latitude=slice(None, None, 8), longitude=slice(None, None, 8))
    times = ["2000-01-30T00:00", "2000-01-30T06:00", "2000-01-30T12:00"]
    probe = GlobalMeanOp(variable="2m_temperature", time=times, value=np.zeros(3))
    grid = Grid(lat=truth.latitude.values, lon=truth.longitude.values)
    probe.prepare(grid, load_config(CONFIG).prior.spec, np.asarray(times, dtype="datetime64[ns]"))
    exact = _apply(probe, truth.sel(time=probe.window))
    text = CONFIG.read_text().split("[[observations]]")[0]
    values = ", ".join(f"{v + 1.0:.4f}" for v in exact)
    text += (
        '[[observations]]\noperator = "global_mean"\nname = "warm"\nvariable = "2m_temperature"\n'
        f"time = {json.dumps(times)}\nvalue = [{values}]\nerror = 0.05\n"
        f"[output]\ndir = {json.dumps(str(tmp_path / 'out'))}\n"
    )
    (tmp_path / "warm.toml").write_text(text)
    # quality control off: a 1 K error of the global mean is far outside the climatological background's spread
    res = run(load_config(tmp_path / "warm.toml", {"task.qc": False}), progress=False, echo=None)
    assert res.n_obs == {"warm": 3}
    shift = _apply(probe, res.dataset[list(probe.spec.variables)].mean("member")) - exact
    assert np.all((shift > 0.3) & (shift < 1.05)), shift
