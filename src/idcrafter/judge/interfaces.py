"""Interfaces every judge backend implements.

Detection and face embedding have several backends (the SpriteWorld models shipped in
`assets/judge`, dlib's real face model, insightface ONNX recognition models from a local path).
They all speak these types so that metrics never depend on which backend produced them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Detection:
    """One detected subject (or face) in one image.

    box: (4,) float pixels, x0, y0, x1, y1 (x1/y1 exclusive) of the whole subject or face.
    face_box: (4,) the face / head box when the detector knows it, else None (then the face
        embedder uses `box`).
    """

    box: np.ndarray
    score: float
    face_box: np.ndarray | None = None

    @property
    def head(self) -> np.ndarray:
        return self.box if self.face_box is None else self.face_box


@runtime_checkable
class Detector(Protocol):
    """Finds subjects (or faces) in an RGB uint8 image of shape (H, W, 3)."""

    name: str

    def detect(self, image: np.ndarray) -> list[Detection]: ...


@runtime_checkable
class FaceEmbedder(Protocol):
    """Maps the face of a detection to an L2-normalised embedding of shape (dim,)."""

    name: str
    dim: int

    def embed(self, image: np.ndarray, detection: Detection) -> np.ndarray: ...


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors (0 when either is zero)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))
