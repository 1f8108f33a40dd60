"""The VAE's adversarial term: hinge losses by hand, the discriminator learns, and a run with it
resumes bitwise (discriminator and its optimizer are checkpointed)."""

from __future__ import annotations

import pytest
import torch

from idcrafter.train.vae_gan import PatchDiscriminator, frames_of, generator_loss, hinge_d_loss


def test_hinge_losses_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0])  # relu(1 - x): 0, 0.5, 2 -> mean 5/6
    fake = torch.tensor([-2.0, 0.0, 1.0])  # relu(1 + x): 0, 1, 2 -> mean 1
    assert float(hinge_d_loss(real, fake)) == pytest.approx(0.5 * (2.5 / 3 + 1.0))
    assert float(generator_loss(fake)) == pytest.approx(1.0 / 3)


def test_frames_of_keeps_each_frame():
    v = torch.arange(2 * 3 * 5 * 4 * 4, dtype=torch.float32).view(2, 3, 5, 4, 4)
    f = frames_of(v)
    assert f.shape == (10, 3, 4, 4)
    assert torch.equal(f[7], v[1, :, 2])  # clip 1, frame 2


def test_discriminator_shape_and_it_learns_blur_from_sharp():
    torch.manual_seed(0)
    d = PatchDiscriminator(width=8)
    assert d(torch.zeros(2, 3, 48, 48)).shape == (2, 1, 12, 12)
    opt = torch.optim.Adam(d.parameters(), lr=2e-3)
    sharp = torch.rand(8, 3, 24, 24) * 2 - 1
    blur = torch.nn.functional.avg_pool2d(sharp, 3, 1, 1)
    first = float(hinge_d_loss(d(sharp), d(blur)))
    for _ in range(30):
        loss = hinge_d_loss(d(sharp), d(blur))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(hinge_d_loss(d(sharp), d(blur))) < 0.5 * first


def test_gan_run_resumes_bitwise_and_logs_both_losses(tmp_path):
    from tests.test_vae import tiny_cfg

    from idcrafter.train.vae import VAETrainer

    def cfg(steps):
        c = tiny_cfg(steps)
        c.loss.gan_weight = 0.5
        return c

    full = VAETrainer(cfg(2), tmp_path / "a")
    last = full.train(progress=False)
    assert "clip/gan_g" in last and "clip/gan_d" in last
    VAETrainer(cfg(1), tmp_path / "b").train(progress=False)
    resumed = VAETrainer(cfg(2), tmp_path / "b", resume=True)
    resumed.train(progress=False)
    for (k, a), b in zip(full.vae.state_dict().items(), resumed.vae.state_dict().values()):
        assert torch.equal(a, b), k
    for (k, a), b in zip(full.disc.state_dict().items(), resumed.disc.state_dict().values()):
        assert torch.equal(a, b), k


def test_gan_term_changes_the_vae_update(tmp_path):
    from tests.test_vae import tiny_cfg

    from idcrafter.train.vae import VAETrainer

    a, b = tiny_cfg(1), tiny_cfg(1)
    b.loss.gan_weight = 1.0
    ta, tb = VAETrainer(a, tmp_path / "a"), VAETrainer(b, tmp_path / "b")
    ra, rb = ta.train_step(), tb.train_step()
    assert rb["loss"] == pytest.approx(ra["loss"] + rb["clip/gan_g"], rel=1e-5)
    diff = [not torch.equal(x, y) for x, y in zip(ta.vae.parameters(), tb.vae.parameters())]
    assert any(diff)
