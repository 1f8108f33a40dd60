"""Whole-subject similarity reward: the SpriteWorld judge's subject embeddings (per subject,
references matched to tracks by the Hungarian algorithm), or CLIP-I for real videos.

CLIP-I (backend "clip"): for each reference, the mean cosine of its CLIP ViT-L/14 image
embedding with the embeddings of 8 evenly spaced frames; `subject` is the mean over references
(clipped to [0, 1]), `subject_min` the worst reference. Whole frames are compared, not subject
crops, so several subjects in one frame lower every reference's score: a coarse signal, meant
to sit beside the per-subject face term, not to replace it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from idcrafter.errors import InputError
from idcrafter.rewards.base import Reward, RewardBatch, check_clip, sample_indices


class SubjectReward(Reward):
    name = "subject"
    components = ("subject", "subject_min")

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path | None = None,
                 backend: str = "sprites", frames: int = 8, fill: float = 0.0):
        super().__init__(device, weights, fill)
        if backend not in ("clip", "sprites"):
            raise InputError(f"unknown subject backend {backend!r}: choose clip or sprites")
        self.backend, self.frames = backend, int(frames)
        if backend == "clip":
            from idcrafter.rewards.clip import ClipImageModel

            self.model = ClipImageModel(weights, device)
        else:
            from idcrafter.scorers import SpritesScorer

            self.scorer = SpritesScorer(weights)

    def score_sample(self, video, refs, prompt):
        report = self.scorer.score(video, refs, prompt)
        sims = [float(np.clip(s["subject_sim"], 0, 1)) for s in report.per_subject]
        return {"subject": float(np.mean(sims)), "subject_min": float(np.min(sims))}

    def score_batch(self, batch: RewardBatch):
        if self.backend == "sprites":
            return super().score_batch(batch)
        rows: list = []
        for video, refs in zip(batch.videos, batch.references):
            try:
                clip = check_clip(video)
                if not refs:
                    raise InputError("no reference image given")
                frames = [clip[j] for j in sample_indices(len(clip), self.frames)]
                emb = self.model.embed(list(refs) + frames)  # (R + F, D)
                sim = emb[: len(refs)] @ emb[len(refs):].T  # (R, F)
                per_ref = sim.mean(1).clamp(0, 1)
                rows.append({"subject": float(per_ref.mean()), "subject_min": float(per_ref.min())})
            except Exception as exc:  # noqa: BLE001
                rows.append(exc)
        return rows
