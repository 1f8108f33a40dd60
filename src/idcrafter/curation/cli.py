"""`idcrafter data ...`: curation commands (`data_app`, mounted by `idcrafter.cli`).

    idcrafter data curate --config curation.toml --out runs/data/real [--engine local|ray] [--workers 2]
    idcrafter data curate --source sprites --num 200 --seed 0 --out runs/data/sprites
    idcrafter data pairs --num 2000 --seed 0 --out runs/data/ablation      # naive vs curated
    idcrafter data convert --manifest runs/data/sprites/manifest.parquet --out train.jsonl
    idcrafter data summary --manifest runs/data/sprites/manifest.parquet
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from idcrafter.errors import InputError

data_app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False,
                       help="Data curation: raw videos -> training pairs (a Parquet manifest).")


@data_app.callback()
def _group() -> None:
    """Data curation commands."""


@data_app.command("curate")
def curate_cmd(
    out: Path = typer.Option(..., help="output folder (re-run the same command to resume it)"),
    config: Optional[Path] = typer.Option(None, help="curation config (.toml or .json; docs/curation.md)"),
    source: Optional[str] = typer.Option(None, help="'sprites': raw SpriteWorld videos instead of --config"),
    num: int = typer.Option(100, help="--source sprites: number of raw videos"),
    seed: int = typer.Option(0, help="--source sprites: data seed"),
    naive: bool = typer.Option(False, "--naive", help="--source sprites: references cropped from the clips' own "
                                                      "frames (no compose, copy-paste filter off)"),
    engine: str = typer.Option("local", help="local (process pool) or ray (Ray Data)"),
    workers: int = typer.Option(1, help="worker processes (local) or CPUs (ray)"),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
) -> None:
    """Curate videos into a Parquet manifest: import, scene split, subjects, compose, face
    quality, caption, filters, dedup, mixing. Resumable; failing rows are recorded, never fatal."""
    from idcrafter.curation.config import load_config, sprites_config
    from idcrafter.curation.engine import curate, summary_table

    if (config is None) == (source is None):
        raise InputError("pass exactly one of --config FILE or --source sprites")
    if source is not None and source != "sprites":
        raise InputError(f"--source {source!r}: only 'sprites' is built in; describe other inputs in a --config file")
    if config is not None:
        cfg = load_config(config)
    else:
        extra = {"filters.max_copy_paste": 1.01} if naive else {}
        cfg = sprites_config(num, seed, compose=not naive, **extra)
    summary = curate(cfg, out, engine=engine, workers=workers, progress=progress)
    typer.echo(json.dumps(summary, indent=1) if as_json else summary_table(summary))
    if not as_json:
        typer.echo(f"manifest: {out / 'manifest.parquet'}")


@data_app.command("pairs")
def pairs_cmd(
    out: Path = typer.Option(..., help="output folder: <out>/naive and <out>/curated"),
    num: int = typer.Option(1000, help="raw SpriteWorld videos"),
    seed: int = typer.Option(0),
    engine: str = typer.Option("local"),
    workers: int = typer.Option(1),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """The ablation's two pair sets from the same SpriteWorld clips: naive (references cropped from
    the clip's own frames) and curated (references rendered in another context)."""
    from idcrafter.curation.ablation import make_pairs

    report = make_pairs(out, num, seed, engine=engine, workers=workers, progress=progress)
    risk = report["copy_paste_risk_mean"]
    typer.echo(f"{report['clips_in_both']} clips in both sets; mean copy-paste risk naive {risk['naive']:.3f}, "
               f"curated {risk['curated']:.3f}")
    typer.echo(f"manifests: {out / 'naive' / 'manifest.parquet'} {out / 'curated' / 'manifest.parquet'}")


@data_app.command("convert")
def convert_cmd(
    manifest: Path = typer.Option(..., help="a curation manifest.parquet"),
    out: Path = typer.Option(..., help="the JSONL manifest to write"),
) -> None:
    """Write the kept rows as a JSONL manifest (video, references, caption, window, crop)."""
    from idcrafter.curation.schema import to_jsonl

    if out.exists():
        raise InputError(f"{out} exists: choose a new --out (converting never overwrites)")
    n = to_jsonl(manifest, out)
    typer.echo(f"wrote {n} items to {out}")


@data_app.command("summary")
def summary_cmd(manifest: Path = typer.Option(..., help="a curation manifest.parquet"),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Kept and dropped rows by reason and source."""
    from idcrafter.curation.engine import summarize, summary_table
    from idcrafter.curation.schema import read_table

    s = summarize(read_table(manifest, ["id", "source", "kept", "drop_reason", "error"]).to_pylist())
    typer.echo(json.dumps(s, indent=1) if as_json else summary_table(s))
