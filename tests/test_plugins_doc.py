"""The operator-author kit of ``appa_core.obs`` as ``docs/plugins.md`` documents it.

* the worked nonlinear operator (10-m wind speed, Student-t errors) is extracted from ``docs/plugins.md`` and run:
  the contract suite, closed-form values, gradients against finite differences;
* value-dependent default noise follows ``with_values()`` / ``simulate()`` (issue 11: the copies kept the
  placeholder's noise); explicit noise is kept;
* the attrs-slots trap gives an error that names the attribute and the fix;
* ``PointOperator`` subclassed by a third-party family, and ``PointStencil.gather`` equal to its matrix;
* ``subset(t0, t1)`` / ``select(rows)`` and ``NoiseModel.subset``.
"""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pytest
import torch

from appa_core.grid import Grid
from appa_core.obs import ObsOperator, PointOperator, PointStencil, point_stencil
from appa_core.obs.errors import BlockDiagonal, CorrelatedGaussian, DiagonalGaussian, StudentT
from appa_core.spec import StateSpec
from appa_core.testing import OperatorContract, make_state

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
MARKER = "# docs/plugins.md: wind_speed.py"


def _doc_module() -> types.ModuleType:
    """The wind-speed example block of docs/plugins.md, executed as a module."""
    text = DOC.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if b.startswith(MARKER)]
    assert len(found) == 1, f"docs/plugins.md must hold exactly one block starting with {MARKER!r}"
    module = types.ModuleType("plugins_doc_wind_speed")
    exec(compile(found[0], str(DOC), "exec"), module.__dict__)  # our own documentation
    return module


DOC_MODULE = _doc_module()
WindSpeedOp: Any = DOC_MODULE.WindSpeedOp


class TestDocWindSpeed(OperatorContract):
    """The contract suite on the documented operator (values, batching, gradient and jvp vs finite differences)."""

    def make_setup(self) -> tuple[Grid, StateSpec, np.ndarray]:
        _, grid, spec, times = WindSpeedOp.example()
        return grid, spec, times

    def make_operator(self) -> ObsOperator:
        return WindSpeedOp.example()[0]

    def bad_inputs(self) -> list[tuple[Any, str]]:
        _, grid, _, times = WindSpeedOp.example()
        no_wind = StateSpec(surface=("2m_temperature",))
        return [
            (
                lambda: WindSpeedOp(lat=[95.0], lon=[0.0], time="2020-01-01T03", value=[1.0]),
                r"field 'lat' has value 95",
            ),
            (lambda: WindSpeedOp(lat=[0.0], lon=[0.0], time="2020-01-01T03", value=[np.nan]), r"field 'value'"),
            (
                lambda: WindSpeedOp(lat=[0.0], lon=[0.0], time="2020-01-01T03", value=[1.0]).prepare(
                    grid, no_wind, times
                ),
                r"WindSpeedOp: .*10m_u_component_of_wind",
            ),
        ]


def _layout() -> tuple[Grid, StateSpec, np.ndarray]:
    _, grid, spec, times = WindSpeedOp.example()
    return grid, spec, times


def test_doc_wind_speed_closed_form() -> None:
    """Uniform winds u = 3, v = 4 at every point and time: the speed is 5 m/s (up to the 1e-6 calm smoothing)."""
    op, grid, spec, times = WindSpeedOp.example()
    op.prepare(grid, spec, times)
    x = torch.zeros(2, times.size, spec.n_channels, *grid.shape, dtype=torch.float64)
    x[:, :, spec.index("10m_u_component_of_wind")] = 3.0
    x[:, :, spec.index("10m_v_component_of_wind")] = -4.0
    assert torch.allclose(op(x), torch.full((2, op.size), 5.0, dtype=torch.float64), atol=1e-6)


def test_doc_wind_speed_gradient_matches_finite_differences() -> None:
    """d speed / d x along a random direction, autograd vs a central difference (float64, tiny grid)."""
    op, grid, spec, times = WindSpeedOp.example()
    op.prepare(grid, spec, times)
    gen = torch.Generator().manual_seed(3)
    x = make_state(grid, spec, times, seed=3)
    d = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    w = torch.randn(1, op.size, generator=gen, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((op(xr) * w).sum(), xr)
    h = 1e-5
    fd = ((op(x + h * d) - op(x - h * d)) * w).sum() / (2 * h)
    assert (g * d).sum().item() == pytest.approx(fd.item(), rel=1e-7)


def test_value_dependent_noise_follows_with_values_and_simulate() -> None:
    """Before the fix, a copy kept the placeholder's noise: std 1.0 for values 0 instead of 1 + 0.1 * value."""
    op, grid, spec, times = WindSpeedOp.example()
    placeholder = op.with_values(np.zeros(op.size))
    assert torch.allclose(placeholder.noise.std, torch.full((op.size,), 1.0, dtype=torch.float64))
    copy = placeholder.with_values([10.0, 20.0, 30.0])
    assert isinstance(copy.noise, StudentT)
    assert copy.noise.std.tolist() == pytest.approx([2.0, 3.0, 4.0])

    # simulate(): errors drawn at the exact values, the result carries the noise of its own values
    x = torch.zeros(1, times.size, spec.n_channels, *grid.shape, dtype=torch.float64)
    x[:, :, spec.index("10m_u_component_of_wind")] = 30.0
    sim = placeholder.simulate(x[0], grid, spec, times, generator=torch.Generator().manual_seed(0))
    assert sim.noise.std.numpy() == pytest.approx(1.0 + 0.1 * np.abs(sim.value))
    assert np.all(sim.noise.std.numpy() > 2.0)  # not the placeholder's 1.0
    exact = placeholder.simulate(x[0], grid, spec, times, noise=False)
    assert exact.value == pytest.approx(np.full(op.size, 30.0), abs=1e-6)
    # the errors' spread follows the default noise at the exact values (scale 4 at 30 m/s, not 1)
    draws = np.stack(
        [
            placeholder.simulate(x[0], grid, spec, times, generator=torch.Generator().manual_seed(s)).value
            for s in range(200)
        ]
    )
    iqr = np.subtract(*np.percentile(draws - 30.0, [75, 25]))
    t4_iqr = 2 * 0.7407 * 4.0  # interquartile range of a Student-t with 4 dof and scale 4
    assert iqr == pytest.approx(t4_iqr, rel=0.25)


def test_explicit_noise_is_kept_by_with_values_and_simulate() -> None:
    op, grid, spec, times = WindSpeedOp.example()
    fixed = WindSpeedOp(lat=op.lat, lon=op.lon, time=op.time, value=op.value, noise=DiagonalGaussian(0.7))
    copy = fixed.with_values([10.0, 20.0, 30.0])
    assert isinstance(copy.noise, DiagonalGaussian)
    assert copy.noise.std.tolist() == pytest.approx([0.7] * 3)
    x = make_state(grid, spec, times, seed=1)[0]
    assert fixed.simulate(x, grid, spec, times).noise.std.tolist() == pytest.approx([0.7] * 3)


def test_undeclared_prepare_cache_gives_a_clear_error() -> None:
    """The attrs-slots trap: assigning an undeclared cache in _prepare names the attribute and the fix."""

    @attrs.define(kw_only=True, eq=False)
    class Careless(WindSpeedOp):  # type: ignore[misc, valid-type]
        def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
            super()._prepare(grid, spec, times)
            self._weights = np.ones(self.size)

    op, grid, spec, times = WindSpeedOp.example()
    careless = Careless(lat=op.lat, lon=op.lon, time=op.time, value=op.value)
    with pytest.raises(AttributeError, match=r"_prepare set the attribute '_weights'.*attrs.field\(default=None"):
        careless.prepare(grid, spec, times)

    @attrs.define(kw_only=True, eq=False)
    class Careful(WindSpeedOp):  # type: ignore[misc, valid-type]
        _weights: np.ndarray | None = attrs.field(default=None, init=False, repr=False)

        def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
            super()._prepare(grid, spec, times)
            self._weights = np.ones(self.size)

    assert Careful(lat=op.lat, lon=op.lon, time=op.time, value=op.value).prepare(grid, spec, times).prepared

    @attrs.define(kw_only=True, eq=False)
    class Buggy(WindSpeedOp):  # type: ignore[misc, valid-type]
        def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
            raise AttributeError("something else entirely")

    with pytest.raises(AttributeError, match=r"^something else entirely$"):  # other errors pass through unchanged
        Buggy(lat=op.lat, lon=op.lon, time=op.time, value=op.value).prepare(grid, spec, times)


# ---------------------------------------------------------------------------------------------- PointOperator
@attrs.define(kw_only=True, eq=False)
class ColumnMeanOp(PointOperator):
    """A third-party linear point family: the mean of ``variable`` over all model levels, at points."""

    def _channel_stencil(self, spec: StateSpec) -> tuple[np.ndarray, np.ndarray]:
        channels = [spec.index(str(self.variable[0]), lev, owner=str(self.name)) for lev in spec.levels]
        k = len(channels)
        return np.tile(channels, (self.size, 1)), np.full((self.size, k), 1.0 / k)


SPEC3 = StateSpec(surface=("2m_temperature",), atmospheric=("temperature",), levels=(250, 500, 850))
GRID3 = Grid.equiangular(7, 12, poles=False)
WINDOW3 = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], dtype="datetime64[ns]")


class TestColumnMeanContract(OperatorContract):
    def make_setup(self) -> tuple[Grid, StateSpec, np.ndarray]:
        return GRID3, SPEC3, WINDOW3

    def make_operator(self) -> ObsOperator:
        return ColumnMeanOp(
            variable="temperature",
            lat=[10.0, -80.0, 89.0],
            lon=[0.0, 200.0, -179.0],
            time=["2020-01-01T01", "2020-01-01T06", "2020-01-01T11"],
            value=[250.0, 240.0, 230.0],
            error=1.0,
        )

    def bad_inputs(self) -> list[tuple[Any, str]]:
        def op(**kw: Any) -> ColumnMeanOp:
            base: dict[str, Any] = dict(
                variable="temperature", lat=0.0, lon=0.0, time="2020-01-01T01", value=[1.0], error=1.0
            )
            return ColumnMeanOp(**{**base, **kw})

        return [
            (lambda: op(lat=[95.0]), r"ColumnMeanOp: field 'lat' has value 95.0 at index 0 outside \[-90, 90\]"),
            (lambda: op(value=[1.0, 2.0], lat=[0.0, 1.0, 2.0]), r"field 'lat' has 3 values"),
            (lambda: op(method="cubic"), r"field 'method' has value 'cubic'"),
            (lambda: op(error=-1.0), r"field 'error' has value -1.0"),
            (lambda: op(error=None), r"field 'error' is None"),
            (lambda: op(time="2021-01-01").prepare(GRID3, SPEC3, WINDOW3), r"outside the window"),
            (lambda: op(variable="ozone").prepare(GRID3, SPEC3, WINDOW3), r"ozone"),
        ]


def test_point_operator_closed_form_and_shared_matrix() -> None:
    """Column mean of a field linear in level index and time: exact; with_values shares the matrix."""
    op = TestColumnMeanContract().make_operator().prepare(GRID3, SPEC3, WINDOW3)
    x = torch.zeros(1, 3, SPEC3.n_channels, *GRID3.shape, dtype=torch.float64)
    for k, lev in enumerate(SPEC3.levels):
        for t in range(3):
            x[0, t, SPEC3.index("temperature", lev)] = 200.0 + 10.0 * k + 6.0 * t
    hours = np.array([1.0, 6.0, 11.0])
    expected = 210.0 + hours  # mean over k of 10 k = 10, plus 6 per 6 h
    assert op(x)[0].numpy() == pytest.approx(expected, abs=1e-9)
    copy = op.with_values(expected)
    assert copy.prepared and copy.matrix() is op.matrix()
    assert copy(x)[0].numpy() == pytest.approx(expected, abs=1e-9)


def test_point_stencil_gather_equals_its_matrix() -> None:
    gen = np.random.default_rng(0)
    m = 50
    lat, lon = gen.uniform(-90, 90, m), gen.uniform(-180, 360, m)
    times = WINDOW3[0] + (gen.uniform(0, 12, m) * 3600e9).astype("timedelta64[ns]")
    stencil = point_stencil("test", GRID3, WINDOW3, lat, lon, times)
    assert isinstance(stencil, PointStencil)
    channel = gen.integers(0, SPEC3.n_channels, m)
    x = torch.randn(2, 3, SPEC3.n_channels, *GRID3.shape, dtype=torch.float64)
    a = stencil.matrix(SPEC3.n_channels, (channel[:, None], np.ones((m, 1))))
    want = torch.as_tensor((a @ x.reshape(2, -1).numpy().T).T)
    assert torch.allclose(stencil.gather(x, channel), want, atol=1e-12)


# ---------------------------------------------------------------------------------------------- subset / select
def test_subset_by_time_matches_the_full_operator_on_a_sub_window() -> None:
    """A PointOperator's observations of [t1, t2], prepared on those two states only, give the same values."""
    op = TestColumnMeanContract().make_operator()
    full = op.prepare(GRID3, SPEC3, WINDOW3)
    sub = op.subset(WINDOW3[1], WINDOW3[2])
    assert sub is not None and not sub.prepared
    np.testing.assert_array_equal(sub.time, op.time[1:])
    sub.prepare(GRID3, SPEC3, WINDOW3[1:])
    x = make_state(GRID3, SPEC3, WINDOW3, seed=5)
    assert torch.allclose(sub(x[:, 1:]), full(x)[:, 1:], rtol=1e-14)
    assert op.subset("2021-01-01", "2021-01-02") is None
    with pytest.raises(ValueError, match=r"select\(\) rows must be increasing"):
        op.select([2, 0])


def test_subset_noise_default_recomputed_explicit_restricted() -> None:
    op = WindSpeedOp.example()[0]  # value-dependent default noise
    sub = op.select([0, 2])
    assert sub.noise.std.tolist() == pytest.approx([1.0 + 0.1 * op.value[0], 1.0 + 0.1 * op.value[2]])
    cov = torch.tensor([[1.0, 0.3, 0.1], [0.3, 2.0, 0.2], [0.1, 0.2, 3.0]], dtype=torch.float64)
    for noise in (
        CorrelatedGaussian(cov=cov),
        CorrelatedGaussian(factor=cov[:, :2], diag=torch.tensor([0.5, 0.6, 0.7], dtype=torch.float64)),
        StudentT(torch.tensor([1.0, 2.0, 3.0]), 4.0),
        DiagonalGaussian(0.7).expand(3),
    ):
        fixed = WindSpeedOp(lat=op.lat, lon=op.lon, time=op.time, value=op.value, noise=noise)
        picked = fixed.select(np.array([True, False, True]))
        assert type(picked.noise) is type(noise)
        assert torch.allclose(picked.noise.dense_cov(), noise.dense_cov()[[0, 2]][:, [0, 2]], rtol=1e-14)
    block = BlockDiagonal([DiagonalGaussian(torch.tensor([1.0, 2.0])), CorrelatedGaussian(cov=cov)])
    picked = block.subset([1, 2, 4])
    assert torch.allclose(picked.dense_cov(), block.dense_cov()[[1, 2, 4]][:, [1, 2, 4]])
    assert isinstance(block.subset([0, 1]), DiagonalGaussian)  # a block left whole, the other dropped
