"""Held-out evaluation on real clips: a manifest's held-out items, real-face metrics.

The real-data counterpart of `idcrafter.heldout` (SpriteWorld casts judged by the SpriteWorld
judge). For the first `n` readable items of a held-out manifest (the same reader, sizes and
reference preparation as training: `train.data.ManifestSource`), the pipeline generates a clip
from the item's caption and references, and a real-face scorer (`idcrafter.scorers`, dlib's
face detector and 128-d face model by default: it ships with the package) scores the generated
clip and the item's own clip against the same references. As with SpriteWorld, the ground
truth's figures are reported beside the generated ones, never alone: they are what the face
model gives a real video of these people.

Metrics: `face_sim_mean`, `face_sim_min` (cosine of each reference's face with its matched
face track), `leakage` (how much more a subject resembles another reference than its own),
`motion_px_per_frame`. A generated clip without a face scores 0 for that subject; an item whose
reference has no detectable face cannot be scored at all, so it is listed with the reason and
left out of the means (`config["scored"]` says how many were scored).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np

REAL_METRICS = ("face_sim_mean", "face_sim_min", "leakage", "motion_px_per_frame")


def manifest_cases(data_cfg: Any, n: int, seed: int) -> list:
    """`generation.Case`s of the first `n` readable items of the manifest `data_cfg.path`, at
    `data_cfg`'s clip size (unreadable items are skipped, as in training)."""
    from idcrafter.generation import Case
    from idcrafter.train.data import ManifestSource

    cfg = dataclasses.replace(data_cfg, source="manifest", seed=seed, limit=None, bucket_by_subjects=False)
    src = ManifestSource(cfg)
    cases = []
    for i in range(min(n, len(src.items))):
        s = src.get(i)
        cases.append(Case(key=f"case_{i:02d}", prompt=s.caption, references=list(s.refs), seed=seed + i,
                          size=tuple(s.frames.shape[:3]), ground_truth=s.frames, meta={"subjects": len(s.refs)}))
    return cases


def evaluate_manifest(pipe, data_cfg: Any, n: int = 8, steps: int = 30, guidance: float = 2.5, seed: int = 1234,
                      scorer: str = "dlib", out_dir: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Generate and score `n` held-out manifest items (module docstring). Returns
    {"kind": "manifest", "generated", "ground_truth", "gap", "cases", "config", "seconds"}; with
    `out_dir`, writes `heldout.json` and the first case's contact sheet."""
    from idcrafter.generation import GenerationSettings, generate_and_score
    from idcrafter.scorers import build_scorer
    from idcrafter.utils.io import atomic_write_json, ensure_dir
    from idcrafter.utils.media import contact_sheet, save_image

    t0 = time.time()
    cases = manifest_cases(data_cfg, n, seed)
    judge = build_scorer(scorer)
    rows = []
    results = generate_and_score(pipe, cases, GenerationSettings(steps=steps, guidance=guidance), None,
                                 progress=progress, desc="held-out (real)")
    out = ensure_dir(out_dir) if out_dir is not None else None
    for i, res in enumerate(results):
        truth, gen, error = _score_pair(judge, res.frames, res.case)
        rows.append({"caption": res.case.prompt, "subjects": len(res.case.references), "error": error,
                     "generated": gen, "ground_truth": truth})
        if out is not None and i == 0:
            save_image(out / f"{res.case.key}.png", contact_sheet(
                [("references", res.case.references), ("generated", list(res.frames)),
                 ("ground truth", list(res.case.ground_truth))]))
    mean = {side: {k: _mean([r[side][k] for r in rows]) for k in REAL_METRICS} for side in ("generated", "ground_truth")}
    result = {"kind": "manifest", **mean,
              "gap": {k: mean["generated"][k] - mean["ground_truth"][k] for k in REAL_METRICS},
              "cases": rows, "seconds": time.time() - t0,
              "config": {"manifest": str(data_cfg.path), "n": len(rows), "seed": seed, "steps": steps,
                         "scored": sum(r["error"] is None for r in rows),
                         "guidance": guidance, "scorer": scorer,
                         "size": [data_cfg.frames, data_cfg.height, data_cfg.width]}}
    if out is not None:
        atomic_write_json(out / "heldout.json", result, indent=2)
    return result


def _score_pair(judge: Any, frames: np.ndarray, case: Any) -> tuple[dict, dict, str | None]:
    """(ground-truth metrics, generated metrics, error) of one case. The ground truth is scored
    first: if it cannot be (no face in a reference or in the real clip), the case is not
    scorable. A generated clip in which no face is found scores 0 (no subject's face is there,
    so none leaks either); its motion is still measured."""
    from idcrafter.errors import InputError
    from idcrafter.judge.metrics import motion_amplitude

    empty = {k: None for k in REAL_METRICS}
    try:
        truth = judge.score(case.ground_truth, case.references, case.prompt).metrics
    except InputError as exc:
        return empty, dict(empty), f"not scorable: {exc}"
    try:
        gen = judge.score(frames, case.references, case.prompt).metrics
    except InputError:
        gen = {"face_sim_mean": 0.0, "face_sim_min": 0.0, "leakage": 0.0,
               "motion_px_per_frame": float(motion_amplitude(frames))}
    return {k: truth.get(k) for k in REAL_METRICS}, {k: gen.get(k) for k in REAL_METRICS}, None


def _mean(values: list) -> float:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else float("nan")


def real_metrics_table(result: dict[str, Any]) -> str:
    """Markdown table: metric | generated | ground truth."""
    lines = ["| metric | generated | ground truth |", "|---|---|---|"]
    lines += [f"| {k} | {result['generated'][k]:.3f} | {result['ground_truth'][k]:.3f} |" for k in REAL_METRICS]
    return "\n".join(lines)
