"""What trains in RL, the KL reference, and the shadow weights of NFT's old policy.

Trainable weights (`rl_trainable`): `train.mode` as in SFT, except that in `lora` mode *only* the
LoRA weights train (SFT's lora mode also trains the new subject modules): then disabling the
adapter gives back exactly the model RL started from, which is the KL reference the Flow-GRPO
trainers use.

The reference (`Reference.active()`, a context under which the live model *is* the reference):
- `lora`: peft's adapter disabled (`disable_adapters` / `enable_adapters`): no copy at all;
- `full` / `adapters`: a frozen copy of the starting trainable weights (float32, as trained, so the
  first update's KL is exactly 0), swapped into the model for the reference forward and swapped
  back after. Swap, do not keep a second module: memory grows by one copy of the trainable
  weights only. The reference forward must run *before* the policy forward whose graph is
  backpropagated (a swap writes the weights in place).

`Shadow` (`train.ema.Shadow`, the one implementation the training EMA also builds on) is a named
float32 copy of the trainable weights with an EMA `update(decay)` and the swap `active()`: the
reference's frozen copy, and NFT's "old" policy that rolls out and gives v_old.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

from idcrafter.train.ema import Shadow
from idcrafter.train.modes import setup_trainable

__all__ = ["Reference", "Shadow", "rl_trainable"]


def rl_trainable(model: nn.Module, train_cfg) -> dict[str, nn.Parameter]:
    """{name: parameter} of what RL trains (module docstring), float32."""
    trainable = setup_trainable(model, train_cfg)
    if train_cfg.mode == "lora":
        for name, p in trainable.items():
            if "lora_" not in name:
                p.requires_grad_(False)
        trainable = {n: p for n, p in trainable.items() if "lora_" in n}
    return trainable


class Reference:
    """The KL reference (module docstring): `with ref.active(): ...` runs the model as the reference."""

    def __init__(self, model: nn.Module, trainable: dict[str, nn.Parameter], mode: str):
        self.model = model
        self.adapter = mode == "lora"
        self.shadow = None if self.adapter else Shadow(trainable)

    @contextmanager
    def active(self) -> Iterator[None]:
        if self.adapter:
            self.model.disable_adapters()
            try:
                yield
            finally:
                self.model.enable_adapters()
        else:
            with self.shadow.active():
                yield
