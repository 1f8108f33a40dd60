"""Tiny text encoder, VLM grounder, reference preparation and video codecs (offline, CPU)."""

import numpy as np
import pytest
import torch
from PIL import Image

from idcrafter.encoders.references import CANVAS_RGB, prepare_reference
from idcrafter.errors import InputError, MissingWeightsError

PROMPTS = ["the boy waves", "a girl with long red hair and a blue shirt jumps to the left"]


# ----------------------------------------------------------------------------- text encoder

@pytest.fixture(scope="module")
def text_encoder():
    from idcrafter.encoders.text import TextEncoder

    return TextEncoder.tiny(max_length=16)


def test_text_encode_shapes_and_zeroed_padding(text_encoder):
    hidden, mask = text_encoder.encode(PROMPTS)
    assert hidden.shape == (2, 16, 32) and hidden.dtype == torch.float32
    assert mask.shape == (2, 16) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [4, 15]  # words + </s>
    assert torch.all(hidden[~mask] == 0) and torch.all(hidden[mask].abs().sum(-1) > 0)
    # what diffusers' WanPipeline._get_t5_prompt_embeds does: trim to the real length, pad zeros
    ids, m = text_encoder.tokenize(PROMPTS)
    raw = text_encoder.model(input_ids=ids, attention_mask=m.long()).last_hidden_state
    ref = torch.stack([torch.cat([u[:n], u.new_zeros(16 - n, 32)]) for u, n in zip(raw, m.sum(1))])
    torch.testing.assert_close(hidden, ref)


def test_text_truncation_warns_with_dropped_count(text_encoder):
    with pytest.warns(UserWarning, match="15 tokens dropped"):
        hidden, mask = text_encoder.encode(["the " * 30])  # 30 words + </s> = 31 tokens
    assert hidden.shape == (1, 16, 32) and bool(mask.all())
    with pytest.warns(UserWarning, match="15 tokens dropped"):
        ids, _ = text_encoder.tokenize(["the " * 30])
    assert text_encoder.tokenizer.convert_ids_to_tokens(int(ids[0, -1])) == "</s>"  # T5 keeps its EOS


def test_text_save_load_round_trip(text_encoder, tmp_path):
    from idcrafter.encoders.text import TextEncoder

    text_encoder.save_pretrained(tmp_path)  # Wan pipeline layout
    assert (tmp_path / "text_encoder" / "config.json").is_file() and (tmp_path / "tokenizer").is_dir()
    loaded = TextEncoder.from_pretrained(tmp_path, max_length=16)
    h0, m0 = text_encoder.encode(PROMPTS)
    h1, m1 = loaded.encode(PROMPTS)
    assert torch.equal(h0, h1) and torch.equal(m0, m1)


# ----------------------------------------------------------------------------- VLM grounder

def _refs(seed: int, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def grounder():
    from idcrafter.encoders.vlm import VLMGrounder

    return VLMGrounder.tiny()


@pytest.fixture(scope="module")
def batch():
    refs = _refs(0, 6)
    return ["a boy waves", "two people walk to the left", "three people jump"], [refs[:1], refs[1:3], refs[3:]]


def test_vlm_shapes_masks_and_image_tokens(grounder, batch):
    prompts, images = batch
    inputs = grounder.build_inputs(prompts, images)
    ids = inputs["input_ids"]
    n_img = (ids == grounder.image_token_id).sum(1)
    assert n_img.tolist() == [4, 8, 12]  # 48x48 -> 56x56 -> 4x4 patches -> 2x2 merged tokens each
    # the expansion matches what the vision tower produces (the model raises otherwise)
    feats = grounder.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output
    assert [f.shape[0] for f in feats] == [4] * 6 and sum(f.shape[0] for f in feats) == int(n_img.sum())
    hidden, mask = grounder.encode(prompts, images)
    lengths = mask.sum(1)
    assert hidden.shape == (3, ids.shape[1], 64) and mask.shape == ids.shape
    assert lengths[0] < lengths[1] < lengths[2] == ids.shape[1]
    assert all(bool(mask[i, :n].all()) for i, n in enumerate(lengths.tolist()))  # right padding
    assert torch.all(hidden[~mask] == 0) and torch.all(hidden[mask].abs().sum(-1) > 0)
    assert torch.equal((inputs["mm_token_type_ids"] == 1), ids == grounder.image_token_id)


def test_vlm_depends_on_references_and_is_deterministic(grounder, batch):
    prompts, images = batch
    h0, m0 = grounder.encode(prompts, images)
    assert torch.equal(h0, grounder.encode(prompts, images)[0])
    changed = [images[0], [images[1][0], _refs(1, 1)[0]], images[2]]  # swap subject 2 of sample 1
    h1, m1 = grounder.encode(prompts, changed)
    assert torch.equal(m0, m1)
    assert (h1[1] - h0[1]).abs().max() > 1e-3
    torch.testing.assert_close(h1[0], h0[0])
    torch.testing.assert_close(h1[2], h0[2])
    # causal LM: tokens before the changed image are untouched, tokens after it change
    first = int((grounder.build_inputs(prompts, changed)["input_ids"][1] == grounder.image_token_id)
                .nonzero()[4])
    torch.testing.assert_close(h1[1, :first], h0[1, :first])
    # a single sample encodes the same as inside the batch (right padding keeps states exact)
    h_single, m_single = grounder.encode(prompts[:1], images[:1])
    torch.testing.assert_close(h_single[0], h0[0, : h_single.shape[1]], atol=1e-5, rtol=1e-5)


def test_vlm_save_load_and_layer_choice(grounder, batch, tmp_path):
    from idcrafter.encoders.vlm import VLMGrounder

    prompts, images = batch
    grounder.save_pretrained(tmp_path)
    loaded = VLMGrounder.from_pretrained(tmp_path)
    assert torch.equal(loaded.encode(prompts, images)[0], grounder.encode(prompts, images)[0])
    early = VLMGrounder(grounder.model, grounder.tokenizer, grounder.image_processor, layer=1)
    assert not torch.allclose(early.encode(prompts, images)[0], grounder.encode(prompts, images)[0])
    with pytest.raises(InputError, match="out of range"):
        VLMGrounder(grounder.model, grounder.tokenizer, grounder.image_processor, layer=5)


def test_missing_folders_raise_missing_weights(tmp_path):
    from idcrafter.encoders.text import TextEncoder
    from idcrafter.encoders.vlm import VLMGrounder
    from idcrafter.models.codecs import PixelCodec, WanVAECodec

    empty = tmp_path / "empty"
    empty.mkdir()
    for loader in (TextEncoder.from_pretrained, VLMGrounder.from_pretrained, WanVAECodec.from_pretrained,
                   PixelCodec.from_pretrained):
        for folder in (tmp_path / "nope", empty):
            with pytest.raises(MissingWeightsError) as err:
                loader(folder)
            assert str(folder) in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- references

@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "CMYK", "P"])
def test_prepare_reference_any_mode(mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8))
    out = prepare_reference(rgb.convert(mode), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


def test_prepare_reference_transparency_becomes_canvas(tmp_path):
    clear = np.zeros((8, 8, 4), np.uint8)
    assert np.all(prepare_reference(Image.fromarray(clear, "RGBA"), 16) == CANVAS_RGB)
    assert np.all(prepare_reference(clear, 16) == CANVAS_RGB)  # RGBA array too
    Image.fromarray(np.full((10, 10, 3), 7, np.uint8)).save(tmp_path / "ref.png")
    assert np.all(prepare_reference(tmp_path / "ref.png", (12, 12)) == 7)  # path via load_image


@pytest.mark.parametrize("shape", [(20, 40), (40, 20)])
def test_prepare_reference_keeps_aspect_and_pads(shape):
    out = prepare_reference(np.full((*shape, 3), (200, 0, 0), np.uint8), 32)  # red, 1:2 or 2:1
    red = np.all(out == (200, 0, 0), axis=-1)
    ys, xs = np.nonzero(red)
    expected = (16, 32) if shape[0] < shape[1] else (32, 16)
    assert (ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) == expected
    assert red.sum() == 16 * 32 and np.all(out[~red] == CANVAS_RGB)
    assert ys.min() + ys.max() == 31 and xs.min() + xs.max() == 31  # centred


def test_prepare_reference_corrupt_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(InputError, match="corrupt") as err:
        prepare_reference(bad, 32)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError):
        prepare_reference(np.zeros((4, 4, 2), np.uint8), 32)


# ----------------------------------------------------------------------------- codecs

@pytest.fixture(scope="module")
def wan():
    from idcrafter.models.codecs import WanVAECodec

    return WanVAECodec.tiny()


def test_wan_codec_shapes_and_normalisation(wan):
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert (wan.temporal_factor, wan.spatial_factor, wan.latent_channels) == (4, 8, 16)
    z = wan.encode(video)
    assert tuple(z.shape[1:]) == wan.latent_shape(5, 16, 16) == (16, 2, 2, 2)
    mu = wan.encode_raw(video)  # raw posterior mean
    torch.testing.assert_close(wan.denormalize(z), mu, atol=1e-5, rtol=1e-5)
    mean = torch.tensor(wan.vae.config.latents_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(wan.vae.config.latents_std).view(1, 16, 1, 1, 1)
    torch.testing.assert_close(z, (mu - mean) / std)
    out = wan.decode(z)
    assert out.shape == video.shape and out.abs().max() <= 1
    assert wan.encode_image(video[:, :, 0]).shape == (1, 16, 1, 2, 2)


def test_wan_codec_frame_rules_and_save_load(wan, tmp_path):
    from idcrafter.models.codecs import load_codec

    with pytest.raises(InputError, match="4k\\+1"):
        wan.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.warns(UserWarning, match="9 frames"):
        assert wan.valid_frames(8) == 9  # diffusers' n // 4 * 4 + 1
    with pytest.warns(UserWarning):
        assert wan.valid_frames(6) == 5
    assert wan.valid_frames(5) == 5
    with pytest.warns(UserWarning):
        assert wan.valid_size(50, 64, patch=2) == (48, 64)
    wan.save_pretrained(tmp_path / "vae")
    loaded = load_codec(tmp_path)  # a pipeline folder holding vae/
    sd0, sd1 = wan.state_dict(), loaded.state_dict()
    assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0)


def test_pixel_codec_round_trip_and_patch(tmp_path):
    from idcrafter.models.codecs import PixelCodec, load_codec

    video = torch.rand(2, 3, 6, 48, 48) * 2 - 1
    ident = PixelCodec()
    assert torch.equal(ident.encode(video), video) and torch.equal(ident.decode(video), video)
    assert ident.valid_frames(6) == 6
    codec = PixelCodec(patch=2)
    z = codec.encode(video)
    assert z.shape == (2, 12, 6, 24, 24) and tuple(z.shape[1:]) == codec.latent_shape(6, 48, 48)
    torch.testing.assert_close(z[:, :, 0], torch.nn.functional.pixel_unshuffle(video[:, :, 0], 2), rtol=0, atol=0)
    assert torch.equal(codec.decode(z), video)
    assert codec.encode_image(video[:, :, 0]).shape == (2, 12, 1, 24, 24)
    codec.save_pretrained(tmp_path)
    assert load_codec(tmp_path).patch == 2 and PixelCodec.from_pretrained(tmp_path).latent_channels == 12
