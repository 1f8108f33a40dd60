"""Aesthetic reward: CLIP ViT-L/14 + LAION aesthetic MLP on 32 frames (OpenS2V-Eval's protocol),
or the SpriteWorld judge's quality.

`aesthetic_raw` is the mean LAION score of `np.linspace(0, T - 1, 32, dtype=int)` frames (1-10
scale, frames of short clips repeated as the published script does); `aesthetic` maps it to
[0, 1] with OpenS2V's normalisation, clip(raw, 4, 7) -> (raw - 4) / 3. With the SpriteWorld
backend both are the judge's `quality` (already in [0, 1]).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from idcrafter.errors import InputError
from idcrafter.rewards.base import Reward, RewardBatch, check_clip, sample_indices

AES_RANGE = (4.0, 7.0)  # OpenS2V-Eval's min-max normalisation of the LAION score


def normalise_aesthetic(raw: float) -> float:
    lo, hi = AES_RANGE
    return float((np.clip(raw, lo, hi) - lo) / (hi - lo))


class AestheticReward(Reward):
    """backend "clip" (weights: CLIP ViT-L/14 + MLP folder, see `rewards.clip`) or "sprites"."""

    name = "aesthetic"
    components = ("aesthetic", "aesthetic_raw")

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path | None = None,
                 backend: str = "sprites", frames: int = 32, fill: float = 0.0):
        super().__init__(device, weights, fill)
        if backend not in ("clip", "sprites"):
            raise InputError(f"unknown aesthetic backend {backend!r}: choose clip or sprites")
        self.backend, self.frames = backend, int(frames)
        if backend == "clip":
            from idcrafter.rewards.clip import ClipImageModel

            self.model = ClipImageModel(weights, device, with_aesthetic=True)
        else:
            from idcrafter.scorers import SpritesScorer

            self.scorer = SpritesScorer(weights)

    def score_sample(self, video, refs, prompt):
        q = self.scorer.score(video, refs, prompt).metrics.get("quality")
        return {"aesthetic": q, "aesthetic_raw": q}

    def score_batch(self, batch: RewardBatch):
        if self.backend == "sprites":
            return super().score_batch(batch)
        rows: list = [None] * len(batch)
        frames, owner = [], []
        for i, v in enumerate(batch.videos):
            try:
                clip = check_clip(v)
            except Exception as exc:  # noqa: BLE001 - flagged, the rest still scored
                rows[i] = exc
                continue
            idx = sample_indices(len(clip), self.frames)
            frames += [clip[j] for j in idx]
            owner += [i] * len(idx)
        if frames:
            scores = self.model.aesthetic(frames)  # (N,) one forward over every frame of the batch
            owner_t = torch.tensor(owner)
            for i in set(owner):
                raw = float(scores[owner_t == i].mean())
                rows[i] = {"aesthetic": normalise_aesthetic(raw) if np.isfinite(raw) else raw, "aesthetic_raw": raw}
        return rows
