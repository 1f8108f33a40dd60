"""The learned reward model: distortions, pair files, the embedded and the Qwen2.5-VL backbones
trained with Bradley-Terry with ties, its use as an RL reward; generator pairs; Diffusion-DPO."""

import json
import math

import numpy as np
import pytest
import torch

from idcrafter.config import apply_overrides
from idcrafter.errors import InputError
from idcrafter.rl import losses as L
from idcrafter.rl.distortions import KINDS, distort, read_pairs, synthetic_pairs, tie_pair, write_pairs
from idcrafter.rl.recipes import rl_recipe
from idcrafter.world.dataset import make_example
from idcrafter.world.scene import WorldConfig

WORLD = WorldConfig(frames=5, height=48, width=48, ref_size=32)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("k", [1, 3])
def test_each_distortion_changes_the_clip_and_keeps_its_shape(kind, k):
    ex = make_example(3, 7, "train", WORLD, num_subjects=k)
    for seed in range(3):
        true, bad = distort(ex, kind, np.random.default_rng(seed))
        assert true.shape == bad.shape == ex.clip.frames.shape and bad.dtype == np.uint8
        assert (true != bad).any(), (kind, k, seed)
    if kind == "drift":  # drift keeps the first frame and changes a later one
        true, bad = distort(ex, "drift", np.random.default_rng(0))
        assert np.array_equal(true[0], bad[0]) and not np.array_equal(true[-1], bad[-1])
    a, b = tie_pair(ex, np.random.default_rng(1))
    assert a.shape == b.shape
    with pytest.raises(InputError):
        distort(ex, "melt", np.random.default_rng(0))


def test_synthetic_pairs_are_deterministic_labelled_both_ways_and_filtered():
    pairs = synthetic_pairs(24, 5, "train", ("swap", "blend"), tie_fraction=0.2)
    again = synthetic_pairs(24, 5, "train", ("swap", "blend"), tie_fraction=0.2)
    assert all(np.array_equal(p.a, q.a) and p.label == q.label for p, q in zip(pairs, again))
    labels = {p.label for p in pairs}
    assert labels == {"a", "b", "tie"}
    assert {p.kind for p in pairs if p.label != "tie"} <= {"swap", "blend"}
    assert all(p.target == {"a": 1, "b": -1, "tie": 0}[p.label] for p in pairs)


def test_pair_file_round_trip_and_bad_lines(tmp_path):
    pairs = synthetic_pairs(3, 0, "heldout", KINDS, tie_fraction=0.0)
    path = write_pairs(pairs, tmp_path / "pairs.jsonl")
    back = read_pairs(path, ref_size=32)
    assert [p.label for p in back] == [p.label for p in pairs] and back[0].prompt == pairs[0].prompt
    assert back[0].a.shape == pairs[0].a.shape and len(back[0].references) == len(pairs[0].references)
    assert np.abs(back[0].a.astype(int) - pairs[0].a.astype(int)).mean() < 8  # mp4 is lossy, not wrong
    bad = tmp_path / "bad.jsonl"
    bad.write_text(path.read_text().splitlines()[0] + "\n" + json.dumps({"a": "x.mp4", "b": "y.mp4"}) + "\n")
    with pytest.raises(InputError, match="bad.jsonl:2"):
        read_pairs(bad)
    esc = tmp_path / "esc.jsonl"
    line = json.loads(path.read_text().splitlines()[0])
    esc.write_text(json.dumps({**line, "a": "../outside.mp4"}) + "\n")
    with pytest.raises(InputError, match="leaves"):
        read_pairs(esc)


# ------------------------------------------------------------------ embedded backbone
def test_embedded_reward_model_trains_exports_and_serves_as_a_reward(tmp_path):
    from idcrafter.rl.rewards import build_reward
    from idcrafter.rl.config import RewardConfig
    from idcrafter.rl.reward_model import load_reward_model
    from idcrafter.rl.reward_training import RewardModelTrainer
    from idcrafter.rewards.base import RewardBatch

    cfg = apply_overrides(rl_recipe("reward-model", "debug"), ["train.steps=30", "eval_every=30"])
    tr = RewardModelTrainer(cfg, tmp_path)
    tr.setup()
    rows = list(range(len(tr.sets["train"])))
    target = torch.tensor([p.target for p in tr.sets["train"]])
    with torch.no_grad():
        before = L.btt_loss(*tr._scores("train", rows), target).mean().item()
    tr.train()
    with torch.no_grad():
        after = L.btt_loss(*tr._scores("train", rows), target).mean().item()
    assert after < 0.8 * before, (before, after)
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert 0.0 <= ev["acc/heldout_ids"] <= 1.0 and 0.0 <= ev["acc/heldout_kind"] <= 1.0
    assert ev["pairs"] == {"train": 24, "heldout_ids": 8, "heldout_kind": 8}
    model = load_reward_model(tmp_path / "reward_model")
    p = tr.sets["heldout_ids"][0]
    with torch.no_grad():
        a = model.score([p.a, p.b], [p.references] * 2, [p.prompt] * 2)
        b = tr.rm.eval().score([p.a, p.b], [p.references] * 2, [p.prompt] * 2)
    assert torch.allclose(a, b, atol=1e-6)
    reward = build_reward(RewardConfig(name="learned", weights={"learned": 1.0}, path=str(tmp_path / "reward_model")))
    out = reward(RewardBatch([p.a, p.b], [p.references] * 2, [p.prompt] * 2))
    assert torch.allclose(out["learned"], a, atol=1e-5) and bool(out.valid["learned"].all())


def test_reward_model_scores_need_one_prompt_per_clip():
    """The embedded model reads each clip's prompt through the judge's summary: scoring without the
    prompts would be another function than the trained one, so it is refused."""
    from idcrafter.rl.reward_model import SpriteRewardModel

    rm = SpriteRewardModel(frames=3)
    p = synthetic_pairs(1, 0, "train", ("swap",), tie_fraction=0.0)[0]
    with torch.no_grad():
        for bad in (None, [], [p.prompt, p.prompt], p.prompt):
            with pytest.raises(InputError, match="prompt"):
                rm.score([p.a], [p.references], bad)
        with_prompt = rm.score([p.a], [p.references], [p.prompt])
        unknown = rm.score([p.a], [p.references], [None])  # an explicitly unknown prompt is a choice
    assert not torch.equal(with_prompt, unknown)  # the prompt moves the score: why it is required


def test_exported_reward_model_refuses_a_changed_judge(tmp_path):
    """The embedded model's features come from the judge's parts: a retrained (or added) part
    after export must be refused at load, not change the reward silently."""
    import shutil

    from idcrafter.errors import CorruptFileError
    from idcrafter.judge.parts import judge_dir
    from idcrafter.rl.reward_model import SpriteRewardModel, load_reward_model

    judge = tmp_path / "judge"
    judge.mkdir()
    for f in judge_dir().glob("*.safetensors"):
        shutil.copy(f, judge / f.name)
    torch.manual_seed(0)
    rm = SpriteRewardModel(frames=3, judge_folder=str(judge))
    rm.save(tmp_path / "rm")
    p = synthetic_pairs(1, 0, "train", ("swap",), tie_fraction=0.0)[0]
    with torch.no_grad():
        want = rm.eval().score([p.a, p.b], [p.references] * 2, [p.prompt] * 2)
        got = load_reward_model(tmp_path / "rm").score([p.a, p.b], [p.references] * 2, [p.prompt] * 2)
    assert torch.equal(want, got)  # same judge: the round trip is exact
    face = judge / "face.safetensors"
    face.write_bytes(face.read_bytes()[:-4] + bytes(4))  # a retrained face embedder (other weights)
    with pytest.raises(CorruptFileError, match="face"):
        load_reward_model(tmp_path / "rm")
    shutil.copy(judge_dir() / "face.safetensors", face)
    load_reward_model(tmp_path / "rm")  # restored: loads again
    if (judge / "critic.safetensors").is_file():
        (judge / "critic.safetensors").unlink()  # a part removed (or, the other way, added)
        with pytest.raises(CorruptFileError, match="critic"):
            load_reward_model(tmp_path / "rm")


def test_reward_model_resume_reads_its_feature_cache(tmp_path, monkeypatch):
    from idcrafter.rl.reward_training import RewardModelTrainer

    cfg = apply_overrides(rl_recipe("reward-model", "debug"), ["train.steps=2", "checkpoint.every=1", "eval_every=0",
                                                               "pairs.train=6", "pairs.heldout=2"])
    tr = RewardModelTrainer(cfg, tmp_path)
    tr.setup()
    tr.train()
    cached = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len(cached) == 3 and all(n.endswith(".safetensors") for n in cached)  # train, heldout_ids, heldout_kind

    def refuse(self, pairs):
        raise AssertionError("features recomputed on resume")

    monkeypatch.setattr(RewardModelTrainer, "_featurise", refuse)
    again = RewardModelTrainer(apply_overrides(cfg, ["train.steps=3"]), tmp_path, resume=True)
    again.setup()
    for name, (fa, fb) in tr.features.items():
        ga, gb = again.features[name]
        assert all(torch.equal(x, y) for x, y in zip([*fa.tensors().values(), *fb.tensors().values()],
                                                     [*ga.tensors().values(), *gb.tensors().values()]))
    again.close()
    # the cache also keeps the labels (offline study of the frozen features)
    from idcrafter.train import checkpoint as ckpt

    t = ckpt.load_tensors(tmp_path / "features" / next(n for n in cached if n.startswith("train-")))
    assert t["target"].tolist() == [p.target for p in tr.sets["train"]]


def test_summary_dropout_blanks_both_clips_of_the_chosen_pairs_only(tmp_path):
    from idcrafter.rl.reward_model import SpriteFeatures
    from idcrafter.rl.reward_training import RewardModelTrainer

    cfg = apply_overrides(rl_recipe("reward-model", "debug"), ["train.steps=1", "eval_every=0", "pairs.train=4",
                                                               "pairs.heldout=0", "model.summary_dropout=0.5"])
    tr = RewardModelTrainer(cfg, tmp_path)
    tr.setup()
    seen = []
    tr.rm.score_features = lambda f: (seen.append(f.summary.clone()), f.summary.sum(-1))[1]
    rows, blank = [0, 1, 2, 3], torch.tensor([True, False, True, False])
    tr._scores("train", rows, blank)
    fa, fb = tr.features["train"]
    for side, got in zip((fa, fb), seen):
        assert torch.equal(got[blank], torch.full_like(got[blank], 0.5))  # the chosen pairs, both sides
        assert torch.equal(got[~blank], side.summary[[1, 3]])  # the others untouched
    assert not torch.equal(fa.summary[[0, 2]], torch.full_like(fa.summary[[0, 2]], 0.5))  # the cache unchanged
    tr.close()
    with pytest.raises(InputError, match="summary_dropout"):
        apply_overrides(rl_recipe("reward-model", "debug"), ["model.summary_dropout=1.0"]).validate()
    with pytest.raises(InputError, match="embedded"):
        apply_overrides(rl_recipe("reward-model", "qwen2.5-vl"), ["model.summary_dropout=0.5"]).validate()


def test_linear_readout_reads_the_summary_and_identity_aggregates_by_hand():
    from idcrafter.rl.reward_model import SpriteFeatures, SpriteRewardHead

    # face dim 2 + subject dim 2; references 0 and 1 present, 2 masked (it must not count)
    refs = torch.tensor([[[1., 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0]]])
    ref_mask = torch.tensor([[True, True, False]])
    dets = torch.zeros(1, 2, 2, 4 + 5)
    dets[0, 0, 0, :4] = torch.tensor([1., 0, 0, 1])
    dets[0, 0, 1, :4] = torch.tensor([0., 1, 0, 1])
    dets[0, 1, 0, :4] = torch.tensor([0.6, 0.8, 1, 0])
    dets[0, 1, 1, :4] = torch.tensor([1., 0, 1, 0])  # masked: not a detection
    det_mask = torch.tensor([[[True, True], [True, False]]])
    f = SpriteFeatures(refs, ref_mask, dets, det_mask, torch.full((1, 3), 0.5))
    head = SpriteRewardHead(4, face_dim=2, summary_dim=3, readout="linear")
    # face: best per frame ref0 (1, 0.6), ref1 (1, 0.8); subject: ref0 (0, 1), ref1 (1, 0)
    want = torch.tensor([[0.85, 0.7, 0.6, 0.5, 0.0, 0.0]])
    assert torch.allclose(head.identity_aggregates(f), want, atol=1e-6)
    with torch.no_grad():
        head.linear.weight.copy_(torch.arange(1., 10.)[None])
        head.linear.bias.fill_(0.25)
    expected = 0.5 * (1 + 2 + 3) + float((torch.arange(4., 10.) * want[0]).sum()) + 0.25
    assert torch.allclose(head(f), torch.tensor([expected]), atol=1e-5)
    with pytest.raises(InputError, match="readout"):
        SpriteRewardHead(4, readout="mlp")


def test_linear_readout_round_trips_through_save_and_load(tmp_path):
    from idcrafter.rl.reward_model import SpriteRewardModel, load_reward_model

    (p,) = synthetic_pairs(1, 0, "heldout", ("blend",), tie_fraction=0.0)
    model = SpriteRewardModel(readout="linear")
    with torch.no_grad():
        model.head.linear.weight.normal_()
    model.save(tmp_path / "rm")
    back = load_reward_model(tmp_path / "rm")
    assert back.head.readout == "linear" and json.loads((tmp_path / "rm" / "config.json").read_text())["readout"] == "linear"
    with torch.no_grad():
        a, b = (m.score([p.a, p.b], [p.references] * 2, [p.prompt] * 2) for m in (model.eval(), back))
    assert torch.allclose(a, b) and not torch.allclose(a[0], a[1])


def test_reward_model_configs_are_checked():
    cfg = rl_recipe("reward-model", "debug")
    with pytest.raises(InputError, match="held"):
        apply_overrides(cfg, ["pairs.heldout_kind=swap"]).validate()
    with pytest.raises(InputError):
        apply_overrides(cfg, ["pairs.kinds=[\"melt\"]"]).validate()
    with pytest.raises(InputError):
        apply_overrides(cfg, ["model.ties_k=1"]).validate()


# ------------------------------------------------------------------ Qwen2.5-VL backbone (tiny, random)
@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from idcrafter.encoders.vlm import VLMGrounder
    from idcrafter.train.modes import caption_vocabulary

    folder = tmp_path_factory.mktemp("qwen") / "base"
    VLMGrounder.tiny(64, vocab_words=caption_vocabulary()).save_pretrained(folder)
    return folder


def test_qwen_reward_model_reads_the_special_token_trains_lora_and_round_trips(tiny_qwen, tmp_path):
    from idcrafter.rl.reward_model import REWARD_TOKEN, QwenRewardModel, load_reward_model

    torch.manual_seed(0)
    rm = QwenRewardModel.from_pretrained(tiny_qwen, frames=2, lora_rank=4)
    pairs = synthetic_pairs(2, 0, "train", ("swap",), tie_fraction=0.0)
    inputs = rm.build_inputs([pairs[0].a], [pairs[0].references], [pairs[0].prompt])
    last = int(inputs["last"][0])
    assert rm.tokenizer.convert_ids_to_tokens(int(inputs["input_ids"][0, last])) == REWARD_TOKEN
    trainable = rm.trainable()
    assert trainable and all("lora_" in n or n.startswith("head.") for n in trainable)
    frozen = {n: p.detach().clone() for n, p in rm.vlm.named_parameters() if "lora_" not in n}
    opt = torch.optim.Adam(trainable.values(), lr=1e-2)
    target = torch.tensor([p.target for p in pairs])
    losses = []
    for _ in range(8):
        r_a = rm.score([p.a for p in pairs], [p.references for p in pairs], [p.prompt for p in pairs])
        r_b = rm.score([p.b for p in pairs], [p.references for p in pairs], [p.prompt for p in pairs])
        loss = L.btt_loss(r_a, r_b, target).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(torch.equal(p, frozen[n]) for n, p in rm.vlm.named_parameters() if "lora_" not in n)
    rm.save(tmp_path / "rm")
    back = load_reward_model(tmp_path / "rm")
    rm.eval()
    with torch.no_grad():
        want = rm.score([pairs[0].a, pairs[1].b], [pairs[0].references, pairs[1].references], ["x", "y"])
        got = back.score([pairs[0].a, pairs[1].b], [pairs[0].references, pairs[1].references], ["x", "y"])
    assert torch.allclose(want, got, atol=1e-5)


# ------------------------------------------------------------------ generator pairs
def test_generator_pairs_rank_by_the_judge_metric():
    from idcrafter.encoders.text import TextEncoder
    from idcrafter.generation import Case
    from idcrafter.models.codecs import PixelCodec
    from idcrafter.pipeline import build_pipeline
    from idcrafter.rl.pairs import generator_pairs, rank
    from idcrafter.scorers import ScoreReport

    assert rank(0.5, 0.2, 0.1) == "a" and rank(0.2, 0.5, 0.1) == "b" and rank(0.5, 0.45, 0.1) == "tie"

    class Bright:
        name = "bright"

        def score(self, frames, refs, prompt=None):
            return ScoreReport({"face_sim_mean": float(frames.mean()) / 255})

    torch.manual_seed(0)
    pipe = build_pipeline("debug", PixelCodec(3, 2), TextEncoder.tiny(32, max_length=64))
    pipe.set_progress_bar_config(disable=True)
    exs = [make_example(0, i, "heldout", num_subjects=1) for i in range(2)]
    cases = [Case(key=f"c{i}", prompt=e.caption, references=list(e.refs), seed=i, size=(3, 24, 24))
             for i, e in enumerate(exs)]
    pairs = generator_pairs(pipe, cases, Bright(), steps=2, guidance=1.0, tie_margin=0.0)
    assert len(pairs) == 2
    for p in pairs:
        brighter = "a" if p.a.mean() > p.b.mean() else "b"
        assert p.label == brighter and p.kind == "generator"


# ------------------------------------------------------------------ Diffusion-DPO
def test_dpo_starts_at_log2_and_learns_its_pairs(tmp_path):
    from idcrafter.rl.dpo import DPOTrainer
    from idcrafter.train.logger import read_metrics

    cfg = apply_overrides(rl_recipe("dpo", "debug"), ["train.steps=5", "checkpoint.every=0", "train.mode=lora",
                                                      "train.lora_rank=4", "optim.lr=1e-2"])
    tr = DPOTrainer(cfg, tmp_path)
    tr.train()
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6) and rows[0]["implicit_acc"] == 0.0
    assert rows[-1]["loss"] < rows[0]["loss"] and rows[-1]["implicit_acc"] > 0.5
    assert rows[0]["pairs"] >= 1 and (tr.pairs.reward_w > tr.pairs.reward_l).all()


def test_reward_model_trains_on_generator_pairs_ranked_by_a_judge(tmp_path):
    from idcrafter.encoders.text import TextEncoder
    from idcrafter.models.codecs import PixelCodec
    from idcrafter.pipeline import build_pipeline
    from idcrafter.rl.reward_training import RewardModelTrainer

    torch.manual_seed(0)
    pipe = build_pipeline("debug", PixelCodec(3, 2), TextEncoder.tiny(32, max_length=64), default_frames=3,
                          default_height=48, default_width=48)
    pipe.save_pretrained(tmp_path / "gen")
    cfg = apply_overrides(rl_recipe("reward-model", "debug"), [
        "pairs.source=generator", f"pairs.path={tmp_path / 'gen'}", "pairs.scorer=sprites", "pairs.train=3",
        "pairs.frames=3", "pairs.heldout=0", "pairs.tie_margin=0.0", "train.steps=2", "eval_every=0"])
    tr = RewardModelTrainer(cfg, tmp_path / "run")
    tr.setup()
    assert len(tr.sets["train"]) == 3 and {p.kind for p in tr.sets["train"]} == {"generator"}
    assert all(p.a.shape == (3, 48, 48, 3) for p in tr.sets["train"])
    tr.train()
    assert (tmp_path / "run" / "reward_model" / "config.json").is_file()
