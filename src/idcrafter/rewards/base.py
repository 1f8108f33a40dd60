"""The reward interface: a class built with its device and weights path that scores a batch.

    reward = FaceReward(device="cpu", weights=None, backend="sprites")
    out = reward(RewardBatch(videos, references, prompts))  # videos: B clips (T, H, W, 3) uint8
    out["face"]          # (B,) float32 tensor, always finite
    out.valid["face"]    # (B,) bool: False where the sample could not be scored
    out.errors[b]        # why sample b (or one of its components) was not scored, else None

Contract every reward keeps:
- batched: one call scores B samples; subclasses override `score_batch` to share work across the
  batch (one forward over every frame of every clip) or `score_sample` for per-clip work;
- never raises mid-batch for one bad sample: an input it cannot score (no face found, a clip of
  the wrong shape, a model output that is NaN or infinite) gets the value `fill` (default 0.0,
  the lowest reward) with `valid` False and a reason, and the other samples are still scored;
- never returns NaN or inf;
- safe beside rollouts: a reward holds no global state, each instance serialises its own calls
  with a lock (so one instance may be shared by threads), and `RewardWorker` runs one in a
  background thread or in a spawned process with its own torch thread count (`RewardSpec` is
  the picklable recipe a process builds it from).
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from idcrafter.errors import InputError


@dataclass
class RewardBatch:
    """B samples: videos (T, H, W, 3) uint8 each, one list of reference images (H, W, 3) uint8 per
    sample, and one prompt (or None) per sample."""

    videos: list[np.ndarray]
    references: list[list[np.ndarray]]
    prompts: list[str | None]

    def __post_init__(self) -> None:
        b = len(self.videos)
        if len(self.references) != b or len(self.prompts) != b:
            raise InputError(f"a reward batch needs one reference list and one prompt per video: got {b} videos, "
                             f"{len(self.references)} reference lists, {len(self.prompts)} prompts")

    def __len__(self) -> int:
        return len(self.videos)

    @classmethod
    def from_pipeline(cls, frames: np.ndarray | torch.Tensor, references: Sequence[Sequence[np.ndarray]],
                      prompts: Sequence[str | None]) -> "RewardBatch":
        """From a pipeline's output in [0, 1]: numpy (B, F, H, W, 3) or a tensor (B, 3, F, H, W)."""
        from idcrafter.generation import to_uint8

        clips = to_uint8(frames)
        if clips.ndim != 5:
            raise InputError(f"pipeline frames must be batched (B, F, H, W, 3), got shape {clips.shape}")
        return cls(list(clips), [list(r) for r in references], list(prompts))


@dataclass
class RewardOutput:
    """Named per-sample components; see the module docstring for the contract."""

    values: dict[str, torch.Tensor]
    valid: dict[str, torch.Tensor]
    errors: list[str | None] = field(default_factory=list)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.values:
            raise InputError(f"no reward component {name!r}: this reward gives {', '.join(self.values)}")
        return self.values[name]

    def __contains__(self, name: str) -> bool:
        return name in self.values

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self.values)

    def all_valid(self, names: Sequence[str] | None = None) -> torch.Tensor:
        """(B,) True where every component in `names` (default: all) was scored."""
        names = list(names) if names is not None else list(self.valid)
        b = len(self.errors)
        out = torch.ones(b, dtype=torch.bool)
        for n in names:
            out &= self.valid[n]
        return out

    def merged(self, other: "RewardOutput") -> "RewardOutput":
        """Components of both (this one's win on a name clash); errors joined per sample."""
        values = {**other.values, **self.values}
        valid = {**other.valid, **self.valid}
        errors = [_join(a, b) for a, b in zip(self.errors, other.errors)]
        return RewardOutput(values, valid, errors)

    def as_rows(self) -> list[dict[str, float | None]]:
        """One dict per sample, None where a component was not scored (for logs and reports)."""
        rows = []
        for b in range(len(self.errors)):
            rows.append({k: (float(v[b]) if bool(self.valid[k][b]) else None) for k, v in self.values.items()})
        return rows


def _refusing_audit(init: Any) -> Any:
    """`init`, then (in the outermost `__init__` only, when the reward is whole) the audit check:
    a reward built on the audit judge raises `AuditRewardError`."""
    import functools

    @functools.wraps(init)
    def checked(self: "Reward", *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        if type(self).__init__ is checked:
            from idcrafter.judge.audit import refuse_as_reward

            refuse_as_reward(self)
    return checked


def _join(a: str | None, b: str | None) -> str | None:
    parts = [p for p in (a, b) if p]
    return "; ".join(parts) if parts else None


class Reward:
    """Base class. Subclasses set `name` and `components` and implement `score_sample`
    (one clip -> {component: float}) or override `score_batch`."""

    name: ClassVar[str] = "reward"
    components: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # every reward, once built, refuses the audit judge (`judge.audit.refuse_as_reward`)
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__ = _refusing_audit(cls.__dict__["__init__"])  # type: ignore[method-assign]

    def __init__(self, device: str | torch.device = "cpu", weights: str | Path | None = None, fill: float = 0.0):
        self.device = torch.device(device)
        self.weights = Path(weights) if weights is not None else None
        if not math.isfinite(fill):
            raise InputError(f"the fill value of unscorable samples must be finite, got {fill}")
        self.fill = float(fill)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ to implement
    def score_sample(self, video: np.ndarray, refs: list[np.ndarray], prompt: str | None) -> dict[str, float]:
        raise NotImplementedError

    def score_batch(self, batch: RewardBatch) -> list[dict[str, float] | BaseException]:
        """One entry per sample: its component values, or the exception that stopped it."""
        out: list[dict[str, float] | BaseException] = []
        for video, refs, prompt in zip(batch.videos, batch.references, batch.prompts):
            try:
                out.append(self.score_sample(check_clip(video), list(refs), prompt))
            except Exception as exc:  # noqa: BLE001 - one bad sample must not stop the batch
                out.append(exc)
        return out

    # ------------------------------------------------------------------ the contract
    def __call__(self, batch: RewardBatch) -> RewardOutput:
        with self._lock, torch.no_grad():
            try:
                rows = self.score_batch(batch)
            except Exception as exc:  # noqa: BLE001 - a failure of the whole batch flags every sample
                rows = [exc] * len(batch)
        if len(rows) != len(batch):
            raise RuntimeError(f"{type(self).__name__}.score_batch returned {len(rows)} rows for {len(batch)} samples")
        return assemble(rows, self.components, self.fill)


def assemble(rows: Sequence[dict[str, float] | BaseException], components: Sequence[str],
             fill: float) -> RewardOutput:
    """Per-sample dicts (or exceptions) -> finite tensors + validity + reasons."""
    b = len(rows)
    values = {c: torch.full((b,), fill, dtype=torch.float32) for c in components}
    valid = {c: torch.zeros(b, dtype=torch.bool) for c in components}
    errors: list[str | None] = [None] * b
    for i, row in enumerate(rows):
        if isinstance(row, BaseException):
            errors[i] = describe(row)
            continue
        bad = []
        for c in components:
            v = row.get(c)
            if v is None:
                bad.append(f"{c} undefined")
                continue
            v = float(v)
            if not math.isfinite(v):
                bad.append(f"{c} was {v}")
                continue
            values[c][i] = v
            valid[c][i] = True
        if bad:
            errors[i] = ", ".join(bad)
    return RewardOutput(values, valid, errors)


def describe(exc: BaseException) -> str:
    """A one-line reason for a flagged sample."""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def check_clip(video: Any) -> np.ndarray:
    """A (T, H, W, 3) uint8 clip with T >= 1, or InputError (the sample is then flagged)."""
    v = np.asarray(video)
    if v.ndim != 4 or v.shape[-1] != 3 or v.shape[0] < 1:
        raise InputError(f"a clip must be (T, H, W, 3), got shape {v.shape}")
    if v.dtype != np.uint8:
        if not np.issubdtype(v.dtype, np.floating) or not np.isfinite(v).all():
            raise InputError(f"a clip must be uint8 (or finite floats in [0, 1]), got {v.dtype}")
        from idcrafter.generation import to_uint8

        v = to_uint8(v)
    return v


def sample_indices(num_frames: int, count: int) -> np.ndarray:
    """OpenS2V's frame sampling: `np.linspace(0, T - 1, count, dtype=int)` (repeats frames of
    clips shorter than `count`, as the published scripts do)."""
    return np.linspace(0, num_frames - 1, count, dtype=int)


# ---------------------------------------------------------------------- beside rollouts
@dataclass(frozen=True)
class RewardSpec:
    """A picklable recipe for a reward: `idcrafter.rewards.build_reward(name, device, weights,
    **options)`; what a worker process builds its reward from."""

    name: str
    device: str = "cpu"
    weights: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    def build(self) -> Reward:
        from idcrafter.rewards import build_reward

        return build_reward(self.name, device=self.device, weights=self.weights, **dict(self.options))


_WORKER_REWARD: Reward | None = None


def _init_worker(spec: RewardSpec, threads: int) -> None:
    global _WORKER_REWARD
    torch.set_num_threads(threads)
    _WORKER_REWARD = spec.build()


def _worker_score(batch: RewardBatch) -> RewardOutput:
    assert _WORKER_REWARD is not None, "reward worker not initialised"
    return _WORKER_REWARD(batch)


class RewardWorker:
    """Scores batches in the background while rollouts continue: `submit(batch)` returns a
    Future of the RewardOutput. `mode="thread"` shares the process (a reward instance or a spec);
    `mode="process"` builds the reward from a `RewardSpec` in a spawned process (no fork of a
    process holding torch threads) with `threads` torch threads; as for any spawned process, the
    program's main module must guard its work with `if __name__ == "__main__":`."""

    def __init__(self, reward: Reward | RewardSpec, mode: str = "thread", threads: int = 1):
        if mode not in ("thread", "process"):
            raise InputError(f"reward worker mode must be thread or process, got {mode!r}")
        self.mode = mode
        if mode == "thread":
            self._reward = reward if isinstance(reward, Reward) else reward.build()
            self._pool: Any = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward")
        else:
            if not isinstance(reward, RewardSpec):
                raise InputError("a process reward worker is built from a RewardSpec (a picklable recipe), "
                                 "not from a reward instance")
            import multiprocessing as mp

            self._pool = ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"),
                                             initializer=_init_worker, initargs=(reward, int(threads)))

    def submit(self, batch: RewardBatch) -> "Future[RewardOutput]":
        if self.mode == "thread":
            return self._pool.submit(self._reward, batch)
        return self._pool.submit(_worker_score, batch)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "RewardWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
