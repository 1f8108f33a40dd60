"""The latent cache: what SFT reads instead of encoding (idcrafter.train.latent_cache)."""

import os

import pytest
import torch

from idcrafter.config import apply_overrides
from idcrafter.errors import InputError
from idcrafter.recipes import recipe
from idcrafter.train import checkpoint as ckpt
from idcrafter.train.latent_cache import LatentCache, build_latent_cache, cache_key
from idcrafter.train.sft import Trainer

RUN = ["train.steps=3", "eval.every=0", "eval.sample_every=0", "checkpoint.every=0", "checkpoint.export_final=false",
       "log.tensorboard=false", "log.progress=false", "data.limit=6", "data.batch_size=2"]


def cfg_of(*overrides):
    return apply_overrides(recipe("debug"), [*RUN, *overrides])


def _train(cfg, folder):
    tr = Trainer(cfg, folder)
    tr.train()
    return {k: v.detach().clone() for k, v in tr.model.state_dict().items()}


def test_a_float32_cache_reproduces_the_uncached_run_bit_for_bit(tmp_path):
    """The joint: cached z0 and reference latents are what compute_loss would have encoded."""
    cache = build_latent_cache(cfg_of(), tmp_path / "cache", shard_size=4, batch_size=3, dtype="float32",
                               progress=False)
    plain = _train(cfg_of(), tmp_path / "plain")
    cached = _train(cfg_of(f"data.latent_cache={cache}"), tmp_path / "cached")
    assert all(torch.equal(plain[k], cached[k]) for k in plain)
    # the cache was read, not bypassed: corrupting it changes the result
    shard = ckpt.load_tensors(cache / "shard-00000.safetensors")
    shard["z0"] = shard["z0"] + 1.0
    ckpt.save_tensors(cache / "shard-00000.safetensors", shard)
    moved = _train(cfg_of(f"data.latent_cache={cache}"), tmp_path / "moved")
    assert not all(torch.equal(plain[k], moved[k]) for k in plain)


def test_lookup_pads_and_matches_encoding_in_float16(tmp_path):
    cfg = cfg_of()
    cache = LatentCache.open(build_latent_cache(cfg, tmp_path / "c", progress=False), cfg)
    tr = Trainer(cfg, tmp_path / "run")
    tr.setup()
    batch = tr.stream.next()[0]
    z0, refs = cache.lookup(batch)
    direct = tr.pipe.codec.encode(batch.video).float()
    want, mask = tr.cond.encode_references(batch.ref_images)
    assert z0.shape == direct.shape and refs.shape == want.shape
    assert torch.allclose(z0, direct, atol=2e-3) and torch.allclose(refs, want, atol=2e-3)
    assert z0.dtype == torch.float32 and cache.z0.dtype == torch.float16
    assert torch.equal(cache.ref_count[batch.items].long(), mask.sum(1))


def test_interrupted_build_resumes_and_keeps_finished_shards(tmp_path):
    cfg = cfg_of()
    out = build_latent_cache(cfg, tmp_path / "c", shard_size=2, progress=False)
    first = ckpt.load_tensors(out / "shard-00001.safetensors")
    os.remove(out / "cache.json")
    os.remove(out / "shard-00002.safetensors")
    kept = (out / "shard-00000.safetensors").stat().st_mtime_ns
    build_latent_cache(cfg, out, shard_size=2, progress=False)
    assert (out / "shard-00000.safetensors").stat().st_mtime_ns == kept
    assert (out / "shard-00002.safetensors").is_file() and (out / "cache.json").is_file()
    again = ckpt.load_tensors(out / "shard-00001.safetensors")
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_a_cache_of_other_data_or_codec_is_refused(tmp_path):
    cache = build_latent_cache(cfg_of(), tmp_path / "c", progress=False)
    with pytest.raises(InputError, match="seed"):
        cfg_of(f"data.latent_cache={cache}", "data.seed=3").validate()
    with pytest.raises(InputError, match="limit"):
        cfg_of(f"data.latent_cache={cache}", "data.limit=5").validate()
    with pytest.raises(InputError, match="autocast"):
        cfg_of(f"data.latent_cache={cache}", "train.mixed_precision=bf16").validate()
    with pytest.raises(InputError, match="other data"):  # building into it with other settings
        build_latent_cache(cfg_of("data.seed=3"), cache, progress=False)
    with pytest.raises(InputError, match="finite source"):
        build_latent_cache(apply_overrides(recipe("debug"), []), tmp_path / "d", progress=False)
    with pytest.raises(InputError, match="bucket_by_subjects"):
        build_latent_cache(cfg_of("data.bucket_by_subjects=true"), tmp_path / "e", progress=False)


def test_the_key_follows_the_codec_weights(tmp_path):
    from idcrafter.models.codecs import WanVAECodec

    folder = WanVAECodec.tiny().save_pretrained(tmp_path / "vae")
    cfg = apply_overrides(recipe("debug"), ["model.codec=wan-vae", f"model.codec_path={folder}", "data.limit=4"])
    before = cache_key(cfg)
    WanVAECodec.tiny(seed=1).save_pretrained(folder)  # other weights, same config
    weights = folder / "diffusion_pytorch_model.safetensors"
    with open(weights, "ab") as f:
        f.write(b"\0" * 8)  # the fingerprint reads names and sizes: a retrained VAE of another size
    assert cache_key(cfg)["codec_fingerprint"] != before["codec_fingerprint"]
    assert {k for k in before if before[k] != cache_key(cfg)[k]} == {"codec_fingerprint"}


def test_timed_micro_step_leaves_weights_and_gradients_untouched(tmp_path):
    """What the speed scripts time: forward + backward only (no optimizer step, no gradients kept)."""
    tr = Trainer(cfg_of(), tmp_path / "run")
    tr.setup()
    before = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
    seconds = tr.timed_micro_step(tr.stream.next()[0])
    assert isinstance(seconds, float) and seconds > 0
    assert all(p.grad is None for p in tr.model.parameters())
    assert all(torch.equal(before[k], v) for k, v in tr.model.state_dict().items())


def test_slow_bf16_warning_names_the_fix_only_where_bf16_is_slow(monkeypatch):
    """bf16 autocast on an AVX2 CPU was 4.5x slower per DiT step and 37x per VAE encode (measured):
    the engine and the cache warn there, never on AVX-512 or for fp32."""
    import torch

    from idcrafter.train.engine import slow_bf16_warning

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    why = slow_bf16_warning("bf16")
    assert why is not None and "train.mixed_precision=no" in why and "AVX2" in why
    assert slow_bf16_warning("no") is None
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert slow_bf16_warning("bf16") is None
