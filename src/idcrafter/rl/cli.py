"""`idcrafter train grpo|nft|dpo|reward-model ...`: the RL commands, added to `idcrafter train`.

    idcrafter train grpo --recipe debug [--run-dir runs/grpo-debug] [--resume | --overwrite] [key=value ...]
    idcrafter train nft --recipe sprites train.steps=50
    idcrafter train dpo --recipe debug
    idcrafter train reward-model --recipe debug

Overrides are dotted config keys (`grpo.beta=0.01`, `rollout.group_size=4`, `reward.name=composite`);
the resolved config is written to `<run-dir>/config.json`. With `--resume` the run folder's own
config is the base and the command's overrides apply on top.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable, List, Optional

import typer

TRAINERS: dict[str, tuple[str, str, str]] = {
    # command: (recipe table, config class path, runner path)
    "grpo": ("grpo", "idcrafter.rl.config:GRPORunConfig", "idcrafter.rl.grpo:run_grpo"),
    "nft": ("nft", "idcrafter.rl.config:NFTRunConfig", "idcrafter.rl.nft:run_nft"),
    "dpo": ("dpo", "idcrafter.rl.dpo:DPORunConfig", "idcrafter.rl.dpo:run_dpo"),
    "reward-model": ("reward-model", "idcrafter.rl.reward_training:RewardModelRunConfig",
                     "idcrafter.rl.reward_training:run_reward_model"),
}


def _load(path: str):
    import importlib

    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def resolve_rl_config(command: str, recipe_name: str, run_dir: Path, resume: bool, overrides: list[str]):
    """The config a run uses: the recipe (or the run's saved config on --resume) + overrides."""
    from idcrafter.config import apply_overrides, diff_configs, load_config
    from idcrafter.rl.recipes import rl_recipe

    table, cls_path, _ = TRAINERS[command]
    saved = run_dir / "config.json"
    base = load_config(_load(cls_path), saved) if resume and saved.is_file() else rl_recipe(table, recipe_name)
    cfg = apply_overrides(base, overrides)
    if resume and saved.is_file():
        changed = diff_configs(base, cfg)
        if changed:
            typer.echo(f"note: overriding the saved config: {', '.join(changed)}", err=True)
    return cfg.validate()


def _command(command: str) -> Callable:
    def run(
        overrides: Optional[List[str]] = typer.Argument(None, help="config overrides, key=value (e.g. optim.lr=1e-4)"),
        recipe: str = typer.Option("debug", help="recipe name (idcrafter.rl.recipes)"),
        run_dir: Optional[Path] = typer.Option(None, help=f"run folder (default runs/{command}-<recipe>)"),
        resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint of --run-dir"),
        overwrite: bool = typer.Option(False, "--overwrite", help="delete the run in --run-dir and start a new one"),
        print_config: bool = typer.Option(False, "--print-config", help="print the resolved config and exit"),
    ) -> None:
        from idcrafter.config import config_to_dict

        run_dir = run_dir or Path("runs") / f"{command}-{recipe}"
        cfg = resolve_rl_config(command, recipe, run_dir, resume, list(overrides or []))
        if print_config:
            typer.echo(json.dumps(config_to_dict(cfg), indent=2))
            return
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        last = _load(TRAINERS[command][2])(cfg, run_dir, resume=resume, overwrite=overwrite)
        typer.echo(json.dumps({k: v for k, v in last.items() if isinstance(v, (int, float))}))
        typer.echo(f"run folder: {run_dir}")

    run.__doc__ = {
        "grpo": "Flow-GRPO post-training (SDE/CPS rollouts, group advantages, clipped ratio, KL to the reference).",
        "nft": "DiffusionNFT post-training (forward-process RL on clean samples, EMA old policy).",
        "dpo": "Diffusion-DPO on static preference pairs (the offline baseline).",
        "reward-model": "Train the learned reward model (Bradley-Terry with ties) on preference pairs.",
    }[command]
    return run


def register(train_app: typer.Typer) -> None:
    """Add the RL commands to `idcrafter train`."""
    for command in TRAINERS:
        train_app.command(command)(_command(command))
