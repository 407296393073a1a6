"""Autoencoder, latent denoiser and presets: shapes, periodicity, preconditioning limits, autograd."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from appa_core.diffusion.precondition import edm_coefficients
from appa_core.nn.autoencoder import Autoencoder, AutoencoderConfig, SpherePad, autoencoder_loss, level_weights
from appa_core.nn.denoiser import DenoiserConfig, LatentDenoiser
from appa_core.nn.presets import build, count_parameters, get_preset, main_params

torch.set_num_threads(1)


def _randomize(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Replace zero-initialised weights by random ones so that every path carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.abs().max() == 0:
                p.copy_(std * torch.randn(p.shape, generator=g))


def _tiny_ae(height: int = 16, width: int = 32) -> Autoencoder:
    torch.manual_seed(0)
    cfg = AutoencoderConfig(in_channels=3, latent_channels=4, channels=(8, 16, 16), blocks=(0, 1, 1))
    return Autoencoder(cfg, height, width).eval()


def test_sphere_pad_rows_beyond_the_pole_are_the_opposite_meridian() -> None:
    x = torch.arange(2 * 4 * 8, dtype=torch.float32).reshape(1, 2, 4, 8)
    y = SpherePad(2)(x)
    assert y.shape == (1, 2, 8, 12)
    core = y[..., 2:-2]
    # row above the north pole row 0 is row 0 shifted by 180 degrees (4 columns), then row 1
    assert torch.equal(core[..., 1, :], torch.roll(x[..., 0, :], 4, dims=-1))
    assert torch.equal(core[..., 0, :], torch.roll(x[..., 1, :], 4, dims=-1))
    assert torch.equal(core[..., -1, :], torch.roll(x[..., 2, :], 4, dims=-1))
    assert torch.equal(core[..., 2:-2, :], x)
    # longitude is circular
    assert torch.equal(y[..., 2:-2, :2], x[..., -2:])
    assert torch.equal(y[..., 2:-2, -2:], x[..., :2])


def test_autoencoder_shapes_and_latent_saturation() -> None:
    ae = _tiny_ae()
    x = torch.randn(2, 3, 16, 32)
    z = ae.encode(x)
    assert z.shape == (2, 4, 4, 8) and ae.latent_shape == (4, 4, 8)
    assert z.abs().max() < 5.0
    assert ae.decode(z).shape == x.shape
    with pytest.raises(ValueError, match=r"Autoencoder\.encode"):
        ae.encode(torch.randn(2, 3, 16, 30))


def test_autoencoder_odd_height_is_padded_and_cropped() -> None:
    ae = _tiny_ae(height=17, width=32)
    x = torch.randn(1, 3, 17, 32)
    assert ae.encode(x).shape == (1, 4, 5, 8)
    assert ae(x).shape == x.shape


def test_autoencoder_rolling_in_longitude_rolls_the_output() -> None:
    ae = _tiny_ae()
    _randomize(ae)
    x = torch.randn(2, 3, 16, 32)
    f = ae.config.factor
    with torch.no_grad():
        z, y = ae.encode(x), ae(x)
        zr, yr = ae.encode(torch.roll(x, f, dims=-1)), ae(torch.roll(x, f, dims=-1))
    torch.testing.assert_close(zr, torch.roll(z, 1, dims=-1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(yr, torch.roll(y, f, dims=-1), atol=1e-5, rtol=1e-5)
    assert (yr - y).abs().max() > 1e-3  # the output does depend on longitude


def test_autoencoder_loss_is_latitude_weighted() -> None:
    w = torch.tensor([[2.0], [0.0]])
    x = torch.zeros(1, 1, 2, 3)
    x_hat = torch.zeros(1, 1, 2, 3)
    x_hat[..., 1, :] = 10.0  # error only where the weight is 0
    assert autoencoder_loss(x_hat, x, w) == 0
    x_hat[..., 0, 0] = 1.0
    assert autoencoder_loss(x_hat, x, w) == pytest.approx(2.0 / 6)


def test_level_weights_mean_one_and_pressure_proportional() -> None:
    spec = get_preset("demo").spec
    w = level_weights(spec)
    assert w.shape == (24,) and w.mean() == pytest.approx(1.0, abs=1e-6)
    t850, t250 = spec.index("temperature", 850), spec.index("temperature", 250)
    assert float(w[t850] / w[t250]) == pytest.approx(850 / 250, rel=1e-5)


def _tiny_denoiser(window: int = 4) -> LatentDenoiser:
    torch.manual_seed(0)
    cfg = DenoiserConfig(
        latent_channels=4,
        latent_height=4,
        latent_width=8,
        window=window,
        patch=2,
        width=32,
        depth=2,
        heads=2,
        lon_frequencies=3,
        time_frequencies=2,
    )
    den = LatentDenoiser(cfg).eval()
    _randomize(den)
    return den


@pytest.mark.parametrize("steps", [1, 3, 4])
def test_denoiser_shapes_for_every_window_length(steps: int) -> None:
    den = _tiny_denoiser()
    z = torch.randn(2, steps, 4, 4, 8)
    tf = torch.randn(2, steps, 4)
    assert den(z, torch.zeros(2), tf).shape == z.shape
    assert den.denoise(z, torch.tensor(1.0), None).shape == z.shape


def test_denoiser_rejects_too_long_windows() -> None:
    den = _tiny_denoiser()
    with pytest.raises(ValueError, match="LatentDenoiser: window length T=5"):
        den(torch.randn(1, 5, 4, 4, 8), torch.zeros(1))


def test_denoiser_is_equivariant_to_longitude_rolls_by_whole_patches() -> None:
    den = _tiny_denoiser()
    z = torch.randn(2, 3, 4, 4, 8)
    with torch.no_grad():
        out = den(z, torch.tensor([0.1, -0.3]), None)
        rolled = den(torch.roll(z, 2, dims=-1), torch.tensor([0.1, -0.3]), None)
    torch.testing.assert_close(rolled, torch.roll(out, 2, dims=-1), atol=1e-5, rtol=1e-5)


def test_denoiser_depends_on_time_features_and_noise_level() -> None:
    den = _tiny_denoiser()
    z = torch.randn(1, 2, 4, 4, 8)
    with torch.no_grad():
        a = den(z, torch.zeros(1), torch.zeros(1, 2, 4))
        b = den(z, torch.zeros(1), torch.ones(1, 2, 4))
        c = den(z, torch.ones(1), torch.zeros(1, 2, 4))
    assert (a - b).abs().max() > 1e-4 and (a - c).abs().max() > 1e-4


def test_preconditioning_formula_and_limits() -> None:
    den = _tiny_denoiser().double()
    z = torch.randn(2, 2, 4, 4, 8, dtype=torch.float64)
    with torch.no_grad():
        # formula at a moderate noise level
        sigma = torch.tensor([0.5, 3.0], dtype=torch.float64)
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma)
        s = (-1, 1, 1, 1, 1)
        expected = c_skip.view(s) * z + c_out.view(s) * den(z * c_in.view(s), c_noise)
        torch.testing.assert_close(den.denoise(z, sigma), expected)
        # sigma -> 0: identity, error O(sigma)
        small = den.denoise(z, torch.tensor(1e-7, dtype=torch.float64))
        assert (small - z).abs().max() < 1e-5
        # sigma -> inf: D(sigma u, sigma) -> F(u, c_noise) bounded, independent of the input scale sigma
        big = torch.tensor(1e8, dtype=torch.float64)
        d_big = den.denoise(big * z, big)
        _, _, _, cn = edm_coefficients(big)
        torch.testing.assert_close(d_big, den(z, cn.expand(2)), atol=1e-6, rtol=1e-6)
        assert d_big.abs().max() < 100


def test_denoiser_supports_jvp_and_double_backward() -> None:
    den = _tiny_denoiser().double()
    den.requires_grad_(False)
    z = torch.randn(1, 2, 4, 4, 8, dtype=torch.float64)
    v = torch.randn_like(z)
    sigma = torch.tensor(0.7, dtype=torch.float64)
    f = lambda x: den.denoise(x, sigma)  # noqa: E731
    _, jv = torch.func.jvp(f, (z,), (v,))
    eps = 1e-6
    fd = (f(z + eps * v) - f(z - eps * v)) / (2 * eps)
    torch.testing.assert_close(jv, fd, atol=1e-6, rtol=1e-5)
    # vjp, and a gradient of a vjp (double backward)
    x = z.clone().requires_grad_(True)
    out = f(x)
    (g,) = torch.autograd.grad(out, x, v, create_graph=True)
    assert torch.allclose((g * z).sum(), (v * torch.func.jvp(f, (z,), (z,))[1]).sum(), atol=1e-8)
    (gg,) = torch.autograd.grad(g.square().sum(), x)
    assert torch.isfinite(gg).all() and gg.abs().max() > 0


def test_first_order_only_keeps_the_fused_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under autograd outside of training the denoiser runs the math attention kernel (forward-mode AD and double
    backward work, above); inside ``first_order_only`` (the guidance's calls) it keeps the fused kernel, with the same
    output and VJP to float64 rounding, a backward after the context has ended, and ``torch.func.jvp`` refused."""
    import appa_core.nn.denoiser as denoiser_module
    from appa_core.nn import first_order_only

    den = _tiny_denoiser().double().eval()
    den.requires_grad_(False)
    math_kernel = []
    sdpa_kernel = denoiser_module.sdpa_kernel
    monkeypatch.setattr(denoiser_module, "sdpa_kernel", lambda *a: (math_kernel.append(a), sdpa_kernel(*a))[1])
    z = torch.randn(2, 4, 4, 4, 8, dtype=torch.float64)
    v = torch.randn_like(z)
    sigma = torch.tensor([0.7, 2.0], dtype=torch.float64)
    x = z.clone().requires_grad_(True)
    out = den.denoise(x, sigma)
    assert len(math_kernel) == 2  # one per block
    (g,) = torch.autograd.grad(out, x, v)
    with first_order_only():
        x_f = z.clone().requires_grad_(True)
        out_f = den.denoise(x_f, sigma)
        assert len(math_kernel) == 2  # no math kernel inside
        with pytest.raises((NotImplementedError, RuntimeError)):
            torch.func.jvp(lambda zz: den.denoise(zz, sigma), (z,), (v,))
    (g_f,) = torch.autograd.grad(out_f, x_f, v)  # the backward after the context
    torch.testing.assert_close(out_f, out, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(g_f, g, atol=1e-12, rtol=1e-12)
    den.denoise(z.clone().requires_grad_(True), sigma)
    assert len(math_kernel) == 4  # the context is over: the math kernel again, once per block


def test_presets_build_and_paper_counts() -> None:
    ae, _ = build("tiny")
    tiny = get_preset("tiny")
    assert ae.latent_shape == tiny.autoencoder.latent_shape(*tiny.grid[:2])
    counts = count_parameters("paper")
    assert 330e6 < counts["autoencoder"] < 350e6
    assert 215e6 < counts["denoiser"] < 235e6
    assert counts["total"] == counts["autoencoder"] + counts["denoiser"]
    assert counts["encoder"] + counts["decoder"] == counts["autoencoder"]
    demo = count_parameters("demo")
    assert demo["encoder"] + demo["decoder"] == demo["autoencoder"]
    # ships as a few MB (2.45 M parameters since the 24x48x24 latent and the 6-layer denoiser: 9.8 MB in float32)
    assert demo["total"] < 3e6


def test_params_command_prints_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main_params(["--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "preset paper" in out and "autoencoder" in out and "denoiser" in out
    assert math.isclose(
        float(out.split("total")[1].split("M")[0]), count_parameters("paper")["total"] / 1e6, abs_tol=0.01
    )


@pytest.mark.parametrize(
    ("height", "static"),
    [(16, 0), (14, 0), (16, 2)],  # plain; rows padded and cropped; static fields at both resolutions
)
def test_linearize_decode_equals_forward_mode_ad(height: int, static: int) -> None:
    """``Autoencoder.linearize_decode``: the primal is ``decode(z)`` and the tangent map is ``torch.func.jvp``'s, to
    float64 rounding, for several directions from one linearization."""
    torch.manual_seed(0)
    cfg = AutoencoderConfig(
        in_channels=3, latent_channels=4, channels=(8, 16, 16), blocks=(0, 1, 1), static_channels=static
    )
    fields = torch.randn(static, height, 32) if static else None
    ae = Autoencoder(cfg, height, 32, static=fields).double().eval()
    _randomize(ae, 1)
    ae.requires_grad_(False)
    z = torch.randn(2, *ae.latent_shape, dtype=torch.float64)
    x, tangent = ae.linearize_decode(z)
    torch.testing.assert_close(x, ae.decode(z), atol=1e-12, rtol=1e-12)
    for _ in range(3):
        v = torch.randn_like(z)
        ref = torch.func.jvp(ae.decode, (z,), (v,))[1]
        got = tangent(v)
        assert got.shape == (2, 3, height, 32)
        assert float((got - ref).abs().max() / ref.abs().max()) < 1e-12
    with pytest.raises(ValueError, match=r"Autoencoder\.linearize_decode: expected \[N, 4, 4, 8\]"):
        ae.linearize_decode(torch.randn(2, 3, 4, 8, dtype=torch.float64))
    # graph=True: the same primal and tangent map, and the primal keeps its graph: its VJP is decode's
    zg = z.clone().requires_grad_(True)
    xg, tangent_g = ae.linearize_decode(zg, graph=True)
    assert not x.requires_grad and xg.requires_grad
    torch.testing.assert_close(xg.detach(), x, atol=0.0, rtol=0.0)
    g = torch.randn_like(x)
    got = torch.autograd.grad(xg, zg, g)[0]
    ref = torch.autograd.grad(ae.decode(zg), zg, g)[0]
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=1e-12)
    v = torch.randn_like(z)
    torch.testing.assert_close(tangent_g(v), tangent(v), atol=0.0, rtol=0.0)
    # the tangent map keeps values, not the primal's graph: no tensor it holds requires grad (else a guided call's
    # graph would live as long as the map)
    held = _tensors_held(tangent_g)
    assert held and not any(t.requires_grad for t in held)


def _tensors_held(fn: object, depth: int = 6) -> list[torch.Tensor]:
    """The tensors a function holds through its closure, partials, bound methods and lists (not module weights)."""
    if depth == 0:
        return []
    if isinstance(fn, torch.Tensor):
        return [fn]
    if isinstance(fn, list | tuple):
        return [t for f in fn for t in _tensors_held(f, depth - 1)]
    if isinstance(fn, functools.partial):
        return _tensors_held(fn.func, depth - 1) + _tensors_held(list(fn.args), depth - 1)
    cells = getattr(fn, "__closure__", None) or ()
    return [t for c in cells for t in _tensors_held(c.cell_contents, depth - 1)]
