"""Real-face judge backends: dlib, Haar, insightface ONNX loader, registry, video similarity."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

from idcrafter.errors import InputError, MissingWeightsError
from idcrafter.judge.backends.dlib_face import (
    LANDMARKS_FILE,
    DlibFaceDetector,
    DlibFaceEmbedder,
    default_model_dir,
    same_person,
)
from idcrafter.judge.backends.haar import HaarFaceDetector
from idcrafter.judge.backends.insightface_onnx import InsightFaceEmbedder
from idcrafter.judge.backends.real_faces import box_iou, face_similarity_matrix, link_tracks
from idcrafter.judge.backends.registry import build_face_detector, build_face_embedder
from idcrafter.judge.interfaces import Detection, Detector, FaceEmbedder, cosine


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()  # (512, 512, 3) uint8, one real face


@pytest.fixture(scope="module")
def flipped_bright(astronaut: np.ndarray) -> np.ndarray:
    out = np.clip(astronaut[:, ::-1].astype(np.int16) + 30, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out)


@pytest.fixture(scope="module")
def detector() -> DlibFaceDetector:
    return DlibFaceDetector()


@pytest.fixture(scope="module")
def embedder() -> DlibFaceEmbedder:
    return DlibFaceEmbedder()


# ---- dlib -------------------------------------------------------------------------------


def test_dlib_backends_satisfy_protocols(detector, embedder) -> None:
    assert isinstance(detector, Detector) and detector.name == "dlib"
    assert isinstance(embedder, FaceEmbedder) and embedder.name == "dlib" and embedder.dim == 128


def test_dlib_detector_finds_the_astronaut_face(detector, astronaut) -> None:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    x0, y0, x1, y1 = faces[0].box
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200  # the face, not the mission patch
    assert faces[0].face_box is not None and faces[0].score > 0.5


def test_dlib_same_person_after_flip_and_brightening(
    detector, embedder, astronaut, flipped_bright
) -> None:
    (a_det,), (b_det,) = detector.detect(astronaut), detector.detect(flipped_bright)
    raw_a, raw_b = embedder.embed_raw(astronaut, a_det), embedder.embed_raw(flipped_bright, b_det)
    assert raw_a.shape == (128,)
    assert same_person(raw_a, raw_b) and embedder.same_person(raw_a, raw_b)
    assert not same_person(raw_a, -raw_a)
    emb_a, emb_b = embedder.embed(astronaut, a_det), embedder.embed(flipped_bright, b_det)
    assert np.isclose(np.linalg.norm(emb_a), 1.0, atol=1e-5)
    assert cosine(emb_a, emb_b) > 0.95  # measured 0.993
    np.testing.assert_array_equal(emb_a, embedder.embed(astronaut, a_det))  # deterministic


def test_dlib_finds_no_face_in_non_face_images(detector) -> None:
    ramp = np.linspace(0, 255, 256).astype(np.uint8)  # (256,)
    gradient = np.broadcast_to(ramp[None, :, None], (256, 256, 3))
    assert detector.detect(skdata.coffee()) == []
    assert detector.detect(np.ascontiguousarray(gradient)) == []


def test_dlib_model_dir_found_without_importing_the_package() -> None:
    code = (
        "import sys; from idcrafter.judge.backends.dlib_face import default_model_dir; "
        "d = default_model_dir(); assert (d / 'shape_predictor_5_face_landmarks.dat').is_file(); "
        "assert 'face_recognition_models' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert default_model_dir().name == "models"


def test_dlib_missing_model_file_names_file_and_fix(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match=LANDMARKS_FILE) as err:
        DlibFaceEmbedder(model_dir=tmp_path)
    assert "pip install face-recognition-models==0.3.0" in str(err.value)


# ---- Haar -------------------------------------------------------------------------------


def test_haar_finds_the_astronaut_face(detector, astronaut) -> None:
    haar = HaarFaceDetector()
    faces = haar.detect(astronaut)
    assert haar.name == "haar" and isinstance(haar, Detector) and len(faces) >= 1
    assert box_iou(faces[0].box, detector.detect(astronaut)[0].box) > 0.3
    assert haar.detect(skdata.coffee()) == []


def test_haar_missing_cascade(tmp_path: Path) -> None:
    missing = tmp_path / "nope.xml"
    with pytest.raises(MissingWeightsError, match="nope.xml"):
        HaarFaceDetector(missing)


# ---- insightface ONNX loader ------------------------------------------------------------


def _export_tiny_cnn(path: Path, dim: int, size: int = 112) -> Path:
    """Tiny CNN (1, 3, size, size) -> (1, dim) exported with the legacy TorchScript exporter."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=4),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(8, dim),
    ).eval()
    with warnings.catch_warnings():  # the legacy exporter (no onnxscript needed) is deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (torch.zeros(1, 3, size, size),), str(path), dynamo=False,
            input_names=["data"], output_names=["fc1"],
        )
    return path


def test_insightface_loads_local_onnx_as_arcface(tmp_path: Path, astronaut) -> None:
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    path = _export_tiny_cnn(tmp_path / "tiny.onnx", dim=24)
    emb = InsightFaceEmbedder(path)
    assert isinstance(emb.model, ArcFaceONNX) and isinstance(emb, FaceEmbedder)
    assert emb.dim == 24 and emb.input_size == (112, 112)
    det = Detection(box=np.array([175, 76, 266, 167], dtype=np.float32), score=1.0)
    v1, v2 = emb.embed(astronaut, det), emb.embed(astronaut, det)
    assert v1.shape == (24,) and np.isclose(np.linalg.norm(v1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v1, v2)
    edge = Detection(box=np.array([480, 480, 512, 512], dtype=np.float32), score=1.0)
    assert emb.embed(astronaut, edge).shape == (24,)  # crop beyond the border is padded
    assert InsightFaceEmbedder(tmp_path).dim == 24  # a folder with exactly one .onnx


def test_insightface_missing_path_and_wrong_models(tmp_path: Path) -> None:
    missing = tmp_path / "glintr100.onnx"
    with pytest.raises(MissingWeightsError, match="--face-weights") as err:
        InsightFaceEmbedder(missing)
    assert str(missing) in str(err.value)
    with pytest.raises(MissingWeightsError, match="no .onnx"):
        InsightFaceEmbedder(tmp_path)
    small = _export_tiny_cnn(tmp_path / "small.onnx", dim=8, size=100)  # not routed by insightface
    with pytest.raises(InputError, match="not a recognition model"):
        InsightFaceEmbedder(small)
    junk = tmp_path / "junk" / "junk.onnx"
    junk.parent.mkdir()
    junk.write_bytes(b"not an onnx model")
    with pytest.raises(InputError, match="cannot load"):
        InsightFaceEmbedder(junk)


# ---- registry ---------------------------------------------------------------------------


def test_registry_builds_backends_and_rejects_unknown(tmp_path: Path) -> None:
    assert isinstance(build_face_detector("dlib"), DlibFaceDetector)
    assert isinstance(build_face_detector("haar"), HaarFaceDetector)
    assert isinstance(build_face_embedder("dlib"), DlibFaceEmbedder)
    path = _export_tiny_cnn(tmp_path / "w.onnx", dim=16)
    assert isinstance(build_face_embedder("insightface", str(path)), InsightFaceEmbedder)
    with pytest.raises(InputError, match="dlib, haar"):
        build_face_detector("yolo")
    with pytest.raises(InputError, match="dlib, insightface"):
        build_face_embedder("haar")
    with pytest.raises(InputError, match="--face-weights"):
        build_face_embedder("insightface")
    with pytest.raises(InputError, match="takes no weights path"):
        build_face_detector("dlib", str(path))


def test_registry_import_is_cheap() -> None:
    code = (
        "import sys, idcrafter.judge.backends.registry; "
        "heavy = [m for m in ('dlib', 'cv2', 'insightface', 'onnxruntime') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- video similarity -------------------------------------------------------------------


def test_face_similarity_on_astronaut_video(detector, embedder, astronaut, flipped_bright) -> None:
    video = np.stack([astronaut, astronaut])  # (2, 512, 512, 3)
    res = face_similarity_matrix(video, [astronaut], detector, embedder, max_faces=4)
    assert res.per_subject[0] > 0.999 and res.mean == res.min == res.per_subject[0]
    assert res.leakage == [0.0] and res.track_lengths == [2] and res.frames_used == [0, 1]
    # Two references, one face in the video: one reference is matched, the other scores 0.
    res2 = face_similarity_matrix(video, [flipped_bright, astronaut], detector, embedder, 4)
    assert res2.per_subject[1] > 0.999 and res2.per_subject[0] == 0.0
    assert res2.matched_track == [None, 0] and res2.min == 0.0


def test_face_similarity_errors_name_the_problem(detector, embedder, astronaut) -> None:
    coffee = skdata.coffee()
    with pytest.raises(InputError, match="no face detected in the video"):
        face_similarity_matrix(np.stack([coffee, coffee]), [astronaut], detector, embedder, 2)
    with pytest.raises(InputError, match=r"no face found in reference 2 \(ref_b.png\)"):
        face_similarity_matrix(
            astronaut[None], [astronaut, coffee], detector, embedder, 2,
            ref_names=["ref_a.png", "ref_b.png"],
        )
    with pytest.raises(InputError, match="uint8"):
        video = astronaut[None].astype(np.float32)  # (1, H, W, 3) float: wrong dtype
        face_similarity_matrix(video, [astronaut], detector, embedder, 2)


class _BoxDetector:
    """Fake detector: fixed boxes per frame id (the first pixel); one full box for small refs."""

    name = "fake"

    def __init__(self, boxes: dict[int, list[list[float]]]) -> None:
        self.boxes = boxes

    def detect(self, image: np.ndarray) -> list[Detection]:
        if image.shape[1] < 32:  # a reference photo: the face fills it
            return [Detection(np.array([0, 0, image.shape[1], image.shape[0]], np.float32), 1.0)]
        return [Detection(np.array(b, np.float32), 1.0) for b in self.boxes[int(image[0, 0, 0])]]


class _ColorEmbedder:
    """Fake embedder: the mean colour of the box, so identities are colours."""

    name = "fake"
    dim = 3

    def embed(self, image: np.ndarray, detection: Detection) -> np.ndarray:
        x0, y0, x1, y1 = detection.head.astype(int)
        v = image[y0:y1, x0:x1].reshape(-1, 3).mean(0)
        return v / np.linalg.norm(v)


def test_tracks_matching_and_leakage_with_fakes() -> None:
    """Two moving faces are tracked and matched; a blended face shows up as leakage."""
    red, blue, purple = (200, 10, 10), (10, 10, 200), (150, 10, 150)
    frames = np.zeros((3, 64, 128, 3), dtype=np.uint8)
    boxes = {}
    for t in range(3):
        frames[t, 10:30, 10 + 2 * t : 30 + 2 * t] = red
        frames[t, 10:30, 70 + 2 * t : 90 + 2 * t] = purple  # subject 2 drifts towards red
        frames[t, 0, 0, 0] = t
        boxes[t] = [[70 + 2 * t, 10, 90 + 2 * t, 30], [10 + 2 * t, 10, 30 + 2 * t, 30]]
    refs = [np.full((20, 20, 3), c, dtype=np.uint8) for c in (red, blue)]
    res = face_similarity_matrix(frames, refs, _BoxDetector(boxes), _ColorEmbedder(), max_faces=2)
    assert res.track_lengths == [3, 3] and res.matched_track == [1, 0]
    assert res.per_subject[0] > 0.999 and res.leakage[0] < 1e-6
    u = lambda c: np.array(c, float) / np.linalg.norm(c)  # noqa: E731
    expected = u(purple) @ u(red) - u(blue) @ u(red)  # purple resembles red more than blue does
    assert res.leakage[1] == pytest.approx(expected, abs=1e-6) and expected > 0.5


def test_link_tracks_splits_non_overlapping_faces() -> None:
    e = np.ones(2) / np.sqrt(2)
    per_frame = [[(np.array([0, 0, 10, 10.0]), e)], [(np.array([50, 50, 60, 60.0]), e)]]
    assert len(link_tracks(per_frame)) == 2
    per_frame[1] = [(np.array([2, 2, 12, 12.0]), e)]
    assert len(link_tracks(per_frame)) == 1
