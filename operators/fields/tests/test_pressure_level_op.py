"""Physics and validation tests of ``PressureLevelOp``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_op_fields import PressureLevelOp, log_pressure_weights

LEVELS = (50, 250, 500, 700, 850, 1000)
SPEC = StateSpec(surface=("2m_temperature",), atmospheric=("temperature", "u_component_of_wind"), levels=LEVELS)
GRID = Grid.equiangular(7, 12)
WINDOW = np.array(["2020-01-01T00", "2020-01-01T06"], dtype="datetime64[ns]")
D2R = np.pi / 180.0


def _linear_in_logp(a: float, b: float, batch: int = 1) -> torch.Tensor:
    """Temperature a + b ln p on every level (and wind -a - b ln p), uniform horizontally and in time."""
    x = torch.zeros(batch, 2, SPEC.n_channels, *GRID.shape, dtype=torch.float64)
    for lev in LEVELS:
        x[:, :, SPEC.index("temperature", lev)] = a + b * np.log(lev)
        x[:, :, SPEC.index("u_component_of_wind", lev)] = -a - b * np.log(lev)
    return x


def test_log_pressure_weights_bracket_and_clamp() -> None:
    k, w = log_pressure_weights([850, 500, 1000], np.array([700.0, 500.0, 20.0, 1050.0, 925.0]))
    lev = np.array([850, 500, 1000])
    np.testing.assert_allclose((np.log(lev[k]) * w).sum(1)[[0, 1, 4]], np.log([700.0, 500.0, 925.0]), rtol=1e-14)
    np.testing.assert_allclose(w.sum(1), 1.0)
    assert lev[k[2]][np.argmax(w[2])] == 500 and lev[k[3]][np.argmax(w[3])] == 1000  # clamped


def test_exact_for_fields_linear_in_log_pressure_and_clamped_outside() -> None:
    rng = np.random.default_rng(0)
    p = np.concatenate([np.exp(rng.uniform(np.log(50), np.log(1000), 40)), [50.0, 1000.0, 10.0, 1013.25]])
    m = p.size
    variable = np.where(rng.random(m) < 0.5, "temperature", "u_component_of_wind")
    op = PressureLevelOp(
        variable=variable,
        pressure=p,
        lat=rng.uniform(-90, 90, m),
        lon=rng.uniform(-180, 360, m),
        time=WINDOW[0] + (rng.uniform(0, 6, m) * 3600e9).astype("timedelta64[ns]"),
        value=np.zeros(m),
    ).prepare(GRID, SPEC, WINDOW)
    a, b = 150.0, 17.0
    y = op(_linear_in_logp(a, b))[0].numpy()
    sign = np.where(variable == "temperature", 1.0, -1.0)
    expected = sign * (a + b * np.log(np.clip(p, 50, 1000)))
    np.testing.assert_allclose(y, expected, rtol=1e-13)
    assert op.matrix().nnz <= 16 * m


def test_profile_of_an_analytic_field_at_random_points_and_times() -> None:
    """T = (1 + ln p / 10) Y21(lat, lon) + 3 t: exact in ln p and t, second order in the horizontal."""
    lat_g, lon_g = np.meshgrid(GRID.lat, GRID.lon, indexing="ij")
    y21 = lambda la, lo: np.sin(la * D2R) * np.cos(la * D2R) * np.cos(lo * D2R)  # noqa: E731
    x = torch.zeros(1, 2, SPEC.n_channels, *GRID.shape, dtype=torch.float64)
    for t in range(2):
        for lev in LEVELS:
            x[0, t, SPEC.index("temperature", lev)] = torch.as_tensor(
                (1 + np.log(lev) / 10) * y21(lat_g, lon_g) + 3 * t
            )
    rng = np.random.default_rng(1)
    m = 200
    lat, lon, p, hours = (
        rng.uniform(-90, 90, m),
        rng.uniform(-180, 360, m),
        rng.uniform(60, 990, m),
        rng.uniform(0, 6, m),
    )
    op = PressureLevelOp(
        variable="temperature",
        pressure=p,
        lat=lat,
        lon=lon,
        time=WINDOW[0] + (hours * 3600e9).astype("timedelta64[ns]"),
        value=np.zeros(m),
    ).prepare(GRID, SPEC, WINDOW)
    exact = (1 + np.log(p) / 10) * y21(lat, lon) + 3 * hours / 6
    err = np.abs(op(x)[0].numpy() - exact)
    h = 30 * D2R  # grid spacing
    assert err.max() <= (1 + np.log(1000) / 10) * h**2 / 8 * 2.5
    # at grid nodes the horizontal step is exact too
    op_nodes = PressureLevelOp(
        variable="temperature",
        pressure=p[:12],
        lat=lat_g.ravel()[:12],
        lon=lon_g.ravel()[:12],
        time=WINDOW[1],
        value=np.zeros(12),
        method="nearest",
    ).prepare(GRID, SPEC, WINDOW)
    exact_nodes = (1 + np.log(p[:12]) / 10) * y21(lat_g.ravel()[:12], lon_g.ravel()[:12]) + 3
    np.testing.assert_allclose(op_nodes(x)[0].numpy(), exact_nodes, atol=1e-12)


def test_linear_operator_matrix_adjoint_and_batching() -> None:
    rng = np.random.default_rng(2)
    op = PressureLevelOp(
        variable="temperature",
        pressure=rng.uniform(30, 1050, 30),
        lat=rng.uniform(-90, 90, 30),
        lon=rng.uniform(0, 360, 30),
        time="2020-01-01T03",
        value=np.full(30, 250.0),
        station_id="SONDE1",
    ).prepare(GRID, SPEC, WINDOW)
    x = torch.randn(3, 2, SPEC.n_channels, *GRID.shape, dtype=torch.float64)
    A = op.matrix()
    np.testing.assert_allclose(op(x).numpy(), (A @ x.reshape(3, -1).numpy().T).T, atol=1e-12)
    v = torch.randn(3, 30, dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((op(xg) * v).sum(), xg)
    np.testing.assert_allclose(g.reshape(3, -1).numpy(), (A.T @ v.numpy().T).T, atol=1e-12)
    for b in range(3):
        torch.testing.assert_close(op(x)[b : b + 1], op(x[b : b + 1]))
    assert op.metadata()["station_id"].tolist() == ["SONDE1"] * 30
    np.testing.assert_allclose(op.noise.variance().numpy(), 1.0)  # default temperature error 1 K


def _op(**kw: object) -> PressureLevelOp:
    args: dict[str, object] = {
        "variable": "temperature",
        "pressure": [300.0, 700.0],
        "lat": [10.0, 20.0],
        "lon": [0.0, 5.0],
        "time": "2020-01-01T00",
        "value": [230.0, 270.0],
    }
    args.update(kw)
    return PressureLevelOp(**args)  # type: ignore[arg-type]


BAD_CONSTRUCTION = [
    ({"lat": [95.0, 0.0]}, r"PressureLevelOp: field 'lat' has value 95\.0 at index 0"),
    ({"value": [230.0, np.nan]}, r"PressureLevelOp: field 'value' has value nan at index 1"),
    ({"pressure": [300.0, 0.0]}, r"PressureLevelOp: field 'pressure' has value 0\.0 at index 1"),
    ({"pressure": [300.0, 500.0, 700.0]}, r"PressureLevelOp: field 'pressure' has 3 values but field 'value' has 2"),
    ({"value": [], "lat": [], "lon": [], "pressure": []}, r"PressureLevelOp: field 'value' is empty"),
    ({"error": [1.0, -1.0]}, r"PressureLevelOp: field 'error' has value -1\.0 at index 1"),
    ({"method": "spline"}, r"PressureLevelOp: field 'method' has value 'spline'"),
    ({"out_of_range": "extrapolate"}, r"PressureLevelOp: field 'out_of_range' has value 'extrapolate'"),
]


@pytest.mark.parametrize(("kw", "match"), BAD_CONSTRUCTION)
def test_bad_construction_is_refused(kw: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        _op(**kw)


BAD_PREPARE = [
    ({"variable": "2m_temperature"}, r"PressureLevelOp: field 'variable' has value '2m_temperature' .* surface"),
    ({"variable": ["temperature", "ozone"], "error": 1.0}, r"field 'variable' has value 'ozone' at index 1"),
    ({"time": ["2020-01-01T00", "2020-01-01T07"]}, r"PressureLevelOp: field 'time' has value 2020-01-01T07.*index 1"),
    ({"pressure": [30.0, 700.0], "out_of_range": "error"}, r"PressureLevelOp: field 'pressure' has value 30\.0"),
]


@pytest.mark.parametrize(("kw", "match"), BAD_PREPARE)
def test_bad_input_is_refused_at_prepare(kw: dict[str, object], match: str) -> None:
    op = _op(**kw)
    with pytest.raises(ValueError, match=match):
        op.prepare(GRID, SPEC, WINDOW)


def test_example_is_valid_and_prepares() -> None:
    op, grid, spec, times = PressureLevelOp.example()
    op.prepare(grid, spec, times)
    x = torch.full((2, times.size, spec.n_channels, *grid.shape), 250.0, dtype=torch.float64)
    torch.testing.assert_close(op(x), torch.full((2, op.size), 250.0, dtype=torch.float64))


def test_pressure_in_pascal_is_refused() -> None:
    """Issue: ``PressureLevelOp(pressure=[50000])`` (Pa given for hPa) was silently clamped to the deepest level."""
    with pytest.raises(ValueError, match=r"field 'pressure' has value 50000 at index 1, above 1100 hPa; .* in Pa\?"):
        PressureLevelOp(
            variable="temperature", pressure=[500.0, 50000.0], lat=0.0, lon=0.0, time="2020-01-01", value=[250.0, 250.0]
        )
