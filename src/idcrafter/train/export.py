"""Ship a trained run: its newest pipeline export, evaluated on held-out casts, with a card.

    idcrafter train export --run-dir runs/sprites --out assets/checkpoints/sprites-sft

The folder written is a `save_pretrained` pipeline (safetensors only) plus `README.md` (the card:
the command that made it, data seed, steps, training wall time, the reference gap, and the
held-out judge metrics beside the ground truth's) and `heldout.json`. It is written to a
temporary folder and renamed into place (`utils.io.replace_dir`: the old folder is renamed aside,
the new one in, then the old one deleted), so a shipped folder is never half-written.

Safety: OUT must not be the run folder, inside it, or around it; an existing OUT is replaced only
if `train export` made it (its `.idcrafter` marker, or the files every export has, for folders
shipped before markers existed); files a person added to it (a PROVENANCE.md) are carried over.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from idcrafter.errors import FolderInUseError, InputError
from idcrafter.train import checkpoint as ckpt
from idcrafter.utils.io import atomic_write_text, check_writable_dir, mark_dir, replace_dir, temp_dir_beside

EXPORT_TOOL = "idcrafter train export"
EXPORT_SIGNATURE = ("model_index.json", "README.md", "heldout/training.json")  # what every export writes


def check_export_paths(run_dir: Path, out: Path) -> None:
    """OUT must be neither the run folder, nor inside it, nor a folder that contains it (replacing
    OUT would delete the run), and an existing OUT must be an earlier export."""
    if not run_dir.is_dir():
        raise InputError(f"run folder not found: {run_dir} (pass the --run-dir of idcrafter train sft)")
    r, o = run_dir.resolve(), out.resolve()
    if o == r or r in o.parents:
        raise FolderInUseError(f"--out {out} is the run folder {run_dir} or inside it: exporting there would "
                               "delete the run; choose a folder outside it")
    if o in r.parents:
        raise FolderInUseError(f"--out {out} contains the run folder {run_dir}: replacing it would delete the run; "
                               "choose another folder")
    check_writable_dir(out, EXPORT_TOOL, fix="", signature=EXPORT_SIGNATURE)


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
    from idcrafter.train.logger import read_metrics

    path = run_dir / "metrics.jsonl"
    seconds, prev, last_eval = 0.0, 0, {}
    if path.is_file():
        for row in read_metrics(path):
            if not isinstance(row.get("step", 0), (int, float)) or row.get("step", 0) > step:
                continue
            if "step_time" in row:
                seconds += row["step_time"] * max(row["step"] - prev, 0)
                prev = row["step"]
            if "ref_gap_subject/t0.6" in row:
                last_eval = row
    keys = ("x0_err_subject/t0.6", "ref_gap_subject/t0.6", "ref_gap_rel_subject/t0.6", "ref_gap_rel_subject/t0.9",
            "ema/x0_err_subject/t0.6", "ema/ref_gap_rel_subject/t0.6", "ema/ref_gap_rel_subject/t0.9")
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


def write_card(folder: Path, cfg, step: int, record: dict[str, Any], result: dict[str, Any], name: str,
               marker: dict[str, Any] | None = None) -> Path:
    """The card of any recipe (`idcrafter.train.card`: the run's own model, data, command, hardware)."""
    from idcrafter.train.card import write_card as write

    return write(folder, cfg, step, record, result, name, marker)


def export_run(run_dir: str | Path, out: str | Path, n: int = 16, steps: int = 20, seed: int = 1234,
               checkpoint: int | None = None, progress: bool = True, guidance: float = 2.5,
               device: Any = None, dtype: Any = None, evaluate: bool = True) -> dict[str, Any]:
    """Copy the pipeline of a run's checkpoint (newest by default) to `out` (linked frozen
    components stay links: `idcrafter.linking`), evaluate it on the held-out data that fits the
    run (`train.card.evaluate_export`; on `device` in `dtype`) and write its card. Links to a
    folder beside `out` become relative (`linking.relink_siblings`). Returns the
    held-out result."""
    from idcrafter.config import load_config
    from idcrafter.devices import load_pipeline
    from idcrafter.linking import relink_siblings
    from idcrafter.train.card import evaluate_export, evaluation_plan
    from idcrafter.train.config import Config

    from idcrafter.validation import LIMITS, check_guidance, check_int, check_seed, check_steps

    check_int(n, "--n", 1, LIMITS.max_eval_cases), check_steps(steps), check_seed(seed), check_guidance(guidance)
    if checkpoint is not None:
        check_int(checkpoint, "--checkpoint", 0)
    run_dir, out = Path(run_dir), Path(out)
    check_export_paths(run_dir, out)
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
    marker = ckpt.read_json(found[step] / ckpt.COMPLETE_MARKER)
    tmp = temp_dir_beside(out)  # a fresh hidden name: nothing that exists is reused or deleted
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True, symlinks=True)  # links stay links (absolute targets)
        relink_siblings(tmp, out)  # ... except to folders beside OUT, e.g. the shipped VAE in assets/checkpoints
        mark_dir(tmp, EXPORT_TOOL)
        pipe = load_pipeline(tmp, device, dtype) if evaluation_plan(cfg, evaluate)[0] != "skipped" else None
        result = evaluate_export(pipe, cfg, tmp / "heldout", n, steps, seed, guidance, progress, evaluate)
        record = training_record(run_dir, step)
        atomic_write_text(tmp / "heldout" / "training.json", json.dumps({"step": step, **record}, indent=2))
        write_card(tmp, cfg, step, record, result, out.name, marker)
        replace_dir(tmp, out, keep_foreign=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"step": step, **record, **result}
