"""Configs of the online RL trainers (GRPO, NFT): nested dataclasses, like the SFT config.

A run is `train.steps` *iterations*. One iteration: `rollout.groups` conditions (prompt +
references, drawn from `data` at positions i * groups ... (i + 1) * groups - 1, so the iteration's
conditions are a pure function of i), `rollout.group_size` samples each, spread over the
processes; rewards; advantages; then the trainer's update (GRPO: clipped ratio over the SDE
steps; NFT: forward-process loss on the clean samples). Sections shared with SFT (`model`,
`data`, `optim`, `train`, `checkpoint`, `log`) mean the same thing there; `train.steps` counts
iterations, `data.batch_size` is unused (rollout batches are `rollout.batch_size`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from idcrafter.builder import ModelConfig
from idcrafter.errors import InputError
from idcrafter.train.config import CheckpointConfig, DataConfig, LogConfig, TrainConfig
from idcrafter.train.optim import OptimConfig


@dataclass
class RolloutConfig:
    """How samples are drawn. `guidance` 1 = rollouts (and the trained velocity) without CFG, the
    Flow-GRPO maintainers' advice (train without CFG plus a KL, test with it); another value makes
    the policy the guided velocity in both. `shared_noise`: every sample of a group starts from the
    same initial noise (diversity then comes from the SDE noise only). `batch_size`: rows per
    process sampled together, and the training micro-batch (the same rows, so the first update
    reproduces the rollout's numbers exactly: ratio 1, KL 0)."""

    groups: int = 2
    group_size: int = 8
    batch_size: int = 8
    steps: int = 10
    guidance: float = 1.0
    negative_prompt: str = ""
    guide_references: bool = True
    sde_type: str = "flow"  # "flow" (Flow-GRPO SDE) or "cps"; NFT also accepts "ode"
    noise_level: float | None = None  # a (flow, default 0.7) or eta (cps, default 0.8)
    shared_noise: bool = False
    window_size: int = 0  # SDE steps per rollout (0 = every step but the last); ODE elsewhere
    window_start: int = 0
    window_slide_every: int = 0  # iterations; 0 = fixed window, else MixGRPO-style sliding
    window_stride: int = 1  # steps the window moves each time it slides
    frames: int | None = None  # sample size (None = the pipeline's defaults)
    height: int | None = None
    width: int | None = None

    def validate(self) -> None:
        if self.groups < 1 or self.group_size < 1 or self.batch_size < 1 or self.steps < 2:
            raise InputError("rollout.groups, group_size, batch_size must be >= 1 and rollout.steps >= 2")
        if self.sde_type not in ("flow", "cps", "ode"):
            raise InputError(f"rollout.sde_type must be flow, cps or ode, got {self.sde_type!r}")
        if self.window_size < 0 or self.window_start < 0 or self.window_slide_every < 0 or self.window_stride < 1:
            raise InputError("rollout.window_* must be >= 0 (window_stride >= 1)")
        if self.guidance < 1:
            raise InputError(f"rollout.guidance must be >= 1 (1 = no guidance), got {self.guidance}")


@dataclass
class RewardConfig:
    """The reward: `name` is a built-in of `idcrafter.rl.rewards` (brightness, colour) or any
    reward of `idcrafter.rewards.build_reward` (composite, judge, face, ...), built with `path`
    (its weights folder) and `options`. `weights` combine its components ({component: weight});
    `aggregation` "reward" (weighted sum, then advantages) or "advantage" (z-score each component
    in its group, then weight)."""

    name: str = "brightness"
    weights: dict[str, float] = field(default_factory=lambda: {"brightness": 1.0})
    aggregation: str = "reward"
    std: str = "group"  # advantages' std: "group" or "global"
    adv_clip: float = 5.0
    path: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if self.aggregation not in ("reward", "advantage"):
            raise InputError(f"reward.aggregation must be reward or advantage, got {self.aggregation!r}")
        if self.std not in ("group", "global"):
            raise InputError(f"reward.std must be group or global, got {self.std!r}")
        if not self.weights:
            raise InputError("reward.weights is empty: give at least one component a weight")
        if self.adv_clip <= 0:
            raise InputError(f"reward.adv_clip must be > 0, got {self.adv_clip}")


@dataclass
class MonitorConfig:
    """The hacking monitor (`idcrafter.rl.monitor`): every `every` iterations the policy (EMA
    weights when EMA is on) generates `n` fixed held-out cases, the `scorer` (never the reward)
    scores them, and `audit/<metric>` is logged. A flag is raised when the reward rose over the
    last `window` evaluations while an audit metric fell by more than `tolerance`; with `stop`,
    training ends there. `every=0` disables it."""

    every: int = 0
    scorer: str = "sprites-audit"
    scorer_path: str | None = None
    n: int = 4
    split: str = "heldout"
    seed: int = 1234
    steps: int = 10
    guidance: float = 2.5
    metrics: tuple[str, ...] = ("face_sim_mean", "quality", "natural")
    window: int = 3
    tolerance: float = 0.02
    stop: bool = False


@dataclass
class GRPOConfig:
    """Flow-GRPO's update (DESIGN.md section 4). `clip_range`: ratio clip e; `beta`: KL weight to
    the reference (LoRA: the adapter disabled; full: the initial weights); `timestep_fraction`:
    share of the SDE steps trained each iteration (a random subset, the same for every sample);
    `guard`: GRPO-Guard's ratio re-centring and 1/|dt| step weights; `inner_epochs`: passes over
    the rollouts; `updates`: optimizer steps per pass (the micro-batches split evenly);
    `min_std`: SDE steps whose noise std is below it are never trained (CPS's step into the
    schedule's smallest sigma has std 0.008: its exact log-density and KL scale as 1/std^2 and
    drowned every other step's gradient, see `grpo.py`)."""

    clip_range: float = 1e-3
    beta: float = 0.004
    timestep_fraction: float = 0.9
    guard: bool = False
    min_std: float = 0.02
    inner_epochs: int = 1
    updates: int = 1
    drop_zero_groups: bool = True

    def validate(self) -> None:
        if self.clip_range <= 0 or self.beta < 0:
            raise InputError("grpo.clip_range must be > 0 and grpo.beta >= 0")
        if not 0 < self.timestep_fraction <= 1:
            raise InputError(f"grpo.timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.inner_epochs < 1 or self.updates < 1:
            raise InputError("grpo.inner_epochs and grpo.updates must be >= 1")
        if not (self.min_std >= 0 and math.isfinite(self.min_std)):
            raise InputError(f"grpo.min_std must be a finite number >= 0, got {self.min_std}")


@dataclass
class NFTConfig:
    """DiffusionNFT's update (DESIGN.md section 4). `beta`: the mixing coefficient b of v+ / v-
    (not a KL weight); `form`: "velocity" (DESIGN's loss) or "x0" (the official code's
    self-normalised x0-space loss); `adv_scale`: the advantage that maps to certainty (r = 0 or 1);
    `timesteps`: forward-noised t per sample per pass, drawn
    uniformly in [t_min, t_max]; the old policy is an EMA of the current one with decay
    min(old_rate * iteration, old_max) (the official schedule: on-policy first, slower later);
    `kl`: weight of ||v_theta - v_ref||^2 to the reference (0 = off)."""

    beta: float = 1.0
    form: str = "velocity"
    adv_scale: float = 5.0  # r = 1/2 + 1/2 clip(A / adv_scale, -1, 1) (the official adv_clip_max)
    timesteps: int = 2
    t_min: float = 0.02
    t_max: float = 0.98
    old_rate: float = 0.001
    old_max: float = 0.5
    kl: float = 0.0
    inner_epochs: int = 1
    updates: int = 1
    drop_zero_groups: bool = True

    def validate(self) -> None:
        if self.beta <= 0 or self.form not in ("velocity", "x0") or self.adv_scale <= 0:
            raise InputError("nft.beta and nft.adv_scale must be > 0 and nft.form velocity or x0")
        if self.timesteps < 1 or not 0 <= self.t_min < self.t_max <= 1:
            raise InputError("nft.timesteps must be >= 1 and 0 <= nft.t_min < nft.t_max <= 1")
        if not 0 <= self.old_max < 1 or self.old_rate < 0 or self.kl < 0:
            raise InputError("nft.old_max must be in [0, 1), nft.old_rate and nft.kl >= 0")
        if self.inner_epochs < 1 or self.updates < 1:
            raise InputError("nft.inner_epochs and nft.updates must be >= 1")


def _rl_train() -> TrainConfig:
    return TrainConfig(steps=100, mode="lora", lora_rank=32, lora_alpha=32, mixed_precision="no", ema_decay=0.9)


@dataclass
class RLConfig:
    """Sections shared by the RL trainers (module docstring)."""

    recipe: str = "debug"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=0, schedule="constant"))
    train: TrainConfig = field(default_factory=_rl_train)
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=10, export_pipeline=False))
    log: LogConfig = field(default_factory=lambda: LogConfig(every=1, tensorboard=False))
    monitor: MonitorConfig = field(default_factory=MonitorConfig)

    def validate(self) -> "RLConfig":
        self.rollout.validate()
        self.reward.validate()
        self.train.validate()
        if self.data.source not in ("procedural", "folder", "manifest"):
            raise InputError(f"data.source must be procedural, folder or manifest, got {self.data.source!r}")
        if self.data.source != "procedural" and not self.data.path:
            raise InputError(f"data.source={self.data.source} needs data.path")
        if self.optim.lr < 0 or self.optim.lr != self.optim.lr:
            raise InputError(f"optim.lr must be a number >= 0, got {self.optim.lr}")
        if self.checkpoint.every < 0 or self.log.every < 1:
            raise InputError("checkpoint.every must be >= 0 and log.every >= 1")
        return self


@dataclass
class GRPORunConfig(RLConfig):
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def validate(self) -> "GRPORunConfig":
        super().validate()
        self.grpo.validate()
        if self.rollout.sde_type == "ode":
            raise InputError("GRPO needs stochastic rollouts: rollout.sde_type must be flow or cps (ode is for NFT)")
        return self


@dataclass
class NFTRunConfig(RLConfig):
    nft: NFTConfig = field(default_factory=NFTConfig)

    def validate(self) -> "NFTRunConfig":
        super().validate()
        self.nft.validate()
        return self
