"""Training recipe of the audit judge (`assets/judge/audit/`), the judge no reward ever uses.

Every part is trained by the same trainer as the main judge's (`judge.train.<part>`), called
with `AUDIT_RECIPE`: another seed (101 instead of 0), hence other rendered training data (other
clips, casts, backgrounds and degradations; the train / held-out identity split is the world's
own, so both judges are validated on the same never-seen faces), and other widths / embedding
sizes, so that a generator exploiting a blind spot of one network is unlikely to find the same
one in the other. The detector is also shown frames with nobody in them (`negatives`). Budgets
are smaller than the main judge's: the audit parts are trained on a shared 2-core machine.

    idcrafter world train-judge --judge audit --part subject     # one part, resumable
    idcrafter world train-judge --judge audit                    # all, in dependency order

Each trained part gets an "Audit judge" section appended to its card (the exact call), and the
folder gets the `AUDIT_MARKER` file (`judge.parts.is_audit_folder`), by which a judge loaded from
it is the audit judge whatever it was asked for, and rewards refuse it (`judge.audit`).
"""

from __future__ import annotations

import time
from pathlib import Path

AUDIT_SEED = 101
AUDIT_RECIPE: dict[str, dict] = {
    "detector": dict(seed=AUDIT_SEED, width=20, negatives=4, steps=1500, batch=24, num_clips=800),
    "face": dict(seed=AUDIT_SEED, steps=900, width=32, hidden=160, dim=96, num_clips=4000),
    "subject": dict(seed=AUDIT_SEED, steps=900, width=20, head_width=20, dim=96, num_clips=4000),
    "action": dict(seed=AUDIT_SEED, width=40, clips=2000, epochs=15),
    "quality": dict(seed=AUDIT_SEED, width=20, steps=1500),
    "critic": dict(seed=AUDIT_SEED, width=20, crop_width=20, steps=1200),
}
# what the main judge's trainers use by default (for the card's comparison line)
MAIN_DEFAULTS = {"detector": "width 16, steps 2500, batch 32, 1200 clips, no negatives",
                 "face": "width 24, hidden 128, dim 64, steps 1500, 6000 clips",
                 "subject": "width 16, head width 16, dim 64, steps 1400, 6000 clips",
                 "action": "width 32, 6000 clips, 20 epochs", "quality": "width 16, steps 3000",
                 "critic": "width 16, crop width 16, steps 1500 (two stages)"}


def audit_kwargs(part: str, seed: int | None = None) -> dict:
    """The trainer arguments of one audit part (`seed` overrides the recipe's)."""
    from idcrafter.errors import InputError

    if part not in AUDIT_RECIPE:
        raise InputError(f"unknown part {part!r}: choose one of {', '.join(AUDIT_RECIPE)}")
    kwargs = dict(AUDIT_RECIPE[part])
    if seed is not None:
        kwargs["seed"] = seed
    return kwargs


def mark_audit_folder(folder: Path) -> Path:
    """Write the audit marker (what makes a folder an audit judge's: see the module docstring)."""
    from idcrafter.judge.parts import AUDIT_MARKER
    from idcrafter.utils.io import atomic_write_json, ensure_dir

    return atomic_write_json(ensure_dir(Path(folder)) / AUDIT_MARKER, {
        "kind": "audit", "never_a_reward": True, "recipe": AUDIT_RECIPE,
        "note": "the audit judge: held-out evaluation and the RL hacking monitor only; rewards refuse it"})


def note_audit_card(card: Path, part: str, kwargs: dict, seconds: float) -> None:
    """Append to a part's card that it belongs to the audit judge, how it was called and how long it took."""
    from idcrafter.utils.io import atomic_write_text

    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    atomic_write_text(card, card.read_text() + f"""
## Audit judge

Part of the audit judge (`assets/judge/audit/`: never a reward). Trained by
`idcrafter world train-judge --judge audit --part {part}`, i.e. the trainer called with
`{args}` (`idcrafter.judge.train.audit.AUDIT_RECIPE`); the command line above is that of the
trainer's defaults. The main judge's part: {MAIN_DEFAULTS[part]}, seed 0.
Wall time of the whole call (rendering, training, validation): {seconds:.0f} s on 1 CPU thread of
a shared 2-core machine. Stored in float16 (`compact_part`), loaded into float32.
""")


def compact_part(path: Path) -> Path:
    """Re-store a part's floating-point tensors as float16 (its metadata kept, plus `stored`):
    half the bytes, so that the audit parts stay within ~4 MB beside the main judge's 3.1 MB.
    `load_part` loads them into the float32 modules (`load_state_dict` casts). Measured on the
    audit detector and subject embedder: detection scores move by at most 3e-4, embeddings by
    3e-4, attribute log-probabilities by 0.02; the card's figures were measured before rounding."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    from idcrafter.utils.io import atomic_write_bytes

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("stored") == "float16":
        return path
    state = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in load_file(str(path)).items()}
    return atomic_write_bytes(path, save(state, metadata={**meta, "stored": "float16"}))


def train_audit_part(part: str, folder: Path, seed: int | None = None) -> dict:
    """Train one audit part into `folder` (resumable: a killed call continues when re-run),
    note it on its card and mark the folder; returns the part's figures."""
    from idcrafter.judge.train import trainer

    kwargs = audit_kwargs(part, seed)
    mark_audit_folder(folder)
    t0 = time.time()
    figures = trainer(part)(folder=folder, **kwargs)
    note_audit_card(Path(folder) / f"{part}.md", part, kwargs, time.time() - t0)
    compact_part(Path(folder) / f"{part}.safetensors")
    return figures
