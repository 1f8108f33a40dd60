"""The filter scores as pure functions of pixels (each unit-tested against a hand computation).

- `copy_paste_risk(ref, crops)`: max over the subject's frame crops of the normalised
  cross-correlation between the reference and the crop, both framed alike (`sprites.mask_crop`:
  subject pixels fitted on the plain canvas), computed over the pixels that are subject in either
  image. A reference cropped from one of its own target frames scores 1 (the pairs that teach a
  generator to paste); the same subject in another pose, scale and light scores far lower.
  Unlike the judge's `copy_paste` (which scores a *generated* clip: template match x stillness),
  this compares a training reference to its target frames before training.
- `motion_px(frames)`: mean Farneback flow magnitude (OpenS2V's settings) in px / frame at a
  128 px frame width (wider frames are shrunk to it first, narrower ones measured as they are and
  the flow scaled by 128 / width), so the score does not depend on the resolution.
- `phash(frames)`: 64-bit DCT perceptual hash of the grey mean of the first, middle and last
  frame (32 x 32 area resize, the 8 x 8 lowest frequencies, bit = coefficient > their median
  without the DC term); `hamming` counts differing bits.
- `face_quality(face, side_px)`: min(1, side / min_face_px) * min(1, var(Laplacian) / sharp_ref).
"""

from __future__ import annotations

import numpy as np


def subject_pixels(image: np.ndarray, background, tolerance: int = 24) -> np.ndarray:
    """(H, W) bool: pixels that differ from the plain `background` colour by more than `tolerance`."""
    diff = np.abs(image.astype(np.int16) - np.asarray(background, np.int16))
    return diff.max(-1) > tolerance


def ncc(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """Normalised cross-correlation of two images over the pixels `where` (all channels)."""
    x = a[where].astype(np.float64).ravel()
    y = b[where].astype(np.float64).ravel()
    if x.size < 2:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else 0.0


def _shrink(image: np.ndarray, side: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    if max(h, w) <= side:
        return image
    s = side / max(h, w)
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def copy_paste_risk(ref: np.ndarray, crops: list[np.ndarray], background, side: int = 64) -> float:
    """Max over crops of clip(NCC(ref, crop), 0, 1) on the union of their subject pixels, all
    images area-shrunk to at most `side` px first (a copy stays a copy; 64 x less work at 512 px)."""
    ref = _shrink(ref, side)
    ref_m = subject_pixels(ref, background)
    best = 0.0
    for c in crops:
        c = _shrink(c, side)
        where = ref_m | subject_pixels(c, background)
        best = max(best, ncc(ref, c, where))
    return float(np.clip(best, 0.0, 1.0))


def motion_px(frames: np.ndarray, width: int = 128) -> float:
    import cv2

    from idcrafter.judge.metrics import FARNEBACK

    h, w = frames.shape[1:3]
    used = min(width, w)  # narrower videos are not upscaled: their flow is scaled by width / w
    size = (used, max(1, round(h * used / w)))
    grey = [cv2.cvtColor(cv2.resize(f, size, interpolation=cv2.INTER_AREA) if used < w else f,
                         cv2.COLOR_RGB2GRAY) for f in frames]
    mags = [float(np.linalg.norm(cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK), axis=-1).mean())
            for a, b in zip(grey[:-1], grey[1:])]
    return float(np.mean(mags)) * width / used if mags else 0.0


def phash(frames: np.ndarray) -> str:
    import cv2

    idx = sorted({0, len(frames) // 2, len(frames) - 1})
    grey = np.mean([cv2.cvtColor(np.ascontiguousarray(frames[i]), cv2.COLOR_RGB2GRAY).astype(np.float32)
                    for i in idx], axis=0)
    small = cv2.resize(grey, (32, 32), interpolation=cv2.INTER_AREA)
    low = cv2.dct(small)[:8, :8].ravel()
    bits = low > np.median(low[1:])
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def hamming(a: str, b: str) -> int:
    return bin(int(a, 16) ^ int(b, 16)).count("1")


def face_quality(face: np.ndarray, side_px: float, min_face_px: float, sharp_ref: float) -> float:
    import cv2

    if face.size == 0 or side_px <= 0:
        return 0.0
    grey = cv2.cvtColor(np.ascontiguousarray(face), cv2.COLOR_RGB2GRAY).astype(np.float64)
    sharp = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    return float(min(1.0, side_px / min_face_px) * min(1.0, sharp / sharp_ref))
