"""Rectified-flow supervised fine-tuning (SFT) of `IDCrafterTransformer3DModel`.

    trainer = Trainer(recipe("sprites"), "runs/sprites", resume=True)
    trainer.train()

One optimizer step: for each of `grad_accum` micro-batches, encode the clip with the codec
(or read its latents from `data.latent_cache`, `train.latent_cache`), draw t, noise and guidance dropout *per example*, predict the velocity of
z_t = (1 - t) z0 + t eps and regress it onto eps - z0 with the subject-weighted MSE
(`losses.py`); then clip the global grad norm, AdamW, lr schedule, EMA. Everything distributed
goes through `accelerate` (DDP / FSDP / DeepSpeed per its launch config; `configs/accelerate/`).

How it departs from the paper (which gives the objective, not the recipe):
- per-example randomness: example at stream position p draws its timestep, dropout and noise
  from its own generator seeded by (train.seed, p), in that order. A step is therefore the same
  function of the data whatever the number of processes or micro-batches, and resuming needs
  no generator state (global RNG states are still saved and restored for library code);
- subject-pixel loss weight and shifted logit-normal timesteps (see `losses.py`);
- condition dropout has three branches (text / references / both), the last one being what
  guidance's unconditional branch sees at inference.

The trainer is the shared engine (`train.engine.Engine`: accelerator, run-folder safety,
checkpoints with exact resume, logging, hooks) plus what is SFT's own: the data stream and its
position, the loss, the reference gap and the sample videos. Hooks: override `on_train_start`,
`on_step_end(step, metrics)`, `on_eval(step, metrics)`, `on_checkpoint(step, path)`,
`on_train_end(metrics)` in a subclass, or pass `callbacks` (objects with any of these methods).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch

from idcrafter.builder import check_reference_size
from idcrafter.train import losses
from idcrafter.train.config import Config
from idcrafter.train.data import Batch, BatchStream, example_seed
from idcrafter.train.engine import HOOKS, Engine  # noqa: F401 - HOOKS: the hook names, re-exported

log = logging.getLogger(__name__)
RUN_TOOL = "idcrafter train sft"  # the marker of run folders (utils.io.mark_dir)
# what a run writes into its folder: the only entries `overwrite=True` deletes
RUN_ENTRIES = ("config.json", "metrics.jsonl", "checkpoints", "tensorboard", "samples", "pipeline", ".idcrafter")


def example_generators(seed: int, positions: torch.Tensor) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(example_seed(seed, int(p), salt=1)) for p in positions]


def draw_randomness(seed: int, positions: torch.Tensor, latent_shape: tuple[int, ...]):
    """Per-example (normal (B,), uniform (B,), noise (B, *latent_shape)), in that draw order."""
    normal, uniform, noise = [], [], []
    for g in example_generators(seed, positions):
        normal.append(torch.randn((), generator=g))
        uniform.append(torch.rand((), generator=g))
        noise.append(torch.randn(latent_shape, generator=g))
    return torch.stack(normal), torch.stack(uniform), torch.stack(noise)



class Trainer(Engine):
    """The SFT loop (module docstring) on the shared engine. `run_dir` gets config.json,
    metrics.jsonl, tensorboard/, checkpoints/, samples/ and the final pipeline/.

    Run folder safety (the engine's): a new run (no `resume`) needs an absent or empty `run_dir`;
    a folder that already holds a run is refused (`InputError` naming `--resume` / `--overwrite`),
    and one holding anything else is never written into. `overwrite=True` deletes only what a run
    writes (`RUN_ENTRIES`) from a folder marked as a run's, then starts afresh."""

    run_tool: ClassVar[str] = RUN_TOOL
    run_entries: ClassVar[tuple[str, ...]] = RUN_ENTRIES
    progress_name: ClassVar[str] = "sft"

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, callbacks: list | None = None,
                 overwrite: bool = False):
        super().__init__(config, run_dir, resume=resume, callbacks=callbacks, overwrite=overwrite)
        self.position = 0  # stream positions consumed (examples, over all processes)
        self.stream: BatchStream | None = None

    @property
    def global_batch(self) -> int:
        return self.cfg.data.batch_size * self.accelerator.num_processes * self.cfg.train.grad_accum

    def micro_batch_size(self) -> int:
        return self.cfg.data.batch_size

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        from idcrafter.train.conditions import ConditionEncoder
        from idcrafter.train.modes import setup_trainable

        cfg = self.cfg
        self.begin_setup()
        pipe = cfg.model.build()
        check_reference_size(pipe, cfg.data.ref_size)
        self.setup_model(pipe, setup_trainable(pipe.transformer, cfg.train), wrap=True)
        self.cond = ConditionEncoder(self.pipe, self.device, cfg.train.text_cache_size)
        self.source = cfg.data.build(self.global_batch)
        self.latents = None
        if cfg.data.latent_cache:
            from idcrafter.train.latent_cache import LatentCache

            self.latents = LatentCache.open(cfg.data.latent_cache, cfg)
        self.evaluator = None
        if self.is_main and cfg.eval.source != "none" and (cfg.eval.every or cfg.eval.sample_every):
            from idcrafter.train.evaluation import Evaluator

            self.evaluator = Evaluator(cfg, self.pipe, self.cond, self.device)
        resumed = self.maybe_resume()
        self.finish_setup(resumed)
        self.stream = BatchStream(self.source, cfg.data.batch_size, self.accelerator.num_processes,
                                  self.accelerator.process_index, cfg.train.grad_accum, self.position,
                                  cfg.data.prefetch)

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Subject-weighted rectified-flow loss of one micro-batch (module docstring)."""
        lc = self.cfg.loss
        # the frozen codec runs under the run's autocast: in fp32 the SpriteWorld Wan VAE's encoder
        # costs as much as the DiT's whole step on a CPU (docs/sprites.md measures the latent error)
        subjects = None
        if self.latents is not None:  # encoded once by `train cache-latents` (train.latent_cache)
            z0, subjects = (t.to(self.device) for t in self.latents.lookup(batch))  # (B, C, F', h, w), (B, K, ...)
        else:
            with torch.no_grad(), self.accelerator.autocast():
                z0 = self.pipe.codec.encode(batch.video.to(self.device)).float()  # (B, C, F', h, w)
        normal, uniform, eps = draw_randomness(self.cfg.train.seed, batch.positions, tuple(z0.shape[1:]))
        t = losses.sample_timesteps(normal, lc.logit_mean, lc.logit_std, lc.timestep_shift).to(self.device)  # (B,)
        eps = eps.to(self.device)
        z_t = losses.interpolate(z0, eps, t)
        target = losses.velocity_target(z0, eps)
        drop_text, drop_refs = losses.condition_dropout(uniform, lc.drop_text, lc.drop_refs, lc.drop_both)
        inputs = self.cond.model_inputs(batch, drop_text, drop_refs, subjects)
        with self.accelerator.autocast():
            v = self.ddp_model(z_t, t * 1000, **inputs).sample  # (B, C, F', h, w)
        wmap = None
        if batch.subject is not None and lc.subject_weight != 1:
            wmap = losses.latent_weight_map(batch.subject.to(self.device), tuple(z0.shape[2:]), lc.subject_weight)
        loss, per = losses.weighted_mse(v, target, wmap, losses.timestep_weight(t, lc.weighting))
        return loss, {"loss": loss.detach(), "t_mean": t.mean().detach(),
                      "drop_text": drop_text.float().mean(), "drop_refs": drop_refs.float().mean()}

    def train_step(self, micro_batches: list[Batch]) -> dict[str, Any]:
        """Forward/backward over the micro-batches (gradients synchronised on the last only), then
        the engine's optimizer step (clip, AdamW, schedule, EMA)."""
        acc, n = self.accelerator, len(micro_batches)
        sums: dict[str, float] = {}
        for i, batch in enumerate(micro_batches):
            sync = i == n - 1 or acc.num_processes == 1
            with nullcontext() if sync else acc.no_sync(self.ddp_model):
                loss, m = self.compute_loss(batch)
                acc.backward(loss if self.deepspeed else loss / n)  # DeepSpeed scales by its own accumulation
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + float(v) / n
        if not math.isfinite(sums["loss"]):
            raise FloatingPointError(f"loss is {sums['loss']} at step {self.step + 1}: lower optim.lr or check the data")
        out = self.optimizer_step()  # clip, AdamW, schedule, EMA (the engine's one optimizer step)
        sums["grad_norm"], sums["lr"] = out["grad_norm"], out["lr"]
        return sums

    def timed_micro_step(self, batch: Batch) -> float:
        """Seconds of one forward + backward of `batch` under the run's autocast, the gradients
        then dropped (no optimizer step): what the speed scripts compare."""
        t = time.perf_counter()
        with self.accelerator.autocast():
            loss, _ = self.compute_loss(batch)
        loss.backward()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    def run_step(self) -> dict[str, Any]:
        """The next step's micro-batches through `train_step`; the position advances by the global batch."""
        t0 = time.perf_counter()
        micro = self.stream.next()
        t_data = time.perf_counter() - t0
        metrics = self.train_step(micro)
        self.position += self.global_batch
        dt = time.perf_counter() - t0
        metrics.update(data_time=t_data, samples_per_s=self.global_batch / dt)
        return metrics

    def postfix(self, metrics: dict[str, Any]) -> dict[str, str]:
        return {"loss": f"{metrics['loss']:.4f}", "sps": f"{metrics['samples_per_s']:.1f}"}

    def summarise_window(self, mean: dict[str, Any]) -> dict[str, Any]:
        """The loss averaged over processes too (a collective), data position and counters."""
        loss = torch.tensor([mean["loss"]], device=self.device)
        mean["loss"] = float(self.accelerator.reduce(loss, reduction="mean")[0])
        mean["samples_seen"] = self.position
        skipped = getattr(self.source, "skipped", None)
        if skipped is not None:
            mean["data/skipped"] = skipped
        mean["text_cache_hit_rate"] = self.cond.hits / max(self.cond.hits + self.cond.misses, 1)
        return mean

    # ------------------------------------------------------------------ loop hooks
    def before_loop(self) -> None:
        cfg = self.cfg
        if self.step == 0 and cfg.eval.every and cfg.eval.source != "none":
            self.evaluate()  # every process calls evaluate/sample (they end with a barrier)

    def evaluate_if_due(self, step: int) -> None:
        cfg = self.cfg
        if cfg.eval.source != "none" and cfg.eval.every and step % cfg.eval.every == 0:
            self.evaluate()
        if cfg.eval.source != "none" and cfg.eval.sample_every and step % cfg.eval.sample_every == 0:
            self.sample()

    def abort(self) -> None:
        if self.stream is not None:
            self.stream.close()

    def close(self) -> None:
        """Release the stream and the loggers; restore torch's thread count and determinism flag."""
        if self.stream is not None:
            self.stream.close()
        super().close()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Reference gap with the current (and, when on, EMA) weights; main process only."""
        out: dict[str, float] = {}
        if self.evaluator is not None:
            with torch.random.fork_rng(devices=[]):
                out = self.evaluator.reference_gap(self.model, self.accelerator.autocast)
                if self.ema is not None and self.cfg.eval.use_ema:
                    with self.ema.swapped():
                        ema = self.evaluator.reference_gap(self.model, self.accelerator.autocast)
                    out.update({f"ema/{k}": v for k, v in ema.items()})
            self.logger.log(self.step, out)
            self._fire("on_eval", self.step, out)
        self.accelerator.wait_for_everyone()
        return out

    def sample(self) -> dict[str, Any]:
        """Write a sample video (EMA weights when EMA is on); main process only."""
        out: dict[str, Any] = {}
        if self.evaluator is not None:
            ctx = self.ema.swapped() if self.ema is not None and self.cfg.eval.use_ema else nullcontext()
            with torch.random.fork_rng(devices=[]), ctx:
                out = self.evaluator.sample_video(self.run_dir / "samples", self.step)
            self.logger.log(self.step, {k: v for k, v in out.items() if k != "sample_path"})
        self.accelerator.wait_for_everyone()
        return out

    # ------------------------------------------------------------------ checkpoint contents
    def checkpoint_state(self) -> dict[str, Any]:
        return {"position": self.position, "global_batch": self.global_batch}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
        if self.is_main:
            log.info("data position %d", self.position)

    def rank_state(self) -> dict[str, Any]:
        return {"skipped": sorted(getattr(self.source, "bad", set()))}

    def restore_rank_state(self, state: dict[str, Any]) -> None:
        if hasattr(self.source, "bad"):
            self.source.bad.update(state.get("skipped", []))


def run_sft(config: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Train with `config` into `run_dir` (the CLI's entry point)."""
    return Trainer(config, run_dir, resume=resume, overwrite=overwrite).train()
