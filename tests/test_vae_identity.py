"""The VAE's identity-perceptual term: differentiable crops equal the judge's crops, the loss is
0 on a perfect reconstruction and grows as the identity changes, and the trainer uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from idcrafter.judge.crops import body_crop, head_crop
from idcrafter.train.vae_identity import IdentityLoss, Windows, body_windows, crop_windows, head_windows


def _smooth_image(seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:48, 0:40].astype(np.float32)
    rng = np.random.default_rng(seed)
    chans = [127 + 120 * np.sin(xx / rng.uniform(3, 6) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(3, 6))
             for _ in range(3)]
    return np.stack(chans, -1).clip(0, 255).astype(np.uint8)  # (48, 40, 3), H != W on purpose


@pytest.mark.parametrize("kind", ["head", "body"])
def test_crop_windows_match_the_judges_crops(kind):
    img = _smooth_image()
    boxes = np.array([[10.3, 5.2, 17.9, 12.4], [0, 0, 6, 7], [30, 38, 40, 47.5], [2.5, 20, 14, 44]], np.float32)
    frames = torch.from_numpy(img).permute(2, 0, 1)[None].float().repeat(len(boxes), 1, 1, 1)
    if kind == "head":
        c, h = head_windows(boxes)
        ours = crop_windows(frames, c, h, (24, 24))
        ref = np.stack([head_crop(img, b) for b in boxes])
    else:
        c, h = body_windows(boxes)
        ours = crop_windows(frames, c, h, (32, 16))
        ref = np.stack([body_crop(img, b) for b in boxes])
    diff = np.abs(ours.permute(0, 2, 3, 1).numpy() - ref.astype(np.float32))
    # cv2 interpolates in fixed point (1/32 px) and rounds to uint8: about a level of difference
    assert diff.mean() < 0.75 and diff.max() < 4.0


def test_crop_window_geometry_by_hand():
    # a 4 x 4 ramp image x = column; a window centred at x = 2 (edges) of half width 1 sampled at
    # 2 pixels reads pixel centres x = 1.5 and 2.5 -> values 1.0 and 2.0 (index coordinates)
    img = torch.arange(4.0).repeat(4, 1)[None, None]  # (1, 1, 4, 4), value = column index
    out = crop_windows(img, torch.tensor([[2.0, 2.0]]), torch.tensor([[1.0, 1.0]]), (2, 2))
    assert torch.allclose(out[0, 0], torch.tensor([[1.0, 2.0], [1.0, 2.0]]))


@pytest.fixture(scope="module")
def world_clips():
    from idcrafter.world.dataset import make_example
    from idcrafter.world.scene import WorldConfig

    world = WorldConfig(frames=5, height=48, width=48, ref_size=36)
    return [make_example(3, i, "heldout", world, num_subjects=2 + i % 2) for i in range(2)]


def _video(exs) -> torch.Tensor:
    return torch.from_numpy(np.stack([e.clip.frames for e in exs])).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)


def test_identity_loss_is_zero_on_truth_and_grows_with_an_identity_swap(world_clips):
    loss = IdentityLoss.load()
    win = Windows.from_clips([e.clip for e in world_clips])
    assert len(win) > 0 and win.clip.max() == 1
    truth = _video(world_clips)
    face, subj = loss(truth, truth, win)
    assert float(face) == pytest.approx(0.0, abs=1e-5) and float(subj) == pytest.approx(0.0, abs=1e-5)
    other = _video(world_clips[::-1])  # the other clip's subjects at these windows
    face2, subj2 = loss(other, truth, win)
    assert float(face2) > 0.2 and float(subj2) > 0.1
    blurred = torch.nn.functional.avg_pool3d(truth, (1, 3, 3), 1, (0, 1, 1))
    face3, _ = loss(blurred, truth, win)
    assert 0.0 < float(face3) < float(face2)


def test_identity_loss_has_gradients_only_through_the_reconstruction(world_clips):
    loss = IdentityLoss.load()
    loss.train()  # stays frozen: BatchNorm statistics must not move
    assert not loss.face_net.training
    win = Windows.from_clips([e.clip for e in world_clips])
    truth = _video(world_clips)
    recon = (truth + 0.1 * torch.randn_like(truth)).requires_grad_(True)
    target = truth.clone().requires_grad_(True)
    face, subj = loss(recon, target, win)
    (face + subj).backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert target.grad is None or target.grad.abs().sum() == 0
    assert all(p.grad is None for p in loss.parameters())


def test_windows_skip_hidden_subjects(world_clips):
    clip = world_clips[0].clip
    win = Windows.from_clips([clip], min_visibility=0.6)
    assert len(win) == int((clip.visibility >= 0.6).sum())
    assert len(Windows.from_clips([clip], min_visibility=1.01)) == 0


def test_trainer_adds_the_weighted_identity_terms(tmp_path):
    from tests.test_vae import tiny_cfg

    from idcrafter.train.vae import VAETrainer

    out = {}
    for fw, sw in ((0.0, 0.0), (2.0, 0.5)):
        cfg = tiny_cfg()
        cfg.loss.face_weight, cfg.loss.subject_embed_weight = fw, sw
        out[fw] = VAETrainer(cfg, tmp_path / f"run{fw}").train_step()
    base, ided = out[0.0], out[2.0]
    assert "clip/face" not in base and ided["clip/face"] > 0
    # same init, same batch: the losses differ by exactly the weighted identity terms
    expected = base["loss"] + 2.0 * ided["clip/face"] + 0.5 * ided["clip/subject_embed"]
    assert ided["loss"] == pytest.approx(expected, rel=1e-5)


def test_init_weights_start_a_new_run_and_bad_paths_are_refused(tmp_path):
    from tests.test_vae import tiny_cfg

    from idcrafter.errors import InputError
    from idcrafter.train.vae import VAETrainer

    first = VAETrainer(tiny_cfg(), tmp_path / "a")
    first.train_step()
    first.save()
    cfg = tiny_cfg()
    cfg.model.init = str(next((tmp_path / "a" / "checkpoints").iterdir()))
    second = VAETrainer(cfg, tmp_path / "b")
    assert second.step == 0
    for k, v in first.vae.state_dict().items():
        assert torch.equal(v, second.vae.state_dict()[k]), k
    cfg.model.init = str(tmp_path / "nothing")
    with pytest.raises(InputError, match="model.init"):
        VAETrainer(cfg, tmp_path / "c")
    assert not (tmp_path / "c").exists()  # refused before anything was written: a retry is not blocked
