"""One scorer protocol for every clip judge: the SpriteWorld judge and the real-face scorers.

A scorer measures one clip against its references (and prompt):

    scorer = build_scorer("sprites")            # or "sprites-audit", "dlib", "insightface"
    report = scorer.score(frames, refs, prompt)  # frames (T, H, W, 3) uint8, refs (H, W, 3) uint8
    report.metrics["face_sim_mean"], report.per_subject[k]["face_sim"]

`ScoreReport.per_subject` is indexed by reference, in reference order, and every scorer fills
the same keys where it can measure them (`reference`, `track`, `face_sim`, `leakage`, and for
the SpriteWorld judge also `subject_sim`, `copy_paste`, `action`, `wanted_action`). The rewards
(`idcrafter.rewards`), the generate-then-score loop (`idcrafter.generation`) and `idcrafter
eval` only ever see this protocol, never a judge's own report class.

Thread safety: the SpriteWorld judge lowers torch's (process-wide) thread count while it scores
and restores it afterwards; two judges doing that concurrently could leave the process at one
thread for good, so every SpriteWorld scoring call in a process is serialised by one lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np

from idcrafter.errors import InputError

# serialises the judge's save/set/restore of torch's process-wide thread count (module docstring)
_JUDGE_LOCK = threading.Lock()


@dataclass
class ScoreReport:
    """Scalar metrics (None where undefined, e.g. action accuracy without a prompt), one dict per
    reference, and scorer-specific details (plausibility checks, track counts, ...)."""

    metrics: dict[str, float | None]
    per_subject: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {**self.metrics, "per_subject": self.per_subject, **self.details}


@runtime_checkable
class Scorer(Protocol):
    """Measures a (T, H, W, 3) uint8 clip against one reference image per subject."""

    name: str

    def score(self, frames: np.ndarray, refs: Sequence[np.ndarray], prompt: str | None = None) -> ScoreReport: ...


def report_from_judge(report: Any) -> ScoreReport:
    """Adapt any SpriteWorld judge report (`.metrics`, `.per_subject`, `.as_dict()`) to the
    protocol; whatever else the report carries goes to `details` unchanged."""
    metrics = dict(report.metrics)
    per_subject = [dict(s) for s in getattr(report, "per_subject", [])]
    full = report.as_dict() if hasattr(report, "as_dict") else {}
    details = {k: v for k, v in full.items() if k not in metrics and k != "per_subject"}
    return ScoreReport(metrics, per_subject, details)


class SpritesScorer:
    """The SpriteWorld judge (`idcrafter.judge.judge.Judge`) behind the scorer protocol.

    `variant="audit"` loads the independent audit judge (`judge.audit.AuditJudge`: held-out
    evaluation and the hacking monitor only; rewards refuse it with `AuditRewardError`); missing
    parts raise `MissingWeightsError` naming them.
    """

    def __init__(self, folder: str | Path | None = None, variant: str = "main", judge: Any = None):
        if variant not in ("main", "audit"):
            raise InputError(f"unknown SpriteWorld judge variant {variant!r}: choose main or audit")
        self.judge = judge if judge is not None else _load_judge(folder, variant)
        # a folder of audit parts loads as the audit judge whatever was asked (its marker)
        self.variant = "audit" if getattr(self.judge, "kind", None) == "audit" else variant
        self.name = "sprites" if self.variant == "main" else "sprites-audit"

    def score(self, frames: np.ndarray, refs: Sequence[np.ndarray], prompt: str | None = None,
              ref_attributes: Sequence[dict[str, int] | None] | None = None) -> ScoreReport:
        """`ref_attributes`: the references' true attributes when the world knows them (the audit
        judge then compares each subject's attributes with the truth instead of a reading)."""
        extra = {} if ref_attributes is None else {"ref_attributes": list(ref_attributes)}
        with _JUDGE_LOCK:
            report = self.judge.score(np.asarray(frames), list(refs), prompt, **extra)
        return report_from_judge(report)


_JUDGES: dict[tuple[str, str], Any] = {}


def _load_judge(folder: str | Path | None, variant: str) -> Any:
    """A judge per (folder, variant), loaded once per process and shared: every call to it is
    serialised by `_JUDGE_LOCK`, so sharing is safe and saves the load (seconds) per reward."""
    from idcrafter.judge.parts import judge_dir

    key = (str(Path(folder).resolve()) if folder is not None else str(judge_dir().resolve()), variant)
    with _JUDGE_LOCK:
        if key not in _JUDGES:
            _JUDGES[key] = _build_judge(folder, variant)
        return _JUDGES[key]


def _build_judge(folder: str | Path | None, variant: str) -> Any:
    from idcrafter.judge.judge import Judge

    if variant == "main":
        return Judge.load(folder)
    from idcrafter.judge.audit import AuditJudge

    return AuditJudge.load(folder)


class RealFaceScorer:
    """Per-subject face similarity and leakage of a real video with a real face model.

    Faces are detected with `detector` (dlib's HOG detector by default) in up to `max_frames`
    evenly spaced frames, linked into tracks, and references are matched to tracks by the
    Hungarian algorithm (`judge.backends.real_faces`). Metrics: `face_sim_mean`,
    `face_sim_min`, `leakage` (mean over subjects), `motion_px_per_frame`.
    """

    def __init__(self, embedder: str = "dlib", weights: str | Path | None = None, detector: str = "dlib",
                 max_frames: int = 16):
        from idcrafter.judge.backends.registry import build_face_detector, build_face_embedder

        self.detector = build_face_detector(detector)
        self.embedder = build_face_embedder(embedder, str(weights) if weights is not None else None)
        self.max_frames = int(max_frames)
        self.name = f"faces-{embedder}"

    def score(self, frames: np.ndarray, refs: Sequence[np.ndarray], prompt: str | None = None) -> ScoreReport:
        from idcrafter.judge.backends.real_faces import face_similarity_matrix
        from idcrafter.judge.metrics import motion_amplitude

        frames = np.asarray(frames)
        res = face_similarity_matrix(frames, list(refs), self.detector, self.embedder, max_faces=len(refs),
                                     max_frames=self.max_frames)
        metrics: dict[str, float | None] = {
            "face_sim_mean": res.mean, "face_sim_min": res.min,
            "leakage": float(np.mean(res.leakage)), "motion_px_per_frame": motion_amplitude(frames)}
        per_subject = [{"reference": k, "track": res.matched_track[k], "face_sim": float(res.per_subject[k]),
                        "leakage": float(res.leakage[k])} for k in range(len(refs))]
        return ScoreReport(metrics, per_subject, {"track_lengths": res.track_lengths,
                                                  "frames_used": res.frames_used})


SCORERS = ("sprites", "sprites-audit", "dlib", "insightface")


def build_scorer(name: str, weights: str | Path | None = None) -> Scorer:
    """`sprites` / `sprites-audit` (weights: a judge parts folder, default `assets/judge`), or a
    real-face scorer: `dlib` (weights optional: a dlib model folder) or `insightface` (weights:
    an ArcFace/CurricularFace ONNX file or a folder holding one)."""
    if name == "sprites":
        return SpritesScorer(weights)
    if name == "sprites-audit":
        return SpritesScorer(weights, variant="audit")
    if name in ("dlib", "insightface"):
        return RealFaceScorer(name, weights)
    raise InputError(f"unknown scorer {name!r}: choose one of {', '.join(SCORERS)}")
