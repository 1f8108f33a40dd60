"""GRPO and NFT: toy flow policies learn, the trainers' porting checks (ratio exactly 1 and KL
exactly 0 on fresh rollouts, a simple reward rises), NaN/inf and zero-advantage handling, exact
resume, the SDE window schedule."""

import copy
import math

import pytest
import torch
from torch import nn

from idcrafter import sampling
from idcrafter.config import apply_overrides
from idcrafter.errors import InputError
from idcrafter.rl import losses as L
from idcrafter.rl import schedule
from idcrafter.rl.advantages import group_advantages
from idcrafter.rl.grpo import GRPOTrainer, grpo_row_losses
from idcrafter.rl.nft import NFTTrainer, nft_row_losses
from idcrafter.rl.recipes import rl_recipe
from idcrafter.train import checkpoint as ckpt
from idcrafter.train.logger import read_metrics

FAST = ["checkpoint.every=0", "train.steps=1"]


# ------------------------------------------------------------------ toy 2-D flow policies
class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 32), nn.SiLU(), nn.Linear(32, 2))

    def forward(self, x, sigma):
        return self.net(torch.cat([x, sigma[:, None]], 1))


def _reward(x0):  # move right
    return x0[:, 0]


def _toy_grpo(iters: int, seed: int) -> list[float]:
    torch.manual_seed(seed)
    m = Toy()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    sig = sampling.sigma_schedule(8, shift=1.0)
    group, n = 16, 64
    out = []
    for it in range(iters):
        with torch.no_grad():
            x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed * 1000 + it))
            res = sampling.sample(lambda x, s: m(x, s), x, sig, mode="sde", return_trajectory=True,
                                  generator=torch.Generator().manual_seed(seed * 1000 + 500 + it))
        r = _reward(res.latents)
        out.append(float(r.mean()))
        a = group_advantages(r, torch.arange(n) // group)
        opt.zero_grad()
        for k, j in enumerate(res.sde_steps):
            xj, xn = res.trajectory[j], res.trajectory[j + 1]
            v = m(xj, torch.full((n,), float(sig[j])))
            rows, stats = grpo_row_losses(v, None, xj, xn, float(sig[j]), float(sig[j + 1]), res.log_probs[:, k],
                                          a, clip_range=0.2, beta=0.0)
            assert torch.equal(stats["ratio_mean"], torch.ones(n))  # one update per rollout: always on-policy
            (rows.mean() / len(res.sde_steps)).backward()
        opt.step()
    return out


def _toy_nft(iters: int, seed: int) -> list[float]:
    torch.manual_seed(seed)
    m = Toy()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    sig = sampling.sigma_schedule(8, shift=1.0)
    group, n = 16, 64
    out = []
    for it in range(iters):
        old = copy.deepcopy(m)
        with torch.no_grad():
            x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed * 1000 + it))
            x0 = sampling.sample(lambda x, s: old(x, s), x, sig).latents  # ODE rollouts of the old policy
        r = _reward(x0)
        out.append(float(r.mean()))
        p = L.nft_optimality(group_advantages(r, torch.arange(n) // group), 1.0)
        opt.zero_grad()
        g = torch.Generator().manual_seed(seed * 1000 + 700 + it)
        for _ in range(4):
            t = torch.rand(n, generator=g) * 0.96 + 0.02
            eps = torch.randn(x0.shape, generator=g)
            xt = (1 - t[:, None]) * x0 + t[:, None] * eps
            with torch.no_grad():
                v_old = old(xt, t)
            rows, _ = nft_row_losses(m(xt, t), v_old, None, eps - x0, t, p, beta=1.0)
            (rows.mean() / 4).backward()
        opt.step()
    return out


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("algo", [_toy_grpo, _toy_nft])
def test_toy_flow_policy_learns_to_raise_the_reward(algo, seed):
    curve = algo(30, seed)
    start, end = sum(curve[:5]) / 5, sum(curve[-5:]) / 5
    assert end > start + 0.3, (algo.__name__, [round(c, 2) for c in curve])


def test_toy_grpo_with_the_advantage_sign_flipped_lowers_the_reward():
    """The joint of advantages and loss: negated advantages must move the policy the other way."""
    torch.manual_seed(0)
    m = Toy()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    sig = sampling.sigma_schedule(8, shift=1.0)
    curve = []
    for it in range(20):
        with torch.no_grad():
            res = sampling.sample(lambda x, s: m(x, s), torch.randn(64, 2), sig, mode="sde", return_trajectory=True)
        r = _reward(res.latents)
        curve.append(float(r.mean()))
        a = -group_advantages(r, torch.arange(64) // 16)
        opt.zero_grad()
        for k, j in enumerate(res.sde_steps):
            v = m(res.trajectory[j], torch.full((64,), float(sig[j])))
            rows, _ = grpo_row_losses(v, None, res.trajectory[j], res.trajectory[j + 1], float(sig[j]),
                                      float(sig[j + 1]), res.log_probs[:, k], a, 0.2, 0.0)
            rows.mean().backward()
        opt.step()
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.2


# ------------------------------------------------------------------ schedules
def test_sde_window_fixed_sliding_and_bad_sizes():
    assert schedule.sde_window(7, 10, 0) == (0, 9)
    assert schedule.sde_window(7, 10, 3, start=2) == (2, 5)
    # sliding every 2 iterations by 2 steps over 9 - 3 + 1 = 7 positions, wrapping around
    assert [schedule.sde_window(i, 10, 3, 0, 2, 2)[0] for i in range(10)] == [0, 0, 2, 2, 4, 4, 6, 6, 1, 1]
    with pytest.raises(InputError):
        schedule.sde_window(0, 4, 4)
    with pytest.raises(InputError):
        schedule.sde_window(0, 10, 3, start=7)


def test_trained_steps_and_layout():
    steps = schedule.trained_steps([2, 3, 4, 5, 6], 0.6, torch.Generator().manual_seed(0))
    assert len(steps) == 3 and steps == sorted(steps) and set(steps) <= {2, 3, 4, 5, 6}
    assert schedule.trained_steps([4], 0.1, torch.Generator().manual_seed(0)) == [4]
    both = schedule.local_samples(2, 4, 2, 0) + schedule.local_samples(2, 4, 2, 1)
    assert sorted(s for s, _, _ in both) == list(range(8))
    assert {g for _, g, _ in schedule.local_samples(2, 4, 2, 1)} == {0, 1}  # each group on both ranks
    assert schedule.seed_for(0, 3, "noise", 5) != schedule.seed_for(0, 3, "sde", 5)
    assert schedule.old_policy_decay(100, 0.001, 0.5) == pytest.approx(0.1)
    assert schedule.old_policy_decay(10_000, 0.001, 0.5) == 0.5


# ------------------------------------------------------------------ the trainers
def grpo_cfg(*overrides):
    return apply_overrides(rl_recipe("grpo", "debug"), [*FAST, *overrides])


@pytest.mark.parametrize("sde_type", ["flow", "cps"])
def test_step_std_is_the_std_each_step_draws_with(sde_type):
    sig = sampling.sigma_schedule(10, 3.0)
    x = torch.randn(1, 2, 1, 3, 3)
    for i in range(10):
        step = sampling.stochastic_step(sde_type)(torch.randn_like(x), float(sig[i]), float(sig[i + 1]), x,
                                                  noise_level=0.6)
        assert sampling.step_std(sde_type, float(sig[i]), float(sig[i + 1]), 0.6) == pytest.approx(
            float(step.std.flatten()[0]), rel=1e-5, abs=1e-7)
    # CPS's step into the smallest sigma is nearly deterministic, the flow SDE's is not
    assert sampling.step_std("cps", float(sig[8]), float(sig[9])) < 0.01 < sampling.step_std("flow", float(sig[8]),
                                                                                             float(sig[9]))


def test_grpo_never_trains_a_nearly_deterministic_step(tmp_path, monkeypatch):
    """CPS's step into sigma_min (std 0.008) is left out of the trained steps: its 1/std^2 log-prob
    and KL would set the update. grpo.min_std=0 trains it again; the flow SDE keeps every step."""
    seen = []
    real = schedule.trained_steps
    monkeypatch.setattr(schedule, "trained_steps", lambda steps, f, g: seen.append(list(steps)) or real(steps, f, g))
    GRPOTrainer(grpo_cfg("rollout.sde_type=cps"), tmp_path / "a").train()
    GRPOTrainer(grpo_cfg("rollout.sde_type=cps", "grpo.min_std=0"), tmp_path / "b").train()
    GRPOTrainer(grpo_cfg("rollout.sde_type=flow"), tmp_path / "c").train()
    assert seen == [[0, 1, 2, 3], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]]
    with pytest.raises(InputError, match="min_std"):
        GRPOTrainer(grpo_cfg("grpo.min_std=5"), tmp_path / "d").train()
    with pytest.raises(InputError, match="min_std"):
        grpo_cfg("grpo.min_std=-1").validate()


@pytest.mark.parametrize("overrides", [
    ["train.mode=lora", "train.lora_rank=4", "grpo.beta=0.04"],
    ["train.mode=full", "grpo.beta=0.04", "rollout.guidance=2.5", "rollout.sde_type=cps", "grpo.guard=true"],
])
def test_first_update_on_fresh_rollouts_has_ratio_one_and_kl_zero(tmp_path, overrides):
    tr = GRPOTrainer(grpo_cfg("grpo.updates=2", "grpo.timestep_fraction=0.5", "rollout.window_size=3", *overrides),
                     tmp_path)
    last = tr.train()
    assert last["ratio_mean_first"] == 1.0 and last["kl_first"] == 0.0  # exactly: a porting check
    assert last["updates"] == 2 and last["trained_steps"] == 1
    assert last["clip_frac_first"] == 0.0
    assert math.isfinite(last["grad_norm"]) and last["grad_norm"] > 0
    for key in ("reward", "reward/brightness", "ratio_mean", "kl", "clip_frac", "grad_norm", "rollout_s", "cpu_s",
                "reward_s", "update_s", "skipped/nonfinite_reward", "groups_dropped"):
        assert key in last, key


@pytest.mark.parametrize("mode", ["train.mode=full", "train.mode=lora"])
def test_second_update_moves_the_ratio_and_the_kl(tmp_path, mode):
    tr = GRPOTrainer(grpo_cfg("grpo.updates=2", "grpo.beta=0.04", mode, "train.lora_rank=4"), tmp_path)
    last = tr.train()
    # averaged over both updates: the second sees a moved policy
    assert last["ratio_mean"] != 1.0 and last["kl"] > 0.0


def test_debug_recipe_reward_rises_within_a_few_iterations(tmp_path):
    """The Flow-GRPO maintainers' porting check, on the tiny random model with brightness."""
    GRPOTrainer(grpo_cfg("train.steps=8"), tmp_path).train()
    rewards = [r["reward"] for r in read_metrics(tmp_path / "metrics.jsonl") if "reward" in r]
    assert len(rewards) == 8 and sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.03, rewards


def test_nft_debug_reward_rises_and_old_policy_is_checkpointed(tmp_path):
    cfg = apply_overrides(rl_recipe("nft", "debug"), ["train.steps=8", "checkpoint.every=8"])
    NFTTrainer(cfg, tmp_path).train()
    rewards = [r["reward"] for r in read_metrics(tmp_path / "metrics.jsonl") if "reward" in r]
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 0.02, rewards
    assert (tmp_path / "checkpoints" / "step_00000008" / "old_policy.safetensors").is_file()


class _Broken:
    """A reward that is NaN or inf on some samples (or constant), to check the skipping."""

    def __init__(self, mode):
        self.mode, self.calls = mode, 0

    def __call__(self, batch):
        from idcrafter.rewards.base import RewardOutput

        b = len(batch)
        v = torch.tensor([float(x.mean()) / 255 for x in batch.videos])
        if self.mode == "some":
            v[0], v[-1] = float("nan"), float("inf")
        elif self.mode == "all":
            v[:] = float("nan")
        elif self.mode == "constant":
            v[:] = 0.5
        return RewardOutput({"brightness": v}, {"brightness": torch.ones(b, dtype=torch.bool)}, [None] * b)


@pytest.mark.parametrize("mode", ["some", "all", "constant"])
def test_nonfinite_rewards_and_zero_advantage_groups_never_reach_the_weights(tmp_path, mode):
    tr = GRPOTrainer(grpo_cfg(), tmp_path)
    tr.setup()
    tr.reward = _Broken(mode)
    before = {n: p.detach().clone() for n, p in tr.trainable.items()}
    last = tr.train()
    after = tr.trainable
    assert all(torch.isfinite(p).all() for p in after.values())
    moved = any(not torch.equal(before[n], after[n]) for n in before)
    if mode == "some":
        assert last["skipped/nonfinite_reward"] == 4 and moved  # 2 per rollout batch, the rest trained
    else:
        assert not moved and last["updates"] == 0
        assert last["groups_dropped"] == 2
        assert last["skipped/nonfinite_reward"] == (8 if mode == "all" else 0)


def test_grpo_resume_is_bitwise_exact(tmp_path):
    straight = GRPOTrainer(grpo_cfg("train.steps=3", "train.mode=lora", "train.lora_rank=4", "grpo.beta=0.04",
                                    "train.ema_decay=0.5"), tmp_path / "a")
    straight.train()
    first = GRPOTrainer(grpo_cfg("train.steps=2", "train.mode=lora", "train.lora_rank=4", "grpo.beta=0.04",
                                 "train.ema_decay=0.5"), tmp_path / "b")
    first.train()
    resumed = GRPOTrainer(grpo_cfg("train.steps=3", "train.mode=lora", "train.lora_rank=4", "grpo.beta=0.04",
                                   "train.ema_decay=0.5"), tmp_path / "b", resume=True)
    resumed.train()
    assert resumed.step == 3
    for n, p in straight.trainable.items():
        assert torch.equal(p, resumed.trainable[n]), n
    assert all(torch.equal(straight.ema.shadow[n], resumed.ema.shadow[n]) for n in straight.ema.shadow)
    got = ckpt.load_tensors(tmp_path / "b" / "checkpoints" / "step_00000003" / "trainable.safetensors")
    assert all(torch.equal(got[n], straight.trainable[n]) for n in got)
    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl") if "reward" in r]
    assert steps == [1, 2, 3]


def test_nft_resume_is_bitwise_exact(tmp_path):
    base = ["train.mode=full", "nft.old_rate=0.2", "nft.kl=0.01"]
    straight = NFTTrainer(apply_overrides(rl_recipe("nft", "debug"), ["train.steps=3", "checkpoint.every=0", *base]),
                          tmp_path / "a")
    straight.train()
    NFTTrainer(apply_overrides(rl_recipe("nft", "debug"), ["train.steps=2", "checkpoint.every=0", *base]),
               tmp_path / "b").train()
    resumed = NFTTrainer(apply_overrides(rl_recipe("nft", "debug"), ["train.steps=3", "checkpoint.every=0", *base]),
                         tmp_path / "b", resume=True)
    resumed.train()
    for n, p in straight.trainable.items():
        assert torch.equal(p, resumed.trainable[n]), n
    assert all(torch.equal(straight.old.values[n], resumed.old.values[n]) for n in straight.old.values)


def test_bad_rl_configs_are_refused():
    with pytest.raises(InputError, match="stochastic"):
        grpo_cfg("rollout.sde_type=ode").validate()
    with pytest.raises(InputError):
        grpo_cfg("grpo.timestep_fraction=0").validate()
    with pytest.raises(InputError):
        grpo_cfg("reward.aggregation=median").validate()
    with pytest.raises(InputError):
        rl_recipe("grpo", "nope")


def test_shared_noise_and_rank_layout_of_rollouts(tmp_path):
    tr = GRPOTrainer(grpo_cfg("rollout.shared_noise=true"), tmp_path)
    tr.setup()
    rollouts = tr.runner.run(0)
    x0 = torch.cat([r.states[:, 0] for r in rollouts])  # the initial noise (window starts at step 0)
    groups = torch.cat([r.groups for r in rollouts])
    for g in groups.unique():
        rows = x0[groups == g]
        assert all(torch.equal(rows[0], row) for row in rows)  # one noise per group
    assert not torch.equal(x0[groups == 0][0], x0[groups == 1][0])
    assert not torch.equal(rollouts[0].latents[0], rollouts[0].latents[1])  # the SDE noise differs
    tr.close()
    tr = GRPOTrainer(grpo_cfg(), tmp_path / "own")
    tr.setup()
    x0 = torch.cat([r.states[:, 0] for r in tr.runner.run(0)])
    assert not torch.equal(x0[0], x0[1])  # without: every sample its own noise
    tr.close()


def test_assign_advantages_follows_the_reward_config():
    """The trainer's joint of rewards and advantages: weights, aggregation mode, std, drop."""
    from idcrafter.rl import rollout as R
    from idcrafter.rl.advantages import combine_advantages

    def fake(samples, groups, a, b):
        r = R.Rollout(samples=torch.tensor(samples), groups=torch.tensor(groups), prompts=[""] * len(samples),
                      references=[[]] * len(samples), cond=None, uncond=None, sigmas=torch.zeros(2), sde_steps=[],
                      window=(0, 0), states=None, log_probs=torch.zeros(len(samples), 0),
                      latents=torch.zeros(len(samples), 1), videos=None)
        r.components = {"a": torch.tensor(a), "b": torch.tensor(b)}
        return r

    cfg = grpo_cfg('reward.weights={"a": 1.0, "b": 0.5}', "reward.aggregation=advantage", "reward.std=global")
    rollouts = [fake([0, 1], [0, 0], [0.1, 0.9], [5.0, 1.0]), fake([2, 3], [1, 1], [0.3, 0.3], [2.0, 2.0])]
    metrics = R.assign_advantages(rollouts, cfg, drop_zero_groups=True)
    comps = {"a": torch.tensor([0.1, 0.9, 0.3, 0.3]), "b": torch.tensor([5.0, 1.0, 2.0, 2.0])}
    reward, adv = combine_advantages(comps, {"a": 1.0, "b": 0.5}, torch.tensor([0, 0, 1, 1]), "advantage", "global")
    got = torch.cat([r.advantages for r in rollouts])
    assert torch.equal(got, adv) and torch.equal(torch.cat([r.reward for r in rollouts]), reward)
    assert torch.cat([r.keep for r in rollouts]).tolist() == [True, True, False, False]  # group 1 is all equal
    assert metrics["groups_dropped"] == 1 and metrics["reward/b"] == pytest.approx(2.5)
    assert metrics["reward"] == pytest.approx(float(reward.mean()))


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_rl_refuses_a_sharded_launch_before_building_anything(tmp_path, monkeypatch, kind):
    """An FSDP / DeepSpeed launch config would be silently ignored by the data-parallel RL update:
    set-up refuses it (before the model is built), and an ordinary launch passes."""
    from accelerate.utils import DistributedType

    import idcrafter.train.engine as engine
    from idcrafter.errors import InputError

    real = engine.make_accelerator

    def sharded(train_cfg):
        acc = real(train_cfg)
        monkeypatch.setattr(type(acc), "distributed_type", property(lambda self: getattr(DistributedType, kind)))
        return acc

    monkeypatch.setattr(engine, "make_accelerator", sharded)
    built = []
    monkeypatch.setattr(type(grpo_cfg().model), "build", lambda self: built.append(1))
    with pytest.raises(InputError, match="data parallel"):
        GRPOTrainer(grpo_cfg(), tmp_path / "a").setup()
    assert not built
    monkeypatch.undo()
    tr = GRPOTrainer(grpo_cfg(), tmp_path / "b")
    tr.setup()  # the ordinary launch
    tr.close()
