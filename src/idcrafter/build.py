"""Building an IDCrafter pipeline from a Wan2.1 folder (and a Qwen2.5-VL folder): the one way.

    idcrafter build --wan models/Wan2.1-T2V-1.3B-Diffusers --vlm models/Qwen2.5-VL-7B-Instruct \\
        --out models/idcrafter-wan2.1-1.3b                 # [--preset wan2.1-1.3b] [--dtype bfloat16] [--copy]

    from idcrafter import IDCrafterPipeline
    pipe = IDCrafterPipeline.from_wan("models/Wan2.1-T2V-1.3B-Diffusers", vlm="models/Qwen2.5-VL-7B-Instruct")

Each folder is named once: the Wan folder is a diffusers `WanPipeline` folder (transformer/,
vae/, text_encoder/, tokenizer/, scheduler/), and the transformer, the VAE and UMT5 are all read
from it. Training does the same (`model.wan_path` alone: `model.codec_path` and
`model.text_encoder` default to it), through the same builder (`idcrafter.builder`).

Checks made before anything heavy is read: the folder has every part; its transformer matches
the preset (layers, heads, head width, FFN width, patch; `check_wan_preset`, so the 1.3B
recipe refuses a 2-layer folder); the VAE's latent channels equal the transformer's input
channels and UMT5's width equals its `text_dim`. The preset defaults to the real one whose
architecture the folder has (`wan2.1-1.3b` or `wan2.1-14b`).

`idcrafter build` writes a pipeline folder whose frozen components (VAE, UMT5, Qwen2.5-VL) are
links to the source folders (`idcrafter.linking`), so it only reads their configs: the host
memory it needs is the new transformer's. `--copy` loads and copies them instead (a
self-contained folder). The new subject modules start zero-gated: the built pipeline generates
exactly what Wan generates until it is trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from idcrafter.devices import DtypeOption
from idcrafter.errors import InputError, MissingWeightsError

#: the architecture keys a Wan folder must share with the preset it is used with
ARCH_KEYS = ("num_layers", "num_attention_heads", "attention_head_dim", "ffn_dim", "patch_size")
REAL_PRESETS = ("wan2.1-1.3b", "wan2.1-14b")
BUILD_TOOL = "idcrafter build"
#: Wan2.1's 480p defaults for a built pipeline
WAN_SIZES = dict(height=480, width=832, frames=81, reference_size=512, shift=3.0, fps=16, text_max_length=512)


def _json(path: Path) -> dict[str, Any]:
    from idcrafter.errors import CorruptFileError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path} is not readable JSON ({exc.__class__.__name__})") from exc
    if not isinstance(data, dict):
        raise CorruptFileError(f"{path} must hold a JSON object")
    return data


def refuse_wan_folder(path: Any) -> None:
    """A plain Wan2.1 (diffusers `WanPipeline`) folder is not an IDCrafter pipeline: one line
    saying how to build one from it."""
    if not isinstance(path, (str, Path)) or not (Path(path) / "model_index.json").is_file():
        return
    try:
        name = json.loads((Path(path) / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, AttributeError):
        return
    if isinstance(name, str) and name.startswith("Wan"):
        raise InputError(f"{path} is a Wan2.1 folder ({name}), not an IDCrafter pipeline: build one from it with "
                         f"`idcrafter build --wan {path} [--vlm QWEN_DIR] --out DIR` or "
                         f"IDCrafterPipeline.from_wan({str(path)!r}, vlm=...)")


def wan_parts(wan: str | Path) -> dict[str, Path]:
    """transformer/, vae/, text_encoder/, tokenizer/ of a Wan pipeline folder (one line naming
    what is missing otherwise)."""
    wan = Path(wan)
    if not wan.is_dir():
        raise MissingWeightsError(f"Wan folder not found: {wan}: pass a local diffusers Wan2.1 folder "
                                  "(e.g. Wan-AI/Wan2.1-T2V-1.3B-Diffusers downloaded by you)")
    parts = {p: wan / p for p in ("transformer", "vae", "text_encoder")}
    parts["tokenizer"] = wan / "tokenizer" if (wan / "tokenizer").is_dir() else wan / "text_encoder"
    absent = [n for n, p in parts.items() if not (p / ("config.json" if n != "tokenizer" else "")).exists()]
    if absent:
        raise MissingWeightsError(f"{wan} is not a whole Wan2.1 pipeline folder: no {', '.join(absent)} "
                                  "(each with config.json); pass the folder of Wan-AI/Wan2.1-T2V-*-Diffusers")
    return parts


def infer_preset(wan_cfg: dict[str, Any]) -> str | None:
    """The real preset whose Wan architecture the folder has (None if none)."""
    from idcrafter.models.presets import wan_config

    for name in REAL_PRESETS:
        ref = wan_config(name)
        if all(_same(wan_cfg.get(k), ref.get(k)) for k in ARCH_KEYS):
            return name
    return None


def _same(a: Any, b: Any) -> bool:
    return (list(a) == list(b)) if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) else a == b


def _describe(cfg: dict[str, Any]) -> str:
    dim = cfg.get("num_attention_heads", 0) * cfg.get("attention_head_dim", 0)
    return (f"{cfg.get('num_layers')} layers x dim {dim} ({cfg.get('num_attention_heads')} heads of "
            f"{cfg.get('attention_head_dim')}), ffn {cfg.get('ffn_dim')}, patch {tuple(cfg.get('patch_size') or ())}")


def check_wan_preset(wan_path: str | Path, preset_name: str) -> dict[str, Any]:
    """The folder's transformer config, after checking its architecture against the preset's Wan
    part (one line naming both and the preset that would fit)."""
    from idcrafter.models.presets import preset, wan_config
    from idcrafter.models.wan import read_wan_config

    cfg = read_wan_config(wan_path)
    preset(preset_name)  # unknown names: the preset's own one-line error
    ref = wan_config(preset_name)
    bad = [k for k in ARCH_KEYS if k in ref and not _same(cfg.get(k), ref[k])]
    if bad:
        fits = infer_preset(cfg)
        hint = f"use model.preset={fits} (--preset {fits})" if fits else "point at the Wan folder this preset is for"
        raise InputError(f"the Wan folder {wan_path} has {_describe(cfg)}, but preset {preset_name} needs "
                         f"{_describe(ref)}: {hint}")
    return cfg


def check_wan_parts(parts: dict[str, Path], wan_cfg: dict[str, Any]) -> None:
    """The VAE's latent channels and UMT5's width must be what the transformer reads."""
    vae = _json(parts["vae"] / "config.json")
    z = vae.get("z_dim")
    if z is not None and z != wan_cfg.get("in_channels"):
        raise InputError(f"{parts['vae']} makes {z}-channel latents but the transformer reads "
                         f"{wan_cfg.get('in_channels')}: the VAE and transformer come from different models")
    te = _json(parts["text_encoder"] / "config.json")
    if te.get("d_model") is not None and te.get("d_model") != wan_cfg.get("text_dim"):
        raise InputError(f"{parts['text_encoder']} has width {te.get('d_model')} but the transformer's text_dim is "
                         f"{wan_cfg.get('text_dim')}: the text encoder and transformer come from different models")


def model_config(wan: str | Path, vlm: str | Path | None = None, *, preset: str | None = None,
                 dtype: Any = "bfloat16", codec_dtype: Any = "float32", seed: int = 0,
                 height: int = WAN_SIZES["height"], width: int = WAN_SIZES["width"],
                 frames: int = WAN_SIZES["frames"], reference_size: int | None = None,
                 shift: float = WAN_SIZES["shift"], fps: int = WAN_SIZES["fps"],
                 text_max_length: int = WAN_SIZES["text_max_length"], **overrides: Any):
    """The `ModelConfig` that builds an IDCrafter pipeline from these folders (each named once).
    `reference_size` defaults to Wan's 512 px, or less when the preset's `max_ref_tokens` cannot
    hold a 512 px reference's tokens."""
    from idcrafter.builder import ModelConfig
    from idcrafter.models.presets import preset as preset_config
    from idcrafter.models.wan import read_wan_config

    parts = wan_parts(wan)
    preset = preset or infer_preset(read_wan_config(wan))
    if preset is None:
        raise InputError(f"the Wan folder {wan} has {_describe(read_wan_config(wan))}, which is neither Wan2.1-1.3B "
                         f"nor 14B: pass the preset to use (--preset NAME)")
    full = preset_config(preset, **overrides)
    if vlm is not None and full.get("text_mode", "t5") == "t5":
        raise InputError(f"preset {preset} reads prompts with T5 alone (text_mode t5): drop --vlm, or set "
                         "text_mode=t5+vlm (--set text_mode=t5+vlm)")
    step = _vae_factor(parts["vae"]) * int(tuple(full.get("patch_size", (1, 2, 2)))[1])
    most = int(full.get("max_ref_tokens", 4096) ** 0.5) * step  # largest reference whose tokens fit
    reference_size = min(WAN_SIZES["reference_size"], most) if reference_size is None else reference_size
    if (reference_size // step) ** 2 > full.get("max_ref_tokens", 4096) or reference_size < step:
        raise InputError(f"reference_size {reference_size} px makes {(reference_size // step) ** 2} tokens per reference; "
                         f"preset {preset} holds {full.get('max_ref_tokens')} (use {step}..{most} px)")
    return ModelConfig(preset=preset, preset_overrides=dict(overrides), codec="wan-vae", codec_path=None,
                       text_encoder="wan", text_max_length=text_max_length, wan_path=str(wan),
                       vlm_path=None if vlm is None else str(vlm), frozen_dtype=_dtype_name(dtype),
                       codec_dtype=_dtype_name(codec_dtype), height=height, width=width, frames=frames,
                       reference_size=reference_size, shift=shift, seed=seed, fps=fps)


def _vae_factor(vae_dir: Path) -> int:
    cfg = _json(vae_dir / "config.json")
    return 2 ** (len(cfg.get("dim_mult", [1, 2, 4, 4])) - 1) * int(cfg.get("patch_size") or 1)


def _dtype_name(dtype: Any) -> str:
    """A torch dtype or a spelling of one (bf16, float32, ...) -> its torch name."""
    from idcrafter.devices import DTYPES

    key = str(dtype).strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise InputError(f"dtype {dtype!r} is not a precision: use bfloat16, float16 or float32")
    return DTYPES[key]


def from_wan(wan: str | Path, vlm: str | Path | None = None, **kwargs: Any):
    """A new `IDCrafterPipeline` (everything loaded) from a Wan2.1 folder and, for presets that
    ground prompts with a VLM, a Qwen2.5-VL folder. `kwargs`: `model_config`'s (preset, dtype,
    codec_dtype, sizes, seed, subject-module overrides such as subject_variant="concat")."""
    from idcrafter.builder import build_model_pipeline

    return build_model_pipeline(model_config(wan, vlm, **kwargs))


def build_folder(wan: str | Path, out: str | Path, vlm: str | Path | None = None, copy: bool = False,
                 **kwargs: Any) -> Path:
    """Write a new IDCrafter pipeline folder built from Wan (and VLM) folders: the new
    transformer saved, the frozen components linked (module docstring) or, with `copy`, loaded
    and copied. Atomic: written beside `out` and renamed into place."""
    import shutil

    from idcrafter.builder import build_model_pipeline, frozen_shells
    from idcrafter.utils.io import check_writable_dir, mark_dir, replace_dir, temp_dir_beside

    out = Path(out)
    check_writable_dir(out, BUILD_TOOL, fix="")
    cfg = model_config(wan, vlm, **kwargs)
    pipe = build_model_pipeline(cfg, frozen=None if copy else frozen_shells(cfg))
    tmp = temp_dir_beside(out)
    try:
        pipe.save_pretrained(str(tmp), link_frozen=not copy)
        (tmp / "PROVENANCE.md").write_text(
            f"# Built by `{BUILD_TOOL}`\n\nWan2.1 base: `{Path(wan).resolve()}`\n"
            + (f"VLM: `{Path(vlm).resolve()}`\n" if vlm else "")
            + f"Preset: `{cfg.preset}`; frozen dtype {cfg.frozen_dtype}; subject modules new (zero-gated), seed {cfg.seed}.\n")
        mark_dir(tmp, BUILD_TOOL)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`KEY=VALUE` strings -> {key: value}, values read as JSON when they parse (numbers, true,
    lists), as text otherwise; keys must be fields of the transformer's config."""
    import inspect

    from idcrafter.models.transformer import IDCrafterTransformer3DModel

    known = set(inspect.signature(IDCrafterTransformer3DModel.__init__).parameters) - {"self"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in known:
            raise InputError(f"--set {item!r}: expected KEY=VALUE with KEY a transformer config field "
                             f"(e.g. subject_variant, text_mode, num_intra_layers)")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


def build_cmd(
    wan: Path = typer.Option(..., help="a local diffusers Wan2.1 folder (transformer/, vae/, text_encoder/, tokenizer/)"),
    out: Path = typer.Option(..., help="the IDCrafter pipeline folder to write"),
    vlm: Optional[Path] = typer.Option(None, help="a local Qwen2.5-VL folder (the real presets ground prompts with it)"),
    preset: Optional[str] = typer.Option(None, help="model preset (default: the one matching the Wan folder)"),
    dtype: DtypeOption = None,
    copy: bool = typer.Option(False, "--copy", help="copy the frozen VAE, UMT5 and VLM instead of linking them"),
    seed: int = typer.Option(0, help="initialisation seed of the new subject modules"),
    reference_size: Optional[int] = typer.Option(None, help="reference side in px (default 512, or what the preset holds)"),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="a preset override KEY=VALUE (repeat), e.g. "
                                                                      "--set subject_variant=concat --set text_mode=t5"),
) -> None:
    """Build an IDCrafter pipeline from a Wan2.1 folder (+ a Qwen2.5-VL folder): new zero-gated
    subject modules on Wan's weights; frozen components linked, not copied (unless --copy)."""
    dt = "bfloat16" if dtype in (None, "auto") else dtype  # the frozen base's dtype; Wan is trained in bf16
    path = build_folder(wan, out, vlm, copy=copy, preset=preset, dtype=dt, seed=seed, reference_size=reference_size,
                        **parse_overrides(overrides or []))
    typer.echo(f"wrote {path} ({'copied' if copy else 'linked'} frozen components; load it with "
               f"IDCrafterPipeline.from_pretrained or `idcrafter generate --model {path}`)")


def spatial_multiple(model_cfg: Any) -> tuple[int, str]:
    """(m, why): frame sides must be multiples of m = the codec's spatial factor x the
    transformer's patch (the Wan VAE's factor read from its config when the folder is there)."""
    from idcrafter.models.presets import PRESETS

    patch = int(tuple(PRESETS.get(model_cfg.preset, {}).get("patch_size", (1, 2, 2)))[1])
    if model_cfg.codec == "pixel":
        return model_cfg.codec_patch * patch, f"the pixel codec's patch {model_cfg.codec_patch} x the DiT patch {patch}"
    factor = 8
    folder = model_cfg.codec_path or model_cfg.wan_path
    for cand in ((Path(folder) / "vae", Path(folder)) if folder else ()):
        if (cand / "config.json").is_file():
            try:
                vae = json.loads((cand / "config.json").read_text())
                factor = 2 ** (len(vae.get("dim_mult", [1, 2, 4, 4])) - 1) * int(vae.get("patch_size") or 1)
            except (OSError, ValueError, TypeError):
                pass
            break
    return factor * patch, f"the Wan VAE's factor {factor} x the DiT patch {patch}"


def check_real_path_config(cfg: Any) -> None:
    """Config-time checks of a training config (`Config.validate` calls it): frame sides the
    codec and patch can take, and a Wan folder that matches the preset (when it is there; a
    missing folder is reported when the model is built)."""
    m, why = spatial_multiple(cfg.model)
    for key, value in (("data.height", cfg.data.height), ("data.width", cfg.data.width),
                       ("model.height", cfg.model.height), ("model.width", cfg.model.width)):
        if isinstance(value, int) and value > 0 and value % m:
            lo, hi = value // m * m, (value // m + 1) * m
            raise InputError(f"{key}={value} is not a multiple of {m} ({why}): use {lo or hi} or {hi}")
    if cfg.model.codec == "wan-vae" and (cfg.model.frames - 1) % 4:
        raise InputError(f"the Wan VAE needs 4k+1 frames; model.frames={cfg.model.frames}")
    if cfg.model.wan_path and not cfg.model.init_pipeline:
        from idcrafter.models.wan import transformer_folder

        try:
            transformer_folder(cfg.model.wan_path)
        except MissingWeightsError:
            return
        check_wan_preset(cfg.model.wan_path, cfg.model.preset)
