"""IDCrafterPipeline end to end on the debug size, save/load, bad input, and `idcrafter generate`."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from idcrafter.encoders.text import TextEncoder
from idcrafter.errors import InputError
from idcrafter.models.codecs import PixelCodec, WanVAECodec
from idcrafter.pipeline import IDCrafterPipeline, build_pipeline
from idcrafter.utils.media import save_image
from idcrafter.world.dataset import make_example


@pytest.fixture(scope="module")
def example():
    return make_example(0, 0, "heldout", num_subjects=2)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    p = build_pipeline("debug", PixelCodec(3, 2), TextEncoder.tiny(32, max_length=64))
    p.set_progress_bar_config(disable=True)
    with torch.no_grad():  # a trained-looking subject branch so references matter
        for blk in p.transformer.blocks:
            blk.subject_branch.gate.normal_(0, 0.5)
    return p


def run(p, ex, **kw):
    args = dict(height=48, width=48, num_frames=3, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    args.update(kw)
    return p(ex.caption, list(ex.refs), **args).frames


def test_end_to_end_shapes_and_range(pipe, example):
    out = run(pipe, example)
    assert out.shape == (1, 3, 48, 48, 3) and out.min() >= 0 and out.max() <= 1
    assert run(pipe, example, output_type="latent").shape == (1, 12, 3, 24, 24)
    batch = pipe([example.caption, "the person with short red hair waves"],
                 [list(example.refs), [example.refs[0]]], height=48, width=48, num_frames=3,
                 num_inference_steps=2).frames
    assert batch.shape == (2, 3, 48, 48, 3)


def test_references_change_the_output_and_seed_is_deterministic(pipe, example):
    a, b = run(pipe, example), run(pipe, example)
    assert np.array_equal(a, b)
    other = make_example(5, 1, "heldout", num_subjects=2)
    c = pipe(example.caption, list(other.refs), height=48, width=48, num_frames=3, num_inference_steps=2,
             generator=torch.Generator().manual_seed(0)).frames
    assert not np.allclose(a, c)


def test_guidance_keeps_or_drops_references_in_the_unconditional_branch(pipe, example):
    refs = [list(example.refs)]
    dropped = pipe.encode_conditions([example.caption], refs, 2.5)
    kept = pipe.encode_conditions([example.caption], refs, 2.5, guide_references=False)
    k_drop, k_keep = dropped.cache.subject_kv[0], kept.cache.subject_kv[0]
    assert k_drop[3].tolist() == [0] and k_drop[0].shape[0] == 1  # only the conditional row has subjects
    assert k_keep[3] is None and k_keep[0].shape[0] == 2  # both rows read subjects (the unconditional
    # row's differ from the conditional row's only because the inter-subject stage reads the prompt)
    assert torch.equal(k_keep[0][:1], k_drop[0])
    a = run(pipe, example, guidance_scale=2.5)
    b = run(pipe, example, guidance_scale=2.5, guide_references=False)
    assert not np.allclose(a, b)
    # without guidance there is no unconditional branch, so the option changes nothing
    assert np.array_equal(run(pipe, example, guidance_scale=1.0),
                          run(pipe, example, guidance_scale=1.0, guide_references=False))


def test_save_load_round_trip(pipe, example, tmp_path):
    pipe.save_pretrained(tmp_path)
    back = IDCrafterPipeline.from_pretrained(str(tmp_path))
    back.set_progress_bar_config(disable=True)
    assert back.config.reference_size == pipe.config.reference_size
    assert np.array_equal(run(pipe, example), run(back, example))


def test_bad_input(pipe, example):
    with pytest.raises(InputError, match="no reference"):
        pipe(example.caption, [], num_inference_steps=1)
    with pytest.raises(InputError, match="at most 4"):
        pipe(example.caption, [example.refs[0]] * 5, num_inference_steps=1)
    with pytest.warns(UserWarning, match="tokens dropped"):
        pipe(" ".join(["red"] * 200), [example.refs[0]], height=48, width=48, num_frames=2, num_inference_steps=1)
    with pytest.warns(UserWarning):  # 47 px is rounded down to what codec x patch allow
        out = pipe(example.caption, list(example.refs), height=47, width=48, num_frames=2, num_inference_steps=1).frames
    assert out.shape[2] == 44


def test_wan_vae_codec_and_vlm_grounding(example):
    from idcrafter.encoders.vlm import VLMGrounder

    p = build_pipeline("debug", WanVAECodec.tiny(), TextEncoder.tiny(32, max_length=32), VLMGrounder.tiny(64),
                       text_mode="t5+vlm", reference_size=16)
    p.set_progress_bar_config(disable=True)
    with pytest.warns(UserWarning):  # 6 frames is not 4k+1: rounded as Wan does
        out = p(example.caption, list(example.refs), height=16, width=16, num_frames=6, num_inference_steps=2).frames
    assert out.shape == (1, 5, 16, 16, 3)


def test_generate_cli(pipe, example, tmp_path):
    pipe.save_pretrained(tmp_path / "pipe")
    for i, r in enumerate(example.refs):
        save_image(tmp_path / f"ref_{i}.png", r)
    cmd = [sys.executable, "-m", "idcrafter.cli", "generate", "--model", str(tmp_path / "pipe"),
           "--ref", str(tmp_path / "ref_0.png"), "--ref", str(tmp_path / "ref_1.png"), "--prompt", example.caption,
           "--out", str(tmp_path / "o.mp4"), "--steps", "2", "--frames", "3"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "o.mp4").stat().st_size > 0 and (tmp_path / "o_sheet.png").is_file()
    bad = subprocess.run(cmd[:5] + [str(tmp_path)] + cmd[6:], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "not a pipeline folder" in bad.stderr


def test_vision_backbone_subject_encoder(example, tmp_path):
    from idcrafter.encoders.subject import VisionSubjectEncoder

    enc = VisionSubjectEncoder.tiny()
    p = build_pipeline("debug", PixelCodec(3, 2), TextEncoder.tiny(32, max_length=32), subject_encoder=enc)
    p.set_progress_bar_config(disable=True)
    assert p.transformer.config.subject_feature_dim == enc.dim
    out = run(p, example)
    assert out.shape == (1, 3, 48, 48, 3)
    p.save_pretrained(tmp_path)
    back = IDCrafterPipeline.from_pretrained(str(tmp_path))
    back.set_progress_bar_config(disable=True)
    assert np.array_equal(out, run(back, example))
    enc.model.save_pretrained(tmp_path / "clip")
    assert VisionSubjectEncoder.from_pretrained(tmp_path / "clip").dim == enc.dim
    from idcrafter.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="vision backbone"):
        VisionSubjectEncoder.from_pretrained(tmp_path / "none")


def test_heldout_clips_are_generated_once_and_keyed_by_settings(tmp_path, monkeypatch):
    """`heldout.generate_cached`: a second call reads the .npz; other settings generate again."""
    import idcrafter.generation
    from idcrafter.heldout import HeldoutConfig, generate_cached
    from idcrafter.recipes import recipe

    folder = tmp_path / "pipe"
    recipe("debug").model.build().save_pretrained(str(folder))  # 3 x 24 x 24, the smallest world
    cfg = HeldoutConfig(n=2, steps=2)
    clips, cases = generate_cached(folder, cfg, tmp_path / "cache")
    assert len(clips) == 2 and clips[0].dtype == np.uint8 and clips[0].shape == cases[0].ground_truth.shape

    def refuse(*a, **k):
        raise AssertionError("generated again")

    monkeypatch.setattr(idcrafter.generation, "generate", refuse)
    again, _ = generate_cached(folder, cfg, tmp_path / "cache")
    assert all(np.array_equal(a, b) for a, b in zip(clips, again))
    for other in (HeldoutConfig(n=2, steps=3), HeldoutConfig(n=2, steps=2, subjects=(4,)),
                  HeldoutConfig(n=2, steps=2, sample_seed=5)):
        with pytest.raises(AssertionError, match="generated again"):
            generate_cached(folder, other, tmp_path / "cache")
