"""Group-relative advantages (Flow-GRPO) as pure functions of rewards and group ids.

    A_i = clip((r_i - mean_{g(i)}) / (std + eps), -clip, clip)

`std` is the standard deviation of the sample's own group (`std="group"`, flow_grpo's
per-prompt stat tracker) or of every valid reward of the iteration (`std="global"`, flow_grpo's
`global_std`); both are population standard deviations (numpy's default, as flow_grpo uses),
means are always per group. Several reward components combine in one of two ways:

* ``mode="reward"`` (reward aggregation): r = sum_c w_c r_c, then the advantage of r;
* ``mode="advantage"`` (advantage aggregation): every component is z-scored in its group first,
  A = sum_c w_c A_c, then clipped -- a component with a large spread can no longer drown the others.

Departures from flow_grpo: samples can be marked invalid (a NaN/inf reward): they are left out of
every mean and std and get advantage 0, so one broken reward never poisons its group; groups
are given as integer ids, so they need not be contiguous or of equal size.
"""

from __future__ import annotations

from typing import Literal, Mapping

import torch

from idcrafter.errors import InputError

StdMode = Literal["group", "global"]
AggregationMode = Literal["reward", "advantage"]


def _check(rewards: torch.Tensor, groups: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    if rewards.ndim != 1 or groups.shape != rewards.shape:
        raise InputError(f"rewards and groups must both be (N,), got {tuple(rewards.shape)} and {tuple(groups.shape)}")
    finite = torch.isfinite(rewards)
    return finite if valid is None else finite & valid.to(torch.bool)


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, std: StdMode = "group", eps: float = 1e-4,
                     clip: float | None = 5.0, valid: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) float32 advantages of rewards (N,) within groups (N,) int (module docstring).

    Non-finite rewards and rows with ``valid`` False get 0 and are excluded from the statistics.
    ``clip=None`` leaves the advantages unclipped.
    """
    if std not in ("group", "global"):
        raise InputError(f"std must be 'group' or 'global', got {std!r}")
    ok = _check(rewards, groups, valid)
    r = torch.where(ok, rewards.double(), torch.zeros_like(rewards, dtype=torch.float64))  # (N,)
    _, inverse = torch.unique(groups, return_inverse=True)  # (N,) group index 0..M-1
    m = int(inverse.max()) + 1 if inverse.numel() else 0
    w = ok.double()
    count = torch.zeros(m, dtype=torch.float64).index_add_(0, inverse, w)  # (M,)
    total = torch.zeros(m, dtype=torch.float64).index_add_(0, inverse, r * w)
    mean = total / count.clamp_min(1)  # (M,)
    dev = (r - mean[inverse]) * w  # (N,) zero for invalid rows
    if std == "group":
        var = torch.zeros(m, dtype=torch.float64).index_add_(0, inverse, dev**2) / count.clamp_min(1)
        sd = var.sqrt()[inverse]  # (N,)
    else:
        n_ok = w.sum().clamp_min(1)
        global_mean = (r * w).sum() / n_ok
        sd = (((r - global_mean) * w) ** 2).sum().div(n_ok).sqrt().expand_as(r)
    adv = dev / (sd + eps)
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return torch.where(ok, adv, torch.zeros_like(adv)).float()


def weighted_reward(components: Mapping[str, torch.Tensor], weights: Mapping[str, float]) -> torch.Tensor:
    """sum_c w_c r_c (N,); every weighted component must be present (a typo is an error, not a 0)."""
    missing = [k for k in weights if k not in components]
    if missing:
        raise InputError(f"reward weights name components the reward does not produce: {missing}; "
                         f"it produces {sorted(components)}")
    if not weights:
        raise InputError("no reward weights given: set at least one component's weight")
    out = None
    for name, w in weights.items():
        term = float(w) * components[name].double()
        out = term if out is None else out + term
    return out.float()


def combine_advantages(components: Mapping[str, torch.Tensor], weights: Mapping[str, float], groups: torch.Tensor,
                       mode: AggregationMode = "reward", std: StdMode = "group", eps: float = 1e-4,
                       clip: float | None = 5.0, valid: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(reward (N,), advantages (N,)) from named components by reward or advantage aggregation.

    A row is valid only if every weighted component is finite there (and ``valid`` allows it);
    an invalid row's reward is returned as computed (possibly NaN, for logging), its advantage is 0
    and it takes no part in any group's statistics.
    """
    reward = weighted_reward(components, weights)
    ok = torch.isfinite(reward) if valid is None else torch.isfinite(reward) & valid.to(torch.bool)
    if mode == "reward":
        return reward, group_advantages(reward, groups, std, eps, clip, ok)
    if mode != "advantage":
        raise InputError(f"aggregation mode must be 'reward' or 'advantage', got {mode!r}")
    adv = torch.zeros_like(reward, dtype=torch.float64)
    for name, w in weights.items():
        adv = adv + float(w) * group_advantages(components[name], groups, std, eps, None, ok).double()
    if clip is not None:
        adv = adv.clamp(-clip, clip)
    return reward, torch.where(ok, adv, torch.zeros_like(adv)).float()


def nonzero_groups(advantages: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """(N,) bool: rows whose group has at least one non-zero advantage (the others teach nothing:
    every sample of the group scored the same, so flow_grpo drops them)."""
    _, inverse = torch.unique(groups, return_inverse=True)
    m = int(inverse.max()) + 1 if inverse.numel() else 0
    count = torch.zeros(m, dtype=torch.int64).index_add_(0, inverse, (advantages != 0).long())  # (M,)
    return count[inverse] > 0
