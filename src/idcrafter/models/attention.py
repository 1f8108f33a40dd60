"""Attention pieces of the subject stream and of the subject branch inside DiT blocks.

All attention goes through `torch.nn.functional.scaled_dot_product_attention` with boolean
key masks; shapes follow the (B, heads, L, head_dim) convention of SDPA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from idcrafter.utils.hooks import weights_on_device


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, L, H*D) -> (B, H, L, D)."""
    return x.unflatten(-1, (heads, -1)).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) -> (B, L, H*D)."""
    return x.transpose(1, 2).flatten(2)


def apply_rope(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding (diffusers' `WanAttnProcessor`, same maths): x (B, L, H, D)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """SDPA where `key_mask` (B, Lk) bool marks valid keys. Each row must have a valid key."""
    mask = None if key_mask is None else key_mask[:, None, None, :]  # (B, 1, 1, Lk)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class SubjectLayer(nn.Module):
    """Pre-norm transformer layer whose queries attend to themselves plus optional extra keys.

    Used for both stages of the subject stream: intra-subject (tokens of one subject, batched
    as separate sequences so attention is block-diagonal by construction) and inter-subject
    (all subjects of a sample plus the grounded text tokens as extra keys/values).
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int = 4, eps: float = 1e-6):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.to_out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_mult * dim, dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                extra: torch.Tensor | None = None, extra_mask: torch.Tensor | None = None) -> torch.Tensor:
        # x (B, L, C), mask (B, L) valid tokens; extra (B, Le, C) keys/values only, extra_mask (B, Le)
        h = self.norm1(x)
        kv_in = h if extra is None else torch.cat([h, extra], 1)
        q = split_heads(self.norm_q(self.to_q(h)), self.heads)
        k = split_heads(self.norm_k(self.to_k(kv_in)), self.heads)
        v = split_heads(self.to_v(kv_in), self.heads)
        key_mask = mask
        if extra is not None:
            b = x.shape[0]
            m = mask if mask is not None else x.new_ones(b, x.shape[1], dtype=torch.bool)
            em = extra_mask if extra_mask is not None else x.new_ones(b, extra.shape[1], dtype=torch.bool)
            key_mask = torch.cat([m, em], 1)
        if key_mask is not None:
            # a padded (absent) subject has no valid key at all: let its rows see themselves so
            # SDPA stays finite; their outputs are masked out by the caller.
            key_mask = key_mask.clone()
            key_mask[:, : x.shape[1]] |= ~key_mask.any(1, keepdim=True)
        x = x + self.to_out(merge_heads(masked_attention(q, k, v, key_mask)))
        return x + self.ffn(self.norm2(x))


SUBJECT_ATTENTION = ("self", "layered", "joint", "cross")


class SubjectBranch(nn.Module):
    """The subject branch of a DiT block: video queries attend to [subject tokens; grounded
    tokens] in a softmax of their own; the result joins an attention's output *before* its
    output projection, scaled by a per-channel gate that starts at zero (Wan parity), or at
    `gate_init` for a model trained from scratch, where a zero gate only delays learning.

    `source` says which of the block's attentions it extends (the model's `subject_attention`):
    - "self" (default): the self-attention. Queries are the video tokens' self-attention queries
      before RoPE (content only), keys/values come from the self-attention's own projections,
      so subject tokens are read exactly as video tokens would be (Phantom's insight: reference
      tokens in the video's own attention space are copied from early in training). The branch
      owns only its gate and sink.
    - "layered": as "self", but the subject tokens are carried through every block themselves
      (at timestep 0, attending only to subject and text tokens, never to the video), and the
      video reads each block's own subject states, so they stay in that block's space, as
      Phantom's reference frames do; still independent of the video, hence cacheable.
    - "joint": the self-attention's projections as in "self", but the subject keys join the
      video's keys in *one* softmax (Phantom's reading: references compete with video tokens for
      each query) and carry RoPE positions as frames before the clip (see
      `IDCrafterTransformer3DModel.subject_rope`). Still static, hence cacheable. There is no gate
      and no sink (the video keys are always there), so with references present the model is not
      Wan at init: a variant for training from scratch.
    - "cross": the text cross-attention, IP-Adapter style: its query, and key/value projections
      of the branch's own (`from_wan` starts them as copies of the cross-attention's).
    A learned *sink* key with a zero value lets a query attend to nothing, so samples without
    subjects (the unconditional branch of guidance) get exactly zero from this branch.
    """

    def __init__(self, dim: int, heads: int, eps: float = 1e-6, source: str = "self", gate_init: float = 0.0):
        super().__init__()
        if source not in SUBJECT_ATTENTION:
            raise ValueError(f"subject_attention must be one of {SUBJECT_ATTENTION}, got {source!r}")
        self.heads, self.source = heads, source
        if source == "cross":
            self.to_k = nn.Linear(dim, dim)
            self.to_v = nn.Linear(dim, dim)
            self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.gate_init = float(gate_init)
        if source != "joint":  # one softmax with the video's keys needs neither
            self.sink_k = nn.Parameter(torch.zeros(1, heads, 1, dim // heads))
            self.gate = nn.Parameter(torch.full((dim,), self.gate_init))

    def reset_parameters(self) -> None:
        """The initial sink key (zeros) and gate (`gate_init`): what `from_wan` calls after
        building on the meta device (the branch's own projections reset themselves)."""
        if self.source == "joint":
            return
        with torch.no_grad():
            self.sink_k.zero_()
            self.gate.fill_(self.gate_init)

    def project(self, context: torch.Tensor, mask: torch.Tensor | None, attn: nn.Module | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Keys/values of the static context (cacheable): (B, H, 1+Lc, D) x2 and mask (B, 1+Lc)
        (None when every key is valid: SDPA then runs without a mask). `attn` is the block's
        self-attention when the branch reads through its projections. "joint" has no sink
        (keys (B, H, Lc, D)) and rotates its keys by `rope` = (cos, sin), each (1, Lc, 1, D)."""
        proj = self if self.source == "cross" else attn
        k = proj.norm_k(proj.to_k(context))  # (B, Lc, C)
        v = split_heads(proj.to_v(context), self.heads)
        if self.source == "joint":
            k = k.unflatten(2, (self.heads, -1))  # (B, Lc, H, D)
            k = (k if rope is None else apply_rope(k, *rope)).transpose(1, 2)
            return k, v, mask
        return self.with_sink(split_heads(k, self.heads), v, mask)

    def with_sink(self, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None):
        """Prepend the sink key (zero value) to keys/values (B, H, L, D) and the key mask (B, L)."""
        b = k.shape[0]
        with weights_on_device(self):  # called outside forward: load sink_k under sequential offload
            # the flat round trip gives sink_k's gradient standard strides: without it, a batch of one
            # row hands back a slice of SDPA's head-major key gradient, strides (., D, H*D, 1) where DDP's
            # bucket has (H*D, D, D, 1), and DDP warns ("Grad strides do not match bucket view strides")
            sink = self.sink_k.flatten().view(self.sink_k.shape)
            k = torch.cat([sink.to(k.device, k.dtype).expand(b, -1, -1, -1), k], 2)
        v = torch.cat([v.new_zeros(b, self.heads, 1, v.shape[-1]), v], 2)
        return k, v, None if mask is None else torch.cat([mask.new_ones(b, 1), mask], 1)

    def forward(self, q: torch.Tensor, kv: tuple) -> torch.Tensor:
        # q (B, H, Lv, D) from the extended attention -> gated (B, Lv, C), before its to_out
        k, v, mask = kv[:3]
        return merge_heads(masked_attention(q, k.to(q.dtype), v.to(q.dtype), mask)) * self.gate.to(q.dtype)
