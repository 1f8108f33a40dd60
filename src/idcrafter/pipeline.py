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
from typing import Any, Callable, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler

from idcrafter import sampling
from idcrafter.encoders.references import prepare_reference
from idcrafter.encoders.subject import CLIP_MEAN, CLIP_STD
from idcrafter.errors import InputError
from idcrafter.models.codecs import Codec, WanVAECodec
from idcrafter.models.transformer import ConditionCache, IDCrafterTransformer3DModel

ImageLike = Any  # path, PIL image or (H, W, 3) uint8 array


@dataclass
class Conditions:
    """Everything the denoiser needs besides the latents, computed once per batch.

    cache: the transformer's condition cache over [cond; uncond] rows (or cond rows only when
    guidance is off); batch_size: B (rows per branch).
    """

    cache: ConditionCache
    batch_size: int
    guided: bool


@dataclass
class IDCrafterPipelineOutput:
    frames: np.ndarray | torch.Tensor  # "np": (B, F, H, W, 3) in [0, 1]; "pt": (B, 3, F, H, W); "latent"


class IDCrafterPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->vlm->transformer->vae"
    _optional_components = ["vlm", "vlm_tokenizer", "vlm_processor", "subject_encoder"]

    def __init__(self, transformer: IDCrafterTransformer3DModel, vae, text_encoder, tokenizer,
                 scheduler: FlowMatchEulerDiscreteScheduler, vlm=None, vlm_tokenizer=None, vlm_processor=None,
                 subject_encoder=None, default_height: int = 480, default_width: int = 832,
                 default_frames: int = 81, reference_size: int = 512, max_sequence_length: int = 512,
                 vlm_layer: int = -1, subject_image_mean: tuple = CLIP_MEAN, subject_image_std: tuple = CLIP_STD):
        super().__init__()
        self.register_modules(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler, vlm=vlm, vlm_tokenizer=vlm_tokenizer, vlm_processor=vlm_processor,
                              subject_encoder=subject_encoder)
        self.register_to_config(default_height=default_height, default_width=default_width,
                                default_frames=default_frames, reference_size=reference_size,
                                max_sequence_length=max_sequence_length, vlm_layer=vlm_layer,
                                subject_image_mean=tuple(subject_image_mean),
                                subject_image_std=tuple(subject_image_std))

    # ------------------------------------------------------------------ wrappers
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
    def _reference_latents(self, references: list[list[ImageLike]]) -> tuple[torch.Tensor, torch.Tensor, list]:
        """(B, K, C, 1, h, w) normalised latents, (B, K) mask, and the prepared uint8 images."""
        k_max = self.transformer.config.max_subjects
        prepared = []
        for refs in references:
            if len(refs) == 0:
                raise InputError("no reference image given: pass one reference per subject")
            if len(refs) > k_max:
                raise InputError(f"{len(refs)} references given; this model supports at most {k_max} subjects")
            prepared.append([prepare_reference(r, self.config.reference_size) for r in refs])
        k = max(len(r) for r in prepared)
        device = self.transformer.device
        if self.transformer.config.subject_feature_dim:  # vision-backbone tokens, (K_b, L, D) each
            if self.subject_encoder is None:
                raise InputError("this transformer reads vision features of references but the pipeline "
                                 "has no subject_encoder: pass one (a CLIP/SigLIP/DINOv2 vision model)")
            from idcrafter.encoders.subject import VisionSubjectEncoder

            enc = VisionSubjectEncoder(self.subject_encoder, self.config.subject_image_mean,
                                       self.config.subject_image_std)
            lat = [enc.encode(np.stack(r)).to(device) for r in prepared]
        else:
            imgs = [torch.from_numpy(np.stack(r)).permute(0, 3, 1, 2).float().div(127.5).sub(1) for r in prepared]
            lat = [self.codec.encode_image(i.to(device)) for i in imgs]  # each (K_b, C, 1, h, w)
        out = lat[0].new_zeros((len(lat), k, *lat[0].shape[1:]))
        mask = torch.zeros(len(lat), k, dtype=torch.bool, device=device)
        for b, z in enumerate(lat):
            out[b, : len(z)] = z
            mask[b, : len(z)] = True
        return out, mask, prepared

    @torch.no_grad()
    def encode_conditions(self, prompts: list[str], references: list[list[ImageLike]], guidance_scale: float,
                          negative_prompt: str = "", guide_references: bool = True) -> Conditions:
        """Encode prompts and references once; with guidance, stack [cond; uncond] rows.

        The unconditional rows get `negative_prompt` and, with `guide_references` (default), no
        references, so guidance pushes samples toward their references as well as the prompt;
        without it they keep the references and guidance acts on the prompt only (measured worse
        for identity on SpriteWorld, see docs/model.md)."""
        if len(prompts) != len(references):
            raise InputError(f"{len(prompts)} prompt(s) but {len(references)} reference set(s)")
        b = len(prompts)
        guided = guidance_scale != 1.0
        subj, subj_mask, prepared = self._reference_latents(references)
        all_prompts = list(prompts) + ([negative_prompt] * b if guided else [])
        t5, t5_mask = self.prompt_encoder.encode(all_prompts)
        device = self.transformer.device
        drop_refs = guided and guide_references  # the unconditional rows carry no references
        if guided:
            subj = torch.cat([subj, torch.zeros_like(subj) if drop_refs else subj])
            subj_mask = torch.cat([subj_mask, torch.zeros_like(subj_mask) if drop_refs else subj_mask])
        grounded = grounded_mask = None
        if self.grounder is not None and self.transformer.config.text_mode != "t5":
            cond_images = [[np.asarray(i) for i in p] for p in prepared]
            uncond_images = ([[]] * b if drop_refs else cond_images) if guided else []
            images = cond_images + uncond_images
            grounded, grounded_mask = self.grounder.encode(all_prompts, images)
        dtype = self.transformer.dtype
        cache = self.transformer.build_condition_cache(
            t5.to(device, dtype), subj.to(dtype), subj_mask, t5_mask.to(device),
            None if grounded is None else grounded.to(device, dtype),
            None if grounded_mask is None else grounded_mask.to(device))
        return Conditions(cache, b, guided)

    # ------------------------------------------------------------------ sampling
    def velocity_fn(self, conditions: Conditions, guidance_scale: float) -> Callable:
        return make_velocity_fn(self.transformer, conditions, guidance_scale)

    def denoise(self, conditions: Conditions, latents: torch.Tensor, num_inference_steps: int,
                guidance_scale: float, mode: str = "ode", **sample_kwargs) -> sampling.SampleOutput:
        """Integrate latents with the shared sampler (`mode="sde"` gives RL log-probs)."""
        sigmas = sampling.sigma_schedule(num_inference_steps, shift=self.scheduler.config.shift)
        with self.progress_bar(total=num_inference_steps) as bar:
            return sampling.sample(self.velocity_fn(conditions, guidance_scale), latents, sigmas, mode=mode,
                                   callback=lambda i, n: bar.update(), **sample_kwargs)

    def check_size(self, height: int | None, width: int | None, num_frames: int | None) -> tuple[int, int, int]:
        """Defaults, then Wan's rounding (frames to the codec's rule, size to codec x patch) with warnings."""
        h = height or self.config.default_height
        w = width or self.config.default_width
        f = num_frames or self.config.default_frames
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
                 output_type: str = "np", return_dict: bool = True, guide_references: bool = True):
        """Generate videos. `reference_images` is one list per prompt (or one list for one prompt).
        `guide_references=False` keeps the references in guidance's unconditional branch (see
        `encode_conditions`)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        refs = [list(reference_images)] if isinstance(prompt, str) else [list(r) for r in reference_images]
        if output_type not in ("np", "pt", "latent"):
            raise InputError(f"output_type must be 'np', 'pt' or 'latent', got {output_type!r}")
        h, w, f = self.check_size(height, width, num_frames)
        cond = self.encode_conditions(prompts, refs, guidance_scale, negative_prompt, guide_references)
        shape = (len(prompts), *self.codec.latent_shape(f, h, w))
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(self.transformer.device)
        out = self.denoise(cond, latents, num_inference_steps, guidance_scale).latents
        if output_type != "latent":
            video = self.codec.decode(out).clamp(-1, 1).add(1).div(2)  # (B, 3, F, H, W) in [0, 1]
            out = video if output_type == "pt" else video.permute(0, 2, 3, 4, 1).cpu().float().numpy()
        return IDCrafterPipelineOutput(frames=out) if return_dict else (out,)


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
                   shift: float = 3.0, **overrides) -> IDCrafterPipeline:
    """A new pipeline around a fresh transformer of `preset_name`, sized to its encoders.

    The transformer's in/out channels follow the codec, `text_dim` the text encoder and
    `vlm_dim` the VLM (when `text_mode` uses one). Used by tests and by SFT recipes.
    """
    from idcrafter.models.presets import preset

    cfg = preset(preset_name, **overrides)
    cfg.update(in_channels=codec.latent_channels, out_channels=codec.latent_channels, text_dim=text_encoder.dim)
    if cfg.get("text_mode", "t5") != "t5":
        if vlm is None:
            raise InputError(f"text_mode {cfg['text_mode']!r} needs a VLM")
        cfg["vlm_dim"] = vlm.dim
    if subject_encoder is not None:
        cfg["subject_feature_dim"] = subject_encoder.dim
    transformer = IDCrafterTransformer3DModel(**cfg)
    vae = codec if not isinstance(codec, WanVAECodec) else codec.vae
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    return IDCrafterPipeline(
        transformer, vae, text_encoder.model, text_encoder.tokenizer, scheduler,
        vlm=None if vlm is None else vlm.model, vlm_tokenizer=None if vlm is None else vlm.tokenizer,
        vlm_processor=None if vlm is None else vlm.image_processor,
        subject_encoder=None if subject_encoder is None else subject_encoder.model,
        subject_image_mean=tuple(subject_encoder.mean.flatten().tolist()) if subject_encoder is not None else CLIP_MEAN,
        subject_image_std=tuple(subject_encoder.std.flatten().tolist()) if subject_encoder is not None else CLIP_STD,
        default_height=default_height, default_width=default_width, default_frames=default_frames,
        reference_size=reference_size, max_sequence_length=text_encoder.max_length,
        vlm_layer=-1 if vlm is None else vlm.layer)
