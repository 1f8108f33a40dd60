"""Training of the judge's quality regressor (`idcrafter.judge.quality`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from idcrafter.judge.evaluation import evaluate_quality
from idcrafter.judge.parts import count_params, save_part
from idcrafter.judge.quality import MAX_STRENGTH, QualityModel, QualityNet, to_input as _to_input


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



def train_quality(seed: int = 0, steps: int = 3000, folder: Path | None = None, progress: bool = True,
                  width: int = 16, num_clips: int = 600, lr: float = 2e-3, work: str | Path | None = None) -> dict:
    """Train `QualityNet` on degraded training renders; write part "quality"; return figures.
    Resumable (`work`)."""
    from tqdm import tqdm

    from idcrafter.judge.train.common import Resume, default_work_dir, optimise
    from idcrafter.world.dataset import make_example

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 9])
    t0 = time.time()
    clips = np.stack([make_example(seed, i, "train").clip.frames
                      for i in tqdm(range(num_clips), desc="rendering train clips", disable=not progress)])
    net = QualityNet(width)

    def loss_at(step: int) -> tuple[torch.Tensor, dict]:
        x, y = _batch(clips, rng, 8, 4)
        return nn.functional.mse_loss(net(x), y), {}  # MSE: the prediction estimates E[strength | frame]

    resume = Resume(Path(work) if work else default_work_dir(), f"quality-{seed}")
    optimise({"net": net}, loss_at, steps, lr, rng, resume, progress, "quality", weight_decay=1e-4,
             scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps,
                                                                       pct_start=0.1))
    train_time = time.time() - t0
    figures = evaluate_quality(QualityModel(net))
    figures.update(train_seconds=round(train_time, 1), steps=steps, params=count_params(net))
    save_part(net, "quality", {"width": width}, _card(seed, steps, train_time, net, figures), folder)
    resume.clear()
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
  (or `python -c "from idcrafter.judge.train.quality import train_quality; print(train_quality(seed={seed}))"`)
- seed: {seed}
- steps: {steps}
- wall time: {seconds:.0f} s (CPU, 1 thread)
- parameters: {count_params(net)}

## Validation (held-out identities, `evaluate_quality(num_clips=200, seed=1234)`)

| figure | value |
|---|---|
{rows}
"""
