"""Training: loss falls, exact resume after a kill, DDP (2 gloo processes) == 1 process, CLI on a zarr store."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from appa_core.data.synthetic import synthetic_wb2
from appa_core.nn.presets import get_preset
from appa_core.priors.latent import Prior
from appa_core.state import dataset_to_tensor
from appa_core.train import StateData, train_autoencoder, train_denoiser
from appa_core.train.cli import main_train
from appa_core.train.data import contiguous_starts, sample_stream

torch.set_num_threads(1)
TIMES = np.datetime64("2000-01-01T00", "ns") + np.arange(120) * np.timedelta64(6, "h")


def _data() -> StateData:
    p = get_preset("tiny")
    ds = synthetic_wb2(p.spec, p.make_grid(), TIMES, statics=False)
    x, t, g = dataset_to_tensor(ds, p.spec)
    return StateData(x, t, g, p.spec)


def _cfg(steps: int = 30, batch: int = 8, **kw: object) -> dict:
    stage = {
        "steps": steps,
        "batch_size": batch,
        "lr": 3e-3,
        "warmup": 5,
        "log_every": 1,
        "val_every": 10,
        "checkpoint_every": 10,
        "val_samples": 8,
        **kw,
    }
    return {
        "preset": "tiny",
        "data": {"train": ["2000-01-01", "2000-01-25"], "valid": ["2000-01-26", "2000-01-30"]},
        "train": {"autoencoder": stage, "denoiser": dict(stage)},
    }


def _losses(run: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


def test_sample_stream_and_windows() -> None:
    a = sample_stream(3, 10, 0, 25)
    assert sorted(a[:10, 0]) == list(range(10)) and sorted(a[10:20, 0]) == list(range(10))
    np.testing.assert_array_equal(sample_stream(3, 10, 7, 5), a[7:12])
    t = TIMES[:10].copy()
    t[6:] += np.timedelta64(6, "h")  # a gap between index 5 and 6
    np.testing.assert_array_equal(contiguous_starts(t, 3, np.timedelta64(6, "h")), [0, 1, 2, 3, 6, 7])


def test_autoencoder_loss_falls_and_resume_after_kill_is_exact(tmp_path: Path) -> None:
    data = _data()
    full = train_autoencoder(_cfg(keep_every=10), data, tmp_path / "full", progress=False)
    losses = _losses(tmp_path / "full")
    assert len(losses) == 30
    kept = sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("step_*"))
    assert kept == ["step_00000010", "step_00000020", "step_00000030"]  # keep_every: none rotated away
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:3])
    assert full["val_loss"] < 0.5
    rmse = json.loads((tmp_path / "full" / "reconstruction.json").read_text())
    assert set(rmse["standardized"]) == set(data.spec.channel_names())
    # killed after step 15 (last checkpoint at step 10), restarted: the loss curve continues identically
    killed = train_autoencoder(_cfg(), data, tmp_path / "resumed", progress=False, stop_after=15)
    assert killed["step"] == 15 and not (tmp_path / "resumed" / "autoencoder.safetensors").exists()
    assert (tmp_path / "resumed" / "checkpoints" / "latest").read_text() == "step_00000010"
    train_autoencoder(_cfg(), data, tmp_path / "resumed", progress=False)
    resumed = _losses(tmp_path / "resumed")
    assert len(resumed) == 30
    np.testing.assert_allclose(resumed, losses, rtol=1e-6, atol=0)
    a = load_file(str(tmp_path / "full" / "autoencoder.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "autoencoder.safetensors"))
    assert all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in a)


def test_denoiser_trains_and_saves_a_loadable_prior(tmp_path: Path) -> None:
    data = _data()
    train_autoencoder(_cfg(steps=10), data, tmp_path / "ae", progress=False)
    out = train_denoiser(_cfg(steps=30, lr=2e-3), data, tmp_path / "den", autoencoder=tmp_path / "ae", progress=False)
    losses = _losses(tmp_path / "den")
    assert np.mean(losses[-10:]) < np.mean(losses[:5])
    assert (tmp_path / "den" / "latents.safetensors").is_file()
    prior = Prior.load(tmp_path / "den" / "prior")
    z = torch.randn(1, *prior.event_shape(2))
    torch.testing.assert_close(prior.denoise(z, torch.tensor(1.0)), out["prior"].denoise(z, torch.tensor(1.0)))
    # the cached latents are reused (same autoencoder digest) on a second run
    mtime = (tmp_path / "den" / "latents.safetensors").stat().st_mtime_ns
    train_denoiser(_cfg(steps=30), data, tmp_path / "den", autoencoder=tmp_path / "ae", progress=False)
    assert (tmp_path / "den" / "latents.safetensors").stat().st_mtime_ns == mtime


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
        }
    )
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        train_autoencoder(_cfg(steps=4, log_every=1), _data(), out, progress=False)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_processes_match_one_process(tmp_path: Path) -> None:
    data = _data()
    train_autoencoder(_cfg(steps=4), data, tmp_path / "single", progress=False)
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    np.testing.assert_allclose(_losses(tmp_path / "ddp"), _losses(tmp_path / "single"), rtol=1e-5)
    a = load_file(str(tmp_path / "single" / "autoencoder.safetensors"))
    b = load_file(str(tmp_path / "ddp" / "autoencoder.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_cli_trains_from_a_zarr_store(tmp_path: Path) -> None:
    p = get_preset("tiny")
    ds = synthetic_wb2(p.spec, p.make_grid(), TIMES[:60], statics=False, lat_ascending=True)
    ds.to_zarr(tmp_path / "store.zarr")
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'preset = "tiny"\n[data]\ntrain = ["2000-01-01", "2000-01-12"]\nvalid = ["2000-01-13", "2000-01-15"]\n'
        "[train.autoencoder]\nsteps = 3\nbatch_size = 4\n[train.denoiser]\nsteps = 3\nbatch_size = 4\n"
    )
    args = ["--config", str(cfg), "--data", str(tmp_path / "store.zarr"), "--no-progress"]
    assert main_train(["autoencoder", *args, "--out", str(tmp_path / "ae")]) == 0
    assert main_train(["denoiser", *args, "--out", str(tmp_path / "den"), "--autoencoder", str(tmp_path / "ae")]) == 0
    prior = Prior.load(tmp_path / "den" / "prior")
    assert prior.grid.shape == (16, 32) and prior.spec == p.spec
    with pytest.raises(ValueError, match="TrainConfig: unknown field 'stepz'"):
        cfg.write_text('preset = "tiny"\n[train.autoencoder]\nstepz = 3\n')
        main_train(["autoencoder", *args, "--out", str(tmp_path / "x")])


def test_damaged_checkpoints_fall_back_and_nothing_is_lost(tmp_path: Path) -> None:
    """Issue: a damaged ``checkpoints/latest`` restarted training from step 0 silently, truncated metrics.jsonl to
    zero lines, and rotation then deleted the still-valid checkpoint; a torn metrics line stopped resume with a
    bare JSONDecodeError; a truncated checkpoint gave a SafetensorError naming no file."""
    from appa_core.train.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint

    data = _data()
    run = tmp_path / "run"
    train_autoencoder(_cfg(steps=30), data, run, progress=False, stop_after=20)  # checkpoints at 10 and 20
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000010", "step_00000020"]
    model = ckpts / "step_00000020" / "model.safetensors"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # truncated
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"step": 21, "loss": 0.1')  # torn by a kill
    with pytest.warns(RuntimeWarning, match=r"resuming from .*step_00000010'; skipped file .*step_00000020.*model"):
        assert latest_checkpoint(ckpts) == ckpts / "step_00000010"
    with pytest.raises(ValueError, match=r"load_checkpoint: file .*step_00000020/model.safetensors' is not a valid"):
        load_checkpoint(ckpts / "step_00000020", torch.nn.Linear(1, 1), None, None, torch.device("cpu"))  # type: ignore[arg-type]
    with pytest.warns(RuntimeWarning):
        train_autoencoder(_cfg(steps=30), data, run, progress=False)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == list(range(1, 31))  # resumed at 10, not 0
    superseded = (run / "metrics.superseded.jsonl").read_text()
    assert '{"step": 21, "loss": 0.1' in superseded and superseded.count("\n") == 11  # 11..20 and the torn line
    # rotation kept valid checkpoints; the damaged step 20 was moved aside for inspection when step 20 was redone
    assert (ckpts / "step_00000030").is_dir() and (ckpts / "step_00000020").is_dir()
    assert len(list(ckpts.glob("damaged_step_00000020_*"))) == 1
    for p in ckpts.glob("step_*"):
        (p / "state.json").write_text("{")
    with pytest.raises(CheckpointError, match=r"no valid checkpoint in .*state.json' is not valid JSON"):
        train_autoencoder(_cfg(steps=40), data, run, progress=False)


def test_train_prior_with_static_fields_and_a_lighter_decoder(tmp_path: Path) -> None:
    """``appa train prior`` runs both stages into OUT/ae, OUT/den and OUT/prior; with ``static_channels = 5`` the
    static fields come from the store, travel inside autoencoder.safetensors and condition the decoder; a store
    without them is refused by name."""
    from appa_core.nn.autoencoder import static_features

    p = get_preset("tiny")
    ds = synthetic_wb2(p.spec, p.make_grid(), TIMES[:60], statics=True)
    ds.to_zarr(tmp_path / "store.zarr")
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'preset = "tiny"\n[data]\ntrain = ["2000-01-01", "2000-01-12"]\nvalid = ["2000-01-13", "2000-01-15"]\n'
        "[autoencoder]\nstatic_channels = 5\ndecoder_channels = [4, 8]\ndecoder_blocks = 0\n"
        "[train.autoencoder]\nsteps = 3\nbatch_size = 4\n[train.denoiser]\nsteps = 3\nbatch_size = 4\n"
    )
    args = ["--config", str(cfg), "--data", str(tmp_path / "store.zarr"), "--no-progress"]
    assert main_train(["prior", *args, "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "ae" / "autoencoder.safetensors").is_file()
    prior = Prior.load(tmp_path / "run" / "prior")
    ae = prior.autoencoder
    assert ae.config.static_channels == 5 and ae.config.decoder_widths == (4, 8)
    expected = static_features(prior.grid, ds["geopotential_at_surface"].values, ds["land_sea_mask"].values)
    torch.testing.assert_close(ae.static, expected)
    z = torch.randn(1, *prior.event_shape(1))
    x = prior.decode(z)
    ae.static[3].add_(1.0)  # one km more orography everywhere changes the decoded state
    assert (prior.decode(z) - x).abs().max() > 1e-6
    with pytest.raises(ValueError, match=r"static_channels = 5 needs the static field 'geopotential_at_surface'"):
        synthetic_wb2(p.spec, p.make_grid(), TIMES[:60], statics=False).to_zarr(tmp_path / "bare.zarr")
        main_train(["autoencoder", "--config", str(cfg), "--data", str(tmp_path / "bare.zarr"), "--out",
                    str(tmp_path / "bare"), "--no-progress"])  # fmt: skip


def test_keep_every_exempts_multiples_from_rotation(tmp_path: Path) -> None:
    """``keep_every = 20``: steps 20, 40, 60 survive rotation (for a training curve) and stay when a later run saves
    without ``keep_every``; the others rotate as before (the two newest); a folder that is not ``step_<8 digits>``
    is left alone."""
    from appa_core.train.checkpoint import save_checkpoint
    from appa_core.train.config import TrainConfig

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    root = tmp_path / "checkpoints"
    (root / "step_00000010.bak").mkdir(parents=True)
    for step in range(10, 70, 10):
        save_checkpoint(root, step, model, opt, sched, {}, keep=2, keep_every=20)
    names = ["step_00000010.bak", "step_00000020", "step_00000040", "step_00000050", "step_00000060"]
    assert sorted(p.name for p in root.glob("step_*")) == names
    for step in range(70, 90, 10):
        save_checkpoint(root, step, model, opt, sched, {}, keep=2)
    names = ["step_00000010.bak", "step_00000020", "step_00000040", "step_00000060", "step_00000070", "step_00000080"]
    assert sorted(p.name for p in root.glob("step_*")) == names
    with pytest.raises(ValueError, match="field 'keep_every' has value -1"):
        TrainConfig(keep_every=-1)
    with pytest.raises(ValueError, match="field 'keep_every' has value 300; use 0 or a multiple of 'checkpoint_every'"):
        TrainConfig(keep_every=300, checkpoint_every=250)


def test_rotation_counts_only_valid_checkpoints(tmp_path: Path) -> None:
    """Issue: checkpoint rotation deleted a still-valid checkpoint behind a damaged newer one. With step 10 valid and
    step 20 damaged, saving step 30 with ``keep=2`` keeps step 10 (the newest valid one before 30) and the damaged
    step 20 for inspection; counting every checkpoint would have deleted step 10."""
    from appa_core.train.checkpoint import checkpoint_problem, latest_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    root = tmp_path / "checkpoints"
    for step in (10, 20):
        save_checkpoint(root, step, model, opt, sched, {}, keep=3)
    damaged = root / "step_00000020" / "model.safetensors"
    damaged.write_bytes(damaged.read_bytes()[:10])
    assert checkpoint_problem(root / "step_00000020") is not None
    save_checkpoint(root, 30, model, opt, sched, {}, keep=2)
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000010", "step_00000020", "step_00000030"]
    assert checkpoint_problem(root / "step_00000010") is None
    save_checkpoint(root, 40, model, opt, sched, {}, keep=2)  # now step 30 is the newest valid one before 40
    assert sorted(p.name for p in root.glob("step_*")) == ["step_00000020", "step_00000030", "step_00000040"]
    assert latest_checkpoint(root) == root / "step_00000040"
