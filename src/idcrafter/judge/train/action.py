"""Training of the judge's action recogniser (`idcrafter.judge.action`) on the tracks the judge
itself hands over (detected tracks, and ground-truth boxes jittered like a detector's)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from idcrafter.judge.action import ActionNet, batch_tracks
from idcrafter.judge.parts import count_params, save_part
from idcrafter.world.scene import ACTIONS, WorldConfig


def _jitter(boxes: np.ndarray, rng: np.random.Generator, amount: float = 0.06) -> np.ndarray:
    """Detector-like noise on ground-truth boxes: +-amount of the box size per coordinate."""
    size = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]] * 2, 1)
    return boxes + rng.normal(0, amount, boxes.shape) * size


def _detected_boxes(detector, frames: np.ndarray, gt: np.ndarray, labels: list[int]) -> tuple[list[np.ndarray], list[int]]:
    """The judge's own tracks of a clip, each labelled with the action of the ground-truth
    subject it overlaps most (mean IoU >= 0.3 over frames where both exist); others dropped
    from the labels but kept as possible partners."""
    from idcrafter.judge.tracking import box_iou, detect_tracks

    _, tracks = detect_tracks(detector, frames)
    boxes = [tr.boxes() for tr in tracks]
    out_labels = []
    for b in boxes:
        ious = []
        for k in range(gt.shape[1]):
            ok = ~np.isnan(b[:, 0])
            ious.append(np.mean([box_iou(b[f:f + 1], gt[f, k:k + 1])[0, 0] for f in np.where(ok)[0]]) if ok.any() else 0)
        k = int(np.argmax(ious)) if ious else -1
        out_labels.append(labels[k] if k >= 0 and ious[k] >= 0.3 else -1)
    return boxes, out_labels


def _examples(seed: int, start: int, num: int, split: str, rng: np.random.Generator, degrade_p: float,
              detector=None):
    """Yield (crops, geom, label) for the subjects of `num` rendered clips: from ground-truth boxes
    (jittered like a detector's) or, for every other clip when a detector is given, from the
    judge's own detected tracks."""
    from idcrafter.world.dataset import make_example
    from idcrafter.world.degrade import degrade, severity_sample

    for i in range(start, start + num):
        frames_n = 9 if i % 3 else 5  # both clip lengths the generator will produce
        ex = make_example(seed, i, split, WorldConfig(frames=frames_n))
        frames = ex.clip.frames
        if rng.random() < degrade_p:
            frames = degrade(frames, rng, severity_sample(rng))
        labels = [ACTIONS.index(s.action) for s in ex.spec.subjects]
        if detector is not None and i % 2 == 0:
            boxes, labels = _detected_boxes(detector, frames, ex.clip.boxes, labels)
        else:
            boxes = [_jitter(ex.clip.boxes[:, k], rng) for k in range(len(labels))]
        if not boxes:
            continue
        crops, geoms = batch_tracks(frames, boxes)
        for k, y in enumerate(labels):
            if y >= 0:
                yield crops[k], geoms[k], y


def _pool(seed: int, start: int, num: int, split: str, degrade_p: float, detector=None):
    rng = np.random.default_rng([seed, start])
    items = list(_examples(seed, start, num, split, rng, degrade_p, detector))
    return (torch.stack([c for c, _, _ in items]), torch.stack([g for _, g, _ in items]),
            torch.tensor([y for _, _, y in items]))


def train_action(seed: int = 0, clips: int = 6000, epochs: int = 20, folder=None, progress: bool = True,
                 width: int = 32, work: str | Path | None = None) -> dict:
    """Train on the judge's own tracks and jittered ground-truth tracks (degraded) of train clips
    (the detector is read from `folder`); validate on held-out. Resumable (`work`)."""
    from idcrafter.judge.detector import SpriteDetector
    from idcrafter.judge.train.common import Resume, default_work_dir, optimise

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    t0 = time.time()
    detector = SpriteDetector.load(folder)  # train on the tracks the judge will hand over
    crops, geoms, labels = _pool(seed, 0, clips, "train", degrade_p=0.7, detector=detector)
    vc, vg, vl = _pool(seed + 1000, 0, 300, "heldout", degrade_p=0.5, detector=detector)
    net = ActionNet(width)
    n, bs = len(labels), 64
    steps = max(1, epochs * (n // bs))
    rng = np.random.default_rng([seed, 77])

    def loss_at(step: int) -> tuple[torch.Tensor, dict]:
        idx = torch.from_numpy(rng.integers(0, n, bs))
        return nn.functional.cross_entropy(net(crops[idx], geoms[idx]), labels[idx], label_smoothing=0.05), {}

    resume = Resume(Path(work) if work else default_work_dir(), f"action-{seed}")
    optimise({"net": net}, loss_at, steps, 2e-3, rng, resume, progress, "action", weight_decay=1e-4,
             scheduler=lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps))
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(vc[i:i + 256], vg[i:i + 256]).argmax(-1) for i in range(0, len(vl), 256)])
    acc = float((pred == vl).float().mean())
    per_class = {a: float((pred[vl == i] == i).float().mean()) for i, a in enumerate(ACTIONS) if (vl == i).any()}
    figures = {"action_acc_tracks": acc, "per_class": per_class, "train_tracks": n,
               "wall_s": round(time.time() - t0, 1), "params": count_params(net)}
    card = _card(seed, clips, epochs, figures)
    save_part(net, "action", {"width": width, "num_actions": len(ACTIONS)}, card, folder)
    resume.clear()
    return figures


def _card(seed: int, clips: int, epochs: int, fig: dict) -> str:
    rows = "\n".join(f"| {a} | {v:.3f} |" for a, v in fig["per_class"].items())
    return f"""# Judge part: action recogniser

Command: `idcrafter world train-judge --part action --seed {seed}`
Seed: {seed}; data: {clips} train clips (5 and 9 frames, 70% degraded); every other clip gives
the judge's own detected tracks (labelled by their best-overlapping ground-truth subject), the
others ground-truth boxes jittered by 6%; {epochs} epochs; {fig['params']} parameters; wall time
{fig['wall_s']} s (1 CPU thread). Needs the detector part in the same folder.

Validation (300 held-out clips, tracks made the same way, half degraded):
accuracy **{fig['action_acc_tracks']:.3f}** over {len(ACTIONS)} actions.

| action | accuracy |
|---|---|
{rows}
"""
