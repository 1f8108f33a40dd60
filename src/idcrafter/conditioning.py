"""Condition encoding, once for inference and every trainer: prompts + references -> model inputs.

    enc = ConditionEncoder(pipe, device)
    cond = enc.encode(captions, ref_images)                   # ConditionInputs, (B, ...) rows
    uncond = enc.encode([""] * B, None)                       # guidance's unconditional rows
    cache = cond.cat(uncond).build_cache(pipe.transformer)    # what sampling reads at every step
    v = pipe.transformer(x, t, **cond.model_kwargs()).sample  # the same conditions, with gradients

The frozen encoders (text encoder, VLM, codec / vision tower) run without gradients: their outputs
are plain tensors. Everything the *transformer* computes from them (text keys/values, the subject
stream) is done by `build_cache` or by the transformer's forward, under whatever grad mode the
caller is in: rollouts build the cache under `no_grad`, a trainer passes `model_kwargs()` to the
forward so gradients reach the subject stream and the projections.

How the parts are encoded (`IDCrafterPipeline.encode_conditions`, SFT, GRPO, NFT and DPO all use
this one path):
- prompts through the frozen text encoder (padded to `max_length`, padded positions zeroed), one
  caption at a time, so a caption's states are bitwise the same whatever else is in the batch;
  kept in an LRU cache (trimmed to the caption's real length, on the CPU);
- references through the codec's `encode_image` (or the vision subject encoder when the
  transformer reads vision features) -> (B, K, C, 1, h, w), padded with `subject_mask` False;
- with a VLM (`text_mode` vlm / t5+vlm), grounded tokens from the prompt and the references.
A dropped prompt is the empty prompt ""; dropped references are zeros with `subject_mask` all
False (what guidance's unconditional rows get).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from idcrafter.errors import InputError

if TYPE_CHECKING:
    from idcrafter.models.transformer import ConditionCache
    from idcrafter.pipeline import IDCrafterPipeline


def _pad_to(x: torch.Tensor, dim: int, size: int, value: Any = 0) -> torch.Tensor:
    if x.shape[dim] >= size:
        return x
    shape = list(x.shape)
    shape[dim] = size - x.shape[dim]
    return torch.cat([x, x.new_full(shape, value)], dim=dim)


@dataclass
class ConditionInputs:
    """B rows of transformer conditions (module docstring).

    text: (B, L, D) float32 prompt states, zeros past each prompt; text_mask: (B, L) bool.
    subjects: (B, K, C, 1, h, w) reference latents (or (B, K, L, D) vision features), zeros for
        absent subjects; subject_mask: (B, K) bool.
    grounded / grounded_mask: (B, Lg, D) / (B, Lg) VLM tokens, or None without a VLM.
    """

    text: torch.Tensor
    text_mask: torch.Tensor
    subjects: torch.Tensor
    subject_mask: torch.Tensor
    grounded: torch.Tensor | None = None
    grounded_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.text.shape[0])

    def model_kwargs(self, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """Keyword arguments of `IDCrafterTransformer3DModel.forward` (floats cast to `dtype`)."""
        cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
        out: dict[str, Any] = dict(encoder_hidden_states=cast(self.text), encoder_attention_mask=self.text_mask,
                                   subject_latents=cast(self.subjects), subject_mask=self.subject_mask)
        if self.grounded is not None:
            out.update(grounded_hidden_states=cast(self.grounded), grounded_mask=self.grounded_mask)
        return out

    def build_cache(self, transformer) -> "ConditionCache":
        """The transformer's condition cache of these rows (gradients follow the caller's mode)."""
        kw = self.model_kwargs(transformer.dtype)
        return transformer.build_condition_cache(kw["encoder_hidden_states"], kw["subject_latents"],
                                                 kw["subject_mask"], kw["encoder_attention_mask"],
                                                 kw.get("grounded_hidden_states"), kw.get("grounded_mask"))

    def cat(self, other: "ConditionInputs") -> "ConditionInputs":
        """[self; other] rows, padding K (and the VLM length) of the shorter one."""
        k = max(self.subjects.shape[1], other.subjects.shape[1])
        subj = torch.cat([_pad_to(self.subjects, 1, k), _pad_to(other.subjects, 1, k)])
        smask = torch.cat([_pad_to(self.subject_mask, 1, k, False), _pad_to(other.subject_mask, 1, k, False)])
        g = gm = None
        if (self.grounded is None) != (other.grounded is None):
            raise InputError("cannot join conditions with and without VLM tokens")
        if self.grounded is not None:
            n = max(self.grounded.shape[1], other.grounded.shape[1])
            g = torch.cat([_pad_to(self.grounded, 1, n), _pad_to(other.grounded, 1, n)])
            gm = torch.cat([_pad_to(self.grounded_mask, 1, n, False), _pad_to(other.grounded_mask, 1, n, False)])
        return ConditionInputs(torch.cat([self.text, other.text]), torch.cat([self.text_mask, other.text_mask]),
                               subj, smask, g, gm)

    def select(self, rows: Sequence[int] | torch.Tensor) -> "ConditionInputs":
        """The given rows, in that order."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        pick = lambda t: None if t is None else t[idx.to(t.device)]  # noqa: E731
        return ConditionInputs(pick(self.text), pick(self.text_mask), pick(self.subjects), pick(self.subject_mask),
                               pick(self.grounded), pick(self.grounded_mask))

    def to(self, device: torch.device | str) -> "ConditionInputs":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, text=move(self.text), text_mask=move(self.text_mask), subjects=move(self.subjects),
                       subject_mask=move(self.subject_mask), grounded=move(self.grounded),
                       grounded_mask=move(self.grounded_mask))


class ConditionEncoder:
    """Encodes prompts and prepared references (uint8 canvases at the pipeline's reference size)
    into `ConditionInputs` with the pipeline's frozen encoders (module docstring)."""

    def __init__(self, pipe: "IDCrafterPipeline", device: torch.device | str | None = None, cache_size: int = 4096):
        self.pipe = pipe
        self.device = torch.device(device) if device is not None else pipe.transformer.device
        self.text_encoder = pipe.prompt_encoder
        self.cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_size = int(cache_size)
        self.hits = self.misses = 0
        cfg = pipe.transformer.config
        self.uses_vlm = pipe.vlm is not None and cfg.text_mode != "t5"
        self.uses_features = bool(cfg.subject_feature_dim)
        if self.uses_features and pipe.subject_encoder is None:
            raise InputError("this transformer reads vision features of references but the pipeline has no "
                             "subject_encoder: pass one (a CLIP/SigLIP/DINOv2 vision model)")

    # ---------------------------------------------------------------- text
    @torch.no_grad()
    def text(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, L, D) float32, mask (B, L) bool), L = max_length, from the cache if possible."""
        captions = list(captions)
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
        dim = self.text_encoder.dim
        hidden = torch.zeros(len(captions), length, dim)
        mask = torch.zeros(len(captions), length, dtype=torch.bool)
        for b, c in enumerate(captions):
            s = found[c][:length]
            hidden[b, : len(s)] = s
            mask[b, : len(s)] = True
        return hidden.to(self.device), mask.to(self.device)

    # ---------------------------------------------------------------- references
    @torch.no_grad()
    def encode_references(self, images: Sequence[np.ndarray | Sequence[np.ndarray] | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, its prepared references ((K_b, R, R, 3) uint8, a list of (R, R, 3), or None for
        none) -> latents (B, K, C, 1, h, w) (vision features (B, K, L, D)) and mask (B, K) bool."""
        rows = [np.zeros((0, 1, 1, 3), np.uint8) if r is None or len(r) == 0 else np.stack(list(r)) for r in images]
        ks = [len(r) for r in rows]
        b, k = len(rows), max(ks + [1])
        mask = torch.zeros(b, k, dtype=torch.bool)
        for i, n in enumerate(ks):
            mask[i, :n] = True
        valid = [r for r in rows if len(r)]
        if not valid:  # no row has references: shapes from a probe of the encoder
            probe = np.full((1, self.pipe.config.reference_size, self.pipe.config.reference_size, 3), 255, np.uint8)
            feats = self._encode(probe)
            return feats.new_zeros((b, k, *feats.shape[1:])).to(self.device), mask.to(self.device)
        feats = self._encode(np.concatenate(valid))  # (sum K_b, ...)
        out = feats.new_zeros((b * k, *feats.shape[1:]))
        out[mask.flatten().to(out.device)] = feats
        return out.unflatten(0, (b, k)).to(self.device), mask.to(self.device)

    def _encode(self, images: np.ndarray) -> torch.Tensor:
        """(N, R, R, 3) uint8 -> codec latents (N, C, 1, h, w) or vision tokens (N, L, D), float32."""
        if self.uses_features:
            from idcrafter.encoders.subject import VisionSubjectEncoder

            enc = VisionSubjectEncoder(self.pipe.subject_encoder, self.pipe.config.subject_image_mean,
                                       self.pipe.config.subject_image_std)
            return enc.encode(images).float()
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        return self.pipe.codec.encode_image(x.to(self.device)).float()

    # ---------------------------------------------------------------- all inputs
    @torch.no_grad()
    def encode(self, captions: Sequence[str], ref_images: Sequence[Any] | None,
               drop_text: torch.Tensor | None = None, drop_refs: torch.Tensor | None = None,
               subjects: tuple[torch.Tensor, torch.Tensor] | None = None) -> ConditionInputs:
        """Conditions of B rows. `ref_images`: per row its prepared references (see `references`;
        None = no references for any row). `drop_*` (B,) bool apply guidance dropout. `subjects`:
        precomputed (latents, mask) of `encode_references(ref_images)`, reused (the evaluator does)."""
        captions = list(captions)
        b = len(captions)
        if ref_images is not None and len(ref_images) != b:
            raise InputError(f"{b} prompt(s) but {len(ref_images)} reference set(s)")
        drop_text = torch.zeros(b, dtype=torch.bool) if drop_text is None else drop_text.cpu().bool()
        drop_refs = torch.zeros(b, dtype=torch.bool) if drop_refs is None else drop_refs.cpu().bool()
        captions = ["" if d else c for c, d in zip(captions, drop_text.tolist())]
        hidden, mask = self.text(captions)
        images = [None] * b if ref_images is None else list(ref_images)
        subj, smask = self.encode_references(images) if subjects is None else subjects
        keep = (~drop_refs).to(subj.device)
        subj = subj * keep.view(-1, *([1] * (subj.ndim - 1))).to(subj.dtype)
        smask = smask & keep[:, None]
        g = gm = None
        if self.uses_vlm:
            vlm_images = [[] if d or r is None else [np.asarray(i) for i in r] for r, d in zip(images, drop_refs.tolist())]
            g, gm = self.pipe.grounder.encode(captions, vlm_images)
            g, gm = g.float().to(self.device), gm.to(self.device)
        return ConditionInputs(hidden, mask, subj, smask, g, gm)


def conditioned_velocity(model: torch.nn.Module, cond: ConditionInputs, uncond: ConditionInputs | None,
                         guidance_scale: float, dtype: torch.dtype = torch.float32):
    """`velocity_fn(x, sigma) -> v` of `model` (the transformer, or its DDP/FSDP wrapper) under
    these conditions, computed by the model's forward from the inputs (no prebuilt cache), so
    gradients reach every trainable weight, the subject stream and the context projections
    included. Same maths, and the same numbers, as the pipeline's cached velocity for the same
    rows (`IDCrafterPipeline.velocity_fn`); ``uncond`` is needed when guidance_scale != 1."""
    from idcrafter import sampling

    if guidance_scale != 1.0 and uncond is None:
        raise InputError("guidance needs the unconditional rows' inputs (uncond)")
    both = cond if uncond is None else cond.cat(uncond)

    def model_fn(x: torch.Tensor, sigma: torch.Tensor, branches: str) -> torch.Tensor:
        inputs = cond if branches == "cond" else both
        t = sampling.sigma_to_timestep(sigma).to(x.device)
        return model(x.to(dtype), t, **inputs.model_kwargs(dtype)).sample.float()

    return lambda x, sigma: sampling.guided_velocity(model_fn, x, sigma, guidance_scale)
