"""Rollouts of an RL iteration: conditions, sampling through the one sampler, rewards, advantages.

One `Rollout` is one batch of rows sampled together on this process; it is also the training
micro-batch (the same rows in the same order), because a row's velocity is bitwise the same
only when it is computed in the same batch (measured: the DiT's kernels give last-bit
differences between batch sizes), and the first update must reproduce the rollout's log-probs
exactly (ratio 1, KL 0).

Sampling is `IDCrafterPipeline.encode_conditions` + `IDCrafterPipeline.denoise` (the same calls
inference makes), `mode="sde"` with log-probs in fp32 on the window's steps (or `mode="ode"` for
NFT). Initial noise of sample s comes from its own generator (or its group's, with
`shared_noise`), SDE noise from another, both seeded by (seed, iteration, s) (`schedule.seed_for`).

Rewards are gathered from every process (`all_gather_object`: small) before advantages, so each
group's statistics see all of its members wherever they were sampled; every process computes the
same advantages and keeps its own rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from idcrafter.rl import advantages as adv_math
from idcrafter.rl import schedule

if TYPE_CHECKING:
    from idcrafter.conditioning import ConditionInputs
    from idcrafter.rl.config import RLConfig


@dataclass
class Rollout:
    """Rows sampled together (module docstring). Shapes: b rows; latents (b, C, F, h, w)."""

    samples: torch.Tensor  # (b,) int64 sample index within the iteration
    groups: torch.Tensor  # (b,) int64 group index within the iteration
    prompts: list[str]
    references: list[list[np.ndarray]]
    cond: "ConditionInputs"
    uncond: "ConditionInputs | None"
    sigmas: torch.Tensor  # (N + 1,)
    sde_steps: list[int]
    window: tuple[int, int]  # the stochastic steps' range [start, end)
    states: torch.Tensor | None  # (b, end - start + 1, C, F, h, w): x at sigmas[start .. end]
    log_probs: torch.Tensor  # (b, len(sde_steps)) float32
    latents: torch.Tensor  # (b, C, F, h, w) the clean samples
    videos: np.ndarray  # (b, T, H, W, 3) uint8
    components: dict[str, torch.Tensor] = field(default_factory=dict)  # (b,) each
    valid: torch.Tensor | None = None  # (b,) bool: every weighted component finite and valid
    reward: torch.Tensor | None = None  # (b,) the weighted reward
    advantages: torch.Tensor | None = None  # (b,)
    keep: torch.Tensor | None = None  # (b,) bool: trained (valid, group not all-zero)

    def __len__(self) -> int:
        return len(self.samples)

    def state_at(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x at sigmas[step], x at sigmas[step + 1]) of a step inside the window."""
        k = step - self.window[0]
        return self.states[:, k], self.states[:, k + 1]

    def log_prob_at(self, step: int) -> torch.Tensor:
        return self.log_probs[:, self.sde_steps.index(step)]


class RolloutRunner:
    """Draws an iteration's rollouts on this process (module docstring)."""

    def __init__(self, cfg: "RLConfig", pipe, source, world_size: int, rank: int, autocast):
        self.cfg, self.pipe, self.source = cfg, pipe, source
        self.world_size, self.rank, self.autocast = world_size, rank, autocast
        rc = cfg.rollout
        self.size = pipe.check_size(rc.height, rc.width, rc.frames)  # (h, w, f)

    def window(self, iteration: int) -> tuple[int, int]:
        rc = self.cfg.rollout
        return schedule.sde_window(iteration, rc.steps, rc.window_size, rc.window_start, rc.window_slide_every,
                                   rc.window_stride)

    def conditions(self, iteration: int) -> list[tuple[str, list[np.ndarray]]]:
        """(caption, references) of each of the iteration's groups: data positions i * groups + g."""
        g = self.cfg.rollout.groups
        out = []
        for p in range(iteration * g, (iteration + 1) * g):
            s = self.source.get(p)
            out.append((s.caption, list(s.refs)))
        return out

    @torch.no_grad()
    def run(self, iteration: int, mode: str = "sde") -> list[Rollout]:
        """This process's rollouts of the iteration, in batches of `rollout.batch_size` rows."""
        rc, seed = self.cfg.rollout, self.cfg.train.seed
        conds = self.conditions(iteration)
        mine = schedule.local_samples(rc.groups, rc.group_size, self.world_size, self.rank)
        window = self.window(iteration)
        out = []
        for start in range(0, len(mine), rc.batch_size):
            rows = mine[start: start + rc.batch_size]
            out.append(self._batch(iteration, rows, conds, window, mode, seed))
        return out

    def _batch(self, iteration: int, rows: list[tuple[int, int, int]], conds, window, mode: str, seed: int) -> Rollout:
        rc, pipe = self.cfg.rollout, self.pipe
        h, w, f = self.size
        prompts = [conds[g][0] for _, g, _ in rows]
        refs = [conds[g][1] for _, g, _ in rows]
        shape = pipe.codec.latent_shape(f, h, w)
        noise = [torch.randn(shape, generator=schedule.generator(seed, iteration, "shared_noise", g) if rc.shared_noise
                             else schedule.generator(seed, iteration, "noise", s)) for s, g, _ in rows]
        latents = torch.stack(noise).to(pipe._execution_device)
        sde_gens = [schedule.generator(seed, iteration, "sde", s) for s, _, _ in rows]
        with self.autocast():
            c = pipe.encode_conditions(prompts, refs, rc.guidance, rc.negative_prompt, rc.guide_references)
            kwargs: dict[str, Any] = dict(mode="ode")
            if mode == "sde":
                kwargs = dict(mode="sde", sde_type=rc.sde_type, noise_level=rc.noise_level, sde_window=window,
                              generator=sde_gens, return_trajectory=True)
            res = pipe.denoise(c, latents, rc.steps, rc.guidance, **kwargs)
            video = pipe.codec.decode(res.latents).clamp(-1, 1).add(1).div(2)  # (b, 3, F, H, W) in [0, 1]
        from idcrafter.generation import to_uint8

        states = None
        if mode == "sde":
            states = torch.stack(res.trajectory[window[0]: window[1] + 1], dim=1).float()  # (b, S + 1, ...)
        return Rollout(
            samples=torch.tensor([s for s, _, _ in rows]), groups=torch.tensor([g for _, g, _ in rows]),
            prompts=prompts, references=[[np.asarray(r) for r in rr] for rr in refs],
            cond=c.cond, uncond=c.uncond, sigmas=res.sigmas, sde_steps=list(res.sde_steps), window=window,
            states=states, log_probs=res.log_probs, latents=res.latents.float(), videos=to_uint8(video))


def score(reward, rollouts: list[Rollout]) -> None:
    """Fill each rollout's `components` and component validity from the reward (NaN where a
    component is invalid or non-finite, so it is skipped downstream)."""
    from idcrafter.rewards.base import RewardBatch

    for r in rollouts:
        out = reward(RewardBatch(list(r.videos), r.references, list(r.prompts)))
        comps = {}
        for name, values in out.values.items():
            v = torch.as_tensor(values, dtype=torch.float32).clone()
            ok = torch.as_tensor(out.valid.get(name, torch.ones_like(v, dtype=torch.bool)), dtype=torch.bool)
            comps[name] = torch.where(ok & torch.isfinite(v), v, torch.full_like(v, float("nan")))
        r.components = comps


def gather(rollouts: list[Rollout], world_size: int) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(samples (S,), groups (S,), components {name: (S,)}) of every process, sorted by sample."""
    local = [(int(s), int(g), {k: float(v[i]) for k, v in r.components.items()})
             for r in rollouts for i, (s, g) in enumerate(zip(r.samples, r.groups))]
    rows = local
    if world_size > 1:
        import torch.distributed as dist

        parts: list[Any] = [None] * world_size
        dist.all_gather_object(parts, local)
        rows = [row for part in parts for row in part]
    rows.sort(key=lambda row: row[0])
    names = sorted({k for _, _, c in rows for k in c})
    comps = {k: torch.tensor([c.get(k, float("nan")) for _, _, c in rows], dtype=torch.float32) for k in names}
    return torch.tensor([s for s, _, _ in rows]), torch.tensor([g for _, g, _ in rows]), comps


def assign_advantages(rollouts: list[Rollout], cfg: "RLConfig", drop_zero_groups: bool,
                      world_size: int = 1) -> dict[str, float]:
    """Gather rewards, compute advantages over the whole iteration, keep this process's rows.
    Returns the iteration's reward metrics (same on every process)."""
    rc = cfg.reward
    samples, groups, comps = gather(rollouts, world_size)
    reward, adv = adv_math.combine_advantages(comps, rc.weights, groups, rc.aggregation, rc.std,
                                              clip=rc.adv_clip)
    valid = torch.isfinite(reward)
    keep = valid & (adv_math.nonzero_groups(adv, groups) if drop_zero_groups else torch.ones_like(valid))
    where = {int(s): i for i, s in enumerate(samples.tolist())}
    for r in rollouts:
        idx = torch.tensor([where[int(s)] for s in r.samples])
        r.reward, r.advantages, r.keep, r.valid = reward[idx], adv[idx], keep[idx], valid[idx]
    return reward_metrics(reward, comps, groups, valid, keep, rc.weights)


def reward_metrics(reward: torch.Tensor, comps: dict[str, torch.Tensor], groups: torch.Tensor, valid: torch.Tensor,
                   keep: torch.Tensor, weights: dict[str, float]) -> dict[str, float]:
    """reward (mean over valid samples), reward_std, every component's mean `reward/<name>`,
    `skipped/nonfinite_reward` (samples left out), `groups_dropped` (zero-advantage groups)."""
    def mean(x: torch.Tensor) -> float:
        x = x[torch.isfinite(x)]
        return float(x.mean()) if x.numel() else float("nan")

    out = {"reward": mean(reward), "reward_std": float(reward[valid].std(unbiased=False)) if valid.any() else float("nan"),
           "skipped/nonfinite_reward": int((~valid).sum())}
    for k, v in comps.items():
        out[f"reward/{k}"] = mean(v)
    g_all = torch.unique(groups)
    g_kept = torch.unique(groups[keep]) if keep.any() else g_all[:0]
    out["groups_dropped"] = int(len(g_all) - len(g_kept))
    out["reward_min"] = float(reward[valid].min()) if valid.any() else float("nan")
    out["reward_max"] = float(reward[valid].max()) if valid.any() else float("nan")
    if not math.isfinite(out["reward"]):
        out["reward"] = float("nan")
    return out
