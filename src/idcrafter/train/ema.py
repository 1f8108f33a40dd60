"""Exponential moving average of the trainable weights (fp32 shadow copies)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


class EMA:
    """shadow <- d * shadow + (1 - d) * param after every optimizer step, with the usual warm-up
    d_k = min(decay, (1 + k) / (10 + k)) (k = number of updates so far), so early averages are
    not dominated by the random initialisation."""

    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float):
        self.decay = float(decay)
        self.params = named_params
        self.shadow = {n: p.detach().float().clone() for n, p in named_params.items()}
        self.updates = 0

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach().float(), 1 - d)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise KeyError(f"EMA state does not match the trainable weights: {sorted(missing)[:5]}")
        for n, t in state.items():
            dst = self.shadow[n]  # FSDP2: a DTensor, and the file holds this rank's shard (sft._local)
            (dst.to_local() if hasattr(dst, "to_local") else dst).copy_(t)
        self.updates = int(updates)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """Temporarily put the EMA weights into the model (restored exactly afterwards)."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.shadow[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])
