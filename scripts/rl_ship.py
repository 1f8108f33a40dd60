"""Ship one arm of the SpriteWorld RL experiment as a pipeline folder with a card.

    .venv/bin/python scripts/rl_ship.py --arm mean_face --run runs/rl-mean-face --exp runs/rl-exp \\
        --out assets/checkpoints/sprites-grpo [--why "..."]

Copies `<run>/pipeline` (the run's EMA export, LoRA merged; safetensors) next to `--out` and swaps it
in atomically (`utils.io.replace_dir`), then writes `README.md`: the training command rebuilt from
the run's `config.json`, seed, iterations, logged wall and CPU time, the held-out figures of the arm
beside SFT and the ground truth from `<exp>/eval/*.json` (both judges, with the paired difference to
SFT and its standard error) and the versions (hashes) of the judges that measured them.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "scripts"))


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def command_of(config: dict, run: Path) -> str:
    """The `idcrafter train` command of a run, from its resolved config (the overrides that matter)."""
    trainer = next((k for k in ("dpo", "nft", "grpo") if k in config), "grpo")  # its own config section
    ro, tr, rw = config["rollout"], config["train"], config["reward"]
    sets = [f"train.steps={tr['steps']}", f"train.seed={tr['seed']}", "train.threads=1",
            f"rollout.groups={ro['groups']}", f"rollout.group_size={ro['group_size']}",
            f"rollout.batch_size={ro['batch_size']}", f"rollout.sde_type={ro['sde_type']}",
            f"'reward.options={json.dumps(rw['options'])}'", f"monitor.every={config['monitor']['every']}"]
    return f"idcrafter train {trainer} --recipe {config.get('recipe', 'sprites')} --run-dir {run} " + " ".join(sets)


def figures(exp: Path, arm: str) -> list[str]:
    from rl_experiment import SCORERS, paired

    evals = {a: json.loads((exp / "eval" / f"{a}.json").read_text()) for a in (arm, "sft", "ground_truth")}
    lines = []
    for scorer, (label, keys) in SCORERS.items():
        if scorer not in evals[arm]:
            continue
        n = len(evals[arm][scorer]["cases"])
        lines += [f"`{scorer}` ({label}, version {evals[arm][scorer]['version']}), mean over {n} held-out casts:", "",
                  "| | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        for a, name in ((arm, "this model"), ("sft", "sprites-sft (start)"), ("ground_truth", "ground truth")):
            lines.append(f"| {name} | " + " | ".join(f"{evals[a][scorer]['mean'][k]:.3f}" for k in keys) + " |")
        cells = []
        for k in keys:
            m, se, _ = paired(evals[arm], evals["sft"], scorer, k)
            cells.append("n/a" if math.isnan(m) else f"{m:+.3f} ± {se:.3f}")
        lines += [f"| paired difference to SFT | " + " | ".join(cells) + " |", ""]
    return lines


def main() -> None:
    from idcrafter.train.logger import read_metrics
    from idcrafter.utils.io import atomic_write_text, replace_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arm", required=True)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--exp", type=Path, default=Path("runs/rl-exp"))
    ap.add_argument("--out", type=Path, default=Path("assets/checkpoints/sprites-grpo"))
    ap.add_argument("--why", default="", help="a sentence on why this arm was chosen (goes in the card)")
    args = ap.parse_args()
    pipe = args.run / "pipeline"
    if not (pipe / "model_index.json").is_file():
        fail(f"{pipe} holds no exported pipeline (model_index.json): finish the run with checkpoint.export_final")
    if not (args.exp / "eval" / f"{args.arm}.json").is_file():
        fail(f"{args.exp}/eval/{args.arm}.json is missing: evaluate the arm with scripts/rl_experiment.py first")
    config = json.loads((args.run / "config.json").read_text())
    rows = [r for r in read_metrics(args.run / "metrics.jsonl") if "reward" in r]
    wall = sum(float(r.get("step_time", 0.0)) for r in rows)
    cpu = sum(float(r.get("cpu_s", 0.0)) for r in rows)
    last = max(int(r["step"]) for r in rows)
    card = [f"# {args.out.name}", "",
            f"The SpriteWorld generator after online RL post-training: arm `{args.arm}` of the SpriteWorld RL "
            "experiment (docs/rl.md), started from `assets/checkpoints/sprites-sft` (the pixel-space model: the "
            "latent generator the issue starts from does not exist yet). EMA weights with the LoRA merged, "
            "`IDCrafterPipeline.from_pretrained` format.", ""]
    if args.why:
        card += [args.why, ""]
    card += ["## Training", "",
             f"- Command: `{command_of(config, args.run)}` (the `sprites` recipe otherwise: LoRA r{config['train']['lora_rank']}, "
             f"lr {config['optim']['lr']}, EMA {config['train']['ema_decay']}, {config['rollout']['steps']} rollout steps, "
             f"guidance {config['rollout']['guidance']} in rollouts)",
             f"- Reward: `{config['reward']['name']}` {json.dumps(config['reward']['options'])}",
             f"- Seed {config['train']['seed']}; {last} iterations of {config['rollout']['groups']} x "
             f"{config['rollout']['group_size']} samples ({last * config['rollout']['groups'] * config['rollout']['group_size']} samples)",
             f"- Time: {wall / 60:.1f} min of logged iteration wall time, {cpu / 60:.1f} CPU-min, one thread on a "
             "shared 2-core machine", "",
             "## Held-out figures", "",
             "Held-out casts of `idcrafter eval heldout` (seed 1234, casts of 2 and 3), 20 Euler steps, guidance 2.5, "
             "sample seeds 0..; the ground truth's row is each judge's ceiling. Command: `scripts/rl_experiment.py "
             f"--generator assets/checkpoints/sprites-sft --out {args.exp} --arms sft,{args.arm} --run {args.arm}={args.run} "
             f"--iterations {last} --eval-n 32 --no-train`.", "", *figures(args.exp, args.arm)]
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=f".{args.out.name}-") as tmp:
        staged = Path(tmp) / args.out.name
        shutil.copytree(pipe, staged)
        atomic_write_text(staged / "README.md", "\n".join(card) + "\n")
        replace_dir(staged, args.out)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print("\n".join(card))
    print(f"\nwrote {args.out} ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
