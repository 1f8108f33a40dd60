"""Action recogniser on subject tracks.

Input of one track: its per-frame body crops and box geometry, plus the geometry of its
*partner* (the other track that comes closest to it), resampled to `STEPS` points of normalised
time, so clips of 5 or 9 frames are read alike. Output: one of `ACTIONS`.

Why a partner: "approach" and "swap" are interactions; from one track alone an approach looks
like a walk. SpriteWorld never lets two subjects walk toward each other unless that is the
action, so the partner's motion disambiguates.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from idcrafter.judge.crops import BODY_SIZE, body_crop, to_tensor
from idcrafter.judge.parts import load_part
from idcrafter.world.scene import ACTIONS

STEPS = 9
GEOM = 10  # per-step geometric features


def _interp_boxes(boxes: np.ndarray, steps: int) -> np.ndarray:
    """(T, 4) boxes with NaN rows (missing) -> (steps, 4) linearly interpolated over time."""
    t = boxes.shape[0]
    src = np.linspace(0, 1, t)
    dst = np.linspace(0, 1, steps)
    ok = ~np.isnan(boxes[:, 0])
    if ok.sum() == 0:
        return np.zeros((steps, 4), np.float32)
    return np.stack([np.interp(dst, src[ok], boxes[ok, c]) for c in range(4)], 1).astype(np.float32)


def track_geometry(boxes: np.ndarray, partner: np.ndarray | None, frame_hw: tuple[int, int]) -> np.ndarray:
    """(STEPS, GEOM) features: centre, size and velocity of the track, offset to the partner.

    Positions are normalised by the track's median height so that scale does not matter.
    """
    b = _interp_boxes(boxes, STEPS)
    cx, cy = (b[:, 0] + b[:, 2]) / 2, b[:, 3]  # feet y tells lift (jumps)
    hgt = np.maximum(b[:, 3] - b[:, 1], 1.0)
    scale = float(np.median(hgt))
    x, y = (cx - cx[0]) / scale, (cy - cy[0]) / scale
    vx, vy = np.gradient(x), np.gradient(y)
    feats = [x, y, vx, vy, hgt / scale - 1, (b[:, 2] - b[:, 0]) / scale]
    if partner is None:
        feats += [np.zeros(STEPS)] * 3 + [np.zeros(STEPS)]
    else:
        p = _interp_boxes(partner, STEPS)
        pcx = (p[:, 0] + p[:, 2]) / 2
        dx = (pcx - cx) / scale
        feats += [dx, np.gradient(dx), np.gradient(pcx / scale), np.ones(STEPS)]
    return np.stack(feats, 1).astype(np.float32)


def partner_index(k: int, all_boxes: list[np.ndarray]) -> int:
    """Index of the other track whose centre comes closest (in x, relative to height) to track k;
    -1 when there is no other track."""
    best, best_d = -1, np.inf
    bk = _interp_boxes(all_boxes[k], STEPS)
    ck, hk = (bk[:, 0] + bk[:, 2]) / 2, max(float(np.median(bk[:, 3] - bk[:, 1])), 1.0)
    for j, bj in enumerate(all_boxes):
        if j == k:
            continue
        b = _interp_boxes(bj, STEPS)
        d = float(np.min(np.abs((b[:, 0] + b[:, 2]) / 2 - ck))) / hk
        if d < best_d:
            best, best_d = j, d
    return best


def choose_partner(k: int, all_boxes: list[np.ndarray]) -> np.ndarray | None:
    """The boxes of track k's partner (`partner_index`), None without one."""
    j = partner_index(k, all_boxes)
    return all_boxes[j] if j >= 0 else None


def track_crops(frames: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(STEPS, 32, 16, 3) body crops at the resampled times (nearest frame)."""
    t = frames.shape[0]
    b = _interp_boxes(boxes, STEPS)
    idx = np.round(np.linspace(0, t - 1, STEPS)).astype(int)
    return np.stack([body_crop(frames[i], b[s]) for s, i in enumerate(idx)])


class ActionNet(nn.Module):
    """Per-step crop CNN + geometry, then a temporal conv stack and a linear classifier."""

    def __init__(self, width: int = 32, num_actions: int = len(ACTIONS)):
        super().__init__()
        self.cnn = nn.Sequential(  # (N, 3, 32, 16) -> (N, width)
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(), nn.AdaptiveAvgPool2d((2, 1)),
            nn.Flatten(), nn.Linear(2 * width, width),
        )
        self.temporal = nn.Sequential(
            nn.Conv1d(width + GEOM, 2 * width, 3, padding=1), nn.GELU(),
            nn.Conv1d(2 * width, 2 * width, 3, padding=1), nn.GELU(),
        )
        self.head = nn.Linear(4 * width, num_actions)

    def forward(self, crops: torch.Tensor, geom: torch.Tensor) -> torch.Tensor:
        # crops (B, S, 3, 32, 16), geom (B, S, GEOM) -> logits (B, A)
        b, s = crops.shape[:2]
        f = self.cnn(crops.flatten(0, 1)).view(b, s, -1)
        h = self.temporal(torch.cat([f, geom], -1).transpose(1, 2))  # (B, C, S)
        return self.head(torch.cat([h.mean(-1), h.amax(-1)], -1))


class ActionRecognizer:
    """Loaded recogniser: `predict(frames, track_boxes)` -> one action name per track."""

    def __init__(self, net: ActionNet):
        self.net = net.eval()

    @classmethod
    def load(cls, folder=None) -> "ActionRecognizer":
        return cls(load_part(ActionNet, "action", folder))

    @torch.no_grad()
    def probabilities(self, frames: np.ndarray, track_boxes: list[np.ndarray]) -> np.ndarray:
        """(N, len(ACTIONS)) softmax over actions per track; frames (T, H, W, 3) uint8,
        track_boxes: one (T, 4) array per track, NaN where missing."""
        if not track_boxes:
            return np.zeros((0, len(ACTIONS)), np.float32)
        crops, geoms = batch_tracks(frames, track_boxes)
        return torch.softmax(self.net(crops, geoms), -1).numpy()

    def predict(self, frames: np.ndarray, track_boxes: list[np.ndarray]) -> list[str]:
        """One action name per track (the most probable)."""
        return [ACTIONS[i] for i in self.probabilities(frames, track_boxes).argmax(-1).tolist()]


def batch_tracks(frames: np.ndarray, track_boxes: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """The recogniser's inputs for K tracks: crops (K, STEPS, 3, 32, 16) and geometry (K, STEPS, GEOM)."""
    hw = frames.shape[1:3]
    crops = np.stack([track_crops(frames, b) for b in track_boxes])  # (K, S, 32, 16, 3)
    geoms = np.stack([track_geometry(b, choose_partner(k, track_boxes), hw) for k, b in enumerate(track_boxes)])
    c = to_tensor(crops.reshape(-1, *BODY_SIZE, 3)).view(len(track_boxes), STEPS, 3, *BODY_SIZE)
    return c, torch.from_numpy(geoms)
