"""Radiance proxy: normalisation (isothermal atmosphere), peaks of the weighting functions, presets, noise."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from _satellite_setup import state, tiny_setup, tiny_swath
from scipy.integrate import quad

from appa_core.obs.errors import CorrelatedGaussian, DiagonalGaussian, Huber
from appa_core.spec import StateSpec
from appa_op_satellite import AMSUA, BlockCorrelatedGaussian, RadianceChannel, RadianceOp, amsua_channels, layer_weights

WB2_LEVELS = (50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000)
CHANNELS = [
    RadianceChannel(name="t", peak_hpa=300.0),
    RadianceChannel(name="t3", peak_hpa=600.0, exponent=3.0),
    RadianceChannel(name="g", peak_hpa=150.0, shape="gaussian", width=0.4),
]


@pytest.mark.parametrize("surface_variable", ["auto", None, "2m_temperature"])
@pytest.mark.parametrize("radius", [None, 900.0])
def test_isothermal_atmosphere_gives_its_temperature(surface_variable: str | None, radius: float | None) -> None:
    grid, spec, times = tiny_setup()
    base = RadianceOp.from_orbit(tiny_swath(), times, channels=amsua_channels((4, 5, 6, 7, 8), levels=spec.levels))
    op = RadianceOp(
        lat=base.lat,
        lon=base.lon,
        time=base.time,
        values=base._y,
        channels=base.channels,
        zenith_deg=base.zenith_deg,
        radius_km=radius,
        surface_variable=surface_variable,
    ).prepare(grid, spec, times)
    x = torch.full((2, times.size, spec.n_channels, *grid.shape), 231.7, dtype=torch.float64)
    x[:, :, spec.indices("u_component_of_wind")] = 55.0  # other variables must not leak in
    np.testing.assert_allclose(op(x).numpy(), 231.7, rtol=0, atol=1e-11)
    k, names = op.weights()
    np.testing.assert_allclose(k.sum(-1), 1.0, atol=1e-14)
    assert (names[-1] == "2m_temperature") == (surface_variable is not None)
    assert all(n.startswith(("temperature@", "2m_temperature")) for n in names)


@pytest.mark.parametrize("channel", [*CHANNELS, *AMSUA.values()], ids=lambda c: c.name)
@pytest.mark.parametrize("zenith", [0.0, 50.0])
def test_weighting_function_peaks_at_configured_pressure(channel: RadianceChannel, zenith: float) -> None:
    sec = 1 / math.cos(math.radians(zenith))
    p = np.exp(np.linspace(np.log(0.1), np.log(1100.0), 200001))
    k = channel.weighting_function(p, sec)
    expected = channel.peak_hpa * math.cos(math.radians(zenith)) ** (1 / channel.exponent)
    assert p[np.argmax(k)] == pytest.approx(expected, rel=1e-3)
    if zenith == 0.0:
        assert p[np.argmax(k)] == pytest.approx(channel.peak_hpa, rel=1e-3)
    # K = -d tau / d ln p, so its integral over ln p up to p_s plus tau(p_s) is 1
    integral, _ = quad(lambda s: float(channel.weighting_function(np.exp(s), sec)), -30, math.log(1013.25), limit=200)
    assert integral + float(channel.transmittance(1013.25, sec)) == pytest.approx(1.0, abs=1e-7)
    top, bottom = channel.half_maximum_layer()
    if zenith == 0.0:
        kmax = k.max()
        np.testing.assert_allclose(channel.weighting_function(np.array([top, bottom])), kmax / 2, rtol=1e-6)


def test_discrete_weights_peak_at_the_nearest_level() -> None:
    levels = np.exp(np.linspace(np.log(5.0), np.log(1000.0), 120))
    k, k_s = layer_weights(CHANNELS, levels[::-1].tolist(), sec_zenith=1.0)  # levels in any order
    np.testing.assert_allclose(k.sum(-1) + k_s, 1.0, atol=1e-14)
    for c, ch in enumerate(CHANNELS):
        peak_level = levels[::-1][np.argmax(k[0, c])]
        assert abs(math.log(peak_level / ch.peak_hpa)) <= 0.5 * math.log(levels[1] / levels[0]) + 1e-12
    # off nadir the peak rises: p_c (cos zeta)^(1/m)
    k60, _ = layer_weights(CHANNELS[:1], levels.tolist(), sec_zenith=2.0)
    assert levels[np.argmax(k60[0, 0])] == pytest.approx(300.0 * 0.5**0.5, rel=0.03)


def test_surface_weight_is_transmittance_at_surface() -> None:
    ch = AMSUA[4]
    k, k_s = layer_weights([ch], WB2_LEVELS, surface_pressure_hpa=1013.25)
    assert k_s[0, 0] == pytest.approx(math.exp(-((1013.25 / 900.0) ** 2)), rel=1e-12)
    # without a surface term it goes to the lowest level (1000 hPa)
    k2, k2_s = layer_weights([ch], WB2_LEVELS, surface=False)
    assert k2_s[0, 0] == 0.0
    assert k2[0, 0, -1] == pytest.approx(k[0, 0, -1] + k_s[0, 0], rel=1e-12)


def test_linear_profile_in_log_pressure() -> None:
    # T = a + b ln p: the proxy is a + b E_K[ln p] with E_K over the discrete weights, in (ln p_top, ln p_bottom)
    grid, _, times = tiny_setup()
    spec = StateSpec(atmospheric=("temperature",), levels=WB2_LEVELS)
    op = RadianceOp(lat=[10.0], lon=[20.0], time=[times[1]], values=[[250.0] * 5], channels=[5, 6, 7, 8, 9]).prepare(
        grid, spec, times
    )
    lnp = torch.log(torch.tensor(WB2_LEVELS, dtype=torch.float64))
    x = (150.0 + 15.0 * lnp)[None, None, :, None, None].expand(1, times.size, -1, *grid.shape).contiguous()
    tb = op(x)[0].numpy()
    k, _ = op.weights()
    np.testing.assert_allclose(tb, 150.0 + 15.0 * (k[0] @ lnp.numpy()), atol=1e-10)
    assert np.all(np.diff(tb) < 0)  # higher-peaking channels see colder (lower ln p) air


def test_amsua_presets_follow_levels() -> None:
    assert [c.name for c in amsua_channels(range(4, 15), levels=WB2_LEVELS)] == [f"amsua-{n}" for n in range(4, 11)]
    assert [c.name for c in amsua_channels(range(4, 15), levels=(500, 850))] == ["amsua-4", "amsua-5", "amsua-6"]
    assert [c.peak_hpa for c in amsua_channels((5, 6, 7, 8, 9))] == [700.0, 400.0, 250.0, 180.0, 90.0]


def test_channel_without_model_levels_is_refused() -> None:
    grid, spec, times = tiny_setup()
    op = RadianceOp(lat=[0.0], lon=[0.0], time=[times[0]], values=[[220.0]], channels=[13])
    with pytest.raises(ValueError, match=r"RadianceOp: channel 'amsua-13' \(peak 5 hPa\) has no model level"):
        op.prepare(grid, spec, times)
    spec_no_t = StateSpec(surface=("2m_temperature",), atmospheric=("geopotential",), levels=(500,))
    op5 = RadianceOp(lat=[0.0], lon=[0.0], time=[times[0]], values=[[220.0]], channels=[5])
    with pytest.raises(ValueError, match=r"RadianceOp: field 'temperature_variable' has value 'temperature'"):
        op5.prepare(grid, spec_no_t, times)
    op_sfc = RadianceOp(
        lat=[0.0], lon=[0.0], time=[times[0]], values=[[220.0]], channels=[5], surface_variable="skin_temperature"
    )
    with pytest.raises(ValueError, match=r"RadianceOp: field 'surface_variable' has value 'skin_temperature'"):
        op_sfc.prepare(grid, spec, times)


def test_default_noise_is_correlated_across_channels() -> None:
    _, spec, times = tiny_setup()
    op = RadianceOp.from_orbit(tiny_swath(), times, channels=[4, 5, 6], channel_correlation=0.3)
    noise = op.noise
    assert isinstance(noise, BlockCorrelatedGaussian) and noise.size == op.size
    block = noise.dense_cov()[:3, :3].numpy()
    sd = np.array([0.25, 0.25, 0.25])
    np.testing.assert_allclose(block, sd[:, None] * sd[None] * 0.3 ** np.abs(np.subtract.outer(range(3), range(3))))
    # identical to the core's dense CorrelatedGaussian on a small problem
    small = BlockCorrelatedGaussian(noise.block_cov, 5)
    dense = CorrelatedGaussian(cov=small.dense_cov())
    r = torch.randn(4, 15, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(small.log_prob(r), dense.log_prob(r))
    torch.testing.assert_close(small.score(r), dense.score(r))
    w = torch.rand(4, 15, dtype=torch.float64) + 0.5
    torch.testing.assert_close(small.cov_matvec(r, w), dense.cov_matvec(r, w))
    torch.testing.assert_close(small.variance(), dense.variance())
    # sample covariance of the blocks
    e = small.sample((20000,), generator=torch.Generator().manual_seed(1)).reshape(-1, 3)
    np.testing.assert_allclose(np.cov(e.numpy().T), block, atol=0.004)
    # alternatives
    assert isinstance(
        RadianceOp.from_orbit(tiny_swath(), times, channels=[5], channel_correlation=0.0).noise, DiagonalGaussian
    )
    assert isinstance(RadianceOp.from_orbit(tiny_swath(), times, channels=[5, 6], noise=Huber(0.5)).noise, Huber)
    assert spec.n_channels == 9


def test_simulated_radiances_are_h_of_truth_plus_noise() -> None:
    grid, spec, times = tiny_setup()
    truth = state(grid, spec, times, 1)[0]
    chans = amsua_channels((5, 6, 7), levels=spec.levels)
    exact = RadianceOp.from_orbit(
        tiny_swath(),
        times,
        channels=chans,
        truth=truth,
        grid=grid,
        spec=spec,
        generator=torch.Generator().manual_seed(3),
    )
    assert exact.prepared
    clean = exact.simulate(truth, grid, spec, times, noise=False)
    resid = (exact.values - clean.values).reshape(-1, 3)
    assert resid.std().item() == pytest.approx(0.25, rel=0.15)
    torch.testing.assert_close(clean(truth[None].clone()), clean.values[None])
