"""Prior: contract shapes, save/load round trip, clear errors on malformed checkpoints, the bundled demo prior."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from _guided_helpers import tiny_latent_prior
from safetensors.torch import load_file, save_file

from appa_core.priors.base import DiffusionPrior
from appa_core.priors.latent import Prior

torch.set_num_threads(1)
TIMES = np.datetime64("2000-03-01T00", "ns") + np.arange(4) * np.timedelta64(6, "h")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Prior, Path]:
    prior = tiny_latent_prior()
    path = tmp_path_factory.mktemp("prior") / "tiny"
    prior.save(path)
    return prior, path


def test_prior_contract_shapes_and_dtypes() -> None:
    prior = tiny_latent_prior()
    assert isinstance(prior, DiffusionPrior)
    assert prior.window == 4 and prior.timestep == np.timedelta64(6, "h")
    assert prior.event_shape(3) == (3, 4, 8, 16)
    z = torch.randn(2, *prior.event_shape(3), dtype=torch.float64)
    out = prior.denoise(z, torch.tensor([0.5, 5.0]), TIMES[:3])
    assert out.shape == z.shape and out.dtype == torch.float64
    x = prior.decode(z)
    assert x.shape == (2, 3, 3, 16, 32) and x.dtype == torch.float64
    assert prior.encode(x).shape == z.shape
    # decode is physical units: around the stats' means
    assert abs(float(x[:, :, 0].mean()) - 250.0) < 20
    with pytest.raises(ValueError, match=r"Prior\.denoise: window length T=5 exceeds the prior's window K=4"):
        prior.denoise(torch.randn(1, *prior.event_shape(5)), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"Prior\.denoise: got 2 times"):
        prior.denoise(z, torch.tensor(1.0), TIMES[:2])
    with pytest.raises(ValueError, match=r"Prior\.decode"):
        prior.decode(torch.randn(2, 3, 4, 8))


def test_prior_denoise_uses_times_and_is_differentiable() -> None:
    prior = tiny_latent_prior()
    z = torch.randn(1, *prior.event_shape(2))
    a = prior.denoise(z, torch.tensor(1.0), TIMES[:2])
    b = prior.denoise(z, torch.tensor(1.0), TIMES[2:4])
    assert (a - b).abs().max() > 1e-6
    v = torch.randn_like(z)
    _, jv = torch.func.jvp(lambda u: prior.decode(prior.denoise(u, torch.tensor(1.0), TIMES[:2])), (z,), (v,))
    assert jv.shape == (1, 2, 3, 16, 32) and torch.isfinite(jv).all()


def test_save_load_round_trip_is_bit_exact(saved: tuple[Prior, Path]) -> None:
    prior, path = saved
    assert sorted(p.name for p in path.iterdir()) == [
        "autoencoder.safetensors",
        "config.json",
        "denoiser.safetensors",
        "stats.json",
    ]
    loaded = Prior.load(path)
    for a, b in ((prior.autoencoder, loaded.autoencoder), (prior.denoiser, loaded.denoiser)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(prior.latent_mean, loaded.latent_mean) and torch.equal(prior.latent_std, loaded.latent_std)
    np.testing.assert_array_equal(prior.stats.mean, loaded.stats.mean)
    assert loaded.grid == prior.grid and loaded.spec == prior.spec and loaded.window == prior.window
    z = torch.randn(2, *prior.event_shape(4))
    assert torch.equal(
        prior.denoise(z, torch.tensor([0.3, 3.0]), TIMES), loaded.denoise(z, torch.tensor([0.3, 3.0]), TIMES)
    )
    assert torch.equal(prior.decode(z), loaded.decode(z))


def test_fp16_save_loads_as_float32_close(tmp_path: Path) -> None:
    prior = tiny_latent_prior()
    prior.save(tmp_path, dtype=torch.float16)
    loaded = Prior.load(tmp_path)
    assert loaded.denoiser.embed_in.weight.dtype == torch.float32
    z = torch.randn(1, *prior.event_shape(2))
    torch.testing.assert_close(loaded.decode(z), prior.decode(z), atol=0.05, rtol=1e-3)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_malformed_checkpoints_raise_clear_errors(saved: tuple[Prior, Path], tmp_path: Path) -> None:
    _, src = saved
    with pytest.raises(FileNotFoundError, match=r"Prior.load: .* is not a directory"):
        Prior.load(tmp_path / "nope")
    # missing file
    d = _copy(src, tmp_path / "a")
    (d / "denoiser.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"Prior.load: missing file .*denoiser.safetensors"):
        Prior.load(d)
    # corrupted JSON
    d = _copy(src, tmp_path / "b")
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"Prior.load: file .*config.json.* is not valid JSON"):
        Prior.load(d)
    # wrong version and missing key
    d = _copy(src, tmp_path / "c")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "format_version": 99}))
    with pytest.raises(ValueError, match="key 'format_version' is 99"):
        Prior.load(d)
    del cfg["spec"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"Prior.load: file .*config.json.* has no key 'spec'"):
        Prior.load(d)
    # invalid latent stats
    d = _copy(src, tmp_path / "d")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "latent_std": [1.0]}))
    with pytest.raises(ValueError, match="key 'latent_std' is invalid"):
        Prior.load(d)
    # a weight missing, and a weight of the wrong shape
    d = _copy(src, tmp_path / "e")
    w = load_file(str(d / "autoencoder.safetensors"))
    key = sorted(w)[0]
    save_file({k: v for k, v in w.items() if k != key}, str(d / "autoencoder.safetensors"))
    with pytest.raises(ValueError, match=rf"Prior.load: file .*autoencoder.safetensors.* has no key '{key}'"):
        Prior.load(d)
    w[key] = torch.zeros(3)
    save_file(w, str(d / "autoencoder.safetensors"))
    with pytest.raises(ValueError, match=f"key '{key}' has shape \\[3\\]"):
        Prior.load(d)
    # not a safetensors file at all
    d = _copy(src, tmp_path / "f")
    (d / "denoiser.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match=r"Prior.load: file .*denoiser.safetensors.* is not a valid safetensors file"):
        Prior.load(d)
    # a config that does not match the weights (mismatched checkpoint)
    d = _copy(src, tmp_path / "g")
    cfg = json.loads((d / "config.json").read_text())
    cfg["denoiser"]["width"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"Prior.load: file .*denoiser.safetensors.* key .* has shape"):
        Prior.load(d)
    # stats for another spec
    d = _copy(src, tmp_path / "h")
    st = json.loads((d / "stats.json").read_text())
    (d / "stats.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"Prior.load: file .*stats.json.* is invalid"):
        Prior.load(d)
    assert st["format"] == "appa-normstats"


def test_bundled_demo_prior_loads_and_reconstructs() -> None:
    import importlib.resources

    from appa_core.data import DEMO_SPEC

    root = importlib.resources.files("appa_core") / "assets" / "demo_prior"
    size = sum(f.stat().st_size for f in Path(str(root)).iterdir())
    assert size < 8 * 2**20
    prior = Prior.demo()
    assert prior.spec == DEMO_SPEC and prior.grid.shape == (48, 96) and prior.window == 8
    assert prior.event_shape(8) == (8, 24, 24, 48)
    assert prior.autoencoder.config.static_channels == 5 and float(prior.autoencoder.static[3].max()) > 1.0  # km
    assert prior.timestep == np.timedelta64(6, "h")
    z = torch.randn(1, *prior.event_shape(2))
    x = prior.decode(z)
    assert x.shape == (1, 2, 24, 48, 96) and torch.isfinite(x).all()
    t2m = x[0, :, DEMO_SPEC.index("2m_temperature")]
    assert float(t2m.min()) > 200 and float(t2m.max()) < 340  # kelvin, plausible even from a random latent
    from appa_core.data.truth import truth_slice_resource

    if not truth_slice_resource().is_file():
        pytest.skip("no bundled truth slice to reconstruct")
    from appa_core.data import load_truth_slice
    from appa_core.state import dataset_to_tensor

    truth, _, _ = dataset_to_tensor(load_truth_slice(), DEMO_SPEC)
    truth = truth[:8][None]
    with torch.no_grad():
        rec = prior.decode(prior.encode(truth))
    err = prior.standardize(rec) - prior.standardize(truth)
    # standardized RMSE of the demo autoencoder: 0.03 on the held-out run (docs/training.md); 0.45 for 0.1's prior
    assert float(err.square().mean().sqrt()) < 0.06


def test_tampered_config_is_refused(saved: tuple[Prior, Path], tmp_path: Path) -> None:
    """Issue: a config.json with a 46-latitude grid beside 48-latitude weights, timestep_hours = 0, or an all-zero
    latent std loaded without a word."""
    _, src = saved
    cfg = json.loads((src / "config.json").read_text())
    lat = cfg["grid"]["lat"]
    cases = {
        "grid": ({"grid": {**cfg["grid"], "lat": lat[1:-1]}}, r"was trained for grid_shape 16x32, but config.json"),
        "timestep": ({"timestep_hours": 0}, r"key 'timestep_hours' is invalid: must be a positive number of hours"),
        "latent_std": ({"latent_std": [0.0] * len(cfg["latent_std"])}, r"key 'latent_std' is invalid: every value"),
    }
    for name, (change, message) in cases.items():
        d = _copy(src, tmp_path / name)
        (d / "config.json").write_text(json.dumps({**cfg, **change}))
        with pytest.raises(
            ValueError, match=r"^Prior\.load: file '.*/" + name + r"/\w+\.\w+'.*" + message
        ):  # names the file
            Prior.load(d)


def test_linearize_decode_equals_forward_mode_ad_of_decode() -> None:
    """``Prior.linearize_decode`` (latent de-standardization, decoder, state de-standardization): primal and tangent
    map equal ``decode`` and ``torch.func.jvp(decode)`` (float32 model: to 1e-5 relative)."""
    prior = tiny_latent_prior()
    z = torch.randn(2, *prior.event_shape(3))
    x, tangent = prior.linearize_decode(z)
    torch.testing.assert_close(x, prior.decode(z), atol=1e-3, rtol=1e-6)
    v = torch.randn_like(z)
    ref = torch.func.jvp(prior.decode, (z,), (v,))[1]
    got = tangent(v)
    assert got.shape == (2, 3, 3, 16, 32) and got.dtype == z.dtype
    assert float((got - ref).abs().max() / ref.abs().max()) < 1e-5
    assert float((tangent(2 * v) - 2 * got).abs().max() / got.abs().max()) < 1e-6  # linear in v
    # graph=True: the same primal, with its graph from z (its VJP is decode's), and the same tangent map
    zg = z.clone().requires_grad_(True)
    xg, tangent_g = prior.linearize_decode(zg, graph=True)
    assert not x.requires_grad and xg.requires_grad
    torch.testing.assert_close(xg.detach(), x, atol=0.0, rtol=0.0)
    g = torch.randn_like(x)
    vjp, ref_vjp = torch.autograd.grad(xg, zg, g)[0], torch.autograd.grad(prior.decode(zg), zg, g)[0]
    assert float((vjp - ref_vjp).abs().max() / ref_vjp.abs().max()) < 1e-6
    torch.testing.assert_close(tangent_g(v), got, atol=0.0, rtol=0.0)
    with pytest.raises(ValueError, match=r"Prior\.linearize_decode"):
        prior.linearize_decode(torch.randn(2, 3, 4, 8))
