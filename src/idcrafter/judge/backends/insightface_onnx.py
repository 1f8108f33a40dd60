"""Face embedder on an insightface ONNX recognition model (ArcFace / CurricularFace) on disk.

The model is loaded with insightface's own loader, `insightface.model_zoo.get_model`, so that
its routing and preprocessing apply: a single-input model whose input is square, >= 112 and a
multiple of 16 (and that is not a detector, landmark, attribute or swapper model) becomes an
`ArcFaceONNX`, which picks the input mean/std (127.5/127.5, or 0/1 for mxnet exports with
Sub/Mul first nodes) and expects BGR images (`get_feat` swaps channels to RGB itself).

Nothing is ever downloaded: only a local file is accepted. Note that insightface's `get_model`
looks a name that does not end in `.onnx` up in `~/.insightface/models/`, so a folder is
resolved here to its single `.onnx` file before calling it.

Crops are square boxes around the detection with a margin, not insightface's 5-point
similarity alignment (`norm_crop`), because the detectors here give boxes only; expect somewhat
lower similarities than with aligned crops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from idcrafter.errors import InputError, MissingWeightsError
from idcrafter.judge.interfaces import Detection

_PIP_HINT = "pip install --no-deps insightface==2.1"


def resolve_onnx_path(model_path: str | Path) -> Path:
    """The ONNX file to load: `model_path` itself, or the only *.onnx inside that folder."""
    path = Path(model_path).expanduser()
    if not path.exists():
        raise MissingWeightsError(
            f"face recognition model {path} not found: put the ONNX file "
            f"(e.g. glintr100.onnx / w600k_r50.onnx) at {path} or pass --face-weights"
        )
    if path.is_dir():
        found = sorted(path.glob("*.onnx"))
        if not found:
            raise MissingWeightsError(
                f"no .onnx file in {path}: put the ONNX file (e.g. glintr100.onnx / "
                f"w600k_r50.onnx) at {path} or pass --face-weights"
            )
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise InputError(
                f"{path} holds several .onnx files ({names}): pass the recognition model's "
                "file path with --face-weights"
            )
        path = found[0]
    if path.suffix != ".onnx":
        raise InputError(f"{path} is not a .onnx file: pass an ONNX recognition model")
    return path


def load_recognition_model(onnx_path: Path) -> Any:
    """insightface's `get_model` on a local file (CPU, no download) -> its ArcFaceONNX."""
    try:
        from insightface.model_zoo import get_model
        from insightface.model_zoo.arcface_onnx import ArcFaceONNX
    except ImportError as err:
        raise InputError(f"cannot import insightface ({err}): run `{_PIP_HINT}`") from err
    try:
        model = get_model(str(onnx_path), providers=["CPUExecutionProvider"], download=False)
    except Exception as err:  # onnxruntime / onnx / routing errors on a bad file
        raise InputError(
            f"cannot load {onnx_path} as an ONNX model ({type(err).__name__}: {err}): "
            "pass an ArcFace-style recognition model with a static square input"
        ) from err
    if not isinstance(model, ArcFaceONNX):
        kind = "no model type" if model is None else type(model).__name__
        raise InputError(
            f"insightface routes {onnx_path.name} to {kind}, not a recognition model: pass an "
            "ArcFace-style model (one input (1, 3, S, S) with S >= 112 and a multiple of 16, "
            "one output (1, D))"
        )
    return model


def square_crop(image: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """Square crop (S, S, 3) centred on `box`, side = max(w, h) * (1 + 2 margin), zero-padded."""
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin)
    if side < 1.0:
        raise InputError(f"empty face box {np.asarray(box).tolist()}: pass a non-empty box")
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left, top = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    size = max(int(round(side)), 1)
    height, width = image.shape[:2]
    out = np.zeros((size, size, 3), dtype=image.dtype)  # (S, S, 3)
    sx0, sy0 = max(left, 0), max(top, 0)
    sx1, sy1 = min(left + size, width), min(top + size, height)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - top : sy1 - top, sx0 - left : sx1 - left] = image[sy0:sy1, sx0:sx1]
    return out


class InsightFaceEmbedder:
    """L2-normalised embeddings from a local insightface ONNX recognition model.

    `margin` is the fraction of the face box side added on each side before resizing to the
    model's input (0.2 roughly matches the context of insightface's 112 px aligned crops around
    a tight HOG/Haar face box).
    """

    name = "insightface"

    def __init__(self, model_path: str | Path, margin: float = 0.2) -> None:
        self.model_path = resolve_onnx_path(model_path)
        self.model = load_recognition_model(self.model_path)
        self.margin = float(margin)
        width, height = self.model.input_size
        self.input_size = (int(width), int(height))  # (W, H), as cv2.resize wants it
        out_dim = self.model.output_shape[-1]
        if isinstance(out_dim, int) and out_dim > 0:
            self.dim = out_dim
        else:  # symbolic output size: run the model once on a blank face
            blank = np.zeros((self.input_size[1], self.input_size[0], 3), dtype=np.uint8)
            self.dim = int(np.asarray(self.model.get_feat(blank)).size)

    def embed(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        """Embedding (dim,) float32 of unit norm for the face of `detection` in an RGB image."""
        import cv2

        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(
                f"expected an RGB uint8 image of shape (H, W, 3), got {image.dtype} "
                f"{image.shape}: convert the image to 8-bit RGB"
            )
        crop = square_crop(image, detection.head, self.margin)  # (S, S, 3) RGB
        shrink = crop.shape[0] > self.input_size[1]
        interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        face = cv2.resize(crop, self.input_size, interpolation=interp)  # (H_in, W_in, 3)
        bgr = np.ascontiguousarray(face[:, :, ::-1])  # insightface expects OpenCV's BGR
        feat = np.asarray(self.model.get_feat(bgr), dtype=np.float32).reshape(-1)  # (D,)
        norm = float(np.linalg.norm(feat))
        return feat / norm if norm > 0 else feat
