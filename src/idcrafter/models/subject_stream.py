"""The subject stream: reference tokens -> subject tokens S_1..S_N.

It depends on neither the timestep nor the video, so it runs once per sample and its output is
reused by every denoising step and both guidance branches (see `ConditionCache`).

Variants (selected by `IDCrafterTransformer3DModel.config.subject_variant`), each a module:
- `hierarchical` (the paper): intra-subject layers (each subject attends only to itself) then
  inter-subject layers (subjects attend to each other and to the grounded text tokens).
- `intra_only`: the ablation without the inter-subject stage.
- `concat`: the baseline: reference tokens go straight into the blocks' context, unprocessed.
In `t5` mode the hierarchical variants give the blocks' subject branch the subject tokens
alone (T5 already reaches the video through Wan's cross-attention and guides the inter-subject
stage); `concat` puts subject and text tokens into one context, as the baseline is defined.
In every variant tokens carry a learned position (within the reference) and slot embedding
(which reference they came from), so ownership survives the flattening into one sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from idcrafter.errors import InputError
from idcrafter.models.attention import SubjectLayer


class SubjectEmbedding(nn.Module):
    """Adds position-in-reference and slot (ownership) embeddings to reference tokens."""

    def __init__(self, dim: int, max_subjects: int, max_ref_tokens: int):
        super().__init__()
        self.pos = nn.Parameter(torch.empty(1, 1, max_ref_tokens, dim))
        self.slot = nn.Parameter(torch.empty(1, max_subjects, 1, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """N(0, 0.02) (bitwise what `torch.randn(...) * 0.02` gave); also called by `from_wan`,
        which builds the model on the meta device and initialises only the new modules."""
        nn.init.normal_(self.pos, 0.0, 0.02)
        nn.init.normal_(self.slot, 0.0, 0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens (B, K, L, C)
        k, l = tokens.shape[1], tokens.shape[2]
        if k > self.slot.shape[1] or l > self.pos.shape[2]:
            raise InputError(f"{k} subjects x {l} tokens per reference exceed the model's {self.slot.shape[1]} x "
                             f"{self.pos.shape[2]}: use smaller references (the pipeline's reference_size)")
        return tokens + self.pos[:, :, :l] + self.slot[:, :k]


class ConcatStream(nn.Module):
    """Baseline: no subject processing; subject tokens join the text tokens in one flat context."""

    joins_text_context = True

    def __init__(self, dim: int, heads: int, num_intra_layers: int = 0, num_inter_layers: int = 0):
        super().__init__()

    def forward(self, tokens, subject_mask, grounded, grounded_mask):
        return tokens.flatten(1, 2)


class IntraOnlyStream(nn.Module):
    """Intra-subject stage only: each subject is its own sequence (block-diagonal attention)."""

    joins_text_context = False  # the text reaches video tokens through Wan's own cross-attention

    def __init__(self, dim: int, heads: int, num_intra_layers: int = 1, num_inter_layers: int = 0):
        super().__init__()
        self.intra = nn.ModuleList(SubjectLayer(dim, heads) for _ in range(num_intra_layers))

    def run_intra(self, tokens: torch.Tensor) -> torch.Tensor:
        b, k = tokens.shape[:2]
        x = tokens.flatten(0, 1)  # (B*K, L, C): one sequence per subject
        for layer in self.intra:
            x = layer(x)
        return x.unflatten(0, (b, k))

    def forward(self, tokens, subject_mask, grounded, grounded_mask):
        return self.run_intra(tokens).flatten(1, 2)


class HierarchicalStream(IntraOnlyStream):
    """Intra-subject, then inter-subject attention guided by the grounded text tokens."""

    def __init__(self, dim: int, heads: int, num_intra_layers: int = 1, num_inter_layers: int = 1):
        super().__init__(dim, heads, num_intra_layers)
        self.inter = nn.ModuleList(SubjectLayer(dim, heads) for _ in range(num_inter_layers))

    def forward(self, tokens, subject_mask, grounded, grounded_mask):
        l = tokens.shape[2]
        x = self.run_intra(tokens).flatten(1, 2)  # (B, K*L, C)
        mask = subject_mask.repeat_interleave(l, dim=1)  # (B, K*L)
        for layer in self.inter:
            x = layer(x, mask, grounded, grounded_mask)
        return x


SUBJECT_STREAMS: dict[str, type[nn.Module]] = {
    "hierarchical": HierarchicalStream,
    "intra_only": IntraOnlyStream,
    "concat": ConcatStream,
}


def build_subject_stream(variant: str, dim: int, heads: int, num_intra_layers: int, num_inter_layers: int) -> nn.Module:
    if variant not in SUBJECT_STREAMS:
        raise ValueError(f"unknown subject_variant {variant!r}; choose one of {sorted(SUBJECT_STREAMS)}")
    return SUBJECT_STREAMS[variant](dim, heads, num_intra_layers, num_inter_layers)
