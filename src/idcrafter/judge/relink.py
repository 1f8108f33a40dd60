"""Tracks re-cut and re-joined by identity, after the tracker's frame-to-frame linking.

The tracker (`tracking.link_tracks`) links detections by position, size and a colour
descriptor. Where one subject passes behind another it can fail two ways, both common with 3-4
subjects in 48 x 48 px (measured on held-out ground truth, seeds 1234/2718/4321/77: about one
4-subject cast in four):

- a *switch*: one track follows subject A, then continues on subject B;
- *fragments*: subject A's track ends when A is hidden and A restarts as a new short track,
  which `detect_tracks` drops when it is seen in fewer than 30% of the frames (A is then
  "absent", and its action is judged on a stump).

The judge knows who each reference is, so it can repair both from identity: each detection
gets the reference it most resembles (`labels`: the mean of its face and subject cosines, when
at least `CONFIDENT`; ground truth scores 0.8-0.95 against its own reference, strangers
0.1-0.3), a track is cut where its confident label changes for good (`split_at_switches`),
and pieces that never overlap in time and carry the same label are joined (`join_pieces`).
A labelled piece also sheds the detections that look like a stranger to its reference
(`drop_strangers`, cosine below `STRANGER`): while a subject is hidden the tracker can link into
its track a box that covers parts of two others, and one such box made a standing subject's
path jump back and forth (its coherence and `natural` collapsed).
Pieces without a confident label (strangers, blobs, noise) are left exactly as the tracker
made them, so a video of nobody in the cast gains nothing; joining never moves a detection,
so a path made of shuffled frames stays as incoherent as it is (`temporal.path_coherence`
reads it whole).

This departs from the tracker's contract only in the judge: `detect_tracks` (the action
recogniser's training tracks) is unchanged.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from idcrafter.judge.tracking import Track

CONFIDENT = 0.6  # mean face/subject cosine from which a detection is labelled with a reference
STRANGER = 0.3  # ... below which a detection is not that reference's subject at all (strangers: 0.1-0.3)


def labels(sim: np.ndarray, confident: float = CONFIDENT) -> list[int]:
    """Per detection (rows of sim (n, K), its cosine with each reference) the reference it
    resembles most, or -1 when that similarity is below `confident` or no clearer than the
    second best by 0.1 (two references that look alike tell nothing)."""
    out = []
    for row in np.asarray(sim, np.float64):
        if row.size == 0:
            out.append(-1)
            continue
        order = np.argsort(row)[::-1]
        second = row[order[1]] if len(row) > 1 else -1.0
        out.append(int(order[0]) if row[order[0]] >= confident and row[order[0]] - second >= 0.1 else -1)
    return out


def split_at_switches(track: Track, frame_labels: Sequence[int], min_run: int = 2) -> list[Track]:
    """Cut `track` where its confident label changes to another one that then holds for at
    least `min_run` detections (a single odd detection inside the track is noise, not a switch;
    at the track's first or last detections it is a switch). frame_labels: one label per
    *present* frame of the track, in time order (-1 = unsure). Unsure detections stay with the
    run before them (the first ones with the run after)."""
    seen = [t for t, d in enumerate(track.frames) if d is not None]
    if len(seen) != len(frame_labels):
        raise ValueError(f"{len(frame_labels)} labels for a track seen in {len(seen)} frames")
    runs: list[list] = []  # [label, frames, sure detections]
    for t, lab in zip(seen, frame_labels):
        if runs and (lab == -1 or lab == runs[-1][0]):
            runs[-1][1].append(t)
            runs[-1][2] += int(lab >= 0)
        elif runs and runs[-1][0] == -1:  # unsure start: it belongs to the first sure run
            runs[-1] = [lab, runs[-1][1] + [t], 1]
        else:
            runs.append([lab, [t], int(lab >= 0)])
    # a run inside the track with fewer than min_run sure detections joins the run before; at
    # either end of the track a single sure detection may stand alone (trackers cross subjects
    # up in the first and last frames, where the motion model has least to go on)
    merged: list[list] = []
    for i, (lab, ts, sure) in enumerate(runs):
        inside = 0 < i < len(runs) - 1
        if merged and (lab == merged[-1][0] or (inside and sure < min_run)):
            merged[-1][1] += ts
            merged[-1][2] += sure if lab == merged[-1][0] else 0
        else:
            merged.append([lab, ts, sure])
    if len(merged) <= 1:
        return [track]
    out = []
    for _, ts, _ in merged:
        frames = [None] * len(track.frames)
        for t in ts:
            frames[t] = track.frames[t]
        out.append(Track(frames))
    return out


def join_pieces(pieces: list[Track], piece_labels: Sequence[int]) -> list[Track]:
    """Join pieces with the same label (>= 0) that are never seen in the same frame, longest
    first (a piece overlapping the growing track in time stays apart: two subjects that look
    alike). Unlabelled pieces are returned unchanged. Order: by first appearance."""
    out: list[Track] = [p for p, lab in zip(pieces, piece_labels) if lab < 0]
    for lab in sorted({lab for lab in piece_labels if lab >= 0}):
        group = sorted([p for p, l2 in zip(pieces, piece_labels) if l2 == lab], key=lambda p: -p.present().sum())
        built: list[Track] = []
        for p in group:
            for b in built:
                if not (b.present() & p.present()).any():
                    b.frames = [x if x is not None else y for x, y in zip(b.frames, p.frames)]
                    break
            else:
                built.append(Track(list(p.frames)))
        out.extend(built)
    return sorted(out, key=lambda tr: int(np.flatnonzero(tr.present())[0]) if tr.present().any() else len(tr.frames))


def drop_strangers(track: Track, own_sim: Sequence[float], stranger: float = STRANGER) -> tuple[Track, list[Track]]:
    """(the track without them, one single-frame track per stray detection): the detections
    whose similarity to the track's own reference (`own_sim`, one per present frame, in time
    order) is below `stranger`, i.e. a stranger's. Detections are moved, never copied."""
    seen = [t for t, d in enumerate(track.frames) if d is not None]
    if len(seen) != len(own_sim):
        raise ValueError(f"{len(own_sim)} similarities for a track seen in {len(seen)} frames")
    stray = [t for t, v in zip(seen, own_sim) if v < stranger]
    if not stray or len(stray) == len(seen):
        return track, []
    singles = []
    for t in stray:
        frames = [None] * len(track.frames)
        frames[t] = track.frames[t]
        singles.append(Track(frames))
    return Track([None if t in stray else d for t, d in enumerate(track.frames)]), singles


def relink(raw: list[Track], per_detection_sim: list[np.ndarray], need: float,
           confident: float = CONFIDENT) -> tuple[list[Track], int]:
    """(kept tracks, fragments) after cutting switches and joining same-identity pieces.

    raw: the tracker's tracks (all of them, short ones included); per_detection_sim: per raw
    track, (n_present, K) cosines of its detections (time order) with the references; need:
    frames a track must be seen in to be kept (as `detect_tracks`). fragments: pieces seen in
    2 <= frames < need that nothing joined (a subject that teleports leaves such pieces).
    """
    pieces, piece_labels = [], []
    for tr, sim in zip(raw, per_detection_sim):
        lab = labels(sim, confident)
        parts = split_at_switches(tr, lab) if len(lab) else [tr]
        seen = [t for t, d in enumerate(tr.frames) if d is not None]
        for p in parts:
            idx = [seen.index(t) for t, d in enumerate(p.frames) if d is not None]
            sure = [lab[i] for i in idx if lab[i] >= 0]
            # a piece's label: its sure detections' majority, if they are at least half of it
            lab_p = -1
            if sure and len(sure) * 2 >= len(idx):
                vals, counts = np.unique(sure, return_counts=True)
                lab_p = int(vals[counts.argmax()])
            # detections of a labelled piece that look nothing like its reference (a stray box
            # over two other subjects, linked in while this one was hidden) leave it, one by one
            kept_p, strays = drop_strangers(p, [sim[i, lab_p] for i in idx]) if lab_p >= 0 else (p, [])
            pieces += [kept_p] + strays
            piece_labels += [lab_p] + [-1] * len(strays)
    joined = join_pieces(pieces, piece_labels)
    kept = [tr for tr in joined if tr.present().sum() >= need]
    fragments = sum(1 for tr in joined if 2 <= tr.present().sum() < need)
    return kept, fragments
