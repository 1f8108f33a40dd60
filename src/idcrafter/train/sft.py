"""Rectified-flow supervised fine-tuning (SFT) of `IDCrafterTransformer3DModel`.

    trainer = Trainer(recipe("sprites"), "runs/sprites", resume=True)
    trainer.train()

One optimizer step: for each of `grad_accum` micro-batches, encode the clip with the codec,
draw t, noise and guidance dropout *per example*, predict the velocity of
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

Hooks: override `on_train_start`, `on_step_end(step, metrics)`, `on_eval(step, metrics)`,
`on_checkpoint(step, path)`, `on_train_end(metrics)` in a subclass, or pass `callbacks` (objects
with any of these methods).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from idcrafter.config import config_to_dict, save_config
from idcrafter.errors import InputError
from idcrafter.train import checkpoint as ckpt
from idcrafter.train import losses
from idcrafter.train.config import Config
from idcrafter.train.data import Batch, BatchStream, example_seed

log = logging.getLogger(__name__)
HOOKS = ("on_train_start", "on_step_end", "on_eval", "on_checkpoint", "on_train_end")


def make_accelerator(cfg: Config):
    """An `Accelerator` for this config (a fresh AcceleratorState, so several trainers with
    different precisions can run in one process, e.g. in tests)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    AcceleratorState._reset_state()
    ddp = DistributedDataParallelKwargs(find_unused_parameters=cfg.train.find_unused_parameters)
    return Accelerator(mixed_precision=cfg.train.mixed_precision, cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[ddp])


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


class Trainer:
    """The SFT loop (module docstring). `run_dir` gets config.json, metrics.jsonl, tensorboard/,
    checkpoints/, samples/ and the final pipeline/."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool = False, callbacks: list | None = None):
        self.cfg = config.validate()
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.callbacks = list(callbacks or [])
        self.step = 0  # optimizer steps done
        self.position = 0  # stream positions consumed (examples, over all processes)
        self._ready = False

    # ------------------------------------------------------------------ hooks
    def on_train_start(self) -> None: ...
    def on_step_end(self, step: int, metrics: dict[str, Any]) -> None: ...
    def on_eval(self, step: int, metrics: dict[str, Any]) -> None: ...
    def on_checkpoint(self, step: int, path: Path) -> None: ...
    def on_train_end(self, metrics: dict[str, Any]) -> None: ...

    def _fire(self, name: str, *args: Any) -> None:
        getattr(self, name)(*args)
        for cb in self.callbacks:
            fn = getattr(cb, name, None)
            if fn is not None:
                fn(self, *args)

    # ------------------------------------------------------------------ set-up
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def global_batch(self) -> int:
        return self.cfg.data.batch_size * self.accelerator.num_processes * self.cfg.train.grad_accum

    def setup(self) -> None:
        from idcrafter.train.conditions import ConditionEncoder
        from idcrafter.train.ema import EMA
        from idcrafter.train.modes import setup_trainable

        cfg = self.cfg
        self._saved_torch = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
        self.accelerator = make_accelerator(cfg)
        torch.manual_seed(cfg.train.seed)
        self.pipe = cfg.model.build()
        self.pipe.set_progress_bar_config(disable=True)
        self.model = self.pipe.transformer
        self.trainable = setup_trainable(self.model, cfg.train)
        if cfg.train.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.model.train()
        self.device = self.accelerator.device
        self.pipe.to(self.device)  # frozen encoders / codec; prepare places the transformer itself
        optimizer, self.scheduler = cfg.optim.build(list(self.trainable.values()), cfg.train.steps)
        self._prepare_engine(optimizer)
        self.ema = EMA(self.trainable, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.cond = ConditionEncoder(self.pipe, self.device, cfg.train.text_cache_size)
        self.source = cfg.data.build()
        self.evaluator = None
        if self.is_main and cfg.eval.source != "none" and (cfg.eval.every or cfg.eval.sample_every):
            from idcrafter.train.evaluation import Evaluator

            self.evaluator = Evaluator(cfg, self.pipe, self.cond, self.device)
        resumed = self._maybe_resume()
        self._open_run_dir(resumed)
        self.stream = BatchStream(self.source, cfg.data.batch_size, self.accelerator.num_processes,
                                  self.accelerator.process_index, cfg.train.grad_accum, self.position,
                                  cfg.data.prefetch)
        self._ready = True

    def _prepare_engine(self, optimizer: torch.optim.Optimizer) -> None:
        """`accelerator.prepare` the transformer and optimizer (DDP, FSDP2 or DeepSpeed).

        Sharded engines (FSDP2, DeepSpeed) replace or partition parameters: the trainable dict is
        re-read from the prepared model (FSDP2: DTensor shards, so the EMA holds shards too), and
        checkpoints go through `accelerator.save_state` (see `save_checkpoint`). DeepSpeed ZeRO-3
        partitions parameters out of reach of a plain EMA, so EMA is refused there. These paths
        are not exercised on the CPU test machine.
        """
        from accelerate.utils import DistributedType

        acc, cfg = self.accelerator, self.cfg
        self.deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
        self.sharded = self.deepspeed or acc.distributed_type == DistributedType.FSDP
        if self.deepspeed:
            ds = acc.state.deepspeed_plugin
            ds.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
            if ds.zero_stage == 3 and cfg.train.ema_decay > 0:
                raise InputError("DeepSpeed ZeRO-3 partitions the weights: set train.ema_decay=0 (or use FSDP)")
        self.ddp_model, self.optimizer = acc.prepare(self.model, optimizer)
        if self.sharded:
            self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _open_run_dir(self, resumed: bool) -> None:
        from idcrafter.train.logger import MetricsLogger

        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / "config.json")
        n_train = sum(p.numel() for p in self.trainable.values())
        n_all = sum(p.numel() for p in self.model.parameters())
        self.logger = MetricsLogger(self.run_dir, self.cfg.log, self.is_main, config_to_dict(self.cfg),
                                    resume_step=self.step if resumed else None)
        if self.is_main:
            log.info("trainable %d / %d parameters (%s); global batch %d; %s", n_train, n_all,
                     self.cfg.train.mode, self.global_batch, "resumed at step %d" % self.step if resumed else "new run")

    def _maybe_resume(self) -> bool:
        path = ckpt.latest_checkpoint(self.run_dir / "checkpoints") if self.resume else None
        if path is None:
            if self.resume and self.is_main:
                log.info("no checkpoint in %s: starting a new run", self.run_dir)
            return False
        self.load_checkpoint(path)
        return True

    # ------------------------------------------------------------------ one step
    def compute_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Subject-weighted rectified-flow loss of one micro-batch (module docstring)."""
        lc = self.cfg.loss
        with torch.no_grad():
            z0 = self.pipe.codec.encode(batch.video.to(self.device)).float()  # (B, C, F', h, w)
        normal, uniform, eps = draw_randomness(self.cfg.train.seed, batch.positions, tuple(z0.shape[1:]))
        t = losses.sample_timesteps(normal, lc.logit_mean, lc.logit_std, lc.timestep_shift).to(self.device)  # (B,)
        eps = eps.to(self.device)
        z_t = losses.interpolate(z0, eps, t)
        target = losses.velocity_target(z0, eps)
        drop_text, drop_refs = losses.condition_dropout(uniform, lc.drop_text, lc.drop_refs, lc.drop_both)
        inputs = self.cond.model_inputs(batch, drop_text, drop_refs)
        with self.accelerator.autocast():
            v = self.ddp_model(z_t, t * 1000, **inputs).sample  # (B, C, F', h, w)
        wmap = None
        if batch.subject is not None and lc.subject_weight != 1:
            wmap = losses.latent_weight_map(batch.subject.to(self.device), tuple(z0.shape[2:]), lc.subject_weight)
        loss, per = losses.weighted_mse(v, target, wmap, losses.timestep_weight(t, lc.weighting))
        return loss, {"loss": loss.detach(), "t_mean": t.mean().detach(),
                      "drop_text": drop_text.float().mean(), "drop_refs": drop_refs.float().mean()}

    def train_step(self, micro_batches: list[Batch]) -> dict[str, Any]:
        """Forward/backward over the micro-batches (gradients synchronised on the last only), clip,
        optimizer and scheduler step, EMA update."""
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
        params = list(self.trainable.values())
        clip = self.cfg.optim.grad_clip
        grad_norm = acc.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        sums["grad_norm"] = float("nan") if grad_norm is None else float(grad_norm)
        sums["lr"] = self.scheduler.get_last_lr()[0]
        return sums

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Run until `train.steps`; returns the last logged metrics."""
        if not self._ready:
            self.setup()
        cfg = self.cfg
        self._fire("on_train_start")
        if self.step == 0 and cfg.eval.every and cfg.eval.source != "none":
            self.evaluate()  # every process calls evaluate/sample (they end with a barrier)
        bar = self._progress_bar()
        try:
            last = self._loop(bar)
        except BaseException:
            self.stream.close()
            raise
        if bar is not None:
            bar.close()
        self.finish(last)
        return last

    def _loop(self, bar) -> dict[str, Any]:
        cfg = self.cfg
        window: list[dict[str, float]] = []
        last: dict[str, Any] = {}
        while self.step < cfg.train.steps:
            t0 = time.perf_counter()
            micro = self.stream.next()
            t_data = time.perf_counter() - t0
            metrics = self.train_step(micro)
            self.step += 1
            self.position += self.global_batch
            if cfg.train.sleep_per_step:
                time.sleep(cfg.train.sleep_per_step)
            dt = time.perf_counter() - t0
            metrics.update(step_time=dt, data_time=t_data, samples_per_s=self.global_batch / dt)
            window.append(metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", sps=f"{metrics['samples_per_s']:.1f}")
            if self.step % cfg.log.every == 0 or self.step == cfg.train.steps:
                last = self._log_window(window)
                window = []
            self._fire("on_step_end", self.step, metrics)
            self._periodic()
        return last

    def _periodic(self) -> None:
        cfg, s = self.cfg, self.step
        if cfg.eval.source != "none" and cfg.eval.every and s % cfg.eval.every == 0:
            self.evaluate()
        if cfg.eval.source != "none" and cfg.eval.sample_every and s % cfg.eval.sample_every == 0:
            self.sample()
        if (cfg.checkpoint.every and s % cfg.checkpoint.every == 0) or s == cfg.train.steps:
            self.save_checkpoint()

    def _log_window(self, window: list[dict[str, float]]) -> dict[str, Any]:
        """Mean of the window's metrics; the loss averaged over processes too (a collective)."""
        mean = {k: sum(m[k] for m in window) / len(window) for k in window[0]}
        loss = torch.tensor([mean["loss"]], device=self.device)
        mean["loss"] = float(self.accelerator.reduce(loss, reduction="mean")[0])
        mean["samples_seen"] = self.position
        skipped = getattr(self.source, "skipped", None)
        if skipped is not None:
            mean["data/skipped"] = skipped
        mean["text_cache_hit_rate"] = self.cond.hits / max(self.cond.hits + self.cond.misses, 1)
        self.logger.log(self.step, mean)
        return mean

    def _progress_bar(self):
        if not (self.is_main and self.cfg.log.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.train.steps, initial=self.step, desc="sft", dynamic_ncols=True)

    def finish(self, last: dict[str, Any]) -> None:
        if self.cfg.checkpoint.export_final:
            self.export_pipeline(self.run_dir / "pipeline")
        self._fire("on_train_end", last)
        self.close()

    def close(self) -> None:
        """Release the stream and the loggers; restore torch's thread count and determinism flag."""
        self.stream.close()
        self.logger.close()
        torch.set_num_threads(self._saved_torch[0])
        torch.use_deterministic_algorithms(self._saved_torch[1])

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

    # ------------------------------------------------------------------ checkpoints
    def export_pipeline(self, folder: Path) -> Path:
        """`save_pretrained` of the pipeline (EMA weights if EMA is on, LoRA merged), written by the
        main process. Call it on every process: with a sharded engine the full state dict is
        gathered (a collective)."""
        from idcrafter.train.modes import export_view

        acc = self.accelerator
        ctx = self.ema.swapped() if self.ema is not None else nullcontext()
        with ctx:
            state = acc.get_state_dict(self.ddp_model) if self.sharded else None
            if self.is_main:
                scale = self.cfg.train.lora_alpha / self.cfg.train.lora_rank
                with export_view(self.pipe, state, scale) as pipe:
                    pipe.save_pretrained(str(folder))
        acc.wait_for_everyone()
        return folder

    def save_checkpoint(self) -> Path:
        """Atomic checkpoint of everything `--resume` needs (see `checkpoint.py`); every process
        takes part (RNG states per rank; sharded engines save their shards)."""
        acc, root = self.accelerator, self.run_dir / "checkpoints"
        tmp = ckpt.begin(root, self.step) if self.is_main else ckpt.checkpoint_dir(root, self.step).with_suffix(".tmp")
        acc.wait_for_everyone()
        rank = acc.process_index
        ckpt.write_json(tmp / f"rng_rank{rank}.json",
                        {"rng": ckpt.rng_state(), "skipped": sorted(getattr(self.source, "bad", set()))})
        if self.sharded:  # model + optimizer shards through accelerate; EMA shards per rank
            acc.save_state(str(tmp / "accelerate"))
            if self.ema is not None:
                ckpt.save_tensors(tmp / f"ema_rank{rank}.safetensors", _local(self.ema.state_dict()))
        if self.cfg.checkpoint.export_pipeline:
            self.export_pipeline(tmp / "pipeline")
        acc.wait_for_everyone()
        final = ckpt.checkpoint_dir(root, self.step)
        if self.is_main:
            if not self.sharded:
                ckpt.save_tensors(tmp / "trainable.safetensors", self.trainable)
                if self.ema is not None:
                    ckpt.save_tensors(tmp / "ema.safetensors", self.ema.state_dict())
                ckpt.save_torch_state(tmp / "optimizer.pt", self.optimizer.state_dict())
            ckpt.save_torch_state(tmp / "scheduler.pt", self.scheduler.state_dict())
            ckpt.write_json(tmp / ckpt.COMPLETE_MARKER, {
                "step": self.step, "position": self.position, "global_batch": self.global_batch,
                "world_size": acc.num_processes, "ema_updates": self.ema.updates if self.ema else 0,
                "sharded": self.sharded, "recipe": self.cfg.recipe})
            final = ckpt.commit(tmp)
            ckpt.prune(root, self.cfg.checkpoint.keep_last)
        acc.wait_for_everyone()
        self._fire("on_checkpoint", self.step, final)
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore weights, EMA, optimizer, scheduler, position and RNG states from `path`."""
        state = ckpt.read_json(path / ckpt.COMPLETE_MARKER)
        rank = self.accelerator.process_index
        if self.sharded:
            self.accelerator.load_state(str(path / "accelerate"))
            ema_file = path / f"ema_rank{rank}.safetensors"
        else:
            weights = ckpt.load_tensors(path / "trainable.safetensors")
            if set(weights) != set(self.trainable):
                raise InputError(f"{path}: its trainable weights do not match this config's (train.mode changed?)")
            with torch.no_grad():
                for n, p in self.trainable.items():
                    p.copy_(weights[n].to(p.device, p.dtype))
            self.optimizer.load_state_dict(ckpt.load_torch_state(path / "optimizer.pt"))
            ema_file = path / "ema.safetensors"
        if self.ema is not None and ema_file.is_file():
            self.ema.load_state_dict(ckpt.load_tensors(ema_file), state["ema_updates"])
        self.scheduler.load_state_dict(ckpt.load_torch_state(path / "scheduler.pt"))
        self.step, self.position = int(state["step"]), int(state["position"])
        rank_file = path / f"rng_rank{rank}.json"
        if rank_file.is_file():
            rank_state = ckpt.read_json(rank_file)
            ckpt.set_rng_state(rank_state["rng"])
            if hasattr(self.source, "bad"):
                self.source.bad.update(rank_state["skipped"])
        elif self.is_main:
            log.warning("%s has no RNG state for rank %d (world size changed)", path, rank)
        if self.is_main:
            log.info("resumed from %s (step %d, position %d)", path, self.step, self.position)


def run_sft(config: Config, run_dir: str | Path, resume: bool = False) -> dict[str, Any]:
    """Train with `config` into `run_dir` (the CLI's entry point)."""
    return Trainer(config, run_dir, resume=resume).train()


def _local(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's part of possibly sharded tensors (FSDP2 DTensors -> local shards)."""
    return {k: (v.to_local() if hasattr(v, "to_local") else v) for k, v in tensors.items()}
