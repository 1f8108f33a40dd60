"""Rewards the RL trainers can use: two simple built-ins for the porting check, and every reward
of `idcrafter.rewards` (the composite, the judge, the learned reward model, ...).

The protocol is `idcrafter.rewards`': a reward scores a `RewardBatch` (B clips (T, H, W, 3)
uint8, the references, the prompts) and returns a `RewardOutput` of named (B,) components with a
validity mask. The trainers treat an invalid or non-finite component as a sample to skip (it
takes no part in its group's statistics and gets advantage 0), and log how many were skipped.

Built-ins (no weights, no judge; what the `debug` recipes use to check that a port learns at all,
the Flow-GRPO maintainers' test: a simple reward must rise within a few iterations):
- `brightness`: mean pixel value in [0, 1];
- `colour`: 1 - mean |pixel - target| / 255 with `options.target` an RGB triple (default red).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from idcrafter.errors import InputError
from idcrafter.rewards.base import Reward

if TYPE_CHECKING:
    from idcrafter.rl.config import RewardConfig


class BrightnessReward(Reward):
    name = "brightness"
    components = ("brightness",)

    def score_sample(self, video: np.ndarray, refs, prompt) -> dict[str, float]:
        return {"brightness": float(video.astype(np.float64).mean() / 255.0)}


class ColourReward(Reward):
    name = "colour"
    components = ("colour",)

    def __init__(self, device="cpu", weights=None, fill: float = 0.0, target=(255, 0, 0)):
        super().__init__(device, weights, fill)
        t = np.asarray(target, dtype=np.float64).reshape(-1)
        if t.shape != (3,) or (t < 0).any() or (t > 255).any():
            raise InputError(f"reward.options.target must be an RGB triple in 0..255, got {target}")
        self.target = t

    def score_sample(self, video: np.ndarray, refs, prompt) -> dict[str, float]:
        return {"colour": float(1.0 - np.abs(video.astype(np.float64) - self.target).mean() / 255.0)}


BUILTIN = {"brightness": BrightnessReward, "colour": ColourReward}


def build_reward(cfg: "RewardConfig", device: str = "cpu") -> Reward:
    """The reward named by `cfg` (a built-in here, else `idcrafter.rewards.build_reward`)."""
    options = dict(cfg.options)
    if cfg.name in BUILTIN:
        return BUILTIN[cfg.name](device=device, weights=cfg.path, **options)
    from idcrafter.rewards import build_reward as build_library_reward

    return build_library_reward(cfg.name, device=device, weights=cfg.path, **options)


class LearnedReward(Reward):
    """The learned reward model (`rl.reward_model`, trained by `idcrafter train reward-model`) as
    a reward: `weights` is its folder; component `learned` (the raw scalar, higher = better)."""

    name = "learned"
    components = ("learned",)

    def __init__(self, device="cpu", weights=None, fill: float = 0.0, batch_size: int = 16):
        super().__init__(device, weights, fill)
        if weights is None:
            raise InputError("reward.name=learned needs reward.path: the reward model folder "
                             "(<run>/reward_model of `idcrafter train reward-model`)")
        from idcrafter.rl.reward_model import load_reward_model

        self.model = load_reward_model(weights).to(self.device)
        self.batch_size = int(batch_size)

    def score_batch(self, batch):
        import torch

        out = []
        for i in range(0, len(batch), self.batch_size):
            vids = batch.videos[i: i + self.batch_size]
            refs = batch.references[i: i + self.batch_size]
            prompts = batch.prompts[i: i + self.batch_size]
            try:
                with torch.no_grad():
                    s = self.model.score(list(vids), [list(r) for r in refs], list(prompts))
                out += [{"learned": float(v)} for v in s]
            except Exception as exc:  # noqa: BLE001 - the batch's samples are reported unscorable
                out += [exc] * len(vids)
        return out


BUILTIN["learned"] = LearnedReward
