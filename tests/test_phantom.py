"""The Phantom-style peer (issue 15): shapes, references processed at every step, masking of
absent references, the three-pass guidance against a hand computation, the save/load round
trip, and the joints with the builder, the recipe and the SFT trainer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idcrafter import sampling
from idcrafter.builder import ModelConfig
from idcrafter.errors import InputError
from idcrafter.models.phantom import PhantomCache, PhantomTransformer3DModel
from idcrafter.models.presets import preset
from idcrafter.peer import PhantomPipeline, make_phantom_velocity_fn, phantom_guidance


def tiny_model(seed: int = 0) -> PhantomTransformer3DModel:
    torch.manual_seed(seed)
    cfg = preset("debug")
    model = PhantomTransformer3DModel(**cfg).eval()
    with torch.no_grad():  # a random model whose every weight matters (Wan's gates start at random too)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def tiny_pipe(seed: int = 0) -> PhantomPipeline:
    cfg = ModelConfig(preset="debug", text_dim=32, reference_size=24, height=24, width=24, frames=3, seed=seed,
                      preset_overrides={"architecture": "phantom"})
    pipe = cfg.build()
    with torch.no_grad():
        for p in pipe.transformer.parameters():
            p.add_(0.05 * torch.randn_like(p, generator=torch.Generator().manual_seed(seed)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def refs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in range(n)]


def inputs(b: int = 2, k: int = 3, f: int = 3, hw: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 4, f, hw, hw, generator=g)  # (B, C, F, H, W)
    text = torch.randn(b, 5, 32, generator=g)
    subj = torch.randn(b, k, 4, 1, hw, hw, generator=g)  # (B, K, C, 1, h, w)
    return x, text, subj


def test_builder_and_recipe_make_the_peer():
    pipe = tiny_pipe()
    assert type(pipe) is PhantomPipeline and type(pipe.transformer) is PhantomTransformer3DModel
    names = [n for n, _ in pipe.transformer.named_parameters()]
    assert not any("subject" in n for n in names)  # Wan's parameters only: references enter as frames
    from idcrafter.recipes import recipe

    cfg = recipe("sprites-phantom")
    assert cfg.model.preset_overrides == {"architecture": "phantom"}
    assert cfg.model.reference_size == cfg.data.ref_size == cfg.data.height == cfg.model.height
    with pytest.raises(InputError):
        ModelConfig(preset="debug", text_dim=32, preset_overrides={"architecture": "nope"}).build()


def test_latent_recipe_is_the_latent_recipe_with_reference_frames_of_the_video_size():
    """`sprites-latent-phantom` differs from `sprites-latent` only in the architecture and the
    reference size, and the shipped VAE turns each reference into one latent frame of the video's
    latent size (what the peer's forward requires)."""
    import dataclasses

    from idcrafter.recipes import recipe

    cfg, base = recipe("sprites-latent-phantom"), recipe("sprites-latent")
    differs = {k for k, v in dataclasses.asdict(cfg.model).items() if dataclasses.asdict(base.model)[k] != v}
    assert differs == {"preset_overrides", "reference_size"}
    assert dataclasses.asdict(cfg.loss) == dataclasses.asdict(base.loss) and cfg.train == base.train
    assert cfg.model.reference_size == cfg.data.ref_size == cfg.data.height
    pipe = cfg.model.build()
    assert type(pipe) is PhantomPipeline and type(pipe.transformer) is PhantomTransformer3DModel
    rng = np.random.default_rng(0)
    two = [rng.integers(0, 256, (cfg.data.ref_size, cfg.data.ref_size, 3), dtype=np.uint8) for _ in range(2)]
    cond = pipe.encode_conditions(["a girl waves"], [two], 2.5)
    c, f, h, w = pipe.codec.latent_shape(cfg.model.frames, cfg.model.height, cfg.model.width)
    assert tuple(cond.cache.references.shape) == (3, c, 2, h, w)  # (passes * B, C, K, h, w)


def test_forward_shapes_and_reference_tokens():
    model = tiny_model()
    x, text, subj = inputs(b=2, k=3)
    seen = []
    hook = model.patch_embedding.register_forward_hook(lambda m, a, out: seen.append(tuple(a[0].shape)))
    with torch.no_grad():
        out = model(x, torch.tensor([500.0, 100.0]), text, subject_latents=subj).sample
        none = model(x, torch.tensor([500.0, 100.0]), text).sample
    hook.remove()
    assert out.shape == x.shape and none.shape == x.shape  # video frames only come out
    assert seen == [(2, 4, 3 + 3, 8, 8), (2, 4, 3, 8, 8)]  # K reference frames appended along time
    assert not torch.allclose(out, none, atol=1e-4)
    with pytest.raises(InputError):  # a reference must have the video's latent size (Phantom pads to it)
        model(x, torch.tensor([1.0, 1.0]), text, subject_latents=subj[..., :4, :4])
    with pytest.raises(InputError):
        model(x, torch.ones(2, 10), text, subject_latents=subj)  # one timestep per sample


def test_absent_references_are_masked_not_attended():
    """A row with 1 reference in a batch padded to K=3 equals that row alone with K=1; the padded
    frames' contents do not matter; a row without references equals the text-only model."""
    model = tiny_model()
    x, text, subj = inputs(b=2, k=3)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    t = torch.tensor([700.0, 300.0])
    with torch.no_grad():
        both = model(x, t, text, subject_latents=subj, subject_mask=mask).sample
        alone = model(x[1:], t[1:], text[1:], subject_latents=subj[1:, :1]).sample
        noisy = subj.clone()
        noisy[1, 1:] = 100.0
        both2 = model(x, t, text, subject_latents=noisy, subject_mask=mask).sample
        no_refs = model(x[1:], t[1:], text[1:], subject_latents=subj[1:], subject_mask=torch.zeros(1, 3, dtype=torch.bool)).sample
        text_only = model(x[1:], t[1:], text[1:]).sample
    torch.testing.assert_close(both[1:], alone, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(both, both2, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(no_refs, text_only, atol=2e-5, rtol=1e-4)


def test_references_are_processed_at_every_step():
    """Every denoising step runs the model on video + reference frames (nothing about references is
    cached), and changing the references in the cache changes that step's velocity."""
    pipe = tiny_pipe()
    frames = []
    hook = pipe.transformer.patch_embedding.register_forward_hook(lambda m, a, out: frames.append(a[0].shape[2]))
    pipe("a girl waves", refs(3), num_inference_steps=4, guidance_scale=2.5, output_type="latent",
         generator=torch.Generator().manual_seed(0))
    hook.remove()
    assert frames == [3 + 3] * 4  # one batched forward per step, each over 3 video + 3 reference frames
    cond = pipe.encode_conditions(["a girl waves"], [refs(3)], 2.5)
    assert isinstance(cond.cache, PhantomCache) and cond.passes == 3
    v_fn = pipe.velocity_fn(cond, 2.5)
    other = pipe.encode_conditions(["a girl waves"], [refs(3, seed=1)], 2.5)
    v_other = pipe.velocity_fn(other, 2.5)
    x = torch.randn(1, *pipe.codec.latent_shape(3, 24, 24), generator=torch.Generator().manual_seed(1))
    for s in sampling.sigma_schedule(4)[:-1]:
        sig = torch.full((1,), float(s))
        assert (v_fn(x, sig) - v_other(x, sig)).abs().max() > 1e-4


def test_phantom_guidance_by_hand():
    v_all, v_img, v_null = torch.tensor([3.0, -1.0]), torch.tensor([2.0, 0.0]), torch.tensor([0.5, 1.0])
    # 0.5 + 5 (2 - 0.5) + 7.5 (3 - 2) = 15.5;  1 + 5 (0 - 1) + 7.5 (-1 - 0) = -11.5
    torch.testing.assert_close(phantom_guidance(v_all, v_img, v_null, 5.0, 7.5), torch.tensor([15.5, -11.5]))
    torch.testing.assert_close(phantom_guidance(v_all, v_img, v_null, 1.0, 1.0), v_all)


def test_three_pass_velocity_equals_three_separate_passes():
    """The batched velocity of the pipeline = the formula on three separate forwards with the
    (prompt, refs), (negative, refs) and (negative, none) conditions."""
    pipe = tiny_pipe()
    scale = 2.5
    s_img = pipe.image_scale(scale)
    assert s_img == pytest.approx(scale * 5.0 / 7.5)
    r = refs(2)
    cond = pipe.encode_conditions(["a girl waves"], [r], scale, negative_prompt="blurry")
    x = torch.randn(1, *pipe.codec.latent_shape(3, 24, 24), generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.7])
    v = make_phantom_velocity_fn(pipe.transformer, cond, scale, s_img)(x, sigma)
    enc = pipe.condition_encoder()
    prepared = pipe.prepare_references([r])
    t = sampling.sigma_to_timestep(sigma)
    with torch.no_grad():
        run = lambda c: pipe.transformer(x, t, **c.model_kwargs()).sample  # noqa: E731
        v_all = run(enc.encode(["a girl waves"], prepared))
        v_img = run(enc.encode(["blurry"], prepared))
        v_null = run(enc.encode(["blurry"], None))
    hand = v_null + s_img * (v_img - v_null) + scale * (v_all - v_img)
    torch.testing.assert_close(v, hand, atol=1e-4, rtol=1e-4)
    two = pipe.encode_conditions(["a girl waves"], [r], scale, negative_prompt="blurry", guide_references=False)
    v2 = pipe.velocity_fn(two, scale)(x, sigma)
    torch.testing.assert_close(v2, v_img + scale * (v_all - v_img), atol=1e-4, rtol=1e-4)


def test_save_load_round_trip(tmp_path):
    pipe = tiny_pipe(seed=3)
    out = pipe("a girl waves", refs(2), num_inference_steps=3, guidance_scale=2.5, output_type="np",
               generator=torch.Generator().manual_seed(0)).frames
    pipe.save_pretrained(tmp_path / "peer")
    back = PhantomPipeline.from_pretrained(str(tmp_path / "peer"))
    assert type(back) is PhantomPipeline and type(back.transformer) is PhantomTransformer3DModel
    keys = ("num_layers", "in_channels", "attention_head_dim", "max_subjects", "text_dim")
    assert {k: back.transformer.config[k] for k in keys} == {k: pipe.transformer.config[k] for k in keys}
    for a, b in zip(pipe.transformer.state_dict().values(), back.transformer.state_dict().values()):
        assert torch.equal(a, b)
    back.set_progress_bar_config(disable=True)
    again = back("a girl waves", refs(2), num_inference_steps=3, guidance_scale=2.5, output_type="np",
                 generator=torch.Generator().manual_seed(0)).frames
    np.testing.assert_array_equal(out, again)
    from idcrafter.eval.runner import load_generator

    assert type(load_generator(tmp_path / "peer")) is PhantomPipeline  # `idcrafter eval --model` runs it


def test_sft_trains_the_peer(tmp_path):
    """The unchanged SFT engine trains the peer (its loss reads video frames only) and exports it."""
    from idcrafter.config import apply_overrides
    from idcrafter.recipes import recipe
    from idcrafter.train.sft import Trainer

    cfg = apply_overrides(recipe("debug"), ['model.preset_overrides={"architecture": "phantom"}',
                                            "model.reference_size=24", "data.ref_size=24", "train.steps=2",
                                            "checkpoint.every=2", "eval.every=0", "eval.sample_every=0"])
    metrics = Trainer(cfg, tmp_path / "run").train()
    assert np.isfinite(metrics["loss"])
    back = PhantomPipeline.from_pretrained(str(tmp_path / "run" / "pipeline"))
    assert type(back.transformer) is PhantomTransformer3DModel


def test_idcrafter_pipeline_loads_a_peer_folder_as_the_peer(tmp_path):
    """`IDCrafterPipeline.from_pretrained` (what `idcrafter generate` uses) on a peer folder gives
    the peer's pipeline, so its three-pass guidance is never silently replaced by ours."""
    from idcrafter.pipeline import IDCrafterPipeline

    tiny_pipe().save_pretrained(tmp_path / "peer")
    assert type(IDCrafterPipeline.from_pretrained(str(tmp_path / "peer"))) is PhantomPipeline
