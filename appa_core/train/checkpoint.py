"""Atomic, pickle-free training checkpoints.

A checkpoint is a directory ``checkpoints/step_XXXXXXXX/`` holding

* ``model.safetensors``: the trained module's ``state_dict``;
* ``optimizer.safetensors``: every optimizer state tensor as ``state.<param index>.<key>`` plus RNG states
  (``rng.torch``, ``rng.cuda.<i>``);
* ``state.json``: step, data position, optimizer ``param_groups``, LR scheduler state, numpy / python RNG
  states, the training config.

It is written into a temporary sibling directory and renamed into place (``os.rename`` is atomic on POSIX), then
the ``checkpoints/latest`` pointer is replaced atomically (``os.replace``). A kill at any moment leaves either
the previous or the new checkpoint, never a half-written one. Older checkpoints beyond ``keep`` are removed, counting
only valid ones, so rotation never deletes the last valid checkpoint behind a damaged one.

Damage from outside (a disk error, a copy cut short, a hand edit) is detected on resume: :func:`latest_checkpoint`
validates the checkpoint ``latest`` points at and falls back to the newest valid one, with a warning that names
what it skipped and why; :func:`load_checkpoint` names the file in every error.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["CheckpointError", "checkpoint_problem", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]


class CheckpointError(RuntimeError):
    """Checkpoints exist but none of them is valid (resuming would silently start over)."""


def _load_tensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"load_checkpoint: file {str(path)!r} is not a valid safetensors file: {err}") from err


def _read_state(path: Path) -> dict[str, Any]:
    file = path / "state.json"
    try:
        state = json.loads(file.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"load_checkpoint: file {str(file)!r} is missing") from err
    except (OSError, ValueError) as err:
        raise ValueError(f"load_checkpoint: file {str(file)!r} is not valid JSON: {err}") from err
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise ValueError(f"load_checkpoint: file {str(file)!r} has no integer 'step'")
    return state


def _check_safetensors(path: Path) -> None:
    """A safetensors file is whole: its JSON header parses and the file is exactly as long as the header says (a
    truncated or padded file fails), without reading the tensors."""
    try:
        with path.open("rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= 100_000_000:
                raise ValueError(f"header length {n}")
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise ValueError(f"load_checkpoint: file {str(path)!r} is missing") from err
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"load_checkpoint: file {str(path)!r} is not a valid safetensors file: {err}") from err
    if size != 8 + n + end:
        raise ValueError(
            f"load_checkpoint: file {str(path)!r} is not a valid safetensors file: {size} bytes, the header describes "
            f"{8 + n + end} (truncated?)"
        )


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint directory ``path`` cannot be resumed from (``None``: it is valid). Reads headers only."""
    try:
        _read_state(path)
        for name in ("model.safetensors", "optimizer.safetensors"):
            _check_safetensors(path / name)
    except ValueError as err:
        return str(err).removeprefix("load_checkpoint: ")
    return None


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict[str, Any],
    keep: int = 2,
    keep_every: int = 0,
) -> Path:
    """Write checkpoint ``root/step_<step>`` atomically and point ``root/latest`` at it, then remove the valid
    ``step_<8 digits>`` checkpoints older than the ``keep`` newest, except kept ones: a checkpoint whose step is a
    multiple of ``keep_every`` (``0``: none) is marked ``"kept": true`` in its ``state.json`` and is never removed,
    whatever a later run's ``keep_every`` (for later evaluation: a training curve)."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp_step_{step:08d}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in opt["state"].items():
        for key, val in st.items():
            if isinstance(val, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = val.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = val
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    np_state = np.random.get_state()  # noqa: NPY002 - saved for code that draws from it
    py_state = random.getstate()
    state = {
        "step": step,
        "param_groups": opt["param_groups"],
        "optimizer_scalars": scalars,
        "scheduler": {k: v for k, v in scheduler.state_dict().items() if _jsonable(v)},
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        **extra,
        "kept": keep_every > 0 and step % keep_every == 0,
    }
    (tmp / "state.json").write_text(json.dumps(state, indent=1))
    if final.exists():
        if checkpoint_problem(final) is None:
            shutil.rmtree(final)
        else:  # a damaged checkpoint is kept for inspection, never silently replaced
            os.rename(final, root / f"damaged_{final.name}_{os.getpid()}")
    os.rename(tmp, final)
    pointer = root / f".latest.tmp{os.getpid()}"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")
    old = sorted(p for p in root.glob("step_*") if p.is_dir() and re.fullmatch(r"step_\d{8}", p.name))
    valid = [p for p in old if p.name != final.name and checkpoint_problem(p) is None]  # damaged ones stay
    for p in valid[: max(0, len(valid) - (keep - 1))]:
        if not _read_state(p).get("kept", False):
            shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The newest valid checkpoint: the one ``root/latest`` points at if it is valid, else the valid ``step_*``
    directory with the highest step (a ``RuntimeWarning`` names what was skipped and why); ``None`` when ``root``
    holds no checkpoint at all.

    Raises:
        CheckpointError: checkpoints exist but none is valid.
    """
    candidates: list[Path] = []
    pointer = root / "latest"
    target = ""
    if pointer.is_file():
        try:
            target = pointer.read_text().strip()
        except (OSError, UnicodeDecodeError):
            target = ""
        if target and "/" not in target and target not in (".", ".."):
            candidates.append(root / target)
    steps = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    if target.startswith("step_"):  # never fall forward past what latest names (e.g. a stale later run)
        steps = [p for p in steps if p.name <= target]
    candidates += [p for p in steps if p not in candidates]
    if not candidates and not pointer.exists():
        return None
    skipped = []
    for path in candidates:
        problem = checkpoint_problem(path) if path.is_dir() else f"{str(path)!r} does not exist"
        if problem is None:
            if skipped:
                warnings.warn(
                    f"latest_checkpoint: resuming from {str(path)!r}; skipped " + "; ".join(skipped),
                    RuntimeWarning,
                    stacklevel=2,
                )
            return path
        skipped.append(problem)
    raise CheckpointError(
        f"latest_checkpoint: no valid checkpoint in {str(root)!r} ({'; '.join(skipped) or 'latest points nowhere'}); "
        "fix or remove them, or start over with --no-resume"
    )


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states from ``path``; returns ``state.json``."""
    state = _read_state(path)
    weights = _load_tensors(path / "model.safetensors", device=str(device))
    missing = sorted(set(model.state_dict()) - set(weights))
    if missing:
        raise ValueError(f"load_checkpoint: file {str(path / 'model.safetensors')!r} has no key {missing[0]!r}")
    model.load_state_dict(weights)
    tensors = _load_tensors(path / "optimizer.safetensors")
    opt_state: dict[int, dict[str, Any]] = {}
    for key, val in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = val.to(device) if name != "step" else val
    for idx, sc in state.get("optimizer_scalars", {}).items():
        opt_state.setdefault(int(idx), {}).update(sc)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["param_groups"]})
    sched = dict(state["scheduler"])
    sched.setdefault("lr_lambdas", [None] * len(optimizer.param_groups))
    scheduler.load_state_dict(sched)
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda:
            torch.cuda.set_rng_state_all(cuda)
    npst = state["rng_numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), *npst[2:]))  # noqa: NPY002
    pyst = state["rng_python"]
    random.setstate((pyst[0], tuple(pyst[1]), pyst[2]))
    return state
