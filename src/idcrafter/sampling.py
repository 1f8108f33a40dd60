"""Rectified-flow sampling: one implementation for inference (ODE Euler + CFG) and RL (Flow-GRPO SDE).

Conventions (DESIGN.md section 4):

* ``x_sigma = (1 - sigma) * x0 + sigma * eps``; the model predicts the velocity ``v = eps - x0``.
* ``sigma`` runs from 1 (pure noise) to 0 (data); a schedule of ``N`` steps has ``N + 1`` sigmas,
  the terminal 0 included. Step ``i`` moves ``x`` from ``sigmas[i]`` to ``sigmas[i + 1]``.
* Functions here take and give **sigmas** (in [0, 1]). The timestep a Wan / diffusers
  transformer expects is ``sigma * num_train_timesteps`` (see :func:`sigma_to_timestep`); the
  pipeline does that conversion inside its model function.

Everything here is a pure function of its inputs (randomness only through an explicit
``generator``); nothing holds model state, so the pipeline (inference) and the GRPO trainer
(rollouts, then log-prob re-evaluation under the current policy) call the very same steps.
Autograd is left to the caller: wrap rollouts in ``torch.no_grad()``; training re-evaluates
single steps with :func:`sde_step_with_logprob` and ``prev_sample`` given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple, Protocol, Sequence, Union

import torch

from idcrafter.errors import InputError

SigmaLike = Union[float, torch.Tensor]
"""A python float (same sigma for the whole batch) or a per-sample tensor of shape (B,) (or 0-dim)."""

Branches = Literal["cond", "cond+uncond"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_TINY = 1e-12  # floor for denominators that are > 0 for every valid schedule


class ModelFn(Protocol):
    """What :func:`guided_velocity` calls: the transformer with its conditioning already bound.

    ``model_fn(x, sigma, branches) -> v`` where

    * ``branches == "cond"``: ``x`` is (B, ...) and ``sigma`` is (B,); every row is evaluated with
      the conditional context (text + subjects). Returns (B, ...).
    * ``branches == "cond+uncond"``: ``x`` is (2B, ...) = cat([x, x]) and ``sigma`` is (2B,);
      rows ``[:B]`` must be evaluated with the conditional context and rows ``[B:]`` with the
      unconditional (negative / empty) context. Returns (2B, ...) in the same order.

    ``sigma`` is in sigma units (float32, on ``x``'s device); the implementation converts it to the
    model's timestep (``sigma * 1000``) itself.
    """

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, branches: Branches) -> torch.Tensor: ...


VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``velocity_fn(x, sigma) -> v``: the (already guided) velocity; ``sigma`` is a (B,) float32 tensor."""


# --------------------------------------------------------------------------------------------
# Schedule
# --------------------------------------------------------------------------------------------


def flow_shift(sigma: SigmaLike, shift: float) -> SigmaLike:
    """Wan / SD3 time shift ``sigma' = shift * s / (1 + (shift - 1) * s)`` (identity for shift=1).

    Maps 0 -> 0 and 1 -> 1; shift > 1 spends more of the schedule at high noise.
    Works on python floats and tensors alike.
    """
    return shift * sigma / (1 + (shift - 1) * sigma)


def sigma_schedule(num_steps: int, shift: float = 3.0, num_train_timesteps: int = 1000) -> torch.Tensor:
    """(num_steps + 1,) float32 sigmas from 1 down to 0 (terminal 0 included).

    Reproduces ``FlowMatchEulerDiscreteScheduler(shift=shift).set_timesteps(num_steps).sigmas``
    of diffusers 0.42 exactly (to float32 rounding), including its quirk: the unshifted grid is
    ``linspace(1, flow_shift(1 / T, shift), num_steps)`` -- its lower end is the *already shifted*
    smallest training sigma -- and that grid is then shifted again. So the last non-zero sigma is
    ``flow_shift(flow_shift(1/T))`` (0.0089 for shift 3), not ``1/T``. Computed in float64, then
    cast, like diffusers (which uses numpy float64).
    """
    if num_steps < 1:
        raise InputError(f"num_steps must be >= 1, got {num_steps}")
    if shift <= 0:
        raise InputError(f"shift must be > 0, got {shift}")
    sigma_min = flow_shift(1.0 / num_train_timesteps, shift)  # diffusers' scheduler.sigma_min
    grid = torch.linspace(1.0, sigma_min, num_steps, dtype=torch.float64)  # (N,)
    sigmas = flow_shift(grid, shift).to(torch.float32)
    return torch.cat([sigmas, sigmas.new_zeros(1)])  # (N + 1,)


def sigma_to_timestep(sigma: SigmaLike, num_train_timesteps: int = 1000) -> SigmaLike:
    """The timestep a Wan / diffusers flow transformer expects: ``sigma * num_train_timesteps``."""
    return sigma * num_train_timesteps


# --------------------------------------------------------------------------------------------
# Single steps
# --------------------------------------------------------------------------------------------


def _sigma_view(sigma: SigmaLike, sample: torch.Tensor) -> torch.Tensor:
    """float32 (B, 1, ..., 1) view of a float / 0-dim / (B,) sigma, broadcastable over ``sample``."""
    b = sample.shape[0]
    s = torch.as_tensor(sigma, dtype=torch.float32, device=sample.device)
    if s.ndim == 0:
        s = s.expand(b)
    if s.shape != (b,):
        raise InputError(f"sigma must be a float or a tensor of shape ({b},), got shape {tuple(s.shape)}")
    return s.view(b, *([1] * (sample.ndim - 1)))


def euler_step(velocity: torch.Tensor, sigma: SigmaLike, sigma_next: SigmaLike, sample: torch.Tensor) -> torch.Tensor:
    """One ODE Euler step ``x' = x + (sigma_next - sigma) * v``.

    Computed in float32 and returned in ``sample``'s dtype. ``sigma`` / ``sigma_next`` may be floats
    or per-sample (B,) tensors (diffusers' scheduler only knows one global step index).
    """
    s, s_next = _sigma_view(sigma, sample), _sigma_view(sigma_next, sample)  # (B, 1, ..., 1)
    out = sample.float() + (s_next - s) * velocity.float()  # (B, C, F, H, W)
    return out.to(sample.dtype)


class SDEStep(NamedTuple):
    """Result of :func:`sde_step_with_logprob`.

    prev_sample: (B, ...) x at sigma_next, in the input sample's dtype.
    log_prob:    (B,) float32 Gaussian log-density of prev_sample, averaged over non-batch dims.
    mean:        (B, ...) float32 mean of the step's Gaussian.
    std:         (B, 1, ..., 1) float32 scale of the step's Gaussian, ``std_dev_t * sqrt(-dt)``
                 (0 where the step is deterministic).
    """

    prev_sample: torch.Tensor
    log_prob: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def _randn_like(sample: torch.Tensor, generator: torch.Generator | Sequence[torch.Generator] | None) -> torch.Tensor:
    """float32 standard normal noise shaped like ``sample`` on its device; one generator per row if a list."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != sample.shape[0]:
            raise InputError(f"got {len(generator)} generators for a batch of {sample.shape[0]}")
        rows = [torch.randn(sample.shape[1:], generator=g, device=sample.device, dtype=torch.float32) for g in generator]
        return torch.stack(rows)
    return torch.randn(sample.shape, generator=generator, device=sample.device, dtype=torch.float32)


def _gaussian_step(x: torch.Tensor, v: torch.Tensor, s: torch.Tensor, s_next: torch.Tensor, mean: torch.Tensor,
                   std: torch.Tensor,
                   sample: torch.Tensor, prev_sample: torch.Tensor | None,
                   generator: torch.Generator | Sequence[torch.Generator] | None) -> SDEStep:
    """The shared tail of both stochastic steps: rows with sigma_next = 0 or std = 0 take the Euler
    step with log-prob 0; the others draw (or take) x' ~ N(mean, std^2) and score it with the exact
    Gaussian log-density averaged over non-batch dims. x, v, mean fp32 (B, C, F, H, W); s, s_next,
    std (B, 1, ..., 1)."""
    stochastic = (s_next > 0) & (std > 0)  # (B, 1, ..., 1)
    mean = torch.where(stochastic, mean, x + (s_next - s) * v)  # deterministic rows: Euler
    std = torch.where(stochastic, std, torch.zeros_like(std))
    if prev_sample is None:
        prev_sample = (mean + std * _randn_like(sample, generator)).to(sample.dtype)
    safe_std = torch.where(stochastic, std, torch.ones_like(std))
    z = (prev_sample.detach().float() - mean) / safe_std
    log_prob = -0.5 * z**2 - torch.log(safe_std) - _LOG_SQRT_2PI  # (B, C, F, H, W)
    log_prob = torch.where(stochastic, log_prob, torch.zeros_like(log_prob))
    log_prob = log_prob.mean(dim=tuple(range(1, log_prob.ndim)))  # (B,)
    return SDEStep(prev_sample, log_prob, mean, std)


def sde_step_with_logprob(
    velocity: torch.Tensor,
    sigma: SigmaLike,
    sigma_next: SigmaLike,
    sample: torch.Tensor,
    noise_level: float = 0.7,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> SDEStep:
    """One Flow-GRPO SDE step from ``sigma`` to ``sigma_next`` and the log-prob of its result.

    With ``s = sigma``, ``s' = sigma_next``, ``dt = s' - s < 0``, ``a = noise_level`` (all fp32)::

        std_dev_t = a * sqrt(s / (1 - s))            # s == 1: denominator uses s' -> a * sqrt(1 / (1 - s'))
        mean      = x * (1 + std_dev_t^2 * dt / (2 s)) + v * (1 + std_dev_t^2 * (1 - s) / (2 s)) * dt
        std       = std_dev_t * sqrt(-dt)
        x'        = mean + std * eps,   eps ~ N(0, I) from ``generator``   (unless ``prev_sample`` given)
        log_prob  = mean over non-batch dims of log N(x'; mean, std^2)

    Departures from flow_grpo's ``sd3_sde_with_logprob.sde_step_with_logprob``:

    * takes the sigmas directly (floats or per-sample (B,) tensors) instead of looking timesteps up
      in a scheduler, so a trainer can evaluate a batch whose rows sit at different steps; the
      s == 1 special case uses each row's own ``sigma_next`` (flow_grpo uses the global
      ``scheduler.sigmas[1]``, which is the same number on a standard schedule);
    * deterministic rows: where ``sigma_next == 0`` (the last step) or ``std == 0`` (e.g.
      ``noise_level == 0``), the row takes the plain Euler step (``mean`` is the Euler update,
      ``std = 0``) and its ``log_prob`` is 0. flow_grpo instead injects noise on the last step
      (std = a * s there, left in the final latents) and would give a singular density for a = 0;
      the last step is never trained (DESIGN.md: "Last step not trained"), so it stays clean here;
    * a sampled ``prev_sample`` is cast to ``sample``'s dtype *before* its log-prob is taken, so a
      stored bf16 trajectory re-evaluated later gives the same log-prob (old/new ratio exactly 1);
    * ``prev_sample`` is detached inside the log-prob (as in flow_grpo): gradients reach the policy
      through ``mean`` only.
    """
    x, v = sample.float(), velocity.float()  # (B, C, F, H, W)
    s, s_next = _sigma_view(sigma, sample), _sigma_view(sigma_next, sample)  # (B, 1, ..., 1)
    dt = s_next - s
    # Denominator 1 - s is 0 at s == 1: use the next sigma there (never divides by zero).
    denom = (1 - torch.where(s >= 1, s_next, s)).clamp_min(_TINY)
    std_dev_t = noise_level * torch.sqrt(s / denom)
    two_s = (2 * s).clamp_min(_TINY)
    mean = x * (1 + std_dev_t**2 * dt / two_s) + v * (1 + std_dev_t**2 * (1 - s) / two_s) * dt
    std = std_dev_t * torch.sqrt((-dt).clamp_min(0))  # (B, 1, ..., 1)

    return _gaussian_step(x, v, s, s_next, mean, std, sample, prev_sample, generator)


def cps_step_with_logprob(
    velocity: torch.Tensor,
    sigma: SigmaLike,
    sigma_next: SigmaLike,
    sample: torch.Tensor,
    noise_level: float = 0.8,
    prev_sample: torch.Tensor | None = None,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
) -> SDEStep:
    """One coefficients-preserving sampling (CPS) step and the log-prob of its result.

    With ``s = sigma``, ``s' = sigma_next``, ``eta = noise_level`` (all fp32)::

        x0_hat = x - s v,   x1_hat = x + (1 - s) v          # predicted data and noise
        std    = s' sin(eta pi / 2)
        mean   = (1 - s') x0_hat + sqrt(s'^2 - std^2) x1_hat
        x'     = mean + std * eps

    so x' keeps the coefficients of the forward process: (1 - s') x0 + s' * (unit-variance noise).
    ``eta = 0`` (or ``s' = 0``) is exactly the Euler step, with log-prob 0.

    Departure from flow_grpo (``sde_type="cps"``): flow_grpo codes the log-prob as
    ``-(x' - mean)^2`` averaged over elements, with neither the ``1 / (2 std^2)`` scale nor the
    normalising terms; here it is the exact Gaussian log-density averaged over non-batch dims, as
    for :func:`sde_step_with_logprob`, so ratios, clip ranges and the KL mean the same thing for
    both samplers. The ratio of two such densities differs from flow_grpo's by that scale.
    Deterministic rows, dtype handling and detaching of ``prev_sample`` are as in
    :func:`sde_step_with_logprob`.
    """
    x, v = sample.float(), velocity.float()  # (B, C, F, H, W)
    s, s_next = _sigma_view(sigma, sample), _sigma_view(sigma_next, sample)  # (B, 1, ..., 1)
    x0_hat = x - s * v
    x1_hat = x + (1 - s) * v
    std = s_next * math.sin(noise_level * math.pi / 2)
    mean = (1 - s_next) * x0_hat + torch.sqrt((s_next**2 - std**2).clamp_min(0)) * x1_hat
    return _gaussian_step(x, v, s, s_next, mean, std, sample, prev_sample, generator)


SDEType = Literal["flow", "cps"]
DEFAULT_NOISE_LEVEL = {"flow": 0.7, "cps": 0.8}


def stochastic_step(sde_type: SDEType) -> Callable[..., SDEStep]:
    """The step function of a stochastic sampler: "flow" = :func:`sde_step_with_logprob`
    (Flow-GRPO's SDE), "cps" = :func:`cps_step_with_logprob`. Rollouts and the trainer's
    log-prob re-evaluation both get their step from here."""
    steps = {"flow": sde_step_with_logprob, "cps": cps_step_with_logprob}
    if sde_type not in steps:
        raise InputError(f"sde_type must be 'flow' or 'cps', got {sde_type!r}")
    return steps[sde_type]


def step_std(sde_type: SDEType, sigma: float, sigma_next: float, noise_level: float | None = None) -> float:
    """The noise std of a stochastic step from ``sigma`` to ``sigma_next`` (0 for a step ending at
    sigma 0, which is Euler): the ``std`` of :func:`sde_step_with_logprob` ("flow") or
    :func:`cps_step_with_logprob` ("cps"), without a velocity. CPS's std is ``s' sin(eta pi/2)``,
    so its step into the schedule's smallest sigma (0.0089 at shift 3) is nearly deterministic."""
    level = DEFAULT_NOISE_LEVEL[sde_type] if noise_level is None else noise_level
    stochastic_step(sde_type)  # an unknown type is refused
    if sigma_next <= 0:
        return 0.0
    if sde_type == "cps":
        return sigma_next * math.sin(level * math.pi / 2)
    denom = max(1 - (sigma_next if sigma >= 1 else sigma), _TINY)
    return level * math.sqrt(sigma / denom) * math.sqrt(max(sigma - sigma_next, 0.0))


def sampler_kwargs(sampler: str, noise_level: float | None,
                   generator: torch.Generator | Sequence[torch.Generator] | None) -> dict:
    """`sample`'s keywords for a sampler name: "ode", "flow" or "cps"."""
    if sampler == "ode":
        if noise_level is not None:
            raise InputError("noise_level applies to a stochastic sampler (flow or cps), not to ode")
        return {}
    if sampler not in ("flow", "cps"):
        raise InputError(f"sampler must be ode, flow or cps, got {sampler!r}")
    if noise_level is not None and not (math.isfinite(noise_level) and 0 <= noise_level <= 1):
        raise InputError(f"noise_level must be in [0, 1], got {noise_level}")
    return {"mode": "sde", "sde_type": sampler, "noise_level": noise_level, "generator": generator}


# --------------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------------


def cfg_combine(v_cond: torch.Tensor, v_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance ``v_uncond + scale * (v_cond - v_uncond)`` (scale 1 -> v_cond)."""
    return v_uncond + scale * (v_cond - v_uncond)


def guided_velocity(model_fn: ModelFn, x: torch.Tensor, sigma: SigmaLike, scale: float) -> torch.Tensor:
    """CFG velocity at ``(x, sigma)`` with exactly one call of ``model_fn`` (protocol: :class:`ModelFn`).

    ``scale != 1``: one batched call on ``cat([x, x])`` (2B rows, ``branches="cond+uncond"``), split
    as [cond; uncond] and combined with :func:`cfg_combine`.
    ``scale == 1``: the unconditional branch cannot change the result, so one call on ``x`` alone
    with ``branches="cond"`` -- half the compute.
    """
    b = x.shape[0]
    s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    s = s.expand(b) if s.ndim == 0 else s  # (B,)
    if scale == 1.0:
        return model_fn(x, s, "cond")  # (B, C, F, H, W)
    v = model_fn(torch.cat([x, x]), torch.cat([s, s]), "cond+uncond")  # (2B, C, F, H, W)
    if v.shape[0] != 2 * b:
        raise InputError(f"model_fn returned {v.shape[0]} rows for a cond+uncond batch of {2 * b}")
    v_cond, v_uncond = v.chunk(2)
    return cfg_combine(v_cond, v_uncond, scale)


# --------------------------------------------------------------------------------------------
# Full sampler
# --------------------------------------------------------------------------------------------


@dataclass
class SampleOutput:
    """What :func:`sample` returns.

    latents:    (B, ...) final x at sigma_N = 0, in the input latents' dtype.
    trajectory: x at sigma_0 .. sigma_N (N + 1 tensors, first = the input latents) if asked, else [].
    log_probs:  (B, num_sde_steps) float32 log-probs of the stochastic steps, in ``sde_steps`` order.
    sde_steps:  indices i of the stochastic steps (step i goes sigmas[i] -> sigmas[i + 1]).
    timesteps:  (N,) model timesteps of the steps, ``sigmas[:-1] * 1000``.
    sigmas:     (N + 1,) the schedule that was used.
    """

    latents: torch.Tensor
    trajectory: list[torch.Tensor] = field(default_factory=list)
    log_probs: torch.Tensor | None = None
    sde_steps: list[int] = field(default_factory=list)
    timesteps: torch.Tensor | None = None
    sigmas: torch.Tensor | None = None


def _sde_steps(sigmas: torch.Tensor, mode: str, sde_window: tuple[int, int] | None) -> list[int]:
    """Indices of the stochastic steps: ``[start, end)`` of ``sde_window`` (default: all), never a
    step ending at sigma = 0 (deterministic by design, see :func:`sde_step_with_logprob`)."""
    n = sigmas.numel() - 1
    if mode == "ode":
        if sde_window is not None:
            raise InputError("sde_window only applies to mode='sde'")
        return []
    if mode != "sde":
        raise InputError(f"mode must be 'ode' or 'sde', got {mode!r}")
    start, end = (0, n) if sde_window is None else sde_window
    if not 0 <= start <= end <= n:
        raise InputError(f"sde_window must satisfy 0 <= start <= end <= {n}, got {sde_window}")
    return [i for i in range(start, end) if float(sigmas[i + 1]) > 0]


def _check_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """Validate a (N + 1,) strictly decreasing schedule in [0, 1]; return it as float32 on CPU."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32).detach().cpu()
    if sigmas.ndim != 1 or sigmas.numel() < 2:
        raise InputError(f"sigmas must be a 1-D schedule of N + 1 >= 2 values, got shape {tuple(sigmas.shape)}")
    if not bool((sigmas[1:] < sigmas[:-1]).all()) or sigmas.max() > 1 or sigmas.min() < 0:
        raise InputError("sigmas must decrease strictly and lie in [0, 1] (use sigma_schedule())")
    return sigmas


def sample(
    velocity_fn: VelocityFn,
    latents: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    mode: Literal["ode", "sde"] = "ode",
    noise_level: float | None = None,
    sde_window: tuple[int, int] | None = None,
    sde_type: SDEType = "flow",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    return_trajectory: bool = False,
    callback: Callable[[int, int], None] | None = None,
) -> SampleOutput:
    """Integrate from ``latents`` at ``sigmas[0]`` down to ``sigmas[-1]``.

    ``mode="ode"``: Euler on every step (inference). ``mode="sde"``: stochastic steps with
    log-probs (``sde_type``: "flow" = Flow-GRPO's SDE, "cps" = coefficients-preserving sampling;
    ``noise_level`` defaults to 0.7 / 0.8 respectively) on the steps of ``sde_window``
    (``(start, end)``, half-open step range; default all),
    Euler elsewhere (flow_grpo's "window" / Flow-GRPO-Fast option); a step ending at sigma 0 is
    always Euler. ``velocity_fn(x, sigma)`` gets ``sigma`` as a (B,) float32 tensor and must return
    the guided velocity (bind :func:`guided_velocity` to the model). ``callback(i, N)`` is called
    after step i. Noise is drawn from ``generator`` only on stochastic steps, in step order.
    """
    sigmas = _check_sigmas(sigmas)
    n, b = sigmas.numel() - 1, latents.shape[0]
    sde_steps = _sde_steps(sigmas, mode, sde_window)
    stochastic = set(sde_steps)
    step_fn = stochastic_step(sde_type)
    level = DEFAULT_NOISE_LEVEL[sde_type] if noise_level is None else noise_level
    x = latents  # (B, C, F, H, W)
    trajectory = [x] if return_trajectory else []
    log_probs: list[torch.Tensor] = []
    for i in range(n):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = velocity_fn(x, torch.full((b,), s, dtype=torch.float32, device=x.device))
        if i in stochastic:
            step = step_fn(v, s, s_next, x, noise_level=level, generator=generator)
            x = step.prev_sample
            log_probs.append(step.log_prob)  # (B,)
        else:
            x = euler_step(v, s, s_next, x)
        if return_trajectory:
            trajectory.append(x)
        if callback is not None:
            callback(i, n)
    lp = torch.stack(log_probs, dim=1) if log_probs else latents.new_zeros((b, 0), dtype=torch.float32)
    return SampleOutput(
        latents=x,
        trajectory=trajectory,
        log_probs=lp,  # (B, num_sde_steps)
        sde_steps=sde_steps,
        timesteps=sigma_to_timestep(sigmas[:-1]),
        sigmas=sigmas,
    )
