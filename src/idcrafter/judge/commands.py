"""The judge's command bodies (`idcrafter world train-judge / validate-judge`), kept out of cli.py.

Two judges: `main` (`assets/judge/`, what rewards use) and `audit` (`assets/judge/audit/`,
trained apart by `AUDIT_RECIPE`: other seeds, hence other rendered data, other widths and the
detector also shown images with nobody in them; used by held-out evaluation and the RL hacking
monitor, never as a reward).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from idcrafter.errors import InputError
from idcrafter.judge.train import PARTS, trainer

AUDIT_SEED = 101
# Smaller budgets than the main judge's (the audit judge is trained on a shared 2-core machine in
# well under the 20 min per part it would take alone); other seeds render other data.
AUDIT_RECIPE: dict[str, dict] = {
    "detector": dict(seed=AUDIT_SEED, width=20, negatives=4, steps=1500, batch=24, num_clips=800),
    "face": dict(seed=AUDIT_SEED, steps=900, width=32, hidden=160, dim=96, num_clips=4000),
    "subject": dict(seed=AUDIT_SEED, steps=900, width=20, head_width=20, dim=96, num_clips=4000),
    "action": dict(seed=AUDIT_SEED, width=40, clips=2000, epochs=15),
    "quality": dict(seed=AUDIT_SEED, width=20, steps=1500),
    "critic": dict(seed=AUDIT_SEED, width=20, crop_width=20, steps=1200),
}


def train_judge(part: str, seed: int | None, folder: Path | None, kind: str = "main",
                echo: Callable[[str], None] = print) -> dict[str, dict]:
    """Train one part or `all` (in dependency order: the action recogniser learns on the tracks
    of the detector in the same folder) of the main or audit judge; returns figures per part."""
    import torch

    from idcrafter.judge.judge import judge_folder

    torch.set_num_threads(1)  # the judge's parts are trained on one thread (the machine is shared)
    names = list(PARTS) if part == "all" else [part]
    for n in names:
        if n not in PARTS:
            raise InputError(f"unknown part {n!r}: choose all or one of {', '.join(PARTS)}")
    target = judge_folder(folder, kind)
    out = {}
    for n in names:
        kwargs = dict(AUDIT_RECIPE[n]) if kind == "audit" else {}
        if seed is not None:
            kwargs["seed"] = seed
        echo(f"== {kind} judge: {n} {kwargs}")
        out[n] = trainer(n)(folder=target, **kwargs)
        if kind == "audit":
            _note_audit(target / f"{n}.md", n, kwargs)
    return out


def _note_audit(card: Path, part: str, kwargs: dict) -> None:
    """Say in a part's card that it belongs to the audit judge and how it was called."""
    from idcrafter.utils.io import atomic_write_text

    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    atomic_write_text(card, card.read_text() + f"""
## Audit judge

Part of the audit judge (`assets/judge/audit/`: never a reward). Trained by
`idcrafter world train-judge --judge audit --part {part}`, i.e. the trainer called with
`{args}` (`idcrafter.judge.commands.AUDIT_RECIPE`); the command line above is that of the
trainer's defaults.
""")


def validate(kind: str, folder: Path | None, clips: int, seed: int, adversarial: bool, casts: int,
             frames: int, checkpoints: list[Path], as_json: bool, echo: Callable[[str], None] = print) -> None:
    """Print the validation figures (or the adversarial table) of one judge, with their targets."""
    from idcrafter.judge.judge import Judge

    judge = Judge.load(folder, kind=kind)
    if adversarial:
        _adversarial(judge, casts, seed, frames, checkpoints, as_json, echo)
        return
    from idcrafter.judge.validate import TARGETS, check_targets, validate_judge

    fig = validate_judge(judge, num_clips=clips, seed=seed, progress=not as_json)
    ok = check_targets(fig)
    if as_json:
        echo(json.dumps({**fig, "targets_met": ok}, indent=2))
        return
    for k, v in fig.items():
        mark = "" if k not in ok else f"   target {TARGETS[k][0]} {TARGETS[k][1]}: {'ok' if ok[k] else 'MISSED'}"
        echo(f"{k:28s} {v:.4f}{mark}" if isinstance(v, float) else f"{k:28s} {v}")


def _adversarial(judge, casts: int, seed: int, frames: int, checkpoints: list[Path], as_json: bool,
                 echo: Callable[[str], None]) -> None:
    from idcrafter.judge.adversarial import adversarial_validation, format_table, progress_series

    pipes = [_load_pipeline(p) for p in checkpoints]
    res = adversarial_validation(judge, num_casts=casts, seed=seed, frames=frames, progress=not as_json)
    prog = progress_series(judge, frames=frames, pipelines=pipes or None, progress=not as_json)
    if as_json:
        echo(json.dumps({**res, "progress": prog}, indent=2, default=float))
        return
    echo(format_table(res))
    echo("")
    echo("progress (early-checkpoint-like samples, oldest first): " +
         ", ".join(f"{k} {v:.3f}" for k, v in prog["synthetic"].items()) +
         f"; Spearman with training order {prog['synthetic_spearman']:.2f}")
    if "checkpoints" in prog:
        echo("checkpoints (oldest first): " + ", ".join(f"{p.name} {v:.3f}" for p, v in zip(checkpoints, prog["checkpoints"])) +
             f"; Spearman with training order {prog['checkpoint_spearman']:.2f}")


def _load_pipeline(path: Path):
    from idcrafter.pipeline import IDCrafterPipeline

    if not (Path(path) / "model_index.json").is_file():
        raise InputError(f"{path} is not a pipeline folder (no model_index.json): pass folders written by "
                         f"`idcrafter train export`, oldest checkpoint first")
    return IDCrafterPipeline.from_pretrained(str(path))
