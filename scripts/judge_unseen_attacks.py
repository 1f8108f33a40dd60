"""Probe judge v2 with attacks it was never tuned on (not in `judge/attacks.py`), at any seed.

    .venv/bin/python scripts/judge_unseen_attacks.py --seed 5151 --casts 12 [--judge audit] [--only pixelate16,gray]

Prints each kind's mean and max total over the held-out casts beside ground truth, the mean of
every channel, and the casts where a kind scored at or above that cast's ground truth. None of
these kinds contradicts who does what, so the issue's per-cast order does not apply to all of
them; `stutter` (every other frame repeated) and `posterize` (4 levels per channel) keep the
content and are quality losses, not contradictions.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
import torch.nn.functional as F

CHANNELS = ("face_sim_mean", "subject_sim", "binding", "motion", "quality", "natural", "copy_paste", "leakage")


def _resample(frames: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(T, H, W, 3) uint8 -> area-downsampled to size x size, upsampled back with `mode`."""
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    up = F.interpolate(F.interpolate(x, size=(size, size), mode="area"), size=x.shape[-2:], mode=mode)
    return up.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy()


def unseen_attacks(frames: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """{kind: (T, H, W, 3) uint8} built from one ground-truth clip."""
    f = frames
    h, w = f.shape[1:3]
    stutter = f.copy()
    stutter[1::2] = f[0:-1:2][: len(stutter[1::2])]
    half = f.copy()
    half[:, :, w // 2:] = f[0, :, w // 2:]
    zoom = f[:, h // 4: h - h // 4, w // 4: w - w // 4]
    return {
        "pixelate16": _resample(f, 16, "nearest"), "lowres16": _resample(f, 16, "bilinear"),
        "lowres24": _resample(f, 24, "bilinear"),
        "gray": np.repeat(f.mean(-1, keepdims=True), 3, -1).round().astype(np.uint8),
        "invert": 255 - f, "bgr": f[..., ::-1].copy(), "posterize": ((f // 64) * 64 + 32).astype(np.uint8),
        "noise30": np.clip(f + rng.normal(0, 30, f.shape), 0, 255).astype(np.uint8),
        "zoom2x": np.repeat(np.repeat(zoom, 2, 1), 2, 2), "stutter": stutter, "half_frozen": half,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=5151)
    ap.add_argument("--casts", type=int, default=12)
    ap.add_argument("--judge", default="main", choices=("main", "audit"))
    ap.add_argument("--only", default="", help="comma-separated kinds (default: all)")
    args = ap.parse_args()
    from idcrafter.judge.adversarial import adversarial_cases
    from idcrafter.judge.judge import Judge

    judge = Judge.load(kind=args.judge)
    keep = set(args.only.split(",")) if args.only else None
    rows: dict[str, list[list[float]]] = {}
    order = []
    for i, ex in enumerate(adversarial_cases(args.casts, args.seed)):
        refs = list(ex.refs)
        gt = judge.score(ex.clip.frames, refs, ex.caption, threads=1).metrics
        rows.setdefault("ground_truth", []).append([gt["total"]] + [gt.get(c) or 0.0 for c in CHANNELS])
        for kind, video in unseen_attacks(ex.clip.frames, np.random.default_rng([args.seed, i])).items():
            if keep and kind not in keep:
                continue
            m = judge.score(video, refs, ex.caption, threads=1).metrics
            rows.setdefault(kind, []).append([m["total"]] + [m.get(c) or 0.0 for c in CHANNELS])
            if m["total"] >= gt["total"]:
                order.append(f"cast {i}: {kind} {m['total']:.3f} >= {gt['total']:.3f}")
    print("| video | total | max total | " + " | ".join(CHANNELS) + " |")
    print("|---|---|---|" + "---|" * len(CHANNELS))
    for kind, r in rows.items():
        a = np.asarray(r)
        print(f"| {kind} | {a[:, 0].mean():.3f} | {a[:, 0].max():.3f} | "
              + " | ".join(f"{x:.2f}" for x in a[:, 1:].mean(0)) + " |")
    print("casts at or above their ground truth: " + ("; ".join(order) if order else "none"))


if __name__ == "__main__":
    main()
