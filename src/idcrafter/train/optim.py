"""AdamW and its learning-rate schedule (linear warm-up, then cosine or constant)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from idcrafter.errors import InputError


@dataclass
class OptimConfig:
    """AdamW with linear warm-up then cosine (or constant) decay to min_lr_ratio * lr."""

    lr: float = 2e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01
    eps: float = 1e-8
    warmup_steps: int = 500
    schedule: str = "cosine"  # "cosine" | "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0  # max global grad norm; 0 = off

    def build(self, params: list, total_steps: int):
        return build_optimizer(self, params, total_steps)


def lr_factor(step: int, warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.0) -> float:
    """Multiplier of the base lr at optimizer step `step` (0-based).

    Warm-up: (step + 1) / warmup for step < warmup. Then "constant": 1; "cosine":
    min_ratio + (1 - min_ratio) * (1 + cos(pi * p)) / 2 with p = (step - warmup) / (total - warmup),
    clamped to [0, 1].
    """
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise InputError(f"optim.schedule must be 'cosine' or 'constant', got {schedule!r}")
    p = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def build_optimizer(cfg: OptimConfig, params: list[torch.nn.Parameter], total_steps: int):
    """(AdamW, LambdaLR). Biases, norms and 1-D parameters (gates, embeddings' scales) get no
    weight decay, as is usual for transformers."""
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
    # a partial (no state of its own in LambdaLR's state_dict): a resumed run follows the schedule
    # of its *current* config, e.g. when train.steps was raised to extend it
    factor = functools.partial(lr_factor, warmup=cfg.warmup_steps, total=total_steps, schedule=cfg.schedule,
                               min_ratio=cfg.min_lr_ratio)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return opt, sched
