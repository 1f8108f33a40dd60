"""The SFT config: nested dataclasses, each section with a `build()`.

Sections live next to what they build (`ModelConfig` in `idcrafter.builder`, `DataConfig` in
`train.data`, `OptimConfig` in `train.optim`) and are imported here, so builders never import
this module back.

`Config` is what a recipe (`idcrafter.recipes`) returns, what `key=value` overrides edit
(`idcrafter.config.apply_overrides`) and what the run folder keeps as `config.json`.

Batch sizes: `data.batch_size` is per process and per micro-step; one optimizer step sees
`data.batch_size * num_processes * train.grad_accum` examples (the *global batch*), and the data
position advances by exactly that, so a run is the same function of (config, step) whatever the
number of processes (up to floating-point reduction order).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from idcrafter.builder import ModelConfig  # noqa: F401 - the model section lives next to its builder
from idcrafter.errors import InputError
from idcrafter.train.data import DataConfig  # noqa: F401 - lives next to its builder
from idcrafter.train.optim import OptimConfig  # noqa: F401 - lives next to its builder

MODES = ("full", "adapters", "lora")
PRECISIONS = ("no", "bf16", "fp16")
WAN_LORA_TARGETS: tuple[str, ...] = (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
    "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0",
    "ffn.net.0.proj", "ffn.net.2",
)


@dataclass
class LossConfig:
    """Rectified flow (`idcrafter.train.losses`): z_t = (1-t) z0 + t eps, target eps - z0.

    Timesteps: t = sigmoid(logit_mean + logit_std * n), n ~ N(0, 1), then flow-shifted with
    `timestep_shift` (t' = s t / (1 + (s - 1) t); 1 = no shift). `weighting`: "none" or
    "cosmap" (SD3's 2 / (pi (1 - 2t + 2t^2))). Pixels of subjects (ground-truth masks) weigh
    `subject_weight` times background pixels. Condition dropout for guidance: with probability
    drop_both both conditions are dropped (the guidance's unconditional branch), else drop_text
    only the prompt (empty prompt), else drop_refs only the references (no subject).
    """

    logit_mean: float = 0.0
    logit_std: float = 1.0
    timestep_shift: float = 3.0
    weighting: str = "none"
    subject_weight: float = 3.0
    drop_text: float = 0.05
    drop_refs: float = 0.05
    drop_both: float = 0.1

    def validate(self) -> None:
        if min(self.drop_text, self.drop_refs, self.drop_both) < 0 or \
                self.drop_text + self.drop_refs + self.drop_both > 1:
            raise InputError("loss.drop_text, drop_refs and drop_both must be >= 0 and sum to at most 1")
        if self.weighting not in ("none", "cosmap"):
            raise InputError(f"loss.weighting must be 'none' or 'cosmap', got {self.weighting!r}")
        if self.timestep_shift <= 0 or self.logit_std <= 0:
            raise InputError("loss.timestep_shift and loss.logit_std must be > 0")


@dataclass
class TrainConfig:
    """The loop. `mode`: "full" (every transformer weight), "adapters" (only the new subject
    modules, `model.new_parameters()`), "lora" (peft LoRA on the base targets + new modules)."""

    steps: int = 40_000  # the schedule's length (warm-up + decay are laid over it)
    stop_at: int = 0  # > 0: this process stops after that step, the schedule still spans `steps` (run pieces, milestones)
    grad_accum: int = 1
    mode: str = "full"
    lora_rank: int = 32
    lora_alpha: int = 32
    lora_targets: tuple[str, ...] = WAN_LORA_TARGETS
    mixed_precision: str = "bf16"  # "no" | "bf16" | "fp16" (fp16 on GPUs only)
    gradient_checkpointing: bool = False
    ema_decay: float = 0.999  # 0 = no EMA
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms
    threads: int = 0  # torch.set_num_threads when > 0
    text_cache_size: int = 4096  # captions whose T5 states are kept (LRU)
    find_unused_parameters: bool = False
    sleep_per_step: float = 0.0  # tests only: slow a run down so it can be killed mid-way

    def validate(self) -> None:
        if self.mode not in MODES:
            raise InputError(f"train.mode must be one of {MODES}, got {self.mode!r}")
        if self.mixed_precision not in PRECISIONS:
            raise InputError(f"train.mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        if self.steps < 1 or self.grad_accum < 1:
            raise InputError("train.steps and train.grad_accum must be >= 1")
        if not 0 <= self.stop_at <= self.steps:
            raise InputError(f"train.stop_at must be in [0, train.steps={self.steps}] (0 = run to the end), "
                             f"got {self.stop_at}")
        if not 0 <= self.ema_decay < 1:
            raise InputError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")


@dataclass
class CheckpointConfig:
    every: int = 500  # steps; 0 = only at the end
    keep_last: int = 3
    keep_every: int = 0  # steps; checkpoints at its multiples are kept past keep_last (0 = none)
    export_pipeline: bool = True  # also write <checkpoint>/pipeline (EMA weights when EMA is on)
    export_final: bool = True  # write <run>/pipeline at the end


@dataclass
class EvalConfig:
    """Periodic measurements on held-out data (main process only).

    Reference gap (DESIGN.md section 8) every `every` steps on a fixed batch of `batch_size`
    held-out clips; sample videos every `sample_every` steps (0 = never); the judge scores them
    when `judge` is set.
    """

    every: int = 250
    source: str = "procedural"  # like data.source; "none" disables the reference gap
    path: str | None = None
    split: str = "heldout"
    seed: int = 1234
    batch_size: int = 8
    timesteps: tuple[float, ...] = (0.3, 0.6, 0.9)
    use_ema: bool = True
    sample_every: int = 2000
    sample_steps: int = 20
    sample_guidance: float = 2.5
    sample_subjects: int = 2
    judge: bool = False


@dataclass
class LogConfig:
    every: int = 10
    tensorboard: bool = True
    wandb: bool = False  # only if wandb is installed
    wandb_project: str = "idcrafter"
    progress: bool = True


@dataclass
class Config:
    recipe: str = "sprites"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def validate(self) -> "Config":
        from idcrafter.validation import validate_train_config

        self.loss.validate()
        self.train.validate()
        validate_train_config(self)  # values that make no sense: optim.lr <= 0 or NaN, checkpoint.every < 0, ...
        if self.data.source not in ("procedural", "folder", "manifest"):
            raise InputError(f"data.source must be procedural, folder or manifest, got {self.data.source!r}")
        if self.data.source != "procedural" and not self.data.path:
            raise InputError(f"data.source={self.data.source} needs data.path")
        if self.model.codec == "wan-vae" and (self.data.frames - 1) % 4:
            raise InputError(f"the Wan VAE needs 4k+1 frames; data.frames={self.data.frames}")
        if self.data.batch_size < 1 or self.eval.batch_size < 1:
            raise InputError("data.batch_size and eval.batch_size must be >= 1")
        if self.data.curriculum:
            from idcrafter.train.data import parse_curriculum

            parse_curriculum(self.data.curriculum)
            if self.data.source != "procedural":
                raise InputError(f"data.curriculum needs data.source=procedural, got {self.data.source!r}")
        if self.data.latent_cache:
            from idcrafter.train.latent_cache import check_cache_config

            check_cache_config(self)  # before a run folder exists: a missing or mismatched cache fails at once
        from idcrafter.build import check_real_path_config

        check_real_path_config(self)  # sides the codec x patch take; a Wan folder that fits the preset
        return self
