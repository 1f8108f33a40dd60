"""The SpriteWorld VAE trainer: losses by hand, exact resume, export that the codec loads."""

from __future__ import annotations

import json
import math

import pytest
import torch

from idcrafter.errors import InputError
from idcrafter.models.codecs import WanVAECodec, load_codec
from idcrafter.train import checkpoint as ckpt
from idcrafter.train.vae import (
    VAEConfig, VAELossConfig, VAETrainer, export_vae, kl_loss, psnr, reconstruction_loss, vae_batch,
)


def tiny_cfg(steps: int = 2) -> VAEConfig:
    cfg = VAEConfig()
    cfg.model.base_dim, cfg.model.z_dim = 4, 4
    cfg.data.clips, cfg.data.height, cfg.data.width, cfg.data.ref_size = 1, 24, 24, 16
    cfg.train.steps, cfg.train.checkpoint_every, cfg.train.eval_every = steps, 1, steps
    cfg.train.eval_clips, cfg.train.log_every, cfg.train.mixed_precision = 2, 1, "no"
    cfg.train.threads = 1
    return cfg


def test_reconstruction_loss_by_hand():
    recon = torch.tensor([0.5, -0.1]).view(1, 1, 1, 1, 2)
    target = torch.zeros(1, 1, 1, 1, 2)
    mask = torch.tensor([1.0, 0.0]).view(1, 1, 1, 1, 2)
    cfg = VAELossConfig(subject_weight=3.0, l1_weight=1.0, mse_weight=2.0)
    loss, l1, mse = reconstruction_loss(recon, target, mask, cfg)
    # weights 3 and 1: l1 = (3 * 0.5 + 1 * 0.1) / 4, mse = (3 * 0.25 + 1 * 0.01) / 4
    assert l1.item() == pytest.approx(0.4)
    assert mse.item() == pytest.approx(0.19)
    assert loss.item() == pytest.approx(0.4 + 2 * 0.19)


def test_kl_and_psnr_by_hand():
    mean, logvar = torch.tensor([1.0, 0.0]), torch.tensor([0.0, math.log(2.0)])
    # KL per element: 0.5 (mu^2 + var - 1 - logvar): 0.5 and 0.5 (2 - 1 - ln 2)
    assert kl_loss(mean, logvar).item() == pytest.approx((0.5 + 0.5 * (1 - math.log(2))) / 2)
    x = torch.zeros(1, 3, 1, 2, 2)
    y = x + 0.2  # mse 0.04 -> 10 log10(4 / 0.04) = 20 dB
    assert psnr(y, x) == pytest.approx(20.0)
    mask = torch.tensor([1.0, 0, 0, 0]).view(1, 1, 1, 2, 2)
    y2 = x.clone()
    y2[..., 0, 0] = 0.2
    assert psnr(y2, x, mask) == pytest.approx(20.0)


def test_batch_shapes_and_masks():
    cfg = tiny_cfg().data
    clips, cmask, refs, rmask = vae_batch(cfg, range(2))
    assert clips.shape[:3] == (2, 3, 5) and clips.shape[3:] == (24, 24)
    assert cmask.shape == (2, 1, 5, 24, 24) and 0 < cmask.mean() < 1
    assert refs.shape[1:] == (3, 1, 16, 16) and rmask.shape == (refs.shape[0], 1, 1, 16, 16)
    assert clips.min() >= -1 and clips.max() <= 1


def test_resume_is_exact_and_export_loads(tmp_path):
    full = VAETrainer(tiny_cfg(2), tmp_path / "a")
    full.train(progress=False)
    cut = VAETrainer(tiny_cfg(1), tmp_path / "b")
    cut.train(progress=False)
    resumed = VAETrainer(tiny_cfg(2), tmp_path / "b", resume=True)
    assert resumed.step == 1
    resumed.train(progress=False)
    for (k, a), b in zip(full.vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(a, b), k
    lines = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]  # appended across the resume, never rewritten

    res = export_vae(tmp_path / "a", tmp_path / "vae")
    assert res["step"] == 2 and "clip_psnr" in res
    codec = load_codec(tmp_path / "vae")
    assert isinstance(codec, WanVAECodec)
    assert codec.temporal_factor == 4 and codec.spatial_factor == 4
    # the exported weights are the checkpoint's, and the latent statistics normalise the latents
    saved = ckpt.load_tensors(tmp_path / "a" / "checkpoints" / "step_00000002" / "vae.safetensors")
    for k, v in codec.vae.state_dict().items():
        assert torch.equal(v, saved[k]), k
    clips, *_ = vae_batch(tiny_cfg().data, range(1_000_000, 1_000_004))
    z = codec.encode(clips)  # (4, C, 2, 6, 6)
    assert z.shape == (4, 4, 2, 6, 6)
    assert abs(float(z.mean())) < 1.0 and 0.3 < float(z.std()) < 3.0
    assert not torch.equal(codec.latents_std, torch.ones_like(codec.latents_std))


def test_refuses_to_clobber(tmp_path):
    VAETrainer(tiny_cfg(1), tmp_path / "run").train(progress=False)
    with pytest.raises(InputError, match="--resume"):
        VAETrainer(tiny_cfg(1), tmp_path / "run")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError):
        VAETrainer(tiny_cfg(1), other)
    with pytest.raises(InputError, match="inside the run folder"):
        export_vae(tmp_path / "run", tmp_path / "run" / "vae")
    export_vae(tmp_path / "run", tmp_path / "vae")
    with pytest.raises(InputError, match="--overwrite"):
        export_vae(tmp_path / "run", tmp_path / "vae")
    export_vae(tmp_path / "run", tmp_path / "vae", overwrite=True)
    assert (other / "notes.txt").read_text() == "mine"
