"""Operator contract checks for SwathOp and RadianceOp: shapes, batching, matrix, adjoint, jvp, gradients, errors.

(Direct versions of the ``appa_core.testing.OperatorContract`` checks; the contract subclasses live in
``test_satellite_contract.py``.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from _satellite_setup import state, tiny_setup, tiny_swath
from torch.func import jvp

from appa_core.obs import ObsOperator, ObsSet
from appa_op_satellite import RadianceOp, SwathOp, amsua_channels
from appa_op_satellite._examples import radiance_example, swath_example


def make_ops() -> list[ObsOperator]:
    _, spec, times = tiny_setup()
    swath = tiny_swath()
    point = SwathOp.from_orbit(tiny_swath(), times, variables=["2m_temperature"], radius_km=None)
    tophat = SwathOp.from_orbit(swath, times, variables=["temperature@850"], kernel="tophat")
    return [
        swath_example()[0],
        point,
        tophat,
        radiance_example()[0],
        RadianceOp.from_orbit(swath, times, channels=amsua_channels((5, 6), levels=spec.levels), radius_km=None),
    ]


OPS = make_ops()
IDS = ["swath", "swath-points", "swath-tophat", "radiance", "radiance-points"]


@pytest.fixture(params=range(len(OPS)), ids=IDS)
def prepared(request: pytest.FixtureRequest) -> ObsOperator:
    grid, spec, times = tiny_setup()
    return OPS[request.param].prepare(grid, spec, times)


def test_shape_batching_and_noise_size(prepared: ObsOperator) -> None:
    grid, spec, times = tiny_setup()
    x = state(grid, spec, times, 3)
    y = prepared(x)
    assert y.shape == (3, prepared.size) and y.dtype == torch.float64
    for b in range(3):
        torch.testing.assert_close(prepared(x[b : b + 1])[0], y[b], rtol=1e-12, atol=1e-10)
    assert prepared.noise is not None and prepared.noise.size == prepared.size
    assert prepared.values.shape == (prepared.size,)
    y32 = prepared(x.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), y, rtol=1e-5, atol=1e-3)
    meta = prepared.metadata()
    assert all(v.shape == (prepared.size,) for v in meta.values())


def test_matrix_reproduces_forward_and_adjoint(prepared: ObsOperator) -> None:
    grid, spec, times = tiny_setup()
    x = state(grid, spec, times, 2, seed=1)
    A = prepared.matrix()
    assert A.shape == (prepared.size, x[0].numel())
    ax = np.stack([A @ xb.reshape(-1).numpy() for xb in x])
    np.testing.assert_allclose(prepared(x).numpy(), ax, rtol=1e-12, atol=1e-9)
    # <A u, v> = <u, A^T v> with A^T v from autograd's vector-Jacobian product
    g = torch.Generator().manual_seed(2)
    u = torch.randn(x[:1].shape, generator=g, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, prepared.size, generator=g, dtype=torch.float64)
    (atv,) = torch.autograd.grad(prepared(u), u, v)
    lhs = (prepared(u) * v).sum().item()
    rhs = (u * atv).sum().item()
    assert lhs == pytest.approx(rhs, rel=1e-12)
    np.testing.assert_allclose(atv.reshape(-1).numpy(), A.T @ v[0].numpy(), rtol=1e-12, atol=1e-12)


def test_jvp_and_gradient_match_finite_differences(prepared: ObsOperator) -> None:
    grid, spec, times = tiny_setup()
    x = state(grid, spec, times, 1, seed=4)
    g = torch.Generator().manual_seed(5)
    dx = torch.randn(x.shape, generator=g, dtype=torch.float64)
    _, tangent = jvp(prepared.forward, (x,), (dx,))
    eps = 1e-3
    fd = (prepared(x + eps * dx) - prepared(x - eps * dx)) / (2 * eps)
    torch.testing.assert_close(tangent, fd, rtol=1e-7, atol=1e-7)
    # gradient of a scalar (a Gaussian log-likelihood) against central differences along dx
    y = prepared.values

    def loss(z: torch.Tensor) -> torch.Tensor:
        assert prepared.noise is not None
        return prepared.noise.log_prob(y - prepared(z)[0])

    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(xr), xr)
    fd_loss = (loss(x + eps * dx) - loss(x - eps * dx)) / (2 * eps)
    assert (grad * dx).sum().item() == pytest.approx(fd_loss.item(), rel=1e-6)


def test_vmap_and_obsset() -> None:
    grid, spec, times = tiny_setup()
    ops = [make_ops()[0], make_ops()[3]]
    obs = ObsSet(ops).prepare(grid, spec, times)
    x = state(grid, spec, times, 2)
    y = obs(x)
    assert y.shape == (2, obs.size)
    A = obs.matrix()
    np.testing.assert_allclose(A @ x[0].reshape(-1).numpy(), y[0].numpy(), rtol=1e-12)
    batched = torch.vmap(lambda z: ops[0](z[None])[0])(x)
    torch.testing.assert_close(batched, ops[0](x))


def test_before_prepare_and_wrong_shape_raise() -> None:
    op = make_ops()[0]
    grid, spec, times = tiny_setup()
    x = state(grid, spec, times, 1)
    with pytest.raises(RuntimeError, match="prepare"):
        op(x)
    with pytest.raises(RuntimeError, match="prepare"):
        op.matrix()
    op.prepare(grid, spec, times)
    with pytest.raises(ValueError, match=r"SwathOp: state must have shape"):
        op(x[:, :2])


T0 = np.datetime64("2020-01-01T03", "ns")


def swath(**kw: object) -> SwathOp:
    args: dict[str, object] = {
        "lat": [10.0, 20.0],
        "lon": [5.0, 6.0],
        "time": [T0, T0],
        "values": [1.0, 2.0],
        "variables": ["temperature@500"],
    }
    args.update(kw)
    return SwathOp(**args)  # type: ignore[arg-type]


def radiance(**kw: object) -> RadianceOp:
    args: dict[str, object] = {
        "lat": [10.0],
        "lon": [5.0],
        "time": [T0],
        "values": [[230.0, 220.0]],
        "channels": [5, 6],
    }
    args.update(kw)
    return RadianceOp(**args)  # type: ignore[arg-type]


BAD: list[tuple[Callable[[], object], str]] = [
    (lambda: swath(lat=[95.0, 0.0]), r"SwathOp: field 'lat' has value 95.0 at index 0 outside \[-90, 90\]"),
    (lambda: swath(lon=[5.0, 400.0]), r"SwathOp: field 'lon' has value 400.0 at index 1"),
    (lambda: swath(lat=[float("nan"), 0.0]), r"SwathOp: field 'lat' has value nan"),
    (lambda: swath(values=[1.0, float("inf")]), r"SwathOp: field 'values' has value inf at index 1"),
    (lambda: swath(time=[T0, "not a time"]), r"SwathOp: field 'time'"),
    (lambda: swath(lat=[1.0, 2.0, 3.0]), r"SwathOp: field 'lon' has 2 values but field 'lat' has 3"),
    (lambda: swath(lat=[], lon=[], time=[], values=[]), r"SwathOp: field 'lat' is empty"),
    (lambda: swath(variables=[]), r"SwathOp: field 'variables' is empty"),
    (lambda: swath(variables=["temperature@500", ("temperature", 500)]), r"SwathOp: field 'variables' lists"),
    (lambda: swath(values=[[1.0, 2.0], [3.0, 4.0]]), r"SwathOp: field 'values' must have shape \[N, 1\]"),
    (lambda: swath(radius_km=-3.0), r"SwathOp: field 'radius_km' has value -3.0"),
    (lambda: swath(radius_km=[10.0, 0.0]), r"SwathOp: field 'radius_km' has value 0.0 at index 1"),
    (lambda: swath(error=0.0), r"SwathOp: field 'error' has value 0.0"),
    (lambda: swath(kernel="box"), r"SwathOp: field 'kernel' has value 'box'"),
    (lambda: swath(method="cubic"), r"SwathOp: field 'method' has value 'cubic'"),
    (lambda: swath(zenith_deg=[95.0, 0.0]), r"SwathOp: field 'zenith_deg' has value 95.0"),
    (lambda: radiance(channels=[]), r"RadianceOp: field 'channels' is empty"),
    (lambda: radiance(channels=[99]), r"RadianceOp: field 'channels' has value 99"),
    (lambda: radiance(channels=[5, "amsua-5"]), r"RadianceOp: field 'channels' lists channel 'amsua-5' twice"),
    (
        lambda: radiance(values=[[230.0]]),
        r"RadianceOp: field 'values' must have shape \[N, 2\] \(one column per channel",
    ),
    (lambda: radiance(channel_correlation=1.0), r"RadianceOp: field 'channel_correlation' has value 1.0"),
    (lambda: radiance(surface_pressure_hpa=-1.0), r"RadianceOp: field 'surface_pressure_hpa' has value -1.0"),
    (lambda: radiance(lat=[-91.0]), r"RadianceOp: field 'lat' has value -91.0"),
]


@pytest.mark.parametrize(("make", "message"), BAD, ids=[m for _, m in BAD])
def test_bad_inputs_are_refused_with_clear_messages(make: Callable[[], object], message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        make()


@pytest.mark.parametrize(
    ("op", "message"),
    [
        (lambda: swath(variables=["relative_humidity@500"]), r"SwathOp: variable 'relative_humidity' is not modelled"),
        (lambda: swath(variables=["temperature@300"]), r"SwathOp: level 300 hPa of 'temperature' is not modelled"),
        (lambda: swath(variables=["temperature"]), r"SwathOp: variable 'temperature' is on pressure levels"),
        (lambda: swath(time=[T0, np.datetime64("2020-01-02")]), r"SwathOp: field 'time' has value 2020-01-02"),
    ],
)
def test_bad_inputs_at_prepare(op: Callable[[], SwathOp], message: str) -> None:
    grid, spec, times = tiny_setup()
    with pytest.raises(ValueError, match=message):
        op().prepare(grid, spec, times)


def test_plugin_registers_both_operators() -> None:
    from appa_core.plugins import Registry
    from appa_op_satellite import plugin

    registry = Registry()
    registry.register_plugin(plugin, name="satellite")
    assert registry.operator("satellite:swath") is SwathOp
    assert registry.operator("satellite:radiance") is RadianceOp
    comp = registry.component("operator", "satellite:radiance")
    op, grid, spec, times = comp.example()
    assert isinstance(op, RadianceOp)
    assert op.prepare(grid, spec, times)(state(grid, spec, times, 1)).shape == (1, op.size)
