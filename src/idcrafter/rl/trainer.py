"""The RL trainer base on the shared engine: set-up, one iteration, the update loop, the monitor.

    iteration i:  rollouts (this process's share of the groups)  -> rollout_s
                  rewards, gathered; advantages                   -> reward_s
                  update (the subclass's loss over micro-batches) -> update_s

The model is not wrapped in DDP: gradients are all-reduced once per optimizer step
(`Engine.sync_gradients`), because processes may train different numbers of micro-batches (a
micro-batch whose groups all have zero advantage is skipped, a NaN/inf loss is not
backpropagated). The loss of an optimizer step is the sum over every process's kept rows and
units (GRPO: trained steps; NFT: noised timesteps) divided by their global count, so two processes
compute exactly what one process would on the same samples (up to summation order).

NaN/inf: a non-finite reward component removes its sample (counted in
`skipped/nonfinite_reward`); a non-finite loss is not backpropagated (`skipped/nonfinite_loss`);
a non-finite gradient norm skips the optimizer step (`skipped/updates`). None reaches the weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from idcrafter.builder import check_reference_size
from idcrafter.rl import rollout as R
from idcrafter.rl import schedule
from idcrafter.rl.policy import Reference, rl_trainable
from idcrafter.train.engine import Engine

log = logging.getLogger(__name__)

LossFn = Callable[[R.Rollout, Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]


class RLTrainer(Engine):
    """Shared by GRPO and NFT (module docstring); subclasses implement `update`."""

    run_tool: ClassVar[str] = "idcrafter train rl"
    rollout_mode: ClassVar[str] = "sde"

    def __init__(self, config: Any, run_dir, resume: bool = False, callbacks: list | None = None,
                 overwrite: bool = False, monitor_scorer: Any = None):
        """`monitor_scorer`: a scorer object (`idcrafter.scorers.Scorer`) the hacking monitor uses
        instead of building `monitor.scorer` by name (an audit model held in memory, or a test's)."""
        super().__init__(config, run_dir, resume=resume, callbacks=callbacks, overwrite=overwrite)
        self.monitor_scorer = monitor_scorer

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        from idcrafter.rl.rewards import build_reward

        self.begin_setup()
        self._refuse_sharding()
        cfg = self.cfg
        pipe = cfg.model.build()
        check_reference_size(pipe, cfg.data.ref_size)
        trainable = rl_trainable(pipe.transformer, cfg.train)
        self.setup_model(pipe, trainable, wrap=False)
        self.reference = Reference(self.model, self.trainable, cfg.train.mode)
        self.source = cfg.data.build()
        self.reward = build_reward(cfg.reward, device=str(self.device))
        self.runner = R.RolloutRunner(cfg, pipe, self.source, self.world_size, self.rank, self.accelerator.autocast)
        self.monitor = None
        if cfg.monitor.every:
            from idcrafter.rl.monitor import HackingMonitor

            self.monitor = HackingMonitor(cfg.monitor, cfg, self.run_dir, self.is_main, scorer=self.monitor_scorer)
            if self.is_main:
                self.monitor.check_scorer()  # a missing audit judge fails now, not hours into the run
        self.setup_policy()
        self.last_rollouts: list[R.Rollout] = []
        resumed = self.maybe_resume()
        self.finish_setup(resumed)

    def _refuse_sharding(self) -> None:
        """The RL update is data parallel with an explicit all-reduce; an FSDP or DeepSpeed launch
        config would be silently ignored, so it is refused (docs/scale.md, "RL post-training")."""
        from accelerate.utils import DistributedType

        from idcrafter.errors import InputError

        if self.accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
            raise InputError("the RL trainers run data parallel (the frozen base replicated, LoRA gradients "
                             "all-reduced): launch with torchrun or configs/accelerate/ddp.yaml, not FSDP/DeepSpeed "
                             "(docs/scale.md, RL post-training)")

    def setup_policy(self) -> None:
        """Extra policy state (NFT's old policy); default none."""

    def micro_batch_size(self) -> int:
        return self.cfg.rollout.batch_size

    # ------------------------------------------------------------------ one iteration
    def rollouts(self, iteration: int) -> list[R.Rollout]:
        return self.runner.run(iteration, self.rollout_mode)

    def run_step(self) -> dict[str, Any]:
        i = self.step
        t0, c0 = time.perf_counter(), time.process_time()
        rollouts = self.rollouts(i)
        t1 = time.perf_counter()
        R.score(self.reward, rollouts)
        metrics = R.assign_advantages(rollouts, self.cfg, self.drop_zero_groups, self.world_size)
        t2 = time.perf_counter()
        metrics.update(self.update(rollouts, i))
        t3 = time.perf_counter()
        # cpu_s: this process's CPU seconds for the iteration; on a shared machine the wall-clock
        # figures follow the load, the CPU time follows the algorithm
        metrics.update(rollout_s=t1 - t0, reward_s=t2 - t1, update_s=t3 - t2, cpu_s=time.process_time() - c0)
        self.last_rollouts = rollouts
        if self.monitor is not None:
            self.monitor.observe_reward(i + 1, metrics["reward"])
        return metrics

    @property
    def drop_zero_groups(self) -> bool:
        return True

    def update(self, rollouts: list[R.Rollout], iteration: int) -> dict[str, Any]:
        raise NotImplementedError

    # ------------------------------------------------------------------ the update loop
    def _global_sum(self, value: float) -> float:
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t[0])

    def run_updates(self, rollouts: list[R.Rollout], units: list[Any], loss_fn: LossFn, inner_epochs: int,
                    updates: int, iteration: int) -> dict[str, Any]:
        """Backpropagate `loss_fn(rollout, unit)` (per-row losses (b,) and per-row statistics) over
        every kept micro-batch and unit, `updates` optimizer steps per pass, `inner_epochs` passes.

        Returns the means over kept rows of each statistic (`<name>`), of the first optimizer
        step's statistics (`<name>_first`), and counters."""
        kept = [r for r in rollouts if r.keep is not None and bool(r.keep.any())]
        sums: dict[str, float] = defaultdict(float)
        first: dict[str, float] = defaultdict(float)
        count = first_count = 0.0
        nonfinite = skipped_updates = steps = 0
        grad_norms: list[float] = []
        for epoch in range(inner_epochs):
            order = list(range(len(kept)))
            if epoch > 0:  # later passes in a seeded order; the first keeps the rollout order
                order = torch.randperm(len(kept), generator=schedule.generator(self.cfg.train.seed, iteration,
                                                                               "order", epoch)).tolist()
            for chunk in np.array_split(np.array(order, dtype=np.int64), updates):
                batches = [kept[int(j)] for j in chunk]
                n_local = sum(float(r.keep.sum()) for r in batches) * len(units)
                n_global = self._global_sum(n_local)
                for r in batches:
                    w = r.keep.float().to(self.device)
                    for unit in units:
                        rows, stats = loss_fn(r, unit)
                        loss = (rows * w).sum() / max(n_global, 1.0)
                        if torch.isfinite(loss):
                            loss.backward()
                        else:
                            nonfinite += 1
                            continue
                        k = float(w.sum())
                        for name, v in stats.items():
                            s = float((v.detach().float() * w).sum())
                            sums[name] += s
                            if steps == 0:
                                first[name] += s
                        count += k
                        if steps == 0:
                            first_count += k
                if n_global == 0:  # nothing to train anywhere in this chunk (same on every process)
                    continue
                out = self.optimizer_step(skip_nonfinite=True, reduce="sum")  # losses are over the global count
                skipped_updates += out["skipped_update"]
                if math.isfinite(out["grad_norm"]):
                    grad_norms.append(out["grad_norm"])
                steps += 1
        metrics: dict[str, Any] = {f"{k}": v / count for k, v in sums.items()} if count else {}
        metrics.update({f"{k}_first": v / first_count for k, v in first.items()} if first_count else {})
        metrics.update({"skipped/nonfinite_loss": nonfinite, "skipped/updates": skipped_updates, "updates": steps,
                        "grad_norm": float(np.mean(grad_norms)) if grad_norms else float("nan"),
                        "lr": self.scheduler.get_last_lr()[0], "trained_rows": count / max(len(units), 1)})
        return metrics

    # ------------------------------------------------------------------ monitor and checkpoints
    def evaluate_if_due(self, step: int) -> None:
        if self.monitor is None or step % self.cfg.monitor.every:
            return
        if self.is_main:
            from contextlib import nullcontext

            ctx = self.ema.swapped() if self.ema is not None else nullcontext()
            with ctx, torch.random.fork_rng(devices=[]):
                out = self.monitor.evaluate(self.pipe, step)
            self.logger.log(step, out)
            self._fire("on_eval", step, out)
        self.accelerator.wait_for_everyone()
        stop = [self.monitor.should_stop()]
        if self.world_size > 1:  # only the main process evaluated: every rank follows its decision
            import torch.distributed as dist

            dist.broadcast_object_list(stop, src=0)
        if stop[0]:
            log.warning("hacking monitor: stopping at iteration %d (monitor.stop is on)", step)
            self.request_stop()  # ends the loop after this step's checkpoint

    def checkpoint_state(self) -> dict[str, Any]:
        return {"monitor": self.monitor.state() if self.monitor is not None else None}

    def restore_state(self, state: dict[str, Any]) -> None:
        if self.monitor is not None and state.get("monitor"):
            self.monitor.load_state(state["monitor"])
