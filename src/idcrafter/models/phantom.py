"""PhantomTransformer3DModel: the Phantom-style peer on our Wan backbone (issue 15).

Phantom (Phantom-Wan, `phantom_wan/subject2video.py`) conditions a Wan text-to-video DiT on
references by putting them *into the video*: each reference, padded to the video's size, is
encoded by the VAE as one latent frame, and the K reference frames are concatenated after the
video's frames along time. The whole sequence (video + reference tokens) goes through every
block's self-attention at every denoising step, so nothing about the references can be cached:
they attend to the noisy video and the video attends to them. The output over reference frames
is discarded. Sampling uses three passes per step (`idcrafter.peer.phantom_guidance`).

What is the same as ours (`IDCrafterTransformer3DModel`): every Wan weight and its maths (patch
embedding, RoPE, blocks, text cross-attention with cached K/V, output head); the peer is a
subclass that removes the subject stream and branches and changes how references enter.

How it departs from Phantom's published code, and why:
- absent references (fewer subjects than the batch's widest row, dropped references in training,
  guidance's unconditional pass) are *masked out of the self-attention keys*; Phantom feeds zero
  latents there. Masking makes a row's output independent of the padding of other rows in its
  batch (SpriteWorld batches mix 1-4 subjects); the frames are still carried, so the compute
  is that of Phantom's three full passes;
- reference frames get the video's timestep, as in Phantom's sampler (one scalar t per sample);
  only one timestep per sample is accepted;
- the reference must have the video's latent size: the `sprites-phantom` recipe renders
  references at the frame size (Phantom resizes and white-pads them to the video size);
- Phantom's training code is unpublished: SFT here is our rectified-flow loss on video frames
  only (the trainer is unchanged, the forward returns video frames only).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin  # noqa: F401 - diffusers' loader looks the base classes up in this module
from diffusers.models.transformers.transformer_wan import WanTransformerBlock
from torch import nn

from idcrafter.errors import InputError
from idcrafter.models.attention import apply_rope, merge_heads
from idcrafter.models.transformer import ConditionCache, IDCrafterBlock, IDCrafterTransformer3DModel


@dataclass
class PhantomCache(ConditionCache):
    """The static part of the peer's conditions: each block's text K/V (as ours) and the
    reference frames, which are *not* static inside the model and go through every step.

    references: (B, C, K, h, w) reference latents arranged as K frames, or None (no row has one).
    reference_mask: (B, K) bool, False for absent references (masked out of attention keys).
    """

    references: torch.Tensor | None = None
    reference_mask: torch.Tensor | None = None


class PhantomBlock(IDCrafterBlock):
    """A Wan block without a subject branch whose self-attention takes a key mask.

    The key mask travels as a third element of `rotary_emb` (cos, sin, mask), the one per-sequence
    input the inherited `forward` hands to `self_attention` untouched; `subject_kv` is always None.
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: str, cross_attn_norm: bool, eps: float):
        WanTransformerBlock.__init__(self, dim, ffn_dim, num_heads, qk_norm, cross_attn_norm, eps, None)

    def self_attention(self, x: torch.Tensor, rotary_emb, subject_kv=None) -> torch.Tensor:
        """Wan's self-attention over video + reference tokens x (B, L, C); mask (B, 1, 1, L) or None."""
        cos, sin, key_mask = rotary_emb
        a = self.attn1
        q = a.norm_q(a.to_q(x)).unflatten(2, (a.heads, -1))  # (B, L, H, D)
        k = a.norm_k(a.to_k(x)).unflatten(2, (a.heads, -1))
        v = a.to_v(x).unflatten(2, (a.heads, -1))
        qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = F.scaled_dot_product_attention(qr.transpose(1, 2), kr.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=key_mask)
        return a.to_out[1](a.to_out[0](merge_heads(out).type_as(q)))


class PhantomTransformer3DModel(IDCrafterTransformer3DModel):
    """Wan DiT with references as extra clean latent frames (module docstring). Same config and
    forward arguments as `IDCrafterTransformer3DModel`; the subject-stream settings are unused."""

    _no_split_modules = ["PhantomBlock"]
    #: the pipeline class that samples this model (three-pass guidance), resolved by `assemble_pipeline`
    pipeline_class = "idcrafter.peer:PhantomPipeline"

    @functools.wraps(IDCrafterTransformer3DModel.__init__)  # the config signature diffusers reads
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        c = self.config
        dim = c.num_attention_heads * c.attention_head_dim
        self.blocks = nn.ModuleList(
            PhantomBlock(dim, c.ffn_dim, c.num_attention_heads, c.qk_norm, c.cross_attn_norm, c.eps)
            for _ in range(c.num_layers))
        # references enter as frames: no subject stream, no branch (the parameters are Wan's only)
        self.subject_embed = None
        self.subject_stream = None
        if c.subject_feature_dim or c.text_mode != "t5":
            raise InputError("the Phantom peer reads codec latents of references and T5 text only")

    # ------------------------------------------------------------------ conditions
    def _build_condition_cache(self, encoder_hidden_states, subject_latents, subject_mask, encoder_attention_mask,
                               grounded_hidden_states, grounded_mask, defer: bool = False) -> PhantomCache:
        text = super()._build_condition_cache(encoder_hidden_states, None, None, encoder_attention_mask,
                                              grounded_hidden_states, grounded_mask, defer=defer)
        refs = mask = None
        if subject_latents is not None:
            if subject_latents.ndim != 6 or subject_latents.shape[3] != 1:
                raise InputError(f"subject_latents must be (B, K, C, 1, h, w), got shape {tuple(subject_latents.shape)}")
            b, k = subject_latents.shape[:2]
            if k > self.config.max_subjects:
                raise InputError(f"{k} references given; this model supports at most {self.config.max_subjects}")
            mask = torch.ones(b, k, dtype=torch.bool, device=subject_latents.device) if subject_mask is None \
                else subject_mask.bool()
            if mask.any():
                refs = subject_latents[:, :, :, 0].transpose(1, 2)  # (B, C, K, h, w): K frames after the video's
            else:
                mask = None  # no row has references: pure text-to-video, no frames appended
        return PhantomCache(text.text_kv, None, text.batch_size, text.dtype, refs, mask)

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
        """Velocity of the video frames (B, C, F, H, W); the reference frames are appended along
        time inside, processed by every block, and their output dropped."""
        if encoder_hidden_states_image is not None:
            raise InputError("encoder_hidden_states_image (Wan I2V) is not supported; pass references as subject_latents")
        cache = condition_cache or self._build_condition_cache(
            encoder_hidden_states, subject_latents, subject_mask, encoder_attention_mask,
            grounded_hidden_states, grounded_mask, defer=True)
        if not isinstance(cache, PhantomCache):
            raise InputError("this condition cache was not built by the Phantom peer (build_condition_cache)")
        b, _, f, h, w = hidden_states.shape
        if cache.batch_size != b:
            raise InputError(f"condition cache was built for batch {cache.batch_size}, got latents of batch {b}")
        if timestep.ndim != 1:
            raise InputError("the Phantom peer takes one timestep per sample (shape (B,)), as Phantom's sampler does")
        x, key_mask = self._with_references(hidden_states, cache)  # (B, C, F + K, H, W), (B, 1, 1, L) or None
        cos, sin = self.rope(x)
        tokens = self.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()  # (B, L, C)
        temb, timestep_proj = self._time_embedding(timestep, cache.dtype)
        rotary_emb = (cos, sin, key_mask)
        for i, block in enumerate(self.blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                tokens = self._gradient_checkpointing_func(block, tokens, timestep_proj, rotary_emb, cache.text_kv[i], None)
            else:
                tokens = block(tokens, timestep_proj, rotary_emb, cache.text_kv[i], None)
        out = self._unpatchify_output(tokens, temb, (b, x.shape[2], h, w))[:, :, :f]  # video frames only
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)

    def _with_references(self, video: torch.Tensor, cache: PhantomCache) -> tuple[torch.Tensor, torch.Tensor | None]:
        """[video frames; reference frames] along time and the boolean key mask of absent
        references' tokens ((B, 1, 1, L), None when every token is valid)."""
        if cache.references is None:
            return video, None
        refs = cache.references
        if refs.shape[0] != video.shape[0] or refs.shape[1] != video.shape[1] or refs.shape[3:] != video.shape[3:]:
            raise InputError(f"reference latents {tuple(refs.shape)} do not fit video latents {tuple(video.shape)}: "
                             "Phantom encodes references at the video's size (set reference_size to the frame size)")
        x = torch.cat([video, refs.to(video.dtype)], dim=2)  # (B, C, F + K, H, W)
        mask = cache.reference_mask
        if bool(mask.all()):
            return x, None
        p_t, p_h, p_w = self.config.patch_size
        per_frame = (video.shape[3] // p_h) * (video.shape[4] // p_w)
        if p_t != 1:
            raise InputError("the Phantom peer needs a temporal patch of 1 (one reference per latent frame)")
        video_tokens = torch.ones(video.shape[0], video.shape[2] * per_frame, dtype=torch.bool, device=video.device)
        valid = torch.cat([video_tokens, mask.to(video.device).repeat_interleave(per_frame, dim=1)], dim=1)  # (B, L)
        return x, valid[:, None, None, :]
