"""Training of the realism critic (`idcrafter.judge.critic`): renders vs implausible clips.

Targets (P(implausible)): 0 for training-split renders (degraded as generated clips are, with
`severity_sample`); 1 for faceless blobs, mosaics, partial bodies, scribbles, pasted reference
canvases, noise, and for clips that break time (frozen, frozen and shaken, shuffled, flickering);
a graded target s for `generator_like(s)`, the corruption early generator checkpoints show
(patch colour noise, dissolved structure, smeared subjects, unstable colour), and alpha for a
render blended with a per-frame negative at weight alpha. Nothing of the held-out split is seen.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from idcrafter.judge import attacks as A
from idcrafter.judge.critic import CriticNet, RealismCritic
from idcrafter.judge.parts import count_params, save_part
from idcrafter.judge.train.common import Resume, card_table, default_work_dir, optimise
from idcrafter.world.dataset import Example, make_example
from idcrafter.world.degrade import degrade, severity_sample
from idcrafter.world.scene import WorldConfig


# ----------------------------------------------------------------------------- corruptions

def mosaic(frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tiles of 4-12 px shuffled (one permutation for the clip, or one per frame)."""
    t, h, w = frames.shape[:3]
    s = int(rng.choice([4, 6, 8, 12]))
    gh, gw = h // s, w // s
    out = frames.copy()
    perm = rng.permutation(gh * gw)
    for i in range(t):
        if rng.random() < 0.3:
            perm = rng.permutation(gh * gw)
        tiles = [frames[i, y * s:(y + 1) * s, x * s:(x + 1) * s] for y in range(gh) for x in range(gw)]
        for j, p in enumerate(perm):
            y, x = divmod(j, gw)
            out[i, y * s:(y + 1) * s, x * s:(x + 1) * s] = tiles[p]
    return out


def partial_bodies(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """Every subject loses a part (top, bottom, left or right half of its box) to the background."""
    bg = A._scene_background(ex, rng)
    c = ex.clip
    out = c.frames.copy()
    cut = [int(rng.integers(4)) for _ in range(c.boxes.shape[1])]
    rows, cols = np.mgrid[0:out.shape[1], 0:out.shape[2]]
    for t in range(len(out)):
        for k, side in enumerate(cut):
            x0, y0, x1, y1 = c.boxes[t, k]
            xm, ym = (x0 + x1) / 2, (y0 + y1) / 2
            part = [rows < ym, rows >= ym, cols < xm, cols >= xm][side]
            m = (c.masks[t] == k + 1) & part
            out[t][m] = bg[m]
    return out


def scribbles(ex: Example, rng: np.random.Generator) -> np.ndarray:
    """The scene with 2-6 random coloured rectangles and ellipses where people would stand."""
    import cv2

    frame = A._scene_background(ex, rng)
    h, w = frame.shape[:2]
    for _ in range(int(rng.integers(2, 7))):
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        cx, cy = int(rng.integers(4, w - 4)), int(rng.integers(h // 3, h - 3))
        ax, ay = int(rng.integers(2, 8)), int(rng.integers(3, 14))
        if rng.random() < 0.5:
            cv2.ellipse(frame, (cx, cy), (ax, ay), 0, 0, 360, colour, -1)
        else:
            cv2.rectangle(frame, (cx - ax, cy - ay), (cx + ax, cy + ay), colour, -1)
    frames = np.repeat(frame[None], len(ex.clip.frames), 0)
    return A.camera_shake(frames, rng) if rng.random() < 0.5 else frames


def generator_like(ex: Example, rng: np.random.Generator, s: float) -> np.ndarray:
    """A render corrupted the way early generator checkpoints are, at severity s in [0, 1]:
    3x3 patch colour noise, dissolve toward a coarse block image, smeared subjects, per-frame
    colour instability, then the usual degradations."""
    import cv2

    c = ex.clip
    x = c.frames.astype(np.float32)
    t, h, w = x.shape[:3]
    f = int(rng.choice([3, 4, 6]))
    out = []
    for i in range(t):
        fr = x[i]
        coarse = cv2.resize(cv2.resize(fr, (w // f, h // f), interpolation=cv2.INTER_AREA), (w, h),
                            interpolation=cv2.INTER_NEAREST)
        fr = fr + min(1.0, 1.5 * s) * rng.uniform(0.5, 1.0) * (coarse - fr)
        near = cv2.dilate((c.masks[i] > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        smear = cv2.GaussianBlur(fr, (0, 0), 1 + 4 * s)
        fr = np.where(near[..., None], fr + s * (smear - fr), fr)
        patch = rng.normal(0, 35 * s, (h // 3 + 1, w // 3 + 1, 3)).astype(np.float32)
        fr = fr + np.repeat(np.repeat(patch, 3, 0), 3, 1)[:h, :w]
        out.append(fr + rng.normal(0, 10 * s, 3))
    frames = np.clip(np.stack(out) + 0.5, 0, 255).astype(np.uint8)
    return degrade(frames, rng, float(rng.uniform(0, 1)))


PER_FRAME = {"blobs": A.blobs, "mosaic": lambda ex, rng: mosaic(ex.clip.frames, rng), "partial": partial_bodies,
             "noise": A.noise}
STILL = {"scribbles": scribbles, "paste_ref": A.paste_ref, "paste_ref_shake": A.paste_ref_shake,
         "paste_clip": A.paste_clip, "paste_clip_shake": A.paste_clip_shake}
TEMPORAL = {"frozen": A.frozen, "frozen_shake": A.frozen_shake, "shuffled": A.shuffled, "flicker": A.flicker}


def sample_clip(ex: Example, rng: np.random.Generator) -> tuple[np.ndarray, float, float | None]:
    """One training clip of `ex`, its target P(implausible) and its frames' target (None where
    single frames are renders and only time betrays the clip: pastes held still, freezes,
    shuffles, flicker); proportions in the module docstring."""
    u = rng.random()
    if u < 0.4:
        return degrade(ex.clip.frames, rng, severity_sample(rng)), 0.0, 0.0
    if u < 0.65:
        s = float(rng.uniform(0.05, 1.0))
        return generator_like(ex, rng, s), s, s
    kinds = {**PER_FRAME, **STILL, **TEMPORAL}
    name = list(kinds)[int(rng.integers(len(kinds)))]
    if name == "shuffled" and all(a not in A.MOVING_ACTIONS for a in ex.spec.actions):
        return degrade(ex.clip.frames, rng, severity_sample(rng)), 0.0, 0.0  # a shuffle that changes nothing
    frames = kinds[name](ex, rng)
    target = 1.0
    if name in PER_FRAME and rng.random() < 0.3:  # half-way to a render
        alpha = float(rng.uniform(0.3, 1.0))
        frames = np.clip(alpha * frames + (1 - alpha) * ex.clip.frames.astype(np.float32) + 0.5, 0, 255).astype(np.uint8)
        target = alpha
    frame_target = target if name in PER_FRAME or name == "scribbles" else None
    return degrade(frames, rng, 0.5 * severity_sample(rng)), target, frame_target


CROP_KINDS = ("render", "render", "render", "generator", "blobs", "partial", "mosaic", "noise", "empty")


def sample_crops(ex: Example, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Body crops (n, 32, 16, 3) of one frame of `ex` (or of a corruption of it) and their
    targets: renders 0, `generator_like(s)` s, blobs / partial bodies / mosaics / noise / empty
    background 1. Subject boxes are the ground truth's, jittered like a detector's."""
    from idcrafter.judge.crops import body_crop
    from idcrafter.judge.train.embedders import jitter_boxes

    kind = CROP_KINDS[int(rng.integers(len(CROP_KINDS)))]
    c = ex.clip
    t = int(rng.integers(len(c.frames)))
    target, s = 1.0, 1.0
    if kind == "render":
        frames, target = c.frames, 0.0
    elif kind == "generator":
        s = float(rng.uniform(0.05, 1.0))
        frames, target = generator_like(ex, rng, s), s
    elif kind == "mosaic":
        frames = mosaic(c.frames, rng)
    else:
        frames = {"blobs": A.blobs, "partial": partial_bodies, "noise": A.noise, "empty": A.background}[kind](ex, rng)
    frame = degrade(frames[t], rng, severity_sample(rng))
    boxes = c.boxes[t][c.visibility[t] >= 0.5]
    if kind in ("noise", "empty") or not len(boxes):  # boxes where people would stand
        h = rng.uniform(18, 34, 3)
        x, y = rng.uniform(4, 44, 3), rng.uniform(34, 46, 3)
        boxes = np.stack([x - h / 4, y - h, x + h / 4, y], 1)
    crops = np.stack([body_crop(frame, b) for b in jitter_boxes(boxes, rng, 0.1)])
    return crops, np.full(len(crops), target, np.float32)


# ----------------------------------------------------------------------------- training

def train_critic(seed: int = 0, steps: int = 1800, folder: str | Path | None = None, progress: bool = True,
                 width: int = 16, crop_width: int = 16, batch: int = 8, crop_batch: int = 12, num_clips: int = 1200,
                 lr: float = 2e-3, work: str | Path | None = None, init: str | Path | None = None) -> dict:
    """Train the critic on training-split renders and their corruptions; save part "critic".

    Per step: `batch` clips (clip and, where defined, per-frame targets) and the crops of
    `crop_batch` frames (subject branch). `init`: a critic part file to start from (its
    branches are loaded where shapes match). Resumable: re-running with the same arguments
    continues from `<work>/critic-<seed>.resume.pt`.
    """
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    t0 = time.time()
    pool = [make_example(seed + 7, i, "train", WorldConfig(frames=9 if i % 3 else 5)) for i in range(num_clips)]
    rng = np.random.default_rng([seed, 31])
    net = CriticNet(width, crop_width)
    if init is not None:
        from safetensors.torch import load_file

        own = net.state_dict()
        own.update({k: v for k, v in load_file(str(init)).items() if k in own and own[k].shape == v.shape})
        net.load_state_dict(own)

    def loss_at(step: int) -> tuple[torch.Tensor, dict]:
        by_len: dict[int, list] = {}
        for i in rng.integers(0, len(pool), batch):
            frames, target, frame_target = sample_clip(pool[i], rng)
            by_len.setdefault(len(frames), []).append((frames, target, frame_target))
        clip_loss = frame_loss = 0.0
        for items in by_len.values():
            x = torch.from_numpy(np.stack([f for f, _, _ in items])).permute(0, 1, 4, 2, 3).float().div(127.5).sub(1.0)
            logit, per_frame = net(x)
            clip_loss = clip_loss + F.binary_cross_entropy_with_logits(
                logit, torch.tensor([tg for _, tg, _ in items]), reduction="sum")
            for j, (_, _, ft) in enumerate(items):
                if ft is not None:
                    frame_loss = frame_loss + F.binary_cross_entropy_with_logits(
                        per_frame[j], torch.full_like(per_frame[j], ft), reduction="mean")
        crops, targets = zip(*(sample_crops(pool[i], rng) for i in rng.integers(0, len(pool), crop_batch)))
        cl = net.crop_logits(torch.from_numpy(np.concatenate(crops)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0))
        crop_loss = F.binary_cross_entropy_with_logits(cl, torch.from_numpy(np.concatenate(targets)))
        loss = (clip_loss + frame_loss) / batch + crop_loss
        return loss, {"crop": crop_loss.item()}

    resume = Resume(Path(work) if work else default_work_dir(), f"critic-{seed}")
    logs = optimise({"net": net}, loss_at, steps, lr, rng, resume, progress, "critic", weight_decay=1e-4)
    figures = evaluate_critic(RealismCritic(net))
    figures.update(train_seconds=round(time.time() - t0, 1), steps=steps, params=count_params(net),
                   final_loss=logs.get("loss", float("nan")))
    config = {"width": width, "crop_width": crop_width}
    save_part(net, "critic", config, _card(seed, steps, config, batch, num_clips, figures, init),
              Path(folder) if folder else None)
    resume.clear()
    return figures


def evaluate_critic(critic: RealismCritic, num_clips: int = 60, seed: int = 1234) -> dict:
    """Held-out figures: mean clip realism of renders (clean, degraded at 1.0), of each attack
    kind and of `generator_like` at severities 0.25 / 0.5 / 1, the realism ROC-AUC renders vs
    attacks; and the subject branch's mean P(person) on ground-truth body crops of renders,
    blobs, partial bodies and generator-like clips, with its ROC-AUC renders vs blobs + partial."""
    from idcrafter.judge.crops import body_crop
    from idcrafter.judge.metrics import roc_auc

    rng = np.random.default_rng([seed, 41])
    rows: dict[str, list[float]] = {}
    crops: dict[str, list[float]] = {}
    for i in range(num_clips):
        ex = make_example(seed, i, "heldout", WorldConfig(frames=9 if i % 2 else 5), num_subjects=1 + i % 4)
        vids = {"render": ex.clip.frames, "render_degraded": degrade(ex.clip.frames, rng, 1.0),
                **{f"gen_{s}": generator_like(ex, rng, s) for s in (0.25, 0.5, 1.0)},
                **{k: fn(ex, rng) for k, fn in {**PER_FRAME, **STILL, **TEMPORAL}.items()}}
        for k, v in vids.items():
            rows.setdefault(k, []).append(critic.realism(v))
            if k in ("render", "render_degraded", "gen_0.5", "blobs", "partial"):
                t = len(v) // 2
                boxes = ex.clip.boxes[t][ex.clip.visibility[t] >= 0.5]
                if len(boxes):
                    crops.setdefault(k, []).extend(critic.subject_realism(np.stack([body_crop(v[t], b) for b in boxes])))
    fig = {f"realism_{k}": float(np.mean(v)) for k, v in rows.items()}
    bad = [x for k, v in rows.items() if k not in ("render", "render_degraded") and not k.startswith("gen_") for x in v]
    fig["realism_auc"] = roc_auc(np.array(rows["render"] + rows["render_degraded"]), np.array(bad))
    fig.update({f"person_{k}": float(np.mean(v)) for k, v in crops.items()})
    fig["person_auc"] = roc_auc(np.array(crops["render"] + crops["render_degraded"]),
                                np.array(crops["blobs"] + crops["partial"]))
    fig["eval_clips"] = num_clips
    return fig


def _card(seed: int, steps: int, config: dict, batch: int, num_clips: int, figures: dict,
          init: str | Path | None) -> str:
    start = "random weights" if init is None else f"the clip branch of `{init}` (see 'Two stages')"
    stages = "" if init is None else f"""
## Two stages

This part was trained in two runs of the same seed: first `train_critic(seed={seed}, steps=1800)`
with the clip branch only (its loss on clips alone: the code of that run trained no per-frame
target and no subject branch), then this run, started from the first run's weights
(`train_critic(seed={seed}, steps={steps}, init=<first run's critic.safetensors>)`), which adds the
per-frame targets and trains the subject branch from scratch.
"""
    return f"""# Judge part: critic (realism of a clip, per frame and over time; is a subject a person)

Clip branch: a small CNN reads every frame with its difference to the previous one, giving a
logit per frame and, pooled by a temporal convolution, one per clip; realism = 1 - max(P_clip,
mean P_frame). Subject branch: a small CNN on the judge's 32 x 16 body crops, P(a SpriteWorld
person). Trained on training-split renders (target 0, degraded with `severity_sample`) against
faceless blobs, mosaics, partial bodies, scribbles, pasted references, noise, frozen / shaken /
shuffled / flickering clips (target 1; per-frame targets only where single frames show it) and
renders corrupted like early generator samples (`generator_like(s)`, target s); crops of
renders vs crops of blobs, partial bodies, mosaics, noise, empty background, generator-like.

- command: `idcrafter world train-judge --part critic --seed {seed}`
  (or `python -c "from idcrafter.judge.train.critic import train_critic; print(train_critic(seed={seed}))"`)
- seed: {seed}; data seed {seed + 7} (train split, {num_clips} clips of 5 and 9 frames); started from {start}
- steps: {steps}, batch {batch} clips + 12 frames' crops, AdamW with warm-up and cosine decay; resumable
- wall time: {figures['train_seconds']:.0f} s (CPU, 1 thread, shared machine)
- parameters: {figures['params']}; config `{config}`
{stages}
## Validation (held-out identities, `evaluate_critic(num_clips={figures['eval_clips']}, seed=1234)`)

| figure | value |
|---|---|
{card_table(figures)}
"""
