"""Score pipelines with an RL run's own reward on training casts, sampled as its rollouts are.

    .venv/bin/python scripts/rl_train_casts.py --run runs/rl-latent/grpo \\
        [--pipeline assets/checkpoints/sprites-latent --pipeline runs/rl-latent/grpo/pipeline ...] \\
        [--n 24] [--limit 0] [--sampler cps] [--seed 100] [--data-seed 77]

A GRPO curve logs the reward of 16 fresh rollouts per iteration, two casts at a time, so it
swings by about 0.06 from one iteration to the next; this separates learning from that noise.
Every pipeline (default: the run's starting generator, then its `pipeline/` export) samples the
same `--n` casts of the run's own data stream (`data.split`, K as in training) with the same
noise, at the run's `rollout.steps` and `rollout.guidance`, with `--sampler` ("ode", or the
run's rollout sampler when omitted), and is scored by the run's `reward` (config.json). Printed:
each pipeline's mean of every reward component and its paired difference to the first pipeline
(mean +- standard error over casts); `reward` is the trainer's weighted sum of components. `--limit L` takes casts 0..L-1 of `data.seed` (the casts a
run with `data.limit=L` trained on, with new sample seeds); otherwise casts of `--data-seed`,
which no run with another data seed saw.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

SHOWN = ("reward", "composite", "face", "face_mean", "face_min", "subject", "quality", "natural")


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def casts(pipe, run_cfg: dict, n: int, limit: int, data_seed: int) -> list:
    from idcrafter.world.dataset import make_example
    from idcrafter.world.scene import WorldConfig

    data = run_cfg["data"]
    world = WorldConfig.of_pipeline(pipe.config)
    seed = int(data["seed"]) if limit else data_seed
    return [make_example(seed, i % limit if limit else i, data["split"], world, num_subjects=data["num_subjects"])
            for i in range(n)]


def score(pipeline: Path, run_cfg: dict, args) -> dict[str, list[float]]:
    """{component: per-cast values} of `pipeline` on the casts of `args`."""
    from idcrafter.generation import GenerationSettings, generate
    from idcrafter.heldout import example_case
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.rewards.base import RewardBatch
    from idcrafter.rl.config import RewardConfig
    from idcrafter.rl.rewards import build_reward

    pipe = IDCrafterPipeline.from_pretrained(str(pipeline))
    pipe.set_progress_bar_config(disable=True)
    exs = casts(pipe, run_cfg, args.n, args.limit, args.data_seed)
    cases = [example_case(e, f"c{i}", args.seed + i) for i, e in enumerate(exs)]
    ro = run_cfg["rollout"]
    sampler = args.sampler or ("ode" if ro["sde_type"] == "ode" else ro["sde_type"])
    settings = GenerationSettings(steps=int(ro["steps"]), guidance=float(ro["guidance"]), batch_size=8,
                                  sampler=sampler, noise_level=None if sampler == "ode" else ro["noise_level"])
    clips = generate(pipe, cases, settings)
    reward = build_reward(RewardConfig(**run_cfg["reward"]))
    rows = reward(RewardBatch(list(clips), [list(e.refs) for e in exs], [e.caption for e in exs])).as_rows()
    out = {k: [r.get(k) for r in rows] for k in rows[0]}
    weights = run_cfg["reward"]["weights"]  # the trainer's scalar reward: the weighted sum
    out["reward"] = [None if any(r.get(k) is None for k in weights) else sum(w * r[k] for k, w in weights.items())
                     for r in rows]
    return out


def main() -> None:
    import numpy as np
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="an RL run folder (its config.json)")
    ap.add_argument("--pipeline", type=Path, action="append", default=[])
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--sampler", choices=("ode", "flow", "cps"), default=None)
    ap.add_argument("--seed", type=int, default=100, help="first sample seed")
    ap.add_argument("--data-seed", type=int, default=77)
    args = ap.parse_args()
    if not (args.run / "config.json").is_file():
        fail(f"{args.run} has no config.json: pass an RL run folder with --run")
    run_cfg = json.loads((args.run / "config.json").read_text())
    if "rollout" not in run_cfg or "reward" not in run_cfg:
        fail(f"{args.run} is not a GRPO or NFT run (its config.json has no rollout/reward)")
    pipes = args.pipeline or [Path(run_cfg["model"]["init_pipeline"]), args.run / "pipeline"]
    for p in pipes:
        if not (p / "model_index.json").is_file():
            fail(f"{p} is not a pipeline folder (no model_index.json)")
    if args.n < 2 or args.limit < 0:
        fail("--n must be >= 2 and --limit >= 0")
    torch.set_num_threads(1)
    out = {str(p): score(p, run_cfg, args) for p in pipes}
    base = out[str(pipes[0])]

    def arr(vals):
        return np.array([np.nan if v is None else v for v in vals], float)

    for name, vals in out.items():
        cells = []
        for k in SHOWN:
            if k not in vals:
                continue
            a, b = arr(vals[k]), arr(base[k])
            d = (a - b)[np.isfinite(a - b)]
            diff = "" if name == str(pipes[0]) else f" ({d.mean():+.3f} +- {d.std(ddof=1) / np.sqrt(len(d)):.3f})"
            cells.append(f"{k} {np.nanmean(a):.3f}{diff}")
        print(f"{name}: " + ", ".join(cells))


if __name__ == "__main__":
    main()
