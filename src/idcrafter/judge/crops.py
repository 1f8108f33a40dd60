"""Crops the judge's embedders read: head crops and whole-body crops.

Both crop functions take boxes in pixels (x0, y0, x1, y1) and are used alike on ground-truth
boxes (training), detected boxes (scoring) and reference images, so every part of the judge
sees subjects framed the same way.
"""

from __future__ import annotations

import numpy as np

HEAD_SIZE = 24  # head crops: (24, 24, 3)
BODY_SIZE = (32, 16)  # whole-body crops: (32, 16, 3), height x width


def _crop(image: np.ndarray, cx: float, cy: float, half_w: float, half_h: float, out_hw: tuple[int, int]) -> np.ndarray:
    """Resample the window centred at (cx, cy) to out_hw with edge replication outside the image."""
    import cv2

    oh, ow = out_hw
    sx, sy = 2 * half_w / ow, 2 * half_h / oh
    # affine map from output pixel centres to input coordinates
    m = np.array([[sx, 0, cx - half_w + 0.5 * sx - 0.5], [0, sy, cy - half_h + 0.5 * sy - 0.5]], np.float32)
    interp = cv2.INTER_AREA if min(sx, sy) > 1 else cv2.INTER_LINEAR
    if interp == cv2.INTER_AREA:  # warpAffine has no area mode: pre-blur instead
        sigma = max(0.5 * (min(sx, sy) - 1), 0.01)
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    return cv2.warpAffine(image, m, (ow, oh), flags=cv2.WARP_INVERSE_MAP | cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def head_crop(image: np.ndarray, head_box: np.ndarray, margin: float = 1.15) -> np.ndarray:
    """(HEAD_SIZE, HEAD_SIZE, 3) uint8 square crop around a head box."""
    x0, y0, x1, y1 = [float(v) for v in head_box]
    half = max(x1 - x0, y1 - y0, 2.0) * margin / 2
    return _crop(image, (x0 + x1) / 2, (y0 + y1) / 2, half, half, (HEAD_SIZE, HEAD_SIZE))


def body_crop(image: np.ndarray, box: np.ndarray, margin: float = 1.1) -> np.ndarray:
    """(32, 16, 3) uint8 crop of a whole subject, padded to the 2:1 aspect of the crop."""
    x0, y0, x1, y1 = [float(v) for v in box]
    w, h = max(x1 - x0, 2.0), max(y1 - y0, 2.0)
    h2 = max(h, 2 * w) * margin / 2
    return _crop(image, (x0 + x1) / 2, (y0 + y1) / 2, h2 / 2, h2, BODY_SIZE)


def to_tensor(crops: np.ndarray):
    """(N, h, w, 3) uint8 -> (N, 3, h, w) float32 in [-1, 1]."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
