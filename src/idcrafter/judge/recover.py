"""Subjects the detector missed, recovered by identity: the judge knows whom to look for.

The detector (`detector.decode`) keeps heat-map peaks scoring at least its threshold (0.3).
In crowded SpriteWorld frames it misses subjects the eye sees at once: one standing half
behind another (55-80% visible, its centre 2-3 cells from the other's, so its heat is a slope
of the other's peak), or two subjects side by side whose boxes overlap by half. Measured on
the held-out casts of `validate-judge --adversarial` (seeds 1234, 77, 2718, 4321, 1, 2, 3, 99),
9 of the 32 four-subject casts lost a subject this way; the judge then scored the ground truth
as if a subject were absent (no binding, a failed count), on two casts below an identity swap
in which the same subjects happened to stand apart.

The cells around such a subject still regress its box (`detector.decode_cells`), and the
identity embedders recognise its crop (cosine 0.7-0.95 with its reference, against 0.1-0.3 for
other people). So, per frame, for each reference that no detection of the frame is confidently
labelled with (`relink.labels`), the candidate box most like that reference is added, among
the candidates confidently labelled with it that overlap no detection of the frame by IoU >=
`MAX_IOU` (those are bodies seen already). Nothing is recovered for a face the clip does not
show: strangers, blobs and noise are not confidently anyone, so they gain nothing; a subject
hidden outright leaves no candidate and stays missing (its absence still costs).

Recovered detections are `RecoveredDetection`s: their `score` is the cell's heat (reported as
it is), and `present_check` counts them as confident (their reference confirmed them). Their
boxes are regressed off their subject's centre, so their head boxes wander by 1-2 px: path
coherence (`temporal.path_coherence` / `bounce_coherence`, which a shuffled clip fails) reads
only the detector's own peaks; presence, identity, activity and action geometry read them all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from idcrafter.judge.relink import CONFIDENT, labels
from idcrafter.judge.tracking import AppearanceDetection, box_iou

MIN_HEAT = 0.1  # cells whose heat is at least this are candidates (the detector keeps >= 0.3 peaks)
MAX_IOU = 0.6  # a candidate overlapping a detection this much is that detection's body


@dataclass(frozen=True)
class RecoveredDetection(AppearanceDetection):
    """A candidate box added by `recover_missing`; `reference` is the reference that confirmed it."""

    reference: int = -1


def missing_frames(det_sims: list[np.ndarray], k: int, confident: float = CONFIDENT) -> list[int]:
    """Frames in which some of the k references labels none of the detections (per frame
    (n, k) cosines of its detections with the references): where `recover_missing` looks."""
    return [f for f, ds in enumerate(det_sims)
            if set(range(k)) - set(labels(ds, confident) if len(ds) else [])]


def distinct(cands: list, iou: float = 0.8) -> list:
    """Candidates in order of heat, dropping any that overlaps a hotter one kept by IoU >= iou:
    neighbouring cells regress nearly the same box, and each costs an embedding."""
    kept: list = []
    for c in sorted(cands, key=lambda c: -c.score):
        if not kept or box_iou(c.box, np.stack([d.box for d in kept])).max() < iou:
            kept.append(c)
    return kept


def recover_missing(dets: list[list], cands: list[list], det_sims: list[np.ndarray],
                    cand_sims: list[np.ndarray], frames: np.ndarray | None = None, max_iou: float = MAX_IOU,
                    confident: float = CONFIDENT) -> list[list]:
    """Per frame, its detections plus, for each reference none of them is labelled with, the
    candidate most like that reference among those labelled with it that overlap no detection
    of the frame (nor one recovered before) by IoU >= max_iou.

    dets / cands: T lists of detections; det_sims / cand_sims: per frame (n, K) cosines (mean of
    face and subject) of those detections / candidates with the K references (a frame without
    candidates may have an empty array). Recovered ones are `RecoveredDetection`s with the
    candidate's box, score and head, and the colour descriptor the tracker reads
    (`tracking.box_appearance`, computed when `frames` (T, H, W, 3) are given).
    """
    from idcrafter.judge.tracking import box_appearance

    if not (len(dets) == len(cands) == len(det_sims) == len(cand_sims)):
        raise ValueError("dets, cands and their similarities must have one entry per frame")
    out = []
    for f, (frame_dets, frame_cands, ds, cs) in enumerate(zip(dets, cands, det_sims, cand_sims)):
        frame_dets = list(frame_dets)
        cs = np.asarray(cs, np.float64)
        if not len(frame_cands) or cs.size == 0:
            out.append(frame_dets)
            continue
        have = set(labels(ds, confident)) if len(frame_dets) else set()
        cand_lab = np.array(labels(cs, confident))
        for r in range(cs.shape[1]):
            idx = [i for i in np.flatnonzero(cand_lab == r) if not frame_dets or
                   box_iou(frame_cands[i].box, np.stack([d.box for d in frame_dets])).max() < max_iou]
            if r in have or not idx:
                continue
            c = frame_cands[int(idx[int(np.argmax(cs[idx, r]))])]
            app = box_appearance(frames[f], c.box, c.face_box) if frames is not None else getattr(c, "appearance", None)
            frame_dets.append(RecoveredDetection(c.box, c.score, c.face_box, app, r))
        out.append(frame_dets)
    return out
