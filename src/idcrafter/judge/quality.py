"""The judge's visual quality model: how degraded does a frame look?

`QualityNet` regresses the `degrade` strength (0 for a clean render, up to 1.5) of a single
48x48 frame; `QualityModel.score` turns it into a clip score in [0, 1] (1 = as sharp and clean
as a render). It stands in for the aesthetic / image-quality term of OpenS2V-style totals:
generated clips that are blurry, noisy or blocky score lower. Full-resolution convolutions
come first because blur and noise live in the highest frequencies. Training:
`idcrafter.judge.train.quality`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from idcrafter.judge.crops import to_tensor as to_input
from idcrafter.judge.parts import load_part

MAX_STRENGTH = 1.5


class QualityNet(nn.Module):
    """(B, 3, H, W) in [-1, 1] -> (B,) predicted degradation strength."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.width = width
        c1, c2 = width, 2 * width

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        # fixed 3x3 Laplacian per channel: makes noise and edge sharpness explicit inputs
        lap = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]]) / 4
        self.register_buffer("lap", lap.expand(3, 1, 3, 3).clone(), persistent=False)
        self.features = nn.Sequential(
            *conv(6, c1), *conv(c1, c1), nn.AvgPool2d(2),  # (B, c1, H/2, W/2)
            *conv(c1, c2), nn.AvgPool2d(2),  # (B, c2, H/4, W/4)
            *conv(c2, c2),
        )
        self.head = nn.Sequential(nn.Linear(2 * c2, c2), nn.ReLU(inplace=True), nn.Linear(c2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hp = nn.functional.conv2d(nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), self.lap, groups=3)
        f = self.features(torch.cat([x, 4 * hp], 1))  # (B, c2, h, w)
        pooled = torch.cat([f.mean((2, 3)), f.std((2, 3))], 1)  # (B, 2 * c2)
        return self.head(pooled)[:, 0]


class QualityModel:
    """Loaded quality model: `score(frames)` in [0, 1], `predict(frames)` strengths per frame."""

    name = "sprites-quality"

    def __init__(self, net: QualityNet):
        self.net = net.eval()

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "QualityModel":
        return cls(load_part(QualityNet, "quality", Path(folder) if folder else None))

    @torch.no_grad()
    def predict(self, frames: np.ndarray) -> np.ndarray:
        """(T, H, W, 3) uint8 -> (T,) predicted degradation strength of each frame."""
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[None]
        out = [self.net(to_input(frames[i:i + 128])) for i in range(0, len(frames), 128)]
        return torch.cat(out).numpy()

    def score(self, frames: np.ndarray) -> float:
        """Mean over frames of clip(1 - strength / 1.5, 0, 1): ~1 for clean renders."""
        return float(np.clip(1 - self.predict(frames) / MAX_STRENGTH, 0, 1).mean())
