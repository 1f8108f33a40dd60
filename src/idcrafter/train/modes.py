"""Building the model for training, choosing what trains, and exporting a clean pipeline.

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

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import torch
from torch import nn

from idcrafter.errors import InputError

if TYPE_CHECKING:
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.train.config import ModelConfig, TrainConfig

ADAPTER_NAME = "default"


def caption_vocabulary() -> list[str]:
    """Every word SpriteWorld captions use (plus the tiny tokenizer's defaults), so the tiny text
    encoder never maps a caption word to <unk>."""
    from idcrafter.encoders.text import DEFAULT_WORDS
    from idcrafter.world import identity as idn
    from idcrafter.world.captions import HAIR_TEMPLATES, PAIR_PHRASES, PATTERN_WORDS, SCENES, SOLO_PHRASES

    words = list(DEFAULT_WORDS)
    for palette in (idn.HAIR_COLOURS, idn.SKINS, idn.CLOTH_COLOURS, idn.PANTS_COLOURS):
        words += [name for name, _ in palette]
    words += idn.HEAD_SHAPES + idn.HAIR_STYLES + idn.EYES + idn.ACCESSORIES + idn.PATTERNS
    phrases = list(HAIR_TEMPLATES.values()) + list(PAIR_PHRASES.values()) + list(PATTERN_WORDS.values())
    phrases += list(SCENES.values()) + list(SOLO_PHRASES.values())
    words += [w for p in phrases for w in p.replace("{c}", " ").replace("-", " - ").split()]
    return list(dict.fromkeys(w.lower() for w in words))


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, name, None)
    if not isinstance(dt, torch.dtype):
        raise InputError(f"model.frozen_dtype must be a torch dtype name (float32, bfloat16), got {name!r}")
    return dt


def build_text_encoder(cfg: "ModelConfig"):
    from idcrafter.encoders.text import TextEncoder

    if cfg.text_encoder == "tiny":
        return TextEncoder.tiny(cfg.text_dim, vocab_words=caption_vocabulary(), max_length=cfg.text_max_length,
                                seed=cfg.seed)
    return TextEncoder.from_pretrained(cfg.text_encoder, max_length=cfg.text_max_length, dtype=_dtype(cfg.frozen_dtype))


def build_codec(cfg: "ModelConfig"):
    from idcrafter.models.codecs import PixelCodec, WanVAECodec

    if cfg.codec == "pixel":
        return PixelCodec(3, cfg.codec_patch)
    if cfg.codec == "wan-vae":
        if not cfg.codec_path:
            raise InputError("model.codec=wan-vae needs model.codec_path (a Wan VAE or Wan pipeline folder)")
        return WanVAECodec.from_pretrained(cfg.codec_path, dtype=_dtype(cfg.frozen_dtype))
    raise InputError(f"model.codec must be 'pixel' or 'wan-vae', got {cfg.codec!r}")


def build_model_pipeline(cfg: "ModelConfig") -> "IDCrafterPipeline":
    """The pipeline to train: from a saved pipeline, from local Wan weights, or random (seeded)."""
    from idcrafter.pipeline import IDCrafterPipeline, build_pipeline

    if cfg.init_pipeline:
        path = Path(cfg.init_pipeline)
        if not (path / "model_index.json").is_file():
            raise InputError(f"model.init_pipeline={path} is not a pipeline folder (no model_index.json)")
        return IDCrafterPipeline.from_pretrained(str(path), local_files_only=True)
    codec, text = build_codec(cfg), build_text_encoder(cfg)
    vlm = None
    if cfg.vlm_path == "tiny":  # random frozen Qwen2.5-VL over SpriteWorld's words (ablations)
        from idcrafter.encoders.vlm import VLMGrounder

        vlm = VLMGrounder.tiny(cfg.text_dim, vocab_words=caption_vocabulary(), seed=cfg.seed + 1)
    elif cfg.vlm_path:
        from idcrafter.encoders.vlm import VLMGrounder

        vlm = VLMGrounder.from_pretrained(cfg.vlm_path, dtype=_dtype(cfg.frozen_dtype))
    sizes = dict(default_height=cfg.height, default_width=cfg.width, default_frames=cfg.frames,
                 reference_size=cfg.reference_size, shift=cfg.shift)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.wan_path:
            return _pipeline_from_wan(cfg, codec, text, vlm, sizes)
        return build_pipeline(cfg.preset, codec, text, vlm, **sizes, **cfg.preset_overrides)


def _pipeline_from_wan(cfg: "ModelConfig", codec, text, vlm, sizes: dict) -> "IDCrafterPipeline":
    """Wan2.1 base (local folder) + new subject modules, wrapped like `build_pipeline` does."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanTransformer3DModel

    from idcrafter.models.codecs import WanVAECodec
    from idcrafter.models.presets import preset, wan_config
    from idcrafter.models.transformer import IDCrafterTransformer3DModel
    from idcrafter.pipeline import IDCrafterPipeline

    path = Path(cfg.wan_path)
    sub = "transformer" if (path / "transformer" / "config.json").is_file() else None
    if not (path / (sub or "") / "config.json").is_file():
        raise InputError(f"model.wan_path={path}: no diffusers Wan2.1 transformer there (config.json)")
    wan = WanTransformer3DModel.from_pretrained(path, subfolder=sub, local_files_only=True,
                                                torch_dtype=_dtype(cfg.frozen_dtype))
    extra = {k: v for k, v in preset(cfg.preset, **cfg.preset_overrides).items() if k not in wan_config(cfg.preset)}
    if extra.get("text_mode", "t5") != "t5":
        if vlm is None:
            raise InputError(f"preset {cfg.preset} reads a VLM (text_mode {extra['text_mode']}): set model.vlm_path")
        extra["vlm_dim"] = vlm.dim
    transformer = IDCrafterTransformer3DModel.from_wan(wan, **extra)
    del wan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = FlowMatchEulerDiscreteScheduler(shift=sizes.pop("shift"))
    return IDCrafterPipeline(
        transformer, codec.vae if isinstance(codec, WanVAECodec) else codec, text.model, text.tokenizer, scheduler,
        vlm=None if vlm is None else vlm.model, vlm_tokenizer=None if vlm is None else vlm.tokenizer,
        vlm_processor=None if vlm is None else vlm.image_processor, max_sequence_length=text.max_length,
        vlm_layer=-1 if vlm is None else vlm.layer, **sizes)


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
