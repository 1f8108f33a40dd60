"""The judge's metrics as pure functions of embeddings, tracks and frames.

Every function here is deterministic and independent of which backend produced its inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

# OpenS2V's MotionAmplitude settings (Farneback) -- we keep them but skip its width-16 resize,
# which would leave 16 px of our already small frames.
FARNEBACK = dict(pyr_scale=0.5, levels=3, winsize=15, iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
MOTION_FULL_SCALE = 1.0  # px / frame at 48 px that maps to motion = 1


def hungarian(sim: np.ndarray) -> list[int]:
    """For each row (reference) the matched column (track), -1 if unmatched. Maximises sim."""
    from scipy.optimize import linear_sum_assignment

    out = [-1] * sim.shape[0]
    if sim.size == 0:
        return out
    rows, cols = linear_sum_assignment(-sim)
    for r, c in zip(rows, cols):
        out[int(r)] = int(c)
    return out


def matched_scores(sim: np.ndarray, match: list[int]) -> np.ndarray:
    """(K,) similarity of each reference to its matched track (0 when unmatched), clipped at 0."""
    return np.array([max(float(sim[k, j]), 0.0) if j >= 0 else 0.0 for k, j in enumerate(match)])


def leakage(track_ref: np.ndarray, ref_ref: np.ndarray, match: list[int]) -> np.ndarray:
    """(K,) identity leakage into each subject.

    leak_k = max_{j != k} relu( sim(track of k, ref j) - sim(ref k, ref j) ): how much more the
    region of subject k resembles another reference than subject k's own reference does. The
    baseline term removes similarity the two references share anyway (both have red hair), so
    ground truth scores ~0 and a blended or swapped subject scores high.
    track_ref: (K refs, N tracks) similarities, ref_ref: (K, K).
    """
    k = ref_ref.shape[0]
    out = np.zeros(k)
    for i, j in enumerate(match):
        if j < 0 or k < 2:
            continue
        gaps = [track_ref[o, j] - ref_ref[i, o] for o in range(k) if o != i]
        out[i] = max(0.0, float(max(gaps)))
    return out


def motion_amplitude(frames: np.ndarray) -> float:
    """Mean Farneback flow magnitude in px / frame over consecutive frame pairs."""
    import cv2

    gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    mags = []
    for a, b in zip(gray[:-1], gray[1:]):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK)
        mags.append(float(np.linalg.norm(flow, axis=-1).mean()))
    return float(np.mean(mags)) if mags else 0.0


def motion_score(px_per_frame: float, height: int) -> float:
    """Flow magnitude normalised to [0, 1] (scaled to a 48 px frame, then by the full scale)."""
    return float(np.clip(px_per_frame * 48 / height / MOTION_FULL_SCALE, 0, 1))


@dataclass
class Plausibility:
    """Checks of a clip's physical plausibility, each in [0, 1] (1 = plausible)."""

    count_stable: float  # the number of subjects is the number of references, in every frame
    no_duplicates: float  # no reference appears twice
    no_teleport: float  # no track jumps further than its own height allows between frames
    no_morphing: float  # each track keeps one identity over time

    @property
    def natural(self) -> float:
        return float(np.mean([self.count_stable, self.no_duplicates, self.no_teleport, self.no_morphing]))

    def as_dict(self) -> dict:
        return {**asdict(self), "natural": self.natural}


def count_stability(per_frame_counts: list[int], expected: int) -> float:
    """Mean over frames of 1 - |count - expected| / expected (clipped at 0)."""
    if expected <= 0 or not per_frame_counts:
        return 0.0
    c = np.asarray(per_frame_counts, float)
    return float(np.clip(1 - np.abs(c - expected) / expected, 0, 1).mean())


def duplicate_free(track_ref: np.ndarray, match: list[int], threshold: float = 0.6) -> float:
    """1 - fraction of unmatched tracks that look like some reference (a second copy of it)."""
    n = track_ref.shape[1]
    extra = [j for j in range(n) if j not in match]
    if not extra:
        return 1.0
    dup = sum(float(track_ref[:, j].max()) > threshold for j in extra)
    return float(1 - dup / max(n, 1))


def teleport_free(track_boxes: list[np.ndarray], max_jump: float = 0.6) -> float:
    """Fraction of tracks whose centre never moves more than `max_jump` x its height per frame."""
    if not track_boxes:
        return 0.0
    ok = 0
    for b in track_boxes:
        c = np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], 1)
        h = np.nanmedian(b[:, 3] - b[:, 1])
        valid = ~np.isnan(c[:, 0])
        idx = np.where(valid)[0]
        jumps = [np.linalg.norm(c[j] - c[i]) / (j - i) for i, j in zip(idx[:-1], idx[1:])]
        ok += not jumps or max(jumps) <= max_jump * max(h, 1.0)
    return ok / len(track_boxes)


def morph_free(track_frame_embs: list[np.ndarray], threshold: float = 0.5) -> float:
    """Fraction of tracks whose first-third and last-third mean embeddings agree (cos >= threshold).

    track_frame_embs: one (n_i, D) array of L2-normalised per-frame embeddings per track.
    """
    if not track_frame_embs:
        return 0.0
    ok = 0
    for e in track_frame_embs:
        if len(e) < 3:
            ok += 1
            continue
        third = max(len(e) // 3, 1)
        a, b = e[:third].mean(0), e[-third:].mean(0)
        cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-8))
        ok += cos >= threshold
    return ok / len(track_frame_embs)


def copy_paste_score(frames: np.ndarray, ref: np.ndarray, ref_mask: np.ndarray) -> float:
    """How much a reference appears pasted unchanged: template match at the reference's own
    scale and pose (masked NCC, median over frames) times the stillness of the matched window.

    frames (T, H, W, 3) uint8, ref (R, R, 3) uint8, ref_mask (R, R) bool (the subject's pixels).
    A generated subject differs from its reference in scale, pose and light, and moves; a paste
    matches exactly and stays still.
    """
    import cv2

    ys, xs = np.where(ref_mask)
    if len(ys) == 0:
        return 0.0
    tpl = ref[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    m = ref_mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.uint8)
    th, tw = tpl.shape[:2]
    t, h, w = frames.shape[:3]
    if th > h or tw > w:
        return 0.0
    scores, locs = [], []
    for f in frames:
        r = cv2.matchTemplate(f.astype(np.float32), tpl.astype(np.float32), cv2.TM_CCOEFF_NORMED,
                              mask=np.repeat(m[..., None], 3, -1).astype(np.float32))
        r = np.nan_to_num(r, nan=0.0, posinf=0.0, neginf=0.0)
        _, mx, _, loc = cv2.minMaxLoc(r)
        scores.append(mx)
        locs.append(loc)
    ncc = float(np.clip(np.median(scores), 0, 1))
    # stillness: the best window's pixels barely change between frames
    x, y = locs[int(np.argmax(scores))]
    win = frames[:, y:y + th, x:x + tw].astype(np.float32)
    diff = np.abs(np.diff(win, axis=0)).mean(-1)[:, m.astype(bool)].mean() if t > 1 else 0.0
    still = float(np.clip(1 - diff / 12.0, 0, 1))
    return ncc * still


@dataclass
class TotalWeights:
    """Weights of `total`, mapped from OpenS2V's Total (Aes .16, MS .06, MA .02, FaceSim .20,
    GME .12, Nexus .20, Natural .24): quality <- Aes, motion <- MS + MA, face_sim_mean <- FaceSim,
    subject_sim <- GME, prompt adherence (action_acc, and 1 - leakage) <- Nexus, natural <- Natural.
    Without a prompt the action weight moves to 1 - leakage."""

    quality: float = 0.16
    motion: float = 0.08
    face_sim_mean: float = 0.20
    subject_sim: float = 0.12
    action_acc: float = 0.10
    no_leakage: float = 0.10
    natural: float = 0.24

    def total(self, m: dict) -> float:
        w = asdict(self)
        parts = {"quality": m["quality"], "motion": m["motion"], "face_sim_mean": m["face_sim_mean"],
                 "subject_sim": m["subject_sim"], "no_leakage": 1 - m["leakage"], "natural": m["natural"]}
        if m.get("action_acc") is None:
            w["no_leakage"] += w.pop("action_acc")
        else:
            parts["action_acc"] = m["action_acc"]
        return float(sum(w[k] * float(np.clip(v, 0, 1)) for k, v in parts.items()) / sum(w.values()))


def roc_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC-AUC of scores (positives should score higher), ties counted half (Mann-Whitney)."""
    from scipy.stats import rankdata

    scores = np.concatenate([pos, neg])
    ranks = rankdata(scores)
    n_pos, n_neg = len(pos), len(neg)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
