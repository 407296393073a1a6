"""Distributed posterior sampling: 2 processes (gloo, CPU) write the store 1 process writes, bit for bit."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import xarray as xr
from _guided_helpers import T0, PointPick, ar1_prior, make_spec, tiny_latent_prior

from appa_core.distributed import member_generators, member_seed, shard
from appa_core.grid import Grid
from appa_core.obs.errors import DiagonalGaussian, Huber
from appa_core.sampler import Sampler, save_zarr

SPEC = make_spec()


def test_shard_covers_members_in_blocks() -> None:
    for n, world in [(7, 2), (8, 4), (5, 5), (10, 3)]:
        blocks = [shard(n, r, world) for r in range(world)]
        assert [i for b in blocks for i in range(b.start, b.stop)] == list(range(n))
        assert max(b.stop - b.start for b in blocks) - min(b.stop - b.start for b in blocks) <= 1
    with pytest.raises(ValueError, match="rank 2"):
        shard(4, 2, 2)


def test_member_streams_depend_on_seed_and_index_only() -> None:
    a = member_generators(3, range(0, 4))
    b = member_generators(3, range(2, 4))
    assert torch.equal(torch.randn(5, generator=a[2]), torch.randn(5, generator=b[0]))
    assert member_seed(3, 0) != member_seed(3, 1) != member_seed(4, 1)
    # for a given batch size, members are independent of the ensemble size: member 1 of 2 is member 1 of 5
    prior = ar1_prior(2, Grid.equiangular(3, 4), SPEC, gen=torch.Generator().manual_seed(0))
    smp = Sampler(prior, steps=3, sampler="ddim", eta=1.0, guidance="none", progress=False, batch=2)
    x2 = smp.sample(start=T0, length=2, members=2, seed=5).x
    x5 = smp.sample(start=T0, length=2, members=5, seed=5).x
    assert torch.equal(x2, x5[:2])


def _problem(kind: str) -> tuple[Sampler, list[PointPick], int]:
    """A tiny guided problem: the AR(1) Gaussian prior with robust noise (Hutchinson probes) and QC, or the tiny
    latent prior of the nn presets with GMRES."""
    torch.set_num_threads(1)
    if kind == "gaussian":
        prior = ar1_prior(2, Grid.equiangular(3, 4), SPEC, gen=torch.Generator().manual_seed(0))
        idx = np.array([24, 2, 60, 5, 30, 31])
        ops = [
            PointPick(index=idx[:4], obs=[281.0, 2.0, 279.0, 1.0], noise=DiagonalGaussian(0.5), name="a"),
            PointPick(index=idx[4:], obs=[280.0, 285.0], noise=Huber(std=1.0), name="b"),
        ]
        smp = Sampler(prior, steps=4, sampler="ddim", eta=0.5, probes=1, progress=False, batch=2)
        return smp, ops, 2
    prior = tiny_latent_prior(0, latent_stats=False)
    n = prior.spec.n_channels
    h, w = prior.grid.shape
    d = n * h * w
    ops = [PointPick(index=[3, d + 7, 2 * d + 11], obs=[270.0, 275.0, 280.0], noise=DiagonalGaussian(1.0), name="s")]
    smp = Sampler(prior, steps=3, solver_tol=None, solver_iters=2, progress=False, batch=2, qc=None)
    return smp, ops, 3


def _sample_and_save(kind: str, members: int, out: str) -> None:
    smp, ops, length = _problem(kind)
    ds = smp.posterior(obs=ops, start=T0, length=length, members=members, seed=11)
    save_zarr(ds, out)


def _worker(rank: int, world: int, port: int, kind: str, members: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        _sample_and_save(kind, members, out)
    finally:
        dist.destroy_process_group()


def _spawn(*args: object, timeout: float = 240.0) -> None:
    """Run :func:`_worker` on 2 processes; a hang fails the test instead of blocking the suite."""
    ctx = mp.start_processes(_worker, args=(2, _free_port(), *args), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=max(1.0, deadline - time.monotonic())):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(f"2-process run did not finish in {timeout:.0f} s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chunks(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["gaussian", "latent"])
def test_two_processes_write_the_store_one_process_writes(tmp_path: Path, kind: str) -> None:
    members = 5  # batches of 2, 2 and 1: rank 0 samples members 0-3, rank 1 member 4
    one, two = tmp_path / "one.zarr", tmp_path / "two.zarr"
    _sample_and_save(kind, members, str(one))
    _spawn(kind, members, str(two))
    a, b = xr.open_zarr(one), xr.open_zarr(two)
    assert a.identical(b)
    assert list(a.member.values) == list(range(members))
    # the same bytes: data chunks, metadata (attributes: the solve summary, QC counts) and all
    assert _chunks(one) == _chunks(two)
    sampler = json.loads(b.attrs["appa_sampler"])
    assert sampler["members"] == members
    if kind == "gaussian":
        assert "obs_a_qc" in b and json.loads(b.attrs["appa_qc"])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_distributed_write_refuses_a_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep")
    with pytest.raises(Exception, match="not a store written by appa"):
        _spawn("gaussian", 4, str(target))
    assert (target / "notes.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
