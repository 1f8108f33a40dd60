"""IDCrafterTransformer3DModel: Wan2.1's video DiT plus the hierarchical subject stream.

How it departs from Wan2.1 (diffusers' `WanTransformer3DModel`), and why:
- Every Wan weight keeps its name and role; `from_wan` loads them strictly.
- Each block gains a *subject branch*: video queries attend to [subject tokens; grounded
  tokens] in a softmax of their own, added to an attention's output before its projection
  through a zero-initialised gate. `subject_attention` picks the attention: "self" (default:
  the self-attention's content queries and its own key/value projections, so references are
  read like video tokens, as Phantom does; measured to learn where "cross" did not, see
  docs/model.md) or "cross" (the text cross-attention's query, IP-Adapter style). Before
  training the model *is* Wan, with or without subjects, and samples without subjects
  (guidance's unconditional branch) get exactly zero from the branch (a learned sink key with a
  zero value absorbs their attention).
- Reference latents are patchified by Wan's own patch embedding, so subject tokens live in the
  space of video tokens (copying appearance is easy to learn).
- The subject stream and each block's key/value projections of the static context (text and
  subjects) depend on neither timestep nor video: `build_condition_cache` computes them once per
  sample and `forward(..., condition_cache=...)` reuses them at every step and for both guidance
  branches.
- How the prompt is encoded is `text_mode`: `t5` (Wan's), `vlm` (Qwen2.5-VL grounded tokens in
  place of T5, projected to Wan's text width), `t5+vlm` (the paper's dual encoder: T5 feeds Wan's
  cross-attention, VLM tokens guide the subject stream and join the subject branch's context).
- Wan pads every prompt to 512 tokens with zero embeddings, and its cross-attention reads all
  512 keys. Attention over n identical keys equals attention over one of them with its logit
  raised by log n, so each row's trailing run of identical tokens is collapsed into one key
  with that additive bias (`collapse_padding`): the same result up to rounding, with
  cross-attention reading the prompt's real length + 1 keys.
  The subject stream (new, so free of Wan's conventions) reads each distinct token once.
- Not supported: Wan's image-to-video variant (`image_dim` / added K/V), which this model replaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import (
    WanRotaryPosEmbed, WanTimeTextImageEmbedding, WanTransformerBlock,
)
from torch import nn

from idcrafter.errors import InputError
from idcrafter.models.attention import SubjectBranch, apply_rope, masked_attention, merge_heads, split_heads
from idcrafter.models.subject_stream import SubjectEmbedding, build_subject_stream
from idcrafter.utils.hooks import weights_on_device

TEXT_MODES = ("t5", "vlm", "t5+vlm")
NEW_MODULE_PREFIXES = ("subject_embed.", "subject_stream.", "vlm_proj.", "vlm_to_text.", "subject_in.")

KV = tuple[torch.Tensor, torch.Tensor]
TextKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]  # keys, values, additive bias


def collapse_padding(tokens: torch.Tensor) -> tuple[int, torch.Tensor | None]:
    """Where each row's trailing run of identical tokens (padding) ends up after collapsing.

    tokens (B, L, D) -> (kept length Lk, additive key bias (B, 1, 1, Lk) or None). Row b keeps
    its first L - n_b + 1 tokens (n_b = length of its trailing run of copies of its last token);
    the kept copy gets bias log(n_b), positions past a row's kept length get -inf. Since
    sum_j exp(s_j) v_j over n equal keys is exp(s + log n) v, attention is unchanged. None
    (keep everything) when no row has a run of 2 or more.
    """
    b, l, _ = tokens.shape
    same = (tokens == tokens[:, -1:]).all(-1)  # (B, L): equal to the row's last token
    run = same.flip(1).int().cumprod(1).sum(1)  # (B,) length of the trailing run
    if int(run.max()) < 2:
        return l, None
    keep = l - run + 1  # (B,)
    lk = int(keep.max())
    pos = torch.arange(lk, device=tokens.device)
    bias = torch.zeros(b, lk, device=tokens.device, dtype=torch.float32)
    bias[pos[None] >= keep[:, None]] = float("-inf")
    bias[torch.arange(b, device=tokens.device), keep - 1] = run.float().log()
    return lk, bias[:, None, None, :]


@dataclass
class ConditionCache:
    """Everything static across denoising steps, for one (possibly CFG-doubled) batch.

    text_kv[i]: block i's text keys/values, each (B, H, Lt', D), and the additive key bias
        (B, 1, 1, Lt') of collapsed padding or None (see `collapse_padding`).
    subject_kv[i]: block i's subject-branch keys, values (R, H, 1+Ls, D), key mask (R, 1+Ls) or
        None when every key is valid, and the indices (R,) of the rows that have subjects (None
        = all rows); None when no row has subjects (then the branch is skipped: pure Wan). Rows
        without subjects (guidance's unconditional branch) get exactly zero from the branch, so
        it is computed for the R rows with subjects only. "joint" has no sink (Ls keys, rotated)
        and is cached spread over the whole batch (`joint_rows_to_batch`: rows None, a row
        without subjects has every subject key masked, so it gets plain self-attention).
    dtype: the dtype of the projected text context (Wan casts the time embedding to it).
    """

    text_kv: list[TextKV]
    subject_kv: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]] | None
    batch_size: int
    dtype: torch.dtype


@dataclass
class DeferredKV:
    """A block's static context, to be projected to keys/values inside that block's own forward.

    The uncached (training) forward passes these instead of precomputed keys/values: under FSDP2
    each `IDCrafterBlock` is its own unit whose weights are gathered only while its forward runs,
    so the projections must happen there (the values are bitwise the same either way). With
    gradient checkpointing they are recomputed in the backward instead of stored per block.
    """

    context: torch.Tensor  # (B, L, C)
    mask_or_bias: torch.Tensor | None  # text: additive key bias; subjects: key mask (R, L)
    rows: torch.Tensor | None = None  # subjects: the rows that have subjects (None = all)
    rope: tuple[torch.Tensor, torch.Tensor] | None = None  # subjects, "joint": keys' (cos, sin)


def joint_rows_to_batch(subject_kv, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """"joint" subject keys/values of the R rows `rows` ((R, H, Ls, D) each, key mask (R, Ls) or
    None) spread over the whole batch of `batch` rows: zeros and an all-False mask where a row
    has no subjects. With rows None (every row has subjects) they are returned as they are."""
    ks, vs, mask, rows = subject_kv
    if rows is None:
        return ks, vs, mask
    valid = torch.zeros(batch, ks.shape[2], dtype=torch.bool, device=ks.device)
    valid[rows] = True if mask is None else mask.to(ks.device)
    return (ks.new_zeros(batch, *ks.shape[1:]).index_copy(0, rows, ks),
            vs.new_zeros(batch, *vs.shape[1:]).index_copy(0, rows, vs), valid)


class IDCrafterBlock(WanTransformerBlock):
    """A Wan block (same weights, same maths) with a subject branch on one of its attentions."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: str, cross_attn_norm: bool, eps: float,
                 subject_attention: str = "self", subject_gate_init: float = 0.0):
        super().__init__(dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, None)
        self.subject_branch = SubjectBranch(dim, num_heads, eps, subject_attention, subject_gate_init)

    def subject_kv(self, context: torch.Tensor, mask: torch.Tensor | None,
                   rope: tuple[torch.Tensor, torch.Tensor] | None = None):
        """The branch's cached keys/values of the static subject context (see `ConditionCache`)."""
        return self.subject_branch.project(context, mask, self.attn1, rope)

    def subject_layer(self, s: torch.Tensor, mask: torch.Tensor | None, temb0: torch.Tensor, text_kv: TextKV):
        """Carry subject tokens s (R, Ls, C) through this block at timestep 0 ("layered"): they
        attend to each other (valid keys: mask (R, Ls)) and to the text, never to the video.
        Returns the next block's states and this block's cached branch keys/values."""
        with weights_on_device(self):  # not forward: load the table under sequential offload
            table = self.scale_shift_table.to(temb0.device) + temb0.float()
        shift, scale, gate, c_shift, c_scale, c_gate = table.chunk(6, dim=1)
        a = self.attn1
        norm = (self.norm1(s.float()) * (1 + scale) + shift).type_as(s)
        q = split_heads(a.norm_q(a.to_q(norm)), a.heads)
        k = split_heads(a.norm_k(a.to_k(norm)), a.heads)
        v = split_heads(a.to_v(norm), a.heads)
        kv = self.subject_branch.with_sink(k, v, mask)  # what the video reads at this block
        attn = merge_heads(masked_attention(q, k, v, mask)).type_as(s)
        s = (s.float() + a.to_out[1](a.to_out[0](attn)) * gate).type_as(s)
        a2 = self.attn2
        q = split_heads(a2.norm_q(a2.to_q(self.norm2(s.float()).type_as(s))), a2.heads)
        tk, tv, bias = text_kv
        out = F.scaled_dot_product_attention(q, tk.to(q.dtype), tv.to(q.dtype),
                                             attn_mask=None if bias is None else bias.to(q.dtype))
        s = s + a2.to_out[1](a2.to_out[0](merge_heads(out).type_as(s)))
        norm = (self.norm3(s.float()) * (1 + c_scale) + c_shift).type_as(s)
        s = (s.float() + self.ffn(norm).float() * c_gate).type_as(s)
        return s, kv

    def _branch(self, out: torch.Tensor, q: torch.Tensor, subject_kv) -> torch.Tensor:
        """Add the gated branch (over the rows that have subjects) to an attention output (B, L, C)."""
        rows = subject_kv[3]
        if rows is None:
            return out + self.subject_branch(q, subject_kv).type_as(out)
        return out.index_add(0, rows, self.subject_branch(q[rows], subject_kv).type_as(out))

    @staticmethod
    def _joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, subject_kv) -> torch.Tensor:
        """One softmax over [video keys; subject keys] ("joint"): q, k, v (B, H, L, D) of the video
        (rotated), subject keys/values (R, H, Ls, D) for the rows `rows` (None = all) with key
        mask (R, Ls) or None. Rows without subjects have every subject key masked out, so they
        get exactly Wan's self-attention."""
        b, _, l, _ = k.shape
        ks, vs, valid = joint_rows_to_batch(subject_kv, b)
        ks, vs = ks.to(k.dtype), vs.to(v.dtype)
        key_mask = None if valid is None else \
            torch.cat([valid.new_ones(b, l), valid.to(k.device)], 1)[:, None, None, :]  # (B, 1, 1, L + Ls)
        return F.scaled_dot_product_attention(q, torch.cat([k, ks], 2), torch.cat([v, vs], 2), attn_mask=key_mask)

    def self_attention(self, x: torch.Tensor, rotary_emb, subject_kv) -> torch.Tensor:
        """Wan's self-attention (`WanAttnProcessor` maths) on x (B, L, C), plus the branch when it
        reads through the self-attention."""
        a = self.attn1
        q = a.norm_q(a.to_q(x)).unflatten(2, (a.heads, -1))  # (B, L, H, D)
        k = a.norm_k(a.to_k(x)).unflatten(2, (a.heads, -1))
        v = a.to_v(x).unflatten(2, (a.heads, -1))
        qr, kr = apply_rope(q, *rotary_emb), apply_rope(k, *rotary_emb)
        qr, kr, v = qr.transpose(1, 2), kr.transpose(1, 2), v.transpose(1, 2)  # (B, H, L, D)
        if subject_kv is not None and self.subject_branch.source == "joint":
            return a.to_out[1](a.to_out[0](merge_heads(self._joint_attention(qr, kr, v, subject_kv)).type_as(q)))
        out = merge_heads(F.scaled_dot_product_attention(qr, kr, v)).type_as(q)
        if subject_kv is not None and self.subject_branch.source != "cross":
            out = self._branch(out, q.transpose(1, 2), subject_kv)  # content queries, before RoPE
        return a.to_out[1](a.to_out[0](out))

    def text_kv(self, context: torch.Tensor, bias: torch.Tensor | None = None) -> TextKV:
        """Keys/values of the projected text context (B, L, C) -> (B, H, L, D) each, and its bias."""
        a = self.attn2
        return split_heads(a.norm_k(a.to_k(context)), a.heads), split_heads(a.to_v(context), a.heads), bias

    def forward(self, hidden_states: torch.Tensor, temb: torch.Tensor, rotary_emb, text_kv: TextKV,
                subject_kv=None) -> torch.Tensor:
        # hidden_states (B, L, C); temb (B, 6, C) or (B, L, 6, C)
        if isinstance(text_kv, DeferredKV):  # project the static context here (see DeferredKV)
            text_kv = self.text_kv(text_kv.context, text_kv.mask_or_bias)
        if isinstance(subject_kv, DeferredKV):
            subject_kv = (*self.subject_kv(subject_kv.context, subject_kv.mask_or_bias, subject_kv.rope),
                          subject_kv.rows)
        table = self.scale_shift_table if temb.ndim == 3 else self.scale_shift_table.unsqueeze(0)
        mods = (table + temb.float()).chunk(6, dim=temb.ndim - 2)
        if temb.ndim == 4:
            mods = tuple(m.squeeze(2) for m in mods)
        shift_msa, scale_msa, gate_msa, c_shift, c_scale, c_gate = mods

        # 1. self-attention (Wan's maths) + the subject branch when it extends self-attention
        norm = (self.norm1(hidden_states.float()) * (1 + scale_msa) + shift_msa).type_as(hidden_states)
        attn = self.self_attention(norm, rotary_emb, subject_kv)
        hidden_states = (hidden_states.float() + attn * gate_msa).type_as(hidden_states)

        # 2. cross-attention to text (Wan's maths with cached K/V) + the branch when it extends it
        a = self.attn2
        norm = self.norm2(hidden_states.float()).type_as(hidden_states)
        q = split_heads(a.norm_q(a.to_q(norm)), a.heads)  # (B, H, L, D)
        k, v, bias = text_kv
        bias = None if bias is None else bias.to(q.dtype)
        out = merge_heads(F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=bias)).type_as(q)
        if subject_kv is not None and self.subject_branch.source == "cross":
            out = self._branch(out, q, subject_kv)
        hidden_states = hidden_states + a.to_out[1](a.to_out[0](out))

        # 3. feed-forward (unchanged Wan)
        norm = (self.norm3(hidden_states.float()) * (1 + c_scale) + c_shift).type_as(hidden_states)
        ff = self.ffn(norm)
        return (hidden_states.float() + ff.float() * c_gate).type_as(hidden_states)


class IDCrafterTransformer3DModel(ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Wan2.1 DiT + subject stream. `forward` takes Wan's arguments plus subject inputs."""

    _supports_gradient_checkpointing = True
    _no_split_modules = ["IDCrafterBlock"]
    _keep_in_fp32_modules = ["rope", "time_embedder", "scale_shift_table", "norm1", "norm2", "norm3"]
    _skip_layerwise_casting_patterns = ["patch_embedding", "condition_embedder", "norm"]

    @register_to_config
    def __init__(
        self,
        patch_size: tuple[int, ...] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 8960,
        num_layers: int = 30,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
        subject_variant: str = "hierarchical",
        num_intra_layers: int = 1,
        num_inter_layers: int = 1,
        max_subjects: int = 4,
        max_ref_tokens: int = 1024,
        text_mode: str = "t5",
        vlm_dim: int | None = None,
        subject_feature_dim: int | None = None,
        subject_attention: str = "self",
        subject_gate_init: float = 0.0,
    ) -> None:
        super().__init__()
        if text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {text_mode!r}")
        if text_mode != "t5" and not vlm_dim:
            raise ValueError(f"text_mode {text_mode!r} needs vlm_dim (the VLM's hidden size)")
        dim = num_attention_heads * attention_head_dim
        self.rope = WanRotaryPosEmbed(attention_head_dim, patch_size, rope_max_seq_len)
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.condition_embedder = WanTimeTextImageEmbedding(dim, freq_dim, dim * 6, text_dim)
        self.blocks = nn.ModuleList(
            IDCrafterBlock(dim, ffn_dim, num_attention_heads, qk_norm, cross_attn_norm, eps, subject_attention,
                           subject_gate_init) for _ in range(num_layers))
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, (out_channels or in_channels) * math.prod(patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        # new modules
        self.subject_embed = SubjectEmbedding(dim, max_subjects, max_ref_tokens)
        self.subject_stream = build_subject_stream(subject_variant, dim, num_attention_heads,
                                                   num_intra_layers, num_inter_layers)
        self.vlm_proj = nn.Linear(vlm_dim, dim) if text_mode != "t5" else None
        self.vlm_to_text = nn.Linear(vlm_dim, text_dim) if text_mode == "vlm" else None
        # alternative subject encoder: vision-backbone tokens instead of codec latents
        self.subject_in = nn.Linear(subject_feature_dim, dim) if subject_feature_dim else None
        self.gradient_checkpointing = False

    # ------------------------------------------------------------------ conditions
    def text_context(self, encoder_hidden_states: torch.Tensor | None, grounded_hidden_states: torch.Tensor | None) -> torch.Tensor:
        """Wan's projected text context (B, Lt, C); in `vlm` mode it is made from VLM tokens."""
        if self.config.text_mode == "vlm":
            if grounded_hidden_states is None:
                raise InputError("text_mode 'vlm' needs grounded_hidden_states (the VLM's tokens)")
            encoder_hidden_states = self.vlm_to_text(grounded_hidden_states)
        if encoder_hidden_states is None:
            raise InputError("encoder_hidden_states (the T5 prompt embedding) is required")
        return self.condition_embedder.text_embedder(encoder_hidden_states)

    def subject_tokens(self, subject_latents: torch.Tensor, subject_mask: torch.Tensor | None,
                       grounded: torch.Tensor, grounded_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """References -> subject tokens (B, K*L, dim) and mask (B, K*L).

        subject_latents: codec latents (B, K, C, 1, h, w), patchified by Wan's patch embedding, or,
        when the model has `subject_feature_dim`, vision-backbone tokens (B, K, L, D).
        """
        feature_input = self.subject_in is not None
        if subject_latents.ndim != (4 if feature_input else 6):
            want = "(B, K, L, D) vision features" if feature_input else "(B, K, C, 1, h, w)"
            raise InputError(f"subject_latents must be {want}, got shape {tuple(subject_latents.shape)}")
        b, k = subject_latents.shape[:2]
        if k > self.config.max_subjects:
            raise InputError(f"{k} references given; this model supports at most {self.config.max_subjects}")
        if subject_mask is None:
            subject_mask = torch.ones(b, k, dtype=torch.bool, device=subject_latents.device)
        if feature_input:
            x = self.subject_in(subject_latents.to(self.subject_in.weight.dtype))  # (B, K, L, C)
        else:
            x = self.patch_embedding(subject_latents.flatten(0, 1).to(self.patch_embedding.weight.dtype))
            x = x.flatten(2).transpose(1, 2).unflatten(0, (b, k))  # (B, K, L, C)
        x = self.subject_embed(x)
        s = self.subject_stream(x, subject_mask, grounded, grounded_mask)
        return s, subject_mask.repeat_interleave(x.shape[2], dim=1)

    def build_condition_cache(
        self,
        encoder_hidden_states: torch.Tensor | None,
        subject_latents: torch.Tensor | None = None,
        subject_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        grounded_hidden_states: torch.Tensor | None = None,
        grounded_mask: torch.Tensor | None = None,
    ) -> ConditionCache:
        """Compute the static per-sample conditions once (see `ConditionCache`). Not a `forward`,
        so it enters the model's offload hook itself (model offload moves the model to its device)."""
        with weights_on_device(self):
            return self._build_condition_cache(encoder_hidden_states, subject_latents, subject_mask,
                                               encoder_attention_mask, grounded_hidden_states, grounded_mask)

    def _build_condition_cache(self, encoder_hidden_states, subject_latents, subject_mask, encoder_attention_mask,
                               grounded_hidden_states, grounded_mask, defer: bool = False) -> ConditionCache:
        # the prompt with its padding collapsed: (B, Lt', C) and Wan's multiplicity bias
        vlm_text = self.config.text_mode == "vlm"
        source = grounded_hidden_states if vlm_text else encoder_hidden_states
        kept, bias = (None, None) if source is None else collapse_padding(source)
        source = None if source is None else source[:, :kept]
        context = self.text_context(None if vlm_text else source, source if vlm_text else None)
        defer = defer and self.config.subject_attention != "layered"  # layered needs every block's text K/V first
        text_kv = [DeferredKV(context, bias)] * len(self.blocks) if defer else \
            [blk.text_kv(context, bias) for blk in self.blocks]
        subject_kv = None
        if subject_latents is not None:
            if subject_mask is None:
                subject_mask = torch.ones(subject_latents.shape[:2], dtype=torch.bool, device=subject_latents.device)
            has = subject_mask.any(1)  # (B,) rows with at least one subject
            if has.any():
                # rows without subjects (guidance's unconditional branch, dropped references in
                # training) get exactly zero from the branch, so the stream skips them too
                rows = None if has.all() else has.nonzero().squeeze(1)
                g, gm = self._grounding(context, bias, kept, encoder_attention_mask, grounded_hidden_states,
                                        grounded_mask)
                if rows is not None:
                    subject_latents, subject_mask, g, gm = (v[rows] for v in (subject_latents, subject_mask, g, gm))
                s, sm = self.subject_tokens(subject_latents, subject_mask, g, gm)
                ctx, ctx_mask = s, sm
                if self.config.text_mode != "t5" or self.subject_stream.joins_text_context:
                    ctx, ctx_mask = torch.cat([s, g.to(s.dtype)], 1), torch.cat([sm, gm], 1)
                mask = None if ctx_mask.all() else ctx_mask
                rope = self.subject_rope(subject_latents, ctx.shape[1]) if self.config.subject_attention == "joint" \
                    else None
                if self.config.subject_attention == "layered":
                    subject_kv = self._layered_subject_kv(ctx, mask, rows, text_kv)
                elif defer:
                    subject_kv = [DeferredKV(ctx, mask, rows, rope)] * len(self.blocks)
                else:
                    subject_kv = [(*blk.subject_kv(ctx, mask, rope), rows) for blk in self.blocks]
                    if self.config.subject_attention == "joint":  # spread over the batch once, not every step
                        b = context.shape[0]
                        subject_kv = [(*joint_rows_to_batch(kv, b), None) for kv in subject_kv]
        return ConditionCache(text_kv, subject_kv, context.shape[0], context.dtype)

    def subject_rope(self, subject_latents: torch.Tensor, context_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE (cos, sin), each (1, Lc, 1, D), of the "joint" subject context: reference k sits at
        temporal position -(k + 1), a frame before the clip (RoPE sees only offsets, so this is
        Phantom's "extra frames" without depending on the clip's length, hence cacheable), its
        tokens at their (row, column) in the reference's token grid. Tokens past the K references
        (grounded text) and vision-feature references (no grid) get spatial position 0, the
        text no rotation at all."""
        k, r = subject_latents.shape[1], self.rope
        dev = r.freqs_cos.device
        if subject_latents.ndim == 6:  # (B, K, C, 1, h, w) latents: the patch grid, row-major
            _, p_h, p_w = self.config.patch_size
            gh, gw = subject_latents.shape[4] // p_h, subject_latents.shape[5] // p_w
            hh = torch.arange(gh, device=dev).repeat_interleave(gw).repeat(k)
            ww = torch.arange(gw, device=dev).repeat(k * gh)
        else:  # (B, K, L, D) features: L tokens without a grid, all at (0, 0)
            gh, gw = 1, 1
            hh = ww = torch.zeros(k * subject_latents.shape[2], dtype=torch.long, device=dev)
        if k + 1 > r.max_seq_len or max(gh, gw) > r.max_seq_len:
            raise InputError(f"{k} references of {gh} x {gw} tokens exceed the model's rope_max_seq_len {r.max_seq_len}")
        t = torch.arange(1, k + 1, device=dev).repeat_interleave(hh.numel() // k)  # |temporal position|
        cos_t, cos_h, cos_w = r.freqs_cos.split([r.t_dim, r.h_dim, r.w_dim], dim=1)
        sin_t, sin_h, sin_w = r.freqs_sin.split([r.t_dim, r.h_dim, r.w_dim], dim=1)
        cos = torch.cat([cos_t[t], cos_h[hh], cos_w[ww]], 1)  # (K*L, D); cos(-x) = cos(x)
        sin = torch.cat([-sin_t[t], sin_h[hh], sin_w[ww]], 1)  # sin(-x) = -sin(x)
        extra = context_length - cos.shape[0]  # grounded text tokens: identity rotation
        cos = torch.cat([cos, cos.new_ones(extra, cos.shape[1])])
        sin = torch.cat([sin, sin.new_zeros(extra, sin.shape[1])])
        return cos[None, :, None], sin[None, :, None]

    def _grounding(self, context: torch.Tensor, bias: torch.Tensor | None, kept: int | None,
                   encoder_attention_mask: torch.Tensor | None, grounded_hidden_states: torch.Tensor | None,
                   grounded_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The tokens that guide the subject stream (B, Lg, C) and their mask (B, Lg) bool."""
        b = context.shape[0]
        if self.config.text_mode == "t5":
            # the projected prompt, each distinct token once (collapsed padding: one pad token)
            if encoder_attention_mask is not None:
                gm = encoder_attention_mask[:, :kept]
            elif bias is not None:
                gm = bias[:, 0, 0] > float("-inf")
            else:
                gm = torch.ones(b, context.shape[1], dtype=torch.bool, device=context.device)
            return context, gm.bool()
        g = self.vlm_proj(grounded_hidden_states)
        gm = grounded_mask if grounded_mask is not None else torch.ones(b, g.shape[1], dtype=torch.bool, device=g.device)
        return g, gm.bool()

    def _layered_subject_kv(self, ctx: torch.Tensor, mask: torch.Tensor | None, rows: torch.Tensor | None,
                            text_kv: list[TextKV]) -> list:
        """Run the subject context through every block at t = 0; each block's branch keys/values."""
        if rows is not None:
            text_kv = [(k[rows], v[rows], None if bias is None else bias[rows]) for k, v, bias in text_kv]
        _, temb0 = self._time_embedding(torch.zeros(ctx.shape[0], device=ctx.device), ctx.dtype)
        out = []
        for blk, tkv in zip(self.blocks, text_kv):
            ctx, kv = blk.subject_layer(ctx, mask, temb0, tkv)
            out.append((*kv, rows))
        return out

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_hidden_states_image: torch.Tensor | None = None,
        return_dict: bool = True,
        attention_kwargs: dict[str, Any] | None = None,
        *,
        subject_latents: torch.Tensor | None = None,
        subject_mask: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        grounded_hidden_states: torch.Tensor | None = None,
        grounded_mask: torch.Tensor | None = None,
        condition_cache: ConditionCache | None = None,
    ) -> torch.Tensor | Transformer2DModelOutput:
        """Wan's forward (hidden_states (B, C, F, H, W), timestep (B,) or (B, L), T5 tokens) plus
        subject inputs, or a prebuilt `condition_cache` in place of all conditions."""
        if encoder_hidden_states_image is not None:
            raise InputError("encoder_hidden_states_image (Wan I2V) is not supported; pass references as subject_latents")
        cache = condition_cache or self._build_condition_cache(  # already inside forward's hook
            encoder_hidden_states, subject_latents, subject_mask, encoder_attention_mask,
            grounded_hidden_states, grounded_mask, defer=True)
        b, _, f, h, w = hidden_states.shape
        if cache.batch_size != b:
            raise InputError(f"condition cache was built for batch {cache.batch_size}, got latents of batch {b}")
        rotary_emb = self.rope(hidden_states)
        x = self.patch_embedding(hidden_states).flatten(2).transpose(1, 2).contiguous()  # (B, L, C)
        temb, timestep_proj = self._time_embedding(timestep, cache.dtype)
        for i, block in enumerate(self.blocks):
            skv = cache.subject_kv[i] if cache.subject_kv is not None else None
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                x = self._gradient_checkpointing_func(block, x, timestep_proj, rotary_emb, cache.text_kv[i], skv)
            else:
                x = block(x, timestep_proj, rotary_emb, cache.text_kv[i], skv)
        out = self._unpatchify_output(x, temb, (b, f, h, w))  # (B, C, F, H, W)
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def _unpatchify_output(self, x: torch.Tensor, temb: torch.Tensor, size: tuple[int, int, int, int]) -> torch.Tensor:
        """Wan's output head: modulated norm, projection, tokens (B, L, C) -> latents (B, C, F, H, W)
        of `size` = (B, F, H, W) in latent units (shared with `models.phantom`)."""
        b, f, h, w = size
        p_t, p_h, p_w = self.config.patch_size
        if temb.ndim == 3:
            shift, scale = (self.scale_shift_table.unsqueeze(0) + temb.unsqueeze(2)).chunk(2, dim=2)
            shift, scale = shift.squeeze(2), scale.squeeze(2)
        else:
            shift, scale = (self.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
        x = (self.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
        x = self.proj_out(x)
        x = x.reshape(b, f // p_t, h // p_h, w // p_w, p_t, p_h, p_w, -1)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)  # (B, C, F, H, W)

    def _time_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Wan's time embedding: temb (B, C) or (B, L, C) and its 6-way projection."""
        ce = self.condition_embedder
        seq_len = timestep.shape[1] if timestep.ndim == 2 else None
        t = ce.timesteps_proj(timestep.flatten())
        if seq_len is not None:
            t = t.unflatten(0, (-1, seq_len))
        t = t.to(next(iter(ce.time_embedder.parameters())).dtype)
        temb = ce.time_embedder(t).to(dtype)
        proj = ce.time_proj(ce.act_fn(temb))
        return temb, proj.unflatten(2, (6, -1)) if seq_len is not None else proj.unflatten(1, (6, -1))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_wan(cls, wan: Any, frozen_dtype: torch.dtype | None = None,
                 **subject_config: Any) -> "IDCrafterTransformer3DModel":
        """Build from a diffusers `WanTransformer3DModel` (instance, or a local transformer or Wan
        pipeline folder, sharded or not): every base weight is loaded strictly; new modules are
        added with zero output gates, so the result equals Wan (with `subject_attention="cross"`
        the branch's keys/values start as copies of the text cross-attention's).

        `frozen_dtype`: dtype of the Wan weights (and the new modules) in the result, modules
        in `_keep_in_fp32_modules` excepted; default: the dtype Wan's weights are stored in.
        Built on the meta device and loaded straight into that dtype (`idcrafter.models.wan`)."""
        from idcrafter.models.wan import from_wan

        return from_wan(cls, wan, frozen_dtype, **subject_config)

    def new_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters that are not Wan's (what `from_wan` adds)."""
        return {n: p for n, p in self.named_parameters()
                if n.startswith(NEW_MODULE_PREFIXES) or ".subject_branch." in n}
