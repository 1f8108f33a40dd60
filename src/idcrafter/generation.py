"""The one generate-then-score loop: `idcrafter generate`, `demo`, `eval heldout`, `train export`,
the trainer's sample videos and `idcrafter eval` all call it.

    cases = [Case(key="a", prompt=caption, references=refs, seed=0, size=(9, 48, 48))]
    for res in generate_and_score(pipe, cases, GenerationSettings(steps=20), scorer=SpritesScorer()):
        res.frames      # (T, H, W, 3) uint8, the only float -> uint8 conversion (`to_uint8`)
        res.report      # the scorer's ScoreReport of the generated clip
        res.truth       # the same scorer on the case's ground truth, when asked for

Each case draws its initial noise from its own seed exactly as `IDCrafterPipeline.__call__`
does (`torch.randn((1, *latent_shape), generator=Generator().manual_seed(seed))`), so a case's
video does not depend on which other cases share its batch, on `batch_size`, or on whether a
resumed run generates it alone.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import torch

from idcrafter.errors import InputError

if TYPE_CHECKING:
    from idcrafter.scorers import ScoreReport, Scorer


def to_uint8(video: np.ndarray | torch.Tensor) -> np.ndarray:
    """Float frames in [0, 1] -> uint8 (round half up, clipped).

    Accepts numpy (..., H, W, 3) (the pipeline's "np" output) or a torch tensor (B, 3, F, H, W)
    / (3, F, H, W) (its "pt" output), which is permuted to (B, F, H, W, 3) / (F, H, W, 3).
    """
    if isinstance(video, torch.Tensor):
        v = video.detach().float().cpu()
        if v.ndim not in (4, 5) or v.shape[-4] != 3:
            raise InputError(f"a video tensor must be (B, 3, F, H, W) or (3, F, H, W), got {tuple(v.shape)}")
        v = v.movedim(-4, -1).numpy()  # (..., F, H, W, 3)
    else:
        v = np.asarray(video, dtype=np.float32)
    return (v * 255 + 0.5).clip(0, 255).astype(np.uint8)


@dataclass(frozen=True)
class GenerationSettings:
    """How every case is sampled (the pipeline's own defaults where None)."""

    steps: int = 20
    guidance: float = 2.5
    guide_references: bool = True  # False: references stay in guidance's unconditional branch
    negative_prompt: str = ""
    batch_size: int = 1  # cases of equal size sampled together
    sampler: str = "ode"  # or an RL rollout sampler, "flow" / "cps" (step noise seeded per case)
    noise_level: float | None = None  # the stochastic sampler's (None = its default)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise InputError(f"steps and batch_size must be >= 1, got {self.steps} and {self.batch_size}")
        from idcrafter.sampling import sampler_kwargs

        sampler_kwargs(self.sampler, self.noise_level, None)  # an unknown sampler or level is refused here


SDE_SEED_OFFSET = 7_919  # a case's step noise is seeded apart from its initial noise


@dataclass
class Case:
    """One prompt + references to generate. `size` = (frames, height, width), None entries
    take the pipeline's defaults; `ground_truth` (T, H, W, 3) uint8 when the world knows it."""

    key: str
    prompt: str
    references: list[np.ndarray]
    seed: int = 0
    size: tuple[int | None, int | None, int | None] = (None, None, None)
    ground_truth: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class CaseResult:
    case: Case
    frames: np.ndarray | None  # (T, H, W, 3) uint8; None when generation failed
    report: "ScoreReport | None" = None
    truth: "ScoreReport | None" = None
    error: str | None = None
    seconds: float = 0.0


@contextmanager
def eval_mode(pipe):
    """The transformer in eval mode for the block, its training flag restored afterwards."""
    was_training = pipe.transformer.training
    pipe.transformer.eval()
    try:
        yield pipe
    finally:
        pipe.transformer.train(was_training)


def _device(pipe) -> torch.device:
    """Where the pipeline runs its denoiser (diffusers' execution device when it has one)."""
    try:
        return pipe._execution_device
    except AttributeError:
        return pipe.transformer.device


def _batches(cases: Sequence[Case], size: int) -> Iterator[list[Case]]:
    """Consecutive runs of equal-size cases, at most `size` each (order kept)."""
    batch: list[Case] = []
    for c in cases:
        if batch and (len(batch) == size or tuple(c.size) != tuple(batch[0].size)):
            yield batch
            batch = []
        batch.append(c)
    if batch:
        yield batch


@torch.no_grad()
def generate_batch(pipe, cases: Sequence[Case], settings: GenerationSettings,
                   callback: Callable[[int, int], None] | None = None) -> list[np.ndarray]:
    """Sample equal-size `cases` in one pipeline call -> one (T, H, W, 3) uint8 clip each.
    `callback(i, N)` runs after each denoising step (the server's progress and cancellation)."""
    f, h, w = cases[0].size
    h2, w2, f2 = pipe.check_size(h, w, f)
    shape = (1, *pipe.codec.latent_shape(f2, h2, w2))
    latents = torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(int(c.seed)),
                                     dtype=torch.float32) for c in cases]).to(_device(pipe))
    with eval_mode(pipe):
        video = pipe([c.prompt for c in cases], [list(c.references) for c in cases], height=h2, width=w2,
                     num_frames=f2, num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                     negative_prompt=settings.negative_prompt, latents=latents,
                     guide_references=settings.guide_references, callback=callback,
                     sampler=settings.sampler, noise_level=settings.noise_level,
                     noise_generator=None if settings.sampler == "ode" else
                     [torch.Generator().manual_seed(int(c.seed) + SDE_SEED_OFFSET) for c in cases],
                     ).frames  # (B, T, H, W, 3) in [0, 1]
    return list(to_uint8(video))


def generate(pipe, cases: Sequence[Case], settings: GenerationSettings | None = None) -> list[np.ndarray]:
    """Every case's clip, (T, H, W, 3) uint8, in case order."""
    settings = settings or GenerationSettings()
    return [clip for batch in _batches(cases, settings.batch_size) for clip in generate_batch(pipe, batch, settings)]


def generate_and_score(pipe, cases: Sequence[Case], settings: GenerationSettings | None = None,
                       scorer: "Scorer | None" = None, score_truth: bool = False, catch_errors: bool = False,
                       progress: bool = False, desc: str = "generate",
                       on_result: Callable[[CaseResult], None] | None = None,
                       callback: Callable[[int, int], None] | None = None) -> Iterator[CaseResult]:
    """Generate each case, score it (and its ground truth with `score_truth`), yield results in
    case order. With `catch_errors` a case whose generation or scoring fails yields a result
    with `error` set and the loop goes on; otherwise the error propagates. `callback(i, N)` runs
    after each denoising step of each batch (see `generate_batch`)."""
    from tqdm.auto import tqdm

    settings = settings or GenerationSettings()
    bar = tqdm(total=len(cases), desc=desc, disable=not progress)
    try:
        for batch in _batches(cases, settings.batch_size):
            t0 = time.time()
            try:
                clips: list[np.ndarray | None] = list(generate_batch(pipe, batch, settings, callback))
                gen_error = None
            except Exception as exc:  # noqa: BLE001 - reported per case when asked to
                if not catch_errors:
                    raise
                clips, gen_error = [None] * len(batch), f"generation failed: {type(exc).__name__}: {exc}"
            per_case = (time.time() - t0) / len(batch)
            for case, clip in zip(batch, clips):
                res = CaseResult(case, clip, error=gen_error, seconds=per_case)
                if clip is not None and scorer is not None:
                    _score_into(res, scorer, score_truth, catch_errors)
                if on_result is not None:
                    on_result(res)
                bar.update(1)
                yield res
    finally:
        bar.close()


def _score_into(res: CaseResult, scorer: "Scorer", score_truth: bool, catch_errors: bool) -> None:
    case = res.case
    try:
        res.report = scorer.score(res.frames, case.references, case.prompt)
        if score_truth and case.ground_truth is not None:
            res.truth = scorer.score(case.ground_truth, case.references, case.prompt)
    except Exception as exc:  # noqa: BLE001
        if not catch_errors:
            raise
        res.error = f"scoring failed: {type(exc).__name__}: {exc}"
