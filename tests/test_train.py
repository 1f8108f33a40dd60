"""SFT trainer: loss maths by hand, timesteps, dropout, schedule, config, data, checkpoints,
exact resume after SIGKILL, overfitting a batch, training modes, the reference gap."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from idcrafter.config import apply_overrides, config_to_dict, load_config, save_config
from idcrafter.errors import InputError
from idcrafter.recipes import recipe
from idcrafter.train import checkpoint as ckpt
from idcrafter.train import losses
from idcrafter.train.config import Config, DataConfig
from idcrafter.train.data import BatchStream, ManifestSource, ProceduralSource, collate, step_positions
from idcrafter.train.logger import read_metrics
from idcrafter.train.optim import lr_factor
from idcrafter.train.sft import Trainer

ROOT = Path(__file__).resolve().parents[1]


def debug_cfg(*overrides: str) -> Config:
    return apply_overrides(recipe("debug"), list(overrides))


# ------------------------------------------------------------------ losses by hand
def test_rectified_flow_interpolation_target_and_x0():
    z0 = torch.tensor([[1.0, 2.0]])
    eps = torch.tensor([[3.0, -1.0]])
    t = torch.tensor([0.25])
    z_t = losses.interpolate(z0, eps, t)
    assert torch.allclose(z_t, torch.tensor([[1.5, 1.25]]))  # 0.75 * z0 + 0.25 * eps
    v = losses.velocity_target(z0, eps)
    assert torch.equal(v, torch.tensor([[2.0, -3.0]]))
    assert torch.allclose(losses.x0_from_velocity(z_t, v, t), z0)  # exact velocity recovers z0


def test_weighted_mse_and_weight_map_by_hand():
    pred = torch.tensor([[1.0, 2.0, 0.0, 0.0]]).view(1, 1, 1, 2, 2)
    target = torch.zeros(1, 1, 1, 2, 2)
    # plain MSE: (1 + 4 + 0 + 0) / 4
    loss, per = losses.weighted_mse(pred, target)
    assert loss.item() == pytest.approx(1.25)
    # weights 3 on the first cell, 1 elsewhere: (3*1 + 4) / (3 + 1 + 1 + 1) = 7 / 6
    w = torch.tensor([3.0, 1.0, 1.0, 1.0]).view(1, 1, 1, 2, 2)
    loss, _ = losses.weighted_mse(pred, target, w, sample_weight=torch.tensor([2.0]))
    assert loss.item() == pytest.approx(2 * 7 / 6)
    # a 4x4 mask over 2 frames on a 2x2 latent grid (patch 2): top-left 2x2 block is subject in
    # frame 0 only, one pixel of the bottom-right block in both frames
    m = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    m[0, 0, :2, :2] = True
    m[0, :, 3, 3] = True
    wmap = losses.latent_weight_map(m, (2, 2, 2), subject_weight=3.0)  # same frame count
    assert wmap.shape == (1, 1, 2, 2, 2)
    assert wmap[0, 0, 0].tolist() == [[3.0, 1.0], [1.0, 1.5]]  # 1 + 2 * fraction
    assert wmap[0, 0, 1].tolist() == [[1.0, 1.0], [1.0, 1.5]]
    m5 = torch.zeros(1, 5, 4, 4, dtype=torch.bool)  # Wan VAE layout: latent 0 = frame 0, latent 1 = frames 1-4
    m5[0, :2, :2, :2] = True
    m5[0, :, 3, 3] = True
    wmap = losses.latent_weight_map(m5, (2, 2, 2), subject_weight=3.0)
    assert wmap[0, 0, 0].tolist() == [[3.0, 1.0], [1.0, 1.5]]
    assert wmap[0, 0, 1].tolist() == [[1.5, 1.0], [1.0, 1.5]]  # top-left: subject in 1 of 4 frames
    assert losses.temporal_groups(9, 3) == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]  # Wan VAE layout
    assert losses.temporal_groups(5, 5) == [[i] for i in range(5)]


def test_timestep_sampler():
    assert losses.sample_timesteps(torch.zeros(1), 0.0, 1.0, shift=1.0).item() == pytest.approx(0.5)
    assert losses.sample_timesteps(torch.zeros(1), 0.0, 1.0, shift=3.0).item() == pytest.approx(0.75)  # 1.5 / 2
    n = torch.tensor([1.0])  # sigmoid(0.5 + 2) then shift 2: s t / (1 + t)
    t = torch.sigmoid(torch.tensor(2.5)).item()
    assert losses.sample_timesteps(n, 0.5, 2.0, shift=2.0).item() == pytest.approx(2 * t / (1 + t))
    draws = losses.sample_timesteps(torch.randn(200_000, generator=torch.Generator().manual_seed(0)), 0.3, 1.2)
    logits = torch.logit(draws.double())
    assert logits.mean().item() == pytest.approx(0.3, abs=0.01) and logits.std().item() == pytest.approx(1.2, abs=0.01)
    shifted = losses.sample_timesteps(torch.randn(10_000), 0.0, 1.0, shift=3.0)
    assert 0 < shifted.min() and shifted.max() < 1 and shifted.median() > 0.7  # mass moved to high noise
    assert losses.timestep_weight(torch.tensor([0.5]), "cosmap").item() == pytest.approx(4 / math.pi)


def test_condition_dropout():
    u = torch.tensor([0.0, 0.099, 0.1, 0.149, 0.15, 0.199, 0.2, 0.99])
    text, refs = losses.condition_dropout(u, p_text=0.05, p_refs=0.05, p_both=0.1)
    assert text.tolist() == [True, True, True, True, False, False, False, False]
    assert refs.tolist() == [True, True, False, False, True, True, False, False]
    u = torch.rand(100_000, generator=torch.Generator().manual_seed(1))
    text, refs = losses.condition_dropout(u, 0.2, 0.1, 0.05)
    assert (text & refs).float().mean().item() == pytest.approx(0.05, abs=0.005)
    assert (text & ~refs).float().mean().item() == pytest.approx(0.2, abs=0.005)
    assert (refs & ~text).float().mean().item() == pytest.approx(0.1, abs=0.005)


def test_lr_schedule():
    assert lr_factor(0, 4, 100) == 0.25 and lr_factor(3, 4, 100) == 1.0
    assert lr_factor(4, 4, 100, "cosine", 0.1) == pytest.approx(1.0)
    assert lr_factor(52, 4, 100, "cosine", 0.1) == pytest.approx(0.55)  # halfway: 0.1 + 0.9 / 2
    assert lr_factor(100, 4, 100, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(50, 4, 100, "constant") == 1.0


# ------------------------------------------------------------------ config
def test_config_overrides_and_round_trip(tmp_path):
    cfg = debug_cfg("optim.lr=3e-3", "train.mode=adapters", "eval.timesteps=[0.6,0.9]", "data.limit=none",
                    "model.preset_overrides={\"subject_variant\": \"concat\"}", "optim.betas=0.8,0.99")
    assert cfg.optim.lr == 3e-3 and cfg.train.mode == "adapters" and cfg.eval.timesteps == (0.6, 0.9)
    assert cfg.optim.betas == (0.8, 0.99) and cfg.model.preset_overrides == {"subject_variant": "concat"}
    save_config(cfg, tmp_path / "c.json")
    assert config_to_dict(load_config(Config, tmp_path / "c.json")) == config_to_dict(cfg)
    with pytest.raises(InputError, match="did you mean 'lr'"):
        debug_cfg("optim.lrr=1")
    with pytest.raises(InputError, match="cannot set"):
        debug_cfg("train.steps=many")
    with pytest.raises(InputError, match="train.mode"):
        debug_cfg("train.mode=everything").validate()
    for name in ("debug", "sprites", "wan2.1-1.3b", "wan2.1-14b"):
        recipe(name).validate()


# ------------------------------------------------------------------ data
def test_stream_positions_and_collate():
    # 2 ranks x batch 2 x accumulation 2 = global batch 8; micro i of rank r takes a block of 2
    assert step_positions(0, 2, 2, 2, 0) == [[0, 1], [4, 5]]
    assert step_positions(8, 2, 2, 2, 1) == [[10, 11], [14, 15]]
    src = ProceduralSource(DataConfig(frames=3, height=24, width=24, ref_size=16))
    a, b = src.get(7), src.get(7)
    assert np.array_equal(a.frames, b.frames) and a.caption == b.caption  # a pure function of position
    batch = collate([src.get(p) for p in range(4)])
    ks = [len(src.get(p).refs) for p in range(4)]
    assert batch.refs.shape == (4, max(ks), 3, 16, 16) and batch.ref_mask.sum(1).tolist() == ks
    assert batch.video.shape == (4, 3, 3, 24, 24) and -1 <= batch.video.min() and batch.video.max() <= 1
    s1 = BatchStream(src, 2, 1, 0, 1, start_position=4, prefetch=2)
    s2 = BatchStream(src, 2, 1, 0, 1, start_position=4, prefetch=0)
    for _ in range(2):
        x, y = s1.next()[0], s2.next()[0]
        assert torch.equal(x.video, y.video) and x.positions.tolist() == y.positions.tolist()
    s1.close()


def test_bucketed_order_by_hand_and_properties():
    from idcrafter.train.data import bucketed_order

    ks = np.array([1, 2, 1, 2, 2, 3])  # buckets: K=1 {0, 2}, K=2 {1, 3, 4}, K=3 {5}
    order = bucketed_order(ks, batch=2, seed=0, epoch=0)
    assert len(order) == 2 + 4 + 2  # each bucket rounded up to whole chunks of 2
    chunks = order.reshape(-1, 2)
    assert all(len(set(ks[c])) == 1 for c in chunks)  # one K per aligned chunk
    assert set(order.tolist()) == set(range(6))  # every item is used
    assert sorted(ks[chunks[:, 0]].tolist()) == [1, 2, 2, 3]
    assert np.array_equal(order, bucketed_order(ks, 2, 0, 0))
    assert not np.array_equal(order, bucketed_order(ks, 2, 0, 1))  # reshuffled per epoch


def test_bucketing_gives_one_k_per_micro_batch(tmp_path):
    from idcrafter.train.data import FolderSource
    from idcrafter.world.dataset import make_dataset
    from idcrafter.world.scene import WorldConfig

    proc = ProceduralSource(DataConfig(frames=3, height=24, width=24, ref_size=16, batch_size=4,
                                       bucket_by_subjects=True))
    ks = [[len(proc.get(p).refs) for p in range(m * 4, m * 4 + 4)] for m in range(6)]
    assert all(len(set(k)) == 1 for k in ks) and len({k[0] for k in ks}) > 1
    make_dataset(tmp_path / "ds", "train", 10, seed=0, config=WorldConfig(frames=3, height=24, width=24, ref_size=16),
                 progress=False)
    folder = FolderSource(DataConfig(source="folder", path=str(tmp_path / "ds"), frames=3, height=24, width=24,
                                     ref_size=16, batch_size=2, bucket_by_subjects=True))
    for m in range(8):  # across the epoch boundary too
        assert len({len(folder.get(p).refs) for p in (2 * m, 2 * m + 1)}) == 1


def test_manifest_skips_and_counts_corrupt_videos(tmp_path, caplog):
    from idcrafter.utils.media import save_image, write_mp4

    rng = np.random.default_rng(0)
    write_mp4(tmp_path / "good.mp4", rng.integers(0, 255, (7, 30, 40, 3), dtype=np.uint8), upscale=1)
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x01 not a video" * 50)
    save_image(tmp_path / "r.png", rng.integers(0, 255, (20, 10, 3), dtype=np.uint8))
    lines = [{"video": "good.mp4", "references": ["r.png"], "caption": "a person waves"},
             {"video": "bad.mp4", "references": ["r.png", "r.png"], "caption": "two people"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    src = ManifestSource(DataConfig(source="manifest", path=str(tmp_path / "m.jsonl"), frames=5, height=16,
                                    width=16, ref_size=16))
    samples = [src.get(p) for p in range(4)]
    assert all(s.caption == "a person waves" and s.frames.shape == (5, 16, 16, 3) for s in samples)
    assert samples[0].refs.shape == (1, 16, 16, 3) and samples[0].subject is None
    assert src.skipped == 1 and "skipping manifest item 1" in caplog.text
    assert collate(samples).subject is None
    tr = Trainer(debug_cfg("data.source=manifest", f"data.path={tmp_path / 'm.jsonl'}", "eval.source=none",
                           "train.steps=2", "checkpoint.every=0", "checkpoint.export_final=false"), tmp_path / "run")
    last = tr.train()  # real-video batches (no masks: uniform loss weights) train without crashing
    assert last["data/skipped"] == 1 and math.isfinite(last["loss"])


# ------------------------------------------------------------------ checkpoints
def test_checkpoint_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    tr = Trainer(debug_cfg("train.steps=2", "checkpoint.every=1", "eval.every=0", "checkpoint.export_final=false"),
                 tmp_path)
    tr.train()
    root = tmp_path / "checkpoints"
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [1, 2]
    before = ckpt.load_tensors(root / "step_00000002" / "trainable.safetensors")
    tr.step = 3

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_torch_state", crash)  # weights written, optimizer state fails
    with pytest.raises(OSError):
        tr.save_checkpoint()
    assert (root / "step_00000003.tmp").is_dir()
    assert ckpt.latest_checkpoint(root) == root / "step_00000002"
    after = ckpt.load_tensors(root / "step_00000002" / "trainable.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)
    monkeypatch.undo()
    tr.save_checkpoint()  # the next save removes the stale .tmp; keep_last=2 prunes step 1
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2, 3] and not list(root.glob("*.tmp"))
    assert ckpt.load_torch_state(root / "step_00000003" / "optimizer.pt")["state"]  # weights_only load


def test_prune_keeps_milestones_and_the_newest(tmp_path):
    """keep_every milestones survive pruning; incomplete folders are never counted or deleted."""
    for step in (250, 500, 750, 1000, 1250, 1500, 1750, 2000, 2250):
        d = tmp_path / f"step_{step:08d}"
        d.mkdir()
        ckpt.write_json(d / ckpt.COMPLETE_MARKER, {"step": step})
    (tmp_path / "step_00002500").mkdir()  # a crashed save: no marker
    removed = ckpt.prune(tmp_path, keep_last=2, keep_every=1000)
    assert sorted(int(p.name[5:]) for p in removed) == [250, 500, 750, 1250, 1500, 1750]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1000, 2000, 2250]
    assert (tmp_path / "step_00002500").is_dir()
    assert ckpt.prune(tmp_path, keep_last=1) == [tmp_path / "step_00001000", tmp_path / "step_00002000"]


def test_sigkill_then_resume_is_bitwise_exact(tmp_path):
    steps = ["train.steps=10", "checkpoint.every=3", "eval.every=3", "checkpoint.export_final=false"]
    reference = Trainer(debug_cfg(*steps), tmp_path / "ref")
    reference.train()
    want = {n: p.detach().clone() for n, p in reference.trainable.items()}
    want_ema = reference.ema.state_dict()

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "idcrafter.train.cli", "sft", "--recipe", "debug", "--run-dir", str(run), *steps]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd + ["train.sleep_per_step=0.4"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (run / "checkpoints" / "step_00000003" / "state.json").is_file():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(s for s, _ in ckpt.list_checkpoints(run / "checkpoints"))
    assert killed_at < 10
    out = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    final = run / "checkpoints" / "step_00000010"
    got = ckpt.load_tensors(final / "trainable.safetensors")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    got_ema = ckpt.load_tensors(final / "ema.safetensors")
    assert all(torch.equal(got_ema[k], want_ema[k]) for k in want_ema)
    steps_logged = [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r]
    assert steps_logged == list(range(1, 11))  # the killed run's tail was dropped on resume


def test_stop_at_runs_a_piece_of_the_full_schedule(tmp_path):
    """`train.stop_at` stops after that step with the schedule laid over `train.steps`: the piece
    equals the first steps of the whole run, and resuming with a later stop continues it exactly."""
    steps = ["train.steps=8", "optim.warmup_steps=2", "checkpoint.every=0", "eval.every=0",
             "checkpoint.export_final=false"]
    whole = Trainer(debug_cfg(*steps, "checkpoint.every=3", "checkpoint.keep_last=5"), tmp_path / "whole")
    whole.train()
    at3 = ckpt.load_tensors(tmp_path / "whole" / "checkpoints" / "step_00000003" / "trainable.safetensors")
    piece = Trainer(debug_cfg(*steps, "train.stop_at=3"), tmp_path / "piece")
    piece.train()
    assert piece.step == 3
    oc = piece.cfg.optim  # the lr after 3 steps is the 8-step schedule's, not a 3-step one's
    want_lr = oc.lr * lr_factor(3, 2, 8, oc.schedule, oc.min_lr_ratio)
    assert piece.scheduler.get_last_lr()[0] == pytest.approx(want_lr, rel=1e-6)
    assert want_lr != pytest.approx(oc.lr * lr_factor(3, 2, 3, oc.schedule, oc.min_lr_ratio))
    got = ckpt.load_tensors(tmp_path / "piece" / "checkpoints" / "step_00000003" / "trainable.safetensors")
    assert all(torch.equal(got[k], at3[k]) for k in at3)
    rest = Trainer(debug_cfg(*steps), tmp_path / "piece", resume=True)
    rest.train()
    want = ckpt.load_tensors(tmp_path / "whole" / "checkpoints" / "step_00000008" / "trainable.safetensors")
    got = ckpt.load_tensors(tmp_path / "piece" / "checkpoints" / "step_00000008" / "trainable.safetensors")
    assert all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(InputError, match="stop_at"):
        debug_cfg(*steps, "train.stop_at=9").validate()


# ------------------------------------------------------------------ learning
def test_debug_recipe_overfits_a_fixed_batch(tmp_path):
    cfg = debug_cfg("train.steps=30", "data.limit=2", "optim.lr=3e-3", "optim.warmup_steps=0",
                    "optim.schedule=constant", "loss.drop_text=0", "loss.drop_refs=0", "loss.drop_both=0",
                    "checkpoint.every=0", "checkpoint.export_final=false", "eval.every=10", "train.ema_decay=0")
    tr = Trainer(cfg, tmp_path)
    tr.setup()
    batch = collate([tr.source.get(p) for p in range(2)])  # positions 0, 1: fixed noise and timesteps
    with torch.no_grad():
        before = tr.compute_loss(batch)[0].item()
    tr.train()
    with torch.no_grad():
        after = tr.compute_loss(batch)[0].item()
    assert after < 0.75 * before, (before, after)
    records = read_metrics(tmp_path / "metrics.jsonl")
    gaps = [r for r in records if "ref_gap/t0.6" in r]
    assert [r["step"] for r in gaps] == [0, 10, 20, 30]
    assert gaps[0]["ref_gap/t0.6"] == 0.0 and gaps[0]["ref_gap_subject/t0.9"] == 0.0  # zero gates at init
    assert all(math.isfinite(r["x0_err_subject/t0.6"]) for r in gaps)
    assert gaps[-1]["ref_gap_subject/t0.6"] != 0.0  # the gates opened: references now change the output


def test_lora_and_adapter_modes_and_merged_export(tmp_path):
    from idcrafter.pipeline import IDCrafterPipeline

    base = ("train.steps=2", "eval.every=0", "checkpoint.every=0", "train.ema_decay=0", "optim.warmup_steps=0")
    tr = Trainer(debug_cfg(*base, "train.mode=adapters", "checkpoint.export_final=false"), tmp_path / "a")
    tr.setup()
    assert set(tr.trainable) == set(tr.model.new_parameters())
    tr.close()

    tr = Trainer(debug_cfg(*base, "train.mode=lora", "train.lora_rank=4"), tmp_path / "l")
    tr.setup()
    names = set(tr.trainable)
    assert set(tr.model.new_parameters()) < names and any("lora_A" in n for n in names)
    assert not any(n.startswith("blocks.0.attn1.to_q.base") for n in names)
    assert all(any(f"{t}.lora_B" in n for n in names) for t in ("attn1.to_q", "attn2.to_out.0", "ffn.net.2"))
    tr.train()
    lora_b = [p for n, p in tr.trainable.items() if "lora_B" in n]
    assert any(p.abs().max() > 0 for p in lora_b)  # LoRA moved off its zero init
    back = IDCrafterPipeline.from_pretrained(str(tmp_path / "l" / "pipeline"))
    x = torch.randn(1, 12, 3, 12, 12)
    txt = torch.randn(1, 5, 32)
    refs = torch.randn(1, 2, 12, 1, 8, 8)
    with torch.no_grad():
        y1 = tr.model(x, torch.tensor([500.0]), txt, subject_latents=refs).sample
        y2 = back.transformer(x, torch.tensor([500.0]), txt, subject_latents=refs).sample
    assert (y1 - y2).abs().max() < 1e-5  # the exported plain model = base + merged LoRA


def test_bf16_autocast_and_text_cache(tmp_path):
    tr = Trainer(debug_cfg("train.steps=2", "train.mixed_precision=bf16", "eval.every=0", "checkpoint.every=0",
                           "checkpoint.export_final=false", "log.tensorboard=true"), tmp_path)
    last = tr.train()
    assert math.isfinite(last["loss"])
    assert list((tmp_path / "tensorboard").glob("events.*"))
    caption = tr.source.get(0).caption
    cached, mask = tr.cond.text([caption, ""])
    direct, dmask = tr.cond.text_encoder.encode([caption])
    assert torch.equal(cached[:1], direct) and torch.equal(mask[:1], dmask)


def test_curriculum_parsing_and_stages_by_step():
    from idcrafter.train.data import ProceduralSource, Stage, parse_curriculum
    from idcrafter.world.dataset import make_example

    assert parse_curriculum("0:1:still, 1000:2,3000:4") == [Stage(0, 1, True), Stage(1000, 2), Stage(3000, 4)]
    for bad, needle in [("1:2", "step 0"), ("0:1,0:2", "increase"), ("0:5", "1..4"), ("0:0", "1..4"),
                        ("0:2:fast", "STEP:K"), ("0", "STEP:K"), ("a:1", "STEP:K"), ("", "STEP:K")]:
        with pytest.raises(InputError, match=needle):
            parse_curriculum(bad)
    cfg = DataConfig(frames=3, height=24, width=24, ref_size=16, batch_size=2, curriculum="0:1:still,3:2,5:4")
    src = ProceduralSource(cfg, global_batch=4)  # 4 positions per step: step s holds positions 4s..4s+3
    assert [src.stage(p).start for p in (0, 11, 12, 19, 20, 99)] == [0, 0, 3, 3, 5, 5]
    first = [src.get(p) for p in range(12)]
    assert all(len(s.refs) == 1 for s in first)
    forced = make_example(0, 5, "train", src.world, num_subjects=1, actions=["stay"])
    assert np.array_equal(first[5].frames, forced.clip.frames)  # stage 0: one subject, standing still
    assert {len(src.get(p).refs) for p in range(12, 20)} <= {1, 2}
    ks = {len(src.get(p).refs) for p in range(20, 80)}
    assert ks == {1, 2, 3, 4}
    with pytest.raises(InputError, match="num_subjects"):
        ProceduralSource(DataConfig(curriculum="0:1", num_subjects=2))
    with pytest.raises(InputError, match="procedural"):
        debug_cfg("data.curriculum=0:1", "data.source=folder", "data.path=x").validate()
    with pytest.raises(InputError, match="STEP:K"):
        debug_cfg("data.curriculum=0-1").validate()


def test_the_trainer_gives_the_curriculum_its_global_batch(tmp_path):
    """The joint: stages are counted in optimizer steps of this run (batch x processes x accumulation)."""
    tr = Trainer(debug_cfg("data.curriculum=0:1:still,2:3", "train.grad_accum=2", "eval.every=0"), tmp_path)
    tr.setup()
    assert tr.source.global_batch == tr.global_batch == 4
    assert tr.source.stage(7).max_subjects == 1 and tr.source.stage(8).max_subjects == 3
    tr.close()
