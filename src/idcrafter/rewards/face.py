"""Identity rewards: per-subject face similarity (references matched to tracks by the Hungarian
algorithm inside the scorer) and the SpriteWorld judge's components in one pass.

`face` = (1 - gamma) mean_k R_id^k + gamma min_k R_id^k with R_id^k the cosine of reference k's
face embedding with its matched track's (0 for an unmatched reference), clipped to [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from idcrafter.errors import InputError
from idcrafter.rewards.base import Reward
from idcrafter.rewards.composite import subject_aggregate


def _per_subject(report, key: str) -> list[float]:
    vals = [s.get(key) for s in report.per_subject]
    if not vals or any(v is None for v in vals):
        raise InputError(f"the scorer gave no per-subject {key}")
    return [float(np.clip(v, 0.0, 1.0)) for v in vals]


def face_components(report, gamma: float) -> dict[str, float]:
    """face, face_mean, face_min, leakage from a scorer report's per-subject face similarities."""
    sims = _per_subject(report, "face_sim")
    leak = [float(s.get("leakage") or 0.0) for s in report.per_subject]
    return {"face": subject_aggregate(sims, gamma), "face_mean": float(np.mean(sims)),
            "face_min": float(np.min(sims)), "leakage": float(np.mean(leak))}


class FaceReward(Reward):
    """Per-subject identity reward. backend: "sprites" (the SpriteWorld judge; weights = its
    parts folder), "dlib" (dlib's face model; weights optional) or "insightface" (an ArcFace /
    CurricularFace ONNX file or folder, required)."""

    name = "face"
    components = ("face", "face_mean", "face_min", "leakage")

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path | None = None,
                 backend: str = "sprites", gamma: float = 0.5, fill: float = 0.0, scorer: Any = None):
        super().__init__(device, weights, fill)
        if not 0 <= gamma <= 1:
            raise InputError(f"gamma must lie in [0, 1], got {gamma}")
        from idcrafter.scorers import build_scorer

        self.gamma = float(gamma)
        self.backend = backend
        self.scorer = scorer if scorer is not None else build_scorer(backend, weights)

    def score_sample(self, video: np.ndarray, refs: list[np.ndarray], prompt: str | None) -> dict[str, float]:
        return face_components(self.scorer.score(video, refs, prompt), self.gamma)


class JudgeReward(Reward):
    """Every component the SpriteWorld judge measures, from one judge pass per clip:
    face / face_mean / face_min / leakage (as `FaceReward`), `subject` (mean over subjects of
    the whole-subject similarity), `aesthetic` (the judge's quality), `natural` (its
    plausibility), `copy_paste` (the worst subject: max over references, so one pasted subject
    among several is penalised fully), `binding` (each reference's subject doing what the caption
    asks of it: the judge's half-mean-half-min over subjects; 1 when the caption asks nothing,
    since then nothing can be contradicted and a constant moves no advantage), `action` (the
    judge's action_acc, for logs) and `judge_total` (the judge's total)."""

    name = "judge"
    components = ("face", "face_mean", "face_min", "leakage", "subject", "aesthetic", "natural", "copy_paste",
                  "binding", "action", "judge_total")

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path | None = None, gamma: float = 0.5,
                 fill: float = 0.0, scorer: Any = None):
        super().__init__(device, weights, fill)
        from idcrafter.scorers import SpritesScorer

        self.gamma = float(gamma)
        self.scorer = scorer if scorer is not None else SpritesScorer(weights)

    def score_sample(self, video: np.ndarray, refs: list[np.ndarray], prompt: str | None) -> dict[str, float]:
        report = self.scorer.score(video, refs, prompt)
        m = report.metrics
        out = face_components(report, self.gamma)
        cp = _per_subject(report, "copy_paste")
        asked = m.get("binding") is not None
        out.update(subject=float(np.mean(_per_subject(report, "subject_sim"))), aesthetic=m.get("quality"),
                   natural=m.get("natural"), copy_paste=float(max(cp)), judge_total=m.get("total"),
                   binding=float(m["binding"]) if asked else 1.0, action=m.get("action_acc") if asked else 1.0)
        return out
