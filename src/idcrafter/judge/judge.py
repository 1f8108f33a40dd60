"""The SpriteWorld judge (v2): scores a clip against its references (and prompt).

Pipeline: references -> detector (one subject each) -> face / subject / attribute embeddings;
clip -> detector per frame, plus the subjects it missed found by identity (`recover.py`) ->
tracks, re-cut and re-joined by identity (`relink.py`) -> per-track
mean embeddings -> Hungarian matching of
references to tracks -> per subject: face_sim, subject_sim, leakage, own motion (camera and
light compensated, `temporal.py`), copy-paste, the caption's action done by this subject
(`binding`) -> plausibility checks, quality (sharpness x realism critic) -> `total`
(`metrics.TotalWeights`; similarities enter it as credit, `channels.similarity_credit`).

Two judges share this class: the main judge (`Judge.load()`, `assets/judge/`), which rewards
use, and the audit judge (`Judge.load(kind="audit")`, `assets/judge/audit/`), trained apart
(other seeds, other data, other widths) and never used as a reward; the audit judge also reads
each matched subject's nine attributes (`attr_acc_mean`, `attr_acc_min`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from idcrafter.encoders.references import prepare_reference
from idcrafter.errors import InputError
from idcrafter.judge import channels as C
from idcrafter.judge import metrics as M
from idcrafter.judge import temporal as TM
from idcrafter.judge.crops import body_crop, head_crop
from idcrafter.judge.tracking import _anchor
from idcrafter.world.scene import ACTIONS, MAX_SUBJECTS, PAIR_ACTIONS, subject_mask

KINDS = ("main", "audit")


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
    if frames.dtype != np.uint8:
        raise InputError(f"video frames must be uint8 (0-255), got {frames.dtype}")
    return frames


def judge_folder(folder: str | Path | None, kind: str) -> Path | None:
    """The parts folder of a judge kind: `folder` (default `assets/judge`), plus `audit/` for audit."""
    from idcrafter.judge.parts import judge_dir

    if kind not in KINDS:
        raise InputError(f"unknown judge {kind!r}: choose main or audit")
    base = Path(folder) if folder is not None else judge_dir()
    return base / "audit" if kind == "audit" else base


class Judge:
    """Frozen judge built from its parts; `score` is the whole measurement of one clip."""

    def __init__(self, detector, face, subject, action, quality, critic=None, size: tuple[int, int] = (48, 48),
                 ref_size: int = 32, weights: M.TotalWeights | None = None, kind: str = "main"):
        self.detector, self.face, self.subject = detector, face, subject
        self.action, self.quality, self.critic = action, quality, critic
        self.size, self.ref_size = size, ref_size
        self.weights = weights or M.TotalWeights()
        self.kind = kind

    @classmethod
    def load(cls, folder: str | Path | None = None, kind: str = "main") -> "Judge":
        """Load the shipped parts: `assets/judge` (main) or `assets/judge/audit` (audit), or the
        same under `folder`."""
        from idcrafter.judge.action import ActionRecognizer
        from idcrafter.judge.critic import RealismCritic
        from idcrafter.judge.detector import SpriteDetector
        from idcrafter.judge.embedders import SpriteFaceEmbedder, SpriteSubjectEmbedder
        from idcrafter.judge.quality import QualityModel

        from idcrafter.judge.parts import is_audit_folder

        f = judge_folder(folder, kind)
        kind = "audit" if is_audit_folder(f) else kind  # the audit parts are the audit judge, however loaded
        critic = RealismCritic.load(f) if (f / "critic.safetensors").is_file() else None  # TODO(C): require
        return cls(SpriteDetector.load(f), SpriteFaceEmbedder.load(f), SpriteSubjectEmbedder.load(f),
                   ActionRecognizer.load(f), QualityModel.load(f), critic, kind=kind)

    @classmethod
    def load_audit(cls, folder: str | Path | None = None) -> "Judge":
        """The audit judge (never a reward): `Judge.load(folder, kind="audit")`."""
        return cls.load(folder, kind="audit")

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
        subject, attributes = self.subject.embed_with_attributes(np.stack(bodies))
        return {"images": prepared, "face": self.face.embed_crops(np.stack(heads)), "subject": subject,
                "attributes": attributes, "masks": [subject_mask(r) for r in prepared]}

    # ------------------------------------------------------------------ clip
    def _detection_features(self, frames: np.ndarray, tracks) -> dict[int, tuple]:
        """Per detection of `tracks` (keyed by `id(detection)`): its face embedding, subject
        embedding, attribute log-probs, P(person) of its body crop and its detector score (a
        detection recovered by identity, `recover.py`, counts as confident: its reference
        confirmed it)."""
        from idcrafter.judge.channels import DETECTION_CONFIDENT
        from idcrafter.judge.recover import RecoveredDetection

        items = [(f, d) for tr in tracks for f, d in enumerate(tr.frames) if d is not None]
        if not items:
            return {}
        fe, se, lps = self._embed(frames, items)
        person = self.critic.subject_realism(np.stack([body_crop(frames[f], d.box) for f, d in items])) \
            if self.critic is not None else np.ones(len(items))
        scores = [max(float(d.score), DETECTION_CONFIDENT) if isinstance(d, RecoveredDetection) else float(d.score)
                  for _, d in items]
        return {id(d): (fe[i], se[i], lps[i], float(person[i]), scores[i]) for i, (_, d) in enumerate(items)}

    def _embed(self, frames: np.ndarray, items: list[tuple[int, object]]):
        """(face (n, Df), subject (n, Ds), attribute log-probs) of detections given as (frame, detection)."""
        heads = np.stack([head_crop(frames[f], d.head) for f, d in items])
        bodies = np.stack([body_crop(frames[f], d.box) for f, d in items])
        se, lps = self.subject.embed_with_attributes(bodies)
        return self.face.embed_crops(heads), se, lps

    def _similarities(self, frames: np.ndarray, ref: dict, per_frame: list[list]) -> list[np.ndarray]:
        """Per frame, (n, K) mean face / subject cosines of its detections with the references."""
        items = [(f, d) for f, ds in enumerate(per_frame) for d in ds]
        k = len(ref["face"])
        if not items:
            return [np.zeros((0, k)) for _ in per_frame]
        fe, se, _ = self._embed(frames, items)
        sim = 0.5 * (fe @ ref["face"].T + se @ ref["subject"].T)  # (n, K)
        out, i = [], 0
        for ds in per_frame:
            out.append(sim[i:i + len(ds)])
            i += len(ds)
        return out

    def _track_embeddings(self, frames: np.ndarray, tracks, feats: dict[int, tuple] | None = None) -> dict:
        """Per-track mean face / subject embeddings (re-normalised), per-frame face embeddings,
        summed attribute log-probs, mean detector scores and mean P(person) of its crops
        (`feats`: `_detection_features` already computed for these detections)."""
        feats = self._detection_features(frames, tracks) if feats is None else feats
        rows = [[feats[id(d)] for d in tr.frames if d is not None] for tr in tracks]
        if not any(rows):
            return {"face": np.zeros((0, self.face.dim)), "subject": np.zeros((0, self.subject.dim)),
                    "per_frame": [], "attributes": [], "scores": [], "person": []}

        def mean_norm(vs):
            m = np.mean(vs, 0)
            return m / max(np.linalg.norm(m), 1e-8)

        return {"face": np.stack([mean_norm([r[0] for r in rs]) for rs in rows]),
                "subject": np.stack([mean_norm([r[1] for r in rs]) for rs in rows]),
                "per_frame": [np.stack([r[0] for r in rs]) for rs in rows],
                "attributes": [{a: sum(r[2][a] for r in rs) for a in rs[0][2]} for rs in rows],
                "scores": [float(np.mean([r[4] for r in rs])) for rs in rows],
                "person": [float(np.mean([r[3] for r in rs])) for rs in rows]}

    def _recover(self, frames: np.ndarray, ref: dict, dets: list[list]) -> list[list]:
        """`dets` plus the subjects the detector missed, found by identity (`recover.py`), in
        the frames where some reference labels no detection."""
        from idcrafter.judge.recover import MIN_HEAT, distinct, missing_frames, recover_missing

        det_sims = self._similarities(frames, ref, dets)
        need = missing_frames(det_sims, len(ref["face"]))
        if not need:
            return dets
        cands: list[list] = [[] for _ in dets]
        for f, c in zip(need, self.detector.candidates(frames[need], MIN_HEAT)):
            cands[f] = distinct(c)
        return recover_missing(dets, cands, det_sims, self._similarities(frames, ref, cands), frames)

    def _tracks(self, frames: np.ndarray, ref: dict):
        """(detections per frame, tracks, fragments, detection features): detections (plus the
        subjects recovered by identity, `recover.py`) linked by the tracker, the tracks re-cut and
        re-joined by identity (`relink.py`)."""
        from idcrafter.judge.relink import relink
        from idcrafter.judge.tracking import MIN_TRACK_PRESENCE, link_tracks

        dets = self.detector.detect_video(frames)
        if hasattr(self.detector, "candidates"):
            dets = self._recover(frames, ref, dets)
        raw = link_tracks(dets)
        feats = self._detection_features(frames, raw)
        sims = [np.array([0.5 * (ref["face"] @ feats[id(d)][0] + ref["subject"] @ feats[id(d)][1])
                          for d in tr.frames if d is not None]) for tr in raw]  # (n_j, K) each
        tracks, fragments = relink(raw, sims, max(1, MIN_TRACK_PRESENCE * len(frames)))
        return dets, tracks, fragments, feats

    def score(self, frames: np.ndarray, refs: Sequence[np.ndarray], prompt: str | None = None,
              ref_attributes: Sequence[dict[str, int] | None] | None = None,
              threads: int | None = None) -> JudgeReport:
        """Measure one clip (T, H, W, 3) uint8 against its references (and prompt).

        ref_attributes (audit judge): per reference, its true attributes ({name: value}, e.g.
        `Identity.attributes()`) when known; otherwise they are decoded from the reference image
        (exact for a clean render) or read by the heads (`attributes.reference_truth`).
        threads: None (default) leaves torch's process-wide thread count alone; a number runs
        the measurement with that many torch threads and restores the caller's count after
        (even on error). `threads=1` is the fast choice on a busy machine: the judge's networks
        are tiny, and on a loaded 2-core CPU multi-threaded kernels this small were measured
        70x slower (thread contention). The figures do not depend on it.
        """
        if threads is None:
            return self._score(frames, list(refs), prompt, ref_attributes)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InputError(f"threads must be a whole number >= 1 (or None to leave torch's setting), got {threads!r}")
        saved = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return self._score(frames, list(refs), prompt, ref_attributes)
        finally:
            torch.set_num_threads(saved)

    def _score(self, frames: np.ndarray, refs: list[np.ndarray], prompt: str | None,
               ref_attributes) -> JudgeReport:
        from idcrafter.world.captions import parse_caption

        frames = check_video(np.asarray(frames), self.size)
        mentions = parse_caption(prompt) if prompt else None
        if mentions is not None and len(mentions) != len(refs):
            raise InputError(f"the prompt names {len(mentions)} subject(s) but {len(refs)} reference(s) "
                             f"were given: pass one --ref per subject named in the prompt")
        if ref_attributes is not None and len(ref_attributes) != len(refs):
            raise InputError(f"{len(ref_attributes)} attribute sets for {len(refs)} references: give one per "
                             f"reference (None where unknown)")
        ref = self.encode_references(refs)
        k = len(refs)
        dets, tracks, fragments, feats = self._tracks(frames, ref)
        emb = self._track_embeddings(frames, tracks, feats)
        face_sim, subj_sim = ref["face"] @ emb["face"].T, ref["subject"] @ emb["subject"].T  # (K, N)
        sim = 0.5 * (face_sim + subj_sim)
        match = M.hungarian(sim)
        face_k, subj_k = M.matched_scores(face_sim, match), M.matched_scores(subj_sim, match)
        ref_ref = 0.5 * (ref["face"] @ ref["face"].T + ref["subject"] @ ref["subject"].T)
        leak_k = M.leakage(sim, ref_ref, match)
        over_time = self._over_time(frames, dets, tracks)
        subjects = self._subjects(frames, ref, tracks, match, over_time)
        for r in range(k):
            subjects[r]["identity"] = C.identity_credit(float(face_k[r]), float(subj_k[r]))
        bind = self._binding(frames, ref, tracks, match, mentions, subjects, over_time)
        plaus = C.Plausibility(
            count=C.count_check(len(tracks), k), present=C.present_check(emb["scores"], match, k),
            no_duplicates=C.duplicate_check(sim, match),
            coherent=C.coherence_check(over_time["coherence"], over_time["teleport_ok"], fragments, k),
            no_morphing=C.morph_check(emb["per_frame"]), steady_light=C.light_check(over_time["flicker"]),
            alive=float(np.mean([s["alive"] for s in subjects])), lifelike=C.lifelike_check(emb["person"], match))
        sharp = float(self.quality.score(frames))
        real = min(1.0, self.critic.realism(frames) / self.critic.full) if self.critic is not None else 1.0
        # copy-paste of what is shown: the mean over the references found in the clip (an absent
        # subject is no paste; its absence costs in `natural` and `binding` instead)
        cp = [s["copy_paste"] for s, j in zip(subjects, match) if j >= 0] or [0.0]
        face_c = [C.similarity_credit(float(v)) for v in face_k]
        subj_c = [C.similarity_credit(float(v)) for v in subj_k]
        metrics: dict[str, float | None] = {
            "face_sim_mean": float(face_k.mean()), "face_sim_min": float(face_k.min()),
            "subject_sim": float(subj_k.mean()), "leakage": float(leak_k.mean()),
            "motion": float(np.mean([s["motion"] for s in subjects])),
            "action_acc": bind["action_acc"], "binding": bind["binding"],
            "face_credit": float(np.mean(face_c)), "subject_credit": float(np.mean(subj_c)),
            "face_bound": C.bound_fidelity(face_c, bind["binding_k"]) if mentions else None,
            "subject_bound": C.bound_fidelity(subj_c, bind["binding_k"]) if mentions else None,
            "quality": sharp * real, "natural": plaus.natural, "steady_light": plaus.steady_light,
            "copy_paste": float(np.mean(cp)), "copy_paste_max": float(max(cp)),
        }
        if self.kind == "audit":
            metrics.update(self._attributes(ref, emb, match, ref_attributes, subjects))
        metrics["total"] = self.weights.total(metrics)
        per_subject = [{"reference": r, "track": match[r], "face_sim": float(face_k[r]),
                        "subject_sim": float(subj_k[r]), "leakage": float(leak_k[r]), **subjects[r],
                        "person": emb["person"][match[r]] if match[r] >= 0 else 0.0,
                        **bind["per_subject"][r]} for r in range(k)]
        details = {**plaus.as_dict(), "track_coherence": over_time["coherence"], "sharpness": sharp, "realism": real, "num_tracks": len(tracks),
                   "fragments": fragments, "flicker": over_time["flicker"],
                   "camera_shift_px": over_time["camera_shift_px"]}
        return JudgeReport(metrics, per_subject, details)

    def _over_time(self, frames: np.ndarray, dets, tracks) -> dict:
        """Camera / light compensation and per-track activity, path coherence and teleports."""
        from idcrafter.judge.recover import RecoveredDetection

        comp = TM.compensate(frames, [[d.box for d in f] for f in dets])
        activity, coherence, feet, heads = [], [], [], []
        boxes = [tr.boxes() for tr in tracks]  # (T, 4) each, NaN where unseen
        for tr, b, crowded in zip(tracks, boxes, TM.crowded_frames(boxes)):
            activity.append(TM.step_activity(comp, b))
            # the detector's own peaks anchor a track; a box recovered by identity (`recover.py`)
            # is regressed off its subject's centre and its head wanders 1-2 px, so for the path
            # checks its box centre serves, with a wider dead zone (`loose`): a recovered glimpse
            # of another body sharing the identity must still show as a turn
            rec = np.array([isinstance(d, RecoveredDetection) for d in tr.frames])
            centre = (b[:, :2] + b[:, 2:]) / 2  # (T, 2)
            path_pts = TM.stabilise(np.array([centre[t] if r else _anchor(d) if d is not None else [np.nan, np.nan]
                                              for t, (d, r) in enumerate(zip(tr.frames, rec))]), comp["warps"])
            head = path_pts.copy()  # stabilise maps each point alone: the heads are the path's peaks
            head[rec] = np.nan
            feet.append(TM.stabilise(np.stack([centre[:, 0], b[:, 3]], 1), comp["warps"]))
            hgt = b[:, 3] - b[:, 1]
            heads.append(head)
            # the head, not the feet, for bounces: feet boxes jump when legs pass behind someone
            path = TM.path_coherence(path_pts, hgt, crowded=crowded, loose=rec)
            coherence.append(min(path, TM.turn_coherence(path_pts[:, 0], hgt), TM.bounce_coherence(head[:, 1], hgt)))
        shift = float(np.abs(comp["warps"][:, :, 2]).max()) if len(comp["warps"]) else 0.0
        return {"activity": activity, "coherence": coherence, "feet": feet, "head": heads,
                "flicker": TM.flicker(comp["gains"]), "teleport_ok": C.teleport_free(boxes), "camera_shift_px": shift}

    def _subjects(self, frames: np.ndarray, ref: dict, tracks, match: list[int], over_time: dict) -> list[dict]:
        """Per reference: alive, own motion, likeness to its reference's pixels, copy-paste."""
        out = []
        for r, j in enumerate(match):
            if j < 0:
                out.append({"alive": 0.0, "motion": 0.0, "ref_ncc": 0.0, "copy_paste": 0.0})
                continue
            act = over_time["activity"][j]
            ncc = C.reference_likeness_ncc(frames, ref["images"][r], ref["masks"][r], tracks[j].boxes())
            a = C.alive(act)
            out.append({"alive": a, "motion": C.own_motion(act), "ref_ncc": ncc,
                        "copy_paste": C.copy_paste(a, C.likeness(ncc))})
        return out

    def _binding(self, frames: np.ndarray, ref: dict, tracks, match: list[int], mentions,
                 subjects: list[dict], over_time: dict) -> dict:
        """Per reference: the action asked, the action seen, P(asked), its geometry, binding."""
        from idcrafter.world.captions import match_mentions

        k = len(match)
        boxes = [tr.boxes() for tr in tracks]
        probs = self.action.probabilities(frames, boxes)  # (N, A)
        seen = [ACTIONS[int(probs[j].argmax())] if j >= 0 else None for j in match]
        if mentions is None:
            return {"action_acc": None, "binding": None,
                    "per_subject": [{"action": seen[r], "wanted_action": None} for r in range(k)]}
        order = match_mentions(mentions, ref["attributes"])  # mention i -> reference order[i]
        wanted: list[str | None] = [None] * k
        partner: list[int] = [-1] * k  # for pair actions, the reference it is done with
        i = 0
        while i < len(mentions):  # a pair clause ("A and B swap places") gives two consecutive mentions
            wanted[order[i]] = mentions[i].action
            if mentions[i].action in PAIR_ACTIONS and i + 1 < len(mentions) and \
                    mentions[i + 1].action == mentions[i].action:
                wanted[order[i + 1]] = mentions[i].action
                partner[order[i]], partner[order[i + 1]] = order[i + 1], order[i]
                i += 2
            else:
                i += 1
        width = frames.shape[2]
        per, bind = [], []
        for r, j in enumerate(match):
            if j < 0:
                per.append({"action": None, "wanted_action": wanted[r], "p_wanted": 0.0, "geometry": 0.0,
                            "binding": 0.0})
                bind.append(0.0)
                continue
            p = float(probs[j, ACTIONS.index(wanted[r])])
            pair, contra = wanted[r] in PAIR_ACTIONS, 0.0
            if pair:
                mate = match[partner[r]] if partner[r] >= 0 else -1
                geo = C.pair_geometry(wanted[r], over_time["feet"][j], over_time["feet"][mate], width) \
                    if mate >= 0 else 0.0  # the partner the caption names is nowhere: nothing done together
            else:
                heights = boxes[j][:, 3] - boxes[j][:, 1]
                geo = C.solo_geometry(wanted[r], over_time["feet"][j], heights, width)
                contra = C.solo_contradiction(wanted[r], over_time["head"][j], over_time["feet"][j], heights, width)
            b = C.binding(p, geo, subjects[r]["alive"], over_time["coherence"][j], pair, subjects[r]["identity"],
                          contra)
            per.append({"action": seen[r], "wanted_action": wanted[r], "p_wanted": p, "geometry": geo,
                        "contradiction": contra, "binding": b})
            bind.append(b)
        hits = [seen[r] is not None and seen[r] == wanted[r] for r in range(k)]
        return {"action_acc": float(np.mean(hits)), "binding": C.half_min(bind), "binding_k": bind,
                "per_subject": per}

    def _attributes(self, ref: dict, emb: dict, match: list[int], ref_attributes, subjects: list[dict]) -> dict:
        """Audit: each matched subject's nine attributes read from its track vs the reference's true
        ones (given, else decoded from the reference render, else read: `attributes.reference_truth`)."""
        from idcrafter.judge.attributes import ATTR_NAMES, attribute_accuracy, reference_truth, wrong_attributes

        accs = []
        for r, j in enumerate(match):
            known = ref_attributes[r] if ref_attributes is not None else None
            truth, source = reference_truth(known, ref["images"][r], ref["attributes"][r])
            accs.append(attribute_accuracy(emb["attributes"][j], ref["attributes"][r], truth) if j >= 0 else 0.0)
            subjects[r].update(attr_acc=accs[-1], attr_source=source,
                               attr_wrong=wrong_attributes(emb["attributes"][j], truth) if j >= 0 else list(ATTR_NAMES))
        return {"attr_acc_mean": float(np.mean(accs)), "attr_acc_min": float(np.min(accs))}
