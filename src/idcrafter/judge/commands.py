"""The judge's command bodies (`idcrafter world train-judge / validate-judge`), kept out of cli.py.

Two judges: `main` (`assets/judge/`, what rewards use) and `audit` (`assets/judge/audit/`,
trained apart by `judge.train.audit.AUDIT_RECIPE`: other seeds, hence other rendered data, other
widths and the detector also shown images with nobody in them; used by held-out evaluation and
the RL hacking monitor, never as a reward).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from idcrafter.errors import InputError
from idcrafter.judge.train import PARTS, trainer
from idcrafter.judge.train.audit import AUDIT_RECIPE, AUDIT_SEED, train_audit_part  # noqa: F401 (re-exported)


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
        if kind == "audit":
            echo(f"== audit judge: {n} {AUDIT_RECIPE[n]}")
            out[n] = train_audit_part(n, target, seed)
            continue
        kwargs = {} if seed is None else {"seed": seed}
        echo(f"== main judge: {n} {kwargs}")
        out[n] = trainer(n)(folder=target, **kwargs)
    return out


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
