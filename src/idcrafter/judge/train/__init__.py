"""Training of the judge's parts, kept apart from the inference modules in `idcrafter.judge`.

Every trainer renders its own data from the training split, trains on 1 CPU thread, validates
on held-out identities (`idcrafter.judge.evaluation`) and writes `<part>.safetensors` plus a
card (command, seed, figures) with `idcrafter.judge.parts.save_part`.
"""

from __future__ import annotations

from typing import Callable

PARTS = ("detector", "face", "subject", "action", "quality", "critic")


def trainer(part: str) -> Callable[..., dict]:
    """The training function of one part: `trainer(part)(seed=..., folder=...) -> figures`."""
    from idcrafter.errors import InputError

    if part == "detector":
        from idcrafter.judge.train.detector import train_detector as fn
    elif part == "face":
        from idcrafter.judge.train.embedders import train_face as fn
    elif part == "subject":
        from idcrafter.judge.train.embedders import train_subject as fn
    elif part == "action":
        from idcrafter.judge.train.action import train_action as fn
    elif part == "quality":
        from idcrafter.judge.train.quality import train_quality as fn
    elif part == "critic":
        from idcrafter.judge.train.critic import train_critic as fn
    else:
        raise InputError(f"unknown judge part {part!r}: choose one of {', '.join(PARTS)}")
    return fn
