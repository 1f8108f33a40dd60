"""Gate 2 of the latent-DiT issue: learning speed, latent codec against the pixel codec.

For each run (a `idcrafter train sft` folder) and each milestone step whose checkpoint was kept
(`checkpoint.keep_every`), the checkpoint's pipeline (EMA weights) generates the held-out casts
of `idcrafter eval heldout` (casts of 2-4 subjects here, as the issue's targets are stated), judge
v2 and the audit judge score them, and the run's own `metrics.jsonl` gives the reference gap at
that step and the training seconds spent to reach it. Printed: one markdown table, each run's
ground truth beside it (the two codecs render references at their own sizes, so each has its
own ceiling row), and the issue's targets as the last row.

    .venv/bin/python scripts/latent_gate.py --run pixel=runs/pixel-baseline --run latent=runs/latent \\
        --steps 1000,2000,5000 --n 12 --cache runs/gate2/clips --json runs/gate2/gate2.json

Training seconds are the sum of each logged window's `step_time` (wall time per step while the
run shared the machine with other jobs): compare runs that trained side by side, or use
`scripts/sft_speed.py` for the codecs' step times measured interleaved on a quiet machine.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

#: the issue's targets: metric -> (direction, threshold)
TARGETS = {"face_sim_mean": (">=", 0.6), "face_sim_min": (">=", 0.4), "leakage": ("<=", 0.15),
           "action_acc": (">=", 0.35), "quality": (">=", 0.8), "count_ok": (">=", 0.75),
           "attr_acc_mean": (">=", 0.7)}
COLUMNS = ("ref_gap_rel", "x0_err_subj", "train_s", "face_sim_mean", "face_sim_min", "leakage", "action_acc",
           "quality", "natural", "count_ok", "attr_acc_mean", "total")


def score_clips(clips, cases, judge, audit) -> dict[str, float]:
    """Means over the cases: judge v2's metrics, the share of clips with the right number of
    subjects, and the audit judge's attribute accuracy."""
    rows = []
    for clip, case in zip(clips, cases):
        rep = judge.score(clip, list(case.references), case.prompt, threads=1)
        aud = audit.score(clip, list(case.references), case.prompt, threads=1).metrics
        rows.append({**rep.metrics, "count_ok": float(rep.plausibility["num_tracks"] == len(case.references)),
                     "attr_acc_mean": aud["attr_acc_mean"]})
    keys = [c for c in COLUMNS if c in rows[0]]
    return {k: float(np.mean([r[k] for r in rows if r.get(k) is not None])) for k in keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", required=True, help="NAME=RUN_DIR (repeat)")
    ap.add_argument("--steps", default="1000,2000,5000")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--subjects", default="2,3,4")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=2.5)
    ap.add_argument("--cache", type=Path, required=True, help="folder for the generated clips (.npz)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    from idcrafter.heldout import HeldoutConfig, generate_cached
    from idcrafter.judge.audit import AuditJudge
    from idcrafter.judge.judge import Judge
    from idcrafter.train.export import training_record
    from idcrafter.utils.io import atomic_write_json

    torch.set_num_threads(1)
    held = HeldoutConfig(n=args.n, seed=args.seed, subjects=tuple(int(k) for k in args.subjects.split(",")),
                         steps=args.sample_steps, guidance=args.guidance)
    judge, audit = Judge.load(), AuditJudge.load()
    steps = [int(s) for s in args.steps.split(",")]
    table: dict[str, dict] = {}
    for spec in args.run:
        name, _, folder = spec.partition("=")
        run = Path(folder)
        cases = None
        for step in steps:
            pipe_dir = run / "checkpoints" / f"step_{step:08d}" / "pipeline"
            if not pipe_dir.is_dir():
                print(f"{name}: no kept checkpoint at step {step} ({pipe_dir})")
                continue
            clips, cases = generate_cached(pipe_dir, held, args.cache)
            rec = training_record(run, step)  # the card's reading of metrics.jsonl: seconds and last evaluation
            gap = rec["reference_gap"] if rec["eval_step"] == step else {}
            row = {"ref_gap_rel": gap.get("ema/ref_gap_rel_subject/t0.6"), "x0_err_subj": gap.get("ema/x0_err_subject/t0.6"),
                   "train_s": rec["train_seconds"], **score_clips(clips, cases, judge, audit)}
            table[f"{name} {step}"] = row
        if cases is not None:
            table[f"{name} ground truth"] = score_clips([c.ground_truth for c in cases], cases, judge, audit)
    sizes = "-".join(str(k) for k in held.subjects)
    print(f"\n{args.n} held-out casts of {sizes} subjects (seed {args.seed}), {args.sample_steps} Euler steps, "
          f"guidance {args.guidance}; judge v2, audit attr_acc_mean; ref_gap_rel and x0_err at t = 0.6 (EMA)")
    print("| run step | " + " | ".join(COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, row in table.items():
        cells = [("" if row.get(c) is None else f"{row[c]:.0f}" if c == "train_s" else f"{row[c]:.3f}")
                 for c in COLUMNS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("| targets | " + " | ".join(f"{TARGETS[c][0]} {TARGETS[c][1]}" if c in TARGETS else "" for c in COLUMNS)
          + " |")
    if args.json:
        atomic_write_json(args.json, {"rows": table, "targets": TARGETS, "settings": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}, indent=2)


if __name__ == "__main__":
    main()
