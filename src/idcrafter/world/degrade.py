"""Degradations that make rendered clips look like generated ones.

The judge scores generated clips, which are blurrier, noisier and less stable than renders.
Its parts are trained on renders passed through `degrade`, and validated on degraded ground
truth, so that a score measures identity, not sharpness.
"""

from __future__ import annotations

import numpy as np


def degrade(frames: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Blur, noise, colour shift and a small per-frame warp; (..., H, W, 3) uint8 -> same.

    strength scales every degradation (0 = identity); each is applied with probability 0.7.
    """
    import cv2

    if strength <= 0:
        return frames
    shape = frames.shape
    x = frames.reshape(-1, *shape[-3:]).astype(np.float32)
    n, h, w, _ = x.shape
    if rng.random() < 0.7:  # colour shift: per-channel gain and offset, same for the whole clip
        gain = 1 + rng.uniform(-0.12, 0.12, 3) * strength
        x = x * gain + rng.uniform(-12, 12, 3) * strength
    if rng.random() < 0.7:  # blur
        sigma = rng.uniform(0.3, 1.1) * strength
        x = np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in x])
    if rng.random() < 0.7:  # small warps: sub-pixel shift and scale per frame
        out = []
        for f in x:
            s = 1 + rng.uniform(-0.04, 0.04) * strength
            m = np.array([[s, 0, rng.uniform(-0.8, 0.8) * strength + (1 - s) * w / 2],
                          [0, s, rng.uniform(-0.8, 0.8) * strength + (1 - s) * h / 2]], np.float32)
            out.append(cv2.warpAffine(f, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
        x = np.stack(out)
    if rng.random() < 0.7:  # noise
        x = x + rng.normal(0, rng.uniform(2, 10) * strength, x.shape)
    return np.clip(x + 0.5, 0, 255).astype(np.uint8).reshape(shape)


def severity_sample(rng: np.random.Generator) -> float:
    """A degradation strength for training: clean a quarter of the time, else up to 1.5."""
    return 0.0 if rng.random() < 0.25 else float(rng.uniform(0.1, 1.5))
