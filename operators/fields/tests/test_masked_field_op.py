"""Physics and validation tests of ``MaskedFieldOp``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from appa_core.grid import Grid
from appa_core.spec import StateSpec
from appa_op_fields import DEFAULT_ERRORS, MaskedFieldOp

SPEC = StateSpec(surface=("2m_temperature", "mean_sea_level_pressure"), atmospheric=("temperature",), levels=(850, 500))
GRID = Grid.equiangular(6, 12, poles=False)
WINDOW = np.array(["2020-01-01T00", "2020-01-01T06", "2020-01-01T12"], dtype="datetime64[ns]")


def _state(batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, SPEC.n_channels, *GRID.shape, generator=g, dtype=torch.float64)


def _check_linear(op: MaskedFieldOp, x: torch.Tensor) -> None:
    A = op.matrix()
    ref = (A @ x.reshape(x.shape[0], -1).numpy().T).T + op.offset()
    np.testing.assert_allclose(op(x).numpy(), ref, atol=1e-10)
    v = torch.randn(x.shape[0], op.size, dtype=torch.float64)
    xr_ = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad((op(xr_) * v).sum(), xr_)
    np.testing.assert_allclose(g.reshape(x.shape[0], -1).numpy(), (A.T @ v.numpy().T).T, atol=1e-12)
    for b in range(x.shape[0]):
        torch.testing.assert_close(op(x)[b : b + 1], op(x[b : b + 1]))


def test_observing_the_whole_field_is_the_identity() -> None:
    x = _state()
    op = MaskedFieldOp.full(x[0].numpy(), SPEC, WINDOW).prepare(GRID, SPEC, WINDOW)
    assert op.size == x[0].numel()
    torch.testing.assert_close(op(x)[0], op.values)
    A = op.matrix()
    assert A.nnz == op.size and (abs(A - _eye(op.size)) > 0).nnz == 0
    np.testing.assert_allclose(op.noise.variance()[: 6 * 12].numpy(), DEFAULT_ERRORS["2m_temperature"] ** 2)


def _eye(n: int):
    import scipy.sparse as sp

    return sp.identity(n, format="csr")


def test_region_mask_selects_points_in_c_order_with_metadata() -> None:
    x = _state(batch=2)
    region = np.zeros(GRID.shape, dtype=bool)
    region[1:3, 10:] = True  # a box across the 0/360 seam's western side
    region[4, 0] = True
    data = x[0, 1:2, [0, 3]].numpy()  # time 06, channels 2m_temperature and temperature@500
    op = MaskedFieldOp(
        data=data, channels=["2m_temperature", ("temperature", 500)], time=["2020-01-01T06"], mask=region
    ).prepare(GRID, SPEC, WINDOW)
    assert op.size == 2 * 5
    expected = torch.cat([x[:, 1, 0][:, torch.as_tensor(region)], x[:, 1, 3][:, torch.as_tensor(region)]], 1)
    torch.testing.assert_close(op(x), expected)
    meta = op.metadata()
    assert meta["channel"].tolist() == ["2m_temperature"] * 5 + ["temperature@500"] * 5
    assert meta["row"].tolist() == [1, 1, 2, 2, 4] * 2 and meta["col"].tolist() == [10, 11, 10, 11, 0] * 2
    _check_linear(op, x)


def test_weight_mask_scales_the_noise_and_zero_weight_drops() -> None:
    data = np.full((1, 1, *GRID.shape), 280.0)
    weight = np.zeros(GRID.shape)
    weight[0, :4] = [1.0, 4.0, 0.25, 0.0]
    op = MaskedFieldOp(data=data, channels=["2m_temperature"], time=WINDOW[:1], mask=weight, error=2.0)
    assert op.size == 3
    np.testing.assert_allclose(op.noise.variance().numpy(), [4.0, 1.0, 16.0])  # (2 / sqrt(w))^2


def test_finite_mask_skips_missing_values_and_nan_inside_a_mask_is_refused() -> None:
    data = np.full((1, 1, *GRID.shape), 1.0)
    data[0, 0, 2, 3] = np.nan
    op = MaskedFieldOp(data=data, channels=["2m_temperature"], time=WINDOW[:1], mask="finite")
    assert op.size == GRID.nlat * GRID.nlon - 1
    with pytest.raises(ValueError, match=r"MaskedFieldOp: field 'data' has value nan at index \(0, 0, 2, 3\)"):
        MaskedFieldOp(data=data, channels=["2m_temperature"], time=WINDOW[:1])


def test_coarse_grained_observations_are_area_weighted_block_means() -> None:
    x = _state(seed=3)
    ky, kx = 2, 3
    coarse = np.zeros((1, 1, GRID.nlat // ky, GRID.nlon // kx))
    op = MaskedFieldOp(data=coarse, channels=["temperature@850"], time=["2020-01-01T12"], coarsen=(ky, kx)).prepare(
        GRID, SPEC, WINDOW
    )
    field = x[0, 2, SPEC.index("temperature", 850)].numpy()
    area = GRID.area_weights()[:, None] * np.ones(GRID.shape)
    blocks = (field * area).reshape(3, ky, 4, kx).sum((1, 3)) / area.reshape(3, ky, 4, kx).sum((1, 3))
    np.testing.assert_allclose(op(x)[0].numpy(), blocks.reshape(-1), atol=1e-12)
    const = torch.full_like(x, 7.5)
    np.testing.assert_allclose(op(const)[0].numpy(), 7.5, atol=1e-12)
    assert op.matrix().nnz == 12 * ky * kx
    _check_linear(op, _state(batch=2, seed=4))


def test_time_interpolation_is_exact_for_fields_linear_in_time() -> None:
    base = _state(seed=5)[:, :1]
    x = base + 10.0 * torch.arange(3, dtype=torch.float64).view(1, 3, 1, 1, 1)  # x(t) = base + 10 t / 6 h
    times = np.array(["2020-01-01T01:30", "2020-01-01T10"], dtype="datetime64[ns]")
    op = MaskedFieldOp(data=np.zeros((2, 1, *GRID.shape)), channels=["mean_sea_level_pressure"], time=times).prepare(
        GRID, SPEC, WINDOW
    )
    c = SPEC.index("mean_sea_level_pressure")
    expected = torch.cat([base[0, 0, c].reshape(-1) + 2.5, base[0, 0, c].reshape(-1) + 10.0 * 10 / 6])
    torch.testing.assert_close(op(x)[0], expected)


def test_xarray_input_is_read_by_name_in_any_order() -> None:
    x = _state(seed=6)
    t500 = x[0, :2, SPEC.index("temperature", 500)].numpy()
    t850 = x[0, :2, SPEC.index("temperature", 850)].numpy()
    lon180 = np.where(GRID.lon >= 180, GRID.lon - 360, GRID.lon)  # -180..180 longitudes, unsorted
    da = xr.DataArray(
        np.stack([t500, t850], 1)[:, :, ::-1, :],  # level first 500 then 850, latitude ascending
        dims=("time", "level", "latitude", "longitude"),
        coords={"time": WINDOW[:2], "level": [500, 850], "latitude": GRID.lat[::-1], "longitude": lon180},
        name="temperature",
    ).transpose("latitude", "time", "longitude", "level")
    op = MaskedFieldOp(data=da).prepare(GRID, SPEC, WINDOW)
    assert list(op.channels) == ["temperature@500", "temperature@850"]
    torch.testing.assert_close(op(x)[0], op.values)
    ds = xr.Dataset({"temperature": da, "2m_temperature": da.isel(level=0, drop=True).rename("2m_temperature")})
    op2 = MaskedFieldOp(data=ds).prepare(GRID, SPEC, WINDOW)
    assert list(op2.channels) == ["temperature@500", "temperature@850", "2m_temperature"]
    # a DataArray mask is aligned the same way
    mask = xr.zeros_like(da.isel(level=0, time=0, drop=True), dtype=bool)
    mask.loc[{"latitude": GRID.lat[0]}] = True
    op3 = MaskedFieldOp(data=da, mask=mask).prepare(GRID, SPEC, WINDOW)
    assert op3.size == 2 * 2 * GRID.nlon and set(op3.metadata()["row"].tolist()) == {0}
    torch.testing.assert_close(op3(x)[0], op3.values)


BAD_CONSTRUCTION = [
    ({"data": np.full((1, 1, 6, 12), np.nan)}, r"MaskedFieldOp: field 'data' has value nan at index \(0, 0, 0, 0\)"),
    ({"data": np.zeros((6, 12))}, r"MaskedFieldOp: field 'data' must be \[T', C', H', W'\]"),
    ({"channels": ["2m_temperature", "temperature@500"]}, r"MaskedFieldOp: field 'channels' has 2 values"),
    ({"channels": ["temperature@@5"]}, r"MaskedFieldOp: field 'channels' has value 'temperature@@5' at index 0"),
    ({"time": WINDOW[:2]}, r"MaskedFieldOp: field 'time' has 2 values but field 'data' has 1"),
    ({"mask": np.zeros((6, 12), dtype=bool)}, r"MaskedFieldOp: field 'mask' selects no entries"),
    ({"mask": -np.ones((6, 12))}, r"MaskedFieldOp: field 'mask' has value -1\.0 at index 0"),
    ({"mask": np.ones((5, 12))}, r"MaskedFieldOp: field 'mask' has shape \(5, 12\)"),
    ({"error": 0.0}, r"MaskedFieldOp: field 'error' has value 0\.0 at index 0"),
    ({"coarsen": 0}, r"MaskedFieldOp: field 'coarsen' has value 0"),
    ({"data": np.zeros((0, 1, 6, 12)), "time": WINDOW[:0]}, r"MaskedFieldOp: field 'data' is empty"),
]


def _kw(**kw: object) -> dict[str, object]:
    args: dict[str, object] = {"data": np.zeros((1, 1, 6, 12)), "channels": ["2m_temperature"], "time": WINDOW[:1]}
    args.update(kw)
    return args


@pytest.mark.parametrize(("kw", "match"), BAD_CONSTRUCTION)
def test_bad_construction_is_refused(kw: dict[str, object], match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        MaskedFieldOp(**_kw(**kw))  # type: ignore[arg-type]


BAD_PREPARE = [
    ({"channels": ["ozone"], "error": 1.0}, r"MaskedFieldOp: field 'channels' has value 'ozone' at index 0"),
    ({"channels": ["temperature@300"]}, r"MaskedFieldOp: field 'channels' has value 'temperature@300' at index 0"),
    ({"channels": ["temperature"]}, r"level None of 'temperature' is not modelled"),
    ({"channels": ["2m_temperature@500"]}, r"'2m_temperature' is a surface variable"),
    ({"time": ["2020-01-02T00"]}, r"MaskedFieldOp: field 'time' has value 2020-01-02T00.* outside the window"),
    ({"data": np.zeros((1, 1, 5, 12))}, r"MaskedFieldOp: field 'data' has grid shape \(5, 12\)"),
    ({"data": np.zeros((1, 1, 3, 3)), "coarsen": 4}, r"MaskedFieldOp: field 'data' has grid shape \(3, 3\)"),
    ({"lat": GRID.lat + 1.0, "lon": GRID.lon}, r"MaskedFieldOp: field 'lat' .* differs from the grid"),
]


@pytest.mark.parametrize(("kw", "match"), BAD_PREPARE)
def test_bad_input_is_refused_at_prepare(kw: dict[str, object], match: str) -> None:
    op = MaskedFieldOp(**_kw(**kw))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=match):
        op.prepare(GRID, SPEC, WINDOW)
    assert not op.prepared


def test_example_is_valid_and_prepares() -> None:
    op, grid, spec, times = MaskedFieldOp.example()
    op.prepare(grid, spec, times)
    x = torch.full((2, times.size, spec.n_channels, *grid.shape), 280.0, dtype=torch.float64)
    torch.testing.assert_close(op(x), torch.full((2, op.size), 280.0, dtype=torch.float64))
