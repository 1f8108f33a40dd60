"""IDCrafterPipeline: prompt + reference images -> video.

One sampler (`idcrafter.sampling.sample`) serves inference (ODE + guidance) and RL (SDE with
log-probs): `encode_conditions` and `denoise` are public so the RL trainer calls exactly what
`__call__` calls, with `mode="sde"`.

Components are stored in their native classes (so diffusers' `save_pretrained` /
`from_pretrained` handle them): the DiT, the VAE (`AutoencoderKLWan`) or the SpriteWorld
`PixelCodec`, UMT5 + tokenizer, optionally Qwen2.5-VL + tokenizer + image processor, and a
`FlowMatchEulerDiscreteScheduler` that only carries the schedule's `shift`. The pipeline wraps
them in `TextEncoder`, `VLMGrounder` and `Codec` when it runs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from idcrafter import sampling
from idcrafter.encoders.references import prepare_reference
from idcrafter.encoders.subject import CLIP_MEAN, CLIP_STD
from idcrafter.errors import InputError
from idcrafter.models.codecs import Codec, WanVAECodec
from idcrafter.models.transformer import ConditionCache, IDCrafterTransformer3DModel

if TYPE_CHECKING:
    from idcrafter.conditioning import ConditionEncoder, ConditionInputs

ImageLike = Any  # path, PIL image or (H, W, 3) uint8 array


@dataclass
class Conditions:
    """Everything the denoiser needs besides the latents, computed once per batch.

    cache: the transformer's condition cache over [cond; uncond] rows (or cond rows only when
    guidance is off); batch_size: B (rows per branch); cond / uncond: the encoded inputs of both
    branches (`idcrafter.conditioning.ConditionInputs`; uncond None without guidance), from which
    a trainer recomputes the same velocities with gradients.
    """

    cache: ConditionCache
    batch_size: int
    guided: bool
    cond: "ConditionInputs | None" = None
    uncond: "ConditionInputs | None" = None


@dataclass
class IDCrafterPipelineOutput:
    # "np": (B, F, H, W, 3) in [0, 1]; "pt": (B, 3, F, H, W); "pil": B lists of F PIL images; "latent"
    frames: np.ndarray | torch.Tensor | list


class IDCrafterPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->vlm->transformer->vae"
    _optional_components = ["vlm", "vlm_tokenizer", "vlm_processor", "subject_encoder"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> "IDCrafterPipeline":
        """Load a saved pipeline from a LOCAL folder only (a hub name is refused, nothing is
        downloaded), safetensors only, strictly (weights must match the configs); bad folders
        raise one-line `InputError`s. See `idcrafter.loading`."""
        from idcrafter.build import refuse_wan_folder
        from idcrafter.linking import check_links
        from idcrafter.loading import load_pipeline

        refuse_wan_folder(pretrained_model_name_or_path)  # a plain Wan2.1 folder: say how to build from it
        if cls is IDCrafterPipeline and _saved_class_name(pretrained_model_name_or_path) == "PhantomPipeline":
            from idcrafter.peer import PhantomPipeline  # the issue-15 peer samples with its own guidance

            return PhantomPipeline.from_pretrained(pretrained_model_name_or_path, **kwargs)
        sources = check_links(pretrained_model_name_or_path)  # linked frozen components (idcrafter.linking)
        parent = super(IDCrafterPipeline, cls).from_pretrained
        pipe = load_pipeline(cls, pretrained_model_name_or_path, parent, **kwargs)
        pipe.component_sources = sources
        return pipe

    @classmethod
    def from_wan(cls, wan: str, vlm: str | None = None, **kwargs) -> "IDCrafterPipeline":
        """A new IDCrafter pipeline from a local Wan2.1 pipeline folder (transformer, VAE, UMT5)
        and, for the presets that ground prompts with a VLM, a Qwen2.5-VL folder; each folder is
        named once. Options (preset, dtype, sizes, subject-module settings): `idcrafter.build.from_wan`."""
        from idcrafter.build import from_wan

        return from_wan(wan, vlm, **kwargs)

    def save_pretrained(self, save_directory, safe_serialization: bool = True, link_frozen: bool = True,
                        **kwargs) -> None:
        """diffusers' save, except that frozen components loaded from local folders are written
        as links to those folders (`idcrafter.linking`; `link_frozen=False` copies them)."""
        from idcrafter.linking import save_with_links

        return save_with_links(self, super().save_pretrained, save_directory, link_frozen,
                               safe_serialization=safe_serialization, **kwargs)

    def __init__(self, transformer: IDCrafterTransformer3DModel, vae, text_encoder, tokenizer,
                 scheduler: FlowMatchEulerDiscreteScheduler, vlm=None, vlm_tokenizer=None, vlm_processor=None,
                 subject_encoder=None, default_height: int = 480, default_width: int = 832,
                 default_frames: int = 81, reference_size: int = 512, max_sequence_length: int = 512,
                 vlm_layer: int = -1, subject_image_mean: tuple[float, ...] | list[float] = CLIP_MEAN,
                 subject_image_std: tuple[float, ...] | list[float] = CLIP_STD, default_fps: int = 0):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler, vlm=vlm, vlm_tokenizer=vlm_tokenizer, vlm_processor=vlm_processor,
                              subject_encoder=subject_encoder)
        self.register_to_config(default_height=default_height, default_width=default_width,
                                default_frames=default_frames, reference_size=reference_size,
                                max_sequence_length=max_sequence_length, vlm_layer=vlm_layer,
                                subject_image_mean=tuple(subject_image_mean),
                                subject_image_std=tuple(subject_image_std), default_fps=int(default_fps))

    # ------------------------------------------------------------------ wrappers
    @property
    def fps(self) -> int:
        """Frame rate of the clips this pipeline makes: `default_fps`, or for folders saved before
        it existed (0), SpriteWorld's 4 with the pixel codec and Wan's 16 otherwise."""
        from idcrafter.models.codecs import PixelCodec
        from idcrafter.utils.media import SPRITEWORLD_FPS, WAN_FPS

        fps = int(self.config.get("default_fps", 0) or 0)
        return fps if fps > 0 else SPRITEWORLD_FPS if isinstance(self.vae, PixelCodec) else WAN_FPS

    @property
    def codec(self) -> Codec:
        if isinstance(self.vae, Codec):
            return self.vae
        if getattr(self, "_codec", None) is None or self._codec.vae is not self.vae:
            self._codec = WanVAECodec(self.vae)
        return self._codec

    @property
    def prompt_encoder(self):
        from idcrafter.encoders.text import TextEncoder

        return TextEncoder(self.text_encoder, self.tokenizer, self.config.max_sequence_length)

    @property
    def grounder(self):
        if self.vlm is None:
            return None
        from idcrafter.encoders.vlm import VLMGrounder

        return VLMGrounder(self.vlm, self.vlm_tokenizer, self.vlm_processor, self.config.vlm_layer)

    # ------------------------------------------------------------------ conditions
    def prepare_references(self, references: list[list[ImageLike]]) -> list[list[np.ndarray]]:
        """Each row's references as uint8 canvases of `reference_size` (`prepare_reference`)."""
        k_max = self.transformer.config.max_subjects
        prepared = []
        for refs in references:
            if len(refs) == 0:
                raise InputError("no reference image given: pass one reference per subject")
            if len(refs) > k_max:
                raise InputError(f"{len(refs)} references given; this model supports at most {k_max} subjects")
            prepared.append([prepare_reference(r, self.config.reference_size) for r in refs])
        return prepared

    def condition_encoder(self) -> "ConditionEncoder":
        """The shared condition encoder (`idcrafter.conditioning`) on this pipeline's device."""
        from idcrafter.conditioning import ConditionEncoder

        return ConditionEncoder(self, self._execution_device, cache_size=0)

    @torch.no_grad()
    def encode_conditions(self, prompts: list[str], references: list[list[ImageLike]], guidance_scale: float,
                          negative_prompt: str = "", guide_references: bool = True) -> Conditions:
        """Encode prompts and references once; with guidance, stack [cond; uncond] rows.

        The unconditional rows get `negative_prompt` and, with `guide_references` (default), no
        references, so guidance pushes samples toward their references as well as the prompt;
        without it they keep the references and guidance acts on the prompt only (measured worse
        for identity on SpriteWorld, see docs/model.md). Encoding is `idcrafter.conditioning`'s,
        the one every trainer uses; the returned `Conditions` keep its inputs (`cond`, `uncond`)
        beside the cache, so a trainer can re-run the same conditions with gradients."""
        if len(prompts) != len(references):
            raise InputError(f"{len(prompts)} prompt(s) but {len(references)} reference set(s)")
        b = len(prompts)
        guided = guidance_scale != 1.0
        prepared = self.prepare_references(references)
        enc = self.condition_encoder()
        cond = enc.encode(prompts, prepared)
        uncond = None
        if guided:  # the unconditional rows carry no references unless guide_references is off
            uncond = enc.encode([negative_prompt] * b, None if guide_references else prepared)
        inputs = cond if uncond is None else cond.cat(uncond)
        return Conditions(inputs.build_cache(self.transformer), b, guided, cond, uncond)

    # ------------------------------------------------------------------ sampling
    def velocity_fn(self, conditions: Conditions, guidance_scale: float) -> Callable:
        return make_velocity_fn(self.transformer, conditions, guidance_scale)

    def denoise(self, conditions: Conditions, latents: torch.Tensor, num_inference_steps: int,
                guidance_scale: float, mode: str = "ode", callback: Callable[[int, int], None] | None = None,
                **sample_kwargs) -> sampling.SampleOutput:
        """Integrate latents with the shared sampler (`mode="sde"` gives RL log-probs).
        `callback(i, N)` runs after step i (a server reports progress with it, and cancels a job
        by raising from it)."""
        sigmas = sampling.sigma_schedule(num_inference_steps, shift=self.scheduler.config.shift)
        with self.progress_bar(total=num_inference_steps) as bar:
            def step_done(i: int, n: int) -> None:
                bar.update()
                if callback is not None:
                    callback(i, n)

            return sampling.sample(self.velocity_fn(conditions, guidance_scale), latents, sigmas, mode=mode,
                                   callback=step_done, **sample_kwargs)

    def check_size(self, height: int | None, width: int | None, num_frames: int | None) -> tuple[int, int, int]:
        """Defaults, then Wan's rounding (frames to the codec's rule, size to codec x patch) with warnings."""
        from idcrafter.validation import check_video_size

        check_video_size(num_frames, height, width)  # 0, negative, NaN or huge: refused, never defaulted
        h = self.config.default_height if height is None else height
        w = self.config.default_width if width is None else width
        f = self.config.default_frames if num_frames is None else num_frames
        patch = self.transformer.config.patch_size
        f = self.codec.valid_frames(int(f))
        h2, w2 = self.codec.valid_size(int(h), int(w), patch=int(patch[1]))
        if h2 < 1 or w2 < 1 or f < 1:
            raise InputError(f"size {h}x{w} with {num_frames} frames is too small for this model")
        return h2, w2, f

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], reference_images: Sequence[ImageLike] | Sequence[Sequence[ImageLike]],
                 height: int | None = None, width: int | None = None, num_frames: int | None = None,
                 num_inference_steps: int = 50, guidance_scale: float = 2.5, negative_prompt: str = "",
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "np", return_dict: bool = True, guide_references: bool = True,
                 callback: Callable[[int, int], None] | None = None, sampler: str = "ode",
                 noise_level: float | None = None,
                 noise_generator: torch.Generator | Sequence[torch.Generator] | None = None):
        """Generate videos. `reference_images` is one list per prompt (or one list for one prompt).
        `guide_references=False` keeps the references in guidance's unconditional branch (see
        `encode_conditions`); `callback(i, N)` runs after each denoising step (see `denoise`).
        `sampler`: "ode" (Euler, the default) or a stochastic sampler of RL rollouts, "flow"
        (Flow-GRPO's SDE) or "cps", with `noise_level` and the step noise drawn from
        `noise_generator` (one per prompt for per-sample reproducibility); sampling as a policy
        was trained shows what an RL policy learned under its rollouts' noise."""
        if not isinstance(prompt, (str, list, tuple)):
            raise InputError(f"prompt must be text or a list of texts, got {type(prompt).__name__}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        refs = [list(reference_images)] if isinstance(prompt, str) else [list(r) for r in reference_images]
        if output_type not in ("np", "pil", "pt", "latent"):
            raise InputError(f"output_type must be 'np', 'pil', 'pt' or 'latent', got {output_type!r}")
        sample_kw = sampling.sampler_kwargs(sampler, noise_level, noise_generator)
        from idcrafter.validation import check_generation

        check_generation(prompts, refs, num_inference_steps, guidance_scale, self.transformer.config.max_subjects,
                         negative_prompt)
        h, w, f = self.check_size(height, width, num_frames)
        cond = self.encode_conditions(prompts, refs, guidance_scale, negative_prompt, guide_references)
        shape = (len(prompts), *self.codec.latent_shape(f, h, w))
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(self._execution_device)
        out = self.denoise(cond, latents, num_inference_steps, guidance_scale, callback=callback,
                           **sample_kw).latents
        if output_type != "latent":
            video = self.codec.decode(out).clamp(-1, 1).add(1).div(2)  # (B, 3, F, H, W) in [0, 1]
            out = video if output_type == "pt" else video.permute(0, 2, 3, 4, 1).cpu().float().numpy()
            if output_type == "pil":  # as diffusers' video pipelines: one list of frames per video
                from PIL import Image

                out = [[Image.fromarray(f) for f in (v * 255 + 0.5).clip(0, 255).astype(np.uint8)] for v in out]
        return IDCrafterPipelineOutput(frames=out) if return_dict else (out,)


def _saved_class_name(folder: Any) -> str | None:
    """`_class_name` of a saved pipeline folder's model_index.json (None if unreadable: the
    loader's own checks then report the folder)."""
    import json
    from pathlib import Path

    try:
        return json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8")).get("_class_name")
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def make_velocity_fn(transformer: IDCrafterTransformer3DModel, conditions: Conditions,
                     guidance_scale: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The guided velocity `v(x, sigma)` the sampler integrates: one forward over [cond; uncond]
    rows, every static condition read from the cache."""
    def model_fn(x: torch.Tensor, sigma: torch.Tensor, branches: str) -> torch.Tensor:
        # the cache holds exactly the rows asked for: [cond; uncond] when guided, cond otherwise
        t = sampling.sigma_to_timestep(sigma).to(x.device)
        return transformer(x.to(transformer.dtype), t, condition_cache=conditions.cache).sample.float()

    return lambda x, sigma: sampling.guided_velocity(model_fn, x, sigma, guidance_scale)


def build_pipeline(preset_name: str, codec: Codec, text_encoder, vlm=None, subject_encoder=None, *,
                   default_height: int = 48,
                   default_width: int = 48, default_frames: int = 9, reference_size: int = 32,
                   shift: float = 3.0, default_fps: int = 0, **overrides) -> IDCrafterPipeline:
    """A new pipeline around a fresh transformer of `preset_name`, sized to its encoders.

    The transformer's in/out channels follow the codec, `text_dim` the text encoder and
    `vlm_dim` the VLM (when `text_mode` uses one). Used by tests and by SFT recipes.
    """
    from idcrafter.models.presets import preset, transformer_class

    cfg = preset(preset_name, **overrides)
    model_cls = transformer_class(cfg.pop("architecture", "idcrafter"))  # ours, or a peer (models.phantom)
    cfg.update(in_channels=codec.latent_channels, out_channels=codec.latent_channels, text_dim=text_encoder.dim)
    if cfg.get("text_mode", "t5") != "t5":
        if vlm is None:
            raise InputError(f"text_mode {cfg['text_mode']!r} needs a VLM")
        cfg["vlm_dim"] = vlm.dim
    if subject_encoder is not None:
        cfg["subject_feature_dim"] = subject_encoder.dim
    return assemble_pipeline(model_cls(**cfg), codec, text_encoder, vlm, subject_encoder,
                             default_height=default_height, default_width=default_width,
                             default_frames=default_frames, reference_size=reference_size, shift=shift,
                             default_fps=default_fps)


def assemble_pipeline(transformer: IDCrafterTransformer3DModel, codec: Codec, text_encoder, vlm=None,
                      subject_encoder=None, *, default_height: int = 48, default_width: int = 48,
                      default_frames: int = 9, reference_size: int = 32, shift: float = 3.0,
                      default_fps: int = 0) -> IDCrafterPipeline:
    """The one place a new pipeline is put together from a transformer and its (wrapped) encoders:
    `build_pipeline` (a fresh preset) and `idcrafter.builder` (config-driven: random, from Wan
    weights) both end here."""
    vae = codec if not isinstance(codec, WanVAECodec) else codec.vae
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    pipeline_cls = IDCrafterPipeline
    if getattr(transformer, "pipeline_class", None):  # a peer model names the pipeline that samples it
        import importlib

        module, _, name = transformer.pipeline_class.partition(":")
        pipeline_cls = getattr(importlib.import_module(module), name)
    return pipeline_cls(
        transformer, vae, text_encoder.model, text_encoder.tokenizer, scheduler,
        vlm=None if vlm is None else vlm.model, vlm_tokenizer=None if vlm is None else vlm.tokenizer,
        vlm_processor=None if vlm is None else vlm.image_processor,
        subject_encoder=None if subject_encoder is None else subject_encoder.model,
        subject_image_mean=tuple(subject_encoder.mean.flatten().tolist()) if subject_encoder is not None else CLIP_MEAN,
        subject_image_std=tuple(subject_encoder.std.flatten().tolist()) if subject_encoder is not None else CLIP_STD,
        default_height=default_height, default_width=default_width, default_frames=default_frames,
        reference_size=reference_size, max_sequence_length=text_encoder.max_length,
        vlm_layer=-1 if vlm is None else vlm.layer, default_fps=default_fps)


def _register_with_diffusers() -> None:
    """Make `DiffusionPipeline.from_pretrained(folder)` return an `IDCrafterPipeline`: diffusers
    resolves model_index.json's `_class_name` as an attribute of the `diffusers` module, so the
    class is set there when this module is imported (any IDCrafter import that loads or builds a
    pipeline does it). That route skips `IDCrafterPipeline.from_pretrained`'s checks (local only,
    strict weights, links); prefer the class's own method."""
    import diffusers

    if getattr(diffusers, IDCrafterPipeline.__name__, None) is not IDCrafterPipeline:
        setattr(diffusers, IDCrafterPipeline.__name__, IDCrafterPipeline)


_register_with_diffusers()
