"""Part-level validation of the judge on HELD-OUT identities (never used for training).

Each trained part is measured here on its own terms (detector recall / precision, verification
AUCs, track cosines, attribute accuracies, quality rank correlation); `validate.py` measures the
assembled judge end to end. Training code (`idcrafter.judge.train`) writes these figures into
each part's card.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from idcrafter.judge.attributes import looks_the_same
from idcrafter.judge.crops import body_crop, head_crop
from idcrafter.judge.detector import SpriteDetector
from idcrafter.judge.embedders import (
    ATTR_NAMES, SpriteFaceEmbedder, SpriteSubjectEmbedder, face_ids, reference_boxes,
)
from idcrafter.judge.interfaces import Detection
from idcrafter.judge.quality import MAX_STRENGTH, QualityModel
from idcrafter.judge.tracking import box_iou
from idcrafter.world.identity import Identity


# ----------------------------------------------------------------------------- detector

def match_frame(dets: list[Detection], boxes: np.ndarray, heads: np.ndarray, vis: np.ndarray,
                min_vis: float = 0.5, iou_thr: float = 0.5) -> dict:
    """Match one frame's detections to its GT subjects (Hungarian on whole-body IoU).

    Subjects with visibility >= min_vis must be found (recall); a detection is a true positive
    if it matches one of them or, failing that, a less visible subject (it is not wrong to find
    a half-hidden subject). Returns counts and the head IoUs of matched pairs.
    """
    from scipy.optimize import linear_sum_assignment

    must = np.flatnonzero(vis >= min_vis)
    rest = np.flatnonzero(vis < min_vis)
    free = list(range(len(dets)))
    found, head_ious = 0, []
    for group, required in ((must, True), (rest, False)):
        if not len(group) or not free:
            continue
        db = np.stack([dets[j].box for j in free])
        iou = box_iou(boxes[group], db)  # (G, F)
        rows, cols = linear_sum_assignment(-iou)
        used = []
        for r, c in zip(rows, cols):
            if iou[r, c] >= iou_thr:
                used.append(free[c])
                if required:
                    found += 1
                    head_ious.append(float(box_iou(heads[group[r]], dets[free[c]].head)[0, 0]))
        free = [j for j in free if j not in used]
    return {"gt": len(must), "found": found, "dets": len(dets), "fp": len(free), "head_ious": head_ious}


def _summarise(rows: list[dict], suffix: str) -> dict[str, float]:
    gt, found = sum(r["gt"] for r in rows), sum(r["found"] for r in rows)
    nd, fp = sum(r["dets"] for r in rows), sum(r["fp"] for r in rows)
    heads = [h for r in rows for h in r["head_ious"]]
    return {f"det_recall{suffix}": found / max(gt, 1), f"det_precision{suffix}": 1 - fp / max(nd, 1),
            f"head_iou_mean{suffix}": float(np.mean(heads)) if heads else 0.0}


def evaluate_detector(detector: SpriteDetector, num_clips: int = 200, seed: int = 1234) -> dict:
    """Recall / precision / head IoU on held-out clips (clean and degraded at strength 1.0) and
    the reference detection rate (exactly one subject, IoU >= 0.5 with the GT box)."""
    from idcrafter.world.dataset import make_example
    from idcrafter.world.degrade import degrade

    rng = np.random.default_rng(seed)
    rows: dict[str, list[dict]] = {"": [], "_degraded": []}
    ref_ok: dict[str, list[bool]] = {"": [], "_degraded": []}
    for i in range(num_clips):
        ex = make_example(seed, i, "heldout")
        c = ex.clip
        for suffix, frames, refs in (("", c.frames, ex.refs),
                                     ("_degraded", degrade(c.frames, rng, 1.0), degrade(ex.refs, rng, 1.0))):
            for f, dets in enumerate(detector.detect_video(frames)):
                rows[suffix].append(match_frame(dets, c.boxes[f], c.head_boxes[f], c.visibility[f]))
            for s, dets in zip(ex.spec.subjects, detector.detect_video(refs)):
                body, _ = reference_boxes(refs.shape[1], s.identity)
                ref_ok[suffix].append(len(dets) == 1 and float(box_iou(dets[0].box, body)[0, 0]) >= 0.5)
    out: dict[str, float] = {}
    for suffix in rows:
        out.update(_summarise(rows[suffix], suffix))
        out[f"ref_detect_rate{suffix}"] = float(np.mean(ref_ok[suffix]))
    out["num_clips"] = num_clips
    return out



# ----------------------------------------------------------------------------- embedders

@dataclass
class EvalSet:
    """Crops of held-out clips with ground truth (S subjects in all, P subject-frames).

    ref_head (S, 24, 24, 3), ref_body (S, 32, 16, 3): reference crops at the exact reference
    boxes; ident (S,) identity ids; clip (S,) clip index. head / body (P, ...) frame crops at the
    ground-truth boxes, head_deg / body_deg the same on frames degraded with strength 1.0;
    owner (P,) subject index; vis (P,) visibility.
    """

    ref_head: np.ndarray
    ref_body: np.ndarray
    ident: np.ndarray
    clip: np.ndarray
    head: np.ndarray
    head_deg: np.ndarray
    body: np.ndarray
    body_deg: np.ndarray
    owner: np.ndarray
    vis: np.ndarray


def build_eval_set(num_clips: int = 300, seed: int = 1234) -> EvalSet:
    """Render `num_clips` held-out examples (`make_example(seed, i, "heldout")`) and crop them."""
    from idcrafter.world.dataset import make_example
    from idcrafter.world.degrade import degrade

    cols: dict[str, list] = {k: [] for k in EvalSet.__dataclass_fields__}
    for i in range(num_clips):
        ex = make_example(seed, i, "heldout")
        c = ex.clip
        deg = degrade(c.frames, np.random.default_rng([seed, i, 99]), 1.0)
        for k, sub in enumerate(ex.spec.subjects):
            s = len(cols["ident"])
            body_b, head_b = reference_boxes(ex.refs.shape[1], sub.identity)
            cols["ref_head"].append(head_crop(ex.refs[k], head_b))
            cols["ref_body"].append(body_crop(ex.refs[k], body_b))
            cols["ident"].append(sub.identity.id)
            cols["clip"].append(i)
            for t in range(len(c.frames)):
                if c.visibility[t, k] <= 0:
                    continue
                cols["head"].append(head_crop(c.frames[t], c.head_boxes[t, k]))
                cols["head_deg"].append(head_crop(deg[t], c.head_boxes[t, k]))
                cols["body"].append(body_crop(c.frames[t], c.boxes[t, k]))
                cols["body_deg"].append(body_crop(deg[t], c.boxes[t, k]))
                cols["owner"].append(s)
                cols["vis"].append(float(c.visibility[t, k]))
    return EvalSet(**{k: np.stack(v) if k not in ("ident", "clip", "owner", "vis") else np.array(v)
                      for k, v in cols.items()})


def verification_auc(ref: np.ndarray, frm: np.ndarray, owner: np.ndarray, ok: np.ndarray, label: np.ndarray,
                     rng: np.random.Generator, clip: np.ndarray | None = None) -> float:
    """ROC-AUC of (reference, frame crop) cosines: same identity vs different identity.

    Positives: every frame crop p with ok[p] against its own subject's reference. Negatives, one
    per positive: the same reference against a random ok crop of a subject with a different
    `label` (drawn from the same clip when `clip` is given; positives without such a crop are
    dropped then). ref (S, d), frm (P, d) unit vectors; owner (P,) subject; label (S,).
    """
    from idcrafter.judge.metrics import roc_auc

    cand = np.where(ok)[0]
    pos_p, neg_q = [], []
    for p in cand:
        s = owner[p]
        pool = cand if clip is None else cand[clip[owner[cand]] == clip[s]]
        for _ in range(20):  # rejection sampling; in-clip pools are tiny, so check them exactly
            q = pool[rng.integers(len(pool))]
            if label[owner[q]] != label[s]:
                break
        else:
            others = pool[label[owner[pool]] != label[s]]
            if len(others) == 0:
                continue
            q = others[rng.integers(len(others))]
        pos_p.append(p)
        neg_q.append(q)
    pos_p, neg_q = np.array(pos_p), np.array(neg_q)
    r = ref[owner[pos_p]]  # (N, d)
    return roc_auc((r * frm[pos_p]).sum(-1), (r * frm[neg_q]).sum(-1))


def track_similarities(ref: np.ndarray, frm: np.ndarray, owner: np.ndarray, ok: np.ndarray,
                       clip: np.ndarray) -> dict[str, float]:
    """Reference vs track-mean cosines, as the judge computes them.

    A track's embedding is the re-normalised mean of its ok frames' unit embeddings. Returns the
    mean same-subject cosine, the mean over clips of the per-clip minimum, and the mean cosine of
    a reference to the OTHER subjects' tracks of its clip.
    """
    s_all = len(ref)
    tracks = np.zeros_like(ref)
    has = np.zeros(s_all, bool)
    for s in range(s_all):
        e = frm[(owner == s) & ok]
        if len(e):
            m = e.mean(0)
            tracks[s], has[s] = m / max(np.linalg.norm(m), 1e-8), True
    same = (ref * tracks).sum(-1)  # (S,)
    mins, diff = [], []
    for c in np.unique(clip):
        idx = np.where((clip == c) & has)[0]
        if len(idx) == 0:
            continue
        mins.append(same[idx].min())
        sims = ref[idx] @ tracks[idx].T  # (k, k)
        diff.extend(sims[~np.eye(len(idx), dtype=bool)].tolist())
    return {"same": float(same[has].mean()), "min": float(np.mean(mins)),
            "diff": float(np.mean(diff)) if diff else float("nan")}


def face_figures(face: SpriteFaceEmbedder, ev: EvalSet, seed: int = 0) -> dict[str, float]:
    """Verification AUCs and reference-vs-track cosines of a face embedder on an EvalSet."""
    ref = face.embed_crops(ev.ref_head)
    frm, frm_deg = face.embed_crops(ev.head), face.embed_crops(ev.head_deg)
    faces = face_ids(ev.ident)  # a different identity = a different face
    ok7, ok5 = ev.vis >= 0.7, ev.vis >= 0.5
    clean = track_similarities(ref, frm, ev.owner, ok5, ev.clip)
    deg = track_similarities(ref, frm_deg, ev.owner, ok5, ev.clip)
    rng = np.random.default_rng(seed)
    return {
        "id_auc": verification_auc(ref, frm, ev.owner, ok7, faces, rng),
        "id_auc_degraded": verification_auc(ref, frm_deg, ev.owner, ok7, faces, rng),
        "id_auc_same_clip": verification_auc(ref, frm, ev.owner, ok7, faces, rng, ev.clip),
        "gt_face_sim_mean": clean["same"], "gt_face_sim_min": clean["min"],
        "gt_face_sim_degraded": deg["same"], "gt_face_sim_min_degraded": deg["min"],
        "diff_face_sim_mean": clean["diff"], "diff_face_sim_degraded": deg["diff"],
    }


def _attr_accuracy(lps: list[dict[str, np.ndarray]], idents: list[Identity]) -> dict[str, float | dict]:
    """Attribute accuracy of predictions `lps` (one dict per crop) for the true `idents`.

    acc: mean over crops x attributes, a prediction being right when it renders the same
    reference as the truth (see `looks_the_same`); exact: plain equality; all: fraction of crops
    with all 9 right; per: per-attribute acc.
    """
    pred = np.array([[int(np.argmax(lp[a])) for a in ATTR_NAMES] for lp in lps])  # (N, 9)
    truth = np.array([[getattr(i, a) for a in ATTR_NAMES] for i in idents])  # (N, 9)
    exact = pred == truth
    right = exact.copy()
    for n, j in zip(*np.where(~exact)):
        right[n, j] = looks_the_same(idents[n], ATTR_NAMES[j], int(pred[n, j]))
    return {"acc": float(right.mean()), "exact": float(exact.mean()), "all": float(right.all(1).mean()),
            "per": {a: float(right[:, j].mean()) for j, a in enumerate(ATTR_NAMES)}}


def _track_logprobs(lps: list[dict[str, np.ndarray]], owner: np.ndarray, ok: np.ndarray,
                    num: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Per subject, log-probs summed over its ok frames (a track-level read-out); (S,) has-frames."""
    out, has = [], np.zeros(num, bool)
    for s in range(num):
        idx = np.where((owner == s) & ok)[0]
        has[s] = len(idx) > 0
        out.append({a: sum(lps[i][a] for i in idx) if len(idx) else np.zeros(1) for a in ATTR_NAMES})
    return out, has


def subject_figures(subject: SpriteSubjectEmbedder, ev: EvalSet, seed: int = 0) -> dict:
    """Verification AUCs, track cosines and attribute accuracies of a subject embedder."""
    ref = subject.embed_crops(ev.ref_body)
    frm, frm_deg = subject.embed_crops(ev.body), subject.embed_crops(ev.body_deg)
    ok7, ok5 = ev.vis >= 0.7, ev.vis >= 0.5
    rng = np.random.default_rng(seed + 1)
    clean = track_similarities(ref, frm, ev.owner, ok5, ev.clip)
    idents = [Identity.from_id(int(i)) for i in ev.ident]
    a_ref = _attr_accuracy(subject.attribute_logprobs(ev.ref_body), idents)
    sel = np.where(ok7)[0]
    sel_idents = [idents[ev.owner[p]] for p in sel]
    lp_all = subject.attribute_logprobs(ev.body)
    a_frm = _attr_accuracy([lp_all[p] for p in sel], sel_idents)
    a_deg = _attr_accuracy(subject.attribute_logprobs(ev.body_deg[sel]), sel_idents)
    tracks, has = _track_logprobs(lp_all, ev.owner, ok5, len(idents))
    a_trk = _attr_accuracy([t for t, h in zip(tracks, has) if h], [i for i, h in zip(idents, has) if h])
    return {
        "subject_auc": verification_auc(ref, frm, ev.owner, ok7, ev.ident, rng),
        "subject_auc_degraded": verification_auc(ref, frm_deg, ev.owner, ok7, ev.ident, rng),
        "subject_auc_same_clip": verification_auc(ref, frm, ev.owner, ok7, ev.ident, rng, ev.clip),
        "gt_subject_sim_mean": clean["same"], "gt_subject_sim_min": clean["min"],
        "diff_subject_sim_mean": clean["diff"],
        "attr_acc_ref": a_ref["acc"], "attr_acc_ref_exact": a_ref["exact"], "attr_all_correct_ref": a_ref["all"],
        "attr_acc_frames": a_frm["acc"], "attr_acc_frames_exact": a_frm["exact"],
        "attr_acc_frames_degraded": a_deg["acc"], "attr_acc_tracks": a_trk["acc"],
        "attr_acc_ref_per_attribute": a_ref["per"], "attr_acc_frames_per_attribute": a_frm["per"],
    }


def evaluate_embedders(face: SpriteFaceEmbedder | None, subject: SpriteSubjectEmbedder | None,
                       num_clips: int = 300, seed: int = 1234) -> dict:
    """Validation figures of the face and / or subject embedder on HELD-OUT identities.

    Scalar keys: id_auc, id_auc_degraded, id_auc_same_clip, gt_face_sim_mean, gt_face_sim_min,
    gt_face_sim_degraded, gt_face_sim_min_degraded, diff_face_sim_mean, diff_face_sim_degraded
    (face); subject_auc, subject_auc_degraded, subject_auc_same_clip, gt_subject_sim_mean,
    gt_subject_sim_min, diff_subject_sim_mean, attr_acc_ref, attr_acc_ref_exact,
    attr_all_correct_ref, attr_acc_frames, attr_acc_frames_exact, attr_acc_frames_degraded,
    attr_acc_tracks (subject); plus per-attribute accuracy dicts. Attribute accuracies count a
    prediction as right when it renders the same reference as the truth (`looks_the_same`: e.g.
    any hair colour of a bald head); the *_exact ones require equality. Frames: visibility >= 0.7
    for pairs and attributes, >= 0.5 for track means; "degraded" = `degrade(frames, rng, 1.0)`;
    references are always clean.
    """
    ev = build_eval_set(num_clips, seed)
    out: dict = {}
    if face is not None:
        out.update(face_figures(face, ev, seed))
    if subject is not None:
        out.update(subject_figures(subject, ev, seed))
    out.update({"eval_clips": num_clips, "eval_seed": seed, "eval_subjects": len(ev.ident)})
    return out


# ----------------------------------------------------------------------------- quality

def evaluate_quality(model: QualityModel, num_clips: int = 200, seed: int = 1234) -> dict:
    """Held-out figures: Spearman(true strength, predicted clip strength) over clips degraded at
    strengths uniform in [0, 1.5] (a fifth clean), and mean scores of clean / strength-1 clips."""
    from scipy.stats import spearmanr

    from idcrafter.world.dataset import make_example
    from idcrafter.world.degrade import degrade

    rng = np.random.default_rng([seed, 3])
    true, pred, clean, strong = [], [], [], []
    for i in range(num_clips):
        frames = make_example(seed, i, "heldout").clip.frames
        s = 0.0 if i % 5 == 0 else float(rng.uniform(0.05, MAX_STRENGTH))
        true.append(s)
        pred.append(float(model.predict(degrade(frames, rng, s)).mean()))
        clean.append(model.score(frames))
        strong.append(model.score(degrade(frames, rng, 1.0)))
    rho = spearmanr(true, pred)[0]
    err = np.abs(np.array(true) - np.array(pred))
    return {"quality_spearman": float(rho), "quality_mae": float(err.mean()),
            "quality_score_clean": float(np.mean(clean)), "quality_score_strength1": float(np.mean(strong)),
            "num_clips": num_clips}

