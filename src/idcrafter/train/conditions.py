"""Model inputs of a training batch: prompt states (cached), reference latents, dropout.

Conditions are encoded exactly as `IDCrafterPipeline.encode_conditions` encodes them at
inference, so training and sampling see the same inputs:
- prompts through the pipeline's frozen text encoder (`TextEncoder.encode`: padded to
  `max_length`, padded positions zeroed). States are cached per caption (LRU, trimmed to the
  caption's real length, stored on the CPU): the frozen encoder is a pure function of the text.
  Each caption is encoded alone (batch of one), so its states are bitwise the same whether they
  come from the cache or not, whatever else was in the batch (exact resume);
- references through the codec's `encode_image` (or the vision subject encoder when the
  transformer reads vision features) -> (B, K, C, 1, h, w), padded with `subject_mask` False;
- with a VLM (`text_mode` vlm / t5+vlm), grounded tokens from the prompt and the references.
Guidance dropout: a dropped prompt becomes the empty prompt "" (the pipeline's default negative
prompt); dropped references become zeros with `subject_mask` all False (what the pipeline's
unconditional rows get).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.train.data import Batch


class ConditionEncoder:
    """Turns a `Batch` (+ dropout flags) into keyword arguments of the transformer's forward."""

    def __init__(self, pipe: "IDCrafterPipeline", device: torch.device, cache_size: int = 4096):
        self.pipe = pipe
        self.device = device
        self.text_encoder = pipe.prompt_encoder
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_size = int(cache_size)
        self.hits = self.misses = 0
        cfg = pipe.transformer.config
        self.uses_vlm = pipe.vlm is not None and cfg.text_mode != "t5"
        self.uses_features = bool(cfg.subject_feature_dim)

    # ---------------------------------------------------------------- text
    @torch.no_grad()
    def text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, L, D) float32, mask (B, L) bool), L = max_length, from the cache if possible."""
        found: dict[str, torch.Tensor] = {}
        for c in dict.fromkeys(captions):
            if c in self.cache:
                self.cache.move_to_end(c)
                found[c] = self.cache[c]
        missing = [c for c in dict.fromkeys(captions) if c not in found]
        self.misses += len(missing)
        self.hits += len(captions) - len(missing)
        for c in missing:  # one at a time: states never depend on which captions share a batch
            hidden, mask = self.text_encoder.encode([c])  # (1, L, D), (1, L)
            found[c] = hidden[0, : int(mask.sum())].cpu().clone()  # (L_c, D): the caption's real tokens
            if self.cache_size > 0:
                self.cache[c] = found[c]
                if len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
        length = self.text_encoder.max_length
        rows = [found[c] for c in captions]
        dim = rows[0].shape[-1]
        hidden = torch.zeros(len(captions), length, dim)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for b, s in enumerate(rows):
            hidden[b, : len(s)] = s[:length]
            mask[b, : len(s)] = True
        return hidden.to(self.device), mask.to(self.device)

    # ---------------------------------------------------------------- references
    @torch.no_grad()
    def references(self, batch: "Batch") -> torch.Tensor:
        """Reference latents (B, K, C, 1, h, w) (zeros for padding), or vision features (B, K, L, D)."""
        b, k = batch.ref_mask.shape
        valid = batch.ref_mask.flatten()  # (B*K,)
        if self.uses_features:
            from idcrafter.encoders.subject import VisionSubjectEncoder

            enc = VisionSubjectEncoder(self.pipe.subject_encoder, self.pipe.config.subject_image_mean,
                                       self.pipe.config.subject_image_std)
            imgs = np.concatenate([r for r in batch.ref_images])  # (sum K_b, R, R, 3)
            feats = enc.encode(imgs).float()  # (sum K_b, L, D)
        else:
            imgs = batch.refs.flatten(0, 1)[valid].to(self.device)  # (sum K_b, 3, R, R)
            feats = self.pipe.codec.encode_image(imgs).float()  # (sum K_b, C, 1, h, w)
        out = feats.new_zeros((b * k, *feats.shape[1:]))
        out[valid.to(out.device)] = feats.to(out.device)
        return out.unflatten(0, (b, k)).to(self.device)

    # ---------------------------------------------------------------- all inputs
    def model_inputs(self, batch: "Batch", drop_text: torch.Tensor, drop_refs: torch.Tensor,
                     subject_latents: torch.Tensor | None = None) -> dict[str, Any]:
        """Forward kwargs with dropout applied (drop_* (B,) bool). `subject_latents` may be passed
        precomputed (the evaluator reuses them)."""
        captions = ["" if d else c for c, d in zip(batch.captions, drop_text.tolist())]
        hidden, mask = self.text(captions)
        subj = self.references(batch) if subject_latents is None else subject_latents
        keep = (~drop_refs).to(self.device)
        subj = subj * keep.view(-1, *([1] * (subj.ndim - 1))).to(subj.dtype)
        inputs: dict[str, Any] = dict(encoder_hidden_states=hidden, encoder_attention_mask=mask,
                                      subject_latents=subj, subject_mask=batch.ref_mask.to(self.device) & keep[:, None])
        if self.uses_vlm:
            images = [[] if d else list(r) for r, d in zip(batch.ref_images, drop_refs.tolist())]
            with torch.no_grad():
                g, gm = self.pipe.grounder.encode(captions, images)
            inputs.update(grounded_hidden_states=g.float().to(self.device), grounded_mask=gm.to(self.device))
        return inputs
