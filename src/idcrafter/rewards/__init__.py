"""Rewards for RL post-training: one interface (`Reward`: built with its device and weights
path, scores a `RewardBatch`, returns named per-sample components as tensors), ID-Crafter's
components and their composite.

    from idcrafter.rewards import build_reward, RewardBatch
    reward = build_reward("composite", device="cpu")            # SpriteWorld judge backend
    out = reward(RewardBatch(videos, references, prompts))
    out["composite"], out.valid["composite"], out.errors

| name | components | backends |
|---|---|---|
| `face` | face, face_mean, face_min, leakage | sprites, dlib, insightface |
| `subject` | subject, subject_min | sprites, clip |
| `aesthetic` | aesthetic, aesthetic_raw | sprites, clip (+ LAION MLP) |
| `natural` | natural, natural_raw | sprites, qwen (local VLM), endpoint (OpenAI-compatible) |
| `copy_paste` | copy_paste, copy_paste_mean | sprites, faces |
| `judge` | all of the above from one SpriteWorld judge pass, + binding, action, judge_total | sprites |
| `composite` | composite, fidelity, quality, face + its parts' | presets sprites, real |

The combination maths are pure functions in `idcrafter.rewards.composite`.
"""

from __future__ import annotations

from typing import Any

from idcrafter.errors import InputError
from idcrafter.rewards.base import Reward, RewardBatch, RewardOutput, RewardSpec, RewardWorker
from idcrafter.rewards.composite import CompositeWeights, composite_reward

__all__ = ["Reward", "RewardBatch", "RewardOutput", "RewardSpec", "RewardWorker", "CompositeWeights",
           "composite_reward", "build_reward", "REWARDS"]

REWARDS = {
    "face": "idcrafter.rewards.face:FaceReward",
    "judge": "idcrafter.rewards.face:JudgeReward",
    "subject": "idcrafter.rewards.subject:SubjectReward",
    "aesthetic": "idcrafter.rewards.aesthetic:AestheticReward",
    "natural": "idcrafter.rewards.natural:NaturalReward",
    "copy_paste": "idcrafter.rewards.copy_paste:CopyPasteReward",
    "composite": "idcrafter.rewards.composite:CompositeReward",
}


def build_reward(name: str, device: str = "cpu", weights: Any = None, **options: Any) -> Reward:
    """The reward registered as `name` (table above), built with its device and weights path."""
    import importlib

    if name not in REWARDS:
        raise InputError(f"unknown reward {name!r}: choose one of {', '.join(REWARDS)}")
    module, _, cls = REWARDS[name].partition(":")
    if "composite_weights" in options and isinstance(options["composite_weights"], dict):
        options["composite_weights"] = CompositeWeights(**options["composite_weights"])
    return getattr(importlib.import_module(module), cls)(device=device, weights=weights, **options)
