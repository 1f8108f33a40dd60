"""Linking per-frame detections into subject tracks.

SpriteWorld subjects walk 2-4 px per frame at 9 frames (up to ~6 px at 5 frames), cross each
other in "swap" clips, and one hidden behind another may vanish for 2-5 frames. Each track
predicts where it will be with a constant-velocity model fitted to its head-box centres (the
head does not swing like arms and legs, so it moves far more smoothly than the body box);
frame-to-frame assignment is Hungarian on a cost that mixes IoU with the predicted box, the
distance to the predicted head centre and the height change (nearer subjects are taller),
with a gate so that far-apart boxes never link. A track missing for at most `max_gap` frames
can be resumed.

Boxes alone cannot tell who is who when one subject disappears behind another and reappears
where the other stands, so the cost also compares a tiny colour descriptor of each detection
(`box_appearance`: mean colours of the hair, face, shirt and trousers bands) with the track's
running mean, when detections carry one (`AppearanceDetection`, which `SpriteDetector`
returns) or when `link_tracks` is given the frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from idcrafter.judge.interfaces import Detection


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes (N, 4) x (M, 4) (x0, y0, x1, y1) -> (N, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass(frozen=True)
class AppearanceDetection(Detection):
    """A `Detection` that also carries `box_appearance` of its box, (12,) floats in [0, 1]."""

    appearance: np.ndarray | None = None


APPEARANCE_BANDS = ((0.02, 0.14), (0.20, 0.32), (0.42, 0.58), (0.70, 0.85))  # hair, face, shirt, legs


def box_appearance(image: np.ndarray, box: np.ndarray, head: np.ndarray | None = None) -> np.ndarray:
    """(12,) mean RGB in [0, 1] of four horizontal bands of a subject (fractions of the body box
    height in APPEARANCE_BANDS), over the central 30% of its width around the head's centre x
    (the head and torso are aligned, whereas arms widen the body box to one side)."""
    img = np.asarray(image)
    hgt, wid = img.shape[:2]
    x0, y0, x1, y1 = [float(v) for v in box]
    cx = (float(head[0]) + float(head[2])) / 2 if head is not None else (x0 + x1) / 2
    half = max(0.15 * (x1 - x0), 1.0)
    c0 = int(np.clip(np.floor(cx - half), 0, wid - 1))
    c1 = int(np.clip(np.ceil(cx + half), c0 + 1, wid))
    out = []
    for a, b in APPEARANCE_BANDS:
        r0 = int(np.clip(np.floor(y0 + a * (y1 - y0)), 0, hgt - 1))
        r1 = int(np.clip(np.ceil(y0 + b * (y1 - y0)), r0 + 1, hgt))
        out.append(img[r0:r1, c0:c1].reshape(-1, 3).mean(0) / 255.0)
    return np.concatenate(out).astype(np.float32)


def with_appearance(frames: np.ndarray, dets: list[list[Detection]]) -> list[list[AppearanceDetection]]:
    """Attach `box_appearance` to every detection of (T, H, W, 3) frames."""
    return [[AppearanceDetection(d.box, d.score, d.face_box, box_appearance(frames[t], d.box, d.face_box))
             for d in frame] for t, frame in enumerate(dets)]


def _appearance(d: Detection) -> np.ndarray | None:
    return getattr(d, "appearance", None)


@dataclass
class Track:
    """One subject over T frames: `frames[t]` is its detection in frame t, or None."""

    frames: list[Detection | None] = field(default_factory=list)

    def boxes(self) -> np.ndarray:
        """(T, 4) whole-body boxes, NaN rows where the subject was not seen."""
        out = np.full((len(self.frames), 4), np.nan, np.float32)
        for t, d in enumerate(self.frames):
            if d is not None:
                out[t] = d.box
        return out

    def head_boxes(self) -> np.ndarray:
        """(T, 4) head boxes (the body box when the detector gave none), NaN where missing."""
        out = np.full((len(self.frames), 4), np.nan, np.float32)
        for t, d in enumerate(self.frames):
            if d is not None:
                out[t] = d.head
        return out

    def present(self) -> np.ndarray:
        """(T,) bool: frames where the subject was seen."""
        return np.array([d is not None for d in self.frames], bool)

    def last_seen(self) -> int:
        idx = np.flatnonzero(self.present())
        return int(idx[-1]) if len(idx) else -1


def _anchor(d: Detection) -> np.ndarray:
    """(2,) the point a track follows: the head box centre (the head does not swing like arms
    and legs do, so it moves ~4x more smoothly than the body box centre), else the box centre."""
    h = np.asarray(d.head, np.float64)
    return (h[:2] + h[2:]) / 2


def _predict(track: Track, t: int, history: int = 4, shrink: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The track's (4,) body box and (2,) anchor extrapolated to frame t.

    Anchor velocity: least squares over the last `history` observations, shrunk toward zero
    (`shrink` acts as that many frames^2 of prior "stationary" evidence) because two jittery
    observations say little about speed; vertical velocity halved (jumps are not constant).
    Body box: the last observed one, moved with the anchor, its size the recent median.
    """
    seen = np.flatnonzero(track.present())[-history:]
    anchors = np.stack([_anchor(track.frames[i]) for i in seen])  # (n, 2)
    boxes = np.stack([track.frames[i].box for i in seen]).astype(np.float64)  # (n, 4)
    vel = np.zeros(2)
    if len(seen) >= 2:
        ts = seen - seen.mean()
        vel = (ts[:, None] * (anchors - anchors.mean(0))).sum(0) / ((ts ** 2).sum() + shrink)
        vel[1] *= 0.5
    anchor = anchors[-1] + vel * (t - seen[-1])
    size = np.median(boxes[:, 2:] - boxes[:, :2], 0)
    centre = (boxes[-1, :2] + boxes[-1, 2:]) / 2 + anchor - anchors[-1]
    return np.concatenate([centre - size / 2, centre + size / 2]), anchor


def _link_cost(pred: np.ndarray, anchors: np.ndarray, boxes: np.ndarray, det_anchors: np.ndarray,
               gaps: np.ndarray, iou_min: float) -> np.ndarray:
    """(N tracks, M detections) cost; np.inf where the pair is gated out.

    cost = (1 - IoU) + 2 * anchor distance / height + |log height ratio| + 0.05 per extra
    frame unseen. A pair may link when IoU >= iou_min and the anchors are within 0.3 heights
    (plus 0.1 per extra frame unseen, as the prediction drifts).
    """
    iou = box_iou(pred, boxes)
    hp = np.maximum(pred[:, 3] - pred[:, 1], 1.0)
    hb = np.maximum(boxes[:, 3] - boxes[:, 1], 1.0)
    scale = np.sqrt(hp[:, None] * hb[None, :])
    dist = np.linalg.norm(anchors[:, None] - det_anchors[None], axis=-1) / scale
    cost = (1 - iou) + 2 * dist + np.abs(np.log(hp[:, None] / hb[None, :])) + 0.05 * (gaps[:, None] - 1)
    ok = (iou >= iou_min) & (dist <= 0.3 + 0.1 * (gaps[:, None] - 1))
    return np.where(ok, cost, np.inf)


def _frame_cost(live: list[Track], frame: list[Detection], t: int, iou_min: float,
                appearance_weight: float) -> np.ndarray:
    """(N live tracks, M detections) linking cost of frame t, np.inf where gated out."""
    preds = [_predict(tr, t) for tr in live]
    pred = np.stack([p[0] for p in preds])  # (N, 4)
    anchors = np.stack([p[1] for p in preds])  # (N, 2)
    gaps = np.array([t - tr.last_seen() for tr in live], np.float64)  # (N,) 1 = seen last frame
    boxes = np.stack([np.asarray(d.box, np.float64) for d in frame])  # (M, 4)
    det_anchors = np.stack([_anchor(d) for d in frame])  # (M, 2)
    cost = _link_cost(pred, anchors, boxes, det_anchors, gaps, iou_min)
    det_app = [_appearance(d) for d in frame]
    if appearance_weight > 0 and all(a is not None for a in det_app):
        for r, tr in enumerate(live):
            seen = [_appearance(d) for d in tr.frames if d is not None]
            if seen and all(a is not None for a in seen):
                mean = np.mean(seen, 0)  # (12,) the track's running appearance
                cost[r] += appearance_weight * np.abs(np.stack(det_app) - mean).mean(1)
    return cost


def link_tracks(dets: list[list[Detection]], iou_min: float = 0.1, max_gap: int = 8,
                frames: np.ndarray | None = None, appearance_weight: float = 6.0) -> list[Track]:
    """Per-frame detections (T lists) -> tracks, each holding T entries (Detection or None).

    Frame by frame, live tracks (last seen at most `max_gap` frames ago) are matched to the
    frame's detections by Hungarian assignment on `_link_cost` (+ appearance_weight x the mean
    absolute colour difference when detections carry `appearance`, or when `frames` (T, H, W, 3)
    are given to compute it); unmatched detections start new tracks. Tracks are returned in
    order of first appearance.

    Defaults measured on held-out clips (`evaluate_tracking`, seed 4321): occlusions hide a
    subject for 2-5 frames, and letting any track resume (max_gap=8, the whole of a 9-frame
    clip) gives the right number of tracks in ~95% of clips against ~90% with max_gap=1,
    without more identity switches; the gate and the appearance term keep resumptions honest.
    """
    from scipy.optimize import linear_sum_assignment

    if frames is not None:
        dets = with_appearance(frames, dets)
    t_total = len(dets)
    tracks: list[Track] = []
    for t, frame in enumerate(dets):
        live = [tr for tr in tracks if t - tr.last_seen() <= max_gap + 1]
        taken: set[int] = set()
        if live and frame:
            cost = _frame_cost(live, frame, t, iou_min, appearance_weight)
            rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e6))
            for r, c in zip(rows, cols):
                if np.isfinite(cost[r, c]):
                    live[r].frames[t] = frame[c]
                    taken.add(int(c))
        for c, d in enumerate(frame):
            if c not in taken:
                tr = Track([None] * t_total)
                tr.frames[t] = d
                tracks.append(tr)
    return tracks


def tracks_from_ground_truth(clip, min_visibility: float = 0.0) -> list[Track]:
    """One track per subject of a `RenderedClip` from its GT boxes (head boxes as face boxes).

    Boxes are amodal, so by default every frame is filled; with min_visibility > 0, frames
    where the subject is less visible than that are left empty (None).
    """
    t, k = clip.visibility.shape
    tracks = []
    for i in range(k):
        frames: list[Detection | None] = []
        for f in range(t):
            seen = min_visibility <= 0 or clip.visibility[f, i] >= min_visibility
            frames.append(Detection(box=clip.boxes[f, i].copy(), score=1.0, face_box=clip.head_boxes[f, i].copy())
                          if seen else None)
        tracks.append(Track(frames))
    return tracks


# ----------------------------------------------------------------------------- evaluation

def identity_switches(tracks: list[Track], gt_boxes: np.ndarray, iou_thr: float = 0.5, strict: bool = False) -> int:
    """Number of tracks that switch identity against ground truth boxes (T, K, 4).

    Tracks are assigned to GT subjects by Hungarian matching on mean IoU over the frames where
    the track is present. A matched track switches if, in some frame, its detection covers
    another subject (IoU >= iou_thr) but not its own (IoU < iou_thr); with `strict`, already
    when another subject's box overlaps it best (when a subject hides behind another their
    amodal boxes coincide, so strict counts box-level ties as switches). An unmatched track
    switches if its detections cover two or more subjects.
    """
    from scipy.optimize import linear_sum_assignment

    if not tracks:
        return 0
    ious = [{t: box_iou(d.box, gt_boxes[t])[0] for t, d in enumerate(tr.frames) if d is not None}
            for tr in tracks]  # per track: frame -> (K,) IoU with each subject
    mean_iou = np.stack([np.mean(list(per.values()), 0) for per in ious])  # (N, K)
    rows, cols = linear_sum_assignment(-mean_iou)
    assigned = {int(r): int(c) for r, c in zip(rows, cols) if mean_iou[r, c] > 0}
    switches = 0
    for j, per in enumerate(ious):
        if j not in assigned:
            switches += int(len({int(v.argmax()) for v in per.values() if v.max() >= iou_thr}) >= 2)
            continue
        g = assigned[j]
        for v in per.values():
            other = np.delete(v, g).max(initial=0.0)
            lost = v.argmax() != g if strict else v[g] < iou_thr
            if other >= iou_thr and lost:
                switches += 1
                break
    return switches


def evaluate_tracking(detector, num_clips: int = 200, seed: int = 1234, frames: int = 9,
                      min_presence: float = 0.3, **link_kwargs) -> dict:
    """Held-out tracking figures on clean and degraded (strength 1.0) clips of `frames` frames.

    track_no_switch(_strict): fraction of clips without an identity switch
    (`identity_switches`); track_count_ok: fraction of clips whose number of tracks present in
    >= min_presence of the frames equals the number of subjects visible (>= 0.5) in
    >= min_presence of the frames (what the judge counts).
    """
    from idcrafter.world.dataset import make_example
    from idcrafter.world.degrade import degrade
    from idcrafter.world.scene import WorldConfig

    rng = np.random.default_rng([seed, 17])
    cfg = WorldConfig(frames=frames)
    tag = "" if frames == 9 else f"_{frames}f"
    res: dict[str, list[bool]] = {}
    for i in range(num_clips):
        c = make_example(seed, i, "heldout", cfg).clip
        want = int(((c.visibility >= 0.5).mean(0) >= min_presence).sum())
        for suffix, fr in (("", c.frames), ("_degraded", degrade(c.frames, rng, 1.0))):
            tracks = link_tracks(detector.detect_video(fr), frames=fr, **link_kwargs)
            kept = [tr for tr in tracks if tr.present().sum() >= max(1, min_presence * frames)]
            for name, ok in (("no_switch", identity_switches(tracks, c.boxes) == 0),
                             ("no_switch_strict", identity_switches(tracks, c.boxes, strict=True) == 0),
                             ("count_ok", len(kept) == want)):
                res.setdefault(f"track_{name}{tag}{suffix}", []).append(ok)
    return {k: float(np.mean(v)) for k, v in res.items()}


MIN_TRACK_PRESENCE = 0.3  # a track must be seen in 30% of frames to count as a subject


def detect_tracks(detector, frames: np.ndarray, min_presence: float = MIN_TRACK_PRESENCE,
                  with_fragments: bool = False):
    """Detections per frame and the tracks the judge keeps (seen in >= min_presence of frames).

    The one place that turns a clip into subject tracks: the judge and the action recogniser's
    training both call it, so the recogniser learns on the tracks it will be given. With
    `with_fragments`, also the number of dropped fragments seen in >= 2 frames (a subject that
    teleports leaves its track behind and starts new ones).
    """
    dets = detector.detect_video(frames)
    t = len(frames)
    need = max(1, min_presence * t)
    raw = link_tracks(dets)
    tracks = [tr for tr in raw if tr.present().sum() >= need]
    if not with_fragments:
        return dets, tracks
    fragments = sum(1 for tr in raw if 2 <= tr.present().sum() < need)
    return dets, tracks, fragments
