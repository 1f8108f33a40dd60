"""The one pipeline builder: `ModelConfig` (what to build) next to the functions that build it.

    pipe = ModelConfig(preset="debug", text_dim=32).build()     # = build_model_pipeline(cfg)

Three sources, one path: a saved pipeline folder (`init_pipeline`), a local Wan2.1 folder
(`wan_path`: Wan's base + new zero-gated subject modules) or random weights of a preset (seeded
by `seed`, what SpriteWorld trains from). Every new pipeline is assembled by
`idcrafter.pipeline.assemble_pipeline`; SFT, GRPO, NFT, DPO and the tests all build through here.
Nothing is downloaded: every folder is local.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from idcrafter.errors import InputError

if TYPE_CHECKING:
    from idcrafter.pipeline import IDCrafterPipeline


@dataclass
class ModelConfig:
    """What to build: a transformer preset, a codec, the text encoder (and optionally a VLM).

    Random-initialised models (`wan_path` and `init_pipeline` unset) are what SpriteWorld trains;
    `wan_path` builds the transformer from a local diffusers Wan2.1 folder (`from_wan`: the base is
    Wan's, the subject modules are new and zero-gated); `init_pipeline` continues from a saved
    `IDCrafterPipeline` folder (e.g. an earlier SFT export).
    """

    preset: str = "sprites"
    preset_overrides: dict[str, Any] = field(default_factory=dict)
    codec: str = "pixel"  # "pixel": PixelCodec(3, codec_patch); "wan-vae": WanVAECodec from codec_path
    codec_patch: int = 2
    codec_path: str | None = None  # None with codec "wan-vae": the vae/ of wan_path
    text_encoder: str = "tiny"  # "tiny" (random UMT5, SpriteWorld vocabulary), "wan" (wan_path's), or a local UMT5/Wan folder
    text_dim: int = 64  # d_model of the tiny text encoder
    text_max_length: int = 128
    vlm_path: str | None = None  # Qwen2.5-VL folder (or "tiny": random, SpriteWorld words), for text_mode "vlm" / "t5+vlm"
    wan_path: str | None = None
    init_pipeline: str | None = None
    frozen_dtype: str = "float32"  # dtype of frozen weights (text encoder, VLM, VAE, frozen base)
    codec_dtype: str | None = None  # dtype of the VAE if not frozen_dtype (built pipelines: float32)
    height: int = 48  # pipeline defaults (sampling size)
    width: int = 48
    frames: int = 5
    reference_size: int = 32
    shift: float = 3.0  # flow shift of the pipeline's sampling schedule
    seed: int = 0  # initialisation seed of random weights
    fps: int = 0  # frame rate of the clips (pipeline default_fps); 0: Wan's 16 with wan_path, else SpriteWorld's 4

    def build(self) -> "IDCrafterPipeline":
        return build_model_pipeline(self)


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


def build_text_encoder(cfg: ModelConfig):
    from idcrafter.encoders.text import TextEncoder

    if cfg.text_encoder == "tiny":
        return TextEncoder.tiny(cfg.text_dim, vocab_words=caption_vocabulary(), max_length=cfg.text_max_length,
                                seed=cfg.seed)
    return TextEncoder.from_pretrained(text_encoder_path(cfg), max_length=cfg.text_max_length,
                                       dtype=_dtype(cfg.frozen_dtype))


def text_encoder_path(cfg: ModelConfig) -> str:
    """The UMT5 folder: `text_encoder`, or with "wan" the Wan folder (`wan_path`) it came with."""
    if cfg.text_encoder == "wan":
        if not cfg.wan_path:
            raise InputError("model.text_encoder=wan reads the Wan folder's UMT5: set model.wan_path")
        return cfg.wan_path
    return cfg.text_encoder


def codec_path(cfg: ModelConfig) -> str:
    """The Wan VAE folder: `codec_path`, or the Wan folder (`wan_path`) when unset."""
    path = cfg.codec_path or cfg.wan_path
    if not path:
        raise InputError("model.codec=wan-vae needs model.codec_path (a Wan VAE or Wan pipeline folder) "
                         "or model.wan_path")
    return path


def build_codec(cfg: ModelConfig):
    from idcrafter.models.codecs import PixelCodec, WanVAECodec

    if cfg.codec == "pixel":
        return PixelCodec(3, cfg.codec_patch)
    if cfg.codec == "wan-vae":
        return WanVAECodec.from_pretrained(codec_path(cfg), dtype=_dtype(cfg.codec_dtype or cfg.frozen_dtype))
    raise InputError(f"model.codec must be 'pixel' or 'wan-vae', got {cfg.codec!r}")


def build_model_pipeline(cfg: ModelConfig, frozen: tuple | None = None) -> "IDCrafterPipeline":
    """The pipeline to train: from a saved pipeline, from local Wan weights, or random (seeded).
    `frozen`: prebuilt (codec, text encoder, VLM) to use instead of loading them (`idcrafter
    build` passes meta-device shells and links the folders). Frozen components read from local
    folders are recorded in `pipe.component_sources` (saved as links: `idcrafter.linking`)."""
    from idcrafter.pipeline import IDCrafterPipeline, build_pipeline

    if cfg.init_pipeline:
        path = Path(cfg.init_pipeline)
        if not (path / "model_index.json").is_file():
            raise InputError(f"model.init_pipeline={path} is not a pipeline folder (no model_index.json)")
        return IDCrafterPipeline.from_pretrained(str(path), local_files_only=True)
    if cfg.wan_path:  # a wrong folder fails here, before any encoder is read
        from idcrafter.build import check_wan_preset

        check_wan_preset(cfg.wan_path, cfg.preset)
    codec, text, vlm = frozen if frozen is not None else (build_codec(cfg), build_text_encoder(cfg), build_vlm(cfg))
    fps = cfg.fps or (16 if cfg.wan_path else 4)
    sizes = dict(default_height=cfg.height, default_width=cfg.width, default_frames=cfg.frames,
                 reference_size=cfg.reference_size, shift=cfg.shift, default_fps=fps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        if cfg.wan_path:
            pipe = _pipeline_from_wan(cfg, codec, text, vlm, sizes)
        else:
            pipe = build_pipeline(cfg.preset, codec, text, vlm, **sizes, **cfg.preset_overrides)
    pipe.component_sources = frozen_sources(cfg)
    return pipe


def check_reference_size(pipe: "IDCrafterPipeline", ref_size: int) -> None:
    """Refuse data whose references are drawn at another size than the model takes. The pipeline
    would resize them (`prepare_reference`) and train or roll out on resampled references the
    model never saw; with `model.init_pipeline` the size is the saved pipeline's, not
    `model.reference_size`."""
    size = int(pipe.config.reference_size)
    if int(ref_size) != size:
        raise InputError(f"data.ref_size={ref_size} but the model takes {size} px references: set "
                         f"data.ref_size={size} (with model.init_pipeline, the size in its model_index.json)")


def build_vlm(cfg: ModelConfig):
    """The frozen Qwen2.5-VL grounder of `vlm_path` ("tiny": random, SpriteWorld words), or None."""
    if not cfg.vlm_path:
        return None
    from idcrafter.encoders.vlm import VLMGrounder

    if cfg.vlm_path == "tiny":  # random frozen Qwen2.5-VL over SpriteWorld's words (ablations)
        return VLMGrounder.tiny(cfg.text_dim, vocab_words=caption_vocabulary(), seed=cfg.seed + 1)
    return VLMGrounder.from_pretrained(cfg.vlm_path, dtype=_dtype(cfg.frozen_dtype))


def frozen_sources(cfg: ModelConfig) -> dict[str, str]:
    """{component: folder} of the frozen components this config reads unchanged from disk."""
    from idcrafter.encoders.text import _resolve_folders
    from idcrafter.models.codecs import _config_folder

    out: dict[str, str] = {}
    if cfg.codec == "wan-vae":
        out["vae"] = str(_config_folder(codec_path(cfg), "Wan VAE", "", subfolder="vae"))
    if cfg.text_encoder != "tiny":
        out["text_encoder"] = str(_resolve_folders(Path(text_encoder_path(cfg)))[0])
    if cfg.vlm_path and cfg.vlm_path != "tiny":
        out["vlm"] = str(Path(cfg.vlm_path))
    return out


def frozen_shells(cfg: ModelConfig) -> tuple:
    """(codec, text encoder, VLM) with their weights on the meta device: built from the folders'
    configs (tokenizers and image processor loaded for real), for saving a pipeline whose frozen
    components are links to those folders without reading their weights."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan
    from transformers import AutoConfig, AutoTokenizer, Qwen2_5_VLModel, UMT5EncoderModel

    from idcrafter.encoders.text import TextEncoder, _resolve_folders
    from idcrafter.encoders.vlm import VLMGrounder, _image_processor
    from idcrafter.models.codecs import WanVAECodec

    srcs = frozen_sources(cfg)
    with init_empty_weights():
        codec = WanVAECodec(AutoencoderKLWan.from_config(AutoencoderKLWan.load_config(srcs["vae"])))
        model_dir, tok_dir = _resolve_folders(Path(text_encoder_path(cfg)))
        umt5 = UMT5EncoderModel(AutoConfig.from_pretrained(model_dir, local_files_only=True))
        vlm = None
        if "vlm" in srcs:
            qwen = Qwen2_5_VLModel(AutoConfig.from_pretrained(srcs["vlm"], local_files_only=True))
    text = TextEncoder(umt5, AutoTokenizer.from_pretrained(tok_dir, local_files_only=True), cfg.text_max_length)
    if "vlm" in srcs:
        folder = Path(srcs["vlm"])
        vlm = VLMGrounder(qwen, AutoTokenizer.from_pretrained(folder, local_files_only=True),
                          _image_processor(folder, None))
    return codec, text, vlm


def _pipeline_from_wan(cfg: ModelConfig, codec, text, vlm, sizes: dict) -> "IDCrafterPipeline":
    """Wan2.1 base (local folder, built on the meta device and loaded straight into
    `frozen_dtype`) + new subject modules, assembled like `build_pipeline` does."""
    from idcrafter.models.presets import preset, wan_config
    from idcrafter.models.transformer import IDCrafterTransformer3DModel
    from idcrafter.pipeline import assemble_pipeline

    extra = {k: v for k, v in preset(cfg.preset, **cfg.preset_overrides).items() if k not in wan_config(cfg.preset)}
    if extra.get("text_mode", "t5") != "t5":
        if vlm is None:
            raise InputError(f"preset {cfg.preset} reads a VLM (text_mode {extra['text_mode']}): set model.vlm_path "
                             "(--vlm), or model.preset_overrides={\"text_mode\": \"t5\"} for T5 alone")
        extra["vlm_dim"] = vlm.dim
    transformer = IDCrafterTransformer3DModel.from_wan(cfg.wan_path, frozen_dtype=_dtype(cfg.frozen_dtype), **extra)
    return assemble_pipeline(transformer, codec, text, vlm, **sizes)
