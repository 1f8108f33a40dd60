"""The metrics `idcrafter eval` computes per case, built from local weights; a metric whose
weights are absent is not built and is reported missing with the reason.

- OpenS2V-Eval v1.1 (`opens2v_suite`): aesthetics, motion_smoothness, motion_amplitude,
  face_sim (FaceSim-Cur), gme, nexus, natural, with the published frame choices; plus ours for
  cases with several people: per-subject face similarity with Hungarian matching
  (`subjects/face_sim_mean`, `subjects/face_sim_min`), identity leakage (`subjects/leakage`) and
  copy-paste (`subjects/copy_paste`), with a real face backend (dlib by default, offline).
- SpriteWorld (`sprites_suite`): every scalar of the judge v2 (`judge/...`) and of the audit
  judge (`audit/...`, with the references' true attributes), and the judge on the ground-truth
  render of the same cast (`truth/...`), the ceiling the judge can give.

A metric maps (frames, case) -> {name: value}; a value of None means "not defined for this case"
(FaceSim-Cur on a case without a person), an exception is recorded as that metric's error for
the case and the other metrics are still computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from idcrafter.errors import InputError

NEXUS_MISSING = ("NexusScore's published detector is YOLO-World with image prompts (mmyolo / mmdet), which this build "
                 "does not ship: pass --nexus-detector OWLV2_DIR (and --gme) for NexusScore with an OWLv2 detector")


@dataclass
class EvalConfig:
    """Local weights of the metric backends (None: that metric is missing)."""

    device: str = "cpu"
    clip: Path | None = None  # CLIP ViT-L/14 + LAION aesthetic MLP folder
    face_detector: Path | None = None  # insightface model folder (FaceSim-Cur's detector)
    curricular: Path | None = None  # CurricularFace IR-101 backbone weights
    gme: Path | None = None  # gme-Qwen2-VL folder
    nexus_detector: Path | None = None  # OWLv2 folder (NexusScore's image-prompted detector, a departure)
    quality_vlm: Path | None = None  # Qwen-VL folder rating MotionSmoothness windows
    natural_vlm: Path | None = None  # Qwen-VL folder judging NaturalScore
    natural_url: str | None = None  # or an OpenAI-compatible endpoint ...
    natural_model: str | None = None  # ... and its model name
    natural_prompt: str | None = None  # the rubric (default: idcrafter's; module rewards.natural)
    face_backend: str = "dlib"  # per-subject identity (ours): dlib or insightface
    face_weights: Path | None = None
    judge: Path | None = None  # SpriteWorld judge parts folder

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()
                if k != "natural_prompt"} | {"natural_prompt": "custom" if self.natural_prompt else "idcrafter"}


@dataclass
class Metric:
    name: str
    fn: Callable[[np.ndarray, Any], dict[str, float | None]]
    note: str = ""  # how it departs from the published metric, if it does


@dataclass
class Suite:
    metrics: list[Metric] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def notes(self) -> dict[str, str]:
        return {m.name: m.note for m in self.metrics if m.note}

    def add(self, name: str, build: Callable[[], Metric | None], unavailable: str | None = None) -> None:
        """Build metric `name`, or record why it is missing."""
        if unavailable:
            self.missing[name] = unavailable
            return
        try:
            m = build()
        except InputError as exc:  # MissingWeightsError is one
            self.missing[name] = str(exc)
            return
        if m is not None:
            self.metrics.append(m)


def _need(path: Path | None, what: str, flag: str) -> Path:
    if path is None:
        raise InputError(f"no {what} given: pass {flag} DIR")
    return Path(path)


# ---------------------------------------------------------------------- OpenS2V
def opens2v_suite(cfg: EvalConfig) -> Suite:
    from idcrafter.eval import backends as B
    from idcrafter.eval.metrics import gme_from_embeddings, motion_amplitude, motion_smoothness, sample_frames

    s = Suite()

    def aesthetics() -> Metric:
        from idcrafter.rewards.clip import ClipImageModel

        model = ClipImageModel(_need(cfg.clip, "CLIP ViT-L/14 + aesthetic MLP folder", "--clip"), cfg.device,
                               with_aesthetic=True)
        return Metric("aesthetics", lambda f, c: {"aesthetics": float(
            model.aesthetic([f[i] for i in sample_frames(len(f), 32)]).mean())})

    def smoothness() -> Metric:
        rater = B.VLMQualityRater(_need(cfg.quality_vlm, "quality rater VLM", "--quality-vlm"), cfg.device)
        return Metric("motion_smoothness", lambda f, c: {"motion_smoothness": motion_smoothness(f, rater)},
                      B.backend_note("motion_smoothness"))

    def face_sim() -> Metric:
        fs = B.FaceSimCur(B.InsightFaceDetector(_need(cfg.face_detector, "insightface detector folder",
                                                      "--face-detector")),
                          B.CurricularFaceEmbedder(_need(cfg.curricular, "CurricularFace IR-101 weights",
                                                         "--curricular"), cfg.device))

        def fn(frames, case):
            i = case.opens2v.first_human_reference() if case.opens2v.face_scored else None
            return {"face_sim": None if i is None else fs.score(frames, case.references[i])}
        return Metric("face_sim", fn)

    def gme() -> Metric:
        emb = B.GmeEmbedder(_need(cfg.gme, "GME (gme-Qwen2-VL) folder", "--gme"), cfg.device)

        def fn(frames, case):
            picked = [frames[i] for i in sample_frames(len(frames), 32)]
            return {"gme": gme_from_embeddings(emb.texts([case.prompt])[0], emb.images(picked))}
        return Metric("gme", fn)

    def natural() -> Metric:
        from idcrafter.rewards.natural import EndpointNaturalJudge, QwenNaturalJudge

        if cfg.natural_url:
            judge = EndpointNaturalJudge(cfg.natural_url, cfg.natural_model or "", prompt=cfg.natural_prompt)
        else:
            judge = QwenNaturalJudge(_need(cfg.natural_vlm, "naturalness judge", "--natural-vlm or --natural-url"),
                                     cfg.device, prompt=cfg.natural_prompt)
        return Metric("natural", lambda f, c: {"natural": judge.rate([f])[0]}, B.backend_note("natural"))

    s.add("aesthetics", aesthetics)
    s.add("motion_smoothness", smoothness)
    s.add("motion_amplitude", lambda: Metric("motion_amplitude",
                                             lambda f, c: {"motion_amplitude": motion_amplitude(f)}))
    s.add("face_sim", face_sim)
    s.add("gme", gme)
    def nexus() -> Metric:
        det = B.OwlImagePromptDetector(cfg.nexus_detector, cfg.device)
        emb = B.GmeEmbedder(_need(cfg.gme, "GME (gme-Qwen2-VL) folder", "--gme"), cfg.device)
        return Metric("nexus", lambda f, c: {"nexus": B.nexus_score(f, c, det, emb)},
                      "OWLv2 image-guided detector, not YOLO-World: numbers differ from the published NexusScore")

    s.add("nexus", nexus, None if cfg.nexus_detector else NEXUS_MISSING)
    s.add("natural", natural)
    s.add("subjects", lambda: _subjects_metric(cfg))
    return s


def _subjects_metric(cfg: EvalConfig) -> Metric:
    """Ours, for cases with several people: per-subject face similarity (Hungarian matching),
    leakage and copy-paste against the human references only."""
    from idcrafter.rewards.base import RewardBatch
    from idcrafter.rewards.copy_paste import CopyPasteReward
    from idcrafter.scorers import RealFaceScorer

    scorer = RealFaceScorer(cfg.face_backend, cfg.face_weights)
    paste = CopyPasteReward(cfg.device, backend="faces")
    keys = ("subjects/face_sim_mean", "subjects/face_sim_min", "subjects/leakage", "subjects/copy_paste")

    def fn(frames, case):
        people = case.opens2v.human_references()
        if len(people) < 2:
            return dict.fromkeys(keys)
        refs = [case.references[i] for i in people]
        rep = scorer.score(frames, refs)
        cp = paste(RewardBatch([frames], [refs], [None]))
        if not bool(cp.valid["copy_paste"][0]):
            raise InputError(f"copy-paste not scored: {cp.errors[0]}")
        return dict(zip(keys, (rep.metrics["face_sim_mean"], rep.metrics["face_sim_min"], rep.metrics["leakage"],
                               float(cp["copy_paste"][0]))))
    return Metric("subjects", fn, f"ours (not in OpenS2V): {cfg.face_backend} face model, Hungarian matching")


# ---------------------------------------------------------------------- SpriteWorld
SPRITE_KEYS = ("total", "face_sim_mean", "face_sim_min", "subject_sim", "leakage", "action_acc", "binding", "motion",
               "quality", "natural", "copy_paste", "copy_paste_max", "attr_acc_mean", "attr_acc_min")


def _scalars(report, prefix: str) -> dict[str, float | None]:
    return {f"{prefix}/{k}": (None if report.metrics.get(k) is None else float(report.metrics[k]))
            for k in SPRITE_KEYS if k in report.metrics}


def sprites_suite(cfg: EvalConfig) -> Suite:
    from idcrafter.scorers import SpritesScorer

    s = Suite()

    def judge(variant: str, prefix: str, truth: bool) -> Metric:
        scorer = SpritesScorer(cfg.judge, variant=variant)

        def fn(frames, case):
            attrs = case.meta.get("ref_attributes") if variant == "audit" else None
            out = _scalars(scorer.score(frames, case.references, case.prompt, ref_attributes=attrs), prefix)
            if truth and case.ground_truth is not None:
                out.update(_scalars(scorer.score(case.ground_truth, case.references, case.prompt), "truth"))
            return out
        return Metric(prefix, fn)

    s.add("judge", lambda: judge("main", "judge", True))
    s.add("audit", lambda: judge("audit", "audit", False))
    return s
