"""Does the judge follow real progress? Checkpoints of one generator run, judged on held-out casts.

Each checkpoint (a pipeline folder, oldest first) generates the held-out casts of
`idcrafter eval heldout` (the same cases, seeds and sampler settings: `heldout.heldout_cases`,
`heldout.example_case`, `generation.generate`), the clips are cached as one `.npz` per
checkpoint under `--cache` (generation is the slow part; re-scoring with a changed judge is not),
and the judge scores them against their references and captions. Printed: per checkpoint the
mean of the judge's channels, and the Spearman correlation of the mean total with the training
order (1 = the judge ranks the checkpoints in training order), beside the ground truth.

    .venv/bin/python scripts/judge_checkpoints.py \\
        --checkpoint runs/pixel-250/pipeline:250 \\
        --checkpoint runs/adv-work/ckpt/assets/checkpoints/sprites-sft:9500 \\
        --checkpoint assets/checkpoints/sprites-sft:20500 --cache runs/adv-work/clips

(`runs/pixel-250` is a copy of `runs/pixel-baseline`'s step 250, which that run's pruning removes.)
`PATH:STEP` names a checkpoint by its training step (the order is checked against the steps).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

METRICS = ("total", "face_sim_mean", "subject_sim", "binding", "motion", "quality", "natural", "copy_paste",
           "leakage")


def _parse(spec: str) -> tuple[Path, int]:
    path, _, step = spec.rpartition(":")
    if not path or not step.isdigit():
        raise SystemExit(f"--checkpoint wants PATH:STEP (the step it was trained to), got {spec!r}")
    return Path(path), int(step)


def _generate(folder: Path, cache: Path, n: int, seed: int, steps: int, cfg: float) -> tuple[list, list]:
    """(clips, cases) of one checkpoint, generated once and cached (keyed by the settings)."""
    from idcrafter.heldout import HeldoutConfig, generate_cached

    return generate_cached(folder, HeldoutConfig(n=n, seed=seed, steps=steps, guidance=cfg), cache)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", required=True, help="PATH:STEP, oldest first (repeat)")
    ap.add_argument("--cache", type=Path, required=True, help="folder for the generated clips (.npz)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=2.5)
    ap.add_argument("--judge", default="main", help="main or audit")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    import torch
    from scipy.stats import spearmanr

    from idcrafter.judge.judge import Judge
    from idcrafter.utils.io import atomic_write_json

    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    ckpts = [_parse(s) for s in args.checkpoint]
    if [s for _, s in ckpts] != sorted(s for _, s in ckpts):
        raise SystemExit("give the checkpoints oldest first (their steps in increasing order)")
    generated = [_generate(p, args.cache, args.n, args.seed, args.steps, args.cfg) for p, _ in ckpts]
    if args.generate_only:
        return
    judge = Judge.load(kind=args.judge)
    rows = {}
    for (path, step), (clips, cases) in zip(ckpts, generated):
        scores = [judge.score(c, list(case.references), case.prompt, threads=1).metrics for c, case in zip(clips, cases)]
        rows[f"step {step} ({path})"] = {m: float(np.mean([s[m] for s in scores])) for m in METRICS}
    cases = generated[-1][1]
    truth = [judge.score(c.ground_truth, list(c.references), c.prompt, threads=1).metrics for c in cases]
    rows["ground truth"] = {m: float(np.mean([s[m] for s in truth])) for m in METRICS}
    totals = [rows[k]["total"] for k in list(rows)[:-1]]
    rho = float(spearmanr(np.arange(len(totals)), totals)[0]) if len(totals) > 1 else float("nan")
    print(f"judge {args.judge}; {args.n} held-out casts (seed {args.seed}), {args.steps} steps, guidance {args.cfg}")
    print("| checkpoint | " + " | ".join(METRICS) + " |")
    print("|---|" + "---|" * len(METRICS))
    for name, r in rows.items():
        print(f"| {name} | " + " | ".join(f"{r[m]:.3f}" for m in METRICS) + " |")
    print(f"Spearman(total, training order) = {rho:.2f}; in order: {all(np.diff(totals) > 0)}")
    if args.json:
        atomic_write_json(args.json, {"rows": rows, "spearman": rho, "settings": vars(args) | {
            "cache": str(args.cache), "json": str(args.json)}}, indent=2)


if __name__ == "__main__":
    main()
