"""Flow-GRPO on the shared engine: `idcrafter train grpo --recipe NAME [key=value ...]`.

Per iteration (see `trainer.py`): rollouts through the pipeline's sampler with SDE (or CPS)
log-probs on the window's steps; rewards gathered; group advantages; then for each kept
micro-batch (= a rollout batch) and each trained step j (a random `timestep_fraction` of the
window's steps, shared by every row):

    v      = the policy's velocity at (x_j, sigma_j) (guided when rollouts were)
    lp     = log N(x_{j+1}; mean(v), std^2) averaged over elements (fp32), the rollout's own step
    ratio  = exp(lp - lp_rollout)                    (GRPO-Guard: re-centred per step)
    loss_b = max(-A_b ratio_b, -A_b clip(ratio_b, 1 - e, 1 + e)) [* w_j]  +  beta * KL_b

KL_b compares the step means of the policy and of the reference (the LoRA adapter disabled, or
the starting weights for full fine-tuning). The first optimizer step of an iteration sees exactly
the rollout's numbers: `ratio_mean_first` is 1 and `kl_first` is 0 (a porting check).

Steps whose noise std is below `grpo.min_std` (default 0.02) are never trained. With CPS the std
is s' sin(eta pi / 2), so the step into the schedule's smallest sigma (0.0089 at shift 3) has std
0.008: its exact log-density and KL grow as 1/std^2, and when trained it carried KL 3-9 per
element against <= 0.007 at every other step of the sprites-latent runs, so its near-noiseless
"exploration" set the whole update (measured in docs/rl_sessions.md, session 7). flow_grpo's CPS sidesteps
this by dropping the 1/std^2 from its log-prob; the flow SDE's std there is 0.22 (std depends on s).

Departures from flow_grpo's train scripts: the trained steps are one random subset per iteration
shared by all samples (flow_grpo trains the first steps of a per-sample permutation); a
micro-batch is a rollout batch, never regrouped (bitwise ratio 1); flow_grpo's Wan script also
scales the policy loss by std_t / dt, which is not done here.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from idcrafter import sampling
from idcrafter.conditioning import conditioned_velocity
from idcrafter.errors import InputError
from idcrafter.rl import losses as L
from idcrafter.rl import schedule
from idcrafter.rl.rollout import Rollout
from idcrafter.rl.trainer import RLTrainer


def grpo_row_losses(velocity: torch.Tensor, ref_velocity: torch.Tensor | None, x: torch.Tensor, x_next: torch.Tensor,
                    sigma: float, sigma_next: float, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                    clip_range: float, beta: float, sde_type: str = "flow", noise_level: float | None = None,
                    weight: float | None = None, recenter: bool = False,
                    recenter_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-row GRPO losses (b,) at one step and per-row statistics, from the policy's velocity
    (with gradients) and the reference's (None: no KL). Pure: the trainer and the toy tests call it."""
    level = sampling.DEFAULT_NOISE_LEVEL[sde_type] if noise_level is None else noise_level
    step = sampling.stochastic_step(sde_type)
    cur = step(velocity, sigma, sigma_next, x, noise_level=level, prev_sample=x_next)
    ratio = L.importance_ratio(cur.log_prob, old_log_prob, recenter=recenter, step_ids=recenter_ids)
    w = None if weight is None else torch.full_like(ratio, float(weight))
    pl = L.clipped_policy_loss(ratio, advantages.to(ratio.device), clip_range, weight=w)
    kl = torch.zeros_like(ratio)
    if ref_velocity is not None:
        ref = step(ref_velocity, sigma, sigma_next, x, noise_level=level, prev_sample=x_next)
        kl = L.kl_to_reference(cur.mean, ref.mean.detach(), cur.std)
    rows = pl.per_row + beta * kl
    log_ratio = (cur.log_prob - old_log_prob).detach()
    stats = {"ratio_mean": ratio.detach(), "clip_frac": ((ratio.detach() - 1).abs() > clip_range).float(),
             "kl": kl.detach(), "policy_loss": pl.per_row.detach(), "approx_kl": 0.5 * log_ratio**2,
             "loss": rows.detach()}
    return rows, stats


class GRPOTrainer(RLTrainer):
    """Flow-GRPO (module docstring). `GRPOTrainer(cfg, run_dir).train()`."""

    run_tool: ClassVar[str] = "idcrafter train grpo"
    progress_name: ClassVar[str] = "grpo"

    @property
    def drop_zero_groups(self) -> bool:
        return self.cfg.grpo.drop_zero_groups

    def update(self, rollouts: list[Rollout], iteration: int) -> dict[str, Any]:
        g = self.cfg.grpo
        if not rollouts:
            return {}
        sig = rollouts[0].sigmas
        rc = self.cfg.rollout
        trainable = [j for j in rollouts[0].sde_steps  # never the nearly deterministic ones (module docstring)
                     if sampling.step_std(rc.sde_type, float(sig[j]), float(sig[j + 1]), rc.noise_level) >= g.min_std]
        if not trainable:
            raise InputError(f"no SDE step of the window has a noise std >= grpo.min_std={g.min_std}: lower "
                             "grpo.min_std, raise rollout.noise_level or move rollout.window_start earlier")
        steps = schedule.trained_steps(trainable, g.timestep_fraction,
                                       schedule.generator(self.cfg.train.seed, iteration, "steps"))
        weights = None
        if g.guard:  # 1/|dt| normalised over the trained steps
            w = L.step_weights(torch.stack([sig[j + 1] - sig[j] for j in steps]))
            weights = {j: float(wj) for j, wj in zip(steps, w)}
        out = self.run_updates(rollouts, steps, lambda r, j: self._step_loss(r, j, weights), g.inner_epochs,
                               g.updates, iteration)
        out["trained_steps"] = len(steps)
        return out

    def _step_loss(self, r: Rollout, j: int, weights: dict[int, float] | None):
        cfg, g = self.cfg, self.cfg.grpo
        rc = cfg.rollout
        x, x_next = (t.to(self.device) for t in r.state_at(j))
        s, s_next = float(r.sigmas[j]), float(r.sigmas[j + 1])
        sigma = torch.full((len(r),), s, device=self.device)
        dtype = self.model.dtype
        ref_v = None
        if g.beta > 0:  # the reference first: a weight swap must not follow the policy's forward
            with torch.no_grad(), self.reference.active(), self.accelerator.autocast():
                ref_v = conditioned_velocity(self.model, r.cond, r.uncond, rc.guidance, dtype)(x, sigma)
        with self.accelerator.autocast():
            v = conditioned_velocity(self.model, r.cond, r.uncond, rc.guidance, dtype)(x, sigma)
        ids = torch.where(r.keep, 0, 1).to(self.device)  # re-centre over the kept rows only
        return grpo_row_losses(v, ref_v, x, x_next, s, s_next, r.log_prob_at(j).to(self.device),
                               r.advantages.to(self.device), g.clip_range, g.beta, rc.sde_type, rc.noise_level,
                               None if weights is None else weights[j], g.guard, ids)


def run_grpo(config, run_dir, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train with `config` (a `GRPORunConfig`) into `run_dir` (the CLI's entry point)."""
    return GRPOTrainer(config, run_dir, resume=resume, overwrite=overwrite).train()
