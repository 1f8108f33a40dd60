"""Recipes: Python functions that return a whole training `Config`.

    from idcrafter.recipes import recipe
    cfg = recipe("sprites")                      # then apply_overrides(cfg, ["optim.lr=1e-4"])

| name          | model                                  | trains                     | data                         |
|---------------|----------------------------------------|----------------------------|------------------------------|
| `debug`       | tiny random (tests; seconds on a CPU)  | full                       | SpriteWorld 3 x 24 x 24, B 2 |
| `sprites`     | `sprites` preset, pixel codec, tiny T5 | full, from scratch         | SpriteWorld 5 x 48 x 48, B 16|
| `sprites-latent` | `sprites-latent` preset, SpriteWorld Wan VAE, joint subject attention | full, from scratch | as `sprites`, 40 px refs |
| `sprites-phantom` | `sprites` preset, Phantom-style peer (issue 15) | full, from scratch | as `sprites`, 48 px refs |
| `sprites-latent-phantom` | `sprites-latent` preset + VAE, Phantom-style peer | full, from scratch | as `sprites`, 48 px refs |
| `wan2.1-1.3b` | Wan2.1-T2V-1.3B + Qwen2.5-VL grounding | LoRA r32 + new modules     | real clips (JSONL manifest)  |
| `wan2.1-14b`  | Wan2.1-T2V-14B + Qwen2.5-VL grounding  | LoRA r32 + new modules     | real clips (JSONL manifest)  |

The real recipes read local folders (`models/...`, `data/...` relative to the working
directory; override `model.wan_path=...` etc.); nothing is downloaded.
"""

from __future__ import annotations

from typing import Callable

from idcrafter.errors import InputError
from idcrafter.train.config import (
    CheckpointConfig, Config, DataConfig, EvalConfig, LogConfig, LossConfig, ModelConfig, OptimConfig, TrainConfig,
)

RECIPES: dict[str, Callable[[], Config]] = {}


def register_recipe(name: str) -> Callable[[Callable[[], Config]], Callable[[], Config]]:
    def deco(fn: Callable[[], Config]) -> Callable[[], Config]:
        RECIPES[name] = fn
        return fn

    return deco


def recipe(name: str) -> Config:
    """A fresh config of the named recipe."""
    if name not in RECIPES:
        raise InputError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    cfg = RECIPES[name]()
    cfg.recipe = name
    return cfg


@register_recipe("debug")
def debug() -> Config:
    """Tiny and fast, for tests: 3 frames of 24 x 24, 16 px references, fp32, deterministic."""
    size = dict(frames=3, height=24, width=24)
    return Config(
        model=ModelConfig(preset="debug", text_dim=32, reference_size=16, **size),
        data=DataConfig(batch_size=2, ref_size=16, prefetch=0, **size),
        loss=LossConfig(),
        optim=OptimConfig(lr=1e-3, warmup_steps=2, schedule="cosine", min_lr_ratio=0.1),
        train=TrainConfig(steps=8, mixed_precision="no", ema_decay=0.9, deterministic=True, threads=1),
        checkpoint=CheckpointConfig(every=4, keep_last=2, export_pipeline=False, export_final=True),
        eval=EvalConfig(every=4, batch_size=2, sample_every=0, sample_steps=2),
        log=LogConfig(every=1, tensorboard=False, progress=False),
    )


@register_recipe("sprites")
def sprites() -> Config:
    """The embedded default: the `sprites` transformer (dim 128, 6 layers, 6x6 px tokens) trained
    from scratch on SpriteWorld rendered on the fly (5 frames x 48 x 48, 1-4 subjects, 36 px
    references), bf16 autocast, subject pixels x3, wide logit-normal timesteps without shift
    (DESIGN.md section 8: plan 20k steps at batch 16, in resumable pieces; watch
    `ref_gap_subject/t0.6` become positive). Measured 0.65 s/step with bf16 on 2 idle cores
    (plus ~0.2 s of rendering); when other jobs load the machine, `train.threads=1` is faster
    than the default of all cores (docs/scale.md)."""
    return Config(
        model=ModelConfig(preset="sprites", codec="pixel", codec_patch=3, text_dim=64, text_max_length=128,
                          height=48, width=48, frames=5, reference_size=36, shift=3.0),
        data=DataConfig(source="procedural", split="train", seed=0, frames=5, height=48, width=48, ref_size=36,
                        batch_size=16, prefetch=0),  # a render thread beside 2 torch threads oversubscribes 2 cores: 1.3 vs 1.0 s/step
        # unshifted and wide: with Wan's shift 3, P(t < 0.2) is 0.7%, the low-noise end the sampler's
        # last steps run in was never learned and every sample ended in per-token noise (docs/sprites.md)
        loss=LossConfig(logit_mean=0.0, logit_std=1.4, timestep_shift=1.0, subject_weight=3.0,
                        drop_text=0.05, drop_refs=0.05, drop_both=0.1),
        optim=OptimConfig(lr=3e-4, warmup_steps=300, schedule="cosine", min_lr_ratio=0.1, grad_clip=1.0),
        train=TrainConfig(steps=20_000, mode="full", mixed_precision="bf16", ema_decay=0.999),
        checkpoint=CheckpointConfig(every=250, keep_last=3, export_pipeline=True),
        eval=EvalConfig(every=250, batch_size=8, sample_every=2000, sample_steps=20, sample_guidance=2.5,
                        timesteps=(0.1, 0.3, 0.6, 0.9)),
        log=LogConfig(every=10),
    )


@register_recipe("sprites-latent")
def sprites_latent() -> Config:
    """The embedded default in the real stack's form: the `sprites-latent` DiT trained in the
    latents of the SpriteWorld Wan VAE (`assets/checkpoints/sprites-vae`, `idcrafter train vae`),
    references encoded by the same VAE (40 px -> 10 x 10 latents -> 25 tokens). Everything else is
    the `sprites` recipe (data, schedule, DiT size), so the pixel and latent codecs compare at equal
    DiT size, steps and data (docs/sprites.md), but for one loss setting: Wan's training shift 3.
    The pixel recipe trains unshifted because its samples end in per-token noise otherwise; the
    latent model's decoder forgives small low-noise errors and its failures are at high noise,
    where layout is decided. Judged on 12 held-out casts, shift 3 led the unshifted run at 1000
    steps (total 0.173 vs 0.130), matched its 2000-step figures at 1500 (0.229 vs 0.233) and was
    level with it at 2000 (0.241 vs 0.233): a faster start, never worse. The gate-2 run
    `runs/latent` predates the change (shift 1, its saved config).

    References enter through `subject_attention="joint"`: subject keys in the video's own
    self-attention softmax, with RoPE positions as frames before the clip. From scratch with the
    same seed, its reference gap at 750 steps was 0.0169 against 0.0027 for the separate "self"
    branch (0.0104 without the positions; the Phantom-style peer 0.0163, docs/sprites.md). Runs
    started before 2026-12-02 keep "self" (their saved `preset_overrides` is empty)."""
    cfg = sprites()
    cfg.model.preset = "sprites-latent"
    cfg.model.preset_overrides = {"subject_attention": "joint"}
    cfg.model.codec, cfg.model.codec_path = "wan-vae", "assets/checkpoints/sprites-vae"
    cfg.model.reference_size = cfg.data.ref_size = 40
    cfg.loss.timestep_shift = 3.0
    return cfg


@register_recipe("sprites-phantom")
def sprites_phantom() -> Config:
    """The issue-15 peer: the `sprites` recipe (same DiT size, data, loss, schedule) with
    Phantom's conditioning (`models/phantom.py`: references as extra clean latent frames in the
    self-attention, three-pass guidance in `idcrafter.peer`). References are rendered at the
    frame size, as Phantom pads them to the video's size: 48 px -> 8 x 8 tokens per reference."""
    cfg = sprites()
    cfg.model.preset_overrides = {"architecture": "phantom"}
    cfg.model.reference_size = cfg.data.ref_size = cfg.data.height
    return cfg


@register_recipe("sprites-latent-phantom")
def sprites_latent_phantom() -> Config:
    """The issue-15 peer in the latent world: the `sprites-latent` recipe (same DiT size, VAE,
    data, loss, shift 3, schedule) with Phantom's conditioning. References are rendered at the
    frame size and encoded by the same VAE, one latent frame each, as Phantom encodes its padded
    references: 48 px -> 12 x 12 latents -> 6 x 6 tokens per reference, the video's frame size."""
    cfg = sprites_latent()
    cfg.model.preset_overrides = {"architecture": "phantom"}
    cfg.model.reference_size = cfg.data.ref_size = cfg.data.height
    return cfg


def _wan(size: str, folder: str, steps: int) -> Config:
    """Wan2.1 + subject modules on real clips: LoRA r32 on the base, new modules fully trained,
    frozen weights in bf16, gradient checkpointing, 81 x 480 x 832 clips (Wan's 480p). The Wan
    folder is named once (`model.wan_path`): the VAE and UMT5 are read from it too."""
    clip = dict(frames=81, height=480, width=832)
    return Config(
        model=ModelConfig(preset=f"wan2.1-{size}", codec="wan-vae", codec_path=None, text_encoder="wan",
                          text_max_length=512, wan_path=folder, vlm_path="models/Qwen2.5-VL-7B-Instruct",
                          frozen_dtype="bfloat16", reference_size=512, shift=3.0, **clip),
        data=DataConfig(source="manifest", path="data/train.jsonl", ref_size=512, batch_size=1, prefetch=2,
                        bucket_by_subjects=True, **clip),
        loss=LossConfig(timestep_shift=3.0, subject_weight=1.0),
        optim=OptimConfig(lr=1e-4, warmup_steps=200, weight_decay=0.01, grad_clip=1.0),
        train=TrainConfig(steps=steps, mode="lora", lora_rank=32, lora_alpha=32, mixed_precision="bf16",
                          gradient_checkpointing=True, ema_decay=0.999, text_cache_size=1024),
        # checkpoint pipelines hold the transformer only: the frozen VAE, UMT5 and VLM are links (idcrafter.linking)
        checkpoint=CheckpointConfig(every=500, keep_last=3, export_pipeline=True, export_final=True),
        eval=EvalConfig(every=500, source="manifest", path="data/heldout.jsonl", batch_size=2,
                        sample_every=1000, sample_steps=30, sample_guidance=2.5),
        log=LogConfig(every=10),
    )


@register_recipe("wan2.1-1.3b")
def wan21_1_3b() -> Config:
    return _wan("1.3b", "models/Wan2.1-T2V-1.3B-Diffusers", steps=10_000)


@register_recipe("wan2.1-14b")
def wan21_14b() -> Config:
    return _wan("14b", "models/Wan2.1-T2V-14B-Diffusers", steps=5_000)
