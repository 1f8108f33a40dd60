"""The one validation layer: checks every entry point (pipeline, trainers, loaders, CLI) calls.

Each check raises a typed `InputError` (`idcrafter.errors`) whose one-line message names the
value, what was wrong, and the range or fix; the CLI prints it and exits with 2, the Python API
raises it. Documented limits live in `LIMITS` (also in `docs/reliability.md`):

| what | limit | why |
|---|---|---|
| frames | 1..257 generated (world: 2..257) | Wan's longest clips are 81 frames; 257 = 64 latent frames x 4 + 1 |
| height, width | 1..2048 px generated (world: 24..512) | Wan 720p is 1280 x 720 |
| references | 1..4 per prompt (`max_subjects` of the model) | SpriteWorld casts and the subject stream's slots |
| prompt | 2000 characters, valid UTF-8; longer token sequences are truncated with a warning | UMT5's 512 tokens |
| steps | 1..1000 | the training schedule has 1000 timesteps |
| guidance | finite, 0..50 | beyond that the ODE diverges (black or saturated videos) |
| seed | 0..2**63 - 1 | numpy's SeedSequence refuses negatives |

Sizes the model cannot take (frames not 4k + 1 for the Wan VAE, sides not multiples of the codec
x patch) are rounded as diffusers' Wan pipeline does, with a warning (`Codec.valid_frames` /
`valid_size`); sizes that make no sense (zero, negative, beyond the limits, NaN) are refused.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from idcrafter.errors import ConfigError, InputError, LimitError, MissingWeightsError


@dataclass(frozen=True)
class Limits:
    max_frames: int = 257
    max_side: int = 2048
    world_min_frames: int = 2
    world_min_side: int = 24
    world_max_side: int = 512
    world_min_ref: int = 16
    world_max_ref: int = 256
    max_references: int = 4
    max_prompt_chars: int = 2000
    max_steps: int = 1000
    max_guidance: float = 50.0
    max_seed: int = 2**63 - 1
    max_clips: int = 10_000_000  # world make --num
    max_eval_cases: int = 100_000


LIMITS = Limits()


# ------------------------------------------------------------------ scalars
def check_int(value: Any, name: str, lo: int | None = None, hi: int | None = None, hint: str = "") -> int:
    """`value` as an int in [lo, hi] (bools and non-integral floats refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InputError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"between {lo} and {hi}" if lo is not None and hi is not None else \
            (f">= {lo}" if lo is not None else f"<= {hi}")
        err = LimitError if hi is not None and value > hi else InputError
        raise err(f"{name} must be {rng}, got {value}" + (f" ({hint})" if hint else ""))
    return value


def check_float(value: Any, name: str, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False, hint: str = "") -> float:
    """`value` as a finite float in [lo, hi] (or (lo, hi] with `lo_open`)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InputError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be a finite number, got {value}" + (f" ({hint})" if hint else ""))
    below = lo is not None and (value <= lo if lo_open else value < lo)
    if below or (hi is not None and value > hi):
        left = "(" if lo_open else "["
        rng = f"in {left}{lo}, {hi}]" if lo is not None and hi is not None else \
            (f"{'>' if lo_open else '>='} {lo}" if lo is not None else f"<= {hi}")
        raise InputError(f"{name} must be {rng}, got {value}" + (f" ({hint})" if hint else ""))
    return value


def check_seed(seed: Any, name: str = "--seed") -> int:
    return check_int(seed, name, 0, LIMITS.max_seed, "seeds are non-negative integers")


def check_steps(steps: Any, name: str = "--steps") -> int:
    return check_int(steps, name, 1, LIMITS.max_steps)


def check_guidance(scale: Any, name: str = "--cfg") -> float:
    return check_float(scale, name, 0.0, LIMITS.max_guidance, hint="1 = no guidance; 2.5 is the default")


def check_prompt(prompt: Any, name: str = "prompt") -> str:
    """A prompt: a str of valid UTF-8 (no lone surrogates from undecodable bytes), within the limit."""
    if not isinstance(prompt, str):
        raise InputError(f"{name} must be text, got {type(prompt).__name__}")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(f"{name} is not valid UTF-8 text (byte {exc.start} cannot be decoded): "
                         "pass the prompt as UTF-8") from exc
    if len(prompt) > LIMITS.max_prompt_chars:
        raise LimitError(f"{name} has {len(prompt)} characters; the limit is {LIMITS.max_prompt_chars}")
    return prompt


# ------------------------------------------------------------------ generation
def check_video_size(frames: Any, height: Any, width: Any) -> None:
    """Requested sizes of a generated video: None (the model's default) or positive and within
    the limits. Rounding to what the model can take happens later, with a warning."""
    for value, name, hi in ((frames, "num_frames (--frames)", LIMITS.max_frames),
                            (height, "height (--height)", LIMITS.max_side),
                            (width, "width (--width)", LIMITS.max_side)):
        if value is not None:
            check_int(value, name, 1, hi, "leave it out for the model's default")


def check_generation(prompts: list[str], references: list[list[Any]], num_inference_steps: Any,
                     guidance_scale: Any, max_subjects: int, negative_prompt: str = "") -> None:
    """Everything about one pipeline call that does not need the model: prompts, reference
    counts (against the caption, when it is a SpriteWorld caption), steps and guidance."""
    check_steps(num_inference_steps, "num_inference_steps (--steps)")
    check_guidance(guidance_scale, "guidance_scale (--cfg)")
    check_prompt(negative_prompt, "negative_prompt")
    if len(prompts) != len(references):
        raise InputError(f"{len(prompts)} prompt(s) but {len(references)} reference set(s)")
    limit = min(max_subjects, LIMITS.max_references)
    for i, (p, refs) in enumerate(zip(prompts, references)):
        check_prompt(p)
        if len(refs) == 0:
            raise InputError("no reference image given: pass one reference per subject")
        if len(refs) > limit:
            raise LimitError(f"{len(refs)} references given; this model supports at most {limit} subjects")
        check_reference_count(p, len(refs))


def check_reference_count(prompt: str, n_refs: int) -> None:
    """When `prompt` is a SpriteWorld caption (it parses), it must name exactly `n_refs`
    subjects; free text that does not parse is not checked."""
    from idcrafter.world.captions import parse_caption

    try:
        mentions = parse_caption(prompt)
    except InputError:
        return
    if len(mentions) != n_refs:
        raise InputError(f"the prompt names {len(mentions)} subject(s) but {n_refs} reference(s) were given: "
                         "pass one --ref per subject named in the prompt")


# ------------------------------------------------------------------ SpriteWorld
def check_world_size(frames: Any, height: Any, width: Any, ref_size: Any) -> None:
    check_int(frames, "--frames", LIMITS.world_min_frames, LIMITS.max_frames)
    check_int(height, "--height", LIMITS.world_min_side, LIMITS.world_max_side)
    check_int(width, "--width", LIMITS.world_min_side, LIMITS.world_max_side)
    check_int(ref_size, "--ref-size", LIMITS.world_min_ref, LIMITS.world_max_ref)


# ------------------------------------------------------------------ folders
def check_pipeline_folder(path: Any) -> Path:
    """A local pipeline folder (model_index.json inside). Names that are not folders (hub ids
    such as "org/name") are refused: nothing is ever downloaded."""
    if not isinstance(path, (str, Path)):
        raise InputError(f"a pipeline is loaded from a local folder path, got {type(path).__name__}")
    folder = Path(path)
    if not folder.exists():
        hub = " (it looks like a model-hub name)" if isinstance(path, str) and path.count("/") == 1 \
            and not path.startswith((".", "/")) else ""
        raise MissingWeightsError(f"{path} is not a local folder{hub}: pipelines load from local folders only, "
                                  "nothing is downloaded; pass a folder written by save_pretrained, "
                                  "e.g. assets/checkpoints/sprites-sft")
    if not folder.is_dir():
        raise InputError(f"{folder} is a file: pass the pipeline folder (the one holding model_index.json)")
    if not (folder / "model_index.json").is_file():
        raise MissingWeightsError(f"{folder} is not a pipeline folder (no model_index.json): pass the folder "
                                  "written by IDCrafterPipeline.save_pretrained, e.g. assets/checkpoints/sprites-sft")
    return folder


# ------------------------------------------------------------------ training configs
def _nonneg_int(value: Any, key: str) -> None:
    check_int(value, key, 0)


def validate_train_config(cfg: Any) -> None:
    """Values of an SFT `Config` that make no sense (the section `validate`s check the choices).
    Raises `ConfigError` naming the key."""
    def run(fn, *args) -> None:
        try:
            fn(*args)
        except ConfigError:
            raise
        except InputError as exc:
            raise ConfigError(str(exc)) from exc

    o, t, d, c, e, lg, m, ls = cfg.optim, cfg.train, cfg.data, cfg.checkpoint, cfg.eval, cfg.log, cfg.model, cfg.loss
    run(check_float, o.lr, "optim.lr", 0.0, 10.0, True, "a learning rate such as 1e-4")
    run(check_float, o.weight_decay, "optim.weight_decay", 0.0, None)
    run(check_float, o.eps, "optim.eps", 0.0, 1.0, True)
    run(check_float, o.min_lr_ratio, "optim.min_lr_ratio", 0.0, 1.0)
    run(check_float, o.grad_clip, "optim.grad_clip", 0.0, None, False, "0 turns clipping off")
    run(_nonneg_int, o.warmup_steps, "optim.warmup_steps")
    if len(o.betas) != 2:
        raise ConfigError(f"optim.betas must be two numbers, got {o.betas}")
    for i, b in enumerate(o.betas):
        run(check_float, b, f"optim.betas[{i}]", 0.0, 1.0)
        if b >= 1:
            raise ConfigError(f"optim.betas[{i}] must be < 1, got {b}")
    if o.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optim.schedule must be cosine or constant, got {o.schedule!r}")
    run(check_int, t.steps, "train.steps", 1, None)
    run(check_int, t.grad_accum, "train.grad_accum", 1, 1024)
    run(check_seed, t.seed, "train.seed")
    run(_nonneg_int, t.threads, "train.threads")
    run(_nonneg_int, t.text_cache_size, "train.text_cache_size")
    run(check_int, t.lora_rank, "train.lora_rank", 1, None)
    run(check_float, t.lora_alpha, "train.lora_alpha", 0.0, None, True)
    run(check_float, t.sleep_per_step, "train.sleep_per_step", 0.0, 60.0)
    run(check_seed, d.seed, "data.seed")
    run(check_int, d.frames, "data.frames", 1, LIMITS.max_frames)
    run(check_int, d.height, "data.height", 1, LIMITS.max_side)
    run(check_int, d.width, "data.width", 1, LIMITS.max_side)
    run(check_int, d.ref_size, "data.ref_size", 1, LIMITS.max_side)
    run(check_int, d.frame_stride, "data.frame_stride", 1, None)
    run(_nonneg_int, d.prefetch, "data.prefetch")
    if d.limit is not None:
        run(check_int, d.limit, "data.limit", 1, None, "none for no limit")
    if d.num_subjects is not None:
        run(check_int, d.num_subjects, "data.num_subjects", 1, LIMITS.max_references)
    for key in ("every", "keep_last"):
        run(_nonneg_int, getattr(c, key), f"checkpoint.{key}")
    for key in ("every", "sample_every"):
        run(_nonneg_int, getattr(e, key), f"eval.{key}")
    run(check_seed, e.seed, "eval.seed")
    run(check_steps, e.sample_steps, "eval.sample_steps")
    run(check_guidance, e.sample_guidance, "eval.sample_guidance")
    run(check_int, e.sample_subjects, "eval.sample_subjects", 1, LIMITS.max_references)
    if not e.timesteps:
        raise ConfigError("eval.timesteps must list at least one t in (0, 1]")
    for tv in e.timesteps:
        run(check_float, tv, "eval.timesteps", 0.0, 1.0, True)
    run(check_int, lg.every, "log.every", 1, None)
    run(check_float, m.shift, "model.shift", 0.0, 100.0, True)
    run(check_seed, m.seed, "model.seed")
    for key in ("height", "width", "frames", "reference_size"):
        run(check_int, getattr(m, key), f"model.{key}", 1, LIMITS.max_frames if key == "frames" else LIMITS.max_side)
    run(check_int, m.text_max_length, "model.text_max_length", 1, 4096)
    for key in ("logit_mean", "subject_weight"):
        run(check_float, getattr(ls, key), f"loss.{key}", None if key == "logit_mean" else 0.0, None)
    for key in ("logit_std", "timestep_shift"):
        run(check_float, getattr(ls, key), f"loss.{key}", 0.0, None, True)
    for key in ("drop_text", "drop_refs", "drop_both"):
        run(check_float, getattr(ls, key), f"loss.{key}", 0.0, 1.0)
