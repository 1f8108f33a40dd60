"""CPS (coefficients-preserving sampling) next to the Flow-GRPO SDE, and the SDE path end to end
through the real pipeline: rollout log-probs are reproduced exactly when steps are re-evaluated."""

import math

import pytest
import torch

from idcrafter import sampling
from idcrafter.encoders.text import TextEncoder
from idcrafter.errors import InputError
from idcrafter.models.codecs import PixelCodec
from idcrafter.pipeline import build_pipeline
from idcrafter.world.dataset import make_example


def test_cps_step_by_hand():
    x, v = torch.tensor([[1.0]]), torch.tensor([[0.5]])
    s, s2, eta = 0.6, 0.3, 0.8
    x0, x1 = 1 - s * 0.5, 1 + (1 - s) * 0.5
    std = s2 * math.sin(eta * math.pi / 2)
    mean = (1 - s2) * x0 + math.sqrt(s2**2 - std**2) * x1
    out = sampling.cps_step_with_logprob(v, s, s2, x, noise_level=eta, prev_sample=torch.tensor([[0.7]]))
    assert out.mean.item() == pytest.approx(mean, rel=1e-6) and out.std.item() == pytest.approx(std, rel=1e-6)
    want = -0.5 * ((0.7 - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi)
    assert out.log_prob.item() == pytest.approx(want, rel=1e-6)


def test_cps_preserves_the_forward_coefficients():
    """From x_s = (1 - s) x0 + s eps with the exact velocity, x' = (1 - s') x0 + s' n with n ~ N(0, I)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 20000, generator=g).expand(2, -1)
    eps = torch.randn(2, 20000, generator=g)
    s, s2 = 0.7, 0.4
    x = (1 - s) * x0 + s * eps
    out = sampling.cps_step_with_logprob(eps - x0, s, s2, x, noise_level=0.8, generator=g)
    n = (out.prev_sample - (1 - s2) * x0) / s2
    assert abs(n.mean().item()) < 0.02 and n.var().item() == pytest.approx(1.0, abs=0.03)
    # the Flow-GRPO SDE's result is not of that form: its noise part has another scale
    sde = sampling.sde_step_with_logprob(eps - x0, s, s2, x, noise_level=0.7, generator=g)
    assert ((sde.prev_sample - (1 - s2) * x0) / s2).var().item() != pytest.approx(1.0, abs=0.03)


def test_cps_deterministic_cases_are_euler():
    torch.manual_seed(0)
    x, v = torch.randn(2, 3, 2, 4, 4), torch.randn(2, 3, 2, 4, 4)
    euler = sampling.euler_step(v, 0.5, 0.2, x)
    zero_eta = sampling.cps_step_with_logprob(v, 0.5, 0.2, x, noise_level=0.0)
    assert torch.allclose(zero_eta.prev_sample, euler, atol=1e-6) and torch.equal(zero_eta.log_prob, torch.zeros(2))
    last = sampling.cps_step_with_logprob(v, 0.1, 0.0, x, noise_level=0.8)
    assert torch.allclose(last.prev_sample, x - 0.1 * v, atol=1e-6) and torch.isfinite(last.log_prob).all()
    # per-row sigmas: a last-step row beside a stochastic row
    mixed = sampling.cps_step_with_logprob(v, torch.tensor([0.5, 0.1]), torch.tensor([0.2, 0.0]), x,
                                           generator=torch.Generator().manual_seed(1))
    assert mixed.log_prob[1] == 0 and mixed.log_prob[0] != 0 and mixed.std[1].item() == 0


def test_cps_gradient_reaches_the_velocity_through_the_mean():
    v = torch.randn(2, 4, requires_grad=True)
    x = torch.randn(2, 4)
    first = sampling.cps_step_with_logprob(v.detach(), 0.8, 0.6, x, generator=torch.Generator().manual_seed(0))
    again = sampling.cps_step_with_logprob(v, 0.8, 0.6, x, prev_sample=first.prev_sample)
    assert torch.equal(again.log_prob, first.log_prob)
    again.log_prob.sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_stochastic_step_dispatch_and_defaults():
    assert sampling.stochastic_step("flow") is sampling.sde_step_with_logprob
    assert sampling.stochastic_step("cps") is sampling.cps_step_with_logprob
    with pytest.raises(InputError):
        sampling.stochastic_step("ddim")
    v = lambda x, s: torch.zeros_like(x)  # noqa: E731
    lat = torch.randn(2, 3, 1, 2, 2)
    sig = sampling.sigma_schedule(4)
    a = sampling.sample(v, lat, sig, mode="sde", sde_type="cps", generator=torch.Generator().manual_seed(0))
    b = sampling.sample(v, lat, sig, mode="sde", sde_type="cps", noise_level=0.8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.latents, b.latents) and a.log_probs.shape == (2, 3)  # the last step is Euler
    c = sampling.sample(v, lat, sig, mode="sde", sde_type="flow", generator=torch.Generator().manual_seed(0))
    assert not torch.equal(a.latents, c.latents)


# ------------------------------------------------------------------ end to end through the pipeline
@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    p = build_pipeline("debug", PixelCodec(3, 2), TextEncoder.tiny(32, max_length=64))
    p.set_progress_bar_config(disable=True)
    with torch.no_grad():
        for blk in p.transformer.blocks:
            blk.subject_branch.gate.normal_(0, 0.5)
    return p


@pytest.mark.parametrize("sde_type", ["flow", "cps"])
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_sde_rollout_through_the_pipeline_is_reproduced_step_by_step(pipe, sde_type, guidance):
    exs = [make_example(0, i, "heldout", num_subjects=k) for i, k in ((0, 2), (1, 1))]
    cond = pipe.encode_conditions([e.caption for e in exs], [list(e.refs) for e in exs], guidance)
    lat = torch.randn(2, 12, 3, 12, 12, generator=torch.Generator().manual_seed(3))
    gens = [torch.Generator().manual_seed(10 + i) for i in range(2)]
    out = pipe.denoise(cond, lat, 6, guidance, mode="sde", sde_type=sde_type, sde_window=(1, 5),
                       generator=gens, return_trajectory=True)
    assert out.sde_steps == [1, 2, 3, 4] and out.log_probs.shape == (2, 4) and torch.isfinite(out.log_probs).all()
    velocity = pipe.velocity_fn(cond, guidance)
    step = sampling.stochastic_step(sde_type)
    for j, i in enumerate(out.sde_steps):
        x = out.trajectory[i]
        v = velocity(x, torch.full((2,), float(out.sigmas[i])))
        again = step(v, float(out.sigmas[i]), float(out.sigmas[i + 1]), x, prev_sample=out.trajectory[i + 1])
        assert torch.equal(again.log_prob, out.log_probs[:, j])  # bitwise: ratio exactly 1 on-policy
    # the trainer's path: the same conditions through the model's forward, with gradients
    from idcrafter.conditioning import conditioned_velocity

    with torch.enable_grad():
        train_v = conditioned_velocity(pipe.transformer, cond.cond, cond.uncond, guidance)
        i = out.sde_steps[0]
        x = out.trajectory[i]
        v = train_v(x, torch.full((2,), float(out.sigmas[i])))
        again = step(v, float(out.sigmas[i]), float(out.sigmas[i + 1]), x, prev_sample=out.trajectory[i + 1])
        assert torch.equal(again.log_prob.detach(), out.log_probs[:, 0])
        again.log_prob.sum().backward()
    grads = {n: p.grad for n, p in pipe.transformer.named_parameters()}
    assert grads["subject_stream.intra.0.to_q.weight"].abs().sum() > 0  # through the subject stream
    assert grads["blocks.0.attn2.to_k.weight"].abs().sum() > 0  # through the text context projection
    pipe.transformer.zero_grad(set_to_none=True)
    # ODE steps outside the window are plain Euler
    v0 = velocity(out.trajectory[0], torch.full((2,), float(out.sigmas[0])))
    assert torch.equal(out.trajectory[1], sampling.euler_step(v0, float(out.sigmas[0]), float(out.sigmas[1]), out.trajectory[0]))
    video = pipe.codec.decode(out.latents)
    assert video.shape == (2, 3, 3, 24, 24) and torch.isfinite(video).all()
    # reproducible from the same generators; other noise gives another sample
    again = pipe.denoise(cond, lat, 6, guidance, mode="sde", sde_type=sde_type, sde_window=(1, 5),
                         generator=[torch.Generator().manual_seed(10 + i) for i in range(2)])
    assert torch.equal(again.latents, out.latents)
    other = pipe.denoise(cond, lat, 6, guidance, mode="sde", sde_type=sde_type, sde_window=(1, 5),
                         generator=[torch.Generator().manual_seed(20 + i) for i in range(2)])
    assert not torch.equal(other.latents, out.latents)
