"""The judge's SpriteWorld subject detector: a small CenterNet on a stride-2 grid.

Why CenterNet: SpriteWorld subjects are small (18-37 px tall), overlap by up to half a body and
come 1-4 per frame; a centre heatmap with per-cell box regression needs no anchors or NMS
tuning, and a fully-convolutional net reads the 48x48 frames and the 32x32 reference images
alike. Per grid cell the net predicts:

    channel 0      centre heatmap logit (focal loss, Gaussian targets)
    channels 1-2   whole-body box size (w, h) / SIZE_SCALE
    channels 3-4   sub-cell offset of the box centre, in cells (0..1)
    channels 5-8   head box relative to the body box: left inset / w, top inset / h,
                   right inset / w, head bottom (shoulders) / h

It is trained (`idcrafter.judge.train.detector`) on renders and references passed through
`degrade`, because the judge scores generated clips, which are blurrier and noisier than renders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from idcrafter.judge.interfaces import Detection
from idcrafter.judge.parts import load_part
from idcrafter.judge.tracking import with_appearance
from idcrafter.world.identity import Identity

STRIDE = 2
SIZE_SCALE = 16.0  # box sizes are regressed in units of 16 px
NUM_OUT = 9
MAX_DETECTIONS = 6
DEFAULT_THRESHOLD = 0.3


# ----------------------------------------------------------------------------- the network

def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DetectorNet(nn.Module):
    """Small U-shaped CNN: (B, 3, H, W) in [-1, 1] -> (B, 9, ceil(H/2), ceil(W/2)) raw maps.

    Encoder to stride 8 (receptive field ~ 60 px, more than a body), decoder back to stride 2
    with skip connections. Inputs of any size work: they are padded to a multiple of 8.
    """

    def __init__(self, width: int = 16, threshold: float = DEFAULT_THRESHOLD):
        super().__init__()
        self.width, self.threshold = width, threshold  # threshold: tuned score cut, kept in the config
        c1, c2, c3 = width, 2 * width, 4 * width
        self.stem = nn.Sequential(_conv(3, c1), _conv(c1, c1, 2))  # /2
        self.down1 = nn.Sequential(_conv(c1, c2, 2), _conv(c2, c2))  # /4
        self.down2 = nn.Sequential(_conv(c2, c3, 2), _conv(c3, c3), _conv(c3, c3, dilation=2))  # /8
        self.up2 = _conv(c3 + c2, c2)  # /4
        self.up1 = nn.Sequential(_conv(c2 + c1, c2), _conv(c2, c2))  # /2
        self.out = nn.Conv2d(c2, NUM_OUT, 1)
        with torch.no_grad():
            self.out.bias.zero_()
            self.out.bias[0] = -2.19  # prior 0.1 on the heatmap (CenterNet's initialisation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        s1 = self.stem(x)  # (B, c1, H/2, W/2)
        s2 = self.down1(s1)  # (B, c2, H/4, W/4)
        s3 = self.down2(s2)  # (B, c3, H/8, W/8)
        u2 = self.up2(torch.cat([F.interpolate(s3, scale_factor=2.0, mode="nearest"), s2], 1))
        u1 = self.up1(torch.cat([F.interpolate(u2, scale_factor=2.0, mode="nearest"), s1], 1))
        out = self.out(u1)  # (B, 9, H/2, W/2) of the padded input
        return out[..., :(h + 1) // 2, :(w + 1) // 2]


def to_input(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ----------------------------------------------------------------------------- decoding

def _box_at(m: np.ndarray, gy: int, gx: int, lim: np.ndarray, score: float) -> Detection:
    """The detection a grid cell predicts: m (8,) its regression maps (size, offset, head)."""
    bw, bh = max(m[0], 0.05) * SIZE_SCALE, max(m[1], 0.05) * SIZE_SCALE
    cx, cy = (gx + m[2]) * STRIDE, (gy + m[3]) * STRIDE
    box = np.array([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], np.float32)
    head = np.array([box[0] + m[4] * bw, box[1] + m[5] * bh, box[2] - m[6] * bw, box[1] + m[7] * bh],
                    np.float32)
    head[2:] = np.maximum(head[2:], head[:2] + 1.0)  # never an empty or inverted head box
    return Detection(box=np.clip(box, 0, lim), score=float(score), face_box=np.clip(head, 0, lim))


def decode(out: torch.Tensor, threshold: float = DEFAULT_THRESHOLD, max_det: int = MAX_DETECTIONS,
           image_hw: tuple[int, int] | None = None) -> list[list[Detection]]:
    """Raw maps (B, 9, h, w) -> per image, detections sorted by score (3x3 max-pool peaks)."""
    heat = torch.sigmoid(out[:, 0])  # (B, h, w)
    peaks = heat * (F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0] == heat)
    b, gh, gw = heat.shape
    ih, iw = image_hw or (gh * STRIDE, gw * STRIDE)
    lim = np.array([iw, ih, iw, ih], np.float32)
    scores, idx = peaks.flatten(1).topk(min(max_det, gh * gw), dim=1)  # (B, max_det)
    maps = out[:, 1:].detach().cpu().numpy()
    result = []
    for i in range(b):
        dets = []
        for s, j in zip(scores[i].tolist(), idx[i].tolist()):
            if s < threshold:
                break
            gy, gx = divmod(j, gw)
            dets.append(_box_at(maps[i, :, gy, gx], gy, gx, lim, s))
        result.append(dets)
    return result


def decode_cells(out: torch.Tensor, min_heat: float, image_hw: tuple[int, int] | None = None) -> list[list[Detection]]:
    """Raw maps (B, 9, h, w) -> per image, the box predicted at EVERY cell whose heat is at least
    `min_heat`, peak or not (score = the cell's heat). Two subjects whose centres lie 2-3 cells
    apart, one half behind the other, often leave one peak: the other subject's centre is then a
    slope of the first's, yet its cells still regress its box. The judge confirms such
    candidates by identity (`recover.py`); nothing else reads them."""
    heat = torch.sigmoid(out[:, 0]).detach().cpu().numpy()  # (B, h, w)
    b, gh, gw = heat.shape
    ih, iw = image_hw or (gh * STRIDE, gw * STRIDE)
    lim = np.array([iw, ih, iw, ih], np.float32)
    maps = out[:, 1:].detach().cpu().numpy()
    result = []
    for i in range(b):
        ys, xs = np.nonzero(heat[i] >= min_heat)
        result.append([_box_at(maps[i, :, gy, gx], int(gy), int(gx), lim, heat[i, gy, gx]) for gy, gx in zip(ys, xs)])
    return result


class SpriteDetector:
    """SpriteWorld subject detector (`Detector` protocol, name "sprites") with head boxes."""

    name = "sprites"

    def __init__(self, net: DetectorNet, threshold: float | None = None, max_det: int = MAX_DETECTIONS):
        self.net = net.eval()
        self.threshold = net.threshold if threshold is None else threshold
        self.max_det = max_det

    @classmethod
    def load(cls, folder: str | Path | None = None, threshold: float | None = None) -> "SpriteDetector":
        """The shipped detector (`assets/judge/detector.safetensors`, or `folder`)."""
        return cls(load_part(DetectorNet, "detector", Path(folder) if folder else None), threshold)

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Subjects in one (H, W, 3) uint8 image (a frame or a reference)."""
        return self.detect_video(np.asarray(image)[None])[0]

    @torch.no_grad()
    def detect_video(self, frames: np.ndarray, batch: int = 64) -> list[list[Detection]]:
        """Subjects in every frame of (T, H, W, 3) uint8, one forward per `batch` frames.

        Detections are `AppearanceDetection`s: they carry the colour descriptor the tracker
        uses to keep identities apart through occlusions.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected (T, H, W, 3) uint8 frames, got shape {frames.shape}")
        out: list[list[Detection]] = []
        for i in range(0, len(frames), batch):
            maps = self.net(to_input(frames[i:i + batch]))
            out += decode(maps, self.threshold, self.max_det, frames.shape[1:3])
        return with_appearance(frames, out)

    @torch.no_grad()
    def candidates(self, frames: np.ndarray, min_heat: float) -> list[list[Detection]]:
        """Per frame of (T, H, W, 3) uint8, the boxes of every cell with heat >= min_heat
        (`decode_cells`): the pool `recover.py` draws from."""
        frames = np.asarray(frames)
        out: list[list[Detection]] = []
        for i in range(0, len(frames), 64):
            out += decode_cells(self.net(to_input(frames[i:i + 64])), min_heat, frames.shape[1:3])
        return out


# ----------------------------------------------------------------------------- ground truth

def reference_boxes(ident: Identity, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(4,) body and (4,) head boxes of `render_reference(ident, size)` (same placement); writable
    copies of `embedders.reference_boxes`, the one place that computes them."""
    from idcrafter.judge.embedders import reference_boxes as cached

    body, head = cached(size, ident)
    return body.copy(), head.copy()
