"""The sampler: schedule parity with diffusers, exact steps, hand-computed SDE log-probs, CFG batching."""

import math

import pytest
import torch

from idcrafter.errors import InputError
from idcrafter.sampling import (
    cfg_combine,
    euler_step,
    flow_shift,
    guided_velocity,
    sample,
    sde_step_with_logprob,
    sigma_schedule,
    sigma_to_timestep,
)

SHAPE = (2, 3, 2, 4, 4)  # (B, C, F, H, W)


def _rand(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shift", [1.0, 3.0, 5.0])
@pytest.mark.parametrize("n", [1, 2, 7, 50])
def test_schedule_matches_diffusers(n, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    sched.set_timesteps(n)
    ours = sigma_schedule(n, shift=shift)
    assert ours.shape == (n + 1,) and ours.dtype == torch.float32
    assert ours[0] == 1.0 and ours[-1] == 0.0
    assert (ours - sched.sigmas).abs().max() <= 1e-6
    # diffusers' timesteps are the N non-terminal sigmas * 1000
    assert (sigma_to_timestep(ours[:-1]) - sched.timesteps).abs().max() <= 1e-3


def test_flow_shift_formula():
    assert flow_shift(0.5, 3.0) == pytest.approx(1.5 / 2.0)
    assert flow_shift(0.0, 3.0) == 0.0 and flow_shift(1.0, 3.0) == 1.0
    assert flow_shift(0.3, 1.0) == pytest.approx(0.3)


@pytest.mark.parametrize("n", [1, 3, 10])
def test_euler_recovers_x0_on_constant_velocity_field(n):
    x0, eps = _rand(0), _rand(1)
    v = eps - x0  # the exact velocity of the straight path, constant in sigma
    out = sample(lambda x, s: v, eps, sigma_schedule(n, shift=3.0))
    assert torch.allclose(out.latents, x0, atol=1e-5)
    assert out.log_probs.shape == (2, 0) and out.sde_steps == []


def test_euler_step_dtype_and_per_sample_sigmas():
    x, v = _rand(2).bfloat16(), _rand(3).bfloat16()
    out = euler_step(v, 0.8, 0.6, x)
    assert out.dtype == torch.bfloat16
    ref = (x.float() - 0.2 * v.float()).bfloat16()
    assert torch.equal(out, ref)
    x, v = _rand(2), _rand(3)
    per = euler_step(v, torch.tensor([0.8, 0.5]), torch.tensor([0.6, 0.1]), x)
    assert torch.equal(per[0], euler_step(v[:1], 0.8, 0.6, x[:1])[0])
    assert torch.equal(per[1], euler_step(v[1:], 0.5, 0.1, x[1:])[0])


def _hand_mean_std(x, v, s, s_next, a, s_for_denominator=None):
    dt = s_next - s
    sd = a * math.sqrt(s / (1 - (s if s_for_denominator is None else s_for_denominator)))
    mean = [xi * (1 + sd**2 * dt / (2 * s)) + vi * (1 + sd**2 * (1 - s) / (2 * s)) * dt for xi, vi in zip(x, v)]
    return mean, sd * math.sqrt(-dt)


def test_sde_logprob_matches_hand_computed_gaussian():
    x, v, xp = [0.5, -1.0, 2.0], [1.0, 0.25, -0.5], [0.3, -0.9, 2.2]
    s, s_next, a = 0.8, 0.6, 0.7
    mean, std = _hand_mean_std(x, v, s, s_next, a)  # std_dev_t = 1.4, std = 1.4 * sqrt(0.2)
    logp = sum(-((p - m) ** 2) / (2 * std**2) - math.log(std) - 0.5 * math.log(2 * math.pi) for p, m in zip(xp, mean))
    t = lambda vals: torch.tensor([vals])  # (1, 3)
    out = sde_step_with_logprob(t(v), s, s_next, t(x), noise_level=a, prev_sample=t(xp))
    assert torch.allclose(out.mean, t(mean), atol=1e-6)
    assert out.std.shape == (1, 1) and out.std.item() == pytest.approx(std, rel=1e-6)
    assert out.log_prob.shape == (1,) and out.log_prob.item() == pytest.approx(logp / 3, rel=1e-5)
    normal = torch.distributions.Normal(t(mean), std).log_prob(t(xp)).mean()
    assert out.log_prob.item() == pytest.approx(normal.item(), rel=1e-5)
    assert torch.equal(out.prev_sample, t(xp))


def test_sde_first_step_uses_next_sigma_and_is_finite():
    x, v = [0.5, -1.0], [1.0, 0.25]
    s, s_next, a = 1.0, 0.9, 0.7
    mean, std = _hand_mean_std(x, v, s, s_next, a, s_for_denominator=s_next)  # a * sqrt(1 / 0.1)
    out = sde_step_with_logprob(torch.tensor([v]), s, s_next, torch.tensor([x]), noise_level=a,
                                generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.mean, torch.tensor([mean]), atol=1e-6)
    assert out.std.item() == pytest.approx(std, rel=1e-6)
    assert torch.isfinite(out.log_prob).all() and torch.isfinite(out.prev_sample).all()


def test_prev_sample_given_reproduces_sampled_logprob():
    x, v = _rand(4), _rand(5)
    first = sde_step_with_logprob(v, 0.7, 0.55, x, generator=torch.Generator().manual_seed(1))
    again = sde_step_with_logprob(v, 0.7, 0.55, x, prev_sample=first.prev_sample)
    assert torch.allclose(first.log_prob, again.log_prob, atol=1e-6)
    assert torch.equal(first.prev_sample, again.prev_sample)
    # bf16 trajectories: the log-prob is taken of the stored (cast) sample, so re-evaluation agrees
    xb, vb = x.bfloat16(), v.bfloat16()
    first = sde_step_with_logprob(vb, 0.7, 0.55, xb, generator=torch.Generator().manual_seed(1))
    assert first.prev_sample.dtype == torch.bfloat16
    again = sde_step_with_logprob(vb, 0.7, 0.55, xb, prev_sample=first.prev_sample)
    assert torch.equal(first.log_prob, again.log_prob)


def test_per_sample_sigmas_equal_looping_with_floats():
    x, v, xp = _rand(6), _rand(7), _rand(8)
    sig, sig_next = torch.tensor([1.0, 0.4]), torch.tensor([0.9, 0.0])  # row 1 is a last step
    both = sde_step_with_logprob(v, sig, sig_next, x, prev_sample=xp)
    for i in range(2):
        one = sde_step_with_logprob(v[i:i + 1], float(sig[i]), float(sig_next[i]), x[i:i + 1], prev_sample=xp[i:i + 1])
        assert torch.allclose(both.mean[i], one.mean[0], atol=1e-6)
        assert torch.allclose(both.log_prob[i], one.log_prob[0], atol=1e-6)
        assert torch.allclose(both.std[i], one.std[0])


def test_noise_level_zero_is_the_euler_step():
    x, v = _rand(9), _rand(10)
    out = sde_step_with_logprob(v, 0.7, 0.5, x, noise_level=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out.prev_sample, euler_step(v, 0.7, 0.5, x), atol=1e-6)
    assert torch.equal(out.log_prob, torch.zeros(2)) and torch.equal(out.std, torch.zeros_like(out.std))


def test_last_step_is_deterministic_and_finite():
    x, v = _rand(11), _rand(12)
    out = sde_step_with_logprob(v, 0.05, 0.0, x, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.prev_sample).all() and torch.isfinite(out.log_prob).all()
    assert torch.equal(out.prev_sample, euler_step(v, 0.05, 0.0, x))
    assert torch.equal(out.log_prob, torch.zeros(2))


def test_gradient_flows_through_mean_and_is_finite():
    x, xp = _rand(13), _rand(14)
    v = _rand(15).requires_grad_(True)
    out = sde_step_with_logprob(v, 1.0, 0.9, x, prev_sample=xp)
    out.log_prob.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_gradient_finite_with_a_last_step_row():
    x, xp = _rand(20), _rand(21)
    v = _rand(22).requires_grad_(True)
    out = sde_step_with_logprob(v, torch.tensor([1.0, 0.3]), torch.tensor([0.9, 0.0]), x, prev_sample=xp)
    (out.log_prob.sum() + out.mean.sum()).backward()
    assert torch.isfinite(v.grad).all() and out.log_prob[1] == 0


def test_per_row_generators_do_not_depend_on_batch():
    x, v = _rand(23), _rand(24)
    gens = lambda: [torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)]
    both = sde_step_with_logprob(v, 0.6, 0.4, x, generator=gens())
    alone = sde_step_with_logprob(v[1:], 0.6, 0.4, x[1:], generator=[torch.Generator().manual_seed(11)])
    assert torch.equal(both.prev_sample[1], alone.prev_sample[0])


def _toy_velocity(x, s):  # a smooth field depending on x and sigma; s is (B,)
    return 0.5 * x + s.view(-1, *([1] * (x.ndim - 1)))


def test_sde_sample_reproducible_with_shapes():
    sig, noise = sigma_schedule(6), _rand(16)
    runs = [sample(_toy_velocity, noise, sig, mode="sde", generator=torch.Generator().manual_seed(3),
                   return_trajectory=True) for _ in range(2)]
    a, b = runs
    assert torch.equal(a.latents, b.latents) and torch.equal(a.log_probs, b.log_probs)
    assert a.sde_steps == [0, 1, 2, 3, 4]  # the last step (-> sigma 0) is deterministic
    assert a.log_probs.shape == (2, 5) and torch.isfinite(a.log_probs).all()
    assert len(a.trajectory) == 7 and torch.equal(a.trajectory[0], noise) and torch.equal(a.trajectory[-1], a.latents)
    assert a.timesteps.shape == (6,) and torch.allclose(a.timesteps, sig[:-1] * 1000)
    other = sample(_toy_velocity, noise, sig, mode="sde", generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other.latents, a.latents)
    # the stored trajectory re-evaluates to the same log-probs (what the GRPO trainer does)
    for k, i in enumerate(a.sde_steps):
        x = a.trajectory[i]
        re = sde_step_with_logprob(_toy_velocity(x, sig[i].expand(2)), sig[i], sig[i + 1], x, prev_sample=a.trajectory[i + 1])
        assert torch.allclose(re.log_prob, a.log_probs[:, k], atol=1e-6)


def test_sde_window_limits_stochastic_steps():
    sig, noise = sigma_schedule(6), _rand(17)
    ode = sample(_toy_velocity, noise, sig, return_trajectory=True)
    win = sample(_toy_velocity, noise, sig, mode="sde", sde_window=(2, 4),
                 generator=torch.Generator().manual_seed(0), return_trajectory=True)
    assert win.sde_steps == [2, 3] and win.log_probs.shape == (2, 2)
    for i in range(3):  # identical to the ODE until the first SDE step has run
        assert torch.equal(win.trajectory[i], ode.trajectory[i])
    assert not torch.allclose(win.trajectory[3], ode.trajectory[3])
    with pytest.raises(InputError):
        sample(_toy_velocity, noise, sig, mode="sde", sde_window=(3, 9))
    with pytest.raises(InputError):
        sample(_toy_velocity, noise, sig, mode="ode", sde_window=(0, 2))


def test_callback_called_every_step():
    seen = []
    sample(_toy_velocity, _rand(18), sigma_schedule(4), callback=lambda i, n: seen.append((i, n)))
    assert seen == [(0, 4), (1, 4), (2, 4), (3, 4)]


class _Recorder:
    """model_fn stub: cond rows return x + 1, uncond rows return x - 1 (+ sigma), records calls."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, sigma, branches):
        self.calls.append((tuple(x.shape), tuple(sigma.shape), branches))
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        if branches == "cond":
            return x + 1 + s
        b = x.shape[0] // 2
        return torch.cat([x[:b] + 1, x[b:] - 1]) + s


def test_guided_velocity_batches_both_branches_in_one_call():
    x, model = _rand(19), _Recorder()
    v = guided_velocity(model, x, 0.5, 2.5)
    assert model.calls == [((4, 3, 2, 4, 4), (4,), "cond+uncond")]
    assert torch.allclose(v, cfg_combine(x + 1.5, x - 0.5, 2.5)) and torch.allclose(v, x + 4.5)
    model = _Recorder()
    v1 = guided_velocity(model, x, torch.tensor([0.5, 0.25]), 1.0)
    assert model.calls == [((2, 3, 2, 4, 4), (2,), "cond")]
    assert torch.allclose(v1[0], x[0] + 1.5) and torch.allclose(v1[1], x[1] + 1.25)


def test_cfg_combine_formula():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg_combine(c, u, 1.0).item() == 2.0 and cfg_combine(c, u, 0.0).item() == 1.0
    assert cfg_combine(c, u, 3.0).item() == 4.0
