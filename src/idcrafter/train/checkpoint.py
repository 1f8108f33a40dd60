"""Atomic, resumable training checkpoints.

Layout of `<run>/checkpoints/step_XXXXXXXX/`:

    trainable.safetensors   trainable weights (float32, names of `model.named_parameters()`)
    ema.safetensors         EMA shadow weights (when EMA is on)
    optimizer.pt            optimizer state_dict (torch.save; loaded with weights_only=True)
    scheduler.pt            lr scheduler state_dict (same)
    rng_rank<r>.json        python / numpy / torch RNG states of process r
    state.json              step, data position, EMA updates, world size, ...
    pipeline/               optional export (`IDCrafterPipeline.save_pretrained`)

A checkpoint is written into `step_XXXXXXXX.tmp/` and renamed to its final name only when every
file is written and flushed to disk (`os.replace` of a directory is atomic on POSIX): a crash
mid-write leaves a `.tmp` folder that `latest_checkpoint` ignores and the next save removes, and
the previous checkpoint intact. Nothing is ever unpickled: weights are safetensors, and the
optimizer/scheduler states (plain tensors, numbers, tuples) load with `weights_only=True`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

_NAME = re.compile(r"^step_(\d{8})$")
COMPLETE_MARKER = "state.json"


def checkpoint_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `root`, oldest first: (step, path)."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_dir() and (p / COMPLETE_MARKER).is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def begin(root: str | Path, step: int) -> Path:
    """A fresh, empty `<final>.tmp` folder to write checkpoint `step` into (stale ones removed)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob("step_*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = checkpoint_dir(root, step).with_suffix(".tmp")
    tmp.mkdir()
    return tmp


def commit(tmp: Path) -> Path:
    """fsync every file of `tmp`, then atomically rename it to its final name."""
    for f in tmp.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    final = tmp.with_suffix("")
    if final.exists():  # re-saving a step: keep the old one until the new one is in place
        old = final.with_suffix(".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(final.parent)
    return final


def prune(root: str | Path, keep_last: int, keep_every: int = 0) -> list[Path]:
    """Delete all but the newest `keep_last` complete checkpoints (keep_last <= 0: keep all).
    Checkpoints at a multiple of `keep_every` steps (> 0) are milestones and are never deleted,
    so a learning curve can be judged afterwards at 1k, 2k, 5k steps."""
    found = list_checkpoints(root)
    if keep_last <= 0 or len(found) <= keep_last:
        return []
    removed = [p for step, p in found[:-keep_last] if not (keep_every > 0 and step % keep_every == 0)]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ tensors and states
def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_torch_state(path: str | Path, state: dict) -> None:
    torch.save(state, str(path))


def load_torch_state(path: str | Path) -> dict:
    """Load a state saved by `save_torch_state` without unpickling arbitrary objects."""
    return torch.load(str(path), map_location="cpu", weights_only=True)


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=1))


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def rng_state() -> dict[str, Any]:
    """JSON-able RNG states of python, numpy (global) and torch (CPU, and CUDA if present)."""
    py = random.getstate()
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    out = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
