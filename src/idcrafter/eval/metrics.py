"""OpenS2V-Eval v1.1's per-video metrics as the published scripts compute them (quirks kept and
documented), as functions of frames and of their backends' outputs.

Frames are (T, H, W, 3) uint8 RGB throughout, as the published scripts read them (imageio).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from idcrafter.errors import InputError

FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
FLOW_WIDTH = 16


def sample_frames(num_frames: int, count: int) -> np.ndarray:
    """`np.linspace(0, T - 1, count, dtype=int)`: the published frame choice (repeats frames of
    clips shorter than `count`)."""
    return np.linspace(0, num_frames - 1, count, dtype=int)


def _check(frames: np.ndarray, at_least: int = 1) -> np.ndarray:
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
        raise InputError(f"frames must be (T, H, W, 3) uint8 RGB, got {f.dtype} {f.shape}")
    if len(f) < at_least:
        raise InputError(f"this metric needs at least {at_least} frames, got {len(f)}")
    return f


# ---------------------------------------------------------------------- MotionAmplitude
def motion_amplitude(frames: np.ndarray) -> float:
    """OpenS2V-Eval's MotionAmplitude (`get_motion_amplitude.py`, the `motion_fb` value).

    Every frame; `cv2.COLOR_BGR2GRAY` applied to the RGB frames (the script's quirk: R and B
    swap weights, so a red subject on blue moves a little differently from the reverse);
    Farneback flow between consecutive frames (pyr 0.5, 3 levels, window 15, 3 iterations,
    poly_n 5, sigma 1.2, flags 0); each (H, W, 2) flow map resized with INTER_AREA to width 16
    and height int(H * 16 / W); the mean over time of the maps, then the mean over all pixels
    and both components (signed, so opposite motions and the x and y parts cancel), then its
    absolute value. Computed in float32 with the script's numpy reductions.
    """
    import cv2

    f = _check(frames, 2)
    h, w = f.shape[1:3]
    height = int(h * (FLOW_WIDTH / w))
    if height < 1:
        raise InputError(f"frames of {h}x{w} are too wide: the flow maps would be resized to height 0")
    gray = [cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_BGR2GRAY) for x in f]
    maps = [cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in zip(gray[:-1], gray[1:])]
    small = [cv2.resize(m, (FLOW_WIDTH, height), interpolation=cv2.INTER_AREA) for m in maps]
    average = np.mean(np.array(small), axis=0)  # (h', 16, 2)
    return abs(float(np.mean(average)))


# ---------------------------------------------------------------------- MotionSmoothness
def smoothness_windows(num_frames: int, window: int = 3) -> list[list[int]]:
    """Frame indices of each sliding window, as `load_video_sliding_window` builds them: one
    window per frame, `(window - 1) // 2` frames before and the rest after, short windows
    padded with their last index (at the start) or first index (elsewhere), and the first
    `(window - 1) // 2` windows replaced by `window` copies of frame 0."""
    if num_frames < 1 or window < 1:
        raise InputError(f"need at least one frame and a window of at least 1, got {num_frames} and {window}")
    left = (window - 1) // 2
    right = window - 1 - left
    out = []
    for c in range(num_frames):
        start, end = max(0, c - left), min(num_frames, c + right + 1)
        idx = list(range(start, end))
        while len(idx) < window:
            if start == 0:
                idx.append(idx[-1])
            else:
                idx.insert(0, idx[0])
        out.append([idx[0]] * window if c < left else idx)
    return out


def artifact_frames(scores: Sequence[float], threshold: float = 0.025) -> np.ndarray:
    """Frames whose window score jumps by more than `threshold` from the next (both frames of
    each jump), as `get_artifacts_frames` finds them."""
    s = np.asarray(scores, dtype=np.float64)
    jumps = np.where(np.abs(np.diff(s)) > threshold)[0]
    return np.unique(np.concatenate([jumps, jumps + 1]))


def smoothness_from_scores(scores: Sequence[float], threshold: float = 0.025) -> float:
    """1 - (frames next to a quality jump) / (frames)."""
    if len(scores) == 0:
        raise InputError("no window scores")
    return 1.0 - len(artifact_frames(scores, threshold)) / len(scores)


def motion_smoothness(frames: np.ndarray, rate: Callable[[list[list[np.ndarray]]], Sequence[float]],
                      window: int = 3, threshold: float = 0.025) -> float:
    """OpenS2V-Eval's MotionSmoothness: a quality rater (Q-Align's video prompt) scores every
    sliding window of `window` frames (`smoothness_windows`); frames next to a jump of more than
    `threshold` in that score count as artefacts."""
    f = _check(frames)
    windows = [[f[i] for i in w] for w in smoothness_windows(len(f), window)]
    scores = list(rate(windows))
    if len(scores) != len(windows):
        raise RuntimeError(f"the rater gave {len(scores)} scores for {len(windows)} windows")
    return smoothness_from_scores(scores, threshold)


# ---------------------------------------------------------------------- FaceSim-Cur
def face_sim_from_frames(cosines: Sequence[float | None]) -> float:
    """FaceSim-Cur of one video from the per-frame cosines with the reference (None: no face in
    that frame): each clipped at 0, zeros and faceless frames dropped, then the mean (0 if none)."""
    kept = [max(0.0, float(c)) for c in cosines if c is not None]
    kept = [c for c in kept if c != 0.0]
    return float(np.mean(kept)) if kept else 0.0


# ---------------------------------------------------------------------- NexusScore
def nexus_from_detections(detections: Sequence[tuple[float, float, float]], frames_with_detection: int,
                          min_confidence: float = 0.6, min_text: float = 0.30) -> float:
    """NexusScore of one video from every detection over all sampled frames and references:
    (detector confidence, GME similarity of the crop with the reference's label, GME similarity
    of the crop with the reference image). Kept: confidence > 0.6, text similarity > 0.30 and
    image similarity != 0; the score is their mean image similarity divided by the number of
    frames where any reference was detected (the published normalisation, which makes the
    score scale as 1 / frames: hence the 0.05 ceiling of its Total normalisation)."""
    kept = [img for conf, text, img in detections if conf > min_confidence and text > min_text and img != 0]
    if not kept or frames_with_detection <= 0:
        return 0.0
    return float(np.mean(kept)) / frames_with_detection


# ---------------------------------------------------------------------- GmeScore
def gme_from_embeddings(text: np.ndarray, frames: np.ndarray) -> float:
    """GmeScore: the mean over frames of the dot product of the prompt's embedding (D,) (or one
    per frame, (F, D)) with each frame's embedding (F, D) (both L2-normalised by GME)."""
    t = np.asarray(text, dtype=np.float64)
    f = np.asarray(frames, dtype=np.float64)
    return float(np.mean((t * f).sum(-1)))
