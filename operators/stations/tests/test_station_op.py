"""Physics and validation tests of ``StationOp``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from appa_core.grid import Grid
from appa_core.obs import ObsSet
from appa_core.spec import StateSpec
from appa_op_stations import DEFAULT_ERRORS, R_DRY, G, StationOp

D2R = np.pi / 180.0
SPEC = StateSpec(
    surface=("2m_temperature", "surface_pressure", "mean_sea_level_pressure"),
    atmospheric=("temperature", "u_component_of_wind"),
    levels=(850, 500),
)
WINDOW = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], dtype="datetime64[ns]")


def _y21(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    return np.sin(lat * D2R) * np.cos(lat * D2R) * np.cos(lon * D2R)


def _state_from(grid: Grid, f: Callable[[np.ndarray, np.ndarray], np.ndarray], n_t: int = 3) -> torch.Tensor:
    """A state [1, T, C, H, W] with channel c at time t equal to (c + 1) * f(lat, lon) + 10 t."""
    lat, lon = np.meshgrid(grid.lat, grid.lon, indexing="ij")
    base = f(lat, lon)
    x = np.stack([np.stack([(c + 1) * base + 10.0 * t for c in range(SPEC.n_channels)]) for t in range(n_t)])
    return torch.as_tensor(x[None], dtype=torch.float64)


def _op(**kw: object) -> StationOp:
    args: dict[str, object] = {
        "variable": "2m_temperature",
        "lat": [10.0, -45.0],
        "lon": [20.0, 300.0],
        "time": "2020-01-01T06",
        "value": [280.0, 275.0],
    }
    args.update(kw)
    return StationOp(**args)  # type: ignore[arg-type]


def _check_linear(op: StationOp, x: torch.Tensor) -> None:
    """forward == A vec(x) + b per member; adjoint of A equals the autograd VJP."""
    A = op.matrix()
    y = op(x)
    ref = (A @ x.reshape(x.shape[0], -1).numpy().T).T + op.offset()
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12, atol=1e-9)
    v = torch.randn(x.shape[0], op.size, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((op(xr) * v).sum(), xr)
    np.testing.assert_allclose(g.reshape(x.shape[0], -1).numpy(), (A.T @ v.numpy().T).T, atol=1e-12)


# ----------------------------------------------------------------------------------------------- interpolation


@pytest.mark.parametrize("poles", [True, False])
@pytest.mark.parametrize("where", ["random", "poles", "dateline"])
def test_analytic_field_at_points_to_interpolation_accuracy(poles: bool, where: str) -> None:
    rng = np.random.default_rng(0)
    n = 300
    if where == "random":
        lat, lon = np.rad2deg(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 360, n)
    elif where == "poles":
        lat, lon = rng.choice([-1.0, 1.0], n) * rng.uniform(80, 90, n), rng.uniform(0, 360, n)
    else:  # across the dateline and the 0/360 seam, half given as negative longitudes
        lat, lon = rng.uniform(-80, 80, n), np.concatenate([rng.uniform(178, 182, n // 2), rng.uniform(-2, 2, n // 2)])
    errors = []
    for h in (10.0, 5.0):
        grid = Grid.equiangular(round(180 / h) + poles, round(360 / h), poles=poles)
        x = _state_from(grid, _y21)
        c = SPEC.index("temperature", 500)
        op = StationOp(variable="temperature", level=500, lat=lat, lon=lon, time="2020-01-01T00", value=np.zeros(n))
        op.prepare(grid, SPEC, WINDOW)
        exact = (c + 1) * _y21(lat, lon)
        err = np.abs(op(x)[0].numpy() - exact).max()
        assert err <= (c + 1) * (h * D2R) ** 2 / 8 * 2.5
        errors.append(err)
    assert errors[0] / errors[1] > 2.5  # second order (pre-asymptotic near pole rows; see tests/test_interp.py)


def test_time_interpolation_is_exact_for_fields_linear_in_time() -> None:
    grid = Grid.equiangular(7, 12)
    x = _state_from(grid, _y21)  # channel value = (c+1) f + 10 t, t in steps of 6 h
    rng = np.random.default_rng(1)
    hours = rng.uniform(0, 12, 50)
    times = WINDOW[0] + (hours * 3600e9).astype("timedelta64[ns]")
    lat = grid.lat[rng.integers(0, 7, 50)]
    lon = grid.lon[rng.integers(0, 12, 50)]  # at grid nodes: no horizontal error
    op = StationOp(variable="surface_pressure", lat=lat, lon=lon, time=times, value=np.ones(50)).prepare(
        grid, SPEC, WINDOW
    )
    c = SPEC.index("surface_pressure")
    np.testing.assert_allclose(op(x)[0].numpy(), (c + 1) * _y21(lat, lon) + 10.0 * hours / 6.0, atol=1e-10)


def test_nearest_method_returns_the_nearest_grid_value() -> None:
    grid = Grid.equiangular(7, 12)  # 30 degree spacing
    x = _state_from(grid, _y21)
    op = StationOp(
        variable="2m_temperature",
        lat=[29.0, -61.0],
        lon=[-14.0, 344.0],
        time=WINDOW[0],
        value=[0.0, 0.0],
        method="nearest",
    ).prepare(grid, SPEC, WINDOW)
    np.testing.assert_allclose(op(x)[0].numpy(), _y21(np.array([30.0, -60.0]), np.array([0.0, 330.0])), atol=1e-12)
    assert op.matrix().nnz == 2


def test_mixed_variables_and_levels_pick_their_channels() -> None:
    grid = Grid.equiangular(5, 8)
    x = torch.randn(2, 3, SPEC.n_channels, 5, 8, dtype=torch.float64)
    variable = ["temperature", "u_component_of_wind", "mean_sea_level_pressure", "temperature"]
    level = [850.0, 500.0, np.nan, 500.0]
    op = StationOp(
        variable=variable,
        level=level,
        lat=[45.0, 0.0, -90.0, 90.0],
        lon=[90.0, 0.0, 45.0, 315.0],
        time=["2020-01-01T12"] * 4,
        value=np.zeros(4),
    ).prepare(grid, SPEC, WINDOW)
    y = op(x)
    expected = torch.stack(
        [
            x[:, 2, SPEC.index("temperature", 850), 1, 2],
            x[:, 2, SPEC.index("u_component_of_wind", 500), 2, 0],
            x[:, 2, SPEC.index("mean_sea_level_pressure"), 4, 1],
            x[:, 2, SPEC.index("temperature", 500), 0, 7],
        ],
        1,
    )
    torch.testing.assert_close(y, expected)
    _check_linear(op, x)
    assert op.metadata()["variable"].tolist() == variable


# ----------------------------------------------------------------------------------------------- elevation


def test_lapse_rate_and_hypsometric_corrections() -> None:
    grid = Grid.equiangular(5, 8)
    phi = np.full(grid.shape, 1000.0 * G)  # model surface at 1000 m
    x = torch.zeros(1, 3, SPEC.n_channels, 5, 8, dtype=torch.float64)
    x[:, :, SPEC.index("2m_temperature")] = 280.0
    x[:, :, SPEC.index("surface_pressure")] = 90000.0
    op = StationOp(
        variable=["2m_temperature", "surface_pressure", "2m_temperature", "surface_pressure", "surface_pressure"],
        lat=[12.0, 12.0, 12.0, -3.0, 40.0],
        lon=[33.0, 33.0, 33.0, 100.0, 200.0],
        time="2020-01-01T06",
        value=[285.0, 1e5, 280.0, 1e5, 1e5],
        elevation=[200.0, 200.0, np.nan, 1000.0, 200.0],
        reference_temperature=[288.0, 288.0, 288.0, 288.0, 250.0],
        surface_geopotential=phi,
    )
    with pytest.raises(ValueError, match="StationOp: field 'surface_geopotential'"):
        _op(elevation=[100.0, 100.0]).prepare(grid, SPEC, WINDOW)
    op.prepare(grid, SPEC, WINDOW)
    y = op(x)[0].numpy()
    # T_station = T_model + Gamma (z_model - z_station) = 280 + 0.0065 * 800
    np.testing.assert_allclose(y[0], 285.2, atol=1e-9)
    # p_station = p_model exp(-g (z_s - z_m) / (R_d T)) = 90000 exp(9.80665 * 800 / (287.05 * 288))
    np.testing.assert_allclose(y[1], 90000.0 * np.exp(9.80665 * 800 / (287.05 * 288.0)), rtol=1e-12)
    np.testing.assert_allclose(y[1], 98959.28, atol=0.01)  # ~11 hPa per 100 m
    np.testing.assert_allclose(y[2], 280.0, atol=1e-9)  # NaN elevation: no correction
    np.testing.assert_allclose(y[3], 90000.0, atol=1e-9)  # station at the model height
    np.testing.assert_allclose(y[4], 90000.0 * np.exp(G * 800 / (R_DRY * 250.0)), rtol=1e-12)
    _check_linear(op, torch.randn(2, 3, SPEC.n_channels, 5, 8, dtype=torch.float64) + x)


def test_hypsometric_default_uses_the_standard_atmosphere_layer_mean() -> None:
    import xarray as xr

    grid = Grid.equiangular(5, 8)
    # surface geopotential as a DataArray with ascending latitude: matched to the grid by coordinates
    phi = xr.DataArray(
        np.full((5, 8), 500.0 * G),
        dims=("latitude", "longitude"),
        coords={"latitude": grid.lat[::-1], "longitude": grid.lon},
    )
    x = torch.full((1, 3, SPEC.n_channels, 5, 8), 85000.0, dtype=torch.float64)
    op = StationOp(
        variable="surface_pressure",
        lat=[0.0],
        lon=[0.0],
        time=WINDOW[1],
        value=[9e4],
        elevation=[1500.0],
        surface_geopotential=phi,
    ).prepare(grid, SPEC, WINDOW)
    t_bar = 288.15 - 0.0065 * (1500.0 + 500.0) / 2  # 281.65 K
    np.testing.assert_allclose(op(x)[0].numpy(), 85000.0 * np.exp(-G * 1000.0 / (R_DRY * t_bar)), rtol=1e-12)


# ----------------------------------------------------------------------------------------------- noise, batching


def test_default_noise_per_variable_and_given_errors() -> None:
    op = _op(variable=["2m_temperature", "surface_pressure"], value=[280.0, 1e5])
    np.testing.assert_allclose(
        op.noise.variance().numpy(), [DEFAULT_ERRORS["2m_temperature"] ** 2, DEFAULT_ERRORS["surface_pressure"] ** 2]
    )
    op = _op(error=[0.5, 2.0])
    np.testing.assert_allclose(op.noise.variance().numpy(), [0.25, 4.0])
    with pytest.raises(ValueError, match="StationOp: field 'error' is not given and variable 'land_sea_mask'"):
        _op(variable="land_sea_mask")


def test_batched_members_equal_single_calls_and_obsset_stacks() -> None:
    grid = Grid.equiangular(7, 12, poles=False)
    rng = np.random.default_rng(3)
    op = StationOp(
        variable="temperature",
        level=850,
        lat=rng.uniform(-90, 90, 40),
        lon=rng.uniform(-180, 360, 40),
        time=WINDOW[0] + (rng.uniform(0, 12, 40) * 3600e9).astype("timedelta64[ns]"),
        value=np.zeros(40),
    ).prepare(grid, SPEC, WINDOW)
    x = torch.randn(3, 3, SPEC.n_channels, 7, 12, dtype=torch.float64)
    y = op(x)
    for b in range(3):
        torch.testing.assert_close(y[b : b + 1], op(x[b : b + 1]))
    _check_linear(op, x)
    other = _op().prepare(grid, SPEC, WINDOW)
    obs = ObsSet([op, other])
    torch.testing.assert_close(obs(x), torch.cat([y, other(x)], 1))
    assert obs.matrix().shape == (42, 3 * SPEC.n_channels * 7 * 12)
    # jvp agrees with the linear map
    v = torch.randn_like(x)
    _, jvp = torch.func.jvp(op, (x,), (v,))
    torch.testing.assert_close(jvp, op(v))


# ----------------------------------------------------------------------------------------------- bad input


BAD_CONSTRUCTION = [
    ({"lat": [95.0, 0.0]}, r"StationOp: field 'lat' has value 95\.0 at index 0"),
    ({"lon": [0.0, 400.0]}, r"StationOp: field 'lon' has value 400\.0 at index 1"),
    ({"value": [np.nan, 1.0]}, r"StationOp: field 'value' has value nan at index 0"),
    ({"lat": [1.0, 2.0, 3.0]}, r"StationOp: field 'lat' has 3 values but field 'value' has 2"),
    ({"value": [], "lat": [], "lon": []}, r"StationOp: field 'value' is empty"),
    ({"error": [1.0, 0.0]}, r"StationOp: field 'error' has value 0\.0 at index 1"),
    ({"error": -2.0}, r"StationOp: field 'error' has value -2\.0 at index 0"),
    ({"level": [500.0, -1.0]}, r"StationOp: field 'level' has value -1\.0 at index 1"),
    ({"elevation": [1e5, 0.0]}, r"StationOp: field 'elevation' has value 100000\.0 at index 0"),
    ({"method": "cubic"}, r"StationOp: field 'method' has value 'cubic'"),
    ({"variable": ["2m_temperature", 3]}, r"StationOp: field 'variable' has value 3 at index 1"),
    ({"time": "yesterday"}, r"StationOp: field 'time'"),
]


@pytest.mark.parametrize(("kw", "match"), BAD_CONSTRUCTION)
def test_bad_construction_is_refused(kw: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        _op(**kw)


BAD_PREPARE = [
    (
        {"variable": ["2m_temperature", "ozone"], "error": 1.0},
        r"StationOp: field 'variable' has value 'ozone' at index 1",
    ),
    ({"variable": "temperature", "level": [500.0, 300.0]}, r"StationOp: field 'level' has value 300\.0 at index 1"),
    ({"variable": "temperature"}, r"StationOp: field 'level' has value nan at index 0"),
    ({"level": [None, 500.0]}, r"StationOp: field 'level' has value 500\.0 at index 1 for surface variable"),
    ({"time": ["2020-01-01T06", "2020-01-02T00"]}, r"StationOp: field 'time' has value 2020-01-02T00.* at index 1"),
]


@pytest.mark.parametrize(("kw", "match"), BAD_PREPARE)
def test_bad_input_is_refused_at_prepare(kw: dict[str, object], match: str) -> None:
    op = _op(**kw)
    with pytest.raises(ValueError, match=match):
        op.prepare(Grid.equiangular(5, 8), SPEC, WINDOW)
    assert not op.prepared


def test_surface_geopotential_must_match_the_grid() -> None:
    op = _op(elevation=100.0, surface_geopotential=np.zeros((4, 8)))
    with pytest.raises(ValueError, match=r"StationOp: field 'surface_geopotential' has shape \(4, 8\)"):
        op.prepare(Grid.equiangular(5, 8), SPEC, WINDOW)


def test_calls_before_prepare_and_with_wrong_shapes_raise() -> None:
    op = _op()
    with pytest.raises(RuntimeError, match="StationOp: call prepare"):
        op(torch.zeros(1, 3, SPEC.n_channels, 5, 8))
    op.prepare(Grid.equiangular(5, 8), SPEC, WINDOW)
    with pytest.raises(ValueError, match="StationOp: state must have shape"):
        op(torch.zeros(1, 2, SPEC.n_channels, 5, 8))


def test_example_is_valid_and_prepares() -> None:
    op, grid, spec, times = StationOp.example()
    op.prepare(grid, spec, times)
    x = torch.full((2, times.size, spec.n_channels, *grid.shape), 280.0, dtype=torch.float64)
    assert op(x).shape == (2, op.size) and torch.isfinite(op(x)).all()


def test_default_errors_belong_to_the_family_and_the_old_core_path_warns() -> None:
    """The station family owns its per-variable default errors (issue 11: the core holds no family's table); the 0.1
    names appa_core.noise.DEFAULT_ERRORS and default_errors() without a table warn and give the station table."""
    import appa_core.obs.errors as noise

    assert DEFAULT_ERRORS["2m_temperature"] == 1.0 and DEFAULT_ERRORS["mean_sea_level_pressure"] == 100.0
    assert "DEFAULT_ERRORS" not in noise.__all__
    with pytest.warns(DeprecationWarning, match=r"appa_core.noise.DEFAULT_ERRORS is deprecated .* appa_op_stations"):
        assert noise.DEFAULT_ERRORS is DEFAULT_ERRORS
    with pytest.warns(DeprecationWarning, match=r"default_errors\(\) without 'table' is deprecated"):
        std = noise.default_errors("op", ["2m_temperature", "surface_pressure"], np.array([1, 0, 1]))
    np.testing.assert_array_equal(std, [100.0, 1.0, 100.0])
    custom = noise.default_errors("op", ["2m_temperature"], np.array([0, 0]), {"2m_temperature": 0.3})
    np.testing.assert_array_equal(custom, [0.3, 0.3])
    with pytest.raises(ValueError, match=r"op: field 'error' is not given and variable 'x' has no default error"):
        noise.default_errors("op", ["x"], np.array([0]), {})
