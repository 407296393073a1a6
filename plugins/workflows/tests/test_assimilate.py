"""``appa assimilate CONFIG``: config parsing and validation, observation building, end-to-end runs.

End-to-end runs use a tiny climatological ``GaussianPrior`` built from the bundled truth slice (2 m temperature and
temperature at 850 hPa on a 6 x 12 grid), so every run takes a few seconds; one run on the bundled demo prior is
marked ``slow``.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path
from typing import Any, ClassVar

import attrs
import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

from appa_core.data import load_truth_slice
from appa_workflows.assimilate import AssimilateConfig, ConfigError, load_config, main, run

START = "2000-01-30T00:00"
STRIDE = 8  # 48 x 96 -> 6 x 12


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def write_toml(path: Path, cfg: dict[str, Any]) -> Path:
    """A minimal TOML writer for the test configs (tables, arrays of tables, inline tables)."""
    lines: list[str] = []
    for key, value in cfg.items():
        if isinstance(value, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {_toml(v)}" for k, v in value.items()]
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for entry in value:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {_toml(v)}" for k, v in entry.items()]
        else:
            lines.insert(0, f"{key} = {_toml(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_yaml(path: Path, cfg: dict[str, Any]) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def gaussian_prior() -> dict[str, Any]:
    return {
        "kind": "gaussian",
        "climatology": "demo",
        "spec": {"surface": ["2m_temperature"], "atmospheric": ["temperature"], "levels": [850]},
        "spatial_stride": STRIDE,
        "window": 2,
        "samples": 8,
        "rank": 4,
    }


def base_config(out: Path, **sections: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "prior": gaussian_prior(),
        "window": {"start": START, "length": 3},
        "task": {"kind": "reanalysis", "members": 2, "steps": 6, "seed": 0},
        "truth": {"path": "demo"},
        "observations": [],
        "output": {"dir": str(out)},
    }
    cfg.update(sections)
    return cfg


@pytest.fixture(scope="module")
def truth() -> xr.Dataset:
    return load_truth_slice()


def station_csv(path: Path, truth: xr.Dataset, times: list[str], error: float = 0.05) -> tuple[Path, np.ndarray]:
    """Stations on grid points of the strided grid observing the true 2 m temperature; returns (path, values)."""
    lat = truth.latitude.values[::STRIDE][[1, 2, 4]].astype(np.float64)
    lon = truth.longitude.values[::STRIDE][[0, 5, 9]].astype(np.float64)
    rows = []
    for t in times:
        field = truth["2m_temperature"].sel(time=np.datetime64(t, "ns"))
        for i, (la, lo) in enumerate(zip(lat, lon, strict=True)):
            value = float(field.sel(latitude=la, longitude=lo))
            rows.append(
                {
                    "station_id": f"S{i}",
                    "lat": la,
                    "lon": lo,
                    "time": t,
                    "variable": "2m_temperature",
                    "value": value,
                    "error": error,
                }
            )
    df = pd.DataFrame(rows)
    df.to_csv(path, index=False)
    return path, df["value"].to_numpy()


# ============================================================================================ parsing
def test_toml_and_yaml_configs_are_equivalent(tmp_path: Path) -> None:
    cfg = base_config(
        tmp_path / "out",
        task={
            "kind": "forecast",
            "horizon": 12,
            "members": 3,
            "steps": 5,
            "seed": 7,
            "iters": 4,
            "solver": "cg",
            "tol": "none",
        },
        observations=[
            {"reader": "station_csv", "path": "obs.csv", "noise": {"kind": "huber", "std": 1.0, "c": 1.345}},
            {
                "operator": "station",
                "variable": "2m_temperature",
                "lat": [10.0, 20.0],
                "lon": [0.0, 90.0],
                "simulate": True,
            },
        ],
    )
    a = load_config(write_toml(tmp_path / "run.toml", cfg))
    b = load_config(write_yaml(tmp_path / "run.yaml", cfg))
    assert a == b
    assert a.to_dict() == b.to_dict() == json.loads(json.dumps(cfg))
    assert a.window.start == np.datetime64(START, "ns")
    assert a.task.kind == "forecast" and a.task.horizon == 12.0 and a.task.members == 3 and a.task.seed == 7
    assert a.task.sampler == {
        "steps": 5,
        "strategy": "autoregressive",
        "solver": "cg",
        "solver_iters": 4,
        "solver_tol": None,
    }
    assert [o.source for o in a.observations] == ["reader", "operator"]
    assert a.observations[0].noise == {"kind": "huber", "std": 1.0, "c": 1.345}
    assert a.observations[1].simulate and a.observations[1].params["lat"] == [10.0, 20.0]
    assert a.resolve("obs.csv") == tmp_path / "obs.csv"


def test_bare_toml_datetime_and_shorthands(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        'prior = "demo"\ntruth = "demo"\n[window]\nstart = 2000-01-30T06:00:00Z\nhours = 24\n'
        '[task]\nkind = "filtering"\n'
    )
    cfg = load_config(path, {"task.members": 5, "output.dir": "x"})
    assert cfg.prior.kind == "diffusion" and cfg.prior.path == "demo" and cfg.truth == "demo"
    assert cfg.window.start == np.datetime64("2000-01-30T06:00", "ns")
    assert cfg.window.n_states(np.timedelta64(6, "h")) == 5  # both ends included
    assert cfg.task.members == 5 and cfg.output_dir == Path("x")
    assert cfg.to_dict()["window"]["start"] == "2000-01-30T06:00:00+00:00"
    with pytest.raises(ConfigError, match=r"\[window\] key 'hours' has value 24.0; must be a multiple .* \(5 h\)"):
        cfg.window.n_states(np.timedelta64(5, "h"))


BAD_CONFIGS = [
    (lambda c: c["task"].update(kind="nowcast"), r"\[task\] key 'kind' has value 'nowcast'; expected one of"),
    (lambda c: c.update(priors=c.pop("prior")), r"top level\] has unknown key 'priors' \(did you mean 'prior'\?\)"),
    (lambda c: c["task"].update(step=3), r"\[task\] has unknown key 'step' \(did you mean 'steps'\?\)"),
    (lambda c: c["window"].update(hours=12), r"\[window\] needs exactly one of 'length' \(states\) or 'hours'"),
    (lambda c: c["window"].pop("start"), r"\[window\] key 'start' is missing"),
    (lambda c: c["window"].update(start="yesterday"), r"\[window\] key 'start' has value 'yesterday'; must be an ISO"),
    (lambda c: c["window"].update(length=0), r"\[window\] key 'length' has value 0; must be an integer >= 1"),
    (lambda c: c["task"].update(members=0), r"\[task\] key 'members' has value 0; must be an integer >= 1"),
    (lambda c: c["task"].update(kind="forecast"), r"\[task\] key 'horizon' \(hours\) is required"),
    (lambda c: c["task"].update(horizon=6), r"\[task\] key 'horizon' has value 6; only a forecast has a horizon"),
    (lambda c: c["task"].update(tol=-1), r"\[task\] key 'tol' has value -1; must be a positive finite number"),
    (lambda c: c.update(prior={"kind": "spline"}), r"\[prior\] key 'kind' has value 'spline'"),
    (lambda c: c["prior"].update(rank=0), r"\[prior\] key 'rank' has value 0"),
    (lambda c: c["prior"].update(spec={"surface": ["2m_temperature"], "level": [1]}), r"\[prior.spec\] has unknown"),
    (
        lambda c: c["observations"].append({"operator": "station", "reader": "station_csv", "path": "a.csv"}),
        r"\[\[observations\]\] #1 needs exactly one of 'reader', 'operator' or 'observing_system'",
    ),
    (
        lambda c: c["observations"].append({"operator": "station", "noise": {"std": 1.0}}),
        r"\[\[observations\]\] #1 key 'noise' has value \{'std': 1.0\}; must be a table with a 'kind'",
    ),
    (
        lambda c: c["observations"].append({"reader": "station_csv"}),
        r"\[\[observations\]\] #1 key 'path' has value None; a reader needs a file",
    ),
    (
        lambda c: (c.pop("truth"), c["observations"].append({"operator": "station", "simulate": True})),
        r"\[\[observations\]\] #1 simulates observations from the truth, but there is no \[truth\] section",
    ),
    (
        lambda c: (c.pop("truth"), c["task"].update(context=2)),
        r"\[task\] key 'context' has value 2; context states are taken from the truth",
    ),
    (lambda c: c["task"].update(qc={"k": -1}), r"\[task\] key 'qc' .* invalid quality-control settings: QC: field 'k'"),
    (lambda c: c["task"].update(tol="none"), r"\[task\] key 'tol' has value 'none'; fixed iterations need 'iters'"),
    (lambda c: c["task"].update(qc="off"), r"\[task\] key 'qc' has value 'off'; must be false or a table of QC"),
    (lambda c: c["task"].update(warm_start="yes"), r"\[task\] key 'warm_start' has value 'yes'; must be true or false"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD_CONFIGS)
def test_bad_configs_name_section_key_and_value(tmp_path: Path, mutate: Any, message: str) -> None:
    cfg = base_config(tmp_path / "out")
    mutate(cfg)
    with pytest.raises(ConfigError, match=r"^AssimilateConfig: .*" + message):
        AssimilateConfig.from_dict(cfg, tmp_path)


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope.toml' does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"must end in .toml, .yaml or .yml"):
        load_config(tmp_path / "c.json")
    (tmp_path / "c.toml").write_text("[task\nkind = 1")
    with pytest.raises(ConfigError, match=r"is not valid TOML"):
        load_config(tmp_path / "c.toml")


# ============================================================================================ building (--check)
def _check(tmp_path: Path, cfg: dict[str, Any]) -> Any:
    return run(load_config(write_toml(tmp_path / "c.toml", cfg)), check=True, echo=None)


@pytest.mark.parametrize(
    ("observation", "message"),
    [
        ({"operator": "sation", "lat": 1.0}, r"#1 \(operator 'sation'\): Registry: unknown operator 'sation'"),
        ({"reader": "station_csv", "path": "missing.csv"}, r"#1 .* key 'path' has value 'missing.csv': no such file"),
        (
            {"operator": "station", "variable": "2m_temperature", "lat": 95.0, "lon": 0.0, "simulate": True},
            r"#1 \(operator 'station'\): StationOp: field 'lat' has value 95",
        ),
        (
            {
                "operator": "station",
                "variable": "2m_temperature",
                "lat": 0.0,
                "lon": 0.0,
                "value": 280.0,
                "time": "2000-01-31T00:00",
            },
            r"#1 \(operator 'station'\): .*2000-01-31",
        ),
        (
            {"operator": "station", "variable": "mean_sea_level_pressure", "lat": 0.0, "lon": 0.0, "simulate": True},
            r"#1 \(operator 'station'\): StationOp: field 'variable' has value 'mean_sea_level_pressure' .* not model",
        ),
        (
            {
                "operator": "station",
                "variable": "2m_temperature",
                "lat": 0.0,
                "lon": 0.0,
                "simulate": True,
                "noise": {"kind": "laplace", "std": 1.0},
            },
            r"#1 \(operator 'station'\): Registry: unknown noise model 'laplace'",
        ),
        (
            {
                "operator": "station",
                "variable": "2m_temperature",
                "lat": 0.0,
                "lon": 0.0,
                "simulate": True,
                "value": 1.0,
            },
            r"#1 \(operator 'station'\): key 'value' is given, but simulate = true replaces the values",
        ),
        ({"observing_system": "medium"}, r"#1 \(observing_system 'medium'\) key 'observing_system' has value 'medium'"),
    ],
)
def test_observation_errors_name_the_entry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, observation: dict[str, Any], message: str
) -> None:
    _fake_observing(monkeypatch, [])
    with pytest.raises(ConfigError, match=r"^AssimilateConfig: \[\[observations\]\] " + message):
        _check(tmp_path, base_config(tmp_path / "out", observations=[observation]))


def test_reader_rejects_keys_it_does_not_take(tmp_path: Path, truth: xr.Dataset) -> None:
    station_csv(tmp_path / "obs.csv", truth, [START])
    obs = [{"reader": "station_csv", "path": "obs.csv", "variable": "2m_temperature"}]
    with pytest.raises(ConfigError, match=r"key 'variable' has value '2m_temperature', but reader 'station_csv' takes"):
        _check(tmp_path, base_config(tmp_path / "out", observations=obs))


def test_window_outside_truth_and_missing_prior(tmp_path: Path) -> None:
    cfg = base_config(tmp_path / "out", window={"start": "2000-02-01T12:00", "length": 3})
    with pytest.raises(
        ConfigError,
        match=r"\[window\] start 2000-02-01T12:00 needs the states 2000-02-01T12:00.."
        r"2000-02-02T00:00 every 6 h, which lie outside \[truth\] path 'demo' \(it covers "
        r"2000-01-29T00:00..2000-02-01T18:00; first missing state 2000-02-02T00:00\)",
    ):
        _check(tmp_path, cfg)
    cfg = base_config(tmp_path / "out", prior={"path": "no/such/prior"})
    with pytest.raises(ConfigError, match=r"\[prior\] key 'path' has value 'no/such/prior'; .* is not a directory"):
        _check(tmp_path, cfg)
    cfg = base_config(tmp_path / "out", truth={"path": "nowhere.zarr"})
    with pytest.raises(ConfigError, match=r"\[truth\] key 'path' has value 'nowhere.zarr'; no such store"):
        _check(tmp_path, cfg)


def test_forecast_refuses_observations_in_the_horizon(tmp_path: Path) -> None:
    obs = [
        {
            "operator": "station",
            "variable": "2m_temperature",
            "lat": 0.0,
            "lon": 0.0,
            "value": 280.0,
            "time": "2000-01-30T12:00",
        }
    ]
    cfg = base_config(tmp_path / "out", task={"kind": "forecast", "horizon": 12}, observations=obs)
    cfg["window"] = {"start": START, "hours": 6}  # window 00..06 UTC, horizon 12..18 UTC
    with pytest.raises(ConfigError, match=r"#1 \(operator 'station'\): .* not in the horizon"):
        _check(tmp_path, cfg)


def test_synthetic_operators_from_the_truth(tmp_path: Path, truth: xr.Dataset) -> None:
    """Stations replicated over the window, sondes, a masked region, a swath along an orbit: sizes and values."""
    obs = [
        {
            "operator": "station",
            "variable": "2m_temperature",
            "lat": [10.0, -30.0],
            "lon": [5.0, 250.0],
            "simulate": True,
            "error": 1e-6,
        },
        {
            "operator": "pressure_level",
            "variable": "temperature",
            "pressure": [850.0, 925.0],
            "lat": 45.0,
            "lon": 10.0,
            "time": "2000-01-30T06:00",
            "simulate": True,
        },
        {
            "operator": "masked_field",
            "channels": ["temperature@850"],
            "region": {"lat": [-35, 35], "lon": [330, 60]},
            "simulate": True,
            "error": 1e-6,
        },
        {
            "operator": "swath",
            "variables": ["2m_temperature"],
            "orbit": {"ascending_node_local_time": "13:30"},
            "swath": {"n_footprints": 5, "scan_interval_minutes": 30},
            "simulate": True,
        },
    ]
    res = _check(tmp_path, base_config(tmp_path / "out", observations=obs))
    assert res.n_obs == {"StationOp": 6, "PressureLevelOp": 2, "MaskedFieldOp": 36, "SwathOp": 5 * 25}
    station, sonde, field, swath = res.operators
    times = np.array([START, "2000-01-30T06:00", "2000-01-30T12:00"], dtype="datetime64[ns]")
    np.testing.assert_array_equal(station.time, np.repeat(times, 2))
    np.testing.assert_array_equal(station.lat, [10.0, -30.0] * 3)
    # exact values (noise std 1e-6): the operator applied to the truth on the prior's 6 x 12 grid
    sub = truth.isel(latitude=slice(None, None, STRIDE), longitude=slice(None, None, STRIDE)).sel(time=times)
    x = torch.from_numpy(
        np.stack([sub["2m_temperature"].values, sub["temperature"].sel(level=850).values], axis=1)
    ).double()[None]
    np.testing.assert_allclose(station.values.numpy(), station(x)[0].numpy(), atol=1e-4)
    lat_ok = np.abs(sub.latitude.values) <= 35
    lon_ok = (sub.longitude.values >= 330) | (sub.longitude.values <= 60)
    assert lat_ok.sum() * lon_ok.sum() * 3 == 36  # 3 latitudes x 4 longitudes x 3 times
    expect = sub["temperature"].sel(level=850).values[:, lat_ok][:, :, lon_ok].reshape(-1)
    np.testing.assert_allclose(field.values.numpy(), expect, atol=1e-4)
    assert sonde.noise is not None and swath.noise is not None
    assert np.all(np.isfinite(swath.values.numpy()))
    np.testing.assert_allclose(  # noise of the default std (1 K) around H(truth)
        (swath.values - swath(x)[0]).std().item(), 1.0, atol=0.25
    )


@attrs.define
class _FakeSystem:
    """Stands in for ``appa_workflows.observing.ObservingSystem`` presets: records what ``build`` receives."""

    n_stations: int = 0
    calls: ClassVar[list[dict[str, Any]]] = []
    ops: ClassVar[list[Any]] = []

    def build(self, truth: Any, grid: Any, spec: Any, times: Any, seed: int = 0) -> list[Any]:
        _FakeSystem.calls.append({"truth": truth, "grid": grid, "times": times, "seed": seed, "n": self.n_stations})
        return [op.simulate(truth, grid, spec, times) for op in _FakeSystem.ops]


def _fake_observing(monkeypatch: pytest.MonkeyPatch, ops: list[Any]) -> None:
    module = types.ModuleType("appa_workflows.observing")

    class ObservingSystem:
        @staticmethod
        def sparse() -> _FakeSystem:
            return _FakeSystem()

    module.ObservingSystem = ObservingSystem  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "appa_workflows.observing", module)
    _FakeSystem.calls, _FakeSystem.ops = [], ops


def test_observing_system_gets_the_window_truth_and_noise_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from appa_core.obs.errors import Huber
    from appa_op_stations import StationOp

    op = StationOp(variable="2m_temperature", lat=[0.0, 40.0], lon=[0.0, 40.0], time=START, value=[0.0, 0.0])
    _fake_observing(monkeypatch, [op])
    obs = [{"observing_system": "sparse", "n_stations": 2, "noise": {"kind": "huber", "std": 2.0, "c": 1.5}}]
    res = _check(tmp_path, base_config(tmp_path / "out", observations=obs))
    (call,) = _FakeSystem.calls
    assert call["n"] == 2 and tuple(call["truth"].shape) == (3, 2, 6, 12) and call["grid"].shape == (6, 12)
    np.testing.assert_array_equal(call["times"][[0, -1]], np.array([START, "2000-01-30T12:00"], dtype="M8[ns]"))
    (built,) = res.operators
    assert isinstance(built.noise, Huber) and built.noise.c == 1.5
    np.testing.assert_allclose(built.noise.std.numpy(), [2.0, 2.0])

    monkeypatch.setitem(sys.modules, "appa_workflows.observing", None)  # not importable
    with pytest.raises(ConfigError, match=r"#1 \(observing_system 'sparse'\) needs appa_workflows.observing"):
        _check(tmp_path, base_config(tmp_path / "out", observations=obs))


def test_real_observing_system_builds(tmp_path: Path) -> None:
    pytest.importorskip("appa_workflows.observing")
    cfg = base_config(tmp_path / "out", observations=[{"observing_system": "sparse"}])
    cfg["prior"] = {k: v for k, v in gaussian_prior().items() if k != "spec"}  # all demo variables
    cfg["prior"] |= {"spatial_stride": 4, "samples": 3, "rank": 2}
    res = _check(tmp_path, cfg)
    assert sum(res.n_obs.values()) > 0
    cfg["observations"] = [{"observing_system": "sparse", "stations": 7, "swaths": 0, "sondes": 0}]
    res = _check(tmp_path, cfg)
    n_vars = 4  # the demo spec's surface variables: 2 m temperature, 10 m winds, MSLP
    assert sum(res.n_obs.values()) == 7 * n_vars * 3


# ============================================================================================ end-to-end
def test_reanalysis_end_to_end_with_station_csv(
    tmp_path: Path, truth: xr.Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    times = [START, "2000-01-30T06:00", "2000-01-30T12:00"]
    _, y = station_csv(tmp_path / "obs.csv", truth, [*times, "2000-01-31T00:00"])  # the last 3 rows: outside
    cfg = base_config(tmp_path / "out", observations=[{"reader": "station_csv", "path": "obs.csv", "name": "synop"}])
    code = main([str(write_toml(tmp_path / "run.toml", cfg)), "--quiet"])
    assert code == 0
    ds = xr.open_zarr(tmp_path / "out" / "posterior.zarr")
    assert dict(ds["2m_temperature"].sizes) == {"member": 2, "time": 3, "latitude": 6, "longitude": 12}
    # the same run again over its own output: replaced atomically; a foreign directory is refused in one line
    (tmp_path / "foreign" / "posterior.zarr").mkdir(parents=True)
    printed = capsys.readouterr().out
    assert main([str(write_toml(tmp_path / "run2.toml", {**cfg, "output": {"dir": str(tmp_path / "foreign")}}))]) == 2
    assert "is not a store written by appa" in capsys.readouterr().err
    np.testing.assert_array_equal(ds.time.values, np.array(times, dtype="datetime64[ns]"))
    assert ds.attrs["appa_task"] == "reanalysis"
    assert json.loads(ds.attrs["appa_config"]) == json.loads(json.dumps(cfg))
    # 9 observations with 0.05 K noise pull the ensemble mean onto them (the climatological spread is several K)
    assert ds.sizes["obs_synop"] == 9
    np.testing.assert_allclose(ds["obs_synop_value"].values, y[:9])
    innovation = ds["obs_synop_innovation"].values
    assert np.abs(innovation).max() < 0.5
    assert (ds["obs_synop_qc"].values == 0).all()  # quality control ran, every observation passed
    assert "QC synop: 9 of 9 passed" in printed
    scores = pd.read_csv(tmp_path / "out" / "scores.csv", index_col="variable")
    assert list(scores.index) == ["2m_temperature", "temperature@850"]
    assert list(scores.columns) == ["rmse", "crps", "spread", "ssr"]
    assert np.all(np.isfinite(scores.to_numpy())) and np.all(scores["rmse"] > 0)

    # the same run without observations: the prior's ensemble mean misses the stations by far more
    cfg["observations"] = []
    cfg["output"] = {"dir": str(tmp_path / "free")}
    res = run(load_config(write_toml(tmp_path / "free.toml", cfg)), progress=False, echo=None)
    assert res.n_obs == {}
    lat = truth.latitude.values[::STRIDE][[1, 2, 4]]
    lon = truth.longitude.values[::STRIDE][[0, 5, 9]]
    points = {"latitude": xr.DataArray(lat, dims="s"), "longitude": xr.DataArray(lon, dims="s")}
    free = res.dataset["2m_temperature"].mean("member").sel(**points).values.reshape(-1)  # time-major, as the CSV
    assert np.abs(free - y[:9]).max() > 4 * np.abs(innovation).max()


def test_filtering_and_forecast_outputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appa_core import cli

    obs = [
        {
            "operator": "station",
            "variable": "2m_temperature",
            "lat": [10.0, 50.0],
            "lon": [0.0, 120.0],
            "simulate": True,
        }
    ]
    cfg = base_config(tmp_path / "f", task={"kind": "filtering", "members": 2, "steps": 3}, observations=obs)
    code = cli.main(
        [
            "assimilate",
            str(write_toml(tmp_path / "f.toml", cfg)),
            "--quiet",
            "--members",
            "3",
            "--steps",
            "2",
            "--seed",
            "5",
            "--out",
            str(tmp_path / "filt"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "appa assimilate: filtering, 3 states from 2000-01-30T00:00 every 6 h, 3 members, 2 steps" in out
    assert "StationOp: 6 obs" in out and "scores (" in out
    ds = xr.open_zarr(tmp_path / "filt" / "posterior.zarr")
    assert ds.sizes["member"] == 3
    np.testing.assert_array_equal(ds.time.values, np.array(["2000-01-30T12:00"], dtype="datetime64[ns]"))
    echoed = json.loads(ds.attrs["appa_config"])
    assert echoed["task"] == {"kind": "filtering", "members": 3, "steps": 2, "seed": 5}
    assert echoed["output"] == {"dir": str(tmp_path / "filt")}
    scores = pd.read_csv(tmp_path / "filt" / "scores.csv", index_col="variable")
    assert scores.shape == (2, 4)

    cfg = base_config(
        tmp_path / "fc",
        window={"start": START, "hours": 6},
        task={"kind": "forecast", "horizon": 12, "members": 2, "steps": 3, "context": 1},
        observations=obs,
    )
    res = run(load_config(write_toml(tmp_path / "fc.toml", cfg)), progress=False, echo=None)
    ds = xr.open_zarr(res.store)
    np.testing.assert_array_equal(ds.time.values, np.array(["2000-01-30T12:00", "2000-01-30T18:00"], "M8[ns]"))
    np.testing.assert_array_equal(ds.lead_time.values, np.array([6, 12], "m8[h]").astype("m8[ns]"))
    assert ds.sizes["obs_StationOp"] == 4  # 2 stations x the 2 window states, none in the horizon
    assert res.scores is not None and res.scores.shape == (2, 4)


def test_gaussian_prior_from_a_store(tmp_path: Path, truth: xr.Dataset) -> None:
    """``climatology`` / ``[truth]`` as WeatherBench2 stores on disk, relative to the config file."""
    store = tmp_path / "data" / "era.zarr"
    truth[["2m_temperature", "temperature"]].to_zarr(store, mode="w")
    cfg = base_config(tmp_path / "out", truth={"path": "data/era.zarr"})
    cfg["prior"]["climatology"] = "data/era.zarr"
    cfg["prior"]["time"] = ["2000-01-29T00:00", "2000-01-30T18:00"]
    res = run(load_config(write_toml(tmp_path / "c.toml", cfg)), check=True, echo=None)
    assert res.n_obs == {}
    cfg["prior"]["time"] = ["2000-01-29T00:00", "2000-01-29T00:00"]
    with pytest.raises(ConfigError, match=r"\[prior\] key 'climatology' has value 'data/era.zarr'; has 1 time steps"):
        run(load_config(write_toml(tmp_path / "c.toml", cfg)), check=True, echo=None)


@pytest.mark.slow
def test_demo_prior_reanalysis(tmp_path: Path) -> None:
    """The bundled demo prior end to end (2 steps, 2 members, 2 states): the posterior fits the 6 stations' 2 m
    temperatures to about their 1 K error (normalised innovation RMS 1.1 measured), while away from them it is only
    as good as the prior (global 2 m temperature RMSE about 8 K): the observations are assimilated, locally."""
    obs = [
        {
            "operator": "station",
            "name": "st",
            "variable": "2m_temperature",
            "lat": [45.0, -10.0, 60.0, 0.0, -45.0, 30.0],
            "lon": [10.0, 300.0, 100.0, 200.0, 150.0, 250.0],
            "simulate": True,
        }
    ]
    cfg = base_config(tmp_path / "out", prior={"path": "demo"}, observations=obs)
    cfg["window"] = {"start": START, "length": 2}
    cfg["task"] = {"members": 2, "steps": 2}
    res = run(load_config(write_toml(tmp_path / "c.toml", cfg)), progress=False, echo=None)
    assert dict(res.dataset["temperature"].sizes) == {
        "member": 2,
        "time": 2,
        "level": 4,
        "latitude": 48,
        "longitude": 96,
    }
    assert res.scores is not None and res.scores.shape == (24, 4) and np.isfinite(res.scores.to_numpy()).all()
    innovation = res.dataset["obs_st_innovation"].values / res.dataset["obs_st_std"].values  # (y - H(mean)) / std
    assert innovation.size == 12 and float(np.sqrt(np.mean(innovation**2))) < 2.0
    global_rmse = float(res.scores.loc["2m_temperature", "rmse"])
    assert global_rmse > 3.0 and float(np.abs(res.dataset["obs_st_innovation"].values).mean()) < 0.3 * global_rmse


def test_mostly_rejected_observations_stop_the_cli_in_one_line(
    tmp_path: Path, truth: xr.Dataset, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue: a station CSV with 2-m temperature in degrees Celsius ran to completion with exit code 0 and ruined the
    analysis. Now every value is outside its plausible range, and the run stops before sampling: one line, exit 2,
    and no output store."""
    times = [START, "2000-01-30T06:00"]
    path, _ = station_csv(tmp_path / "obs.csv", truth, times)
    df = pd.read_csv(path)
    df["value"] = df["value"] - 273.15  # degrees Celsius
    df.to_csv(path, index=False)
    cfg = base_config(tmp_path / "out", observations=[{"reader": "station_csv", "path": "obs.csv", "name": "synop"}])
    assert main([str(write_toml(tmp_path / "run.toml", cfg)), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert re.search(r"quality control rejected 100% of the 6 observations.*synop", err), err
    assert not (tmp_path / "out" / "posterior.zarr").exists()
