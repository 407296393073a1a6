"""Tests of the observation API (``appa_core.obs``): the operator base classes, ``ObsSet``, the validation helpers,
and the operator contract tests of ``appa_core.testing`` -- which must pass on correct operators and FAIL on broken
ones (wrong adjoint, wrong gradient, wrong matrix, batch mixing, unchecked input)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from torch import Tensor

from appa_core.grid import Grid
from appa_core.obs import ObsOperator, ObsSet, SparseLinearOperator, time_interpolation
from appa_core.obs import validate as V
from appa_core.obs.errors import BlockDiagonal, CorrelatedGaussian, DiagonalGaussian, Huber, NoiseModel
from appa_core.obs.interp import nearest_weights
from appa_core.spec import StateSpec
from appa_core.testing import OperatorContract, contract_from_example, make_direction, make_state, run_contract

SPEC = StateSpec(
    surface=("2m_temperature", "10m_u_component_of_wind", "10m_v_component_of_wind"),
    atmospheric=("temperature", "specific_humidity"),
    levels=(500, 850),
)
GRID = Grid.equiangular(5, 8)
WINDOW = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], dtype="datetime64[ns]")


# ---------------------------------------------------------------------------------------------- test operators
def _points(
    owner: str, lat: np.ndarray, lon: np.ndarray, time: np.ndarray, value: np.ndarray, error: np.ndarray
) -> None:
    """The constructor checks shared by the two test operators (the bad inputs of issue 2, item 3)."""
    V.check_nonempty(owner, "value", value)
    V.check_same_length(owner, value=value, lat=lat, lon=lon, time=time)
    V.check_finite(owner, "value", value)
    V.check_lat(owner, lat)
    V.check_lon(owner, lon)
    V.check_positive(owner, "error", error)


def _floats(owner: str, field: str) -> Callable[[object], np.ndarray]:
    return lambda v: np.atleast_1d(V.to_float_array(owner, field, v, ndim=None))


@attrs.define(kw_only=True, eq=False)
class PointPicker(SparseLinearOperator):
    """Nearest grid point of one channel, linear in time, plus a constant ``bias``: an affine operator."""

    variable: str
    level: float | None = None
    lat: np.ndarray = attrs.field(converter=_floats("PointPicker", "lat"))
    lon: np.ndarray = attrs.field(converter=_floats("PointPicker", "lon"))
    time: np.ndarray = attrs.field(converter=lambda v: V.to_datetime64("PointPicker", "time", v))
    value: np.ndarray = attrs.field(converter=_floats("PointPicker", "value"))
    error: np.ndarray = attrs.field(default=1.0, converter=lambda v: V.to_float_array("PointPicker", "error", v, None))
    bias: float = 0.0

    def validate(self) -> None:
        _points(str(self.name), self.lat, self.lon, self.time, self.value, self.error)

    def default_noise(self) -> NoiseModel:
        return DiagonalGaussian(self.error)

    @property
    def size(self) -> int:
        return self.value.size

    @property
    def values(self) -> Tensor:
        return torch.as_tensor(self.value, dtype=torch.float64)

    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
        c = spec.index(self.variable, self.level, owner=str(self.name))
        i0, i1, w1 = time_interpolation(str(self.name), self.time, times)
        idx, w = nearest_weights(grid, self.lat, self.lon)
        cell = idx[np.arange(self.size), w.argmax(1)]
        t, ch, hw = len(times), spec.n_channels, grid.nlat * grid.nlon
        rows = np.repeat(np.arange(self.size), 2)
        cols = np.stack([(i0 * ch + c) * hw + cell, (i1 * ch + c) * hw + cell], 1).reshape(-1)
        data = np.stack([1 - w1, w1], 1).reshape(-1)
        A = sp.csr_array((data, (rows, cols)), shape=(self.size, t * ch * hw))
        self._set_matrix(A, b=np.full(self.size, self.bias) if self.bias else None)

    def metadata(self) -> dict[str, np.ndarray]:
        return {"lat": self.lat, "lon": self.lon, "time": self.time}


@attrs.define(kw_only=True, eq=False)
class WindSpeed(ObsOperator):
    """10 m wind speed sqrt(u^2 + v^2) at the nearest grid point and the nearest window time: nonlinear."""

    lat: np.ndarray = attrs.field(converter=_floats("WindSpeed", "lat"))
    lon: np.ndarray = attrs.field(converter=_floats("WindSpeed", "lon"))
    time: np.ndarray = attrs.field(converter=lambda v: V.to_datetime64("WindSpeed", "time", v))
    value: np.ndarray = attrs.field(converter=_floats("WindSpeed", "value"))
    error: np.ndarray = attrs.field(default=1.5, converter=lambda v: V.to_float_array("WindSpeed", "error", v, None))
    _index: tuple[Tensor, ...] | None = attrs.field(default=None, init=False, repr=False)

    def validate(self) -> None:
        _points(str(self.name), self.lat, self.lon, self.time, self.value, self.error)

    def default_noise(self) -> NoiseModel:
        return Huber(self.error)

    @property
    def size(self) -> int:
        return self.value.size

    @property
    def values(self) -> Tensor:
        return torch.as_tensor(self.value, dtype=torch.float64)

    def _prepare(self, grid: Grid, spec: StateSpec, times: np.ndarray) -> None:
        cu = spec.index("10m_u_component_of_wind", owner=str(self.name))
        cv = spec.index("10m_v_component_of_wind", owner=str(self.name))
        i0, i1, w1 = time_interpolation(str(self.name), self.time, times)
        k = np.where(w1 < 0.5, i0, i1)
        idx, w = nearest_weights(grid, self.lat, self.lon)
        cell = idx[np.arange(self.size), w.argmax(1)]
        j, i = np.divmod(cell, grid.nlon)
        self._index = tuple(torch.as_tensor(a) for a in (k, np.full_like(k, cu), np.full_like(k, cv), j, i))

    def _uv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        assert self._index is not None
        k, cu, cv, j, i = self._index
        return x[:, k, cu, j, i], x[:, k, cv, j, i]

    def forward(self, x: Tensor) -> Tensor:
        u, v = self._uv(x)
        return torch.sqrt(u**2 + v**2)


def _picker(cls: type[PointPicker] = PointPicker, **kw: Any) -> PointPicker:
    args: dict[str, Any] = {
        "variable": "temperature",
        "level": 500,
        "lat": [80.0, 10.0, -33.0, -90.0],
        "lon": [0.0, 359.0, -120.0, 45.0],
        "time": ["2020-01-01T00", "2020-01-01T03", "2020-01-01T12", "2020-01-01T07"],
        "value": [230.0, 260.0, 250.0, 220.0],
        "error": [1.0, 0.5, 2.0, 1.0],
        "bias": 1.5,
    }
    return cls(**{**args, **kw})


def _wind(cls: type[WindSpeed] = WindSpeed, **kw: Any) -> WindSpeed:
    args: dict[str, Any] = {
        "lat": [45.0, -10.0, 0.0],
        "lon": [10.0, 200.0, 90.0],
        "time": ["2020-01-01T01", "2020-01-01T06", "2020-01-01T11"],
        "value": [7.0, 3.0, 12.0],
    }
    return cls(**{**args, **kw})


def _bad_points(cls: Callable[..., ObsOperator], make: Callable[..., ObsOperator]) -> list[tuple[Any, str]]:
    name = cls.__name__  # type: ignore[attr-defined]
    n = len(make().value)  # type: ignore[attr-defined]
    return [
        (lambda: make(lat=[95.0] + [0.0] * (n - 1)), rf"{name}: field 'lat' has value 95.0 at index 0 outside"),
        (lambda: make(lon=[0.0] * (n - 1) + [400.0]), rf"{name}: field 'lon' has value 400.0 at index {n - 1}"),
        (lambda: make(value=[np.nan] * n), rf"{name}: field 'value' has value nan at index 0; must be finite"),
        (lambda: make(value=[np.inf] + [1.0] * (n - 1)), rf"{name}: field 'value' has value inf"),
        (lambda: make(error=-1.0), rf"{name}: field 'error' has value -1.0 at index 0; must be > 0"),
        (lambda: make(error=np.nan), rf"{name}: field 'error' has value nan"),
        (lambda: make(value=[1.0] * (n + 1)), rf"{name}: field 'lat' has {n} values but field 'value' has {n + 1}"),
        (lambda: make(value=[], lat=[], lon=[], time=[]), rf"{name}: field 'value' is empty"),
        (lambda: make(value="warm"), rf"{name}: field 'value' must be numeric, got 'warm'"),
        (lambda: make(time=["yesterday"] * n), rf"{name}: field 'time' must hold times"),
        (lambda: make(time=["NaT"] * n), rf"{name}: field 'time' has value NaT at index 0"),
        (lambda: make(noise="gaussian"), rf"{name}: field 'noise' must be a NoiseModel, got str"),
        (lambda: make(noise=DiagonalGaussian([1.0] * (n + 2))), rf"DiagonalGaussian: field 'std' has {n + 2} values"),
        (
            lambda: make(time=["2020-01-02T00"] * n).prepare(GRID, SPEC, WINDOW),
            rf"{name}: field 'time' has value 2020-01-02T00.* at index 0 outside the window",
        ),
        (
            lambda: make().prepare(GRID, SPEC, WINDOW[::-1]),
            rf"{name}.prepare: field 'times' must be strictly increasing",
        ),
    ]


class TestPointPicker(OperatorContract):
    def make_setup(self) -> tuple[Grid, StateSpec, np.ndarray]:
        return GRID, SPEC, WINDOW

    def make_operator(self) -> ObsOperator:
        return _picker()

    def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
        return [
            *_bad_points(PointPicker, _picker),
            (
                lambda: _picker(variable="ozone").prepare(GRID, SPEC, WINDOW),
                r"PointPicker: variable 'ozone' is not modelled",
            ),
            (
                lambda: _picker(level=300).prepare(GRID, SPEC, WINDOW),
                r"PointPicker: level 300 hPa of 'temperature' is not modelled; levels are \[500, 850\]",
            ),
        ]


class TestPointPickerSurface(TestPointPicker):
    def make_operator(self) -> ObsOperator:
        return _picker(variable="2m_temperature", level=None, bias=0.0, noise=Huber(1.0))


class TestWindSpeed(OperatorContract):
    def make_setup(self) -> tuple[Grid, StateSpec, np.ndarray]:
        return GRID, SPEC, WINDOW

    def make_operator(self) -> ObsOperator:
        return _wind()

    def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
        no_wind = StateSpec(surface=("2m_temperature",))
        return [
            *_bad_points(WindSpeed, _wind),
            (
                lambda: _wind().prepare(GRID, no_wind, WINDOW),
                r"WindSpeed: variable '10m_u_component_of_wind' is not modelled",
            ),
        ]


# ---------------------------------------------------------------------------------------------- broken operators
class _DoubleGrad(torch.autograd.Function):
    """Identity forward, doubled backward: a wrong adjoint."""

    @staticmethod
    def forward(ctx: Any, y: Tensor) -> Tensor:
        return y.clone()

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        return 2 * g


@attrs.define(kw_only=True, eq=False)
class WrongAdjointPicker(PointPicker):
    def forward(self, x: Tensor) -> Tensor:
        return _DoubleGrad.apply(super().forward(x))


class _SpeedMissingV(torch.autograd.Function):
    """sqrt(u^2 + v^2) with a correct tangent (jvp) but a backward that forgets the v term: a wrong gradient."""

    @staticmethod
    def forward(u: Tensor, v: Tensor) -> Tensor:
        return torch.sqrt(u**2 + v**2)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs, output)
        ctx.save_for_forward(*inputs, output)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, Tensor]:
        u, _, s = ctx.saved_tensors
        return g * u / s, torch.zeros_like(g)

    @staticmethod
    def jvp(ctx: Any, du: Tensor, dv: Tensor) -> Tensor:
        u, v, s = ctx.saved_tensors
        return (u * du + v * dv) / s


@attrs.define(kw_only=True, eq=False)
class WrongGradientWind(WindSpeed):
    def forward(self, x: Tensor) -> Tensor:
        return _SpeedMissingV.apply(*self._uv(x))


@attrs.define(kw_only=True, eq=False)
class WrongMatrixPicker(PointPicker):
    """Linear, with a consistent VJP, but its forward has a term that ``matrix()`` lacks."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + 0.01 * x[:, 0, 0, 0, :1]


@attrs.define(kw_only=True, eq=False)
class WrongLinearizePicker(PointPicker):
    """Correct forward, VJP and JVP; its tangent-linear map (what the guidance uses) drops the last observation."""

    def linearize(self, x: Tensor) -> Callable[[Tensor], Tensor]:
        tangent = super().linearize(x)
        return lambda dx: tangent(dx) * (torch.arange(self.size) < self.size - 1)


@attrs.define(kw_only=True, eq=False)
class BatchMixingWind(WindSpeed):
    def forward(self, x: Tensor) -> Tensor:
        s = super().forward(x)
        return s - 0.1 * s.mean(0, keepdim=True)


@attrs.define(kw_only=True, eq=False)
class WrongTangentWind(WindSpeed):
    """Correct values and VJP, wrong forward-mode derivative (a jvp rule off by a factor 3)."""

    def forward(self, x: Tensor) -> Tensor:
        return _WrongJvp.apply(super().forward(x))


class _WrongJvp(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(y: Tensor) -> Tensor:
        return y.clone()

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor], output: Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        return g

    @staticmethod
    def jvp(ctx: Any, t: Tensor) -> Tensor:
        return 3 * t


def _contract(cls: type[OperatorContract], make: Callable[[], ObsOperator]) -> OperatorContract:
    case = type(f"Case{cls.__name__}", (cls,), {"make_operator": lambda self: make()})
    return case()


@pytest.mark.parametrize(
    ("base", "make", "test", "pattern"),
    [
        (TestPointPicker, lambda: _picker(WrongAdjointPicker),
         "test_linear_adjoint_dot_product", r"WrongAdjointPicker: adjoint test failed"),
        (TestPointPicker, lambda: _picker(WrongAdjointPicker),
         "test_gradient_finite_differences", r"WrongAdjointPicker: gradient \(VJP\) disagrees"),
        (TestWindSpeed, lambda: _wind(WrongGradientWind),
         "test_gradient_finite_differences", r"WrongGradientWind: gradient \(VJP\) disagrees with finite differences"),
        (TestWindSpeed, lambda: _wind(WrongTangentWind),
         "test_jvp_finite_differences", r"WrongTangentWind: jvp disagrees"),
        (TestPointPicker, lambda: _picker(WrongMatrixPicker),
         "test_linear_matrix_reproduces_forward", r"WrongMatrixPicker: matrix\(\) @ x differs from H\(x\) - H\(0\)"),
        (TestWindSpeed, lambda: _wind(BatchMixingWind),
         "test_batching", r"BatchMixingWind: batch member 0 differs from the single call"),
        (TestPointPicker, lambda: _picker(WrongLinearizePicker),
         "test_linearize_equals_jvp", r"WrongLinearizePicker: linearize\(x\)\(dx\) disagrees with torch.func.jvp"),
    ],
    ids=["adjoint", "adjoint-gradient", "gradient", "tangent", "matrix", "batching", "linearize"],
)  # fmt: skip
def test_contract_fails_on_broken_operator(
    base: type[OperatorContract], make: Callable[[], ObsOperator], test: str, pattern: str
) -> None:
    case = _contract(base, make)
    with pytest.raises(AssertionError, match=pattern):
        getattr(case, test)()


def test_broken_operators_pass_the_other_tests() -> None:
    """The broken operators above are broken in one way only: the rest of the contract passes on them."""
    case = _contract(TestWindSpeed, lambda: _wind(WrongGradientWind))
    results = {r.test: r.status for r in run_contract(case)}
    assert results.pop("test_gradient_finite_differences") == "failed"
    assert results.pop("test_linear_adjoint_dot_product") == "skipped"
    assert set(results.values()) == {"passed"}, results


def test_contract_fails_when_bad_input_is_accepted_or_misreported() -> None:
    class Lenient(TestPointPicker):
        def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
            return [(lambda: _picker(lat=[45.0, 0.0, 0.0, 0.0]), r"PointPicker: field 'lat'")]

    with pytest.raises(AssertionError, match=r"bad_inputs\(\)\[0\] .* did not raise"):
        Lenient().test_bad_inputs_raise()

    class WrongMessage(TestPointPicker):
        def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
            return [(lambda: _picker(lat=[95.0, 0.0, 0.0, 0.0]), r"field 'latitude'")]

    with pytest.raises(AssertionError, match=r"does not match /field 'latitude'/"):
        WrongMessage().test_bad_inputs_raise()

    class WrongType(TestPointPicker):
        def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
            return [(lambda: {}["missing"], r"missing")]

    with pytest.raises(AssertionError, match=r"raised KeyError"):
        WrongType().test_bad_inputs_raise()


def test_contract_fails_when_unprepared_or_misshaped_calls_pass() -> None:
    @attrs.define(kw_only=True, eq=False)
    class Careless(WindSpeed):
        def __call__(self, x: Tensor) -> Tensor:  # skips the base class checks
            if self._index is None:
                return x.new_zeros(x.shape[0], self.size)
            return self.forward(x.reshape(-1, *x.shape[-4:]) if x.ndim == 4 else x)

    case = _contract(TestWindSpeed, lambda: _wind(Careless))
    with pytest.raises(AssertionError, match=r"calling before prepare\(\): did not raise"):
        case.test_call_before_prepare_raises()
    with pytest.raises(AssertionError, match=r"did not raise"):
        case.test_wrong_shape_raises()


def test_run_contract_and_examples() -> None:
    def example() -> tuple[Any, ...]:
        return _picker(), GRID, SPEC, WINDOW

    results = run_contract(contract_from_example(example, "picker"))
    status = {r.test: r.status for r in results}
    assert status["test_bad_inputs_raise"] == "skipped"
    assert all(s == "passed" for t, s in status.items() if t != "test_bad_inputs_raise"), status
    assert len(results) == len([n for n in dir(OperatorContract) if n.startswith("test_")])


# ---------------------------------------------------------------------------------------------- make_state
def test_make_state_is_plausible_and_reproducible() -> None:
    x = make_state(GRID, SPEC, WINDOW, batch=2, seed=3)
    assert x.shape == (2, 3, SPEC.n_channels, *GRID.shape) and x.dtype == torch.float64
    torch.testing.assert_close(x, make_state(GRID, SPEC, WINDOW, batch=2, seed=3))
    assert not torch.equal(x, make_state(GRID, SPEC, WINDOW, batch=2, seed=4))
    t2m, t500, t850 = (
        x[:, :, SPEC.index(*c)] for c in (("2m_temperature",), ("temperature", 500), ("temperature", 850))
    )
    assert t2m.min() > 200 and t2m.max() < 330 and t500.min() >= 200 and t500.max() < 300
    assert t850.mean() > t500.mean() + 20  # colder aloft
    q = x[:, :, SPEC.indices("specific_humidity")]
    assert q.min() > 0 and q.max() < 0.1
    assert make_state(GRID, SPEC, WINDOW, dtype=torch.float32).dtype == torch.float32
    full = StateSpec(
        surface=("mean_sea_level_pressure", "total_precipitation_6hr", "land_sea_mask", "some_tracer"),
        atmospheric=("geopotential", "u_component_of_wind", "relative_humidity", "vertical_velocity"),
        levels=(250, 1000),
    )
    y = make_state(GRID, full, WINDOW[:1])
    assert torch.isfinite(y).all()
    z = y[0, 0, full.indices("geopotential")].mean((-1, -2))
    assert 9.8 * 9000 < z[0] < 9.8 * 12000 and abs(z[1]) < 9.8 * 400  # 250 hPa ~ 10 km, 1000 hPa ~ 100 m
    d = make_direction(GRID, SPEC, WINDOW, batch=1)
    assert d.shape == (1, 3, SPEC.n_channels, *GRID.shape) and d.abs().max() > 0


# ---------------------------------------------------------------------------------------------- base classes
def test_operator_base_behaviour() -> None:
    op = _picker()
    assert op.name == "PointPicker" and not op.prepared and op.linear
    assert isinstance(op.noise, DiagonalGaussian) and op.noise.size == 4
    with pytest.raises(RuntimeError, match=r"PointPicker: call prepare\(grid, spec, times\) before matrix\(\)"):
        op.matrix()
    with pytest.raises(RuntimeError, match=r"PointPicker: call prepare\(grid, spec, times\) before applying"):
        op(torch.zeros(1, 3, SPEC.n_channels, *GRID.shape))
    op.prepare(GRID, SPEC, [str(t) for t in WINDOW])  # ISO strings are accepted
    np.testing.assert_array_equal(op.window, WINDOW)
    with pytest.raises(ValueError, match=r"PointPicker: state must have shape \[B, 3, 7, 5, 8\]"):
        op(torch.zeros(1, 2, SPEC.n_channels, *GRID.shape))
    np.testing.assert_allclose(op.offset(), 1.5)
    named = _picker(name="radiosondes", noise=DiagonalGaussian(0.3))
    assert named.name == "radiosondes" and named.noise.size == 4
    wind = _wind()
    assert not wind.linear and isinstance(wind.noise, Huber) and wind.noise.size == 3
    with pytest.raises(TypeError, match=r"WindSpeed: operator is nonlinear and has no matrix"):
        wind.matrix()


def test_point_picker_values_are_exact() -> None:
    """Closed form: on a field equal to (time index * 1000 + latitude), the picker returns the nearest row's
    latitude plus 1000 * the observation's fractional time index, plus the bias."""
    op = _picker().prepare(GRID, SPEC, WINDOW)
    x = torch.zeros(1, 3, SPEC.n_channels, *GRID.shape, dtype=torch.float64)
    x += torch.as_tensor(GRID.lat)[:, None] + 1000 * torch.arange(3.0, dtype=torch.float64)[:, None, None, None]
    nearest_lat = GRID.lat[np.abs(GRID.lat[:, None] - np.array([80.0, 10.0, -33.0, -90.0])).argmin(0)]
    frac = np.array([0.0, 0.5, 2.0, 7 / 6])
    torch.testing.assert_close(op(x)[0], torch.as_tensor(nearest_lat + 1000 * frac + 1.5))


def test_sparse_linear_operator_checks_matrix_rows() -> None:
    op = _picker()
    with pytest.raises(ValueError, match=r"PointPicker: matrix has 3 rows but there are 4 observations"):
        op._set_matrix(sp.csr_array((3, 10)))


def test_time_interpolation() -> None:
    obs = np.array(["2020-01-01T00", "2020-01-01T03", "2020-01-01T06", "2020-01-01T10", "2020-01-01T12"], "M8[ns]")
    i0, i1, w1 = time_interpolation("Op", obs, WINDOW)
    np.testing.assert_array_equal(i0, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(i1, [1, 1, 2, 2, 2])
    np.testing.assert_allclose(w1, [0.0, 0.5, 0.0, 4 / 6, 1.0])
    single = time_interpolation("Op", WINDOW[:1], WINDOW[:1])
    assert [a.tolist() for a in single] == [[0], [0], [0.0]]
    with pytest.raises(ValueError, match=r"Op: field 'time' has value 2019-12-31T23.* at index 0 outside the window"):
        time_interpolation("Op", np.array(["2019-12-31T23"], "M8[ns]"), WINDOW)


# ---------------------------------------------------------------------------------------------- ObsSet
def _set() -> ObsSet:
    corr = CorrelatedGaussian(cov=[[1.0, 0.3, 0.0], [0.3, 2.0, 0.1], [0.0, 0.1, 0.5]])
    return ObsSet([_picker(), _wind(noise=corr), _picker(variable="2m_temperature", level=None, bias=0.0)])


def test_obsset_stacks_operators() -> None:
    obs = _set().prepare(GRID, SPEC, WINDOW)
    a, b, c = obs.operators
    assert len(obs) == 3 and list(obs) == [a, b, c] and obs.size == 11
    assert obs.names == ["PointPicker", "WindSpeed", "PointPicker#2"]
    assert obs.slices == {"PointPicker": slice(0, 4), "WindSpeed": slice(4, 7), "PointPicker#2": slice(7, 11)}
    assert not obs.linear and repr(obs) == "ObsSet(PointPicker[4], WindSpeed[3], PointPicker#2[4])"
    x = make_state(GRID, SPEC, WINDOW, batch=2)
    y = obs(x)
    torch.testing.assert_close(y, torch.cat([a(x), b(x), c(x)], -1))
    torch.testing.assert_close(obs.values, torch.cat([a.values, b.values, c.values]))
    parts = obs.split(y)
    torch.testing.assert_close(parts["WindSpeed"], b(x))
    # Block-diagonal noise.
    assert isinstance(obs.noise, BlockDiagonal) and obs.noise.size == 11 and obs.noise.gaussian
    expected = torch.block_diag(a.noise.dense_cov(), b.noise.dense_cov(), c.noise.dense_cov())
    torch.testing.assert_close(obs.noise.dense_cov(), expected)
    r = y[0] - obs.values
    torch.testing.assert_close(
        obs.noise.log_prob(r), a.noise.log_prob(r[:4]) + b.noise.log_prob(r[4:7]) + c.noise.log_prob(r[7:])
    )
    with pytest.raises(TypeError, match=r"ObsSet: operator 'WindSpeed' is nonlinear and has no matrix"):
        obs.matrix()


def test_obsset_matrix_is_the_vstack() -> None:
    a, c = _picker(), _picker(variable="2m_temperature", level=None)
    obs = ObsSet([a, c]).prepare(GRID, SPEC, WINDOW)
    assert obs.linear
    A = obs.matrix()
    assert A.shape == (8, 3 * SPEC.n_channels * 40)
    assert (sp.vstack([a.matrix(), c.matrix()]) != A).nnz == 0
    x = make_state(GRID, SPEC, WINDOW)
    torch.testing.assert_close(
        torch.as_tensor(A @ x.reshape(-1).numpy() + np.concatenate([a.offset(), c.offset()])), obs(x)[0]
    )


def test_obsset_errors() -> None:
    with pytest.raises(ValueError, match=r"ObsSet: field 'operators' is empty"):
        ObsSet([])
    with pytest.raises(TypeError, match=r"ObsSet: operator 1 is a str, not an ObsOperator"):
        ObsSet([_picker(), "station"])  # type: ignore[list-item]


# ---------------------------------------------------------------------------------------------- validation helpers
@pytest.mark.parametrize(
    ("thunk", "error", "pattern"),
    [
        (lambda: V.to_float_array("Op", "lat", ["a"]), TypeError, r"Op: field 'lat' must be numeric, got \['a'\]"),
        (lambda: V.to_float_array("Op", "lat", [[1.0]]), ValueError, r"Op: field 'lat' must be 1-D, got shape"),
        (lambda: V.check_nonempty("Op", "value", []), ValueError, r"Op: field 'value' is empty"),
        (lambda: V.check_finite("Op", "v", np.array([1.0, np.nan])), ValueError, r"value nan at index 1"),
        (lambda: V.check_positive("Op", "e", np.array([1.0, 0.0])), ValueError, r"'e' has value 0.0 at index 1"),
        (lambda: V.check_positive("Op", "e", np.array([np.inf])), ValueError, r"'e' has value inf at index 0"),
        (lambda: V.check_lat("Op", np.array([0.0, -90.5])), ValueError, r"'lat' has value -90.5 at index 1 outside"),
        (lambda: V.check_lat("Op", np.array([np.nan])), ValueError, r"'lat' has value nan"),
        (lambda: V.check_lon("Op", np.array([-181.0])), ValueError, r"'lon' has value -181.0 at index 0 outside"),
        (lambda: V.check_same_length("Op", a=[1], b=[1, 2]), ValueError, r"field 'b' has 2 values but field 'a' has 1"),
        (lambda: V.to_datetime64("Op", "time", ["soon"]), TypeError, r"Op: field 'time' must hold times"),
        (lambda: V.to_datetime64("Op", "time", ["2020-01-01", "NaT"]), ValueError, r"value NaT at index 1"),
        (
            lambda: V.check_times_in_window("Op", np.array(["2020-01-01T13"], "M8[ns]"), WINDOW),
            ValueError,
            r"Op: field 'time' has value 2020-01-01T13.* outside the window \[2020-01-01T00",
        ),
    ],
)
def test_validation_helpers_raise(thunk: Callable[[], object], error: type[Exception], pattern: str) -> None:
    with pytest.raises(error, match=pattern):
        thunk()


def test_validation_helpers_accept_good_input() -> None:
    np.testing.assert_array_equal(V.to_float_array("Op", "x", [1, 2]), [1.0, 2.0])
    assert V.to_float_array("Op", "x", 3.0, ndim=None).ndim == 0
    V.check_lat("Op", np.array([-90.0, 90.0]))
    V.check_lon("Op", np.array([-180.0, 360.0]))
    V.check_positive("Op", "e", np.array([1e-9]))
    assert V.check_same_length("Op", a=[1, 2], b=np.zeros(2)) == 2
    times = V.to_datetime64("Op", "time", "2020-01-01T06")
    assert times.dtype == np.dtype("M8[ns]") and times.shape == (1,)
    V.check_times_in_window("Op", WINDOW, WINDOW)


def test_deprecated_validate_path_still_imports_and_warns() -> None:
    """``appa_core.obs._validate`` (documented in 0.1's plugins.md) keeps working for one release, with a warning."""
    import importlib
    import sys

    sys.modules.pop("appa_core.obs._validate", None)
    with pytest.warns(DeprecationWarning, match=r"appa_core.obs._validate is deprecated; .* appa_core.obs.validate"):
        old = importlib.import_module("appa_core.obs._validate")
    assert old.to_float_array is V.to_float_array and set(old.__all__) == set(V.__all__)
