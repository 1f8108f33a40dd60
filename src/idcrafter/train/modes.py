"""Choosing what trains, and exporting a clean pipeline (the model itself is built by
`idcrafter.builder`, the one pipeline builder).

Training modes (`train.mode`):
- `full`: every transformer weight trains (SpriteWorld: the model is trained from scratch).
- `adapters`: only the modules Wan does not have (`model.new_parameters()`: subject embedding,
  subject stream, subject branches, VLM projections); the Wan base is frozen.
- `lora`: peft LoRA (rank r, alpha) on the base's `train.lora_targets` (Wan's self/cross-attention
  projections and FFN), injected with diffusers' `add_adapter` so `disable_adapters()` gives back
  the base (the RL trainer's KL reference), plus full training of the new modules.

Frozen parts (text encoder, VLM, VAE, frozen base weights) are kept in `model.frozen_dtype`;
trainable weights are always float32 (mixed precision comes from autocast).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from idcrafter.builder import build_codec, build_model_pipeline, build_text_encoder, caption_vocabulary  # noqa: F401
from idcrafter.errors import InputError

if TYPE_CHECKING:
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.train.config import TrainConfig

ADAPTER_NAME = "default"


def setup_trainable(model: nn.Module, cfg: "TrainConfig") -> dict[str, nn.Parameter]:
    """Freeze / unfreeze by `cfg.mode` (module docstring); trainable weights become float32.
    Returns {name: parameter} of what trains (names as in `model.named_parameters()`)."""
    new = set(model.new_parameters())
    if cfg.mode == "lora":
        from peft import LoraConfig

        model.requires_grad_(False)
        model.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, init_lora_weights=True,
                                     target_modules=list(cfg.lora_targets)), adapter_name=ADAPTER_NAME)
    for name, p in model.named_parameters():
        if cfg.mode == "full":
            p.requires_grad_(True)
        elif cfg.mode == "adapters":
            p.requires_grad_(name in new)
        else:
            p.requires_grad_(name in new or "lora_" in name)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if not trainable:
        raise InputError(f"train.mode={cfg.mode} leaves nothing to train (check train.lora_targets)")
    for p in trainable.values():
        if p.dtype != torch.float32:
            p.data = p.data.float()
    return trainable


def merge_lora_state(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A state dict with LoRA folded in and peft's naming removed (loads into a plain model).

    For every `X.base_layer.weight` with `X.lora_A.<a>.weight` (r, in) and `X.lora_B.<a>.weight`
    (out, r): X.weight = W + scale * B @ A (scale = lora_alpha / r), computed out of place in
    float32, so the training weights are untouched. Works on a live model's state dict and on a
    gathered one (FSDP / DeepSpeed `accelerator.get_state_dict`) alike.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            mod = key.split(".base_layer.")[0]
            key = key.replace(".base_layer.", ".")
            if key.endswith(".weight"):
                for a_key in [k for k in state if k.startswith(mod + ".lora_A.") and k.endswith(".weight")]:
                    b = state[a_key.replace(".lora_A.", ".lora_B.")].float()
                    value = (value.float() + scale * (b @ state[a_key].float().to(b.device))).to(value.dtype)
        out[key] = value
    return out


def has_lora(state_or_model: dict | nn.Module) -> bool:
    keys = state_or_model.keys() if isinstance(state_or_model, dict) else dict(state_or_model.named_parameters())
    return any(".lora_" in k for k in keys)


@contextmanager
def export_view(pipe: "IDCrafterPipeline", state: dict[str, torch.Tensor] | None = None,
                lora_scale: float = 1.0) -> Iterator["IDCrafterPipeline"]:
    """The pipeline ready for `save_pretrained`, restored afterwards.

    Without `state` and LoRA, that is the pipeline itself. Otherwise a plain transformer built
    on the meta device takes `state` (default: the live model's), LoRA merged, and is swapped in.
    """
    model = pipe.transformer
    if state is None and not has_lora(model):
        yield pipe
        return
    from accelerate import init_empty_weights

    state = model.state_dict() if state is None else state
    with init_empty_weights():
        clean = type(model).from_config(model.config)
    merged = merge_lora_state(state, lora_scale) if has_lora(state) else state
    clean.load_state_dict({k: v.detach().cpu() for k, v in merged.items()}, strict=True, assign=True)
    pipe.register_modules(transformer=clean)
    try:
        yield pipe
    finally:
        pipe.register_modules(transformer=model)
