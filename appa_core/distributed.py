r"""Process groups for ``torchrun``: training (DDP) and posterior sampling sharded over members.

Launch any ``appa`` command with ``torchrun`` (``torchrun --standalone --nproc-per-node 2 appa assimilate CONFIG``;
several nodes with ``--nnodes``, ``--node-rank`` and ``--rdzv-endpoint``): :func:`init_distributed` reads the
``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` / ``MASTER_ADDR`` variables torchrun sets and initialises
``torch.distributed`` with NCCL on GPU and gloo on CPU. Nothing here names a scheduler: any launcher that sets
those variables (torchrun under Slurm, PBS, Kubernetes, or by hand) works.

Posterior sampling (:class:`~appa_core.sampler.Sampler`) splits the ensemble into contiguous blocks of members
(:func:`shard`); every member's random stream is a function of ``(seed, member index)`` only (:func:`member_seed`),
never of the rank or the number of processes, so ``W`` processes write the same ensemble as one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "agree",
    "broadcast_object",
    "gather_objects",
    "init_distributed",
    "is_distributed",
    "member_generators",
    "member_seed",
    "shard",
]


class DistInfo:
    """Rank, world size and device of this process (rank 0 of 1 without a process group)."""

    def __init__(self) -> None:
        self.enabled = dist.is_available() and dist.is_initialized()
        self.rank = dist.get_rank() if self.enabled else 0
        self.world = dist.get_world_size() if self.enabled else 1
        local = int(os.environ.get("LOCAL_RANK", self.rank))
        if torch.cuda.is_available():
            self.device = torch.device("cuda", local % torch.cuda.device_count())
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """This is rank 0 (the process that prints and renames)."""
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Initialise ``torch.distributed`` from the torchrun environment when ``WORLD_SIZE > 1`` (NCCL on GPU, gloo on
    CPU); a no-op in a single process or when a process group already exists."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo()


def is_distributed() -> bool:
    """A process group is initialised and has more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def shard(n: int, rank: int, world: int) -> slice:
    """The contiguous block of ``range(n)`` of ``rank`` among ``world`` processes: sizes differ by at most one, the
    first ``n % world`` ranks take one more."""
    if not 0 <= rank < world:
        raise ValueError(f"shard: rank {rank} outside [0, {world})")
    base, extra = divmod(int(n), int(world))
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def member_seed(seed: int, member: int) -> int:
    """The 64-bit seed of member ``member`` of an ensemble seeded ``seed``: a function of the pair only
    (``numpy.random.SeedSequence([seed, member])``), so members draw the same numbers whatever process samples them."""
    if seed < 0 or member < 0:
        raise ValueError(f"member_seed: seed and member must be >= 0, got {seed}, {member}")
    return int(np.random.SeedSequence([int(seed), int(member)]).generate_state(1, dtype=np.uint64)[0])


def member_generators(seed: int, members: Sequence[int] | range) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per member index, seeded by :func:`member_seed`."""
    return [torch.Generator(device="cpu").manual_seed(member_seed(seed, int(i))) for i in members]


def _device() -> torch.device:
    """The device collectives of the current process group take tensors on (CUDA for NCCL)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (picklable; returned unchanged without a process group)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_device() if dist.get_backend() == "nccl" else None)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` without a process group)."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def agree(error: BaseException | None, what: str) -> None:
    """A collective check: every rank passes its own error (or ``None``); if any rank failed, every rank raises —
    the failing rank its own error, the others a ``RuntimeError`` naming the first failing rank — so that no rank
    waits forever in a later collective."""
    if not is_distributed():
        if error is not None:
            raise error
        return
    messages = gather_objects(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    for rank, msg in enumerate(messages):
        if msg is not None:
            raise RuntimeError(f"{what}: rank {rank} failed: {msg}")
