r"""Contract tests for observation operators (a pytest plugin: entry point ``pytest11: appa = appa_core.testing``).

Subclass :class:`OperatorContract` in a test module and implement three methods; pytest then runs every contract
test on your operator::

    from appa_core.testing import OperatorContract

    class TestMyOp(OperatorContract):
        def make_setup(self):                       # tiny grid, spec, window times [T]
            return Grid.equiangular(7, 12), StateSpec(surface=("2m_temperature",)), np.array([...], "datetime64[ns]")

        def make_operator(self):                    # a fresh, unprepared, valid operator
            return MyOp(lat=[10.0], lon=[20.0], time=["2020-01-01T03"], value=[280.0])

        def bad_inputs(self):                       # (thunk that must raise, regex searched in the message)
            return [(lambda: MyOp(lat=[95.0], ...), r"MyOp: field 'lat' has value 95")]

The tests (each raises ``AssertionError`` when the operator breaks the contract):

* shapes: ``op(x)`` is ``[B, M]``, finite, in the state's dtype (float32 and float64), ``values`` ``[M]`` float64;
* batching: each member of a batch of 3 equals the single-member call;
* gradient: :math:`\langle \nabla_x \langle u, H(x)\rangle, d\rangle` (autograd VJP) equals the directional
  finite difference (central, Richardson-extrapolated, float64) on random plausible states;
* tangent: ``torch.func.jvp`` agrees with the same finite difference;
* linear operators: ``matrix()`` ``[M, T*C*H*W]`` reproduces ``H(x) - H(0)``, and the adjoint dot-product test
  :math:`\langle A u, v\rangle = \langle u, A^\top v\rangle` holds with :math:`A^\top v` from the autograd VJP;
* errors: calling before ``prepare`` and with a wrongly shaped state raise; every ``bad_inputs`` thunk raises a
  ``ValueError``/``TypeError`` whose message matches its regex;
* the noise model is bound to ``M`` observations; ``metadata()`` arrays have ``M`` entries; the operator stacks in an
  :class:`~appa_core.obs.ObsSet`.

States come from :meth:`OperatorContract.make_state` (default: :func:`make_state`, plausible physical values:
temperatures around 250 K, pressures around 1e5 Pa, positive humidities...), which you may override.

At import time this module needs only the standard library (and pytest, if present, for the ``appa_registry``
fixture): pytest loads it in every session of an environment where appa-core is installed, so a broken appa_core
must not break unrelated test runs. torch and appa_core are imported by the tests themselves.
"""

from __future__ import annotations

import re
import unittest
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

if TYPE_CHECKING:
    import numpy as np
    import torch

    from appa_core.grid import Grid
    from appa_core.obs.base import ObsOperator
    from appa_core.spec import StateSpec

__all__ = [
    "ContractResult",
    "OperatorContract",
    "contract_from_example",
    "make_direction",
    "make_state",
    "run_contract",
]

_G = 9.80665

# ---------------------------------------------------------------------------------------------- plausible states
# Each variable has a mean(p, lat) and a spread; positive variables are log-normal, mean * exp(spread * n) (their
# spread is relative), the others mean + spread * n, with n standard normal.


def _climatology(variable: str, level: float | None, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Mean ``[H]``, spread ``[H]`` and positivity of a variable at a pressure level (hPa) and latitudes (deg)."""
    import numpy as np

    p = 1000.0 if level is None else float(level)
    s2 = np.sin(np.deg2rad(lat)) ** 2
    c2 = 1.0 - s2
    one = np.ones_like(lat)
    if variable == "temperature":
        return np.maximum(288.0 * (p / 1000.0) ** 0.19 - 30.0 * s2, 200.0), 3.0 * one, False
    if variable in ("2m_temperature", "skin_temperature"):
        return 300.0 - 45.0 * s2, 3.0 * one, False
    if variable == "sea_surface_temperature":
        return np.maximum(302.0 - 35.0 * s2, 272.0), 1.0 * one, False
    if variable == "2m_dewpoint_temperature":
        return 292.0 - 45.0 * s2, 3.0 * one, False
    if variable in ("u_component_of_wind", "10m_u_component_of_wind"):
        return 5.0 + 10.0 * s2 * (1000.0 / p) ** 0.5, 6.0 * one, False
    if variable in ("v_component_of_wind", "10m_v_component_of_wind", "vertical_velocity"):
        return 0.0 * one, (0.2 if variable == "vertical_velocity" else 6.0) * one, False
    if variable in ("wind_speed", "10m_wind_speed"):
        return 8.0 * one, 0.3 * one, True
    if variable == "geopotential":
        z = 44331.0 * (1.0 - (p / 1013.25) ** 0.1903)
        return _G * (z - 200.0 * s2), 300.0 * one, False
    if variable == "specific_humidity":
        return 0.015 * (p / 1000.0) ** 3 * c2 + 2e-6, 0.2 * one, True
    if variable == "relative_humidity":
        return 60.0 * one, 0.2 * one, True
    if variable == "mean_sea_level_pressure":
        return 101325.0 * one, 800.0 * one, False
    if variable == "surface_pressure":
        return 98000.0 * one, 1500.0 * one, False
    if variable == "total_precipitation_6hr":
        return 1e-3 * one, 0.5 * one, True
    if variable == "total_column_water_vapour":
        return 40.0 * c2 + 2.0, 0.2 * one, True
    if variable == "land_sea_mask":
        return 0.5 * one, 0.1 * one, False
    if variable == "geopotential_at_surface":
        return 3000.0 * one, 0.3 * one, True
    return 0.0 * one, 1.0 * one, False


def _draw(
    grid: Grid, spec: StateSpec, times: np.ndarray, batch: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Noise ``[B, T, C, H, W]`` and per-channel mean / spread / positivity (``[C, H, 1]``, ``[C, H, 1]``, ``[C]``)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = rng.standard_normal((batch, len(times), spec.n_channels, *grid.shape))
    stats = [_climatology(ch.variable, ch.level, grid.lat) for ch in spec.channels]
    mean = np.stack([m for m, _, _ in stats])[:, :, None]
    spread = np.stack([s for _, s, _ in stats])[:, :, None]
    positive = np.array([pos for _, _, pos in stats])
    return n, mean, spread, positive


def make_state(
    grid: Grid, spec: StateSpec, times: np.ndarray, batch: int = 1, dtype: torch.dtype | None = None, seed: int = 0
) -> torch.Tensor:
    """Random but physically plausible states ``[batch, T, C, H, W]`` in physical units.

    Each channel is a latitude-dependent climatology plus independent noise: temperatures ~200-300 K decreasing with
    height and latitude, geopotential from the standard atmosphere, winds of a few m/s, pressures ~1e5 Pa, and
    strictly positive specific humidity (log-normal, ~1e-2 kg/kg near the surface) and other positive quantities.

    Args:
        grid, spec, times: the state layout (``times`` ``[T]``).
        batch: number of members ``B``.
        dtype: torch dtype (default float64).
        seed: random seed (same seed, same states).
    """
    import numpy as np
    import torch

    n, mean, spread, positive = _draw(grid, spec, times, batch, seed)
    pos = positive[:, None, None]
    x = np.where(pos, mean * np.exp(np.where(pos, spread, 0.0) * n), mean + spread * n)
    return torch.as_tensor(x, dtype=torch.float64 if dtype is None else dtype)


def make_direction(
    grid: Grid, spec: StateSpec, times: np.ndarray, batch: int = 1, dtype: torch.dtype | None = None, seed: int = 1
) -> torch.Tensor:
    """A random perturbation ``[batch, T, C, H, W]`` of the size of each channel's spread in :func:`make_state`
    (relative to the value for positive variables), for finite-difference and tangent-linear tests."""
    import numpy as np
    import torch

    n, mean, spread, positive = _draw(grid, spec, times, batch, seed)
    d = np.where(positive[:, None, None], mean * spread * n, spread * n)
    return torch.as_tensor(d, dtype=torch.float64 if dtype is None else dtype)


# ---------------------------------------------------------------------------------------------- the contract
def _skip(reason: str) -> None:
    raise unittest.SkipTest(reason)  # pytest reports it as a skip


def _assert_raises(thunk: Callable[[], object], kinds: tuple[type[BaseException], ...], what: str) -> BaseException:
    try:
        thunk()
    except kinds as exc:
        return exc
    except Exception as exc:
        raise AssertionError(f"{what}: raised {type(exc).__name__} ({exc}), expected {kinds}") from exc
    raise AssertionError(f"{what}: did not raise (expected {' or '.join(k.__name__ for k in kinds)})")


class OperatorContract:
    """Mixin of contract tests for an :class:`~appa_core.obs.ObsOperator` (see the module docstring).

    Class attributes you may override: ``batch_size`` (3), ``seed`` (0), ``fd_step`` (1e-3, relative to the
    state's spread), ``fd_rtol`` (1e-6), ``roundoff_rtol`` (1e-10, linear checks), ``float32_rtol`` (1e-4).
    """

    batch_size: ClassVar[int] = 3
    seed: ClassVar[int] = 0
    fd_step: ClassVar[float] = 1e-3
    fd_rtol: ClassVar[float] = 1e-6
    roundoff_rtol: ClassVar[float] = 1e-10
    float32_rtol: ClassVar[float] = 1e-4

    # ------------------------------------------------------------------ to implement
    def make_setup(self) -> tuple[Grid, StateSpec, np.ndarray]:
        """The state layout: a tiny grid, a spec and the window's times ``[T]`` (``datetime64[ns]``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_setup()")

    def make_operator(self) -> ObsOperator:
        """A fresh, valid, unprepared operator."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_operator()")

    def bad_inputs(self) -> list[tuple[Callable[[], object], str]]:
        """``(thunk, regex)`` pairs: each thunk must raise ``ValueError``/``TypeError`` matching ``regex``."""
        return []

    def make_state(
        self, grid: Grid, spec: StateSpec, times: np.ndarray, batch: int, dtype: torch.dtype, seed: int = 0
    ) -> torch.Tensor:
        """States ``[batch, T, C, H, W]`` for the tests (default :func:`make_state`)."""
        return make_state(grid, spec, times, batch=batch, dtype=dtype, seed=self.seed + seed)

    def make_direction(
        self, grid: Grid, spec: StateSpec, times: np.ndarray, batch: int, dtype: torch.dtype, seed: int = 1
    ) -> torch.Tensor:
        """Perturbation directions for the derivative tests (default :func:`make_direction`)."""
        return make_direction(grid, spec, times, batch=batch, dtype=dtype, seed=self.seed + seed)

    # ------------------------------------------------------------------ helpers
    def _prepared(self) -> tuple[ObsOperator, Grid, StateSpec, np.ndarray]:
        grid, spec, times = self.make_setup()
        op = self.make_operator()
        out = op.prepare(grid, spec, times)
        assert out is op, f"{op.name}.prepare() must return the operator itself"
        return op, grid, spec, times

    def _fd(self, f: Callable[[Any], Any], x: Any, d: Any) -> Any:
        """Central difference of ``f`` at ``x`` along ``d``, Richardson-extrapolated (error O(h^4))."""
        h = self.fd_step

        def central(step: float) -> Any:
            return (f(x + step * d) - f(x - step * d)) / (2 * step)

        return (4 * central(h / 2) - central(h)) / 3

    # ------------------------------------------------------------------ tests
    def test_values_and_size(self) -> None:
        import torch

        op = self.make_operator()
        m = op.size
        assert isinstance(m, int) and m > 0, f"{op.name}: size must be a positive int, got {m!r}"
        values = op.values
        assert isinstance(values, torch.Tensor), f"{op.name}: values must be a Tensor, got {type(values).__name__}"
        assert values.shape == (m,), f"{op.name}: values has shape {list(values.shape)}, expected [{m}]"
        assert values.dtype == torch.float64, f"{op.name}: values has dtype {values.dtype}, expected float64"
        assert torch.isfinite(values).all(), f"{op.name}: values are not all finite"

    def test_noise_matches_size(self) -> None:
        import torch

        from appa_core.obs.errors import NoiseModel

        op = self.make_operator()
        noise = op.noise
        assert isinstance(noise, NoiseModel), f"{op.name}: noise is {type(noise).__name__}, not a NoiseModel"
        assert noise.size == op.size, f"{op.name}: noise has {noise.size} observations, operator has {op.size}"
        var = noise.variance()
        assert var.shape == (op.size,) and bool((var > 0).all()), f"{op.name}: noise variance must be > 0, [M]"
        assert noise.sample((2,), generator=torch.Generator().manual_seed(0)).shape == (2, op.size)
        lp = noise.log_prob(noise.sample((3,), generator=torch.Generator().manual_seed(1)))
        assert lp.shape == (3,) and bool(torch.isfinite(lp).all()), f"{op.name}: noise log_prob is not finite"

    def test_metadata_lengths(self) -> None:
        op, *_ = self._prepared()
        for key, value in op.metadata().items():
            assert len(value) == op.size, f"{op.name}: metadata[{key!r}] has {len(value)} entries, expected {op.size}"

    def test_output_shape_and_dtype(self) -> None:
        import torch

        op, grid, spec, times = self._prepared()
        x = self.make_state(grid, spec, times, 2, torch.float64)
        y = op(x)
        assert isinstance(y, torch.Tensor), f"{op.name}: output is a {type(y).__name__}, not a Tensor"
        assert y.shape == (2, op.size), f"{op.name}: output has shape {list(y.shape)}, expected [2, {op.size}]"
        assert y.dtype == torch.float64, f"{op.name}: float64 state gave a {y.dtype} output"
        assert torch.isfinite(y).all(), f"{op.name}: output is not finite on a plausible state"
        y32 = op(x.float())
        assert y32.dtype == torch.float32, f"{op.name}: float32 state gave a {y32.dtype} output"
        err = (y32.double() - y).abs().max().item()
        scale = y.abs().max().item() + 1e-30
        assert err <= self.float32_rtol * scale, f"{op.name}: float32 output differs from float64 by {err:.3g}"

    def test_batching(self) -> None:
        import torch

        op, grid, spec, times = self._prepared()
        x = self.make_state(grid, spec, times, self.batch_size, torch.float64)
        batched = op(x)
        for b in range(self.batch_size):
            single = op(x[b : b + 1])
            atol = 1e-12 * (single.abs().max().item() + 1e-30)
            err = (batched[b : b + 1] - single).abs().max().item()
            assert err <= atol, f"{op.name}: batch member {b} differs from the single call by {err:.3g}"

    def test_prepare_is_idempotent(self) -> None:
        import torch

        op, grid, spec, times = self._prepared()
        x = self.make_state(grid, spec, times, 1, torch.float64)
        first = op(x)
        op.prepare(grid, spec, times)
        torch.testing.assert_close(op(x), first, msg=lambda m: f"{op.name}: output changed after prepare() again: {m}")

    def test_does_not_modify_state(self) -> None:
        import torch

        op, grid, spec, times = self._prepared()
        x = self.make_state(grid, spec, times, 2, torch.float64)
        copy = x.clone()
        op(x)
        assert torch.equal(x, copy), f"{op.name}: the operator modified its input state in place"

    def test_gradient_finite_differences(self) -> None:
        r"""Taylor test of the VJP: :math:`\langle J^\top u, d\rangle` vs the directional finite difference."""
        import torch

        op, grid, spec, times = self._prepared()
        x = self.make_state(grid, spec, times, 2, torch.float64).requires_grad_(True)
        d = self.make_direction(grid, spec, times, 2, torch.float64)
        y = op(x)
        assert y.requires_grad, f"{op.name}: output does not depend differentiably on the state"
        u = torch.randn(y.shape, generator=torch.Generator().manual_seed(self.seed + 2), dtype=torch.float64)
        (g,) = torch.autograd.grad((u * y).sum(), x)
        assert torch.isfinite(g).all(), f"{op.name}: gradient is not finite"
        ad = (g * d).sum().item()
        with torch.no_grad():
            fd_vec = self._fd(op, x.detach(), d)
        fd = (u * fd_vec).sum().item()
        scale = (u.abs() * fd_vec.abs()).sum().item() + 1e-300
        assert abs(ad - fd) <= self.fd_rtol * scale, (
            f"{op.name}: gradient (VJP) disagrees with finite differences: <J^T u, d> = {ad:.12g}, "
            f"finite difference = {fd:.12g} (relative error {abs(ad - fd) / scale:.3g} > {self.fd_rtol})"
        )

    def test_jvp_finite_differences(self) -> None:
        import torch
        from torch.func import jvp

        op, grid, spec, times = self._prepared()
        x = self.make_state(grid, spec, times, 2, torch.float64)
        d = self.make_direction(grid, spec, times, 2, torch.float64)
        _, tangent = jvp(op, (x,), (d,))
        with torch.no_grad():
            fd = self._fd(op, x, d)
        err = (tangent - fd).abs().max().item()
        scale = fd.abs().max().item() + 1e-300
        assert err <= self.fd_rtol * scale, (
            f"{op.name}: jvp disagrees with finite differences: max error {err:.3g} (relative {err / scale:.3g})"
        )

    def test_linearize_equals_jvp(self) -> None:
        import torch
        from torch.func import jvp

        op, grid, spec, times = self._prepared()
        x = self.make_state(grid, spec, times, 2, torch.float64)
        tangent = op.linearize(x)
        for seed in (0, 1):  # one linearization, several directions (as the guidance uses it)
            d = self.make_direction(grid, spec, times, 2, torch.float64) * (1 + seed)
            ref = jvp(op, (x,), (d,))[1]
            got = tangent(d)
            err = (got - ref).abs().max().item()
            scale = ref.abs().max().item() + 1e-300
            assert got.shape == ref.shape and err <= self.roundoff_rtol * scale, (
                f"{op.name}: linearize(x)(dx) disagrees with torch.func.jvp: max error {err:.3g} "
                f"(relative {err / scale:.3g})"
            )

    def test_linear_matrix_reproduces_forward(self) -> None:
        import numpy as np
        import torch

        op, grid, spec, times = self._prepared()
        if not op.linear:
            _assert_raises(op.matrix, (TypeError, NotImplementedError), f"{op.name}.matrix() on a nonlinear operator")
            return
        A = op.matrix()
        n = len(times) * spec.n_channels * grid.shape[0] * grid.shape[1]
        assert A.shape == (op.size, n), f"{op.name}: matrix has shape {A.shape}, expected ({op.size}, {n})"
        x = self.make_state(grid, spec, times, 2, torch.float64)
        y = (op(x) - op(torch.zeros_like(x[:1]))).numpy()
        ax = (A @ x.reshape(2, -1).numpy().T).T
        scale = (abs(A) @ np.abs(x.reshape(2, -1).numpy()).T).max() + 1e-300
        err = np.abs(ax - y).max()
        assert err <= self.roundoff_rtol * scale, f"{op.name}: matrix() @ x differs from H(x) - H(0) by {err:.3g}"

    def test_linear_adjoint_dot_product(self) -> None:
        r""":math:`\langle A u, v\rangle = \langle u, A^\top v\rangle`, :math:`A^\top v` by autograd."""
        import numpy as np
        import torch

        op, grid, spec, times = self._prepared()
        if not op.linear:
            _skip(f"{op.name} is nonlinear")
        gen = torch.Generator().manual_seed(self.seed + 3)
        u = self.make_direction(grid, spec, times, 1, torch.float64).requires_grad_(True)
        v = torch.randn((1, op.size), generator=gen, dtype=torch.float64)
        au = op(u) - op(torch.zeros_like(u))
        (atv,) = torch.autograd.grad(au, u, grad_outputs=v)
        lhs, rhs = (au * v).sum().item(), (u * atv).sum().item()
        scale = (au.abs() * v.abs()).sum().item() + 1e-300
        assert abs(lhs - rhs) <= self.roundoff_rtol * scale, (
            f"{op.name}: adjoint test failed: <A u, v> = {lhs:.15g} but <u, A^T v> = {rhs:.15g}"
        )
        atv_matrix = op.matrix().T @ v.numpy()[0]
        err = np.abs(atv_matrix - atv.numpy().reshape(-1)).max()
        assert err <= self.roundoff_rtol * (np.abs(atv_matrix).max() + 1e-300), (
            f"{op.name}: autograd VJP differs from matrix().T @ v by {err:.3g}"
        )

    def test_call_before_prepare_raises(self) -> None:
        import torch

        grid, spec, times = self.make_setup()
        op = self.make_operator()
        x = self.make_state(grid, spec, times, 1, torch.float64)
        _assert_raises(lambda: op(x), (RuntimeError, ValueError), f"{op.name}: calling before prepare()")

    def test_wrong_shape_raises(self) -> None:
        import torch

        op, grid, spec, times = self._prepared()
        x = self.make_state(grid, spec, times, 1, torch.float64)
        _assert_raises(lambda: op(x[0]), (ValueError,), f"{op.name}: calling on a [T, C, H, W] state (no batch)")
        extra = torch.cat([x, x[:, :, :1]], dim=2)
        _assert_raises(lambda: op(extra), (ValueError,), f"{op.name}: calling on a state with one channel too many")
        _assert_raises(lambda: op(x[..., :-1]), (ValueError,), f"{op.name}: calling on a state one longitude short")

    def test_bad_inputs_raise(self) -> None:
        cases = self.bad_inputs()
        if not cases:
            _skip(f"{type(self).__name__}.bad_inputs() lists no bad input")
        for i, (thunk, pattern) in enumerate(cases):
            exc = _assert_raises(thunk, (ValueError, TypeError), f"bad_inputs()[{i}] (expected /{pattern}/)")
            assert re.search(pattern, str(exc)), f"bad_inputs()[{i}]: message {str(exc)!r} does not match /{pattern}/"

    def test_stacks_in_obsset(self) -> None:
        import torch

        from appa_core.obs import ObsSet

        grid, spec, times = self.make_setup()
        a, b = self.make_operator(), self.make_operator()
        obs = ObsSet([a, b]).prepare(grid, spec, times)
        assert obs.size == 2 * a.size and obs.noise.size == obs.size
        x = self.make_state(grid, spec, times, 2, torch.float64)
        torch.testing.assert_close(obs(x), torch.cat([a(x), b(x)], dim=-1))
        torch.testing.assert_close(obs.values, torch.cat([a.values, b.values]))


# ---------------------------------------------------------------------------------------------- outside pytest
class ContractResult(NamedTuple):
    """One contract test's outcome; ``status`` is ``passed``, ``failed``, ``error`` or ``skipped``."""

    test: str
    status: str
    message: str = ""


def contract_from_example(example: Callable[[], tuple[Any, ...]], name: str = "Example") -> OperatorContract:
    """A contract instance for an ``example()`` returning ``(operator, grid, spec, times)`` (the registry's
    operator examples, used by ``appa plugins check``)."""

    class _Example(OperatorContract):
        def make_setup(self) -> tuple[Grid, StateSpec, np.ndarray]:
            _, grid, spec, times = example()
            return grid, spec, times

        def make_operator(self) -> ObsOperator:
            return example()[0]

    _Example.__name__ = _Example.__qualname__ = f"Contract[{name}]"
    return _Example()


def run_contract(case: OperatorContract) -> list[ContractResult]:
    """Run every contract test of ``case`` without pytest; one :class:`ContractResult` per test."""
    results = []
    for test in sorted(n for n in dir(case) if n.startswith("test_")):
        try:
            getattr(case, test)()
        except unittest.SkipTest as exc:
            results.append(ContractResult(test, "skipped", str(exc)))
        except AssertionError as exc:
            results.append(ContractResult(test, "failed", str(exc).strip().splitlines()[0] if str(exc) else ""))
        except Exception as exc:
            results.append(ContractResult(test, "error", f"{type(exc).__name__}: {exc}"))
        else:
            results.append(ContractResult(test, "passed"))
    return results


# ---------------------------------------------------------------------------------------------- pytest fixtures
try:
    import pytest
except ImportError:  # pragma: no cover - the module also serves `appa plugins check` without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def appa_registry() -> Any:
        """A fresh :class:`~appa_core.plugins.Registry` with the built-ins and no installed plugin loaded (register
        yours with ``appa_registry.register_plugin(module, name=...)``)."""
        from appa_core.plugins import Registry

        return Registry()
