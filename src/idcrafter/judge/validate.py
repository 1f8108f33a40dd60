"""Validation of the judge on held-out identities: does it measure what it claims to?

Besides each part's own figures (detector recall, verification AUC), it scores whole clips
end to end, exactly as generated clips will be scored:
- ground-truth clips against their own references (clean and degraded): face_sim must be high,
  leakage low, actions recognised;
- *leaky* clips, where one subject's appearance is blended with or swapped for another's while
  the references stay the originals: leakage must rise well above ground truth;
- *pasted* clips, where references are pasted unchanged and static: copy_paste must separate
  them from ground truth.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from idcrafter.judge.metrics import roc_auc
from idcrafter.world.dataset import make_example
from idcrafter.world.degrade import degrade
from idcrafter.world.identity import FACE_ATTRIBUTES, Identity, sample_identities
from idcrafter.world.scene import (
    BACKGROUNDS, WorldConfig, render_background, render_clip, render_reference, sample_clip, subject_mask,
)


def leaky_identities(a: Identity, b: Identity, mode: str) -> tuple[Identity, Identity]:
    """Identities to *render* when the references are (a, b).

    blend: a takes b's hair (style and colour) and shirt colour, b is unchanged.
    swap: a and b exchange their faces (head, skin, hair, eyes, accessory), keeping their clothes.
    """
    if mode == "blend":
        return a.replace(hair_style=b.hair_style, hair_colour=b.hair_colour, shirt=b.shirt), b
    if mode == "swap":
        fa = {n: getattr(b, n) for n in FACE_ATTRIBUTES}
        fb = {n: getattr(a, n) for n in FACE_ATTRIBUTES}
        return a.replace(**fa), b.replace(**fb)
    raise ValueError(mode)


def leaky_example(seed: int, i: int, mode: str, config: WorldConfig):
    """(frames, refs, caption) of a 2-subject clip whose first subject leaks the second's looks."""
    rng = np.random.default_rng([seed, i, 7])
    a, b = sample_identities(rng, 2, "heldout")
    ra, rb = leaky_identities(a, b, mode)
    spec = sample_clip(rng, config, 2, "heldout", identities=[ra, rb])
    clip = render_clip(spec, rng)
    refs = [render_reference(a, config.ref_size), render_reference(b, config.ref_size)]
    return clip.frames, refs, None


def pasted_example(seed: int, i: int, config: WorldConfig):
    """A static clip made of references pasted unchanged (with or without their canvas)."""
    rng = np.random.default_rng([seed, i, 11])
    k = int(rng.integers(1, 4))
    ids = sample_identities(rng, k, "heldout")
    refs = [render_reference(x, config.ref_size) for x in ids]
    bg = render_background(str(rng.choice(BACKGROUNDS)), config.height, config.width, rng)
    frame = (bg * 255).astype(np.uint8)
    with_canvas = rng.random() < 0.5
    r = config.ref_size
    for ref in refs:
        y, x = int(rng.integers(0, config.height - r + 1)), int(rng.integers(0, config.width - r + 1))
        mask = np.ones((r, r), bool) if with_canvas else subject_mask(ref)
        frame[y:y + r, x:x + r][mask] = ref[mask]
    return np.repeat(frame[None], config.frames, 0), refs


def _score_many(judge, items, desc: str, progress: bool) -> list[dict]:
    out = []
    for frames, refs, caption in tqdm(items, desc=desc, disable=not progress):
        out.append(judge.score(frames, refs, caption, threads=1).metrics)
    return out


def validate_judge(judge, num_clips: int = 120, seed: int = 1234, progress: bool = True,
                   parts: bool = True) -> dict:
    """All validation figures of the judge (see the module docstring); deterministic for seed."""
    cfg = WorldConfig()
    rng = np.random.default_rng(seed)
    gt = [make_example(seed, i, "heldout", cfg) for i in range(num_clips)]
    clean = _score_many(judge, [(e.clip.frames, list(e.refs), e.caption) for e in gt], "gt clips", progress)
    degraded = _score_many(judge, [(degrade(e.clip.frames, rng, 1.0), list(e.refs), e.caption) for e in gt],
                           "degraded gt", progress)
    n_leak = max(num_clips // 2, 10)
    leaky = {m: _score_many(judge, [leaky_example(seed, i, m, cfg) for i in range(n_leak)], f"{m} clips", progress)
             for m in ("blend", "swap")}
    gt2 = [make_example(seed + 1, i, "heldout", cfg, num_subjects=2) for i in range(n_leak)]
    gt2_scores = _score_many(judge, [(e.clip.frames, list(e.refs), None) for e in gt2], "gt 2-subject", progress)
    pasted = [pasted_example(seed, i, cfg) for i in range(n_leak)]
    pasted_scores = _score_many(judge, [(f, r, None) for f, r in pasted], "pasted clips", progress)

    def mean(rows, key):
        return float(np.mean([r[key] for r in rows]))

    gt_leak = mean(gt2_scores, "leakage")
    leak_swap = float(np.mean([r["leakage"] for m in leaky.values() for r in m]))
    fig = {
        "gt_face_sim_mean": mean(clean, "face_sim_mean"), "gt_face_sim_min": mean(clean, "face_sim_min"),
        "gt_face_sim_mean_degraded": mean(degraded, "face_sim_mean"),
        "gt_subject_sim": mean(clean, "subject_sim"),
        "gt_leakage": mean(clean, "leakage"), "gt_leakage_degraded": mean(degraded, "leakage"),
        "gt_leakage_2subj": gt_leak,
        "blend_leakage": mean(leaky["blend"], "leakage"), "swap_leakage": mean(leaky["swap"], "leakage"),
        "swap_leakage_ratio": leak_swap / max(gt_leak, 1e-3),
        "action_acc": mean(clean, "action_acc"), "action_acc_degraded": mean(degraded, "action_acc"),
        "gt_natural": mean(clean, "natural"), "gt_quality": mean(clean, "quality"),
        "degraded_quality": mean(degraded, "quality"), "gt_total": mean(clean, "total"),
        "gt_copy_paste": mean(clean, "copy_paste"), "pasted_copy_paste": mean(pasted_scores, "copy_paste"),
        "copy_paste_auc": roc_auc(np.array([r["copy_paste"] for r in pasted_scores]),
                                  np.array([r["copy_paste"] for r in clean])),
        "num_clips": num_clips, "seed": seed,
    }
    if parts:  # each part's own figures; on a name clash the end-to-end figure above wins
        from idcrafter.judge.evaluation import evaluate_detector, evaluate_embedders

        det = evaluate_detector(judge.detector, seed=seed)
        emb = evaluate_embedders(judge.face, judge.subject, seed=seed)
        for k, v in {**det, **emb}.items():
            if isinstance(v, (int, float)):
                fig[k if k not in fig else f"part_{k}"] = v
    return fig


TARGETS = {
    "id_auc": (">=", 0.99), "det_recall": (">=", 0.95), "gt_face_sim_mean": (">=", 0.85),
    "gt_leakage": ("<=", 0.2), "swap_leakage_ratio": (">=", 3.0), "action_acc": (">=", 0.9),
    "copy_paste_auc": (">=", 0.95),
}


def check_targets(fig: dict) -> dict[str, bool]:
    out = {}
    for key, (op, val) in TARGETS.items():
        if key in fig:
            out[key] = fig[key] >= val if op == ">=" else fig[key] <= val
    return out
