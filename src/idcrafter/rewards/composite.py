"""ID-Crafter's composite reward: the combination maths (pure functions) and the reward class.

    R      = w_fid R_fid + w_qual R_qual + w_bind R_bind - w_cp P_cp
    R_fid  = (1 - alpha) R_face + alpha R_subject            alpha = 0.5
    R_face = (1 - gamma) mean_k R_id^k + gamma min_k R_id^k   gamma = 0.5
    R_qual = (1 - beta) R_aes + beta R_nat                   beta = 0.4
    w_fid = 0.6, w_qual = 0.4

Departure from the paper: the copy-paste penalty P_cp (in [0, 1]: how much a reference appears
pasted unchanged and still) with weight w_cp = 0.2 by default. The paper has no such term and
reports copy-paste artefacts; a policy maximising fidelity alone learns to paste references
(issue 12), so the default keeps a penalty; `CompositeWeights.paper()` sets w_cp = 0.

Second departure, off by default (w_bind = 0): a binding term R_bind in [0, 1], how well each
reference's subject does what the caption asks of it (the SpriteWorld judge's `binding`). The
paper's R has no action term; on SpriteWorld every RL arm trained on it traded the subjects'
asked-for motion for identity (docs/rl_sessions.md, session 5: action_acc -0.10 under GRPO), so the
`grpo_bind` experiment arm sets w_bind > 0. Only the SpriteWorld judge gives `binding`; the real
preset has no binding scorer and refuses w_bind > 0.

Every function works on floats or on (B,) tensors alike. R_face is computed from the face
component's `face_mean` and `face_min` (the mean and min over subjects), which is exactly the
paper's formula, so a composite with another gamma needs no new face scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

from idcrafter.errors import InputError
from idcrafter.rewards.base import Reward, RewardBatch, RewardOutput


@dataclass(frozen=True)
class CompositeWeights:
    fidelity: float = 0.6  # w_fid
    quality: float = 0.4  # w_qual
    subject_share: float = 0.5  # alpha: R_fid = (1 - alpha) R_face + alpha R_subject
    natural_share: float = 0.4  # beta: R_qual = (1 - beta) R_aes + beta R_nat
    gamma: float = 0.5  # R_face = (1 - gamma) mean + gamma min
    copy_paste: float = 0.2  # w_cp (not in the paper; module docstring)
    binding: float = 0.0  # w_bind (not in the paper; module docstring)

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not (v == v) or v < 0:  # NaN or negative
                raise InputError(f"composite weight {k} must be a number >= 0, got {v}")
        for k in ("subject_share", "natural_share", "gamma"):
            if getattr(self, k) > 1:
                raise InputError(f"composite weight {k} is a share and must lie in [0, 1], got {getattr(self, k)}")

    @classmethod
    def paper(cls) -> "CompositeWeights":
        """Exactly ID-Crafter's weights (no copy-paste penalty)."""
        return cls(copy_paste=0.0)


def subject_aggregate(scores: Sequence[float] | torch.Tensor, gamma: float = 0.5) -> float:
    """(1 - gamma) mean_k s_k + gamma min_k s_k over the subjects of one sample."""
    s = torch.as_tensor(scores, dtype=torch.float64).flatten()
    if s.numel() == 0:
        raise InputError("no subject scores to aggregate")
    return float((1 - gamma) * s.mean() + gamma * s.min())


def face_reward(face_mean: Any, face_min: Any, gamma: float = 0.5) -> Any:
    """R_face from the mean and the min over subjects of R_id^k."""
    return (1 - gamma) * face_mean + gamma * face_min


def fidelity_reward(face: Any, subject: Any, subject_share: float = 0.5) -> Any:
    return (1 - subject_share) * face + subject_share * subject


def quality_reward(aesthetic: Any, natural: Any, natural_share: float = 0.4) -> Any:
    return (1 - natural_share) * aesthetic + natural_share * natural


def composite_reward(face_mean: Any, face_min: Any, subject: Any, aesthetic: Any, natural: Any,
                     copy_paste: Any = 0.0, weights: CompositeWeights = CompositeWeights(),
                     binding: Any = 0.0) -> dict[str, Any]:
    """{"composite", "fidelity", "quality", "face"} from the components (floats or tensors)."""
    face = face_reward(face_mean, face_min, weights.gamma)
    fid = fidelity_reward(face, subject, weights.subject_share)
    qual = quality_reward(aesthetic, natural, weights.natural_share)
    total = (weights.fidelity * fid + weights.quality * qual + weights.binding * binding
             - weights.copy_paste * copy_paste)
    return {"composite": total, "fidelity": fid, "quality": qual, "face": face}


#: components the composite reads from its parts
INPUTS = ("face_mean", "face_min", "subject", "aesthetic", "natural", "copy_paste", "binding")
#: inputs needed only when their weight (the `CompositeWeights` field of the same name) is > 0
OPTIONAL = ("copy_paste", "binding")


class CompositeReward(Reward):
    """R from component rewards. `parts` are reward instances; each input component is taken
    from the first part that gives it (so one SpriteWorld `JudgeReward` can give them all in one
    pass). A sample whose inputs are not all valid gets `fill` and `valid` False for the
    composite; a part whose weight is 0 is not needed (copy-paste at w_cp = 0, binding at
    w_bind = 0)."""

    name = "composite"
    components = ("composite", "fidelity", "quality", "face")

    def __init__(self, device: str | torch.device = "cpu", weights: str | None = None,
                 parts: Sequence[Reward] | None = None, preset: str = "sprites",
                 composite_weights: CompositeWeights | None = None, fill: float = 0.0, **part_options: Any):
        super().__init__(device, weights, fill)
        self.composite_weights = composite_weights or CompositeWeights()
        self.parts = list(parts) if parts is not None else default_parts(preset, device, weights, **part_options)
        w = self.composite_weights
        needed = [c for c in INPUTS if c not in OPTIONAL or getattr(w, c) > 0]
        given = {c for p in self.parts for c in p.components}
        missing = [c for c in needed if c not in given]
        if missing:
            raise InputError(f"the composite reward needs components {missing} that none of its parts "
                             f"({', '.join(p.name for p in self.parts)}) gives")
        self.needed = tuple(needed)

    def __call__(self, batch: RewardBatch) -> RewardOutput:
        out: RewardOutput | None = None
        for part in self.parts:
            res = part(batch)
            out = res if out is None else out.merged(res)
        assert out is not None
        w = self.composite_weights
        opt = {c: out.values[c] if c in self.needed else 0.0 for c in OPTIONAL}
        parts = composite_reward(out["face_mean"], out["face_min"], out["subject"], out["aesthetic"],
                                 out["natural"], weights=w, **opt)
        ok = out.all_valid(self.needed)
        values = {k: torch.where(ok, v.float(), torch.full_like(v.float(), self.fill)) for k, v in parts.items()}
        valid = {k: ok.clone() for k in values}
        return RewardOutput({**values, **out.values}, {**valid, **out.valid}, out.errors)


def default_parts(preset: str, device: Any, weights: Any, **options: Any) -> list[Reward]:
    """The components of a preset.

    - "sprites": the SpriteWorld judge in one pass (`weights`: a judge parts folder).
    - "real": insightface face similarity, CLIP subject similarity, CLIP + LAION aesthetics, a
      local Qwen2.5-VL naturalness judge and face copy-paste; `weights` is a folder holding
      `face/` (an ArcFace/CurricularFace ONNX), `clip/` (CLIP ViT-L/14 + the aesthetic MLP) and
      `vlm/` (a Qwen2.5-VL-Instruct checkpoint).
    """
    from pathlib import Path

    from idcrafter.rewards import aesthetic, copy_paste, face, natural, subject

    if preset == "sprites":
        return [face.JudgeReward(device, weights, gamma=options.get("gamma", 0.5))]
    if preset == "real":
        if weights is None:
            raise InputError("the real composite reward needs a weights folder holding face/, clip/ and vlm/")
        root = Path(weights)
        return [face.FaceReward(device, root / "face", backend="insightface"),
                subject.SubjectReward(device, root / "clip", backend="clip"),
                aesthetic.AestheticReward(device, root / "clip", backend="clip"),
                natural.NaturalReward(device, root / "vlm", backend="qwen"),
                copy_paste.CopyPasteReward(device, None, backend="faces")]
    raise InputError(f"unknown composite preset {preset!r}: choose sprites or real")
