"""ArcFace: additive angular margin softmax (Deng et al., 2019).

For an L2-normalised embedding x and class weight w_j (also normalised), cos(theta_j) = x . w_j.
The logit of the *target* class y is s * cos(theta_y + m); every other class keeps
s * cos(theta_j). Training with cross-entropy on these logits forces each sample to be at least
an angle m closer to its class centre than to any other centre, which yields tight identity
clusters with a cosine that is meaningful across classes never seen in training.

cos(theta + m) is not monotonic once theta + m > pi; the usual fallback replaces it there by
cos(theta) - m * sin(m) (a linear continuation), or, with `easy_margin`, applies the margin only
where cos(theta) > 0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def arcface_logits(embeddings: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor | None,
                   s: float, m: float, easy_margin: bool = False) -> torch.Tensor:
    """(B, C) ArcFace logits.

    embeddings: (B, D), weight: (C, D) -- both are L2-normalised here (idempotent for inputs that
    already are); labels: (B,) int64 target classes, or None for plain scaled cosines
    (inference, or a margin-free evaluation of the same head).
    """
    cos = F.normalize(embeddings, dim=-1) @ F.normalize(weight, dim=-1).T  # (B, C)
    if labels is None or m == 0.0:
        return s * cos
    target = cos.gather(1, labels[:, None]).clamp(-1.0, 1.0)  # (B, 1)
    sin = torch.sqrt((1.0 - target * target).clamp_min(0.0))
    phi = target * math.cos(m) - sin * math.sin(m)  # cos(theta + m)
    if easy_margin:
        phi = torch.where(target > 0, phi, target)
    else:
        # beyond theta = pi - m, cos(theta + m) would increase again: continue linearly instead
        phi = torch.where(target > math.cos(math.pi - m), phi, target - math.sin(math.pi - m) * m)
    out = cos.scatter(1, labels[:, None], phi)
    return s * out


class ArcMarginHead(nn.Module):
    """Learnable class centres (num_classes, dim) producing ArcFace logits.

    `m` is a plain attribute so that a training loop may ramp it up (a margin from step 0 often
    stalls training on many classes).
    """

    def __init__(self, dim: int, num_classes: int, s: float = 32.0, m: float = 0.5, easy_margin: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.s, self.m, self.easy_margin = s, m, easy_margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # embeddings (B, D), labels (B,) -> logits (B, C)
        return arcface_logits(embeddings, self.weight, labels, self.s, self.m, self.easy_margin)
