"""A served model: where the server generates and scores, on the shared code paths.

`ModelSlot.run` generates with the one generate-then-score loop (`idcrafter.generation.
generate_and_score`, the loop `idcrafter generate`, `demo` and `eval` use), on a pipeline
loaded by `idcrafter.devices.load_pipeline` (the `--device` / `--dtype` rules of every command),
and scores per subject with a scorer of `idcrafter.scorers`:
- SpriteWorld models (pixel codec): the SpriteWorld judge (`assets/judge`);
- other models: dlib's real-face detector and descriptor when `face-recognition-models` is
  installed (its weights ship in that package), else no identity figures, with a note.

Departures for serving: a prompt the SpriteWorld judge cannot parse (free text rather than a
SpriteWorld caption) is scored without action accuracy instead of refused, and a clip the
scorer cannot measure (no subject found in a reference, say) is still delivered, with a note.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from idcrafter.errors import InputError, MissingWeightsError
from idcrafter.scorers import ScoreReport, Scorer
from idcrafter.serve.limits import GenerateRequest, ModelBounds, Range, ServeLimits
from idcrafter.utils.io import atomic_write_bytes, atomic_write_json

log = logging.getLogger("idcrafter.serve")

#: progress reporter: (fraction 0..1, stage). Raising `JobCancelled` from it stops the job.
Report = Callable[[float, str], None]


class JobCancelled(Exception):
    """Raised from a progress report to stop a job (client cancel or server stop)."""


class TolerantScorer:
    """A scorer that never fails a served job: free-text prompts are scored without actions,
    unmeasurable clips give an empty report; `details["notes"]` says what happened."""

    def __init__(self, scorer: Scorer, label: str):
        self.inner, self.name, self.label = scorer, scorer.name, label

    def score(self, frames: np.ndarray, refs: Sequence[np.ndarray], prompt: str | None = None) -> ScoreReport:
        notes: list[str] = []
        try:
            try:
                report = self.inner.score(frames, refs, prompt)
            except InputError as exc:
                if prompt is None or not ("prompt" in str(exc) or "clause" in str(exc)):
                    raise
                notes.append(f"action_acc not scored: {exc}")
                report = self.inner.score(frames, refs, None)
        except InputError as exc:
            return ScoreReport({}, [], {"notes": [f"not scored: {exc}"]})
        report.details = {**report.details, "notes": notes + list(report.details.get("notes", []))}
        return report


def pick_scorer(pipe: Any) -> tuple[TolerantScorer | None, str | None]:
    """The identity scorer for a pipeline, or (None, why not)."""
    from idcrafter.models.codecs import PixelCodec
    from idcrafter.scorers import RealFaceScorer, SpritesScorer

    if isinstance(pipe.vae, PixelCodec):
        try:
            return TolerantScorer(SpritesScorer(), "SpriteWorld judge"), None
        except (InputError, OSError) as exc:
            return None, f"no SpriteWorld judge ({exc}): identity figures are off"
    try:
        return TolerantScorer(RealFaceScorer("dlib"), "dlib face recognition"), None
    except (MissingWeightsError, InputError, OSError) as exc:
        return None, f"no real-face scorer ({exc}): identity figures are off"


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class JobResult:
    metrics: dict[str, float | None]
    per_subject: list[dict]
    notes: list[str]
    settings: dict  # the settings the pipeline ran with (after its size rounding)
    files: dict[str, str] = field(default_factory=dict)  # kind -> file name in the job's result folder


class ModelSlot:
    """One loaded pipeline on one device, its settings bounds and its identity scorer."""

    def __init__(self, name: str, path: Path, pipe: Any, device: str, dtype: str, limits: ServeLimits,
                 scorer: TolerantScorer | None = None, scorer_note: str | None = None):
        self.name, self.path, self.pipe = name, Path(path), pipe
        self.device, self.dtype, self.limits = device, dtype, limits
        self.scorer, self.scorer_note = scorer, scorer_note
        self.bounds = model_bounds(pipe, limits)

    @property
    def kind(self) -> str:
        from idcrafter.models.codecs import PixelCodec

        return "spriteworld" if isinstance(self.pipe.vae, PixelCodec) else "real"

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "device": self.device, "dtype": self.dtype,
                "scorer": self.scorer.label if self.scorer else None, "scorer_note": self.scorer_note,
                "max_refs": self.bounds.max_refs, "settings": self.bounds.as_dict()}

    def run(self, req: GenerateRequest, ref_paths: list[Path], out: Path, report: Report) -> JobResult:
        """Generate and score with the shared loop, write `video.mp4`, `sheet.png` and
        `metrics.json` into `out`."""
        from idcrafter.encoders.references import prepare_reference
        from idcrafter.generation import Case, GenerationSettings, generate_and_score
        from idcrafter.utils.media import contact_sheet, write_mp4

        pipe = self.pipe
        report(0.0, "preparing references")
        # exactly what `idcrafter generate` feeds the pipeline: each file through prepare_reference
        refs = [prepare_reference(p, pipe.config.reference_size) for p in ref_paths]  # (S, S, 3) uint8
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            h, w, f = pipe.check_size(req.height, req.width, req.frames)
        notes = [str(c.message) for c in caught]  # the size rounding, said once

        def on_step(i: int, n: int) -> None:
            stage = f"denoising step {i + 1}/{n}" if i + 1 < n else "decoding and scoring identity"
            report(0.02 + 0.86 * (i + 1) / n, stage)

        report(0.01, "encoding prompt and references")
        case = Case(key="job", prompt=req.prompt, references=refs, seed=req.seed, size=(f, h, w))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            (res,) = generate_and_score(pipe, [case], GenerationSettings(steps=req.steps, guidance=req.cfg),
                                        scorer=self.scorer, callback=on_step)
        frames = res.frames  # (T, H, W, 3) uint8
        report(0.9, "writing the video")
        tmp = out / ".video.tmp.mp4"
        write_mp4(tmp, frames)
        os.replace(tmp, out / "video.mp4")
        atomic_write_bytes(out / "sheet.png", _png_bytes(contact_sheet([("references", refs),
                                                                      ("generated", list(frames))])))
        metrics, per_subject = {}, []
        if res.report is None:
            notes.append(self.scorer_note or "no identity scorer for this model")
        else:
            metrics, per_subject = res.report.metrics, res.report.per_subject
            notes += res.report.details.get("notes", [])
        settings = {**req.settings(), "frames": f, "height": h, "width": w}
        atomic_write_json(out / "metrics.json", {"model": self.name, "prompt": req.prompt, "settings": settings,
                                                 "scorer": self.scorer.label if self.scorer else None,
                                                 "metrics": metrics, "per_subject": per_subject, "notes": notes})
        return JobResult(metrics, per_subject, notes, settings,
                         {"video": "video.mp4", "sheet": "sheet.png", "metrics": "metrics.json"})


def model_bounds(pipe: Any, limits: ServeLimits) -> ModelBounds:
    """Settings bounds of one pipeline: its maximum subjects (capped by the server), steps and
    guidance from the server limits, frames/size up to `limits.size_factor` x its defaults."""
    pc, tc = pipe.config, pipe.transformer.config
    m = pipe.codec.spatial_factor * int(tc.patch_size[1])  # the size granularity (check_size rounds to it)
    k = int(limits.size_factor)

    def grid(default: int) -> Range:
        return Range(m, max(default * k, m), default)

    return ModelBounds(
        max_refs=min(limits.max_refs, int(tc.max_subjects)),
        steps=Range(1, limits.max_steps, min(20, limits.max_steps)),
        cfg=Range(1.0, limits.max_cfg, min(2.5, limits.max_cfg)),
        seed=Range(0, limits.max_seed, 0),
        frames=Range(1, max(pc.default_frames * k, 1), pc.default_frames),
        height=grid(int(pc.default_height)), width=grid(int(pc.default_width)))


def load_slot(path: str | Path, device: str | None = None, dtype: str | None = None, name: str | None = None,
              limits: ServeLimits | None = None) -> ModelSlot:
    """Load a pipeline folder (local files only) with the shared device/dtype rules
    (`idcrafter.devices`; None = auto), with its identity scorer."""
    from idcrafter.devices import load_pipeline, resolve_device, resolve_dtype

    path = Path(path)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = load_pipeline(path, dev, dt)
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.eval()
    scorer, note = pick_scorer(pipe)
    dt_name = str(dt).removeprefix("torch.")
    slot = ModelSlot(name or path.name, path, pipe, str(dev), dt_name, limits or ServeLimits(), scorer, note)
    log.info("loaded %s from %s on %s (%s); scorer: %s", slot.name, path, dev, dt_name,
             scorer.label if scorer else note)
    return slot


@dataclass(frozen=True)
class Example:
    """A held-out SpriteWorld cast for the page: its caption and reference PNGs."""

    caption: str
    refs: tuple[bytes, ...]


def heldout_examples(slots: list[ModelSlot], n: int = 6, seed: int = 1234) -> list[Example]:
    """The first `n` casts of `idcrafter eval heldout` (same seed, same cast sizes), sized for the
    first SpriteWorld model; none when no model is a SpriteWorld model."""
    from idcrafter.heldout import HeldoutConfig, heldout_cases

    sprite = next((s for s in slots if s.kind == "spriteworld"), None)
    if sprite is None or n < 1:
        return []
    cases = heldout_cases(sprite.pipe, HeldoutConfig(n=n, seed=seed))
    return [Example(ex.caption, tuple(_png_bytes(r) for r in ex.refs)) for ex in cases
            if len(ex.refs) <= sprite.bounds.max_refs]
