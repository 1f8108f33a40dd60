"""The judge's visual quality model: how degraded does a frame look?

`QualityNet` regresses the `degrade` strength (0 for a clean render, up to 1.5) of a single
48x48 frame; `QualityModel.score` turns it into a clip score in [0, 1] (1 = as sharp and clean
as a render). It stands in for the aesthetic / image-quality term of OpenS2V-style totals:
generated clips that are blurry, noisy or blocky score lower. Full-resolution convolutions
come first because blur and noise live in the highest frequencies.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from idcrafter.judge.parts import count_params, load_part, save_part

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


def _to_input(frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


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
        out = [self.net(_to_input(frames[i:i + 128])) for i in range(0, len(frames), 128)]
        return torch.cat(out).numpy()

    def score(self, frames: np.ndarray) -> float:
        """Mean over frames of clip(1 - strength / 1.5, 0, 1): ~1 for clean renders."""
        return float(np.clip(1 - self.predict(frames) / MAX_STRENGTH, 0, 1).mean())


# ----------------------------------------------------------------------------- training

def extra_artefacts(frames: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """JPEG blockiness and salt-and-pepper pixels on top of `degrade`, scaled by strength.

    Generated clips also suffer from compression and isolated bad pixels; each artefact is
    applied with probability 0.25 so the label (the strength) stays mostly `degrade`'s.
    """
    import cv2

    if strength <= 0:
        return frames
    out = frames.copy()
    if rng.random() < 0.25:
        q = int(np.clip(95 - 55 * strength / MAX_STRENGTH, 20, 95))
        for i, f in enumerate(out):
            ok, buf = cv2.imencode(".jpg", f[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
            out[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    if rng.random() < 0.25:
        m = rng.random(out.shape[:-1]) < 0.01 * strength
        out[m] = rng.choice([0, 255], size=(int(m.sum()), 1)).astype(np.uint8)
    return out


def _strength(rng: np.random.Generator) -> float:
    """Training label: clean 20% of the time, else uniform in (0, 1.5]."""
    return 0.0 if rng.random() < 0.2 else float(rng.uniform(0.02, MAX_STRENGTH))


def _batch(clips: np.ndarray, rng: np.random.Generator, n_clips: int, per_clip: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Degraded frames (n_clips * per_clip, 3, H, W) and their strengths."""
    from idcrafter.world.degrade import degrade

    xs, ys = [], []
    for i in rng.integers(0, len(clips), n_clips):
        frames = clips[i][rng.choice(clips.shape[1], per_clip, replace=False)]
        if rng.random() < 0.5:
            frames = frames[:, :, ::-1]
        s = _strength(rng)
        xs.append(extra_artefacts(degrade(np.ascontiguousarray(frames), rng, s), rng, s))
        ys += [s] * per_clip
    return _to_input(np.concatenate(xs)), torch.tensor(ys, dtype=torch.float32)


def evaluate_quality(model: QualityModel, num_clips: int = 200, seed: int = 1234) -> dict:
    """Held-out figures: Spearman(true strength, predicted clip strength) over clips degraded at
    strengths uniform in [0, 1.5] (a fifth clean), and mean scores of clean / strength-1 clips."""
    from scipy.stats import spearmanr

    from idcrafter.world.dataset import make_example
    from idcrafter.world.degrade import degrade

    rng = np.random.default_rng([seed, 3])
    true, pred, clean, strong = [], [], [], []
    for i in range(num_clips):
        frames = make_example(seed, i, "heldout").clip.frames
        s = 0.0 if i % 5 == 0 else float(rng.uniform(0.05, MAX_STRENGTH))
        true.append(s)
        pred.append(float(model.predict(degrade(frames, rng, s)).mean()))
        clean.append(model.score(frames))
        strong.append(model.score(degrade(frames, rng, 1.0)))
    rho = spearmanr(true, pred)[0]
    err = np.abs(np.array(true) - np.array(pred))
    return {"quality_spearman": float(rho), "quality_mae": float(err.mean()),
            "quality_score_clean": float(np.mean(clean)), "quality_score_strength1": float(np.mean(strong)),
            "num_clips": num_clips}


def train_quality(seed: int = 0, steps: int = 3000, folder: Path | None = None, progress: bool = True,
                  width: int = 16, num_clips: int = 600, lr: float = 2e-3) -> dict:
    """Train `QualityNet` on degraded training renders; write part "quality"; return figures."""
    from tqdm import tqdm

    from idcrafter.world.dataset import make_example

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 9])
    t0 = time.time()
    clips = np.stack([make_example(seed, i, "train").clip.frames
                      for i in tqdm(range(num_clips), desc="rendering train clips", disable=not progress)])
    net = QualityNet(width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    bar = tqdm(range(steps), desc="quality", disable=not progress, mininterval=5)
    for step in bar:
        net.train()
        x, y = _batch(clips, rng, 8, 4)
        loss = nn.functional.mse_loss(net(x), y)  # MSE: the prediction estimates E[strength | frame]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    train_time = time.time() - t0
    figures = evaluate_quality(QualityModel(net))
    figures.update(train_seconds=round(train_time, 1), steps=steps, params=count_params(net))
    save_part(net, "quality", {"width": width}, _card(seed, steps, train_time, net, figures), folder)
    return figures


def _card(seed: int, steps: int, seconds: float, net: nn.Module, figures: dict) -> str:
    rows = "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in figures.items())
    return f"""# Judge part: quality (degradation-strength regressor)

Small CNN regressing the `degrade` strength (0 = clean render, up to 1.5) of one 48x48 frame,
trained on training-split renders through `degrade` (plus, a quarter of the time each, JPEG
blockiness and salt-and-pepper pixels). Clip score = mean over frames of
clip(1 - strength / 1.5, 0, 1).

- command: `idcrafter world train-judge --part quality --seed {seed}`
  (or `python -c "from idcrafter.judge.quality import train_quality; print(train_quality(seed={seed}))"`)
- seed: {seed}
- steps: {steps}
- wall time: {seconds:.0f} s (CPU, 1 thread)
- parameters: {count_params(net)}

## Validation (held-out identities, `evaluate_quality(num_clips=200, seed=1234)`)

| figure | value |
|---|---|
{rows}
"""
