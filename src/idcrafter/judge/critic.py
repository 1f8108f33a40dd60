"""The judge's realism critic: does a clip look like a SpriteWorld render, frame by frame and over time?

The quality regressor (`quality.py`) measures blur and noise, not content: flat colour blobs
and an empty background look sharp to it. The critic is trained (`idcrafter.judge.train.critic`)
to tell renders (clean or degraded like generated clips) from implausible clips: faceless
blobs, mosaics, partial bodies, pasted reference canvases, noise, scribbles, and clips corrupted
the way early generator checkpoints corrupt them (patch colour noise, dissolved structure,
frame-to-frame instability), the last with a graded target so that the critic's score follows
a generator's progress instead of jumping from 0 to 1.

`CriticNet` has two branches. The clip branch reads each frame together with its difference
to the previous frame (the first frame with a zero difference), so it sees both what is in a
frame and whether consecutive frames belong to one scene; it gives a logit per frame and, pooled
by a temporal convolution, one per clip. The subject branch reads one body crop (the judge's
32 x 16 crops of a track) and says whether it is a SpriteWorld person at all, at the resolution
where eyes and hair are: a faceless blob, half a body, a patch of noise or of background is not.

    RealismCritic.realism(frames)          = 1 - max(P_clip, mean_t P_frame_t)
    RealismCritic.subject_realism(crops)   = 1 - P_subject per crop
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from idcrafter.judge.crops import to_tensor
from idcrafter.judge.parts import load_part


def _conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class CriticNet(nn.Module):
    """(B, T, 3, H, W) frames in [-1, 1] -> (B,) implausibility logits (and (B, T) per frame);
    `crop_logits`: (N, 3, 32, 16) body crops -> (N,) logits."""

    def __init__(self, width: int = 16, crop_width: int = 16):
        super().__init__()
        self.width, self.crop_width = width, crop_width
        c = crop_width
        self.crop = nn.Sequential(  # (N, 3, 32, 16) -> (N, 1)
            *_conv(3, c), *_conv(c, c), nn.MaxPool2d(2), *_conv(c, 2 * c), *_conv(2 * c, 2 * c), nn.MaxPool2d(2),
            *_conv(2 * c, 4 * c), nn.AdaptiveAvgPool2d((2, 1)), nn.Flatten(), nn.Linear(8 * c, 1))
        w = width
        self.frame = nn.Sequential(  # (N, 6, H, W) -> (N, 4w); a stride-2 stem keeps it cheap
            *_conv(6, w, 2), *_conv(w, 2 * w), *_conv(2 * w, 2 * w, 2), *_conv(2 * w, 4 * w),
            *_conv(4 * w, 4 * w, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.per_frame = nn.Linear(4 * w, 1)
        self.temporal = nn.Sequential(nn.Conv1d(4 * w, 4 * w, 3, padding=1), nn.ReLU(inplace=True))
        self.head = nn.Linear(8 * w, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t = x.shape[:2]
        diff = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1)  # (B, T, 3, H, W)
        f = self.frame(torch.cat([x, diff], 2).flatten(0, 1)).view(b, t, -1)  # (B, T, 4w)
        per_frame = self.per_frame(f)[..., 0]  # (B, T)
        h = self.temporal(f.transpose(1, 2))  # (B, 4w, T)
        clip = self.head(torch.cat([h.mean(-1), h.amax(-1)], -1))[:, 0] + per_frame.mean(1)
        return clip, per_frame

    def crop_logits(self, crops: torch.Tensor) -> torch.Tensor:
        return self.crop(crops)[:, 0]  # (N,)


def clip_tensor(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (1, T, 3, H, W) float32 in [-1, 1]."""
    return to_tensor(np.asarray(frames))[None]


REALISM_FULL = 0.75  # clip realism counted in full (held-out renders score 0.76 on average)


class RealismCritic:
    """Loaded critic: `realism(frames)` in [0, 1] (1 = looks like a SpriteWorld render).

    The judge's quality channel counts realism / `full` (clipped at 1): the clip branch gives
    held-out renders ~0.76, not 1 (`full` is the level renders reach, so a render is not
    marked down), while blobs-free attacks on time (shuffles, freezes, flicker) and early
    generator samples fall well below it."""

    name = "sprites-critic"

    def __init__(self, net: CriticNet, full: float = REALISM_FULL):
        self.net = net.eval()
        self.full = full

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "RealismCritic":
        return cls(load_part(CriticNet, "critic", Path(folder) if folder else None))

    @torch.no_grad()
    def implausibility(self, frames: np.ndarray) -> float:
        """P(implausible) of a (T, H, W, 3) uint8 clip: the clip's, or its frames' mean if higher."""
        clip, per_frame = self.net(clip_tensor(frames))
        return float(max(torch.sigmoid(clip)[0], torch.sigmoid(per_frame[0]).mean()))

    def realism(self, frames: np.ndarray) -> float:
        return 1.0 - self.implausibility(frames)

    @torch.no_grad()
    def subject_realism(self, crops: np.ndarray) -> np.ndarray:
        """(N, 32, 16, 3) uint8 body crops -> (N,) P(a SpriteWorld person)."""
        if len(crops) == 0:
            return np.zeros(0, np.float32)
        return (1 - torch.sigmoid(self.net.crop_logits(to_tensor(crops)))).numpy()
