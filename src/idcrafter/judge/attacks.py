"""Degenerate videos built from a held-out cast: what a reward-hacking generator could emit.

Every builder takes an `Example` (clip, references, caption) and a generator `rng`, and returns
(T, H, W, 3) uint8 frames meant to be scored against the example's own references and caption.
Each builder draws its parameters from a *range* (shake amplitude, sub-pixel offsets, zoom,
brightness, which frame freezes, how much of the clip freezes, blur width, ...), so that a judge
validated on these stands for the class of attack, not for one instance of it.

Classes (`ATTACKS`):
    frozen, partial_freeze, frozen_shake        a frame held still (all or part of the clip)
    paste_ref, paste_ref_shake                  references pasted still at their own 32 px scale
    paste_clip, paste_clip_shake                reference sprites pasted still at the subjects' scale
    blobs                                       each body part of each subject filled flat
    swap                                        identities exchanged between subjects
    wrong_cast                                  the same scene with other identities
    background                                  the scene without anyone in it
    noise, blur, flicker, shuffled              noise, heavy blur, light flicker, frames reordered
    reversed, mirrored                          the clip played backwards, flipped left-right
    drop_one, duplicate                         one subject left out, one drawn as another of the cast
`camera_shake` is the shake applied by the *_shake kinds (per-frame similarity + brightness).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import numpy as np

from idcrafter.world.dataset import Example
from idcrafter.world.identity import sample_identities
from idcrafter.world.scene import render_background, render_clip, subject_mask


# ----------------------------------------------------------------------------- camera

def similarity_warp(frame: np.ndarray, dx: float, dy: float, scale: float, gain: float) -> np.ndarray:
    """One frame zoomed by `scale` about its centre, shifted by (dx, dy) px, brightness x gain."""
    import cv2

    h, w = frame.shape[:2]
    m = np.array([[scale, 0, (1 - scale) * w / 2 + dx], [0, scale, (1 - scale) * h / 2 + dy]], np.float32)
    out = cv2.warpAffine(frame.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT)
    return np.clip(out * gain + 0.5, 0, 255).astype(np.uint8)


def camera_shake(frames: np.ndarray, rng: np.random.Generator, amplitude: float | None = None,
                 zoom: float | None = None, brightness: float | None = None) -> np.ndarray:
    """A hand-held camera over (T, H, W, 3) frames: per frame a sub-pixel shift of up to
    `amplitude` px (default U(1, 3)), a zoom of up to +-`zoom` (default U(0, 0.1)) and a
    brightness gain of up to +-`brightness` (default U(0, 0.2)), frame 0 included."""
    amp = float(rng.uniform(1, 3)) if amplitude is None else amplitude
    zm = float(rng.uniform(0, 0.1)) if zoom is None else zoom
    br = float(rng.uniform(0, 0.2)) if brightness is None else brightness
    out = []
    for f in frames:
        dx, dy = rng.uniform(-amp, amp, 2)
        out.append(similarity_warp(f, float(dx), float(dy), 1 + float(rng.uniform(-zm, zm)),
                                   1 + float(rng.uniform(-br, br))))
    return np.stack(out)


# ----------------------------------------------------------------------------- freezes

def _regain(frames: np.ndarray, rng: np.random.Generator, spread: float = 0.12) -> np.ndarray:
    """The whole clip's brightness times one gain drawn from U(1 - spread, 1 + spread), the
    same for every frame: a still frame a little brighter or darker is still a still frame."""
    g = 1 + float(rng.uniform(-spread, spread))
    return np.clip(frames.astype(np.float32) * g + 0.5, 0, 255).astype(np.uint8)


def frozen(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """One frame (the first half the time, else a random one) held for the whole clip, at a
    brightness gain of 0.88-1.12."""
    f = ex.clip.frames
    i = 0 if rng.random() < 0.5 else int(rng.integers(len(f)))
    return _regain(np.repeat(f[i:i + 1], len(f), 0), rng)


def partial_freeze(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """The clip plays for its first 0-25% of frames, then the whole frame holds (brightness
    gain 0.88-1.12 over the whole clip)."""
    f = ex.clip.frames.copy()
    stop = int(rng.integers(0, max(1, len(f) // 4) + 1))
    f[stop:] = f[stop]
    return _regain(f, rng)


def frozen_shake(ex: Example, rng: np.random.Generator) -> np.ndarray:
    return camera_shake(frozen(ex, rng), rng)


# ----------------------------------------------------------------------------- pastes

def _scene_background(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8: the caption's scene, under the clip's light, without anyone in it."""
    spec = ex.spec
    c = spec.config
    bg = render_background(spec.background, c.height, c.width, rng)
    gain = np.array(spec.light, np.float32) * (1 + spec.light_slope * np.linspace(-1, 1, c.width)[None, :, None])
    return np.clip(bg * gain * 255 + 0.5, 0, 255).astype(np.uint8)


def _paste_still(ex: Example, rng: np.random.Generator, clip_scale: bool) -> np.ndarray:
    """One still frame of the references pasted on the scene, repeated T times.

    Reference scale: the 32 px reference (with its canvas half the time, else masked) at random
    places. Clip scale: each reference's sprite (masked, cropped to its silhouette) resized to
    the height of the subject it stands for, its feet where that subject's feet are in frame 0.
    """
    import cv2

    frame = _scene_background(ex, rng)
    h, w = frame.shape[:2]
    with_canvas = (not clip_scale) and rng.random() < 0.5
    for k, ref in enumerate(ex.refs):
        mask = subject_mask(ref)
        if clip_scale:
            ys, xs = np.where(mask)
            crop, m = ref[ys.min():ys.max() + 1, xs.min():xs.max() + 1], mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
            box = ex.clip.boxes[0, k]
            th = max(int(round(box[3] - box[1])), 4)
            tw = max(int(round(crop.shape[1] * th / crop.shape[0])), 2)
            crop = cv2.resize(crop, (tw, th), interpolation=cv2.INTER_AREA)
            m = cv2.resize(m.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST).astype(bool)
            x0, y0 = int(round((box[0] + box[2]) / 2 - tw / 2)), int(round(box[3] - th))
        else:
            crop, m = ref, (np.ones(mask.shape, bool) if with_canvas else mask)
            x0, y0 = int(rng.integers(-4, w - ref.shape[1] + 5)), int(rng.integers(h - ref.shape[0] - 6, h - ref.shape[0] + 3))
        _blit(frame, crop, m, x0, y0)
    return np.repeat(frame[None], len(ex.clip.frames), 0)


def _blit(frame: np.ndarray, img: np.ndarray, mask: np.ndarray, x0: int, y0: int) -> None:
    """Copy img[mask] into frame at (x0, y0), clipped to the frame."""
    h, w = frame.shape[:2]
    ih, iw = img.shape[:2]
    fy0, fx0, fy1, fx1 = max(y0, 0), max(x0, 0), min(y0 + ih, h), min(x0 + iw, w)
    if fy0 >= fy1 or fx0 >= fx1:
        return
    sub, sm = img[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0], mask[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    frame[fy0:fy1, fx0:fx1][sm] = sub[sm]


def paste_ref(ex: Example, rng: np.random.Generator) -> np.ndarray:
    return _paste_still(ex, rng, clip_scale=False)


def paste_ref_shake(ex: Example, rng: np.random.Generator) -> np.ndarray:
    return camera_shake(_paste_still(ex, rng, clip_scale=False), rng)


def paste_clip(ex: Example, rng: np.random.Generator) -> np.ndarray:
    return _paste_still(ex, rng, clip_scale=True)


def paste_clip_shake(ex: Example, rng: np.random.Generator) -> np.ndarray:
    return camera_shake(_paste_still(ex, rng, clip_scale=True), rng)


# ----------------------------------------------------------------------------- appearance

def blobs(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """Faceless colour blobs: every subject's head, torso and legs (bands of its visible pixels,
    split at its head box bottom and at a random 60-70% of its height) filled with their mean
    colour, so positions, sizes, motion and colours stay and every detail goes."""
    c = ex.clip
    out = c.frames.copy()
    split = float(rng.uniform(0.6, 0.7))
    for t in range(len(out)):
        for k in range(c.boxes.shape[1]):
            own = c.masks[t] == k + 1
            if not own.any():
                continue
            y0, y1 = c.boxes[t, k, 1], c.boxes[t, k, 3]
            rows = np.arange(out.shape[1])[:, None]
            cut1, cut2 = c.head_boxes[t, k, 3], y0 + split * (y1 - y0)
            for band in (rows < cut1, (rows >= cut1) & (rows < cut2), rows >= cut2):
                m = own & band
                if m.any():
                    out[t][m] = out[t][m].reshape(-1, 3).mean(0).astype(np.uint8)
    return out


def _rerender(ex: Example, identities: list, seed: int) -> np.ndarray:
    """The example's clip (same actions, places, light, scene) rendered with other identities."""
    spec = ex.spec
    subjects = [replace(s, identity=i) for s, i in zip(spec.subjects, identities)]
    return render_clip(replace(spec, subjects=subjects), np.random.default_rng(seed)).frames


def swap_permutation(ex: Example, rng: np.random.Generator) -> list[int]:
    """A derangement of 2..K subjects (the others keep their identity): who is rendered as whom.
    Subjects asked to do different things are preferred, so the swap contradicts the caption."""
    k = len(ex.spec.subjects)
    acts = ex.spec.actions
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k) if acts[i] != acts[j]] or \
            [(i, j) for i in range(k) for j in range(i + 1, k)]
    i, j = pairs[int(rng.integers(len(pairs)))]
    perm = list(range(k))
    perm[i], perm[j] = j, i
    if k >= 3 and rng.random() < 0.4:  # sometimes a 3-cycle instead
        rest = [x for x in range(k) if x not in (i, j)]
        m = rest[int(rng.integers(len(rest)))]
        perm = list(range(k))
        perm[i], perm[j], perm[m] = j, m, i
    return perm


def swap_frames(ex: Example, perm: list[int], seed: int = 0) -> np.ndarray:
    """The clip with subject i drawn as subject perm[i] (same actions and places)."""
    return _rerender(ex, [ex.spec.subjects[p].identity for p in perm], seed)


def swap(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """Identities exchanged between subjects (`swap_permutation`)."""
    return swap_frames(ex, swap_permutation(ex, rng), int(rng.integers(1 << 30)))


def swap_contradicts(ex: Example, perm: list[int]) -> bool:
    """Whether a swap changes what someone does: some subject is drawn doing another's action."""
    acts = ex.spec.actions
    return any(acts[i] != acts[p] for i, p in enumerate(perm))


def wrong_cast(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """The same scene acted by other held-out identities (faces and shirts of nobody in the cast)."""
    own = {s.identity.face_id for s in ex.spec.subjects}
    while True:
        ids = sample_identities(rng, len(ex.spec.subjects), "heldout")
        if not own & {i.face_id for i in ids}:
            return _rerender(ex, ids, int(rng.integers(1 << 30)))


def background(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """The scene without anyone in it (as rendered, static)."""
    spec = ex.spec
    return render_clip(replace(spec, subjects=[], interaction=None), np.random.default_rng(int(rng.integers(1 << 30)))).frames


def noise(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """Noise: per-pixel uniform, Gaussian around the clip's mean colour, or smooth colour noise."""
    import cv2

    shape = ex.clip.frames.shape
    kind = int(rng.integers(3))
    if kind == 0:
        return rng.integers(0, 256, shape).astype(np.uint8)
    if kind == 1:
        mean = ex.clip.frames.reshape(-1, 3).mean(0)
        return np.clip(mean + rng.normal(0, rng.uniform(30, 80), shape), 0, 255).astype(np.uint8)
    x = rng.uniform(0, 255, shape).astype(np.float32)
    s = float(rng.uniform(1.5, 4))
    x = np.stack([cv2.GaussianBlur(f, (0, 0), s) for f in x])
    x = (x - x.mean()) / max(x.std(), 1e-3) * 60 + 128
    return np.clip(x, 0, 255).astype(np.uint8)


def blur(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """A heavy Gaussian blur (sigma 2-3.5 px at 48 px: beyond the judge's degradations, <= 1.65)."""
    import cv2

    s = float(rng.uniform(2.0, 3.5))
    return np.stack([cv2.GaussianBlur(f, (0, 0), s) for f in ex.clip.frames])


def flicker(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """Brightness flicker: every frame's gain alternates around 1 by 20-50% (with jitter), per
    channel a third of the time."""
    f = ex.clip.frames.astype(np.float32)
    amp = float(rng.uniform(0.2, 0.5))
    per_channel = rng.random() < 1 / 3
    out = []
    for t, fr in enumerate(f):
        sign = 1 if t % 2 else -1
        g = 1 + sign * amp * rng.uniform(0.6, 1.0, 3 if per_channel else 1)
        out.append(np.clip(fr * g + 0.5, 0, 255))
    return np.stack(out).astype(np.uint8)


def shuffled(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """The ground-truth frames in a random order (never the identity order, nor its reverse)."""
    t = len(ex.clip.frames)
    while True:
        p = rng.permutation(t)
        if not (np.all(np.diff(p) == 1) or np.all(np.diff(p) == -1)):
            return ex.clip.frames[p]


def reversed_time(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """The ground truth played backwards: walks go the other way, an approach parts (no
    parameter to draw: the one kind, with `mirrored`, that is the same for every seed)."""
    return ex.clip.frames[::-1].copy()


def mirrored(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """The ground truth flipped left-right: walks go the other way, who stands where flips."""
    return ex.clip.frames[:, :, ::-1].copy()


def without_subject(spec, k: int):
    """The scene spec without subject k (the pair it was part of, if any, is no pair any more)."""
    pair = spec.interaction
    if pair is not None:
        pair = None if k in pair else (pair[0] - (pair[0] > k), pair[1] - (pair[1] > k))
    return replace(spec, subjects=[s for i, s in enumerate(spec.subjects) if i != k], interaction=pair)


def drop_one(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """The scene rendered without one of its subjects (the others as in the ground truth)."""
    k = int(rng.integers(len(ex.spec.subjects)))
    return render_clip(without_subject(ex.spec, k), np.random.default_rng(int(rng.integers(1 << 30)))).frames


def duplicate(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """One subject drawn with another cast member's identity: two of one person, one missing."""
    ids = [s.identity for s in ex.spec.subjects]
    a, b = (int(i) for i in rng.choice(len(ids), 2, replace=False))
    ids[b] = ids[a]
    return _rerender(ex, ids, int(rng.integers(1 << 30)))


ATTACKS: dict[str, Callable[[Example, np.random.Generator], np.ndarray]] = {
    "frozen": frozen, "partial_freeze": partial_freeze, "frozen_shake": frozen_shake,
    "paste_ref": paste_ref, "paste_ref_shake": paste_ref_shake, "paste_clip": paste_clip,
    "paste_clip_shake": paste_clip_shake, "blobs": blobs, "swap": swap, "wrong_cast": wrong_cast,
    "background": background, "noise": noise, "blur": blur, "flicker": flicker, "shuffled": shuffled,
    "reversed": reversed_time, "mirrored": mirrored, "drop_one": drop_one, "duplicate": duplicate,
}

# Each kind's random stream is keyed by a number fixed forever (the first fifteen: their sorted
# order when the suite had fifteen), so adding a kind never changes another kind's videos; a new
# kind takes the next number.
KIND_KEYS: dict[str, int] = {k: i for i, k in enumerate((
    "background", "blobs", "blur", "flicker", "frozen", "frozen_shake", "noise", "partial_freeze",
    "paste_clip", "paste_clip_shake", "paste_ref", "paste_ref_shake", "shuffled", "swap", "wrong_cast",
    "reversed", "mirrored", "drop_one", "duplicate"))}

MOVING_ACTIONS = ("walk_left", "walk_right", "jump", "approach", "swap")
# the actions a kind reverses: played backwards a walk or an approach changes, a jump, a wave or
# a swap of places does not; mirrored, only walks change (an approach or a swap stays one)
REVERSED_BY = {"reversed": ("walk_left", "walk_right", "approach"), "mirrored": ("walk_left", "walk_right")}
# kinds that are correct videos on some casts: their means count only the casts they contradict
CONDITIONAL = ("swap", "reversed", "mirrored")
# kinds that change one aspect of one subject on most casts (a walk's direction): held to the
# swap's gap below ground truth and to the per-cast order, not to the cap of wholesale fakes
PARTIAL = ("reversed", "mirrored")


def contradicts_caption(kind: str, ex: Example, swap_perm: list[int] | None = None) -> bool:
    """Whether a degenerate video of `kind` made from `ex` contradicts the caption.

    Swaps only when someone ends up doing another's action; shuffles only when someone's action
    has a direction in time (walks, jumps, approach, swap); reversed and mirrored clips only when
    they turn someone's action into another (`REVERSED_BY`); flicker never (the caption says
    nothing about the light); every other kind always (SpriteWorld people are never frozen
    cut-outs, pasted references, blobs, strangers, absent, doubled, noise or a blur).
    """
    if kind == "swap":
        return swap_perm is not None and swap_contradicts(ex, swap_perm)
    if kind == "shuffled":
        return any(a in MOVING_ACTIONS for a in ex.spec.actions)
    if kind in REVERSED_BY:
        return any(a in REVERSED_BY[kind] for a in ex.spec.actions)
    return kind != "flicker"
