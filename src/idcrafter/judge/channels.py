"""Judge v2's per-subject channels and plausibility checks, as pure functions.

The judge (`judge.py`) turns a clip into tracks, matches references to tracks, and measures
each matched subject k over time (`temporal.py`, camera and light compensated). This module
turns those measurements into the numbers the report and `total` use:

- `alive`: the fraction of frame steps in which subject k changes on its own (its box, camera
  and light taken out, changes by more than `temporal.CHANGE_LEVEL` on at least
  `ALIVE_FRACTION` of its pixels). SpriteWorld people are never frozen cut-outs: even
  "stands still" sways, so a frozen, pasted or merely shaken subject scores ~0.
- `own_motion`: the soft version, mean over steps of clip(changed fraction / MOTION_FULL, 0, 1).
- `reference_likeness`: how exactly the reference's own pixels are reproduced at the subject's
  scale (masked NCC of the reference sprite, resized to the track's height, searched around the
  track; brightness-free), mapped from [LIKENESS_LO, LIKENESS_HI] to [0, 1].
- `copy_paste = (1 - alive) x likeness`: the reference reproduced unchanged and held still.
- `binding`: the subject does the action the caption gives *it*: the action recogniser's
  probability or the geometry of its camera-stabilised track (walks go that way, jumps leave
  the ground, a pair approaches / swaps with the reference the caption pairs it with), x alive.
- plausibility checks (`Plausibility`), each in [0, 1], combined as 0.4 mean + 0.6 min so that
  one failed check (nobody there, a frozen cast, flicker, a blob for a person) is never averaged
  away.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

ALIVE_FRACTION = 0.01  # changed fraction of the box above which a frame step shows own motion
ALIVE_STEPS = 0.75  # share of active frame steps counted as fully alive (idle sway pauses at its turns)
MOTION_FULL = 0.05  # changed fraction of the box counted as full own motion in one step
LIKENESS_LO, LIKENESS_HI = 0.62, 0.9  # NCC of renders vs pasted references (measured, see README)
FLICKER_FULL = 0.12  # mean |log gain| per step at which `steady_light` reaches 0
DETECTION_CONFIDENT = 0.5  # mean detector score of a track that is surely a subject


def alive(activity: np.ndarray) -> float:
    """min(1, share of frame steps showing own motion / ALIVE_STEPS) over the non-NaN entries of
    `activity`; 0 if there are none. A standing SpriteWorld person sways, but its sway pauses at
    the turns (10-15% of steps show no change), hence the 0.75."""
    a = activity[~np.isnan(activity)]
    return float(min(1.0, (a > ALIVE_FRACTION).mean() / ALIVE_STEPS)) if len(a) else 0.0


def own_motion(activity: np.ndarray) -> float:
    """Mean over frame steps of clip(activity / MOTION_FULL, 0, 1); 0 if the subject is never seen."""
    a = activity[~np.isnan(activity)]
    return float(np.clip(a / MOTION_FULL, 0, 1).mean()) if len(a) else 0.0


def reference_likeness_ncc(frames: np.ndarray, ref: np.ndarray, ref_mask: np.ndarray, boxes: np.ndarray,
                           scales: tuple[float, ...] = (0.9, 0.95, 1.0, 1.05, 1.1), search: int = 5,
                           max_frames: int = 4) -> float:
    """Median over (up to `max_frames` evenly spaced) frames of the best masked NCC of the
    reference sprite around the track.

    frames (T, H, W, 3) uint8; ref (R, R, 3) uint8 and ref_mask (R, R) bool (its subject);
    boxes (T, 4) of the track, NaN where unseen. The sprite is cut to its silhouette, resized
    to each box height x `scales`, and matched (TM_CCOEFF_NORMED, which removes the mean and
    scale of the pixels: a brightness change does not hide a paste) within `search` px of the box.
    """
    import cv2

    ys, xs = np.where(ref_mask)
    if len(ys) == 0:
        return 0.0
    tpl = ref[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    tmask = ref_mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    hgt, wid = frames.shape[1:3]
    seen = np.flatnonzero(~np.isnan(boxes[:, 0]))
    pick = seen[np.unique(np.round(np.linspace(0, len(seen) - 1, min(max_frames, len(seen)))).astype(int))] \
        if len(seen) else seen
    best = []
    for f, b in zip(frames[pick], boxes[pick]):
        h = float(b[3] - b[1])
        x0, y0 = int(max(b[0] - search, 0)), int(max(b[1] - search, 0))
        x1, y1 = int(min(b[2] + search, wid)), int(min(b[3] + search, hgt))
        window = f[y0:y1, x0:x1].astype(np.float32)
        scores = []
        for s in scales:
            th = int(round(h * s))
            tw = max(int(round(tpl.shape[1] * th / tpl.shape[0])), 2)
            if th < 6 or th > window.shape[0] or tw > window.shape[1]:
                continue
            t2 = cv2.resize(tpl, (tw, th), interpolation=cv2.INTER_AREA)
            m2 = (cv2.resize(tmask, (tw, th), interpolation=cv2.INTER_AREA) > 0.5).astype(np.float32)
            r = cv2.matchTemplate(window, t2, cv2.TM_CCOEFF_NORMED, mask=np.repeat(m2[..., None], 3, -1))
            scores.append(float(np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0).max()))
        if scores:
            best.append(max(scores))
    return float(np.median(best)) if best else 0.0


def likeness(ncc: float) -> float:
    """NCC mapped to [0, 1]: 0 at LIKENESS_LO (renders of the identity), 1 at LIKENESS_HI (pastes)."""
    return float(np.clip((ncc - LIKENESS_LO) / (LIKENESS_HI - LIKENESS_LO), 0, 1))


def copy_paste(alive_k: float, likeness_k: float) -> float:
    """A subject is a copy-paste to the extent it is held still and reproduces the reference."""
    return float((1 - alive_k) * likeness_k)


BINDING_CONFIDENT = 0.5  # P(wanted action) from which the recogniser's evidence counts in full


IDENTITY_LO, IDENTITY_HI = 0.3, 0.6  # mean of face and subject cosine: a stranger / surely them


def identity_credit(face_k: float, subject_k: float) -> float:
    """How surely the track matched to a reference is that reference's subject, in [0, 1]:
    ramp of the mean of its face and subject cosines (ground truth 0.85-0.95, other people of
    the held-out split 0.1-0.3, faceless blobs 0.4)."""
    return _ramp(0.5 * (face_k + subject_k), IDENTITY_LO, IDENTITY_HI)


SIMILARITY_LO, SIMILARITY_HI = 0.2, 0.8  # cosine of a stranger / of the judge's own ground truth


def similarity_credit(similarity: float) -> float:
    """A subject's face or subject cosine with its reference as credit in [0, 1] for `total`:
    ramp from SIMILARITY_LO (other held-out people score 0.1-0.3) to SIMILARITY_HI (ground truth
    scores 0.8-0.95 against its own references, so the instrument's ceiling counts in full and
    a render is never marked down for the embedder's own spread). The raw cosines are reported
    as they are (`face_sim_mean`, `subject_sim`)."""
    return _ramp(similarity, SIMILARITY_LO, SIMILARITY_HI)


def binding(p_wanted: float, geometry: float | None, alive_k: float, coherence_k: float = 1.0,
            pair: bool = False, identity_k: float = 1.0, contradiction: float = 0.0) -> float:
    """What the caption asks of this subject, done by this subject, in [0, 1].

    rec = min(1, P(wanted) / BINDING_CONFIDENT): the action recogniser's probability of the
    asked action for this subject's track (right at P >= 0.5 on 95% of ground-truth subjects;
    above that its confidence says little, below it is the gradient a generator can follow).
    geo: `solo_geometry` / `pair_geometry` of the asked action (None for a wave; for a pair
    action, with the reference the caption pairs it with: doing it with anyone else fails).

        solo action:  identity x alive x coherence x max(rec, geo) x (1 - contra)
                      (rec alone for a wave)
        pair action:  identity x alive x coherence x sqrt(rec x geo)   (rec alone when the pair
                      is not seen together long enough; 0 when the caption's partner is absent)

    contra (`solo_contradiction`): clear motion of the track's own boxes that the asked solo action
    rules out (a "wave" or "stay" that walks away or leaves the ground, a "jump" that walks off, a
    walk the other way). The recogniser reads a crop, and a crop can hold a neighbour's arms: a
    jumper standing behind a waver was read as waving with P 0.75, so an identity swap of the two
    kept the waver's binding. Boxes cannot prove a wave, but they can disprove one.

    Both kinds of evidence count only as far as the track moves like a body (`coherence`, via
    `coherence_credit`: a walk made of frames in a random order is no walk), and only as far as
    the track is that reference's subject (`identity`, `identity_credit`: a stranger doing the
    asked action is not the named subject doing it).
    """
    rec = min(1.0, p_wanted / BINDING_CONFIDENT)
    if geometry is None:
        evidence = rec
    else:
        evidence = float(np.sqrt(rec * geometry)) if pair else max(rec, geometry)
    if not pair:
        evidence *= 1.0 - contradiction
    return float(identity_k * alive_k * coherence_credit(coherence_k) * evidence)


# ----------------------------------------------------------------------------- action geometry

WALK_MIN = 0.12  # net displacement (fraction of the frame width) from which a walk starts to count
WALK_FULL = 0.2  # ... and counts in full (SpriteWorld walks cover 0.2-0.42 of the width)
JUMP_FULL = 0.12  # feet lift (fraction of the height) of a full jump (SpriteWorld peaks at 0.22)


def _ramp(x: float, lo: float, hi: float) -> float:
    return float(np.clip((x - lo) / (hi - lo), 0, 1))


def _walks(x: np.ndarray, width: int) -> tuple[float, float]:
    """(left, right) walk evidence of a path's x positions (n,): net displacement that way."""
    dx = float(x[-1] - x[0]) / width
    return _ramp(-dx, WALK_MIN, WALK_FULL), _ramp(dx, WALK_MIN, WALK_FULL)


def solo_geometry(action: str, feet: np.ndarray, heights: np.ndarray, width: int) -> float | None:
    """Evidence in [0, 1] that a track does a solo `action`, from its camera-stabilised feet
    positions (T, 2) (NaN rows where unseen) and heights (T,); None where boxes cannot tell
    (a wave lives in the arm). walk_left / walk_right: net displacement that way; jump: the
    feet leave their baseline without walking away; stay: neither."""
    ok = ~np.isnan(feet[:, 0])
    if ok.sum() < 2 or action == "wave":
        return None
    y = feet[ok, 1]
    h = max(float(np.nanmedian(heights)), 1.0)
    lift = float(np.max(np.maximum(y[0], y[-1]) - y)) / h  # highest rise above the later baseline
    walk_l, walk_r = _walks(feet[ok, 0], width)
    jump = _ramp(lift, 0.5 * JUMP_FULL, JUMP_FULL) * (1 - max(walk_l, walk_r))
    return {"walk_left": walk_l, "walk_right": walk_r, "jump": jump,
            "stay": (1 - max(walk_l, walk_r)) * (1 - _ramp(lift, 0.3 * JUMP_FULL, 0.6 * JUMP_FULL))}.get(action)


def solo_contradiction(action: str, head: np.ndarray, feet: np.ndarray, heights: np.ndarray,
                       width: int) -> float:
    """How clearly, in [0, 1], a track does what the solo `action` rules out: walking away
    (either way) or a lift of a full jump for a wave or a stay, walking for a jump, walking the
    other way for a walk. Inputs are camera-stabilised (T, 2) positions, NaN where unseen, and
    box heights (T,). Walking is read from the head (the detector's own head boxes), because a
    passer-by's legs behind a subject drag its box sideways but not its head; the lift from the
    feet (box bottoms), because the head box of a subject drifts up toward a jumping neighbour's
    head right behind it while its feet stay put, and only where the box's top rises with them
    (legs hidden behind a passer-by raise a box's bottom alone). Without two head positions the
    feet serve for both. The ramps are those of `solo_geometry` (a walk from WALK_MIN to
    WALK_FULL of the width, a lift from half a jump to a full one), so box noise below a short
    walk or half a jump never vetoes anything."""
    seen_feet = ~np.isnan(feet[:, 0])
    if seen_feet.sum() < 2:
        return 0.0
    seen_head = ~np.isnan(head[:, 0])
    x = head[seen_head, 0] if seen_head.sum() >= 2 else feet[seen_feet, 0]
    bottom = feet[seen_feet, 1]
    top = bottom - heights[seen_feet]
    h = max(float(np.nanmedian(heights)), 1.0)

    def held_lift(y: np.ndarray) -> float:
        # held for two frames above the mean of the two ends: one box edge 1-2 px off (a
        # regressed box, a passer-by's legs) lifts nobody, a jump stays up for most frames
        return (0.5 * float(y[0] + y[-1]) - float(np.sort(y)[1])) / h

    # the whole box must rise: legs hidden behind someone raise a box's bottom, not its top
    lift = _ramp(min(held_lift(bottom), held_lift(top)), 0.5 * JUMP_FULL, JUMP_FULL)
    walk_l, walk_r = _walks(x, width)
    walking = max(walk_l, walk_r)
    return {"wave": max(walking, lift), "stay": max(walking, lift), "jump": walking,
            "walk_left": walk_r, "walk_right": walk_l}.get(action, 0.0)


def pair_geometry(action: str, feet_a: np.ndarray, feet_b: np.ndarray, width: int) -> float | None:
    """Evidence in [0, 1] that two tracks do a pair `action` together, from their stabilised feet
    (T, 2): approach -- both move toward the other (each at least WALK_MIN / 2 of the width) and
    their distance shrinks; swap -- their left-right order flips and both move that way. None
    when the two are seen together in fewer than half the frames (one hides behind a third
    subject): the boxes cannot tell then."""
    ok = ~np.isnan(feet_a[:, 0]) & ~np.isnan(feet_b[:, 0])
    if ok.sum() < max(2, len(ok) / 2):
        return None
    a, b = feet_a[ok, 0] / width, feet_b[ok, 0] / width
    side = np.sign(b[0] - a[0]) or 1.0  # +1: b starts right of a
    move_a, move_b = side * (a[-1] - a[0]), -side * (b[-1] - b[0])  # toward the other's start side
    both = min(_ramp(move_a, 0.25 * WALK_MIN, 0.5 * WALK_MIN), _ramp(move_b, 0.25 * WALK_MIN, 0.5 * WALK_MIN))
    if action == "approach":
        return both * _ramp(abs(b[0] - a[0]) - abs(b[-1] - a[-1]), 0.5 * WALK_MIN, WALK_MIN)
    if action == "swap":
        return both * float(np.sign(b[-1] - a[-1]) == -side) * _ramp(min(move_a, move_b), WALK_MIN, WALK_FULL)
    raise ValueError(f"{action!r} is not a pair action")


COHERENT_LO, COHERENT_HI = 0.4, 0.7  # path coherence counted as none below / in full above


def coherence_credit(coherence: float) -> float:
    """Path coherence (`temporal.path_coherence`) mapped to [0, 1]: ground-truth tracks score
    >= 0.7 (a jump's raised arms jitter the head box a little), frames shuffled under a walker
    0.1-0.7."""
    return _ramp(coherence, COHERENT_LO, COHERENT_HI)


def bound_fidelity(similarity: list[float], binding_k: list[float]) -> float:
    """Mean over subjects of similarity_k x (0.5 + 0.5 binding_k): identity counted in full for
    the subject doing what the caption asks of it, half for the same look doing something else
    (an identity swap keeps every look and exchanges who does what)."""
    if not similarity:
        return 0.0
    return float(np.mean([s * (0.5 + 0.5 * b) for s, b in zip(similarity, binding_k)]))


def half_min(values: list[float], g: float = 0.5) -> float:
    """(1 - g) mean + g min (R_face's mix, g = 0.5): the worst subject or check always counts."""
    if not values:
        return 0.0
    v = np.asarray(values, np.float64)
    return float((1 - g) * v.mean() + g * v.min())


# ----------------------------------------------------------------------------- plausibility

@dataclass
class Plausibility:
    """A clip's plausibility checks, each in [0, 1] (1 = plausible); see the module docstring."""

    count: float  # as many persistent subjects as the caption names
    present: float  # every named subject is confidently there (not noise the detector half-sees)
    no_duplicates: float  # no reference appears twice
    coherent: float  # tracks move like bodies: no teleports, no back-and-forth jumps, no fragments
    no_morphing: float  # each subject keeps one identity over time
    steady_light: float  # no flicker
    alive: float  # nobody is a frozen cut-out
    lifelike: float  # every named subject is a person (the critic's subject branch), not a blob

    @property
    def natural(self) -> float:
        """0.4 mean + 0.6 min of the checks: a single failed check (nobody there, a frozen
        cast, flicker) costs at least 0.6 of the channel."""
        return half_min(list(asdict(self).values()), g=0.6)

    def as_dict(self) -> dict:
        return {**asdict(self), "natural": self.natural}


def count_check(num_tracks: int, expected: int) -> float:
    """1 - |tracks - expected| / expected, clipped to [0, 1] (0 when nobody is expected)."""
    if expected <= 0:
        return 0.0
    return float(np.clip(1 - abs(num_tracks - expected) / expected, 0, 1))


def present_check(track_scores: list[float], matched: list[int], expected: int) -> float:
    """Mean over references of min(1, mean detector score of its track / DETECTION_CONFIDENT);
    0 for a reference without a track. (The judge scores a detection recovered by identity,
    `recover.py`, as DETECTION_CONFIDENT: its reference confirmed it.)"""
    if expected <= 0:
        return 0.0
    vals = [min(1.0, track_scores[j] / DETECTION_CONFIDENT) if j >= 0 else 0.0 for j in matched]
    return float(np.mean(vals))


def duplicate_check(track_ref: np.ndarray, match: list[int], threshold: float = 0.6, margin: float = 0.15) -> float:
    """1 - duplicates / references, in [0, 1]; 0 without any track. track_ref (K, N) similarity
    of references to tracks, `match` (K,) each reference's track (-1: none).

    A duplicate is an unmatched track that looks like some reference (> `threshold`), or a
    matched track that is clearly another reference r2 (> `threshold`, and `margin` above its
    similarity to its own reference) while r2's own track is r2's too: two of one person with one
    missing, which the one-to-one matching otherwise hides by giving the copy the missing
    reference (measured 2026-12-04: it fires on 24 of 24 `duplicate` attacks of seeds 1234 and
    8080 and on none of 144 ground-truth clips where the unmatched-only check did not).
    """
    k, n = track_ref.shape
    if n == 0 or k == 0:
        return 0.0
    extra = [j for j in range(n) if j not in match]
    dup = sum(float(track_ref[:, j].max()) > threshold for j in extra)
    for r, j in enumerate(match):
        if j < 0:
            continue
        dup += any(r2 != r and j2 >= 0 and track_ref[r2, j] > threshold and track_ref[r2, j2] > threshold
                   and track_ref[r2, j] - track_ref[r, j] > margin for r2, j2 in enumerate(match))
    return float(np.clip(1 - dup / k, 0, 1))


def teleport_free(track_boxes: list[np.ndarray], max_jump: float = 0.6) -> list[bool]:
    """Per track: its centre never moves more than `max_jump` x its height per frame."""
    out = []
    for b in track_boxes:
        c = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
        h = np.nanmedian(b[:, 3] - b[:, 1])
        idx = np.where(~np.isnan(c[:, 0]))[0]
        jumps = [np.linalg.norm(c[j] - c[i]) / (j - i) for i, j in zip(idx[:-1], idx[1:])]
        out.append(not jumps or max(jumps) <= max_jump * max(h, 1.0))
    return out


def coherence_check(coherences: list[float], teleports_ok: list[bool], fragments: int, expected: int) -> float:
    """The worst track's `coherence_credit` x no-teleport, minus the share of extra track
    fragments (a subject that jumps starts a new track), clipped to [0, 1]; 0 without any track."""
    if not coherences:
        return 0.0
    base = float(min(coherence_credit(c) * float(ok) for c, ok in zip(coherences, teleports_ok)))
    return float(np.clip(base - fragments / max(expected, 1), 0, 1))


def morph_check(track_frame_embs: list[np.ndarray], threshold: float = 0.5) -> float:
    """Fraction of tracks whose first-third and last-third mean embeddings agree (cos >= threshold);
    0 without any track. track_frame_embs: one (n_i, D) array of unit embeddings per track."""
    if not track_frame_embs:
        return 0.0
    ok = 0
    for e in track_frame_embs:
        if len(e) < 3:
            ok += 1
            continue
        third = max(len(e) // 3, 1)
        a, b = e[:third].mean(0), e[-third:].mean(0)
        ok += float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-8)) >= threshold
    return ok / len(track_frame_embs)


PERSON_LO, PERSON_HI = 0.25, 0.6  # mean P(person) of a track: surely not one / surely one


def lifelike_check(track_person: list[float], matched: list[int]) -> float:
    """Mean over references of ramp(its track's mean P(person) (critic, subject branch),
    PERSON_LO, PERSON_HI); 0 unmatched. Ground-truth tracks average 0.7-0.95 (crops of a
    subject half hidden behind another look partial), faceless blobs and half bodies 0.1-0.15."""
    if not matched:
        return 0.0
    return float(np.mean([_ramp(track_person[j], PERSON_LO, PERSON_HI) if j >= 0 else 0.0 for j in matched]))


def light_check(flicker_value: float) -> float:
    """1 - flicker / FLICKER_FULL, clipped: steady light scores 1."""
    return float(np.clip(1 - flicker_value / FLICKER_FULL, 0, 1))
