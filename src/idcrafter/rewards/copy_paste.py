"""Copy-paste penalty: how much a reference appears pasted unchanged and still in the clip.

- "sprites": the SpriteWorld judge's per-reference copy-paste score (`copy_paste` = the max
  over references, `copy_paste_mean` the mean).
- "faces" (real videos): for each reference, its largest face is cut out; in up to `frames`
  evenly spaced frames every detected face is cut out too (face crops: the detector's box,
  grey, 32 x 32, zero mean and unit variance). Per frame the best normalised cross-correlation
  with the reference face is kept; `match` is its median over the frames with a face. A pasted
  face correlates almost perfectly (> 0.9); the same person rendered in another pose, light
  or expression much less. `still` = 1 - (mean absolute change of the best-matching crop
  between consecutive frames) / 12 grey levels, clipped to [0, 1]. The score is
  clip((match - 0.8) / 0.2, 0, 1) x still; crops follow the detector's box, so a pasted face
  that is shifted, jittered or rescaled as a whole still counts as still. A clip with no face
  scores 0 (nothing pasted). The 0.8 / 0.2 / 12 constants are ours, not a published metric.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from idcrafter.errors import InputError
from idcrafter.rewards.base import Reward, sample_indices

CROP = 32
MATCH_FLOOR, MATCH_SPAN, STILL_SCALE = 0.8, 0.2, 12.0


def _face_patch(image: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(normalised (CROP, CROP) patch, raw grey (CROP, CROP) patch) of a face box, or None."""
    import cv2

    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    grey = cv2.cvtColor(np.ascontiguousarray(image[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    raw = cv2.resize(grey, (CROP, CROP), interpolation=cv2.INTER_AREA).astype(np.float64)
    sd = raw.std()
    return ((raw - raw.mean()) / sd if sd > 1e-6 else np.zeros_like(raw)), raw


def face_copy_paste(ref_patch: np.ndarray, frame_patches: list[list[tuple[np.ndarray, np.ndarray]]]) -> float:
    """The score of one reference (module docstring) from its normalised face patch and, per
    sampled frame, the (normalised, raw) patches of the faces detected in it."""
    best, raws = [], []
    for faces in frame_patches:
        if not faces:
            continue
        nccs = [float((ref_patch * p).mean()) for p, _ in faces]
        j = int(np.argmax(nccs))
        best.append(nccs[j])
        raws.append(faces[j][1])
    if not best:
        return 0.0
    match = float(np.median(best))
    diff = float(np.mean([np.abs(b - a).mean() for a, b in zip(raws[:-1], raws[1:])])) if len(raws) > 1 else 0.0
    still = float(np.clip(1 - diff / STILL_SCALE, 0, 1))
    return float(np.clip((match - MATCH_FLOOR) / MATCH_SPAN, 0, 1)) * still


class CopyPasteReward(Reward):
    """backend "sprites" (weights: judge parts folder) or "faces" (detector: a face detector
    name of `judge.backends.registry`, default dlib)."""

    name = "copy_paste"
    components = ("copy_paste", "copy_paste_mean")

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path | None = None,
                 backend: str = "sprites", detector: str = "dlib", frames: int = 16, fill: float = 0.0,
                 scorer: Any = None):
        super().__init__(device, weights, fill)
        self.backend, self.frames = backend, int(frames)
        if backend == "sprites":
            from idcrafter.scorers import SpritesScorer

            self.scorer = scorer if scorer is not None else SpritesScorer(weights)
        elif backend == "faces":
            from idcrafter.judge.backends.registry import build_face_detector

            self.detector = build_face_detector(detector)
        else:
            raise InputError(f"unknown copy-paste backend {backend!r}: choose sprites or faces")

    def score_sample(self, video: np.ndarray, refs: list[np.ndarray], prompt: str | None) -> dict[str, float]:
        if self.backend == "sprites":
            per = [s.get("copy_paste") for s in self.scorer.score(video, refs, prompt).per_subject]
            if not per or any(v is None for v in per):
                raise InputError("the judge gave no per-subject copy-paste score")
        else:
            per = self._faces(video, refs)
        return {"copy_paste": float(max(per)), "copy_paste_mean": float(np.mean(per))}

    def _faces(self, video: np.ndarray, refs: list[np.ndarray]) -> list[float]:
        if not refs:
            raise InputError("no reference image given")
        ref_patches = []
        for i, r in enumerate(refs):
            r = np.ascontiguousarray(np.asarray(r, dtype=np.uint8))
            faces = self.detector.detect(r)
            if not faces:
                raise InputError(f"no face found in reference {i}")
            big = max(faces, key=lambda d: float((d.head[2] - d.head[0]) * (d.head[3] - d.head[1])))
            patch = _face_patch(r, big.head)
            if patch is None:
                raise InputError(f"the face of reference {i} is too small")
            ref_patches.append(patch[0])
        per_frame = []
        for j in sorted(set(sample_indices(len(video), self.frames).tolist())):
            frame = np.ascontiguousarray(video[j])
            patches = [_face_patch(frame, d.head) for d in self.detector.detect(frame)]
            per_frame.append([p for p in patches if p is not None])
        return [face_copy_paste(rp, per_frame) for rp in ref_patches]
