"""SpriteWorld identity embedders: the face embedder and the whole-subject embedder.

* `FaceEmbedNet`: head crop (3, 24, 24) -> L2-normalised embedding. Trained with ArcFace over
  the ~6900 TRAIN face classes (a face = the 6 face attributes), on head crops from rendered,
  degraded clips and from reference images, so that a reference and the frames of the same
  face land on the same class centre. Measured on held-out faces, never seen in training.
* `SubjectEmbedNet`: body crop (3, 32, 16) -> L2-normalised embedding of the whole subject
  (face AND clothes) plus logits for the 9 attributes of `ATTRIBUTES`. Trained with ArcFace over
  a fixed sample of training identities + attribute cross-entropy. The attribute log-probs map
  caption phrases ("spiky red hair, striped blue shirt") to reference images.

Both read crops made by `idcrafter.judge.crops` on frames and references alike; reference
boxes come from `reference_boxes` (the sprite alpha, exactly like the scene's ground truth), and
training jitters all boxes by up to 10% so detector boxes are read the same way.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from idcrafter.judge.arcface import ArcMarginHead
from idcrafter.judge.crops import body_crop, head_crop, to_tensor
from idcrafter.judge.interfaces import Detection
from idcrafter.judge.parts import batched, count_params, load_part, save_part
from idcrafter.world.identity import ATTRIBUTES, FACE_ATTRIBUTES, Identity, face_classes, identity_from_face

ATTR_NAMES = [name for name, _ in ATTRIBUTES]
FACE_ATTR_INDEX = [ATTR_NAMES.index(a) for a in FACE_ATTRIBUTES]
REF_SIZE = 32


# ----------------------------------------------------------------------------- reference boxes

@lru_cache(maxsize=None)
def _silhouette_boxes(size: int, head: int, hair_style: int, accessory: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of `render_reference` for one silhouette (only these 3 attributes change the alpha)."""
    from idcrafter.world.scene import _sprite_boxes, sprite_origin
    from idcrafter.world.sprite import Pose, draw_sprite

    ident = Identity(head, 0, hair_style, 0, 0, accessory, 0, 0, 0)
    sprite = draw_sprite(ident, Pose(), int(round(size * 0.84)))
    left, top = sprite_origin(size / 2, size - round(size * 0.05), sprite)
    body, head_box = _sprite_boxes(sprite, left, top, size, size)
    body.setflags(write=False)
    head_box.setflags(write=False)
    return body, head_box


def reference_boxes(size: int = REF_SIZE, ident: Identity | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(body_box, head_box), each (4,) float32 x0 y0 x1 y1, of the subject in `render_reference`.

    Computed from the sprite alpha as `scene._sprite_boxes` does for frames. The boxes depend on
    the silhouette (head shape, hair style, accessory); without `ident`, the union over all
    silhouettes is returned. The arrays are shared and read-only.
    """
    if ident is not None:
        return _silhouette_boxes(size, ident.head, ident.hair_style, ident.accessory)
    return _union_boxes(size)


@lru_cache(maxsize=None)
def _union_boxes(size: int) -> tuple[np.ndarray, np.ndarray]:
    n = dict(ATTRIBUTES)
    pairs = [_silhouette_boxes(size, h, s, a) for h in range(n["head"]) for s in range(n["hair_style"])
             for a in range(n["accessory"])]
    out = []
    for which in (0, 1):
        b = np.stack([p[which] for p in pairs])  # (S, 4)
        u = np.concatenate([b[:, :2].min(0), b[:, 2:].max(0)]).astype(np.float32)
        u.setflags(write=False)
        out.append(u)
    return out[0], out[1]


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


# ----------------------------------------------------------------------------- networks

def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU()]


def _trunk(width: int, hidden: int, pooled: tuple[int, int]) -> nn.Sequential:
    """(B, 3, H, W) -> (B, hidden): 5 conv layers, two 2x poolings, a small spatial grid kept
    (where the eyes or the stripes are matters), then a linear layer."""
    w = width
    return nn.Sequential(
        *_block(3, w), *_block(w, w), nn.MaxPool2d(2),
        *_block(w, 2 * w), *_block(2 * w, 2 * w), nn.MaxPool2d(2),
        *_block(2 * w, 4 * w), nn.AdaptiveAvgPool2d(pooled), nn.Flatten(),
        nn.Linear(4 * w * pooled[0] * pooled[1], hidden, bias=False), nn.BatchNorm1d(hidden), nn.GELU(),
    )


class FaceEmbedNet(nn.Module):
    """Head crop (B, 3, 24, 24) in [-1, 1] -> (B, dim) L2-normalised face embedding."""

    def __init__(self, width: int = 24, hidden: int = 128, dim: int = 64):
        super().__init__()
        self.dim = dim
        self.trunk = _trunk(width, hidden, (3, 3))
        self.embed = nn.Sequential(nn.Linear(hidden, dim, bias=False), nn.BatchNorm1d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.embed(self.trunk(x)), dim=-1)  # (B, dim)


class SubjectEmbedNet(nn.Module):
    """Body crop (B, 3, 32, 16) -> ((B, dim) L2-normalised embedding, {attr: (B, n_values)} logits).

    head_width > 0 adds a head branch: the top half of the body crop (where the head is, even
    with raised arms and a 10% box error) upsampled to 24 x 24 and read by its own trunk, so that
    1-2 px details (eyes, head shape) get the spatial resolution the whole-body trunk pools away.
    """

    HEAD_ROWS = 16

    def __init__(self, width: int = 24, hidden: int = 128, dim: int = 64, head_width: int = 0):
        super().__init__()
        self.dim = dim
        self.trunk = _trunk(width, hidden, (4, 2))
        self.head_trunk = _trunk(head_width, hidden, (3, 3)) if head_width else None
        feat = hidden * (2 if head_width else 1)
        self.embed = nn.Sequential(nn.Linear(feat, dim, bias=False), nn.BatchNorm1d(dim))
        self.attributes = nn.ModuleDict({name: nn.Linear(feat, n) for name, n in ATTRIBUTES})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h = self.trunk(x)  # (B, hidden)
        if self.head_trunk is not None:
            top = F.interpolate(x[:, :, :self.HEAD_ROWS], size=(24, 24), mode="bilinear", align_corners=False)
            h = torch.cat([h, self.head_trunk(top)], 1)  # (B, 2 * hidden)
        logits = {name: head(h) for name, head in self.attributes.items()}
        return F.normalize(self.embed(h), dim=-1), logits


# ----------------------------------------------------------------------------- loaded wrappers

def _load_net(cls: type, name: str, where: nn.Module | str | Path | None) -> nn.Module:
    """A net given directly, or loaded from a folder (holding `<name>.safetensors`) or a file."""
    if isinstance(where, nn.Module):
        return where.eval()
    if where is not None and str(where).endswith(".safetensors"):
        return load_part(cls, Path(where).stem, Path(where).parent)
    return load_part(cls, name, Path(where) if where is not None else None)


class SpriteFaceEmbedder:
    """The SpriteWorld face embedder (a `FaceEmbedder`): head crops -> (dim,) unit vectors.

    Build it from a net, a folder holding `face.safetensors`, a `.safetensors` file, or nothing
    (the shipped `assets/judge/face.safetensors`).
    """

    name = "sprites"

    def __init__(self, net: FaceEmbedNet | str | Path | None = None):
        self.net = _load_net(FaceEmbedNet, "face", net)
        self.dim = int(self.net.dim)

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "SpriteFaceEmbedder":
        return cls(load_part(FaceEmbedNet, "face", Path(folder) if folder else None))

    def embed(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """(dim,) embedding of the head of `detection` (its `head` box) in an (H, W, 3) uint8 image."""
        return self.embed_crops(head_crop(image, detection.head)[None])[0]

    @torch.no_grad()
    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """(N, 24, 24, 3) uint8 head crops -> (N, dim) float32 unit vectors."""
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        return batched(self.net, to_tensor(crops)).numpy()


class SpriteSubjectEmbedder:
    """The SpriteWorld whole-subject embedder with attribute read-out (body crops)."""

    name = "sprites-subject"

    def __init__(self, net: SubjectEmbedNet | str | Path | None = None):
        self.net = _load_net(SubjectEmbedNet, "subject", net)
        self.dim = int(self.net.dim)

    @classmethod
    def load(cls, folder: str | Path | None = None) -> "SpriteSubjectEmbedder":
        return cls(load_part(SubjectEmbedNet, "subject", Path(folder) if folder else None))

    def embed(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """(dim,) embedding of the whole subject in `detection.box`."""
        return self.embed_crops(body_crop(image, detection.box)[None])[0]

    @torch.no_grad()
    def _run(self, crops: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        x = to_tensor(crops)  # (N, 3, 32, 16)
        embs, logps = [], {name: [] for name in ATTR_NAMES}
        for i in range(0, len(x), 256):
            e, logits = self.net(x[i:i + 256])
            embs.append(e)
            for name, lg in logits.items():
                logps[name].append(F.log_softmax(lg, -1))
        return (torch.cat(embs).numpy(), {k: torch.cat(v).numpy() for k, v in logps.items()})

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """(N, 32, 16, 3) uint8 body crops -> (N, dim) float32 unit vectors."""
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._run(crops)[0]

    def attribute_logprobs(self, crops: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Per crop, {attribute: (n_values,) log-probabilities} for all 9 attributes."""
        return self.embed_with_attributes(crops)[1]

    def embed_with_attributes(self, crops: np.ndarray) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
        """Embeddings and attribute log-probabilities from one pass of the network."""
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32), []
        emb, lp = self._run(crops)
        return emb, [{name: lp[name][i] for name in ATTR_NAMES} for i in range(len(crops))]


# ----------------------------------------------------------------------------- training data

def attribute_table(ids: np.ndarray) -> np.ndarray:
    """(N,) identity ids -> (N, 9) attribute values in `ATTRIBUTES` order (mixed-radix decode)."""
    code = np.asarray(ids, np.int64).copy()
    out = np.zeros((len(code), len(ATTRIBUTES)), np.int64)
    for j in range(len(ATTRIBUTES) - 1, -1, -1):
        code, out[:, j] = np.divmod(code, ATTRIBUTES[j][1])
    return out


def face_ids(ids: np.ndarray) -> np.ndarray:
    """(N,) identity ids -> (N,) face ids (mixed-radix code of the 6 face attributes)."""
    attrs = attribute_table(ids)
    code = np.zeros(len(attrs), np.int64)
    for j in FACE_ATTR_INDEX:
        code = code * ATTRIBUTES[j][1] + attrs[:, j]
    return code


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

def _optimise(params: list[nn.Parameter], loss_at: Callable[[int], tuple[torch.Tensor, dict]], steps: int,
              lr: float, progress: bool, desc: str) -> dict[str, float]:
    """AdamW with linear warm-up (5%) and cosine decay; returns the mean of the last 50 logs."""
    from tqdm import tqdm

    opt = torch.optim.AdamW(params, lr=lr, weight_decay=5e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    history: list[dict] = []
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=10)
    for step in bar:
        loss, logs = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"loss": loss.item(), **logs})
        if step % 50 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in history[-1].items()})
    tail = history[-50:]
    return {k: float(np.mean([h[k] for h in tail])) for k in tail[0]}


def _margin(step: int, steps: int, m: float, ramp: float = 0.2) -> float:
    """ArcFace margin ramped linearly from 0 over the first `ramp` of training."""
    return m * min(1.0, step / max(ramp * steps, 1.0))


# ----------------------------------------------------------------------------- training

FACE_DEFAULTS = dict(num_clips=6000, batch=256, width=24, hidden=128, dim=64, s=32.0, m=0.5, ref_frac=0.25,
                     ref_degrade_p=0.5, aux_weight=0.3, lr=3e-3)


def train_face(seed: int = 0, steps: int = 1500, folder: str | Path | None = None, progress: bool = True,
               **overrides) -> dict:
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

    net.train()
    params = [*net.parameters(), *head.parameters(), *aux.parameters()]
    train_logs = _optimise(params, loss_at, steps, hp["lr"], progress, "face")
    net.eval()
    fig = evaluate_embedders(SpriteFaceEmbedder(net), None)
    run = {"seed": seed, "steps": steps, "t0": t0, "t_data": t_data, "classes": len(faces), "logs": train_logs}
    return _finish("face", net, {k: hp[k] for k in ("width", "hidden", "dim")}, hp, run, pool, fig, folder)


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
                  **overrides) -> dict:
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

    net.train()
    train_logs = _optimise([*net.parameters(), *head.parameters()], loss_at, steps, hp["lr"], progress, "subject")
    net.eval()
    fig = evaluate_embedders(None, SpriteSubjectEmbedder(net))
    run = {"seed": seed, "steps": steps, "t0": t0, "t_data": t_data, "classes": len(idents), "logs": train_logs}
    config = {k: hp[k] for k in ("width", "hidden", "dim", "head_width")}
    return _finish("subject", net, config, hp, run, pool, fig, folder)


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
(equivalently `idcrafter.judge.embedders.train_{part}(seed={info['seed']}, steps={info['steps']})`).

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

`evaluate_embedders(..., num_clips={fig['eval_clips']}, seed={fig['eval_seed']})`: {fig['eval_subjects']} subjects
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


# ----------------------------------------------------------------------------- evaluation

@dataclass
class EvalSet:
    """Crops of held-out clips with ground truth (S subjects in all, P subject-frames).

    ref_head (S, 24, 24, 3), ref_body (S, 32, 16, 3): reference crops at the exact reference
    boxes; ident (S,) identity ids; clip (S,) clip index. head / body (P, ...) frame crops at the
    ground-truth boxes, head_deg / body_deg the same on frames degraded with strength 1.0;
    owner (P,) subject index; vis (P,) visibility.
    """

    ref_head: np.ndarray
    ref_body: np.ndarray
    ident: np.ndarray
    clip: np.ndarray
    head: np.ndarray
    head_deg: np.ndarray
    body: np.ndarray
    body_deg: np.ndarray
    owner: np.ndarray
    vis: np.ndarray


def build_eval_set(num_clips: int = 300, seed: int = 1234) -> EvalSet:
    """Render `num_clips` held-out examples (`make_example(seed, i, "heldout")`) and crop them."""
    from idcrafter.world.dataset import make_example
    from idcrafter.world.degrade import degrade

    cols: dict[str, list] = {k: [] for k in EvalSet.__dataclass_fields__}
    for i in range(num_clips):
        ex = make_example(seed, i, "heldout")
        c = ex.clip
        deg = degrade(c.frames, np.random.default_rng([seed, i, 99]), 1.0)
        for k, sub in enumerate(ex.spec.subjects):
            s = len(cols["ident"])
            body_b, head_b = reference_boxes(ex.refs.shape[1], sub.identity)
            cols["ref_head"].append(head_crop(ex.refs[k], head_b))
            cols["ref_body"].append(body_crop(ex.refs[k], body_b))
            cols["ident"].append(sub.identity.id)
            cols["clip"].append(i)
            for t in range(len(c.frames)):
                if c.visibility[t, k] <= 0:
                    continue
                cols["head"].append(head_crop(c.frames[t], c.head_boxes[t, k]))
                cols["head_deg"].append(head_crop(deg[t], c.head_boxes[t, k]))
                cols["body"].append(body_crop(c.frames[t], c.boxes[t, k]))
                cols["body_deg"].append(body_crop(deg[t], c.boxes[t, k]))
                cols["owner"].append(s)
                cols["vis"].append(float(c.visibility[t, k]))
    return EvalSet(**{k: np.stack(v) if k not in ("ident", "clip", "owner", "vis") else np.array(v)
                      for k, v in cols.items()})


def verification_auc(ref: np.ndarray, frm: np.ndarray, owner: np.ndarray, ok: np.ndarray, label: np.ndarray,
                     rng: np.random.Generator, clip: np.ndarray | None = None) -> float:
    """ROC-AUC of (reference, frame crop) cosines: same identity vs different identity.

    Positives: every frame crop p with ok[p] against its own subject's reference. Negatives, one
    per positive: the same reference against a random ok crop of a subject with a different
    `label` (drawn from the same clip when `clip` is given; positives without such a crop are
    dropped then). ref (S, d), frm (P, d) unit vectors; owner (P,) subject; label (S,).
    """
    from idcrafter.judge.metrics import roc_auc

    cand = np.where(ok)[0]
    pos_p, neg_q = [], []
    for p in cand:
        s = owner[p]
        pool = cand if clip is None else cand[clip[owner[cand]] == clip[s]]
        for _ in range(20):  # rejection sampling; in-clip pools are tiny, so check them exactly
            q = pool[rng.integers(len(pool))]
            if label[owner[q]] != label[s]:
                break
        else:
            others = pool[label[owner[pool]] != label[s]]
            if len(others) == 0:
                continue
            q = others[rng.integers(len(others))]
        pos_p.append(p)
        neg_q.append(q)
    pos_p, neg_q = np.array(pos_p), np.array(neg_q)
    r = ref[owner[pos_p]]  # (N, d)
    return roc_auc((r * frm[pos_p]).sum(-1), (r * frm[neg_q]).sum(-1))


def track_similarities(ref: np.ndarray, frm: np.ndarray, owner: np.ndarray, ok: np.ndarray,
                       clip: np.ndarray) -> dict[str, float]:
    """Reference vs track-mean cosines, as the judge computes them.

    A track's embedding is the re-normalised mean of its ok frames' unit embeddings. Returns the
    mean same-subject cosine, the mean over clips of the per-clip minimum, and the mean cosine of
    a reference to the OTHER subjects' tracks of its clip.
    """
    s_all = len(ref)
    tracks = np.zeros_like(ref)
    has = np.zeros(s_all, bool)
    for s in range(s_all):
        e = frm[(owner == s) & ok]
        if len(e):
            m = e.mean(0)
            tracks[s], has[s] = m / max(np.linalg.norm(m), 1e-8), True
    same = (ref * tracks).sum(-1)  # (S,)
    mins, diff = [], []
    for c in np.unique(clip):
        idx = np.where((clip == c) & has)[0]
        if len(idx) == 0:
            continue
        mins.append(same[idx].min())
        sims = ref[idx] @ tracks[idx].T  # (k, k)
        diff.extend(sims[~np.eye(len(idx), dtype=bool)].tolist())
    return {"same": float(same[has].mean()), "min": float(np.mean(mins)),
            "diff": float(np.mean(diff)) if diff else float("nan")}


def face_figures(face: SpriteFaceEmbedder, ev: EvalSet, seed: int = 0) -> dict[str, float]:
    """Verification AUCs and reference-vs-track cosines of a face embedder on an EvalSet."""
    ref = face.embed_crops(ev.ref_head)
    frm, frm_deg = face.embed_crops(ev.head), face.embed_crops(ev.head_deg)
    faces = face_ids(ev.ident)  # a different identity = a different face
    ok7, ok5 = ev.vis >= 0.7, ev.vis >= 0.5
    clean = track_similarities(ref, frm, ev.owner, ok5, ev.clip)
    deg = track_similarities(ref, frm_deg, ev.owner, ok5, ev.clip)
    rng = np.random.default_rng(seed)
    return {
        "id_auc": verification_auc(ref, frm, ev.owner, ok7, faces, rng),
        "id_auc_degraded": verification_auc(ref, frm_deg, ev.owner, ok7, faces, rng),
        "id_auc_same_clip": verification_auc(ref, frm, ev.owner, ok7, faces, rng, ev.clip),
        "gt_face_sim_mean": clean["same"], "gt_face_sim_min": clean["min"],
        "gt_face_sim_degraded": deg["same"], "gt_face_sim_min_degraded": deg["min"],
        "diff_face_sim_mean": clean["diff"], "diff_face_sim_degraded": deg["diff"],
    }


INVISIBLE_DIFF = 8  # max |pixel difference| (of 255) below which two references look the same


@lru_cache(maxsize=65536)
def looks_the_same(ident: Identity, attr: str, value: int) -> bool:
    """Whether `ident` with `attr` set to `value` renders the same reference image.

    Some attribute values are invisible by construction: a bald head has no hair colour, a hat
    hides a bun (short = bun), glasses cover the eyes (dot = sleepy). No model can read them, and
    no caption about them can be checked, so attribute accuracy counts such a prediction as right.
    """
    from idcrafter.world.scene import render_reference

    if getattr(ident, attr) == value:
        return True
    a = render_reference(ident, REF_SIZE).astype(np.int16)
    b = render_reference(ident.replace(**{attr: value}), REF_SIZE).astype(np.int16)
    return int(np.abs(a - b).max()) <= INVISIBLE_DIFF


def _attr_accuracy(lps: list[dict[str, np.ndarray]], idents: list[Identity]) -> dict[str, float | dict]:
    """Attribute accuracy of predictions `lps` (one dict per crop) for the true `idents`.

    acc: mean over crops x attributes, a prediction being right when it renders the same
    reference as the truth (see `looks_the_same`); exact: plain equality; all: fraction of crops
    with all 9 right; per: per-attribute acc.
    """
    pred = np.array([[int(np.argmax(lp[a])) for a in ATTR_NAMES] for lp in lps])  # (N, 9)
    truth = np.array([[getattr(i, a) for a in ATTR_NAMES] for i in idents])  # (N, 9)
    exact = pred == truth
    right = exact.copy()
    for n, j in zip(*np.where(~exact)):
        right[n, j] = looks_the_same(idents[n], ATTR_NAMES[j], int(pred[n, j]))
    return {"acc": float(right.mean()), "exact": float(exact.mean()), "all": float(right.all(1).mean()),
            "per": {a: float(right[:, j].mean()) for j, a in enumerate(ATTR_NAMES)}}


def _track_logprobs(lps: list[dict[str, np.ndarray]], owner: np.ndarray, ok: np.ndarray,
                    num: int) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """Per subject, log-probs summed over its ok frames (a track-level read-out); (S,) has-frames."""
    out, has = [], np.zeros(num, bool)
    for s in range(num):
        idx = np.where((owner == s) & ok)[0]
        has[s] = len(idx) > 0
        out.append({a: sum(lps[i][a] for i in idx) if len(idx) else np.zeros(1) for a in ATTR_NAMES})
    return out, has


def subject_figures(subject: SpriteSubjectEmbedder, ev: EvalSet, seed: int = 0) -> dict:
    """Verification AUCs, track cosines and attribute accuracies of a subject embedder."""
    ref = subject.embed_crops(ev.ref_body)
    frm, frm_deg = subject.embed_crops(ev.body), subject.embed_crops(ev.body_deg)
    ok7, ok5 = ev.vis >= 0.7, ev.vis >= 0.5
    rng = np.random.default_rng(seed + 1)
    clean = track_similarities(ref, frm, ev.owner, ok5, ev.clip)
    idents = [Identity.from_id(int(i)) for i in ev.ident]
    a_ref = _attr_accuracy(subject.attribute_logprobs(ev.ref_body), idents)
    sel = np.where(ok7)[0]
    sel_idents = [idents[ev.owner[p]] for p in sel]
    lp_all = subject.attribute_logprobs(ev.body)
    a_frm = _attr_accuracy([lp_all[p] for p in sel], sel_idents)
    a_deg = _attr_accuracy(subject.attribute_logprobs(ev.body_deg[sel]), sel_idents)
    tracks, has = _track_logprobs(lp_all, ev.owner, ok5, len(idents))
    a_trk = _attr_accuracy([t for t, h in zip(tracks, has) if h], [i for i, h in zip(idents, has) if h])
    return {
        "subject_auc": verification_auc(ref, frm, ev.owner, ok7, ev.ident, rng),
        "subject_auc_degraded": verification_auc(ref, frm_deg, ev.owner, ok7, ev.ident, rng),
        "subject_auc_same_clip": verification_auc(ref, frm, ev.owner, ok7, ev.ident, rng, ev.clip),
        "gt_subject_sim_mean": clean["same"], "gt_subject_sim_min": clean["min"],
        "diff_subject_sim_mean": clean["diff"],
        "attr_acc_ref": a_ref["acc"], "attr_acc_ref_exact": a_ref["exact"], "attr_all_correct_ref": a_ref["all"],
        "attr_acc_frames": a_frm["acc"], "attr_acc_frames_exact": a_frm["exact"],
        "attr_acc_frames_degraded": a_deg["acc"], "attr_acc_tracks": a_trk["acc"],
        "attr_acc_ref_per_attribute": a_ref["per"], "attr_acc_frames_per_attribute": a_frm["per"],
    }


def evaluate_embedders(face: SpriteFaceEmbedder | None, subject: SpriteSubjectEmbedder | None,
                       num_clips: int = 300, seed: int = 1234) -> dict:
    """Validation figures of the face and / or subject embedder on HELD-OUT identities.

    Scalar keys: id_auc, id_auc_degraded, id_auc_same_clip, gt_face_sim_mean, gt_face_sim_min,
    gt_face_sim_degraded, gt_face_sim_min_degraded, diff_face_sim_mean, diff_face_sim_degraded
    (face); subject_auc, subject_auc_degraded, subject_auc_same_clip, gt_subject_sim_mean,
    gt_subject_sim_min, diff_subject_sim_mean, attr_acc_ref, attr_acc_ref_exact,
    attr_all_correct_ref, attr_acc_frames, attr_acc_frames_exact, attr_acc_frames_degraded,
    attr_acc_tracks (subject); plus per-attribute accuracy dicts. Attribute accuracies count a
    prediction as right when it renders the same reference as the truth (`looks_the_same`: e.g.
    any hair colour of a bald head); the *_exact ones require equality. Frames: visibility >= 0.7
    for pairs and attributes, >= 0.5 for track means; "degraded" = `degrade(frames, rng, 1.0)`;
    references are always clean.
    """
    ev = build_eval_set(num_clips, seed)
    out: dict = {}
    if face is not None:
        out.update(face_figures(face, ev, seed))
    if subject is not None:
        out.update(subject_figures(subject, ev, seed))
    out.update({"eval_clips": num_clips, "eval_seed": seed, "eval_subjects": len(ev.ident)})
    return out
