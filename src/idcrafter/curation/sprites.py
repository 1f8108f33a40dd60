"""SpriteWorld as a curation source: raw multi-scene videos and the compose (edit) backend.

A raw SpriteWorld video is 1..`max_scenes` SpriteWorld clips cut together (consecutive scenes on
different backgrounds, so the scene split has real cuts to find); a share `duplicates` of the
videos re-upload an earlier one with a small brightness change (so dedup has real duplicates).
Next to `raw/<name>.mp4` the renderer writes `raw/<name>.masks.npz`: the instance masks
(T, H, W) uint8 (k + 1 = subject k of that frame's scene), the stand-in for a segmenter such as
SAM 2 in the real pipeline; the scenes (frame ranges, captions, identity ids) go into the row.

`SpriteComposer` is the embedded image-edit backend: where a real pipeline asks an edit model to
show the subject of a crop in another pose, place and light, SpriteWorld re-renders the subject's
identity exactly (an oracle editor: it reads the identity from the ground truth, so it never
changes who the subject is) in a random pose, scale, lighting and background, then cuts it out
onto the plain reference canvas (or keeps the new background).
"""

from __future__ import annotations

import numpy as np

SPRITE_FPS = 8.0


def _base_index(spec: dict) -> tuple[int, int]:
    """(the video this one re-uploads, number of re-uploads in the chain)."""
    i, hops = int(spec["index"]), 0
    while i > 0 and _is_duplicate(spec, i):
        i, hops = i - 1, hops + 1
    return i, hops


def _is_duplicate(spec: dict, i: int) -> bool:
    from idcrafter.world.dataset import SPLIT_CODE

    rng = np.random.default_rng([int(spec["seed"]), i, SPLIT_CODE[spec["split"]], 17])
    return bool(rng.random() < float(spec["duplicates"]))


def render_raw(spec: dict) -> tuple[np.ndarray, np.ndarray, list[dict], int | None]:
    """(frames (T, H, W, 3) uint8, masks (T, H, W) uint8, scenes, index re-uploaded or None)."""
    from idcrafter.world.dataset import SPLIT_CODE, make_example
    from idcrafter.world.scene import WorldConfig

    base, hops = _base_index(spec)
    cfg = WorldConfig(frames=int(spec["frames"]), height=int(spec["height"]), width=int(spec["width"]))
    rng = np.random.default_rng([int(spec["seed"]), base, SPLIT_CODE[spec["split"]], 18])
    n = int(rng.integers(1, int(spec["max_scenes"]) + 1))
    frames, masks, scenes = [], [], []
    index, last_bg = base * 64, None
    for _ in range(n):
        ex = make_example(int(spec["seed"]) + 7919, index, spec["split"], cfg)
        while ex.spec.background == last_bg:  # a cut needs a change of place to be a cut
            index += 1
            ex = make_example(int(spec["seed"]) + 7919, index, spec["split"], cfg)
        index += 1
        last_bg = ex.spec.background
        start = sum(len(f) for f in frames)
        frames.append(ex.clip.frames)
        masks.append(ex.clip.masks)
        scenes.append({"start": start, "end": start + len(ex.clip.frames), "caption": ex.caption,
                       "background": ex.spec.background, "actions": ex.spec.actions,
                       "identities": [s.identity.id for s in ex.spec.subjects],
                       "visibility": ex.clip.visibility.mean(0).round(3).tolist()})
    video = np.concatenate(frames)
    if hops:  # a re-upload: slightly brighter, otherwise the same pixels
        video = np.clip(video.astype(np.int16) + 3 * hops, 0, 255).astype(np.uint8)
    return video, np.concatenate(masks), scenes, base if hops else None


def mask_crop(image: np.ndarray, mask: np.ndarray, box, size: int, background) -> np.ndarray:
    """(size, size, 3): the masked pixels of `box` on the plain `background`, fitted and centred
    (the framing every reference crop gets, from a frame or from an edit)."""
    from idcrafter.encoders.references import prepare_reference

    h, w = image.shape[:2]
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(max(x1, x0 + 1), w), min(max(y1, y0 + 1), h)
    crop = image[y0:y1, x0:x1].copy()
    m = mask[y0:y1, x0:x1]
    crop[~m] = np.asarray(background, np.uint8)
    return prepare_reference(crop, size, canvas=tuple(int(v) for v in background))


class SpriteComposer:
    """The SpriteWorld compose backend (see the module docstring); `compose` is deterministic in
    (identity, seed)."""

    name = "sprites"

    def __init__(self, keep_background: bool = False):
        self.keep_background = keep_background

    def compose(self, image: np.ndarray, mask: np.ndarray | None, request: dict) -> np.ndarray:
        from idcrafter.world.identity import Identity
        from idcrafter.world.scene import BACKGROUNDS, render_background
        from idcrafter.world.sprite import Pose, draw_sprite

        if request.get("identity") is None:
            raise ValueError("the sprites compose backend needs the subject's ground-truth identity")
        size, bg_rgb = int(request["size"]), request["background"]
        rng = np.random.default_rng([int(request["seed"]), int(request["identity"]) % (2 ** 32), 31])
        ident = Identity.from_id(int(request["identity"]))
        pose = Pose(int(rng.choice([-1, 0, 1])), float(rng.uniform(-1, 1)), float(rng.uniform(0, 2.6)),
                    float(rng.uniform(0, 2.6))).quantised()
        # the new context is 1.25x the reference, so most renders are shrunk (sharp) when fitted
        big = int(round(1.25 * size))
        height = int(round(big * rng.uniform(0.55, 0.85)))
        sprite = draw_sprite(ident, pose, height)  # (h, w, 4) float in [0, 1]
        gain = rng.uniform(0.8, 1.15, 3) * rng.uniform(0.85, 1.1)
        scene = render_background(str(rng.choice(BACKGROUNDS)), big, big, rng) * gain
        sh, sw = sprite.shape[:2]
        left = int(round(big / 2 - sw / 2 + rng.uniform(-0.12, 0.12) * big))
        top = int(round(big - sh - rng.uniform(0.0, 0.06) * big))
        canvas = scene.astype(np.float32)
        alpha_full = np.zeros((big, big), np.float32)
        ys, xs = slice(max(top, 0), min(top + sh, big)), slice(max(left, 0), min(left + sw, big))
        sp = sprite[ys.start - top:ys.stop - top, xs.start - left:xs.stop - left]
        a = sp[..., 3:4]
        canvas[ys, xs] = canvas[ys, xs] * (1 - a) + sp[..., :3] * gain * a
        alpha_full[ys, xs] = sp[..., 3]
        img = np.clip(canvas * 255 + 0.5, 0, 255).astype(np.uint8)
        if self.keep_background:
            from idcrafter.encoders.references import prepare_reference

            return prepare_reference(img, size)
        m = alpha_full > 0.5
        rows, cols = np.where(m)
        box = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
        return mask_crop(img, m, box, size, bg_rgb)


def sprite_head_box(box: np.ndarray) -> np.ndarray:
    """A SpriteWorld subject's head box from its body box (the sprite's fixed geometry)."""
    from idcrafter.world.sprite import head_fraction

    x0, y0, x1, y1 = (float(v) for v in box)
    hb = y0 + head_fraction() * (y1 - y0)
    cx, half = (x0 + x1) / 2, 0.5 * (hb - y0) * 0.9
    return np.array([cx - half, y0, cx + half, hb], np.float32)

