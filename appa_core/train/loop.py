"""A generic, resumable, DDP-aware training loop.

The loop never draws from a global random state: the batch of step ``s`` is items ``[s G, (s + 1) G)`` of a seeded
stream of epoch permutations (:func:`~appa_core.train.data.sample_stream`, ``G`` = global batch), and every random
draw of a sample is keyed by its stream position. Hence

* **exact resume**: model + optimizer + scheduler state and the step number determine everything that follows
  (RNG states and the data position are saved as well, for tools that draw from them);
* **DDP = single process**: with ``W`` processes each one takes a contiguous ``G / W`` slice of the same global
  batch and DDP averages gradients, so the update equals the single-process one up to float summation order.

Launch with ``torchrun --nproc_per_node N`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the environment): the loop
initialises ``torch.distributed`` (NCCL on GPU, gloo on CPU) if it is not already.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from appa_core.distributed import DistInfo, init_distributed
from appa_core.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from appa_core.train.config import TrainConfig
from appa_core.train.data import sample_stream

__all__ = ["DistInfo", "init_distributed", "run_training"]

LossFn = Callable[[nn.Module, np.ndarray, int], Tensor]
ValFn = Callable[[nn.Module], float]


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _truncate_log(path: Path, step: int) -> None:
    """Keep the metric lines up to ``step`` (those after it are recomputed, identically, on resume). Nothing is lost:
    later lines, and lines that are not JSON (a line torn by a kill), move to ``metrics.superseded.jsonl``; the log
    is rewritten atomically."""
    if not path.is_file():
        return
    keep, drop = [], []
    for i, ln in enumerate(path.read_text().splitlines(), start=1):
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
            ok = isinstance(rec, dict) and int(rec.get("step", 0)) <= step
        except (ValueError, TypeError):
            warnings.warn(
                f"run_training: {str(path)!r} line {i} is not JSON (torn by a kill?); moved aside", stacklevel=3
            )
            ok = False
        (keep if ok else drop).append(ln)
    if not drop:
        return
    with path.with_name("metrics.superseded.jsonl").open("a") as f:
        f.write("".join(ln + "\n" for ln in drop))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text("".join(ln + "\n" for ln in keep))
    os.replace(tmp, path)


def run_training(
    module: nn.Module,
    loss_fn: LossFn,
    n_items: int,
    cfg: TrainConfig,
    out_dir: str | os.PathLike[str],
    *,
    val_fn: ValFn | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    progress: bool = True,
    desc: str = "train",
    extra_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``module`` for ``cfg.steps`` optimizer steps.

    Args:
        module: the trainable module (already on the right device).
        loss_fn: ``loss_fn(module_or_ddp, items [n, 2], step) -> scalar`` mean loss over the items
            (column 0: item index, column 1: stream position for per-sample random draws).
        n_items: number of training items (states or windows).
        cfg: optimisation settings.
        out_dir: run directory: ``checkpoints/``, ``metrics.jsonl``.
        val_fn: ``val_fn(module) -> float`` deterministic validation loss (called on rank 0).
        resume: continue from ``out_dir/checkpoints/latest`` if present.
        stop_after: return after this step (to simulate a kill in tests).
        extra_state: JSON-able data stored in every checkpoint (e.g. the data split).

    Returns:
        ``{"step", "loss", "val_loss", "time_s"}`` of the last step.
    """
    info = DistInfo()
    out = Path(out_dir)
    if info.main:
        out.mkdir(parents=True, exist_ok=True)
    G, W, A = cfg.batch_size, info.world, cfg.accumulation
    if G % (W * A):
        raise ValueError(
            f"run_training: global batch_size {G} is not divisible by processes x accumulation = {W} x {A}"
        )
    micro = G // (W * A)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=cfg.betas,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg))
    ckpt_root = out / "checkpoints"
    log_path = out / "metrics.jsonl"
    start = 0
    if resume:
        last = latest_checkpoint(ckpt_root)
        if last is not None:
            state = load_checkpoint(last, module, optimizer, scheduler, info.device)
            start = int(state["step"])
    if info.main:
        _truncate_log(log_path, start)
    model: nn.Module = module
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    amp = cfg.amp and info.device.type == "cuda"
    bar = tqdm(total=cfg.steps, initial=start, desc=desc, disable=not (progress and info.main), dynamic_ncols=True)
    t0, last_time = time.perf_counter(), time.perf_counter()
    loss_value, val_loss = float("nan"), None
    extra = dict(extra_state or {})
    step = start
    while step < cfg.steps:
        module.train()
        items = sample_stream(cfg.seed, n_items, step * G, G)
        mine = items[info.rank * (G // W) : (info.rank + 1) * (G // W)]
        optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), dtype=torch.float64, device=info.device)
        for a in range(A):
            chunk = mine[a * micro : (a + 1) * micro]
            sync = contextlib.nullcontext() if (a == A - 1 or not info.enabled) else model.no_sync()  # type: ignore[operator]
            with sync:
                with torch.autocast(info.device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = loss_fn(model, chunk, step)
                (loss / A).backward()
            total += loss.detach().double() / A
        grad_norm = torch.nn.utils.clip_grad_norm_(
            module.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        )
        optimizer.step()
        scheduler.step()
        step += 1
        if info.enabled:
            dist.all_reduce(total)
            total /= W
        loss_value = float(total)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"run_training: loss is {loss_value} at step {step}")
        bar.update(1)
        bar.set_postfix(loss=f"{loss_value:.4g}")
        record: dict[str, Any] = {}
        if step % cfg.log_every == 0 or step == cfg.steps:
            now = time.perf_counter()
            record = {
                "step": step,
                "loss": loss_value,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "time_s": now - t0,
                "step_s": (now - last_time) / cfg.log_every,
            }
            last_time = now
        if val_fn is not None and (step % cfg.val_every == 0 or step == cfg.steps) and info.main:
            module.eval()
            with torch.no_grad():
                val_loss = float(val_fn(module))
            record.update({"step": step, "val_loss": val_loss})
        if record and info.main:
            with log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            if info.main:
                extra.update({"data_position": step * G, "epoch": (step * G) // n_items, "config": cfg.to_dict()})
                save_checkpoint(ckpt_root, step, module, optimizer, scheduler, extra, keep_every=cfg.keep_every)
            if info.enabled:
                dist.barrier()
        if stop_after is not None and step >= stop_after:
            break
    bar.close()
    module.eval()
    return {"step": step, "loss": loss_value, "val_loss": val_loss, "time_s": time.perf_counter() - t0}
