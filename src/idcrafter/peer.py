"""The Phantom-style peer's pipeline: three-pass guidance on the shared sampler (issue 15).

    pipe = PhantomPipeline.from_pretrained("runs/peer-phantom/pipeline")
    video = pipe(prompt, references, num_inference_steps=50, guidance_scale=2.5).frames

Everything but the guidance is `IDCrafterPipeline`'s (reference preparation, encoding through
`idcrafter.conditioning`, the sampler `idcrafter.sampling.sample`, decoding); the model is
`idcrafter.models.phantom.PhantomTransformer3DModel` (references as extra latent frames).

Phantom-Wan's guidance (`subject2video.py`) runs three passes per step:
    v = v_null + s_img (v_img - v_null) + s_text (v_all - v_img)
with v_all = (prompt, references), v_img = (negative prompt, references), v_null = (negative
prompt, no references); Phantom's defaults are s_img 5.0, s_text 7.5. Here `guidance_scale` is
s_text and s_img = `PhantomPipeline.image_guidance_ratio` * guidance_scale, the ratio being
Phantom's 5.0 / 7.5, so the one `--cfg` of `idcrafter eval` drives both models. Departures: the three
passes run as one batched forward of 3B rows (Phantom runs three forwards of one row: the same
FLOPs); `v_null`'s references are absent (masked, see `models.phantom`) where Phantom passes
zero latents; `guide_references=False` gives two passes (v_img + s_text (v_all - v_img)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from idcrafter import sampling
from idcrafter.conditioning import ConditionInputs
from idcrafter.errors import InputError
from idcrafter.pipeline import Conditions, IDCrafterPipeline

PHANTOM_IMAGE_SCALE, PHANTOM_TEXT_SCALE = 5.0, 7.5  # Phantom-Wan's published defaults


def phantom_guidance(v_all: torch.Tensor, v_img: torch.Tensor, v_null: torch.Tensor, image_scale: float,
                     text_scale: float) -> torch.Tensor:
    """Phantom's three-pass combination ``v_null + s_img (v_img - v_null) + s_text (v_all - v_img)``.

    With s_img = s_text = s it is ordinary guidance between v_all and v_null; s_img = s_text = 1 gives v_all."""
    return v_null + image_scale * (v_img - v_null) + text_scale * (v_all - v_img)


@dataclass
class PhantomConditions(Conditions):
    """`Conditions` whose cache holds `passes` groups of B rows: [all; img; null] (3), [all; img]
    (2, `guide_references=False`) or [all] (1, no guidance)."""

    passes: int = 1
    image: ConditionInputs | None = None


def make_phantom_velocity_fn(transformer: torch.nn.Module, conditions: PhantomConditions, guidance_scale: float,
                             image_scale: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The guided velocity `v(x, sigma)` the shared sampler integrates: one forward over the
    passes' rows (video + reference frames each), combined by `phantom_guidance`."""
    n = conditions.passes

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        t = sampling.sigma_to_timestep(sigma).to(x.device)  # (B,)
        xs, ts = torch.cat([x] * n), torch.cat([t] * n)  # (nB, C, F, H, W), (nB,)
        v = transformer(xs.to(transformer.dtype), ts, condition_cache=conditions.cache).sample.float()
        if n == 1:
            return v
        if n == 2:
            return sampling.cfg_combine(*v.chunk(2), guidance_scale)
        return phantom_guidance(*v.chunk(3), image_scale, guidance_scale)

    return velocity


class PhantomPipeline(IDCrafterPipeline):
    """`IDCrafterPipeline` with Phantom's three-pass guidance (module docstring)."""

    #: s_img / s_text; Phantom's defaults give 5.0 / 7.5 (an attribute, not config: diffusers builds
    #: a pipeline's config from its constructor's signature, which is IDCrafterPipeline's)
    image_guidance_ratio: float = PHANTOM_IMAGE_SCALE / PHANTOM_TEXT_SCALE

    def image_scale(self, guidance_scale: float) -> float:
        """s_img for a given s_text (= `guidance_scale`)."""
        if not self.image_guidance_ratio > 0:
            raise InputError(f"image_guidance_ratio must be > 0, got {self.image_guidance_ratio}")
        return float(self.image_guidance_ratio) * guidance_scale

    @torch.no_grad()
    def encode_conditions(self, prompts: list[str], references, guidance_scale: float, negative_prompt: str = "",
                          guide_references: bool = True) -> PhantomConditions:
        """Rows [all; img; null] (see the module docstring), encoded once; the cache carries the
        text K/V of every row and the reference frames that each step processes again."""
        if len(prompts) != len(references):
            raise InputError(f"{len(prompts)} prompt(s) but {len(references)} reference set(s)")
        b = len(prompts)
        prepared = self.prepare_references(references)
        enc = self.condition_encoder()
        cond = enc.encode(prompts, prepared)
        if guidance_scale == 1.0:
            return PhantomConditions(cond.build_cache(self.transformer), b, False, cond, None, passes=1)
        image = enc.encode([negative_prompt] * b, prepared)
        rows, passes, uncond = cond.cat(image), 2, None
        if guide_references:
            uncond = enc.encode([negative_prompt] * b, None)
            rows, passes = rows.cat(uncond), 3
        return PhantomConditions(rows.build_cache(self.transformer), b, True, cond, uncond, passes=passes, image=image)

    def velocity_fn(self, conditions: Conditions, guidance_scale: float) -> Callable:
        if not isinstance(conditions, PhantomConditions):
            raise InputError("PhantomPipeline samples conditions from its own encode_conditions")
        return make_phantom_velocity_fn(self.transformer, conditions, guidance_scale, self.image_scale(guidance_scale))


def _register_with_diffusers() -> None:
    """`DiffusionPipeline.from_pretrained(folder)` resolves `_class_name` on the diffusers module
    (as `idcrafter.pipeline` does for `IDCrafterPipeline`)."""
    import diffusers

    if getattr(diffusers, PhantomPipeline.__name__, None) is not PhantomPipeline:
        setattr(diffusers, PhantomPipeline.__name__, PhantomPipeline)


_register_with_diffusers()
