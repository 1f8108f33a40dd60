"""Sampling settings of one generator, judged: schedule shift x guidance x steps.

Before training longer, check the generator is not held back by how it is sampled: the same
held-out casts (those of `scripts/latent_gate.py`: 2-4 subjects, seed 1234) and the same initial
noise for every setting, judge v2 and the audit judge's attribute accuracy per setting.

    .venv/bin/python scripts/sampling_sweep.py --model runs/latent/checkpoints/step_00005000/pipeline \\
        --shift 1,3,6 --guidance 2.5,5 --steps 20 --n 12

The schedule's shift is the pipeline's `FlowMatchEulerDiscreteScheduler(shift=...)` (3 for every
shipped pipeline, as Wan samples); a setting is given as shift:guidance:steps in the table.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


def floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="a pipeline folder")
    ap.add_argument("--shift", default="3")
    ap.add_argument("--guidance", default="2.5")
    ap.add_argument("--steps", default="20")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--subjects", default="2,3,4")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if not (args.model / "model_index.json").is_file():
        print(f"error: {args.model} is not a pipeline folder (no model_index.json)", file=sys.stderr)
        raise SystemExit(2)

    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler

    from idcrafter.devices import load_pipeline
    from idcrafter.generation import GenerationSettings, generate
    from idcrafter.heldout import HeldoutConfig, heldout_generation_cases
    from idcrafter.judge.audit import AuditJudge
    from idcrafter.judge.judge import Judge
    from idcrafter.utils.io import atomic_write_json
    from latent_gate import COLUMNS, TARGETS, score_clips

    torch.set_num_threads(1)
    pipe = load_pipeline(args.model)
    held = HeldoutConfig(n=args.n, seed=args.seed, subjects=tuple(int(k) for k in args.subjects.split(",")))
    cases = heldout_generation_cases(pipe, held)
    judge, audit = Judge.load(), AuditJudge.load()
    table = {}
    for shift, guidance, steps in itertools.product(floats(args.shift), floats(args.guidance), floats(args.steps)):
        pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
        clips = generate(pipe, cases, GenerationSettings(steps=int(steps), guidance=guidance))
        key = f"{shift:g}:{guidance:g}:{int(steps)}"
        table[key] = score_clips(clips, cases, judge, audit)
        print(f"shift {shift:g}, guidance {guidance:g}, {int(steps)} steps: total {table[key]['total']:.3f}", flush=True)
    table["ground truth"] = score_clips([c.ground_truth for c in cases], cases, judge, audit)
    cols = [c for c in COLUMNS if c in next(iter(table.values()))]
    print(f"\n{args.model}: {args.n} held-out casts of {args.subjects} subjects (seed {args.seed}); "
          "setting = shift:guidance:steps")
    print("| setting | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + " |")
    print("| targets | " + " | ".join(f"{TARGETS[c][0]} {TARGETS[c][1]}" if c in TARGETS else "" for c in cols) + " |")
    if args.json:
        atomic_write_json(args.json, {"model": str(args.model), "rows": table}, indent=2)


if __name__ == "__main__":
    main()
