"""DiffusionNFT on the shared engine: `idcrafter train nft --recipe NAME [key=value ...]`.

Per iteration: the *old* policy (an EMA of the current weights, `policy.Shadow`) samples the
groups with any solver (`rollout.sde_type`: "ode" by default, no guidance needed); only the clean
samples x0 and the conditions are kept. Rewards are gathered, turned into group advantages A and
optimality probabilities r = 1/2 + 1/2 clip(A / adv_clip, -1, 1). Then for each kept
micro-batch and each of `nft.timesteps` draws per sample: t ~ U[t_min, t_max], eps ~ N(0, I),
x_t = (1 - t) x0 + t eps, v = eps - x0 and

    v_old = old policy at (x_t, t);  v_theta = current policy (with gradients)
    loss  = r ||v+ - v||^2 + (1 - r) ||v- - v||^2,  v+ = b v_theta + (1 - b) v_old,  v- = (1 + b) v_old - b v_theta
          [+ kl * ||v_theta - v_ref||^2]

(`rl.losses.nft_loss`). After the iteration's updates the old policy moves toward the current one:
old <- d old + (1 - d) theta with d = min(old_rate * i, old_max) (the official schedule: on-policy
at first). Every t and eps comes from a generator seeded by (seed, iteration, sample, draw).

Departures from the official code: velocity-space loss by default (`nft.form="x0"` is theirs);
the optimality map uses the group-normalised advantage with `nft.adv_scale` as its scale; the
trained velocity is the conditional one even when rollouts used guidance (NFT is CFG-free).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from idcrafter.conditioning import conditioned_velocity
from idcrafter.rl import losses as L
from idcrafter.rl import schedule
from idcrafter.rl.policy import Shadow
from idcrafter.rl.rollout import Rollout
from idcrafter.rl.trainer import RLTrainer


def nft_row_losses(v_theta: torch.Tensor, v_old: torch.Tensor, v_ref: torch.Tensor | None, target: torch.Tensor,
                   t: torch.Tensor, r: torch.Tensor, beta: float, kl: float = 0.0,
                   form: str = "velocity") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-row NFT losses (b,) and statistics; pure (the trainer and the toy tests call it)."""
    _, per = L.nft_loss(v_theta, v_old, target, r, beta, t=t, form=form)
    kl_rows = torch.zeros_like(per)
    if v_ref is not None:
        d = (v_theta.float() - v_ref.detach().float()) ** 2
        kl_rows = d.mean(dim=tuple(range(1, d.ndim)))
    rows = per + kl * kl_rows
    err = ((v_theta.detach().float() - target.float()) ** 2)
    stats = {"nft_loss": per.detach(), "kl": kl_rows.detach(), "loss": rows.detach(), "optimality": r.float(),
             "velocity_err": err.mean(dim=tuple(range(1, err.ndim))),
             "old_gap": ((v_theta.detach().float() - v_old.float()) ** 2).mean(dim=tuple(range(1, err.ndim)))}
    return rows, stats


def forward_noise(x0: torch.Tensor, samples: torch.Tensor, seed: int, iteration: int, draw: int, draws: int,
                  t_min: float, t_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(t (b,), eps (b, ...)) of draw `draw` for each sample, from their own generators."""
    ts, eps = [], []
    for s in samples.tolist():
        idx = int(s) * draws + draw
        ts.append(t_min + (t_max - t_min) * torch.rand((), generator=schedule.generator(seed, iteration, "nft_t", idx)))
        eps.append(torch.randn(x0.shape[1:], generator=schedule.generator(seed, iteration, "nft_eps", idx)))
    return torch.stack(ts), torch.stack(eps)


class NFTTrainer(RLTrainer):
    """DiffusionNFT (module docstring). `NFTTrainer(cfg, run_dir).train()`."""

    run_tool: ClassVar[str] = "idcrafter train nft"
    progress_name: ClassVar[str] = "nft"

    @property
    def rollout_mode(self) -> str:  # type: ignore[override]
        return "ode" if self.cfg.rollout.sde_type == "ode" else "sde"

    @property
    def drop_zero_groups(self) -> bool:
        return self.cfg.nft.drop_zero_groups

    def setup_policy(self) -> None:
        self.old = Shadow(self.trainable)

    def rollouts(self, iteration: int) -> list[Rollout]:
        with self.old.active():
            return self.runner.run(iteration, self.rollout_mode)

    def update(self, rollouts: list[Rollout], iteration: int) -> dict[str, Any]:
        n = self.cfg.nft
        out = self.run_updates(rollouts, list(range(n.timesteps)), lambda r, k: self._draw_loss(r, k, iteration),
                               n.inner_epochs, n.updates, iteration)
        decay = schedule.old_policy_decay(iteration, n.old_rate, n.old_max)
        self.old.update(decay)
        out["old_decay"] = decay
        return out

    def _draw_loss(self, r: Rollout, draw: int, iteration: int):
        cfg, n = self.cfg, self.cfg.nft
        x0 = r.latents.to(self.device)
        t, eps = forward_noise(x0.cpu(), r.samples, cfg.train.seed, iteration, draw, n.timesteps, n.t_min, n.t_max)
        t, eps = t.to(self.device), eps.to(self.device)
        tt = t.view(-1, *([1] * (x0.ndim - 1)))
        x_t = (1 - tt) * x0 + tt * eps
        target = eps - x0
        dtype = self.model.dtype
        velocity = lambda: conditioned_velocity(self.model, r.cond, None, 1.0, dtype)(x_t, t)  # noqa: E731
        with torch.no_grad(), self.accelerator.autocast():  # weight swaps before the policy's forward
            with self.old.active():
                v_old = velocity()
            v_ref = None
            if n.kl > 0:
                with self.reference.active():
                    v_ref = velocity()
        with self.accelerator.autocast():
            v = velocity()
        opt = L.nft_optimality(r.advantages.to(self.device), n.adv_scale)
        return nft_row_losses(v, v_old, v_ref, target, t, opt, n.beta, n.kl, n.form)

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        return {"old_policy": self.old.state_dict()}

    def restore_tensors(self, files: dict[str, dict[str, torch.Tensor]]) -> None:
        self.old.load_state_dict(files["old_policy"])


def run_nft(config, run_dir, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train with `config` (an `NFTRunConfig`) into `run_dir` (the CLI's entry point)."""
    return NFTTrainer(config, run_dir, resume=resume, overwrite=overwrite).train()
