"""SpriteWorld identities: parametric characters with a train / held-out split.

An identity is a tuple of discrete attributes. Its integer id is the mixed-radix code of that
tuple, so every one of the `NUM_IDENTITIES` combinations has exactly one id.

The split is decided by the *face* attributes alone (head shape, skin, hair, eyes, accessory):
a held-out identity never shares its face with a training identity, so the face embedder and
the generator are measured on faces they have never seen, while clothing colours are shared
(as in the real world, where a new person wears ordinary clothes).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Literal

import numpy as np

Split = Literal["train", "heldout"]

# Palettes: (name used in captions, RGB in [0, 1]). Colours are chosen to stay distinct after
# blur and lighting changes at 48 x 48.
HAIR_COLOURS = [
    ("black", (0.08, 0.07, 0.07)), ("brown", (0.42, 0.25, 0.10)), ("blond", (0.95, 0.82, 0.35)),
    ("red", (0.80, 0.18, 0.10)), ("white", (0.93, 0.93, 0.93)), ("blue", (0.15, 0.35, 0.90)),
    ("pink", (0.98, 0.45, 0.75)), ("green", (0.15, 0.70, 0.25)),
]
SKINS = [
    ("pale", (1.00, 0.87, 0.77)), ("light", (0.94, 0.76, 0.60)), ("tan", (0.82, 0.60, 0.40)),
    ("brown", (0.58, 0.38, 0.22)), ("dark", (0.36, 0.22, 0.13)), ("olive", (0.74, 0.66, 0.42)),
]
CLOTH_COLOURS = [
    ("red", (0.85, 0.12, 0.12)), ("orange", (1.00, 0.55, 0.05)), ("yellow", (0.98, 0.90, 0.10)),
    ("green", (0.10, 0.60, 0.20)), ("teal", (0.05, 0.62, 0.62)), ("blue", (0.10, 0.25, 0.85)),
    ("purple", (0.50, 0.15, 0.70)), ("pink", (1.00, 0.50, 0.78)), ("white", (0.96, 0.96, 0.96)),
    ("black", (0.10, 0.10, 0.12)),
]
PANTS_COLOURS = [
    ("blue", (0.15, 0.25, 0.60)), ("black", (0.08, 0.08, 0.10)), ("grey", (0.50, 0.50, 0.52)),
    ("brown", (0.45, 0.30, 0.15)), ("white", (0.92, 0.92, 0.90)), ("red", (0.70, 0.10, 0.12)),
]
HEAD_SHAPES = ["round", "square", "oval"]
HAIR_STYLES = ["bald", "short", "long", "spiky", "bun"]
EYES = ["dot", "wide", "sleepy"]
ACCESSORIES = ["none", "hat", "glasses", "bow"]
PATTERNS = ["plain", "striped", "two-tone"]

# (attribute name, number of values); the order fixes the mixed-radix id.
ATTRIBUTES: list[tuple[str, int]] = [
    ("head", len(HEAD_SHAPES)), ("skin", len(SKINS)), ("hair_style", len(HAIR_STYLES)),
    ("hair_colour", len(HAIR_COLOURS)), ("eyes", len(EYES)), ("accessory", len(ACCESSORIES)),
    ("shirt", len(CLOTH_COLOURS)), ("pattern", len(PATTERNS)), ("pants", len(PANTS_COLOURS)),
]
FACE_ATTRIBUTES = ("head", "skin", "hair_style", "hair_colour", "eyes", "accessory")
NUM_IDENTITIES = int(np.prod([n for _, n in ATTRIBUTES]))
NUM_FACES = int(np.prod([n for name, n in ATTRIBUTES if name in FACE_ATTRIBUTES]))
HELDOUT_EVERY = 5  # one face in five is held out


@dataclass(frozen=True)
class Identity:
    """One character: every field is an index into its palette / list above."""

    head: int
    skin: int
    hair_style: int
    hair_colour: int
    eyes: int
    accessory: int
    shirt: int
    pattern: int
    pants: int

    @property
    def id(self) -> int:
        code = 0
        for name, n in ATTRIBUTES:
            code = code * n + getattr(self, name)
        return code

    @property
    def face_id(self) -> int:
        code = 0
        for name, n in ATTRIBUTES:
            if name in FACE_ATTRIBUTES:
                code = code * n + getattr(self, name)
        return code

    @property
    def split(self) -> Split:
        return "heldout" if _mix(self.face_id) % HELDOUT_EVERY == 0 else "train"

    @classmethod
    def from_id(cls, code: int) -> "Identity":
        if not 0 <= code < NUM_IDENTITIES:
            raise ValueError(f"identity id {code} outside [0, {NUM_IDENTITIES})")
        values = {}
        for name, n in reversed(ATTRIBUTES):
            code, values[name] = divmod(code, n)
        return cls(**values)

    def replace(self, **changes: int) -> "Identity":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Identity(**values)

    def attributes(self) -> dict[str, int]:
        return {name: getattr(self, name) for name, _ in ATTRIBUTES}


def _mix(x: int) -> int:
    """A fixed integer hash (splitmix64 finaliser), so the split is stable across platforms."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def sample_identities(rng: np.random.Generator, k: int, split: Split) -> list[Identity]:
    """k identities of one split with pairwise different faces *and* a describable difference.

    Rejection sampling: about one draw in five is held out, so a few draws suffice.
    """
    out: list[Identity] = []
    while len(out) < k:
        ident = Identity(*[int(rng.integers(n)) for _, n in ATTRIBUTES])
        if ident.split != split:
            continue
        if any(o.face_id == ident.face_id or o.shirt == ident.shirt for o in out):
            continue  # two casts members must be told apart by face and by shirt
        out.append(ident)
    return out


def face_classes(split: Split) -> np.ndarray:
    """All face ids of a split, sorted: the class list of the face embedder."""
    ids = np.arange(NUM_FACES)
    mask = np.array([(_mix(int(i)) % HELDOUT_EVERY == 0) == (split == "heldout") for i in ids])
    return ids[mask]


def identity_from_face(face_id: int, rng: np.random.Generator) -> Identity:
    """A random identity with the given face (clothes drawn at random)."""
    values: dict[str, int] = {}
    code = face_id
    for name, n in reversed(ATTRIBUTES):
        if name in FACE_ATTRIBUTES:
            code, values[name] = divmod(code, n)
        else:
            values[name] = int(rng.integers(n))
    return Identity(**values)
