"""Model inputs of a training `Batch`: the shared condition encoder (`idcrafter.conditioning`)
read from a collated batch, with guidance dropout.

Conditions are encoded by exactly the code `IDCrafterPipeline.encode_conditions` runs at
inference (`idcrafter.conditioning.ConditionEncoder`: prompt states cached per caption, each
caption encoded alone; references through the codec or the vision subject encoder; grounded VLM
tokens), so training and sampling see the same inputs. Guidance dropout: a dropped prompt becomes
the empty prompt "" (the pipeline's default negative prompt); dropped references become zeros with
`subject_mask` all False (what the pipeline's unconditional rows get).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from idcrafter.conditioning import ConditionEncoder as _SharedEncoder
from idcrafter.conditioning import ConditionInputs

if TYPE_CHECKING:
    from idcrafter.train.data import Batch

__all__ = ["ConditionEncoder", "ConditionInputs"]


class ConditionEncoder(_SharedEncoder):
    """`idcrafter.conditioning.ConditionEncoder` plus the two `Batch` readers SFT uses."""

    def references(self, batch: "Batch") -> torch.Tensor:
        """Reference latents (B, K, C, 1, h, w) (zeros for padding), or vision features (B, K, L, D)."""
        subj, _ = self.encode_references(batch.ref_images)
        return subj

    def inputs(self, batch: "Batch", drop_text: torch.Tensor, drop_refs: torch.Tensor,
               subject_latents: torch.Tensor | None = None) -> ConditionInputs:
        """`ConditionInputs` of a batch with dropout applied (drop_* (B,) bool); `subject_latents`
        may be passed precomputed (the evaluator reuses them)."""
        subjects = None if subject_latents is None else (subject_latents, batch.ref_mask.to(self.device))
        return self.encode(batch.captions, batch.ref_images, drop_text, drop_refs, subjects)

    def model_inputs(self, batch: "Batch", drop_text: torch.Tensor, drop_refs: torch.Tensor,
                     subject_latents: torch.Tensor | None = None) -> dict[str, Any]:
        """Forward kwargs of a batch (see `inputs`)."""
        return self.inputs(batch, drop_text, drop_refs, subject_latents).model_kwargs()
