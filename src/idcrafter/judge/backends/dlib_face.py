"""dlib's real-face backends: HOG frontal face detector and the ResNet face descriptor.

The descriptor model is dlib's `dlib_face_recognition_resnet_model_v1` (128-d, 99.38% on LFW),
shipped with its 5-point landmark model in the PyPI package `face-recognition-models`.

Same-person rule. dlib calls two faces the same person when the Euclidean distance between
their RAW descriptors is below 0.6 (`DLIB_SAME_PERSON_DISTANCE`); use `same_person` on vectors
from `embed_raw`. Raw descriptors are not unit vectors: their norms are about 1.46 (measured on
`skimage.data.astronaut()` and flipped / brightened copies). For two vectors of norm n,
d^2 = 2 n^2 (1 - cos), so distance 0.6 corresponds to cosine 1 - 0.18 / n^2 ~= 0.915 on the
L2-normalised vectors that `embed` returns (0.82 if the norms were 1). Treat this as an
approximation: the norms vary a little from face to face, so the cosine rule is not exactly
dlib's rule.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from idcrafter.errors import InputError, MissingWeightsError
from idcrafter.judge.interfaces import Detection

DLIB_SAME_PERSON_DISTANCE = 0.6
LANDMARKS_FILE = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_FILE = "dlib_face_recognition_resnet_model_v1.dat"
_PIP_HINT = "pip install face-recognition-models==0.3.0"


def _import_dlib() -> Any:
    """Import dlib lazily (it is a heavy native module) with a fix-it message on failure."""
    try:
        import dlib
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise InputError(
            f"cannot import dlib ({err}): install it with `pip install dlib-bin==20.0.1.post1`"
        ) from err
    return dlib


def _as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate an (H, W, 3) uint8 RGB image and make it C-contiguous (dlib requires that)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(
            f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} {image.shape}: "
            "convert the image to 8-bit RGB"
        )
    return np.ascontiguousarray(image)


def default_model_dir() -> Path:
    """Folder `face_recognition_models/models/` of the installed package.

    The package's own `face_recognition_model_location()` imports `pkg_resources`, which is
    absent from modern environments, so importing the package fails. `find_spec` locates a
    top-level package without executing its `__init__`.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None:
        raise MissingWeightsError(
            f"dlib face model package not installed: run `{_PIP_HINT}`"
        )
    if spec.submodule_search_locations:
        root = Path(list(spec.submodule_search_locations)[0])
    else:  # pragma: no cover - a namespace-less single-file module would be unusual
        root = Path(str(spec.origin)).parent
    return root / "models"


def _model_file(model_dir: Path, name: str) -> str:
    """Path of one dlib model file, or MissingWeightsError naming it and how to get it."""
    path = model_dir / name
    if not path.is_file():
        raise MissingWeightsError(
            f"dlib model file {name} not found in {model_dir}: run `{_PIP_HINT}` "
            "or pass a folder that contains it"
        )
    return str(path)


def _box_from_rect(rect: Any, height: int, width: int) -> np.ndarray:
    """dlib.rectangle (inclusive right/bottom) -> (4,) float x0, y0, x1, y1 clipped to the image."""
    x0 = min(max(rect.left(), 0), width)
    y0 = min(max(rect.top(), 0), height)
    x1 = min(max(rect.right() + 1, 0), width)
    y1 = min(max(rect.bottom() + 1, 0), height)
    return np.array([x0, y0, x1, y1], dtype=np.float32)


class DlibFaceDetector:
    """dlib's HOG + linear SVM frontal face detector (no weights file; fast on CPU).

    `upsample` doubles the image that many times first so that faces under ~80 px are found.
    `min_score` is dlib's `adjust_threshold`: dlib's own default, 0, fires on round textured
    things (on `skimage.data.astronaut()` the mission patch scores 0.12 against 1.16 for the
    face), so the default here is 0.3; lower it to catch hard (profile, dark) faces.
    """

    name = "dlib"

    def __init__(self, upsample: int = 1, min_score: float = 0.3) -> None:
        if upsample < 0:
            raise InputError(f"upsample must be >= 0, got {upsample}")
        self.upsample = int(upsample)
        self.min_score = float(min_score)
        self._detector = _import_dlib().get_frontal_face_detector()

    def detect(self, image: np.ndarray) -> list[Detection]:
        """Faces in an (H, W, 3) uint8 RGB image, best score first."""
        image = _as_rgb_uint8(image)
        rects, scores, _ = self._detector.run(image, self.upsample, self.min_score)
        height, width = image.shape[:2]
        found = []
        for rect, score in zip(rects, scores):
            box = _box_from_rect(rect, height, width)
            if box[2] > box[0] and box[3] > box[1]:
                found.append(Detection(box=box, score=float(score), face_box=box.copy()))
        return sorted(found, key=lambda d: -d.score)


class DlibFaceEmbedder:
    """dlib's ResNet face descriptor (128-d) on 5-point-aligned face chips.

    `model_dir` defaults to the installed `face_recognition_models/models/` folder.
    `num_jitters=1` means no jitter (deterministic); larger values average random jitters.
    """

    name = "dlib"
    dim = 128

    def __init__(self, model_dir: str | Path | None = None, num_jitters: int = 1) -> None:
        dlib = _import_dlib()
        folder = Path(model_dir) if model_dir is not None else default_model_dir()
        self.model_dir = folder
        self.num_jitters = int(num_jitters)
        self._rectangle = dlib.rectangle
        self._landmarks = dlib.shape_predictor(_model_file(folder, LANDMARKS_FILE))
        self._model = dlib.face_recognition_model_v1(_model_file(folder, RECOGNITION_FILE))

    def embed_raw(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """Raw dlib descriptor (128,) float64: the vector dlib's 0.6 distance rule is defined on."""
        image = _as_rgb_uint8(image)
        x0, y0, x1, y1 = (int(round(float(v))) for v in detection.head)
        if x1 <= x0 or y1 <= y0:
            raise InputError(f"empty face box {detection.head.tolist()}: pass a non-empty box")
        rect = self._rectangle(x0, y0, x1 - 1, y1 - 1)  # dlib: right/bottom inclusive
        shape = self._landmarks(image, rect)
        descriptor = self._model.compute_face_descriptor(image, shape, self.num_jitters)
        return np.asarray(descriptor, dtype=np.float64)  # (128,)

    def embed(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """L2-normalised descriptor (128,) float32, comparable by cosine with other backends."""
        raw = self.embed_raw(image, detection)
        norm = float(np.linalg.norm(raw))
        return (raw / norm if norm > 0 else raw).astype(np.float32)

    @staticmethod
    def same_person(a: np.ndarray, b: np.ndarray) -> bool:
        """dlib's rule on RAW descriptors (from `embed_raw`): see module `same_person`."""
        return same_person(a, b)


def same_person(a: np.ndarray, b: np.ndarray) -> bool:
    """True when two RAW dlib descriptors are closer than dlib's 0.6 Euclidean threshold.

    Do not pass normalised vectors from `embed`: the threshold was fitted on raw descriptors.
    """
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b))) < DLIB_SAME_PERSON_DISTANCE
