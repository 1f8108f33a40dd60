"""Float32 shadow copies of the trainable weights: `Shadow` (a copy that can be averaged towards
the live weights and swapped into them), and `EMA`, the training EMA built on it.

`Shadow` is the one implementation of "copy, average, swap in, restore exactly" shared by the
SFT/RL engine's EMA (here) and the RL trainers' NFT old policy and KL reference (`rl.policy`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch


class Shadow:
    """A float32 copy (`values`) of named parameters with an EMA step and a swap into the model."""

    def __init__(self, params: dict[str, torch.nn.Parameter]):
        self.params = params
        self.values = {n: p.detach().float().clone() for n, p in params.items()}

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """values <- decay * values + (1 - decay) * params."""
        for n, p in self.params.items():
            self.values[n].lerp_(p.detach().float(), 1 - decay)

    @contextmanager
    def active(self) -> Iterator[None]:
        """The shadow values in the model for the block, the live ones restored exactly after."""
        backup = {n: p.detach().clone() for n, p in self.params.items()}
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.values[n].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(backup[n])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.values)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.values) ^ set(state)
        if missing:
            raise KeyError(f"shadow weights do not match the trainable weights: {sorted(missing)[:5]}")
        for n, t in state.items():
            dst = self.values[n]  # FSDP2: a DTensor, and the file holds this rank's shard (sft._local)
            (dst.to_local() if hasattr(dst, "to_local") else dst).copy_(t)


class EMA(Shadow):
    """shadow <- d * shadow + (1 - d) * param after every optimizer step, with the usual warm-up
    d_k = min(decay, (1 + k) / (10 + k)) (k = number of updates so far), so early averages are
    not dominated by the random initialisation."""

    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float):
        super().__init__(named_params)
        self.decay = float(decay)
        self.updates = 0

    @property
    def shadow(self) -> dict[str, torch.Tensor]:
        return self.values

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def update(self) -> None:  # type: ignore[override]  # the decay comes from the schedule
        super().update(self.current_decay())
        self.updates += 1

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:  # type: ignore[override]
        super().load_state_dict(state)
        self.updates = int(updates)

    def swapped(self) -> Iterator[None]:
        """Temporarily put the EMA weights into the model (restored exactly afterwards)."""
        return self.active()
