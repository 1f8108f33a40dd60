"""Action recogniser on subject tracks.

Input of one track: its per-frame body crops and box geometry, plus the geometry of its
*partner* (the other track that comes closest to it), resampled to `STEPS` points of normalised
time, so clips of 5 or 9 frames are read alike. Output: one of `ACTIONS`.

Why a partner: "approach" and "swap" are interactions; from one track alone an approach looks
like a walk. SpriteWorld never lets two subjects walk toward each other unless that is the
action, so the partner's motion disambiguates.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from idcrafter.judge.crops import BODY_SIZE, body_crop, to_tensor
from idcrafter.judge.parts import count_params, load_part, save_part
from idcrafter.world.scene import ACTIONS, WorldConfig

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


def choose_partner(k: int, all_boxes: list[np.ndarray]) -> np.ndarray | None:
    """The other track whose centre comes closest (in x, relative to height) to track k."""
    best, best_d = None, np.inf
    bk = _interp_boxes(all_boxes[k], STEPS)
    ck, hk = (bk[:, 0] + bk[:, 2]) / 2, max(float(np.median(bk[:, 3] - bk[:, 1])), 1.0)
    for j, bj in enumerate(all_boxes):
        if j == k:
            continue
        b = _interp_boxes(bj, STEPS)
        d = float(np.min(np.abs((b[:, 0] + b[:, 2]) / 2 - ck))) / hk
        if d < best_d:
            best, best_d = bj, d
    return best


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
    def predict(self, frames: np.ndarray, track_boxes: list[np.ndarray]) -> list[str]:
        """frames (T, H, W, 3) uint8; track_boxes: one (T, 4) array per track, NaN where missing."""
        if not track_boxes:
            return []
        crops, geoms = _batch(frames, track_boxes)
        logits = self.net(crops, geoms)
        return [ACTIONS[i] for i in logits.argmax(-1).tolist()]


def _batch(frames: np.ndarray, track_boxes: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    hw = frames.shape[1:3]
    crops = np.stack([track_crops(frames, b) for b in track_boxes])  # (K, S, 32, 16, 3)
    geoms = np.stack([track_geometry(b, choose_partner(k, track_boxes), hw) for k, b in enumerate(track_boxes)])
    c = to_tensor(crops.reshape(-1, *BODY_SIZE, 3)).view(len(track_boxes), STEPS, 3, *BODY_SIZE)
    return c, torch.from_numpy(geoms)


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
        crops, geoms = _batch(frames, boxes)
        for k, y in enumerate(labels):
            if y >= 0:
                yield crops[k], geoms[k], y


def _pool(seed: int, start: int, num: int, split: str, degrade_p: float, detector=None):
    rng = np.random.default_rng([seed, start])
    items = list(_examples(seed, start, num, split, rng, degrade_p, detector))
    return (torch.stack([c for c, _, _ in items]), torch.stack([g for _, g, _ in items]),
            torch.tensor([y for _, _, y in items]))


def train_action(seed: int = 0, clips: int = 6000, epochs: int = 20, folder=None, progress: bool = True) -> dict:
    """Train on ground-truth tracks (jittered, degraded) of train clips; validate on held-out."""
    from tqdm import tqdm

    from idcrafter.judge.detector import SpriteDetector

    torch.manual_seed(seed)
    t0 = time.time()
    detector = SpriteDetector.load(folder)  # train on the tracks the judge will hand over
    crops, geoms, labels = _pool(seed, 0, clips, "train", degrade_p=0.7, detector=detector)
    vc, vg, vl = _pool(seed + 1000, 0, 300, "heldout", degrade_p=0.5, detector=detector)
    net = ActionNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    n, bs = len(labels), 64
    steps = epochs * (n // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    bar = tqdm(range(steps), desc="action", disable=not progress)
    for step in bar:
        idx = torch.randint(0, n, (bs,))
        loss = nn.functional.cross_entropy(net(crops[idx], geoms[idx]), labels[idx], label_smoothing=0.05)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(vc[i:i + 256], vg[i:i + 256]).argmax(-1) for i in range(0, len(vl), 256)])
    acc = float((pred == vl).float().mean())
    per_class = {a: float((pred[vl == i] == i).float().mean()) for i, a in enumerate(ACTIONS) if (vl == i).any()}
    figures = {"action_acc_tracks": acc, "per_class": per_class, "train_tracks": n,
               "wall_s": round(time.time() - t0, 1), "params": count_params(net)}
    card = _card(seed, clips, epochs, figures)
    save_part(net, "action", {"width": 32, "num_actions": len(ACTIONS)}, card, folder)
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
