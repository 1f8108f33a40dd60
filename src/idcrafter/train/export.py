"""Ship a trained run: its newest pipeline export, evaluated on held-out casts, with a card.

    idcrafter train export --run-dir runs/sprites --out assets/checkpoints/sprites-sft

The folder written is a `save_pretrained` pipeline (safetensors only) plus `README.md` (the card:
the command that made it, data seed, steps, training wall time, the reference gap, and the
held-out judge metrics beside the ground truth's) and `heldout.json`. It is written to a
temporary folder and renamed into place, so a shipped folder is never half-written.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from idcrafter.errors import InputError
from idcrafter.train import checkpoint as ckpt


def reproduce_command(cfg) -> str:
    """`idcrafter train sft` with the recipe and every override that makes `cfg` from it."""
    from idcrafter.config import diff_configs
    from idcrafter.recipes import recipe

    diff = diff_configs(recipe(cfg.recipe), cfg)
    overrides = [f"{k}={json.dumps(v[1]) if not isinstance(v[1], str) else v[1]}" for k, v in diff.items()]
    return " ".join(["idcrafter train sft", f"--recipe {cfg.recipe}", *(f"'{o}'" for o in overrides)])


def training_record(run_dir: Path, step: int) -> dict[str, Any]:
    """Wall time (sum of logged step times, so pauses between resumed pieces do not count) and
    the last reference-gap evaluation at or before `step`, from `metrics.jsonl`."""
    path = run_dir / "metrics.jsonl"
    seconds, prev, last_eval = 0.0, 0, {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("step", 0) > step:
                continue
            if "step_time" in row:
                seconds += row["step_time"] * max(row["step"] - prev, 0)
                prev = row["step"]
            if "ref_gap_subject/t0.6" in row:
                last_eval = row
    keys = ("x0_err_subject/t0.6", "ref_gap_subject/t0.6", "ref_gap_rel_subject/t0.6", "ref_gap_rel_subject/t0.9",
            "ema/ref_gap_rel_subject/t0.6", "ema/ref_gap_rel_subject/t0.9")
    return {"train_seconds": seconds, "eval_step": last_eval.get("step"),
            "reference_gap": {k: last_eval[k] for k in keys if k in last_eval}}


def provenance(cfg) -> str:
    """The history of a warm-started run's starting weights: the `PROVENANCE.md` its
    `model.init_pipeline` folder carries (written by whoever made that folder), or a warning
    that it has none, because a card must say where every weight came from."""
    if not cfg.model.init_pipeline:
        return ""
    note = Path(cfg.model.init_pipeline) / "PROVENANCE.md"
    body = note.read_text().strip() if note.is_file() else "(no PROVENANCE.md in that folder: history unknown)"
    return f"\n## Starting weights\n\n{body}\n\n## This run\n"


def write_card(folder: Path, cfg, step: int, record: dict[str, Any], result: dict[str, Any], name: str) -> Path:
    from idcrafter.heldout import metrics_table

    h = record["train_seconds"] / 3600
    gap = "\n".join(f"| {k} | {v:.4f} |" for k, v in record["reference_gap"].items())
    hc = result["config"]
    origin = "trained from scratch on a CPU"
    if cfg.model.init_pipeline:
        origin = f"trained on a CPU, continuing from the pipeline in `{cfg.model.init_pipeline}` (below)"
    text = f"""# {name}

The SpriteWorld generator of idcrafter: recipe `{cfg.recipe}` (preset `{cfg.model.preset}`, pixel codec
patch {cfg.model.codec_patch}, {cfg.model.frames} x {cfg.model.height} x {cfg.model.width} clips, {cfg.model.reference_size} px
references), {origin}. EMA weights, `IDCrafterPipeline.from_pretrained` format.
{provenance(cfg)}
- Command: `{reproduce_command(cfg)}` (resumed with `--resume` between sessions)
- Data: SpriteWorld rendered on the fly, split `{cfg.data.split}`, seed {cfg.data.seed}; batch {cfg.data.batch_size}
- Steps: {step} of {cfg.train.steps} ({step * cfg.data.batch_size:,} clips seen)
- Training wall time: {h:.2f} h of logged step time on a shared 2-core CPU

## Reference gap (held-out batch, step {record['eval_step']})

Error of the x0 prediction with shuffled references minus with the true ones, on subject cells
(`rel` = as a fraction of the error with the true references). Positive = references are used.

| figure | value |
|---|---|
{gap}

## Held-out judge metrics

{hc['n']} held-out casts of {'/'.join(map(str, hc['subjects']))} subjects (seed {hc['seed']}), {hc['steps']} Euler steps,
guidance {hc['guidance']}; the ground truth's own figures are the ceiling of this judge.
Command: `idcrafter eval heldout --model <this folder> --n {hc['n']} --seed {hc['seed']} --steps {hc['steps']} --cfg {hc['guidance']}`.

{metrics_table(result)}
"""
    path = folder / "README.md"
    path.write_text(text)
    return path


def export_run(run_dir: str | Path, out: str | Path, n: int = 16, steps: int = 20, seed: int = 1234,
               checkpoint: int | None = None, progress: bool = True, guidance: float = 2.5) -> dict[str, Any]:
    """Copy the pipeline of a run's checkpoint (newest by default) to `out`, evaluate it on
    held-out casts and write its card. Returns the held-out result."""
    from idcrafter.config import load_config
    from idcrafter.heldout import HeldoutConfig, evaluate_heldout
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.train.config import Config

    run_dir, out = Path(run_dir), Path(out)
    root = run_dir / "checkpoints"
    found = dict(ckpt.list_checkpoints(root))
    if not found:
        raise InputError(f"no complete checkpoint in {root}: train first (idcrafter train sft --run-dir {run_dir})")
    step = checkpoint if checkpoint is not None else max(found)
    if step not in found:
        raise InputError(f"no checkpoint of step {step} in {root}; have {sorted(found)}")
    src = found[step] / "pipeline"
    if not (src / "model_index.json").is_file():
        raise InputError(f"{found[step]} has no pipeline export: train with checkpoint.export_pipeline=true")
    cfg = load_config(Config, run_dir / "config.json")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    pipe = IDCrafterPipeline.from_pretrained(str(tmp))
    held = HeldoutConfig(n=n, steps=steps, seed=seed, guidance=guidance)
    result = evaluate_heldout(pipe, held, out_dir=tmp / "heldout", progress=progress)
    for sheet in sorted((tmp / "heldout").glob("case_*.png"))[1:]:
        sheet.unlink()  # keep one contact sheet in the shipped folder (small files in git)
    record = training_record(run_dir, step)
    (tmp / "heldout" / "training.json").write_text(json.dumps({"step": step, **record}, indent=2))
    write_card(tmp, cfg, step, record, result, out.name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return {"step": step, **record, **result}
