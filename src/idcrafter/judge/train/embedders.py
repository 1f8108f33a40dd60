"""Training of the judge's identity embedders (`idcrafter.judge.embedders`): crop pools rendered
from training identities, batches with detector-like box jitter, the ArcFace (+ attribute) loops
and the cards."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from idcrafter.judge.arcface import ArcMarginHead
from idcrafter.judge.crops import body_crop, head_crop, to_tensor
from idcrafter.judge.embedders import (
    ATTR_NAMES, REF_SIZE, FaceEmbedNet, SpriteFaceEmbedder, SpriteSubjectEmbedder, SubjectEmbedNet,
    attribute_table, face_ids, reference_boxes,
)
from idcrafter.judge.evaluation import evaluate_embedders
from idcrafter.judge.parts import count_params, save_part
from idcrafter.judge.train.common import Resume, default_work_dir, optimise
from idcrafter.world.identity import ATTRIBUTES, FACE_ATTRIBUTES, Identity, face_classes, identity_from_face


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, amount: float = 0.1) -> np.ndarray:
    """Detector-like box noise: centre shift and width / height scale, each U(+-amount) of the size.

    boxes (N, 4) x0 y0 x1 y1 -> (N, 4).
    """
    b = np.asarray(boxes, np.float32)
    w, h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    u = rng.uniform(-amount, amount, (len(b), 4)).astype(np.float32)
    cx = (b[:, 0] + b[:, 2]) / 2 + u[:, 0] * w
    cy = (b[:, 1] + b[:, 3]) / 2 + u[:, 1] * h
    w, h = w * (1 + u[:, 2]), h * (1 + u[:, 3])
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)



@dataclass
class CropPool:
    """Rendered training images and the ground truth of the subjects in them.

    frames: (F, H, W, 3) uint8 (degraded clip frames); f_*: one row per visible subject-frame:
    f_index (M,) frame, f_head / f_body (M, 4) boxes, f_ident (M,) identity id.
    refs: (R, 32, 32, 3) uint8 reference images, r_head / r_body (R, 4), r_ident (R,).
    """

    frames: np.ndarray
    f_index: np.ndarray
    f_head: np.ndarray
    f_body: np.ndarray
    f_ident: np.ndarray
    refs: np.ndarray
    r_head: np.ndarray
    r_body: np.ndarray
    r_ident: np.ndarray


def _render_frames(seed: int, idents: list[Identity], num_clips: int, frames: int, min_vis: float,
                   progress: bool) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray, int]]]:
    """Render `num_clips` degraded train clips whose casts are taken in order from `idents`."""
    from tqdm import tqdm

    from idcrafter.world.degrade import degrade, severity_sample
    from idcrafter.world.scene import WorldConfig, render_clip, sample_clip

    cfg = WorldConfig(frames=frames)
    out_frames, rows, off = [], [], 0
    for i in tqdm(range(num_clips), desc="rendering clips", disable=not progress, mininterval=5):
        rng = np.random.default_rng([seed, i, 17])
        k = int(rng.integers(1, 5))
        cast = [idents[(off + j) % len(idents)] for j in range(k)]
        off += k
        clip = render_clip(sample_clip(rng, cfg, k, "train", identities=cast), rng)
        vid = degrade(clip.frames, rng, severity_sample(rng))  # (T, H, W, 3)
        for t in range(frames):
            for j in range(k):
                if clip.visibility[t, j] >= min_vis:
                    rows.append((len(out_frames) + t, clip.head_boxes[t, j], clip.boxes[t, j], cast[j].id))
        out_frames.extend(vid)
    return np.stack(out_frames), rows


def _render_refs(seed: int, idents: list[Identity],
                 degrade_p: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(R, 32, 32, 3) references (a fraction `degrade_p` lightly degraded) and their (R, 4) body / head boxes."""
    from idcrafter.world.degrade import degrade
    from idcrafter.world.scene import render_reference

    rng = np.random.default_rng([seed, 23])
    imgs, bodies, heads = [], [], []
    for ident in idents:
        img = render_reference(ident, REF_SIZE)
        if rng.random() < degrade_p:
            img = degrade(img, rng, float(rng.uniform(0.0, 0.6)))
        body, head = reference_boxes(REF_SIZE, ident)
        imgs.append(img)
        bodies.append(body)
        heads.append(head)
    return np.stack(imgs), np.stack(bodies), np.stack(heads)


def build_pool(seed: int, clip_idents: list[Identity], ref_idents: list[Identity], num_clips: int,
               frames: int = 4, min_vis: float = 0.4, ref_degrade_p: float = 0.5, progress: bool = True) -> CropPool:
    """Render a training pool: clips cast in order from `clip_idents` + one reference per `ref_idents`.

    Clips are rendered with `sample_clip` / `render_clip` exactly as `make_example` does, but with
    the cast chosen so every class is seen about equally often (random casts would leave a
    quarter of the ~6900 face classes unseen in a pool of this size). Short clips (4 frames)
    trade redundant neighbouring frames for more clips, i.e. more scales, lights and occlusions.
    """
    vid, rows = _render_frames(seed, clip_idents, num_clips, frames, min_vis, progress)
    refs, r_body, r_head = _render_refs(seed, ref_idents, ref_degrade_p)
    return CropPool(
        frames=vid, f_index=np.array([r[0] for r in rows]), f_head=np.stack([r[1] for r in rows]),
        f_body=np.stack([r[2] for r in rows]), f_ident=np.array([r[3] for r in rows], np.int64),
        refs=refs, r_head=r_head, r_body=r_body, r_ident=np.array([i.id for i in ref_idents], np.int64))


def _crops(images: np.ndarray, index: np.ndarray, boxes: np.ndarray, kind: str,
           rng: np.random.Generator, jitter: float) -> np.ndarray:
    """(N, h, w, 3) head or body crops of images[index] at jittered boxes."""
    fn = head_crop if kind == "head" else body_crop
    b = jitter_boxes(boxes, rng, jitter) if jitter > 0 else boxes
    return np.stack([fn(images[i], bb) for i, bb in zip(index, b)])


def sample_batch(pool: CropPool, rng: np.random.Generator, n: int, kind: str, ref_frac: float,
                 jitter: float = 0.1) -> tuple[torch.Tensor, np.ndarray]:
    """A training batch: ((n, 3, h, w) crops in [-1, 1], (n,) identity ids); `ref_frac` of it
    from reference images, the rest from clip frames."""
    nr = int(round(n * ref_frac))
    fi = rng.integers(0, len(pool.f_index), n - nr)
    ri = rng.integers(0, len(pool.refs), nr)
    fb, rb = (pool.f_head, pool.r_head) if kind == "head" else (pool.f_body, pool.r_body)
    crops = np.concatenate([_crops(pool.frames, pool.f_index[fi], fb[fi], kind, rng, jitter),
                            _crops(pool.refs, ri, rb[ri], kind, rng, jitter)])
    return to_tensor(crops), np.concatenate([pool.f_ident[fi], pool.r_ident[ri]])


def _cycled(items: list, n: int, rng: np.random.Generator) -> list:
    """`n` items drawn as consecutive random permutations of `items` (balanced coverage)."""
    out: list = []
    while len(out) < n:
        out.extend(items[i] for i in rng.permutation(len(items)))
    return out[:n]


# ----------------------------------------------------------------------------- optimisation

def _margin(step: int, steps: int, m: float, ramp: float = 0.2) -> float:
    """ArcFace margin ramped linearly from 0 over the first `ramp` of training."""
    return m * min(1.0, step / max(ramp * steps, 1.0))


# ----------------------------------------------------------------------------- training

FACE_DEFAULTS = dict(num_clips=6000, batch=256, width=24, hidden=128, dim=64, s=32.0, m=0.5, ref_frac=0.25,
                     ref_degrade_p=0.5, aux_weight=0.3, lr=3e-3)


def train_face(seed: int = 0, steps: int = 1500, folder: str | Path | None = None, progress: bool = True,
               work: str | Path | None = None, **overrides) -> dict:
    """Train the face embedder (ArcFace over the train face classes), validate on held-out
    faces, save `face.safetensors` + card, and return the validation figures.

    overrides: any key of FACE_DEFAULTS (pool size, batch, width, dim, ArcFace s / m, ...).
    """
    hp = {**FACE_DEFAULTS, **overrides}
    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 1])
    faces = face_classes("train")  # (C,) sorted face ids: class c <-> faces[c]
    clip_idents = [identity_from_face(int(f), rng) for f in _cycled(list(faces), 4 * hp["num_clips"], rng)]
    ref_idents = [identity_from_face(int(f), rng) for f in np.concatenate([faces, faces])]
    pool = build_pool(seed, clip_idents, ref_idents, hp["num_clips"], ref_degrade_p=hp["ref_degrade_p"],
                      progress=progress)
    t_data = time.time() - t0

    net = FaceEmbedNet(hp["width"], hp["hidden"], hp["dim"])
    head = ArcMarginHead(hp["dim"], len(faces), s=hp["s"], m=hp["m"])
    # auxiliary face-attribute classifiers on the embedding: training only (not saved); they
    # make the embedding factor into attributes, which carries over to unseen combinations
    aux = nn.ModuleDict({a: nn.Linear(hp["dim"], n) for a, n in ATTRIBUTES if a in FACE_ATTRIBUTES})

    def loss_at(step: int) -> tuple[torch.Tensor, dict]:
        x, ids = sample_batch(pool, rng, hp["batch"], "head", hp["ref_frac"])  # (B, 3, 24, 24)
        y = torch.from_numpy(np.searchsorted(faces, face_ids(ids)))
        attrs = torch.from_numpy(attribute_table(ids))  # (B, 9)
        emb = net(x)  # (B, dim)
        head.m = _margin(step, steps, hp["m"])
        arc = F.cross_entropy(head(emb, y), y)
        aux_l = sum(F.cross_entropy(aux[a](emb), attrs[:, ATTR_NAMES.index(a)]) for a in aux) / len(aux)
        return arc + hp["aux_weight"] * aux_l, {"arc": arc.item(), "aux": aux_l.item()}

    resume = Resume(Path(work) if work else default_work_dir(), f"face-{seed}")
    train_logs = optimise({"net": net, "head": head, "aux": aux}, loss_at, steps, hp["lr"], rng, resume, progress,
                          "face")
    fig = evaluate_embedders(SpriteFaceEmbedder(net), None)
    run = {"seed": seed, "steps": steps, "t0": t0, "t_data": t_data, "classes": len(faces), "logs": train_logs}
    out = _finish("face", net, {k: hp[k] for k in ("width", "hidden", "dim")}, hp, run, pool, fig, folder)
    resume.clear()
    return out


SUBJECT_DEFAULTS = dict(num_clips=6000, num_identities=4000, extra_refs=12000, batch=256, width=16, head_width=16,
                        hidden=128, dim=64, s=32.0, m=0.5, ref_frac=0.5, ref_degrade_p=0.25, attr_weight=3.0,
                        arc_weight=1.0, lr=3e-3)


def subject_identities(seed: int, n: int) -> list[Identity]:
    """The fixed training identity set of the subject embedder: n distinct train faces (as far as
    n allows) with random clothes."""
    rng = np.random.default_rng([seed, 4242])
    faces = face_classes("train")
    return [identity_from_face(int(f), rng) for f in _cycled(list(faces), n, rng)]


def train_subject(seed: int = 0, steps: int = 1400, folder: str | Path | None = None, progress: bool = True,
                  work: str | Path | None = None, **overrides) -> dict:
    """Train the whole-subject embedder (ArcFace over a fixed set of train identities + attribute
    cross-entropy), validate on held-out identities, save `subject.safetensors` + card."""
    hp = {**SUBJECT_DEFAULTS, **overrides}
    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 2])
    idents = subject_identities(seed, hp["num_identities"])
    sorted_ids = np.sort([i.id for i in idents])  # (C,) class c <-> identity id sorted_ids[c]
    # references: two per class identity, plus `extra_refs` random train identities that only
    # teach attributes (no ArcFace class): unseen face / clothes combinations for the read-out
    extra = [Identity(*[int(rng.integers(n)) for _, n in ATTRIBUTES]) for _ in range(4 * hp["extra_refs"])]
    extra = [i for i in extra if i.split == "train"][:hp["extra_refs"]]
    pool = build_pool(seed + 1, _cycled(idents, 4 * hp["num_clips"], rng), idents + idents + extra,
                      hp["num_clips"], ref_degrade_p=hp["ref_degrade_p"], progress=progress)
    t_data = time.time() - t0

    net = SubjectEmbedNet(hp["width"], hp["hidden"], hp["dim"], hp["head_width"])
    head = ArcMarginHead(hp["dim"], len(idents), s=hp["s"], m=hp["m"])

    def loss_at(step: int) -> tuple[torch.Tensor, dict]:
        x, ids = sample_batch(pool, rng, hp["batch"], "body", hp["ref_frac"])  # (B, 3, 32, 16)
        cls = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
        known = torch.from_numpy(sorted_ids[cls] == ids)  # (B,) in the ArcFace class set
        y = torch.from_numpy(cls)
        attrs = torch.from_numpy(attribute_table(ids))  # (B, 9)
        emb, logits = net(x)
        head.m = _margin(step, steps, hp["m"])
        arc = F.cross_entropy(head(emb[known], y[known]), y[known])
        attr = sum(F.cross_entropy(logits[a], attrs[:, j]) for j, a in enumerate(ATTR_NAMES))
        return hp["arc_weight"] * arc + hp["attr_weight"] * attr, {"arc": arc.item(), "attr": attr.item()}

    resume = Resume(Path(work) if work else default_work_dir(), f"subject-{seed}")
    train_logs = optimise({"net": net, "head": head}, loss_at, steps, hp["lr"], rng, resume, progress, "subject")
    fig = evaluate_embedders(None, SpriteSubjectEmbedder(net))
    run = {"seed": seed, "steps": steps, "t0": t0, "t_data": t_data, "classes": len(idents), "logs": train_logs}
    config = {k: hp[k] for k in ("width", "hidden", "dim", "head_width")}
    out = _finish("subject", net, config, hp, run, pool, fig, folder)
    resume.clear()
    return out


def _finish(part: str, net: nn.Module, config: dict, hp: dict, run: dict, pool: CropPool, fig: dict,
            folder: str | Path | None) -> dict:
    """Save a trained part with its card; return validation figures + run information."""
    t_end = time.time()
    info = {"seed": run["seed"], "steps": run["steps"], "wall_s": round(t_end - run["t0"], 1),
            "data_s": round(run["t_data"], 1), "params": count_params(net), "train_samples": len(pool.f_index),
            "train_refs": len(pool.refs), "classes": run["classes"], "train_logs": run["logs"], "config": config,
            "hp": hp}
    save_part(net, part, config, _card(part, info, fig), Path(folder) if folder else None)
    return {**fig, **info}


def _card(part: str, info: dict, fig: dict) -> str:
    """Markdown card of a trained part: command, seed, data, size, time and validation figures."""
    hp = info["hp"]
    what = {
        "face": f"ArcFace (s={hp['s']}, m={hp['m']}) over {info['classes']} train face classes "
                f"+ face-attribute auxiliary CE on the embedding (weight {hp.get('aux_weight')}, training only); "
                f"head crops 24x24",
        "subject": f"ArcFace (s={hp['s']}, m={hp['m']}, weight {hp.get('arc_weight')}) over a fixed set of "
                   f"{info['classes']} train identities + cross-entropy on the 9 attributes (weight "
                   f"{hp.get('attr_weight')}); body crops 32x16 (head branch width {hp.get('head_width')}); "
                   f"{hp.get('extra_refs')} extra references of random train identities teach attributes only",
    }[part]
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in fig.items() if isinstance(v, float))
    per_attr = "\n".join(f"| {k} | " + ", ".join(f"{a} {x:.3f}" for a, x in v.items()) + " |"
                         for k, v in fig.items() if isinstance(v, dict))
    return f"""# Judge part: {part} embedder

Command: `idcrafter world train-judge --part {part} --seed {info['seed']}`
(equivalently `idcrafter.judge.train.embedders.train_{part}(seed={info['seed']}, steps={info['steps']})`).

- Seed: {info['seed']}; steps: {info['steps']} (batch {hp['batch']}, AdamW lr {hp['lr']}, weight decay 5e-4,
  5% warm-up then cosine; ArcFace margin ramped from 0 over the first 20% of steps).
- Loss: {what}.
- Data: {hp['num_clips']} rendered train clips (4 frames, casts cycled so every class is seen equally
  often, each clip degraded with `severity_sample`) -> {info['train_samples']} subject-frames with
  visibility >= 0.4, plus {info['train_refs']} reference images ({int(hp['ref_degrade_p'] * 100)}% lightly
  degraded); {int(hp['ref_frac'] * 100)}% of each batch are reference crops; all boxes jittered by up to
  10% of their size (shift and scale).
- Parameters: {info['params']}; config {", ".join(f"{k}={v}" for k, v in info['config'].items())}.
- Wall time: {info['wall_s']} s (of which rendering {info['data_s']} s; 1 CPU thread on a shared machine).
- Final training losses (mean of the last 50 steps): {", ".join(f"{k} {v:.3f}" for k, v in info['train_logs'].items())}.

## Validation

`idcrafter.judge.evaluation.evaluate_embedders(..., num_clips={fig['eval_clips']}, seed={fig['eval_seed']})`: {fig['eval_subjects']} subjects
of held-out clips (faces never seen in training). AUCs: balanced pairs (reference crop vs frame crop
with visibility >= 0.7); sims: cosine of the reference to the track's mean embedding (frames with
visibility >= 0.5); "degraded": frames through `degrade(strength=1.0)`. Attribute accuracies count a
prediction right when it renders the same reference (a bald head has no visible hair colour, a hat
hides a bun, glasses hide dot / sleepy eyes); `*_exact` require equality.

| figure | value |
|---|---|
{rows}
{per_attr}
"""

