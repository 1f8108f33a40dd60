"""What happens over time in a clip, with the camera taken out: pure functions of frames and boxes.

A generator can fake motion by shaking or flickering a still picture, so the judge never reads
raw frame differences. Between consecutive frames it first estimates the camera
(`camera_motion`: an affine warp fitted by ECC on the pixels outside every detected subject, kept
only when it explains the background better than a still camera) and the light (`light_gains`:
per-channel gain of the background), then reads what is left:

- `residual_maps`: per pair, |frame t-1 - (camera- and light-compensated frame t)|, both lightly
  blurred so that resampling a shaken frame leaves no edges behind;
- `subject_activity`: per subject and pair, the fraction of the subject's box that changed by
  more than `CHANGE_LEVEL` beyond what the camera and a rigid move of the subject explain (its
  articulation: a sliding cut-out has none);
- `subject_displacement`: per subject, camera-compensated speed of its head, in heights / frame;
- `flicker`: the light's frame-to-frame change;
- `path_coherence` / `bounce_coherence`: whether a track moves like a body (steady velocity, a
  jump that turns once) or jumps back and forth.

ECC (Evangelidis & Psarakis 2008) is invariant to gain and offset, so the camera fit survives the
brightness jumps of a flickering or shaken clip.
"""

from __future__ import annotations

import numpy as np

BLUR_SIGMA = 0.8  # px: equalises the resampling blur of warped and unwarped frames
CHANGE_LEVEL = 25.0  # grey levels (of 255) above which a compensated pixel counts as changed
BORDER = 3  # px ignored at the frame border (warps fill it by reflection)
STILL_RESIDUAL = 0.25  # mean background change (grey levels) below which the camera did not move


def _gray(frame: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), BLUR_SIGMA)


def _box_mask(shape: tuple[int, int], boxes: list[np.ndarray], margin: float = 2.0) -> np.ndarray:
    """(H, W) bool: True outside every box (grown by `margin` px)."""
    h, w = shape
    keep = np.ones((h, w), bool)
    for b in boxes:
        if b is None or np.isnan(b[0]):
            continue
        x0, y0 = int(max(np.floor(b[0] - margin), 0)), int(max(np.floor(b[1] - margin), 0))
        x1, y1 = int(min(np.ceil(b[2] + margin), w)), int(min(np.ceil(b[3] + margin), h))
        keep[y0:y1, x0:x1] = False
    return keep


def compose_warps(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The (2, 3) warp of two camera steps: x2 = A2 (A1 x + b1) + b2."""
    a1, b1, a2, b2 = first[:, :2], first[:, 2], second[:, :2], second[:, 2]
    return np.concatenate([a2 @ a1, (a2 @ b1 + b2)[:, None]], 1).astype(np.float32)


def warp_to(frame: np.ndarray, warp: np.ndarray) -> np.ndarray:
    """`frame` resampled into the template's coordinates (ECC convention: template(x) ~ frame(W x))."""
    import cv2

    h, w = frame.shape[:2]
    return cv2.warpAffine(frame.astype(np.float32), warp, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT)


def _robust_residual(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """Mean of min(|a - g b|, 50) over `valid` pixels, g the ratio of medians (a brightness-free
    comparison; the cap keeps a few unmasked movers from deciding it)."""
    av, bv = a[valid], b[valid]
    if av.size == 0:
        return float("inf")
    g = float(np.median(av) / max(np.median(bv), 1e-3))
    return float(np.minimum(np.abs(av - g * bv), 50.0).mean())


def _ecc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None, init: np.ndarray | None = None) -> np.ndarray | None:
    """ECC affine fit of b onto a (optionally on `mask` only, from `init`), None when it fails or
    runs wild."""
    import cv2

    start = np.eye(2, 3, dtype=np.float32) if init is None else init.astype(np.float32).copy()
    try:
        _, warp = cv2.findTransformECC(a, b, start, cv2.MOTION_AFFINE,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 60, 1e-5),
                                       None if mask is None else (mask * 255).astype(np.uint8), 3)
    except cv2.error:  # no texture to fit, or no convergence
        return None
    if not np.all(np.isfinite(warp)) or np.abs(warp[:, :2] - np.eye(2)).max() > 0.25 or np.abs(warp[:, 2]).max() > 8:
        return None
    return warp.astype(np.float32)


def camera_motion(prev: np.ndarray, cur: np.ndarray, boxes: list[np.ndarray]) -> np.ndarray:
    """(2, 3) affine warp taking `prev`'s pixel grid to `cur` (identity for a still camera).

    Candidates: the identity, ECC on the whole frame and ECC on the background only (outside
    `boxes`, the subjects of both frames; it fails on flat backgrounds, the whole-frame fit then
    carries it). The candidate with the lowest background residual wins, a moving one only when
    it beats the identity by 10%: a still camera on a near-flat background must not drift toward
    the spurious zoom that the moving subjects suggest.
    """
    a, b = _gray(prev), _gray(cur)
    h, w = a.shape
    inner = np.zeros((h, w), bool)
    inner[BORDER:h - BORDER, BORDER:w - BORDER] = True
    bg = _box_mask((h, w), boxes) & inner
    if bg.sum() < 0.1 * h * w:  # subjects everywhere: judge the fit on the whole frame
        bg = inner
    eye = np.eye(2, 3, dtype=np.float32)
    best, best_res = eye, 0.9 * _robust_residual(a, b, bg)
    if best_res < STILL_RESIDUAL:  # the background did not change: a still camera, no fit needed
        return eye
    for warp in (_ecc(a, b, None), _ecc(a, b, bg)):
        if warp is not None:
            res = _robust_residual(a, warp_to(b, warp), bg)
            if res < best_res:
                best, best_res = warp, res
    return best


def light_gains(prev: np.ndarray, cur_aligned: np.ndarray, background: np.ndarray) -> np.ndarray:
    """(3,) per-channel gain g with cur_aligned ~ g * prev on the background (median ratios)."""
    p = prev.reshape(-1, 3)[background.ravel()].astype(np.float32)
    c = cur_aligned.reshape(-1, 3)[background.ravel()].astype(np.float32)
    if len(p) < 16:
        return np.ones(3, np.float32)
    ok = (p > 12).all(1)  # ratios of near-black pixels are noise
    if ok.sum() < 16:
        return np.ones(3, np.float32)
    return np.median(c[ok] / p[ok], axis=0).astype(np.float32)


def compensate(frames: np.ndarray, boxes_per_frame: list[list[np.ndarray]]) -> dict:
    """Camera and light of every consecutive pair of (T, H, W, 3) uint8 frames.

    boxes_per_frame: T lists of (4,) subject boxes (detections). Returns warps (T-1, 2, 3),
    gains (T-1, 3) (frame t ~ gain * frame t-1 on the background), residual (T-1, H, W) float32:
    |blur(frame t-1) - blur(compensated frame t)| (max over channels), `pairs`: the two blurred
    (H, W, 3) float32 frames of each step in frame t-1's grid (light compensated), `pairs2` the
    same for frames two apart (t-2, t) (T-2 of them), `background_change`
    (T-1,): the fraction of background pixels changed by more than CHANGE_LEVEL (how much the
    compensation left behind, or how much the whole scene boils), and `border` (H, W) bool, the
    pixels far enough from the frame edge to be read.
    """
    import cv2

    t, h, w = frames.shape[:3]
    warps, gains, res, bg_change, pairs, pairs2 = [], [], [], [], [], []
    inner = np.zeros((h, w), bool)
    inner[BORDER:h - BORDER, BORDER:w - BORDER] = True
    for i in range(1, t):
        boxes = list(boxes_per_frame[i - 1]) + list(boxes_per_frame[i])
        warp = camera_motion(frames[i - 1], frames[i], boxes)
        cur = warp_to(frames[i], warp)  # (H, W, 3) float32 in frame i-1's grid
        bg = _box_mask((h, w), boxes) & inner
        g = light_gains(frames[i - 1], cur, bg)
        prev_b = cv2.GaussianBlur(frames[i - 1].astype(np.float32), (0, 0), BLUR_SIGMA)
        cur_b = cv2.GaussianBlur(cur / np.maximum(g, 1e-3), (0, 0), BLUR_SIGMA)
        warps.append(warp)
        gains.append(g)
        res.append(np.abs(prev_b - cur_b).max(-1))
        pairs.append((prev_b, cur_b))
        if i >= 2:  # frame i in frame i-2's grid: the two steps' warps composed (refined by ECC
            # when the camera moved and the refinement explains the background better)
            both = compose_warps(warps[-2], warp)
            if not (np.allclose(warps[-2], np.eye(2, 3)) and np.allclose(warp, np.eye(2, 3))):
                a2, b2 = _gray(frames[i - 2]), _gray(frames[i])
                bg2 = _box_mask((h, w), list(boxes_per_frame[i - 2]) + list(boxes_per_frame[i])) & inner
                refined = _ecc(a2, b2, None, both)
                if refined is not None and _robust_residual(a2, warp_to(b2, refined), bg2) < \
                        _robust_residual(a2, warp_to(b2, both), bg2):
                    both = refined
            far = warp_to(frames[i], both) / np.maximum(gains[-2] * g, 1e-3)
            prev2 = cv2.GaussianBlur(frames[i - 2].astype(np.float32), (0, 0), BLUR_SIGMA)
            pairs2.append((prev2, cv2.GaussianBlur(far, (0, 0), BLUR_SIGMA)))
        bg_change.append(float((res[-1][bg] > CHANGE_LEVEL).mean()) if bg.any() else 0.0)
    return {"warps": np.stack(warps) if warps else np.zeros((0, 2, 3), np.float32),
            "gains": np.stack(gains) if gains else np.zeros((0, 3), np.float32),
            "residual": np.stack(res) if res else np.zeros((0, h, w), np.float32),
            "background_change": np.array(bg_change, np.float32), "border": inner, "pairs": pairs,
            "pairs2": pairs2}


def _local_shift(prev: np.ndarray, cur: np.ndarray, init: np.ndarray) -> np.ndarray:
    """(2,) translation d with prev(x) ~ cur(x + d) on a patch (grey, ECC), `init` when it fails."""
    import cv2

    warp = np.array([[1, 0, init[0]], [0, 1, init[1]]], np.float32)
    try:
        _, warp = cv2.findTransformECC(prev.mean(-1), cur.mean(-1), warp, cv2.MOTION_TRANSLATION,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 40, 1e-4), None, 1)
    except cv2.error:
        return init.astype(np.float32)
    d = warp[:, 2]
    return d if np.all(np.isfinite(d)) and np.abs(d - init).max() < 6 else init.astype(np.float32)


def _shift_candidates(init: np.ndarray, fitted: np.ndarray) -> list[np.ndarray]:
    """Rigid moves tried for a subject: the ECC fit, and a 0.5 px grid of +-1 px around the boxes'
    displacement (ECC alone can lock onto the static background around a small subject)."""
    grid = [init + np.array([dx, dy], np.float32) for dx in (-1, -0.5, 0, 0.5, 1) for dy in (-1, -0.5, 0, 0.5, 1)]
    return [fitted.astype(np.float32)] + grid


def subject_activity(comp: dict, track_boxes: np.ndarray, level: float = CHANGE_LEVEL,
                     margin: int = 3, lag: int = 1) -> np.ndarray:
    """(T-lag,) articulation of a subject between frames t and t+lag (`comp["pairs"]` for lag 1,
    `comp["pairs2"]` for lag 2); NaN where it is seen in neither frame.

    Per step, on the union of the subject's two boxes (+ `margin` px), with the camera and
    light already taken out (`compensate`): the subject's own translation d is fitted, and a
    pixel counts as changed when it differs by more than `level` both from the next frame as it
    is and from the next frame shifted back by d (the d, among `_shift_candidates`, that leaves
    the fewest changed pixels). What a
    rigid move explains (a subject, or a pasted cut-out, sliding; the background it uncovers)
    is not articulation: only limbs that move, a body that turns or deforms, are (up to the thin
    strip of textured background a sliding subject covers at its leading edge). The changed
    fraction, minus twice the background's (`background_change`: what changes only as much as
    the whole scene does is not the subject's), clipped at 0.
    track_boxes (T, 4), NaN rows where missing.
    """
    import cv2

    pairs = comp["pairs"] if lag == 1 else comp["pairs2"]
    border, bg_steps = comp["border"], np.asarray(comp["background_change"], np.float64)
    # the background change of a lag-2 pair: the larger of its two steps'
    bg = bg_steps if lag == 1 else np.maximum(bg_steps[:-1], bg_steps[1:])
    n = len(pairs)
    h, w = border.shape
    out = np.full(n, np.nan, np.float32)
    for i in range(n):
        a, b = track_boxes[i], track_boxes[i + lag]
        seen = [x for x in (a, b) if not np.isnan(x[0])]
        if not seen:
            continue
        x0 = int(max(np.floor(min(s[0] for s in seen)) - margin, 0))
        y0 = int(max(np.floor(min(s[1] for s in seen)) - margin, 0))
        x1 = int(min(np.ceil(max(s[2] for s in seen)) + margin, w))
        y1 = int(min(np.ceil(max(s[3] for s in seen)) + margin, h))
        region = border[y0:y1, x0:x1]
        if region.sum() < 4 or x1 - x0 < 4 or y1 - y0 < 4:
            continue
        prev, cur = pairs[i]
        init = np.zeros(2, np.float32)
        if len(seen) == 2:
            init = (((b[:2] + b[2:]) - (a[:2] + a[2:])) / 2).astype(np.float32)
        p = prev[y0:y1, x0:x1]
        still = np.abs(p - cur[y0:y1, x0:x1]).max(-1)
        best = None
        for d in _shift_candidates(init, _local_shift(p, cur[y0:y1, x0:x1], init)):
            m = np.array([[1, 0, d[0] + x0], [0, 1, d[1] + y0]], np.float32)  # cur(x + d)
            moved = cv2.warpAffine(cur, m, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                   borderMode=cv2.BORDER_REFLECT)
            diff = np.minimum(still, np.abs(p - moved).max(-1))[region]
            score = (float((diff > level).mean()), float(diff.mean()))
            best = score if best is None or score < best else best
        out[i] = max(best[0] - 2.0 * float(bg[i]), 0.0)
    return out


def step_activity(comp: dict, track_boxes: np.ndarray) -> np.ndarray:
    """(T-1,) per frame step t -> t+1: the larger of its own articulation and that of the two
    lag-2 pairs containing it (t-1 -> t+1, t -> t+2). Idle sway is slow: between consecutive
    frames it can pause at its turns, over two frames it shows."""
    a1 = subject_activity(comp, track_boxes)
    if len(a1) < 2:
        return a1
    a2 = subject_activity(comp, track_boxes, lag=2)  # (T-2,): pair (t, t+2) covers steps t and t+1
    stacked = np.stack([a1, np.concatenate([a2, [np.nan]]), np.concatenate([[np.nan], a2])])
    out = np.nanmax(np.where(np.isnan(stacked), -1.0, stacked), 0)
    return np.where(np.isnan(a1) & (out < 0), np.nan, np.maximum(out, 0.0)).astype(np.float32)


def apply_warp_to_points(warp: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Points (N, 2) of frame t-1's grid mapped into frame t (x' = A x + b)."""
    return pts @ warp[:, :2].T + warp[:, 2]


def subject_displacement(anchors: np.ndarray, heights: np.ndarray, warps: np.ndarray) -> np.ndarray:
    """(T-1,) camera-compensated head speed in heights per frame (NaN where unseen).

    anchors (T, 2) head centres with NaN rows; heights (T,); warps (T-1, 2, 3) from `compensate`.
    The camera's own displacement of the previous anchor is removed before measuring.
    """
    n = len(warps)
    out = np.full(n, np.nan, np.float32)
    for i in range(n):
        a, b = anchors[i], anchors[i + 1]
        if np.isnan(a[0]) or np.isnan(b[0]):
            continue
        moved_by_camera = apply_warp_to_points(warps[i], a[None])[0]
        h = np.nanmean([heights[i], heights[i + 1]])
        out[i] = float(np.linalg.norm(b - moved_by_camera) / max(h, 1.0))
    return out


def flicker(gains: np.ndarray) -> float:
    """Mean over pairs of the largest per-channel |log gain|: 0 under steady light."""
    if len(gains) == 0:
        return 0.0
    return float(np.mean(np.abs(np.log(np.clip(gains, 1e-3, None))).max(-1)))


def stabilise(points: np.ndarray, warps: np.ndarray) -> np.ndarray:
    """Points (T, 2) of each frame's own grid (NaN rows allowed) mapped into frame 0's grid by
    undoing the camera: x_{t-1} = A^-1 (x_t - b) for each pair's warp (x_t = A x_{t-1} + b)."""
    out = np.array(points, np.float64)
    for t in range(1, len(out)):
        p = out[t]
        if np.isnan(p[0]):
            continue
        for i in range(t - 1, -1, -1):  # back through the pairs (i, i+1) to frame 0
            a, b = warps[i][:, :2].astype(np.float64), warps[i][:, 2].astype(np.float64)
            p = np.linalg.solve(a, p - b)
        out[t] = p
    return out


CROWD_DEADZONE = 0.15  # heights: a head's box jitters by up to ~0.13 h while another subject overlaps it
LOOSE_DEADZONE = 0.2  # heights: a recovered box's centre sits up to ~0.2 h off its subject's path


def path_coherence(anchors: np.ndarray, heights: np.ndarray, deadzone: float = 0.03,
                   crowded: np.ndarray | None = None, loose: np.ndarray | None = None) -> float:
    """How far a track's horizontal path is from back-and-forth jumps, in [0, 1] (1 = a body's).

    anchors (T, 2) camera-stabilised head centres (NaN where unseen), heights (T,). Horizontal
    velocities are shrunk toward 0 by `deadzone` heights per frame (idle sway, detector jitter),
    and by `CROWD_DEADZONE` heights more for a step that starts or ends in a `crowded` (T,) frame
    (the track's box overlaps another subject's: the detector's peak is pulled toward the other
    head by 2-3 px, measured on ground truth, where 9 of 13 low-scoring clips of 120 failed this
    check on a still subject that two walkers passed), and by `LOOSE_DEADZONE` heights more for
    a step that starts or ends at a `loose` (T,) anchor (a box recovered by identity, anchored at
    its box centre, which is regressed off its subject by a few pixels); then, with L the path
    length and R the sum of |v_t - v_{t-1}| over velocity reversals (a pause between two
    opposite moves still counts), a body walking or standing moves steadily (R ~ 0) while
    shuffled frames jump back and forth by several steps of a walk (R ~ 2 L):
    score = 1 - clip((R - 0.15 L) / (L + 0.05 n h), 0, 1), n the number of steps.
    """
    ok = ~np.isnan(anchors[:, 0])
    x = anchors[ok, 0]
    if len(x) < 3:
        return 1.0
    h = max(float(np.nanmedian(heights)), 1.0)
    v = np.diff(x)
    dead = np.full(len(v), deadzone * h)
    if crowded is not None:
        c = np.asarray(crowded, bool)[ok]
        dead += CROWD_DEADZONE * h * (c[:-1] | c[1:])
    if loose is not None:
        lo = np.asarray(loose, bool)[ok]
        dead += LOOSE_DEADZONE * h * (lo[:-1] | lo[1:])
    v = np.sign(v) * np.maximum(np.abs(v) - dead, 0.0)
    length = float(np.abs(v).sum())
    moving = v[v != 0]
    rev = float(sum(abs(moving[i] - moving[i - 1]) for i in range(1, len(moving)) if moving[i] * moving[i - 1] < 0))
    bad = (rev - 0.15 * length) / (length + 0.05 * len(v) * h)
    return float(1 - np.clip(bad, 0, 1))


def crowded_frames(boxes: list[np.ndarray], overlap: float = 0.25) -> list[np.ndarray]:
    """Per track, (T,) bool: frames where its box overlaps another track's box (both seen) by at
    least `overlap` of the narrower box's width, and at all vertically. boxes: per track (T, 4)
    x0, y0, x1, y1, NaN where unseen."""
    out = []
    for i, a in enumerate(boxes):
        crowd = np.zeros(len(a), bool)
        for j, b in enumerate(boxes):
            if i == j:
                continue
            with np.errstate(invalid="ignore"):
                wx = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
                wy = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
                narrow = np.minimum(a[:, 2] - a[:, 0], b[:, 2] - b[:, 0])
                crowd |= (wx >= overlap * narrow) & (wy > 0)
        out.append(crowd)
    return out


def turning_points(y: np.ndarray, threshold: float) -> int:
    """Reversals of a 1-D path with hysteresis: a reversal counts once the path has come back by
    more than `threshold` from its last extreme, however many frames that took."""
    turns, direction, lo, hi = 0, 0, float(y[0]), float(y[0])
    for v in map(float, y[1:]):
        if direction >= 0 and v > hi:
            hi = v
        if direction <= 0 and v < lo:
            lo = v
        if direction >= 0 and hi - v > threshold:
            turns, direction, lo = turns + (direction != 0), -1, v
        elif direction <= 0 and v - lo > threshold:
            turns, direction, hi = turns + (direction != 0), 1, v
    return turns


def turn_coherence(x: np.ndarray, heights: np.ndarray, significant: float = 0.5) -> float:
    """0 if a track's horizontal path turns back by more than `significant` heights, else 1.

    x (T,) camera-stabilised horizontal positions (NaN where unseen). No SpriteWorld action turns
    a body around (walks, approaches and swaps keep their direction; jumps, waves and stays do not
    travel), and a body's anchor jitters by ~0.15 h at most (`CROWD_DEADZONE`); what turns back by
    half a body is two bodies in one track: a copy of a hidden subject's identity joined, by
    identity, to the original's glimpses (seed 1 cast 8's `duplicate` attack: 17 px out and 16
    back, h = 22; no ground-truth track of 156 casts over 13 seeds turns by 0.25 h, measured
    2026-12-04).
    `path_coherence` misses it: its dead zones, wide in a crowd, swallow the slow leg back.
    """
    ok = ~np.isnan(x)
    if ok.sum() < 3:
        return 1.0
    h = max(float(np.nanmedian(heights)), 1.0)
    return 0.0 if turning_points(x[ok], significant * h) else 1.0


def bounce_coherence(feet_y: np.ndarray, heights: np.ndarray, significant: float = 0.1) -> float:
    """Whether a track's vertical path turns at most once (a jump goes up, then down), in [0, 1].

    feet_y (T,) camera-stabilised heights of a point of the body (the judge uses the head's
    centre; NaN where unseen). Reversals are counted with hysteresis (`turning_points`): the path
    must come back by more than `significant` heights from its last extreme, so a walking bob and
    the detector's 1.5-2 px toggling of a still subject's box top (0.07-0.09 h, measured on ground
    truth; per-frame moves above 0.06 h had counted as turns there) are ignored, while a jump is
    0.22 h high. Every reversal beyond the first costs 0.5 (frames of a jump in a random order
    bounce up and down).
    """
    ok = ~np.isnan(feet_y)
    y = feet_y[ok]
    if len(y) < 3:
        return 1.0
    h = max(float(np.nanmedian(heights)), 1.0)
    turns = turning_points(y, significant * h)
    return float(np.clip(1 - 0.5 * max(turns - 1, 0), 0, 1))
