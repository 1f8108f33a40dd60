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
training (`idcrafter.judge.train.embedders`) jitters all boxes by up to 10% so detector boxes are
read the same way. Held-out figures: `idcrafter.judge.evaluation`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from idcrafter.judge.crops import body_crop, head_crop, to_tensor
from idcrafter.judge.interfaces import Detection
from idcrafter.judge.parts import batched, load_part
from idcrafter.world.identity import ATTRIBUTES, FACE_ATTRIBUTES, Identity

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


# ----------------------------------------------------------------------------- identity codes

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
