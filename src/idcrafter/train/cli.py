"""`idcrafter train ...`: the training commands (`train_app`, mounted by `idcrafter.cli`).

    idcrafter train sft --recipe sprites [--run-dir runs/sprites] [--resume] [key=value ...]
    idcrafter train export --run-dir runs/sprites --out assets/checkpoints/sprites-sft
    idcrafter train cache-latents --recipe sprites-latent --out runs/latents data.source=folder data.path=...

Overrides are dotted config keys (`optim.lr=1e-4`, `train.mode=lora`, `data.batch_size=8`,
`eval.timesteps=[0.6,0.9]`); the resolved config is written to `<run-dir>/config.json`. With
`--resume`, the run folder's own `config.json` is the base (the recipe is not re-read), the
command's overrides are applied on top, and training continues from the newest complete
checkpoint (a new run starts if there is none).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import List, Optional

import typer

from idcrafter.devices import DeviceOption, DtypeOption
from idcrafter.errors import InputError, run_cli

train_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                        help="Training: rectified-flow SFT (`sft`).")


@train_app.callback()
def _group() -> None:
    """Training commands (a group, so `sft` stays a subcommand even while it is the only one)."""


def resolve_config(recipe_name: str, run_dir: Path, resume: bool, overrides: list[str]):
    """The config a run uses: recipe (or the run's saved config on --resume) + overrides."""
    from idcrafter.config import apply_overrides, diff_configs, load_config
    from idcrafter.recipes import recipe
    from idcrafter.train.config import Config

    saved = run_dir / "config.json"
    base = load_config(Config, saved) if resume and saved.is_file() else recipe(recipe_name)
    if resume and saved.is_file() and base.recipe != recipe_name:
        typer.echo(f"note: {run_dir} was made with recipe {base.recipe!r}; continuing it", err=True)
    cfg = apply_overrides(base, overrides)
    changed = diff_configs(base, cfg)
    if resume and saved.is_file() and changed:
        typer.echo(f"note: overriding the saved config: {', '.join(changed)}", err=True)
    return cfg.validate()


@train_app.command("sft")
def sft(
    overrides: Optional[List[str]] = typer.Argument(None, help="config overrides, key=value (e.g. optim.lr=1e-4)"),
    recipe: str = typer.Option(
        "sprites", help="recipe name: debug, sprites, sprites-latent, wan2.1-1.3b, wan2.1-14b (idcrafter.recipes)"),
    run_dir: Optional[Path] = typer.Option(None, help="run folder (default runs/<recipe>)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint of --run-dir"),
    overwrite: bool = typer.Option(False, "--overwrite", help="delete the run in --run-dir and start a new one there"),
    print_config: bool = typer.Option(False, "--print-config", help="print the resolved config and exit"),
) -> None:
    """Rectified-flow SFT with a recipe; metrics in <run-dir>/metrics.jsonl and tensorboard/."""
    from idcrafter.train.sft import run_sft

    run_dir = run_dir or Path("runs") / recipe
    cfg = resolve_config(recipe, run_dir, resume, list(overrides or []))
    if print_config:
        from idcrafter.config import config_to_dict

        typer.echo(json.dumps(config_to_dict(cfg), indent=2))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    last = run_sft(cfg, run_dir, resume=resume, overwrite=overwrite)
    typer.echo(json.dumps({k: v for k, v in last.items() if isinstance(v, (int, float))}))
    typer.echo(f"run folder: {run_dir}")


@train_app.command("export")
def export(
    run_dir: Path = typer.Option(Path("runs/sprites"), help="the run folder"),
    out: Path = typer.Option(Path("assets/checkpoints/sprites-sft"), help="the pipeline folder to write"),
    n: int = typer.Option(16, help="held-out casts for the card's metrics"),
    steps: int = typer.Option(20, help="sampling steps of the held-out evaluation"),
    cfg: float = typer.Option(2.5, help="guidance scale of the held-out evaluation"),
    checkpoint: Optional[int] = typer.Option(None, help="step to export (default: the newest)"),
    evaluate: bool = typer.Option(True, "--eval/--no-eval", help="evaluate on the run's held-out data (SpriteWorld "
                                                                 "judge, or real-face metrics on eval.path)"),
    device: DeviceOption = None, dtype: DtypeOption = None,
) -> None:
    """Ship a run: copy its checkpoint's pipeline to OUT, evaluate it held-out, write the card."""
    from idcrafter.train.export import export_run

    res = export_run(run_dir, out, n=n, steps=steps, guidance=cfg, checkpoint=checkpoint, device=device,
                     dtype=dtype, evaluate=evaluate)
    typer.echo(json.dumps({"step": res["step"], "generated": res["generated"], "ground_truth": res["ground_truth"]},
                          indent=2))
    typer.echo(f"wrote {out} (card: {out}/README.md)")


@train_app.command("cache-latents")
def cache_latents(
    overrides: Optional[List[str]] = typer.Argument(None, help="config overrides, key=value (e.g. data.path=...)"),
    recipe: str = typer.Option("sprites-latent", help="the recipe of the runs that will read the cache"),
    out: Path = typer.Option(..., help="the cache folder to write (resumable: finished shards are kept)"),
    dtype: str = typer.Option("float16", help="storage dtype: float16, bfloat16 or float32 (bit-exact)"),
    shard_size: int = typer.Option(2048, help="items per shard file"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Encode a finite training set's clips and references once (idcrafter.train.latent_cache);
    train with the same overrides plus data.latent_cache=OUT."""
    from idcrafter.config import apply_overrides
    from idcrafter.recipes import recipe as make_recipe
    from idcrafter.train.latent_cache import build_latent_cache, describe

    cfg = apply_overrides(make_recipe(recipe), list(overrides or []))
    if cfg.data.latent_cache:
        raise InputError("drop data.latent_cache from the overrides: the cache is what this command writes (--out)")
    build_latent_cache(cfg, out, shard_size=shard_size, dtype=dtype, progress=progress)
    typer.echo(json.dumps(describe(out)))
    typer.echo(f"wrote {out}; train with data.latent_cache={out} and the same overrides")


@train_app.command("vae")
def vae(
    overrides: Optional[List[str]] = typer.Argument(None, help="config overrides, key=value (e.g. train.steps=2000)"),
    run_dir: Path = typer.Option(Path("runs/sprites-vae"), help="run folder"),
    resume: bool = typer.Option(False, "--resume", help="continue from the newest checkpoint of --run-dir"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Train the SpriteWorld Wan VAE (AutoencoderKLWan); see idcrafter.train.vae."""
    from idcrafter.config import apply_overrides, load_config
    from idcrafter.train.vae import VAEConfig, VAETrainer

    saved = run_dir / "config.json"
    base = load_config(VAEConfig, saved) if resume and saved.is_file() else VAEConfig()
    cfg = apply_overrides(base, list(overrides or []))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    last = VAETrainer(cfg, run_dir, resume=resume).train(progress=progress)
    typer.echo(json.dumps(last))


@train_app.command("export-vae")
def export_vae_cmd(
    run_dir: Path = typer.Option(Path("runs/sprites-vae"), help="the VAE run folder"),
    out: Path = typer.Option(Path("assets/checkpoints/sprites-vae"), help="the VAE folder to write"),
    checkpoint: Optional[int] = typer.Option(None, help="step to export (default: the newest)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace an earlier export in OUT"),
) -> None:
    """Ship a VAE run: diffusers folder with measured latent statistics and a card."""
    from idcrafter.train.vae import export_vae

    res = export_vae(run_dir, out, checkpoint=checkpoint, overwrite=overwrite)
    typer.echo(json.dumps(res, indent=2))
    typer.echo(f"wrote {out} (card: {out}/README.md)")


def _register_rl() -> None:
    from idcrafter.rl.cli import register

    register(train_app)  # grpo, nft, dpo, reward-model (idcrafter.rl.cli)


_register_rl()


def main() -> None:
    """Entry point for `python -m idcrafter.train.cli` (bad input: one line, exit status 2)."""
    run_cli(train_app)


if __name__ == "__main__":
    main()
