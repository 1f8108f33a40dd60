"""The training engine every trainer builds on: SFT, GRPO, NFT, DPO and the reward model.

    class MyTrainer(Engine):
        run_tool = "idcrafter train mine"
        def setup(self): self.begin_setup(); ...; self.setup_model(pipe, trainable); self.finish_setup()
        def run_step(self) -> dict: ...        # one unit of `train.steps` (an optimizer step, an RL iteration)

What the engine owns, so no trainer repeats it:
- torch set-up (threads, determinism; restored by `close`), the `accelerate.Accelerator`, the
  run folder's safety (a folder holding another run is refused: `--resume` / `--overwrite`;
  anything else is never written into) and its marker, `config.json`, the metrics logger
  (`metrics.jsonl`, TensorBoard, wandb);
- the trainable weights, the optimizer and lr schedule, EMA, and one `optimizer_step` (grad
  clip, optional skip of non-finite gradients, scheduler, EMA);
- gradient synchronisation: either the model is handed to `accelerator.prepare` (DDP / FSDP2 /
  DeepSpeed, `wrap=True`, what SFT does: every process runs the same micro-batches), or it stays
  unwrapped and `sync_gradients` all-reduces the accumulated gradients once per optimizer step
  (`wrap=False`, what the RL trainers do: ranks may train different numbers of micro-batches,
  e.g. after dropping zero-advantage groups, which would deadlock DDP's per-backward all-reduce);
- atomic checkpoints with exact resume (`checkpoint.py`): weights, EMA, optimizer, scheduler,
  per-rank RNG states, plus whatever a trainer adds through `checkpoint_state` /
  `restore_state` (JSON) and `checkpoint_tensors` / `restore_tensors` (safetensors);
- the loop (`train`): progress bar, metric windows averaged over `log.every` steps, periodic
  evaluation (`evaluate_if_due`) and checkpoints, hooks.

Hooks: override `on_train_start`, `on_step_end(step, metrics)`, `on_eval(step, metrics)`,
`on_checkpoint(step, path)`, `on_train_end(metrics)` in a subclass, or pass `callbacks` (objects
with any of these methods, called with the trainer first).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch

from idcrafter.config import config_to_dict, save_config
from idcrafter.errors import InputError
from idcrafter.train import checkpoint as ckpt

log = logging.getLogger(__name__)
HOOKS = ("on_train_start", "on_step_end", "on_eval", "on_checkpoint", "on_train_end")


def slow_bf16_warning(mixed_precision: str) -> str | None:
    """One line why bf16 autocast will be slow here, or None. PyTorch's CPU kernels have no fast
    bf16 path below AVX-512: on an AVX2 EPYC (2026-12-04) a `sprites-latent` step took 11.4 s
    under bf16 against 2.5 s in fp32, and the Wan VAE's Conv3d encode of 16 clips 37 s against 1.0 s."""
    if mixed_precision != "bf16" or torch.cuda.is_available():
        return None
    capability = torch.backends.cpu.get_cpu_capability()
    if capability.startswith("AVX512"):
        return None
    return (f"train.mixed_precision=bf16 on a CPU without AVX-512 ({capability}) runs 4-40x slower than fp32: "
            "add train.mixed_precision=no (a latent cache must then be built with it too)")


def make_accelerator(train_cfg):
    """An `Accelerator` for a `TrainConfig` (a fresh AcceleratorState, so several trainers with
    different precisions can run in one process, e.g. in tests)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    from idcrafter.train.distributed import honour_launch_config

    AcceleratorState._reset_state()
    ddp = DistributedDataParallelKwargs(find_unused_parameters=train_cfg.find_unused_parameters)
    acc = Accelerator(mixed_precision=train_cfg.mixed_precision, cpu=not torch.cuda.is_available(),
                      kwargs_handlers=[ddp])
    return honour_launch_config(acc, train_cfg.mixed_precision)  # FSDP on CPU processes, or one line why not


class Engine:
    """Shared machinery of a training run (module docstring). `cfg` must have the sections
    `model`, `train` (`TrainConfig`), `optim`, `checkpoint`, `log` and a `recipe` name."""

    run_tool: ClassVar[str] = "idcrafter train"
    # what a run writes into its folder: the only entries `overwrite=True` deletes
    run_entries: ClassVar[tuple[str, ...]] = ("config.json", "metrics.jsonl", "checkpoints", "tensorboard",
                                              "samples", "pipeline", "audit", "report.json", "features",
                                              "reward_model", "eval.json", ".idcrafter")
    progress_name: ClassVar[str] = "train"

    def __init__(self, config: Any, run_dir: str | Path, resume: bool = False, callbacks: list | None = None,
                 overwrite: bool = False):
        self.cfg = config.validate()
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.overwrite = overwrite
        if resume and overwrite:
            raise InputError("--resume continues the run in --run-dir and --overwrite replaces it: pass only one")
        self.callbacks = list(callbacks or [])
        self.step = 0  # units of `train.steps` done
        self.updates = 0  # optimizer steps taken (skipped ones not counted)
        self.ema = None
        self.sharded = self.deepspeed = False
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

    # ------------------------------------------------------------------ to implement
    def setup(self) -> None:
        """Build everything (call `begin_setup`, `setup_model`, `maybe_resume`, `finish_setup`)."""
        raise NotImplementedError

    def run_step(self) -> dict[str, Any]:
        """One unit of `train.steps`; returns its scalar metrics."""
        raise NotImplementedError

    def evaluate_if_due(self, step: int) -> None:
        """Periodic measurements after step `step` (default: none). Called on every process."""

    def checkpoint_state(self) -> dict[str, Any]:
        """JSON-able trainer state saved with each checkpoint (e.g. a data position)."""
        return {}

    def restore_state(self, state: dict[str, Any]) -> None:
        """Inverse of `checkpoint_state` (gets the whole `state.json`)."""

    def checkpoint_tensors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Extra tensor files {name: tensors} saved (main process) as `<name>.safetensors`."""
        return {}

    def restore_tensors(self, files: dict[str, dict[str, torch.Tensor]]) -> None:
        """Inverse of `checkpoint_tensors`."""

    def rank_state(self) -> dict[str, Any]:
        """JSON-able per-process state saved beside the RNG states (e.g. skipped items)."""
        return {}

    def restore_rank_state(self, state: dict[str, Any]) -> None:
        """Inverse of `rank_state`."""

    # ------------------------------------------------------------------ set-up
    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def begin_setup(self) -> None:
        """Threads, determinism, the accelerator, the run folder's safety check, the seed."""
        tc = self.cfg.train
        self._saved_torch = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        if tc.deterministic:
            torch.use_deterministic_algorithms(True)
        self.accelerator = make_accelerator(tc)
        self.device = self.accelerator.device
        self.claim_run_dir()
        torch.manual_seed(tc.seed)

    def claim_run_dir(self) -> None:
        """Refuse a run folder this run must not write into. Every process checks before the
        barrier, the main process deletes (with `overwrite`) only after it."""
        from idcrafter.utils.io import check_writable_dir, remove_entries

        d, acc = self.run_dir, self.accelerator
        owned = check_writable_dir(d, self.run_tool, fix="", signature=("config.json", "metrics.jsonl"))
        if owned and not self.resume and not self.overwrite:
            raise InputError(f"{d} already holds a training run: pass --resume to continue it, --overwrite to "
                             "delete it and start a new run there, or choose another --run-dir")
        acc.wait_for_everyone()
        if owned and self.overwrite and self.is_main:
            removed = remove_entries(d, self.run_entries)
            log.info("--overwrite: removed %s from %s", ", ".join(p.name for p in removed) or "nothing", d)
        acc.wait_for_everyone()

    def setup_model(self, pipe, trainable: dict[str, torch.nn.Parameter], wrap: bool = True,
                    model: torch.nn.Module | None = None) -> None:
        """Adopt the pipeline (or, with `pipe=None`, another `model`, e.g. a reward model) and its
        trainable weights: optimizer + schedule over `train.steps`, device placement,
        `accelerator.prepare` (with `wrap`) or plain placement (without), EMA."""
        from idcrafter.train.ema import EMA

        tc = self.cfg.train
        self.pipe = pipe
        self.model = model if model is not None else pipe.transformer
        self.trainable = trainable
        if tc.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        self.model.train()
        if pipe is not None:
            self.pipe.set_progress_bar_config(disable=True)
            self.pipe.to(self.device)  # frozen encoders / codec; prepare places the transformer itself
        optimizer, self.scheduler = self.cfg.optim.build(list(self.trainable.values()), tc.steps)
        self.wrapped = wrap
        if wrap:
            self._prepare_engine(optimizer)
        else:
            self.model.to(self.device)
            self.ddp_model, self.optimizer = self.model, optimizer
        self.ema = EMA(self.trainable, tc.ema_decay) if tc.ema_decay > 0 else None

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
            ds.deepspeed_config["train_micro_batch_size_per_gpu"] = self.micro_batch_size()
            if ds.zero_stage == 3 and cfg.train.ema_decay > 0:
                raise InputError("DeepSpeed ZeRO-3 partitions the weights: set train.ema_decay=0 (or use FSDP)")
        from idcrafter.train.distributed import check_shardable

        check_shardable(self.model, acc.distributed_type)
        self.ddp_model, self.optimizer = acc.prepare(self.model, optimizer)
        if self.sharded:
            self.trainable = {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def micro_batch_size(self) -> int:
        """Rows per process and micro-step (DeepSpeed wants it); trainers override."""
        return 1

    def finish_setup(self, resumed: bool) -> None:
        """Write the run folder's marker and `config.json`, open the metrics logger."""
        from idcrafter.train.logger import MetricsLogger
        from idcrafter.utils.io import ensure_dir, mark_dir

        if self.is_main:
            ensure_dir(self.run_dir)
            mark_dir(self.run_dir, self.run_tool)
            save_config(self.cfg, self.run_dir / "config.json")
        self.logger = MetricsLogger(self.run_dir, self.cfg.log, self.is_main, config_to_dict(self.cfg),
                                    resume_step=self.step if resumed else None)
        if self.is_main:
            n_train = sum(p.numel() for p in self.trainable.values())
            n_all = sum(p.numel() for p in self.model.parameters())
            log.info("%s: trainable %d / %d parameters (%s); %s", self.progress_name, n_train, n_all,
                     self.cfg.train.mode, "resumed at step %d" % self.step if resumed else "new run")
        self._ready = True

    def maybe_resume(self) -> bool:
        """Load the newest complete checkpoint when resuming; False when there is none."""
        path = ckpt.latest_checkpoint(self.run_dir / "checkpoints") if self.resume else None
        if path is None:
            if self.resume and self.is_main:
                log.info("no checkpoint in %s: starting a new run", self.run_dir)
            return False
        self.load_checkpoint(path)
        return True

    # ------------------------------------------------------------------ gradients
    def sync_gradients(self, reduce: str = "mean") -> None:
        """All-reduce the accumulated gradients of the trainable weights over processes: `reduce`
        "mean" (each rank's loss is a mean over its own rows) or "sum" (each rank's loss is
        already divided by the global count, as the RL trainers do). A no-op for one process or
        a wrapped (DDP/FSDP/DeepSpeed) model, which syncs itself. Missing gradients count as
        zeros, so every rank takes part with the same buffers."""
        if reduce not in ("mean", "sum"):
            raise ValueError(f"reduce must be mean or sum, got {reduce!r}")
        if self.world_size == 1 or self.wrapped:
            return
        import torch.distributed as dist

        params = list(self.trainable.values())
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        flat = torch.cat([p.grad.flatten() for p in params])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if reduce == "mean":
            flat /= self.world_size
        offset = 0
        for p in params:
            n = p.numel()
            p.grad.copy_(flat[offset: offset + n].view_as(p))
            offset += n

    def optimizer_step(self, skip_nonfinite: bool = False, reduce: str = "mean") -> dict[str, Any]:
        """Sync (unwrapped models, `reduce` as in `sync_gradients`), clip the global grad norm, step
        optimizer and scheduler, EMA.

        `skip_nonfinite`: a NaN/inf gradient norm skips the update (gradients are dropped, the
        weights and optimizer state untouched; every rank sees the same reduced norm, so all skip
        together) and is reported as `skipped_update` 1. The schedule still advances, so the lr
        stays a function of the step.
        """
        self.sync_gradients(reduce)
        params = list(self.trainable.values())
        clip = self.cfg.optim.grad_clip
        grad_norm = self.accelerator.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        norm = float("nan") if grad_norm is None else float(grad_norm)
        skipped = skip_nonfinite and not math.isfinite(norm)
        if not skipped:
            self.optimizer.step()
            self.updates += 1
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None and not skipped:
            self.ema.update()
        return {"grad_norm": norm, "lr": self.scheduler.get_last_lr()[0], "skipped_update": int(skipped)}

    # ------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Run until `train.stop_at` (when > 0) or `train.steps`; returns the last logged metrics."""
        if not self._ready:
            self.setup()
        # after setup, so a run refused for bad input prints its one-line error and nothing else
        if self.is_main and (why := slow_bf16_warning(self.cfg.train.mixed_precision)) is not None:
            log.warning(why)
        self._fire("on_train_start")
        self.before_loop()
        bar = self.progress_bar()
        try:
            last = self._loop(bar)
        except BaseException:
            self.abort()
            raise
        if bar is not None:
            bar.close()
        self.finish(last)
        return last

    def before_loop(self) -> None:
        """Called once before the first step of this process's loop (e.g. an evaluation at step 0)."""

    def abort(self) -> None:
        """Release what a crashed loop holds (the default closes nothing: `close` does)."""

    def _loop(self, bar) -> dict[str, Any]:
        cfg = self.cfg
        window: list[dict[str, Any]] = []
        last: dict[str, Any] = {}
        end = self.end_step
        self._stop_requested = False
        while self.step < end and not self._stop_requested:
            t0 = time.perf_counter()
            metrics = self.run_step()
            self.step += 1
            if getattr(cfg.train, "sleep_per_step", 0):
                time.sleep(cfg.train.sleep_per_step)
            metrics["step_time"] = time.perf_counter() - t0
            window.append(metrics)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(self.postfix(metrics))
            if self.step % cfg.log.every == 0 or self.step == end:
                last = self.log_window(window)
                window = []
            self._fire("on_step_end", self.step, metrics)
            self.evaluate_if_due(self.step)
            if (cfg.checkpoint.every and self.step % cfg.checkpoint.every == 0) or self.step == end \
                    or self._stop_requested:
                self.save_checkpoint()
        return last

    @property
    def end_step(self) -> int:
        """The step this process stops after: `train.stop_at` when > 0, else `train.steps`."""
        return self.cfg.train.stop_at or self.cfg.train.steps

    def request_stop(self) -> None:
        """End the loop after the current step, checkpointed (e.g. the RL hacking monitor's stop).
        The config is untouched, so a `--resume` continues the same schedule."""
        self._stop_requested = True

    def postfix(self, metrics: dict[str, Any]) -> dict[str, str]:
        """What the progress bar shows after a step."""
        return {k: f"{metrics[k]:.4f}" for k in ("loss", "reward") if isinstance(metrics.get(k), float)}

    def log_window(self, window: list[dict[str, Any]]) -> dict[str, Any]:
        """Mean of the window's numeric metrics (NaN-free entries only), logged at this step."""
        keys = dict.fromkeys(k for m in window for k in m)
        mean: dict[str, Any] = {}
        for k in keys:
            vals = [float(m[k]) for m in window if isinstance(m.get(k), (int, float))]
            finite = [v for v in vals if math.isfinite(v)]
            if vals:
                mean[k] = sum(finite) / len(finite) if finite else float("nan")
        mean = self.summarise_window(mean)
        self.logger.log(self.step, mean)
        return mean

    def summarise_window(self, mean: dict[str, Any]) -> dict[str, Any]:
        """Adjust a window's means before logging (e.g. average a loss over processes)."""
        return mean

    def progress_bar(self):
        if not (self.is_main and self.cfg.log.progress):
            return None
        from tqdm import tqdm

        return tqdm(total=self.end_step, initial=self.step, desc=self.progress_name, dynamic_ncols=True)

    def finish(self, last: dict[str, Any]) -> None:
        if self.cfg.checkpoint.export_final:
            self.export_pipeline(self.run_dir / "pipeline", atomic=True)
        self._fire("on_train_end", last)
        self.close()

    def close(self) -> None:
        """Release the loggers; restore torch's thread count and determinism flag."""
        if getattr(self, "logger", None) is not None:
            self.logger.close()
        if hasattr(self, "_saved_torch"):
            torch.set_num_threads(self._saved_torch[0])
            torch.use_deterministic_algorithms(self._saved_torch[1])

    # ------------------------------------------------------------------ checkpoints
    def export_pipeline(self, folder: Path, atomic: bool = False) -> Path:
        """`save_pretrained` of the pipeline (EMA weights if EMA is on, LoRA merged), written by the
        main process. Call it on every process: with a sharded engine the full state dict is
        gathered (a collective). `atomic`: written beside `folder`, then swapped in whole
        (`utils.io.replace_dir`), so a kill never leaves a half-written folder."""
        from idcrafter.train.modes import export_view
        from idcrafter.utils.io import replace_dir, temp_dir_beside

        acc = self.accelerator
        ctx = self.ema.swapped() if self.ema is not None else nullcontext()
        with ctx:
            state = acc.get_state_dict(self.ddp_model) if self.sharded else None
            if self.is_main:
                tc = self.cfg.train
                target = temp_dir_beside(folder) if atomic else folder
                try:
                    with export_view(self.pipe, state, tc.lora_alpha / tc.lora_rank) as pipe:
                        pipe.save_pretrained(str(target))
                    if atomic:
                        replace_dir(target, folder)
                except BaseException:
                    if atomic:
                        shutil.rmtree(target, ignore_errors=True)
                    raise
        acc.wait_for_everyone()
        return folder

    def save_checkpoint(self) -> Path:
        """Atomic checkpoint of everything `--resume` needs (see `checkpoint.py`); every process
        takes part (RNG states per rank; sharded engines save their shards)."""
        acc, root = self.accelerator, self.run_dir / "checkpoints"
        tmp = ckpt.begin(root, self.step) if self.is_main else ckpt.checkpoint_dir(root, self.step).with_suffix(".tmp")
        acc.wait_for_everyone()
        rank = self.rank
        ckpt.write_json(tmp / f"rng_rank{rank}.json", {"rng": ckpt.rng_state(), **self.rank_state()})
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
            for name, tensors in self.checkpoint_tensors().items():
                ckpt.save_tensors(tmp / f"{name}.safetensors", tensors)
            ckpt.save_torch_state(tmp / "scheduler.pt", self.scheduler.state_dict())
            ckpt.write_json(tmp / ckpt.COMPLETE_MARKER, {
                "step": self.step, "updates": self.updates, "world_size": self.world_size,
                "ema_updates": self.ema.updates if self.ema else 0, "sharded": self.sharded,
                "recipe": self.cfg.recipe, "device": str(acc.device), **self.checkpoint_state()})
            final = ckpt.commit(tmp)
            ckpt.prune(root, self.cfg.checkpoint.keep_last, self.cfg.checkpoint.keep_every)
        acc.wait_for_everyone()
        self._fire("on_checkpoint", self.step, final)
        return final

    def load_checkpoint(self, path: Path) -> None:
        """Restore weights, EMA, optimizer, scheduler, trainer state and RNG states from `path`."""
        state = ckpt.read_json(path / ckpt.COMPLETE_MARKER)
        rank = self.rank
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
        extra = {}
        for name in self.checkpoint_tensors():
            f = path / f"{name}.safetensors"
            if not f.is_file():
                raise InputError(f"{path} has no {f.name}: it was not written by this trainer")
            extra[name] = ckpt.load_tensors(f)
        self.restore_tensors(extra)
        self.step, self.updates = int(state["step"]), int(state.get("updates", state["step"]))
        self.restore_state(state)
        rank_file = path / f"rng_rank{rank}.json"
        if rank_file.is_file():
            rank_state = ckpt.read_json(rank_file)
            ckpt.set_rng_state(rank_state["rng"])
            self.restore_rank_state(rank_state)
        elif self.is_main:
            log.warning("%s has no RNG state for rank %d (world size changed)", path, rank)
        if self.is_main:
            log.info("resumed from %s (step %d)", path, self.step)


def _local(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This rank's part of possibly sharded tensors (FSDP2 DTensors -> local shards)."""
    return {k: (v.to_local() if hasattr(v, "to_local") else v) for k, v in tensors.items()}
