"""Saving and loading the judge's parts: safetensors weights + JSON config + a card.

Each part lives in `assets/judge/<name>.safetensors` (config in the safetensors metadata) with
`assets/judge/<name>.md` beside it: the command that trained it, its seed and its validation
figures. Loading never unpickles.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from idcrafter.errors import MissingWeightsError

M = TypeVar("M", bound=nn.Module)


def assets_dir() -> Path:
    """`$IDCRAFTER_ASSETS` if set, else the repository's `assets/` folder."""
    env = os.environ.get("IDCRAFTER_ASSETS")
    return Path(env) if env else Path(__file__).resolve().parents[3] / "assets"


def judge_dir() -> Path:
    return assets_dir() / "judge"


AUDIT_MARKER = "audit.json"  # written beside the audit judge's parts (`judge.train.audit`)


def is_audit_folder(folder: str | Path | None) -> bool:
    """Whether `folder` holds the audit judge's parts (its marker file is there)."""
    return folder is not None and (Path(folder) / AUDIT_MARKER).is_file()


def save_part(model: nn.Module, name: str, config: dict, card: str, folder: Path | None = None) -> Path:
    """Atomically write `<folder>/<name>.safetensors` (config in its metadata) and `<name>.md`."""
    from safetensors.torch import save

    from idcrafter.utils.io import atomic_write_bytes, atomic_write_text, ensure_dir

    folder = ensure_dir(Path(folder or judge_dir()))
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    path = atomic_write_bytes(folder / f"{name}.safetensors",
                              save(state, metadata={"config": json.dumps(config), "part": name}))
    atomic_write_text(folder / f"{name}.md", card)
    return path


def load_part(cls: type[M], name: str, folder: Path | None = None) -> M:
    """Build `cls(**config)` from the stored config and load its weights strictly (eval mode)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder or judge_dir()) / f"{name}.safetensors"
    if not path.is_file():
        raise MissingWeightsError(
            f"judge part {name!r} not found at {path}: train it with `idcrafter world train-judge "
            f"--part {name}` or set IDCRAFTER_ASSETS to a folder holding judge/{name}.safetensors")
    with safe_open(str(path), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    model = cls(**config)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.eval()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def batched(fn, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Apply `fn` to `x` in chunks along dim 0 (keeps peak memory flat on long clips)."""
    return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)]) if len(x) else fn(x)
