"""Per-reference face similarity of a real (photographic) video.

Pipeline: embed the largest face of every reference photo; detect and embed faces in up to
`max_frames` evenly spaced frames; link detections across frames into tracks by box IoU
(greedy, threshold 0.3) so that one person's face is averaged over time instead of being
scored frame by frame; match references to tracks one-to-one with the Hungarian algorithm on
cosine similarity. Subject k's score is the cosine between its matched track and its reference.

Leakage measures identity blending between subjects: for subject k,
    max over j != k of relu(cos(track_k, ref_j) - cos(ref_k, ref_j)),
i.e. how much more subject k's generated face resembles another reference than k's own
reference photo does. It is 0 when the generated face is no closer to the other people than
the real person is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from idcrafter.errors import InputError
from idcrafter.judge.interfaces import Detection, Detector, FaceEmbedder

TRACK_IOU = 0.3


@dataclass(frozen=True)
class FaceSimilarity:
    """Result of `face_similarity_matrix`; lists are indexed by reference (subject)."""

    per_subject: list[float]  # (R,) cos(matched track, reference); 0 when no track matched
    mean: float
    min: float
    leakage: list[float]  # (R,) see module docstring; 0 when no track matched
    matched_track: list[int | None] = field(default_factory=list)  # (R,) index into tracks
    track_lengths: list[int] = field(default_factory=list)  # (K,) frames each track spans
    frames_used: list[int] = field(default_factory=list)  # indices of the sampled frames


@dataclass
class _Track:
    """Faces linked across frames: the last box (for IoU) and every normalised embedding."""

    last_box: np.ndarray  # (4,)
    embeddings: list[np.ndarray] = field(default_factory=list)  # each (D,)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (4,) x0, y0, x1, y1 boxes (0 when either is empty)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = float(iw * ih)
    area_a = float((a[2] - a[0]) * (a[3] - a[1]))
    area_b = float((b[2] - b[0]) * (b[3] - b[1]))
    return inter / (area_a + area_b - inter)


def _unit(v: np.ndarray) -> np.ndarray:
    """v / |v| as float64 (zero vector stays zero)."""
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def _area(d: Detection) -> float:
    box = d.head
    return float((box[2] - box[0]) * (box[3] - box[1]))


def sample_frame_indices(num_frames: int, max_frames: int) -> list[int]:
    """Up to `max_frames` frame indices spread evenly over [0, num_frames), first and last kept."""
    if num_frames <= max_frames:
        return list(range(num_frames))
    return sorted({int(round(i)) for i in np.linspace(0, num_frames - 1, max_frames)})


def embed_references(
    refs: Sequence[np.ndarray],
    detector: Detector,
    embedder: FaceEmbedder,
    ref_names: Sequence[str] | None = None,
) -> np.ndarray:
    """(R, D) unit embeddings of the largest face in each reference image."""
    out = []
    for i, ref in enumerate(refs):
        label = f"reference {i + 1}" + (f" ({ref_names[i]})" if ref_names else "")
        if ref.ndim != 3 or ref.shape[2] != 3 or ref.dtype != np.uint8:
            raise InputError(
                f"{label} is {ref.dtype} {ref.shape}, not an (H, W, 3) uint8 RGB image: "
                "convert it to 8-bit RGB"
            )
        faces = detector.detect(ref)
        if not faces:
            raise InputError(
                f"no face found in {label}: use a frontal, well-lit photo of the face"
            )
        largest = max(faces, key=_area)
        out.append(_unit(embedder.embed(ref, largest)))
    return np.stack(out)  # (R, D)


def _detect_and_embed(
    frame: np.ndarray, detector: Detector, embedder: FaceEmbedder, max_faces: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(face box (4,), unit embedding (D,)) for the `max_faces` best-scoring faces of a frame."""
    faces = sorted(detector.detect(frame), key=lambda d: -d.score)[:max_faces]
    return [(np.asarray(d.head, dtype=np.float64), _unit(embedder.embed(frame, d))) for d in faces]


def link_tracks(
    per_frame: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], iou_threshold: float = TRACK_IOU
) -> list[_Track]:
    """Greedy IoU linking: each frame's faces join the track whose last box overlaps most.

    Pairs (track, face) are taken in decreasing IoU, each track and face at most once per
    frame; pairs below `iou_threshold` are not linked and such faces start new tracks. Tracks
    survive frames where they are not seen (faces may be missed by the detector).
    """
    tracks: list[_Track] = []
    for faces in per_frame:
        pairs = [
            (box_iou(t.last_box, box), ti, fi)
            for ti, t in enumerate(tracks)
            for fi, (box, _) in enumerate(faces)
        ]
        used_tracks: set[int] = set()
        used_faces: set[int] = set()
        for iou, ti, fi in sorted(pairs, reverse=True):
            if iou < iou_threshold or ti in used_tracks or fi in used_faces:
                continue
            used_tracks.add(ti)
            used_faces.add(fi)
            tracks[ti].last_box = faces[fi][0]
            tracks[ti].embeddings.append(faces[fi][1])
        for fi, (box, emb) in enumerate(faces):
            if fi not in used_faces:
                tracks.append(_Track(last_box=box, embeddings=[emb]))
    return tracks


def _match_and_score(ref_emb: np.ndarray, track_emb: np.ndarray) -> tuple[list, list, list]:
    """Hungarian matching of references (R, D) to tracks (K, D) -> scores, leakage, matches."""
    from scipy.optimize import linear_sum_assignment

    sim = ref_emb @ track_emb.T  # (R, K) cos(ref, track)
    ref_sim = ref_emb @ ref_emb.T  # (R, R) cos(ref, ref)
    rows, cols = linear_sum_assignment(sim, maximize=True)
    num_refs = ref_emb.shape[0]
    scores, leakage = [0.0] * num_refs, [0.0] * num_refs
    matched: list[int | None] = [None] * num_refs
    for k, t in zip(rows.tolist(), cols.tolist()):
        matched[k] = t
        scores[k] = float(sim[k, t])
        others = [sim[j, t] - ref_sim[k, j] for j in range(num_refs) if j != k]
        leakage[k] = float(max([0.0, *others]))
    return scores, leakage, matched


def face_similarity_matrix(
    frames: np.ndarray,
    refs: Sequence[np.ndarray],
    detector: Detector,
    embedder: FaceEmbedder,
    max_faces: int,
    max_frames: int = 16,
    ref_names: Sequence[str] | None = None,
) -> FaceSimilarity:
    """Per-reference face similarity of a real video (see the module docstring).

    frames: (T, H, W, 3) uint8 RGB. refs: R reference photos (H_r, W_r, 3) uint8 RGB, one person
    each. max_faces: faces kept per frame (best detector scores). max_frames: frames sampled
    evenly. ref_names: optional names (e.g. file names) used in error messages.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise InputError(
            f"video frames are {frames.dtype} {frames.shape}, not (T, H, W, 3) uint8 RGB: "
            "decode the video to 8-bit RGB frames"
        )
    if len(frames) == 0 or len(refs) == 0:
        raise InputError("need at least one frame and one reference image")
    if max_faces < 1 or max_frames < 1:
        raise InputError(f"max_faces and max_frames must be >= 1, got {max_faces}, {max_frames}")
    if ref_names is not None and len(ref_names) != len(refs):
        raise InputError(f"{len(ref_names)} reference names for {len(refs)} references")
    ref_emb = embed_references(refs, detector, embedder, ref_names)  # (R, D)
    indices = sample_frame_indices(len(frames), max_frames)
    per_frame = [_detect_and_embed(frames[i], detector, embedder, max_faces) for i in indices]
    tracks = link_tracks(per_frame)
    if not tracks:
        raise InputError(
            f"no face detected in the video ({len(indices)} frames checked): the subjects' "
            "faces must be visible, roughly frontal and not tiny"
        )
    track_emb = np.stack([_unit(np.mean(t.embeddings, axis=0)) for t in tracks])  # (K, D)
    scores, leakage, matched = _match_and_score(ref_emb, track_emb)
    return FaceSimilarity(
        per_subject=scores,
        mean=float(np.mean(scores)),
        min=float(np.min(scores)),
        leakage=leakage,
        matched_track=matched,
        track_lengths=[len(t.embeddings) for t in tracks],
        frames_used=indices,
    )
