"""RL losses as pure functions: Flow-GRPO (clipped ratio, KL, GRPO-Guard), DiffusionNFT,
Bradley-Terry with ties, Diffusion-DPO. Formulas: DESIGN.md section 4.

Shapes: B rows (samples at one denoising step), latents (B, C, F, H, W); per-row quantities (B,).

Flow-GRPO (flow_grpo's train scripts)::

    ratio = exp(lp - lp_old)
    loss  = mean_b max(-A_b ratio_b, -A_b clip(ratio_b, 1 - e, 1 + e))
    KL_b  = mean over non-batch dims of (mean_theta - mean_ref)^2 / (2 std_b^2)

GRPO-Guard (Wang et al. 2025, our reading of the paper; its code was not available here):

* ratio re-centring: each step's ratios are divided by their mean over the rows at that step
  (detached, so it rescales without adding a gradient path). The averaged-over-dims Gaussian
  log-prob makes the ratio distribution sit below 1 and differ in spread between steps, which
  lets positive-advantage rows escape the clip; re-centred, the clip bites symmetrically.
  On the first on-policy update every ratio is exactly 1 and stays 1.
* step reweighting: a step's policy loss is weighted by 1 / |dt| normalised to mean 1 over
  the trained steps (DESIGN.md: against over-optimisation of the steps with large updates).

DiffusionNFT (Zheng et al. 2025)::

    r   = 1/2 + 1/2 clip(A / a_max, -1, 1)       (A: the group-normalised advantage; Z = a_max * std)
    v+  = b v_theta + (1 - b) v_old,   v- = (1 + b) v_old - b v_theta
    L_b = r ||v+ - v||^2 + (1 - r) ||v- - v||^2  (mean over elements; v = eps - x0)

``form="x0"`` is the official code's variant: errors measured in x0 space, x0_hat - x0 = t (v_hat - v),
each branch divided by its own detached mean absolute error (a self-normalising weight, floored at
1e-5), and the sum divided by b. The official code also multiplies the loss by a_max; we do not
(the learning rate absorbs a constant).

Bradley-Terry with ties (Rao-Kupper, k = theta), d = r_a - r_b::

    a wins: -log s(d - ln k);  tie: -log s(d - ln k) - log s(-d - ln k) - ln(k^2 - 1)

Diffusion-DPO (Wallace et al. 2023, in velocity space), per pair with per-sample squared errors e::

    L = -log s(-beta / 2 * ((e_w - e_l) - (e_w^ref - e_l^ref)))

(the 1/2 and beta placement follow the published training script; the paper writes beta T w(lambda_t)).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

from idcrafter.errors import InputError

_TINY = 1e-12


def _row_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over every dim but the first: (B, ...) -> (B,)."""
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


# --------------------------------------------------------------------------------------------
# Flow-GRPO
# --------------------------------------------------------------------------------------------


class PolicyLoss(NamedTuple):
    """loss: scalar; per_row: (B,) the row losses before the mean; ratio: (B,) as used (after
    re-centring); clip_frac: scalar fraction of rows with |ratio - 1| > clip_range."""

    loss: torch.Tensor
    per_row: torch.Tensor
    ratio: torch.Tensor
    clip_frac: torch.Tensor


def importance_ratio(log_prob: torch.Tensor, old_log_prob: torch.Tensor, recenter: bool = False,
                     step_ids: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) exp(lp - lp_old) in float32; with ``recenter`` (GRPO-Guard), divided by the detached
    mean ratio of the rows that share its step (``step_ids`` (B,); None = all rows one step)."""
    ratio = torch.exp(log_prob.float() - old_log_prob.float())  # (B,)
    if not recenter:
        return ratio
    ids = torch.zeros_like(ratio, dtype=torch.long) if step_ids is None else step_ids.long()
    _, inverse = torch.unique(ids, return_inverse=True)
    m = int(inverse.max()) + 1
    r = ratio.detach()
    mean = torch.zeros(m, dtype=r.dtype, device=r.device).index_add_(0, inverse, r)
    mean = mean / torch.zeros(m, dtype=r.dtype, device=r.device).index_add_(0, inverse, torch.ones_like(r))
    return ratio / mean[inverse].clamp_min(_TINY)


def clipped_policy_loss(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float,
                        weight: torch.Tensor | None = None) -> PolicyLoss:
    """PPO's clipped surrogate on (B,) ratios and advantages; ``weight`` (B,) scales each row's
    loss (GRPO-Guard's step weights) before the mean."""
    if clip_range <= 0:
        raise InputError(f"clip_range must be > 0, got {clip_range}")
    adv = advantages.float()
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1 - clip_range, 1 + clip_range)
    per = torch.maximum(unclipped, clipped)  # (B,)
    if weight is not None:
        per = per * weight.float()
    frac = ((ratio.detach() - 1).abs() > clip_range).float().mean()
    return PolicyLoss(per.mean(), per, ratio, frac)


def kl_to_reference(mean: torch.Tensor, ref_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B,) KL between the step Gaussians of policy and reference (same std): mean over elements
    of (mean - ref_mean)^2 / (2 std^2). Rows with std 0 (deterministic steps) give 0."""
    s = std.float()
    safe = torch.where(s > 0, s, torch.ones_like(s))
    kl = (mean.float() - ref_mean.float()) ** 2 / (2 * safe**2)
    kl = torch.where(s > 0, kl, torch.zeros_like(kl))
    return _row_mean(kl)


def step_weights(dt: torch.Tensor) -> torch.Tensor:
    """GRPO-Guard's per-step weights (S,) from the trained steps' dt (S,) (< 0): 1/|dt| / mean(1/|dt|)."""
    inv = 1.0 / dt.double().abs().clamp_min(_TINY)
    return (inv / inv.mean()).float()


# --------------------------------------------------------------------------------------------
# DiffusionNFT
# --------------------------------------------------------------------------------------------


def nft_optimality(advantages: torch.Tensor, adv_clip: float = 5.0) -> torch.Tensor:
    """r = 1/2 + 1/2 clip(A / adv_clip, -1, 1) in [0, 1]: 1 = surely good, 0 = surely bad."""
    if adv_clip <= 0:
        raise InputError(f"adv_clip must be > 0, got {adv_clip}")
    return 0.5 + 0.5 * (advantages.float() / adv_clip).clamp(-1, 1)


def nft_loss(v_theta: torch.Tensor, v_old: torch.Tensor, target: torch.Tensor, r: torch.Tensor, beta: float,
             t: torch.Tensor | None = None, form: Literal["velocity", "x0"] = "velocity") -> tuple[torch.Tensor, torch.Tensor]:
    """(scalar loss, per-row (B,)) of DiffusionNFT (module docstring). ``v_old`` is detached here;
    ``t`` (B,) is needed for ``form="x0"``."""
    if not 0 < beta:
        raise InputError(f"NFT beta must be > 0, got {beta}")
    v_old = v_old.detach().float()
    v_theta, target = v_theta.float(), target.float()
    pos = beta * v_theta + (1 - beta) * v_old
    neg = (1 + beta) * v_old - beta * v_theta
    r = r.float()
    if form == "velocity":
        per = r * _row_mean((pos - target) ** 2) + (1 - r) * _row_mean((neg - target) ** 2)
    elif form == "x0":
        if t is None:
            raise InputError("NFT form 'x0' needs the timesteps t")
        tt = t.float().view(-1, *([1] * (target.ndim - 1)))
        err_pos, err_neg = tt * (pos - target), tt * (neg - target)  # x0_hat - x0 of each branch
        w_pos = _row_mean(err_pos.detach().abs()).clamp_min(1e-5)
        w_neg = _row_mean(err_neg.detach().abs()).clamp_min(1e-5)
        per = (r * _row_mean(err_pos**2) / w_pos + (1 - r) * _row_mean(err_neg**2) / w_neg) / beta
    else:
        raise InputError(f"NFT form must be 'velocity' or 'x0', got {form!r}")
    return per.mean(), per


# --------------------------------------------------------------------------------------------
# Reward model and offline preference losses
# --------------------------------------------------------------------------------------------


def btt_loss(r_a: torch.Tensor, r_b: torch.Tensor, label: torch.Tensor, k: float = 5.0) -> torch.Tensor:
    """(N,) Bradley-Terry-with-ties negative log-likelihoods; label (N,): 1 = a better,
    -1 = b better, 0 = tie (module docstring). Needs k > 1."""
    if k <= 1:
        raise InputError(f"the ties parameter k must be > 1, got {k}")
    d = r_a.float() - r_b.float()
    lk = math.log(k)
    label = label.to(d.device)
    win_a = -F.logsigmoid(d - lk)
    win_b = -F.logsigmoid(-d - lk)
    tie = -F.logsigmoid(d - lk) - F.logsigmoid(-d - lk) - math.log(k * k - 1)
    return torch.where(label > 0, win_a, torch.where(label < 0, win_b, tie))


def btt_probabilities(r_a: torch.Tensor, r_b: torch.Tensor, k: float = 5.0) -> torch.Tensor:
    """(N, 3) probabilities of (a wins, tie, b wins) under the same model; rows sum to 1."""
    d = r_a.float() - r_b.float()
    lk = math.log(k)
    p_a, p_b = torch.sigmoid(d - lk), torch.sigmoid(-d - lk)
    return torch.stack([p_a, 1 - p_a - p_b, p_b], dim=-1)


def diffusion_dpo_loss(err_w: torch.Tensor, err_l: torch.Tensor, ref_err_w: torch.Tensor, ref_err_l: torch.Tensor,
                       beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(scalar loss, implicit accuracy) of Diffusion-DPO from per-pair (N,) squared errors of the
    policy and the frozen reference on winner and loser (module docstring). Accuracy: the share of
    pairs where the policy improved the winner more than the loser relative to the reference."""
    inside = -0.5 * beta * ((err_w.float() - err_l.float()) - (ref_err_w.float() - ref_err_l.float()).detach())
    return -F.logsigmoid(inside).mean(), (inside > 0).float().mean()
