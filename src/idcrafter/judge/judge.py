"""The SpriteWorld judge: scores a clip against its references (and prompt).

Pipeline: references -> detector (one subject each) -> face / subject / attribute embeddings;
clip -> detector per frame -> tracks -> per-track mean embeddings -> Hungarian matching of
references to tracks -> face_sim (mean, min), subject_sim, leakage, actions, plausibility,
copy-paste, motion, quality -> total.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from idcrafter.errors import InputError
from idcrafter.judge import metrics as M
from idcrafter.encoders.references import prepare_reference
from idcrafter.judge.crops import body_crop, head_crop
from idcrafter.judge.tracking import detect_tracks
from idcrafter.world.scene import MAX_SUBJECTS, subject_mask

@dataclass
class JudgeReport:
    """Scalar metrics (the keys the CLI prints) plus per-subject details."""

    metrics: dict[str, float | None]
    per_subject: list[dict] = field(default_factory=list)
    plausibility: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {**self.metrics, "per_subject": self.per_subject, "plausibility": self.plausibility}


def check_video(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Validate a (T, H, W, 3) uint8 clip; resize an exact multiple of the world size down."""
    from idcrafter.utils.media import resize_video

    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise InputError(f"a video must be (frames, height, width, 3) RGB, got shape {frames.shape}")
    t, h, w = frames.shape[:3]
    if t < 2:
        raise InputError(f"the video has {t} frame(s): the judge needs at least 2")
    if (h, w) != size:
        if h * size[1] != w * size[0]:
            raise InputError(f"video frames are {h}x{w}; the judge reads SpriteWorld clips of "
                             f"{size[0]}x{size[1]} (or any size with the same aspect ratio)")
        frames = resize_video(frames, size)
    return frames


class Judge:
    """Frozen judge built from its parts; `score` is the whole measurement of one clip."""

    def __init__(self, detector, face, subject, action, quality, size: tuple[int, int] = (48, 48),
                 ref_size: int = 32, weights: M.TotalWeights | None = None):
        self.detector, self.face, self.subject = detector, face, subject
        self.action, self.quality = action, quality
        self.size, self.ref_size = size, ref_size
        self.weights = weights or M.TotalWeights()

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "Judge":
        """Load the shipped parts from `assets/judge` (or `folder`)."""
        from idcrafter.judge.action import ActionRecognizer
        from idcrafter.judge.detector import SpriteDetector
        from idcrafter.judge.embedders import SpriteFaceEmbedder, SpriteSubjectEmbedder
        from idcrafter.judge.quality import QualityModel

        f = Path(folder) if folder else None
        return cls(SpriteDetector.load(f), SpriteFaceEmbedder.load(f), SpriteSubjectEmbedder.load(f),
                   ActionRecognizer.load(f), QualityModel.load(f))

    # ------------------------------------------------------------------ references
    def encode_references(self, refs: list[np.ndarray]) -> dict:
        """Embeddings, attribute log-probs and subject masks of the references."""
        if not refs:
            raise InputError("no reference given: pass one --ref image per subject")
        for i, r in enumerate(refs):
            if isinstance(r, np.ndarray) and (r.ndim != 3 or r.shape[2] not in (3, 4)):
                raise InputError(f"reference {i} must be an RGB image, got an array of shape {r.shape}")
        if len(refs) > MAX_SUBJECTS:
            raise InputError(f"{len(refs)} references given; SpriteWorld clips hold at most {MAX_SUBJECTS}")
        prepared = [prepare_reference(r, self.ref_size) for r in refs]
        heads, bodies = [], []
        for i, r in enumerate(prepared):
            dets = self.detector.detect(r)
            if not dets:
                raise InputError(f"no subject found in reference {i}: use an image of one character "
                                 f"on a plain light background")
            d = max(dets, key=lambda d: d.score)
            heads.append(head_crop(r, d.head))
            bodies.append(body_crop(r, d.box))
        bodies_a = np.stack(bodies)
        masks = [subject_mask(r) for r in prepared]
        subject, attributes = self.subject.embed_with_attributes(bodies_a)
        return {"images": prepared, "face": self.face.embed_crops(np.stack(heads)), "subject": subject,
                "attributes": attributes, "masks": masks}

    # ------------------------------------------------------------------ clip
    def _track_embeddings(self, frames: np.ndarray, tracks) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Per-track mean face / subject embeddings (re-normalised) and per-frame face embeddings."""
        heads, bodies, owner = [], [], []
        for j, tr in enumerate(tracks):
            for f, d in enumerate(tr.frames):
                if d is not None:
                    heads.append(head_crop(frames[f], d.head))
                    bodies.append(body_crop(frames[f], d.box))
                    owner.append(j)
        if not owner:
            return np.zeros((0, self.face.dim)), np.zeros((0, self.subject.dim)), []
        fe = self.face.embed_crops(np.stack(heads))
        se = self.subject.embed_crops(np.stack(bodies))
        owner_a = np.array(owner)

        def mean_norm(e, j):
            m = e[owner_a == j].mean(0)
            return m / max(np.linalg.norm(m), 1e-8)

        n = len(tracks)
        return (np.stack([mean_norm(fe, j) for j in range(n)]), np.stack([mean_norm(se, j) for j in range(n)]),
                [fe[owner_a == j] for j in range(n)])

    def score(self, frames: np.ndarray, refs: list[np.ndarray], prompt: str | None = None) -> JudgeReport:
        """Measure one clip (T, H, W, 3) uint8 against its references (and prompt).

        Runs single-threaded: the judge's networks are tiny, and on a busy 2-core machine
        multi-threaded kernels this small were measured 70x slower (thread contention).
        """
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._score(frames, refs, prompt)
        finally:
            torch.set_num_threads(threads)

    def _score(self, frames: np.ndarray, refs: list[np.ndarray], prompt: str | None) -> JudgeReport:
        from idcrafter.world.captions import match_mentions, parse_caption

        frames = check_video(np.asarray(frames), self.size)
        mentions = parse_caption(prompt) if prompt else None
        if mentions is not None and len(mentions) != len(refs):
            raise InputError(f"the prompt names {len(mentions)} subject(s) but {len(refs)} reference(s) "
                             f"were given: pass one --ref per subject named in the prompt")
        ref = self.encode_references(refs)
        k = len(refs)
        dets, tracks = detect_tracks(self.detector, frames)
        face_t, subj_t, per_frame = self._track_embeddings(frames, tracks)
        face_sim = ref["face"] @ face_t.T  # (K, N)
        subj_sim = ref["subject"] @ subj_t.T
        sim = 0.5 * (face_sim + subj_sim)
        match = M.hungarian(sim)
        face_k = M.matched_scores(face_sim, match)
        subj_k = M.matched_scores(subj_sim, match)
        ref_ref = 0.5 * (ref["face"] @ ref["face"].T + ref["subject"] @ ref["subject"].T)
        leak_k = M.leakage(sim, ref_ref, match)
        boxes = [tr.boxes() for tr in tracks]
        plaus = M.Plausibility(
            count_stable=M.count_stability([len(d) for d in dets], k),
            no_duplicates=M.duplicate_free(sim, match), no_teleport=M.teleport_free(boxes),
            no_morphing=M.morph_free(per_frame))
        actions = self.action.predict(frames, boxes) if tracks else []
        action_acc, wanted = None, [None] * k
        if mentions is not None:
            order = match_mentions(mentions, ref["attributes"])
            for m, r in zip(mentions, order):
                wanted[r] = m.action
            action_acc = float(np.mean([match[r] >= 0 and actions[match[r]] == wanted[r] for r in range(k)]))
        motion_px = M.motion_amplitude(frames)
        cp = [M.copy_paste_score(frames, img, mk) for img, mk in zip(ref["images"], ref["masks"])]
        metrics: dict[str, float | None] = {
            "face_sim_mean": float(face_k.mean()), "face_sim_min": float(face_k.min()),
            "subject_sim": float(subj_k.mean()), "leakage": float(leak_k.mean()),
            "motion": M.motion_score(motion_px, frames.shape[1]), "action_acc": action_acc,
            "quality": float(self.quality.score(frames)), "natural": plaus.natural,
            "copy_paste": float(max(cp)),
        }
        metrics["total"] = self.weights.total(metrics)
        per_subject = [{"reference": r, "track": match[r], "face_sim": float(face_k[r]),
                        "subject_sim": float(subj_k[r]), "leakage": float(leak_k[r]),
                        "action": actions[match[r]] if match[r] >= 0 else None, "wanted_action": wanted[r],
                        "copy_paste": float(cp[r])} for r in range(k)]
        return JudgeReport(metrics, per_subject, {**plaus.as_dict(), "motion_px_per_frame": motion_px,
                                                  "num_tracks": len(tracks)})
