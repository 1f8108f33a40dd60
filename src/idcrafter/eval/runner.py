"""The resumable evaluation runner behind `idcrafter eval`.

    out/
      .idcrafter             marks the folder as made by `idcrafter eval` (nothing else is overwritten)
      run.json               benchmark, model or videos folder, settings; a resume must match it
      videos/<key>.mp4       generated clips (with --model)
      cases/<key>.json       one record per case, written atomically once the case is scored
      results.json / .csv    averages, breakdowns, the OpenS2V Total, every case
      report.md / .html      tables, figures/ (metric bars, by number of subjects), sheets/ (best, worst)

Resuming: a case with a record of status "done" is skipped; a case that failed (its video
missing or corrupt, its references unreadable, generation failed) is retried; a clip generated
before an interruption but not yet scored is scored from its mp4 without generating it again.
Every case is scored from the mp4 on disk, so a resumed run and an uninterrupted one score
exactly the same bytes, and `--videos` mode scores any model's clips by the same code.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from idcrafter.errors import InputError
from idcrafter.eval.benchmark import BenchCase, Benchmark
from idcrafter.eval.suite import EvalConfig, Suite
from idcrafter.generation import GenerationSettings

TOOL = "idcrafter eval"


@dataclass
class RunSpec:
    benchmark: Benchmark
    out: Path
    model: Path | None = None
    videos: Path | None = None
    cases: int | None = None
    seed: int = 0
    settings: GenerationSettings = field(default_factory=GenerationSettings)
    config: EvalConfig = field(default_factory=EvalConfig)

    def identity(self) -> dict[str, Any]:
        s = self.settings
        return {"benchmark": self.benchmark.identity(), "cases": self.cases, "seed": self.seed,
                "model": str(Path(self.model).resolve()) if self.model else None,
                "videos": str(Path(self.videos).resolve()) if self.videos else None,
                "generation": {"steps": s.steps, "guidance": s.guidance, "guide_references": s.guide_references,
                               "negative_prompt": s.negative_prompt} if self.model else None}


def load_generator(model: Path, device: str | None = None):
    """A generator pipeline folder: its `model_index.json` names the class (`IDCrafterPipeline`,
    or any class registered in `GENERATORS` with the same call interface, e.g. a peer model)."""
    import importlib
    import json

    index = Path(model) / "model_index.json"
    if not index.is_file():
        raise InputError(f"{model} is not a pipeline folder (no model_index.json): pass a folder written by "
                         f"save_pretrained, e.g. assets/checkpoints/sprites-sft")
    name = json.loads(index.read_text()).get("_class_name", "IDCrafterPipeline")
    if name not in GENERATORS:
        raise InputError(f"{model} holds a {name}; idcrafter eval runs {', '.join(GENERATORS)}")
    if name == "IDCrafterPipeline":
        from idcrafter.devices import load_pipeline

        pipe = load_pipeline(model, device)
    else:
        module, _, cls = GENERATORS[name].partition(":")
        pipe = getattr(importlib.import_module(module), cls).from_pretrained(str(model), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


#: pipeline classes `idcrafter eval --model` can load (class name -> "module:Class")
GENERATORS = {"IDCrafterPipeline": "idcrafter.pipeline:IDCrafterPipeline",
              "PhantomPipeline": "idcrafter.peer:PhantomPipeline"}  # the issue-15 peer


def _check_out(spec: RunSpec, keys: list[str]) -> None:
    import hashlib
    import json

    from idcrafter.utils.io import atomic_write_json, check_writable_dir, mark_dir

    resumed = check_writable_dir(spec.out, TOOL, fix="another --out")
    spec.out.mkdir(parents=True, exist_ok=True)
    run_file = spec.out / "run.json"
    # the cases themselves (not the --cases spelling) must match: 16 and the default 16 are one run
    ident = {**spec.identity(), "cases": hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]}
    if resumed and run_file.is_file():
        old = json.loads(run_file.read_text())
        if old.get("identity") != ident:
            diff = sorted(k for k in ident if old.get("identity", {}).get(k) != ident[k])
            raise InputError(f"{spec.out} holds a run with other settings ({', '.join(diff)} differ): resume it with "
                             f"the same options or choose another --out")
    else:
        mark_dir(spec.out, TOOL)
        atomic_write_json(run_file, {"identity": ident, "config": spec.config.as_dict(), "created": time.time()})
    for sub in ("cases", "videos"):
        (spec.out / sub).mkdir(exist_ok=True)


def _finished(out: Path, key: str) -> dict[str, Any] | None:
    import json

    path = out / "cases" / f"{key}.json"
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if rec.get("status") == "done" else None


def write_video(path: Path, frames: np.ndarray, fps: int | None = None) -> Path:
    """mp4 written beside its final name and renamed in (a kill never leaves half a video).
    Small SpriteWorld clips are upscaled 4x (nearest) as `write_mp4` does; large ones are not."""
    from idcrafter.utils.media import write_mp4

    small = min(frames.shape[1:3]) < 128
    tmp = path.with_name(f".{path.stem}.partial.mp4")
    write_mp4(tmp, frames, fps=fps or (4 if small else 16), upscale=4 if small else 1)
    os.replace(tmp, path)
    return path


def score_case(case: BenchCase, video: Path, suite: Suite, world_size: tuple[int, int] | None) -> dict[str, Any]:
    """One case's record: every metric of the suite on the clip at `video` (errors per metric)."""
    from idcrafter.utils.media import read_video

    t0 = time.time()
    rec: dict[str, Any] = {"key": case.key, "prompt": case.prompt, "subjects": case.subjects, "video": str(video),
                           "metrics": {}, "errors": {}}
    try:
        frames = read_video(video) if video.is_file() else None
        if frames is None:
            raise InputError(f"video missing: {video} (name the clips <key>.mp4)")
        if world_size is not None and frames.shape[1:3] != world_size:
            from idcrafter.utils.media import resize_video

            frames = resize_video(frames, world_size)
        case.references  # noqa: B018 - load them now: an unreadable reference fails the case
    except InputError as exc:
        return {**rec, "status": "failed", "error": str(exc), "seconds": time.time() - t0}
    for m in suite.metrics:
        try:
            rec["metrics"].update(m.fn(frames, case))
        except Exception as exc:  # noqa: BLE001 - one metric failing leaves the others
            rec["errors"][m.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    rec["frames"] = int(len(frames))
    return {**rec, "status": "done", "seconds": time.time() - t0}


def run(spec: RunSpec, progress: bool = True) -> dict[str, Any]:
    """Generate (with a model) or read (with a videos folder) every case, score it, write the
    results and the report; returns the results."""
    from tqdm.auto import tqdm

    from idcrafter.eval.report import summarise, write_outputs
    from idcrafter.utils.io import atomic_write_json

    if (spec.model is None) == (spec.videos is None):
        raise InputError("pass exactly one of --model DIR (generate the cases) or --videos DIR (score <key>.mp4 files)")
    if spec.videos is not None and not Path(spec.videos).is_dir():
        raise InputError(f"--videos {spec.videos} is not a folder of <key>.mp4 clips")
    if spec.model is not None:  # sprites casts at the generator's own size (`Benchmark.for_model`)
        spec = replace(spec, benchmark=spec.benchmark.for_model(spec.model))
    cases = spec.benchmark.cases(spec.cases, spec.seed)
    _check_out(spec, [c.key for c in cases])
    suite = spec.benchmark.suite(spec.config)
    world = spec.benchmark.world_size if spec.benchmark.kind == "sprites" else None
    size = (world["height"], world["width"]) if world else None
    records: dict[str, dict[str, Any]] = {}
    todo = []
    for c in cases:
        rec = _finished(spec.out, c.key)
        if rec is not None:
            records[c.key] = rec
        else:
            todo.append(c)
    bar = tqdm(total=len(todo), desc="eval", disable=not progress)

    def finish(case: BenchCase, rec: dict[str, Any]) -> None:
        atomic_write_json(spec.out / "cases" / f"{case.key}.json", rec)
        records[case.key] = rec
        bar.update(1)

    try:
        if spec.videos is not None:
            for c in todo:
                finish(c, score_case(c, Path(spec.videos) / f"{c.key}.mp4", suite, size))
        else:
            _generate_and_score(spec, todo, suite, size, finish)
    finally:
        bar.close()
    results = summarise([records[c.key] for c in cases if c.key in records], spec, suite)
    write_outputs(spec.out, results, cases)
    return results


def _generate_and_score(spec: RunSpec, todo: list[BenchCase], suite: Suite, size, finish) -> None:
    from idcrafter.generation import generate_and_score

    videos = spec.out / "videos"
    pending = {c.key for c in todo if (videos / f"{c.key}.mp4").is_file()}  # generated, not yet scored
    to_generate = []
    for c in todo:
        if c.key in pending:
            finish(c, score_case(c, videos / f"{c.key}.mp4", suite, size))
            continue
        try:
            to_generate.append((c, c.generation_case()))
        except InputError as exc:  # unreadable references: this case fails, the others go on
            finish(c, {"key": c.key, "prompt": c.prompt, "subjects": c.subjects, "status": "failed",
                       "error": str(exc), "metrics": {}, "errors": {}})
    if not to_generate:
        return
    pipe = load_generator(spec.model, spec.config.device)
    by_key = {c.key: c for c, _ in to_generate}
    for res in generate_and_score(pipe, [g for _, g in to_generate], spec.settings, catch_errors=True):
        case = by_key[res.case.key]
        if res.frames is None:
            finish(case, {"key": case.key, "prompt": case.prompt, "subjects": case.subjects, "status": "failed",
                          "error": res.error, "metrics": {}, "errors": {}})
            continue
        path = write_video(videos / f"{case.key}.mp4", res.frames, getattr(pipe, "fps", None))
        rec = score_case(case, path, suite, size)
        rec["generation_seconds"] = res.seconds
        finish(case, rec)
