"""Diffusion-DPO, the offline baseline: `idcrafter train dpo --recipe NAME [key=value ...]`.

Static pairs, made once before training from the *starting* model (the SFT export): for each of
`dpo.pair_iterations` x `rollout.groups` conditions, `rollout.group_size` samples through the same
rollout code GRPO uses (ODE by default), scored by the same reward; the best and the worst
sample of the group become a (winner, loser) pair; groups whose best and worst score the same (or
are invalid) give none. With `dpo.pair_iterations` equal to a GRPO run's `train.steps`, both see
the same number of generated samples (the paper's same-data-budget comparison of online RL and
offline DPO).

One step: `dpo.batch_size` pairs drawn by a seeded generator, for each `dpo.timesteps` draws of
t ~ U[t_min, t_max] and eps (shared by winner and loser), x_t = (1 - t) x0 + t eps,

    e = mean ||v(x_t, t) - (eps - x0)||^2   for the policy and for the reference (no gradient)
    L = -log s(-beta / 2 * ((e_w - e_l) - (e_w^ref - e_l^ref)))     (`rl.losses.diffusion_dpo_loss`)

The reference is the starting model (the LoRA adapter disabled, or its saved weights), as in GRPO.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from idcrafter.conditioning import conditioned_velocity
from idcrafter.errors import InputError
from idcrafter.rl import losses as L
from idcrafter.rl import rollout as R
from idcrafter.rl import schedule
from idcrafter.rl.config import RLConfig
from idcrafter.rl.trainer import RLTrainer


@dataclass
class DPOConfig:
    beta: float = 500.0
    pair_iterations: int = 4
    batch_size: int = 4
    timesteps: int = 1
    t_min: float = 0.02
    t_max: float = 0.98

    def validate(self) -> None:
        if self.beta <= 0 or self.pair_iterations < 1 or self.batch_size < 1 or self.timesteps < 1:
            raise InputError("dpo.beta must be > 0; dpo.pair_iterations, batch_size and timesteps >= 1")
        if not 0 <= self.t_min < self.t_max <= 1:
            raise InputError("dpo.t_min and dpo.t_max must satisfy 0 <= t_min < t_max <= 1")


@dataclass
class DPORunConfig(RLConfig):
    dpo: DPOConfig = field(default_factory=DPOConfig)

    def validate(self) -> "DPORunConfig":
        super().validate()
        self.dpo.validate()
        return self


@dataclass
class PairSet:
    """The static pairs: winner / loser latents (P, C, F, h, w), their conditions (P rows),
    and the two rewards (P,)."""

    winners: torch.Tensor
    losers: torch.Tensor
    cond: Any
    reward_w: torch.Tensor
    reward_l: torch.Tensor


class DPOTrainer(RLTrainer):
    """Diffusion-DPO on static pairs (module docstring)."""

    run_tool: ClassVar[str] = "idcrafter train dpo"
    progress_name: ClassVar[str] = "dpo"

    def setup_policy(self) -> None:
        """Make the static pairs with the starting weights (before any checkpoint is loaded)."""
        import time

        t0 = time.perf_counter()
        w, lo, conds, rw, rl = [], [], [], [], []
        rollout_mode = "ode" if self.cfg.rollout.sde_type == "ode" else "sde"
        for it in range(self.cfg.dpo.pair_iterations):
            rollouts = self.runner.run(it, rollout_mode)
            R.score(self.reward, rollouts)
            R.assign_advantages(rollouts, self.cfg, False, self.world_size)
            for r in rollouts:
                for g in torch.unique(r.groups).tolist():
                    rows = [i for i in range(len(r)) if int(r.groups[i]) == g and bool(r.valid[i])]
                    if len(rows) < 2:
                        continue
                    best = max(rows, key=lambda i: float(r.reward[i]))
                    worst = min(rows, key=lambda i: float(r.reward[i]))
                    if float(r.reward[best]) == float(r.reward[worst]):
                        continue
                    w.append(r.latents[best])
                    lo.append(r.latents[worst])
                    conds.append(r.cond.select([best]))
                    rw.append(float(r.reward[best]))
                    rl.append(float(r.reward[worst]))
        if not w:
            raise InputError("DPO found no pair with different rewards: raise rollout.group_size or dpo.pair_iterations")
        cond = conds[0]
        for c in conds[1:]:
            cond = cond.cat(c)
        self.pairs = PairSet(torch.stack(w), torch.stack(lo), cond, torch.tensor(rw), torch.tensor(rl))
        self.pairs_seconds = time.perf_counter() - t0

    def run_step(self) -> dict[str, Any]:
        d, cfg = self.cfg.dpo, self.cfg
        n = len(self.pairs.winners)
        gen = schedule.generator(cfg.train.seed, self.step, "order")
        rows = torch.randperm(n, generator=gen)[: min(d.batch_size, n)]
        x_w, x_l = self.pairs.winners[rows].to(self.device), self.pairs.losers[rows].to(self.device)
        cond = self.pairs.cond.select(rows)
        both = cond.cat(cond)  # winners then losers, the same conditions
        sums = {"loss": 0.0, "implicit_acc": 0.0, "err_w": 0.0, "err_l": 0.0}
        dtype = self.model.dtype
        for k in range(d.timesteps):
            g = schedule.generator(cfg.train.seed, self.step, "nft_t", k)
            t = d.t_min + (d.t_max - d.t_min) * torch.rand(len(rows), generator=g)
            eps = torch.randn(x_w.shape, generator=g).to(self.device)
            t = t.to(self.device)
            tt = t.view(-1, *([1] * (x_w.ndim - 1)))
            x_t = torch.cat([(1 - tt) * x_w + tt * eps, (1 - tt) * x_l + tt * eps])
            target = torch.cat([eps - x_w, eps - x_l])
            t2 = torch.cat([t, t])
            with torch.no_grad(), self.reference.active(), self.accelerator.autocast():  # before the policy
                ref = conditioned_velocity(self.model, both, None, 1.0, dtype)(x_t, t2)
            with self.accelerator.autocast():
                v = conditioned_velocity(self.model, both, None, 1.0, dtype)(x_t, t2)
            err = ((v.float() - target) ** 2).mean(dim=tuple(range(1, v.ndim)))  # (2P,)
            ref_err = ((ref.float() - target) ** 2).mean(dim=tuple(range(1, v.ndim)))
            p = len(rows)
            loss, acc = L.diffusion_dpo_loss(err[:p], err[p:], ref_err[:p], ref_err[p:], d.beta)
            if torch.isfinite(loss):
                (loss / d.timesteps).backward()
            sums["loss"] += float(loss.detach()) / d.timesteps
            sums["implicit_acc"] += float(acc) / d.timesteps
            sums["err_w"] += float(err[:p].mean()) / d.timesteps
            sums["err_l"] += float(err[p:].mean()) / d.timesteps
        out = self.optimizer_step(skip_nonfinite=True)
        out.update(sums, pairs=n, reward_gap=float((self.pairs.reward_w - self.pairs.reward_l).mean()))
        return out


def run_dpo(config: DPORunConfig, run_dir, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    return DPOTrainer(config, run_dir, resume=resume, overwrite=overwrite).train()
