"""RL maths against hand computations: advantages, aggregation, zero-advantage groups, the clipped
GRPO loss, the KL, GRPO-Guard, DiffusionNFT, Bradley-Terry with ties, Diffusion-DPO."""

import math

import pytest
import torch

from idcrafter.errors import InputError
from idcrafter.rl import advantages as adv
from idcrafter.rl import losses as L

EPS = 1e-4


# ------------------------------------------------------------------ advantages
def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 4.0])
    g = torch.tensor([0, 0, 0, 1, 1, 2])
    a = adv.group_advantages(r, g, "group", EPS, clip=None)
    sd0 = math.sqrt(2 / 3)  # population std of 1, 2, 3
    want = [-1 / (sd0 + EPS), 0.0, 1 / (sd0 + EPS), 0.0, 0.0, 0.0]  # equal group and a single -> 0
    assert a.tolist() == pytest.approx(want, abs=1e-6)
    # global std: the std of all six rewards (mean 5, squared deviations sum to 80), means per group
    sd = math.sqrt(80 / 6)
    a = adv.group_advantages(r, g, "global", EPS, clip=None)
    assert a.tolist() == pytest.approx([-1 / (sd + EPS), 0, 1 / (sd + EPS), 0, 0, 0], abs=1e-6)


def test_group_advantages_clip_and_groups_need_not_be_contiguous():
    r = torch.tensor([0.0, 100.0, 0.0, 0.0])
    g = torch.tensor([7, 7, 7, 7])
    sd = math.sqrt((3 * 25**2 + 75**2) / 4)
    a = adv.group_advantages(r, g, clip=None)
    assert a.tolist() == pytest.approx([-25 / (sd + EPS), 75 / (sd + EPS), -25 / (sd + EPS), -25 / (sd + EPS)], abs=1e-6)
    assert adv.group_advantages(r, g, clip=1.0)[1].item() == pytest.approx(1.0)
    # interleaved groups (as ranks spread them) give the same as contiguous ones
    r2 = torch.tensor([1.0, 5.0, 3.0, 9.0])
    inter = adv.group_advantages(r2, torch.tensor([0, 1, 0, 1]), clip=None)
    cont = adv.group_advantages(r2[[0, 2, 1, 3]], torch.tensor([0, 0, 1, 1]), clip=None)
    assert inter[[0, 2, 1, 3]].tolist() == pytest.approx(cont.tolist())


def test_nonfinite_rewards_are_excluded_and_get_zero():
    r = torch.tensor([1.0, float("nan"), 3.0, float("inf")])
    g = torch.tensor([0, 0, 0, 0])
    a = adv.group_advantages(r, g, clip=None)
    assert a.tolist() == pytest.approx([-1 / (1 + EPS), 0.0, 1 / (1 + EPS), 0.0])  # mean 2, std 1 of {1, 3}
    masked = adv.group_advantages(torch.tensor([1.0, 50.0, 3.0]), torch.zeros(3), valid=torch.tensor([True, False, True]))
    assert masked.tolist() == pytest.approx([-1 / (1 + EPS), 0.0, 1 / (1 + EPS)])


def test_reward_versus_advantage_aggregation_by_hand():
    comps = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([0.0, 100.0])}
    g = torch.zeros(2, dtype=torch.long)
    reward, a = adv.combine_advantages(comps, {"a": 1.0, "b": 1.0}, g, "reward", clip=None)
    assert reward.tolist() == [0.0, 101.0]
    assert a.tolist() == pytest.approx([-50.5 / (50.5 + EPS), 50.5 / (50.5 + EPS)], abs=1e-6)
    # advantage aggregation: each component z-scored in its group, then weighted (0.5 and 2)
    reward, a = adv.combine_advantages(comps, {"a": 0.5, "b": 2.0}, g, "advantage", clip=None)
    za, zb = 0.5 / (0.5 + EPS), 50 / (50 + EPS)
    assert reward.tolist() == [0.0, 200.5]
    assert a.tolist() == pytest.approx([-(0.5 * za + 2 * zb), 0.5 * za + 2 * zb], abs=1e-6)
    _, clipped = adv.combine_advantages(comps, {"a": 0.5, "b": 2.0}, g, "advantage", clip=2.0)
    assert clipped.tolist() == pytest.approx([-2.0, 2.0])
    with pytest.raises(InputError, match="does not produce"):
        adv.weighted_reward(comps, {"c": 1.0})
    with pytest.raises(InputError):
        adv.combine_advantages(comps, {"a": 1.0}, g, "median")


def test_a_nonfinite_component_invalidates_the_row_in_both_modes():
    comps = {"a": torch.tensor([0.0, 1.0, 2.0]), "b": torch.tensor([1.0, float("nan"), 3.0])}
    g = torch.zeros(3, dtype=torch.long)
    for mode in ("reward", "advantage"):
        reward, a = adv.combine_advantages(comps, {"a": 1.0, "b": 1.0}, g, mode, clip=None)
        assert math.isnan(reward[1].item()) and a[1].item() == 0.0
        assert a[0].item() == pytest.approx(-a[2].item()) and a[0].item() < 0


def test_zero_advantage_groups_are_found():
    a = torch.tensor([0.0, 0.0, 0.5, -0.5, 0.0, 0.3, 0.0, 0.0])
    g = torch.tensor([0, 0, 1, 1, 2, 3, 1, 3])
    assert adv.nonzero_groups(a, g).tolist() == [False, False, True, True, False, True, True, True]


# ------------------------------------------------------------------ GRPO loss, KL, Guard
def test_clipped_policy_loss_value_gradient_and_clip_fraction():
    ratio = torch.tensor([1.1, 0.9, 1.0], requires_grad=True)
    a = torch.tensor([1.0, 1.0, -2.0])
    out = L.clipped_policy_loss(ratio, a, clip_range=0.05)
    # row 0: max(-1.1, -1.05) = -1.05 (clipped); row 1: max(-0.9, -0.95) = -0.9; row 2: 2
    assert out.per_row.tolist() == pytest.approx([-1.05, -0.9, 2.0])
    assert out.loss.item() == pytest.approx(0.05 / 3, abs=1e-6)
    assert out.clip_frac.item() == pytest.approx(2 / 3)
    out.loss.backward()
    assert ratio.grad.tolist() == pytest.approx([0.0, -1 / 3, 2 / 3])  # the clipped row passes no gradient
    w = L.clipped_policy_loss(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0]), 0.1, weight=torch.tensor([2.0, 0.5]))
    assert w.loss.item() == pytest.approx((-2.0 - 0.5) / 2)


def test_importance_ratio_and_guard_recentering():
    lp = torch.log(torch.tensor([0.5, 1.0, 2.0, 4.0]))
    assert L.importance_ratio(lp, torch.zeros(4)).tolist() == pytest.approx([0.5, 1.0, 2.0, 4.0])
    r = L.importance_ratio(lp, torch.zeros(4), recenter=True, step_ids=torch.tensor([0, 0, 1, 1]))
    assert r.tolist() == pytest.approx([0.5 / 0.75, 1 / 0.75, 2 / 3, 4 / 3])  # step means 0.75 and 3
    on_policy = L.importance_ratio(lp, lp, recenter=True)
    assert torch.equal(on_policy, torch.ones(4))
    # the mean is detached: the gradient is that of ratio / const
    x = lp.clone().requires_grad_(True)
    L.importance_ratio(x, torch.zeros(4), recenter=True).sum().backward()
    assert x.grad.tolist() == pytest.approx((torch.exp(lp) / torch.exp(lp).mean()).tolist())


def test_kl_to_reference_by_hand():
    mean = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    ref = torch.zeros(2, 2)
    std = torch.tensor([[0.5], [0.0]])
    kl = L.kl_to_reference(mean, ref, std)
    assert kl.tolist() == pytest.approx([(1 / 0.5 + 4 / 0.5) / 2, 0.0])  # (x^2 / (2 * 0.25)) averaged


def test_guard_step_weights():
    w = L.step_weights(torch.tensor([-0.1, -0.2, -0.4]))
    inv = torch.tensor([10.0, 5.0, 2.5])
    assert w.tolist() == pytest.approx((inv / inv.mean()).tolist()) and w.mean().item() == pytest.approx(1.0)


# ------------------------------------------------------------------ DiffusionNFT
def test_nft_optimality_map():
    assert L.nft_optimality(torch.tensor([-10.0, -2.5, 0.0, 2.5, 7.0]), 5.0).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_nft_loss_by_hand_both_forms():
    v_theta = torch.tensor([[2.0]], requires_grad=True)
    v_old, target, r = torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([0.75])
    loss, per = L.nft_loss(v_theta, v_old, target, r, beta=0.5)
    # v+ = 0.5 * 2 + 0.5 * 1 = 1.5, v- = 1.5 * 1 - 0.5 * 2 = 0.5: 0.75 * 1.5^2 + 0.25 * 0.5^2
    assert loss.item() == pytest.approx(1.75)
    loss.backward()
    # d/dv: 0.75 * 2 * 1.5 * 0.5 + 0.25 * 2 * 0.5 * (-0.5)
    assert v_theta.grad.item() == pytest.approx(1.0)
    loss, _ = L.nft_loss(torch.tensor([[2.0]]), v_old, target, r, beta=0.5, t=torch.tensor([0.5]), form="x0")
    # x0 errors 0.75 and 0.25, each divided by itself (self-normalised), then / beta
    assert loss.item() == pytest.approx((0.75 * 0.75**2 / 0.75 + 0.25 * 0.25**2 / 0.25) / 0.5)


def test_nft_uninformative_reward_gives_no_gradient_at_the_old_policy():
    torch.manual_seed(0)
    v_old, target = torch.randn(3, 4), torch.randn(3, 4)
    v_theta = v_old.clone().requires_grad_(True)
    L.nft_loss(v_theta, v_old, target, torch.full((3,), 0.5), beta=0.1)[0].backward()
    assert v_theta.grad.abs().max() < 1e-6
    # r = 1 pulls v_theta toward the target, r = 0 pushes it away
    for r_val, sign in ((1.0, 1), (0.0, -1)):
        v = v_old.clone().requires_grad_(True)
        L.nft_loss(v, v_old, target, torch.full((3,), r_val), beta=0.1)[0].backward()
        step = -v.grad  # gradient descent direction
        assert sign * (step * (target - v_old)).sum() > 0


# ------------------------------------------------------------------ BTT and DPO
def test_btt_with_ties_by_hand_and_probabilities():
    k, lk = 5.0, math.log(5.0)
    ra, rb = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 0.0])
    got = L.btt_loss(ra, rb, torch.tensor([1, -1, 0]), k)
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731 - softplus, -log sigmoid(-x)
    want = [sp(-(1 - lk)), sp(-(-1 - lk)), sp(-(1 - lk)) + sp(-(-1 - lk)) - math.log(24)]
    assert got.tolist() == pytest.approx(want, rel=1e-6)
    d = torch.linspace(-4, 4, 9)
    p = L.btt_probabilities(d, torch.zeros(9), k)
    assert torch.allclose(p.sum(-1), torch.ones(9))
    nll = torch.stack([L.btt_loss(d, torch.zeros(9), torch.full((9,), lab), k) for lab in (1, 0, -1)], -1)
    assert torch.allclose(torch.exp(-nll), p, atol=1e-6)  # the loss is exactly -log of those probabilities
    with pytest.raises(InputError):
        L.btt_loss(ra, rb, torch.tensor([1, 1, 1]), k=1.0)


def test_diffusion_dpo_by_hand():
    loss, acc = L.diffusion_dpo_loss(torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([1.5]), torch.tensor([1.5]), 2.0)
    # inside = -0.5 * 2 * ((1 - 2) - 0) = 1
    assert loss.item() == pytest.approx(math.log1p(math.exp(-1.0))) and acc.item() == 1.0
    loss, acc = L.diffusion_dpo_loss(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([1.0]), torch.tensor([1.0]), 1.0)
    assert loss.item() == pytest.approx(math.log1p(math.exp(0.5))) and acc.item() == 0.0


def test_shadow_and_ema_by_hand_and_their_swap_restores_exactly():
    """`train.ema.Shadow` is the one copy-average-swap used by the training EMA, the KL reference
    and NFT's old policy (`rl.policy` re-exports it)."""
    from idcrafter.rl.policy import Shadow as PolicyShadow
    from idcrafter.train.ema import EMA, Shadow

    assert PolicyShadow is Shadow
    w = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    sh = Shadow({"w": w})
    with torch.no_grad():
        w.copy_(torch.tensor([3.0, 6.0]))
    sh.update(0.75)  # 0.75 * [1, 2] + 0.25 * [3, 6]
    assert torch.allclose(sh.values["w"], torch.tensor([1.5, 3.0]))
    with sh.active():
        assert torch.equal(w.detach(), torch.tensor([1.5, 3.0]))
    assert torch.equal(w.detach(), torch.tensor([3.0, 6.0]))
    with pytest.raises(KeyError):
        sh.load_state_dict({"v": torch.zeros(2)})

    ema = EMA({"w": w}, decay=0.9)  # shadow [3, 6]; warm-up decays d_0 = 1/10, d_1 = 2/11
    with torch.no_grad():
        w.copy_(torch.tensor([13.0, 16.0]))
    ema.update()
    assert torch.allclose(ema.shadow["w"], torch.tensor([0.1 * 3 + 0.9 * 13, 0.1 * 6 + 0.9 * 16]))
    ema.update()
    d = 2 / 11
    assert torch.allclose(ema.shadow["w"], d * torch.tensor([12.0, 15.0]) + (1 - d) * torch.tensor([13.0, 16.0]))
    assert ema.updates == 2 and ema.current_decay() == pytest.approx(3 / 12)
    with ema.swapped():
        assert torch.equal(w.detach(), ema.shadow["w"])
    assert torch.equal(w.detach(), torch.tensor([13.0, 16.0]))
    ema.load_state_dict({"w": torch.zeros(2)}, updates=7)
    assert ema.updates == 7 and torch.equal(ema.state_dict()["w"], torch.zeros(2))
