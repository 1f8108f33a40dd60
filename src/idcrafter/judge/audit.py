"""The audit judge: an independent SpriteWorld judge that measures and never rewards.

    from idcrafter.judge.audit import AuditJudge
    audit = AuditJudge.load()                               # assets/judge/audit (or a folder)
    m = audit.score(frames, refs, caption).metrics          # the main judge's keys + attr_acc_*
    m = audit.score(frames, refs, caption, ref_attributes=[ident.attributes(), ...]).metrics

The same judge is `Judge.load(kind="audit")`, the scorer `build_scorer("sprites-audit")`
(default of the RL hacking monitor, `rl.config.MonitorConfig.scorer`, and of the `audit/...`
columns of `idcrafter eval`), and `idcrafter judge --judge audit` on the command line.

How it differs from the main judge (`assets/judge/`):
- its parts are trained apart (`judge.train.audit.AUDIT_RECIPE`: seed 101, hence other
  rendered data, other widths and embedding sizes), so a generator that learned to fool one
  network is not thereby fooling the other; the channels' code (`judge.channels`) is shared;
- it adds an exact, interpretable figure: each matched subject's nine attributes read from the
  clip by its subject embedder's attribute heads against the reference's true attributes
  (`attr_acc_mean`, `attr_acc_min` over subjects; per subject `attr_acc`, `attr_wrong` (the
  attributes read wrong) and `attr_source`). The truth is, in this order, the attributes the
  caller gives (`given`: a SpriteWorld case knows its identities), the attributes decoded from
  the reference image by inverting the renderer (`render`: exact for a clean reference), or
  the heads' reading of the reference (`read`): `judge.attributes.reference_truth`.
- it is never a reward: every `idcrafter.rewards.Reward` calls `refuse_as_reward` once built,
  which raises `AuditRewardError` when the reward holds the audit judge (or a scorer on it) or
  was given the audit folder as its weights. A reward the policy optimises would teach it the
  audit judge's blind spots too, and the monitor would then watch a judge that was gamed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from idcrafter.errors import AuditRewardError, InputError
from idcrafter.judge.judge import Judge
from idcrafter.judge.parts import is_audit_folder


class AuditJudge(Judge):
    """The audit judge (`Judge` with `kind == "audit"`; module docstring)."""

    @classmethod
    def load(cls, folder: str | Path | None = None, kind: str = "audit") -> "AuditJudge":
        """Load from `folder`: the audit parts folder itself (it holds the audit marker) or a judge
        folder holding `audit/` (default `assets/judge`)."""
        if kind != "audit":
            raise InputError(f"AuditJudge loads the audit judge only, got kind {kind!r}: use Judge.load for the main judge")
        if folder is not None and is_audit_folder(folder):
            # the folder itself: loaded as given; its marker makes the judge an audit one
            return super().load(folder, kind="main")  # type: ignore[return-value]
        return super().load(folder, kind="audit")  # type: ignore[return-value]


def is_audit(obj: Any) -> bool:
    """Whether `obj` is the audit judge, a scorer on it, or the audit parts folder."""
    if isinstance(obj, (str, Path)):
        try:
            return is_audit_folder(obj)
        except OSError:
            return False
    if getattr(obj, "kind", None) == "audit" and isinstance(obj, Judge):
        return True
    if getattr(obj, "variant", None) == "audit" or getattr(obj, "never_a_reward", False) is True:
        return True
    judge = getattr(obj, "judge", None)
    return judge is not None and judge is not obj and isinstance(judge, Judge) and judge.kind == "audit"


def refuse_as_reward(reward: Any) -> None:
    """Raise `AuditRewardError` if `reward` is built on the audit judge: its weights folder, or any
    attribute (or list / tuple element of one) that is the audit judge or a scorer on it."""
    name = type(reward).__name__
    weights = getattr(reward, "weights", None)
    if weights is not None and is_audit(weights):
        raise AuditRewardError(f"{name}: {weights} holds the audit judge, which no reward may use: pass the main "
                               f"judge's folder (default assets/judge) as weights")
    for attr, value in vars(reward).items():
        values = value if isinstance(value, (list, tuple)) else (value,)
        for v in values:
            if not isinstance(v, (str, Path)) and is_audit(v):
                raise AuditRewardError(f"{name}.{attr} is the audit judge ({getattr(v, 'name', type(v).__name__)}), "
                                       f"which no reward may use: build the reward on the main judge (scorer "
                                       f"'sprites'); the audit judge is for evaluation and the hacking monitor")
