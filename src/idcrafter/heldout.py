"""Held-out evaluation of a generator on SpriteWorld, next to the ground truth's own figures.

For each of `n` held-out casts (identities never seen in training, 2-3 subjects, references and
caption from SpriteWorld) the pipeline generates a clip; the judge scores the generated clip and
the ground-truth render of the same cast against the same references and caption. The ground
truth's figures are the ceiling the judge can give on this world, so every generated figure is
reported beside it (`generated` vs `ground_truth`), never alone.

    from idcrafter.heldout import HeldoutConfig, evaluate_heldout
    result = evaluate_heldout(IDCrafterPipeline.from_pretrained(dir), HeldoutConfig(n=16))
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from idcrafter.errors import InputError

#: the scalar judge metrics reported (higher is better except leakage)
METRICS = ("face_sim_mean", "face_sim_min", "subject_sim", "leakage", "action_acc", "motion",
           "quality", "natural", "copy_paste", "total")


@dataclass
class HeldoutConfig:
    n: int = 16
    seed: int = 1234
    subjects: tuple[int, ...] = (2, 3)  # cast sizes, cycled over the cases
    steps: int = 20
    guidance: float = 2.5
    guide_references: bool = True  # False: references stay in guidance's unconditional branch
    sample_seed: int = 0
    sheets: int = 4  # contact sheets written for the first cases (when out_dir is given)


def heldout_cases(pipe, cfg: HeldoutConfig) -> list:
    """The held-out SpriteWorld examples, sized like the pipeline's defaults."""
    from idcrafter.world.dataset import make_example
    from idcrafter.world.scene import WorldConfig

    if cfg.n < 1 or not cfg.subjects:
        raise InputError("held-out evaluation needs n >= 1 and at least one cast size")
    world = WorldConfig.of_pipeline(pipe.config)
    return [make_example(cfg.seed, i, "heldout", world, num_subjects=cfg.subjects[i % len(cfg.subjects)])
            for i in range(cfg.n)]


def heldout_generation_cases(pipe, cfg: HeldoutConfig) -> list:
    """The held-out casts of `cfg` as `generation.Case`s keyed `case_00`, ... with sample seeds
    `cfg.sample_seed + i`: the one definition every held-out evaluation samples."""
    return [example_case(ex, f"case_{i:02d}", cfg.sample_seed + i) for i, ex in enumerate(heldout_cases(pipe, cfg))]


def example_case(ex, key: str, seed: int):
    """A SpriteWorld example as a `generation.Case` (its render as the ground truth)."""
    from idcrafter.generation import Case

    return Case(key=key, prompt=ex.caption, references=list(ex.refs), seed=seed,
                size=tuple(ex.clip.frames.shape[:3]), ground_truth=ex.clip.frames,
                meta={"subjects": len(ex.refs)})


def generate_cached(folder: str | Path, cfg: HeldoutConfig, cache: str | Path) -> tuple[list[np.ndarray], list]:
    """(clips, cases) of the pipeline in `folder` on the held-out casts of `cfg`, generated once
    and kept as one `.npz` under `cache` keyed by the folder and every setting, so re-scoring
    with another judge (or a changed one) does not generate again. Clips: (F, H, W, 3) uint8."""
    import io

    from idcrafter.devices import load_pipeline
    from idcrafter.generation import GenerationSettings, generate
    from idcrafter.utils.io import atomic_write_bytes

    folder, cache = Path(folder), Path(cache)
    extra = ""  # settings other than the defaults enter the key (the defaults' key predates them)
    if tuple(cfg.subjects) != HeldoutConfig.subjects:
        extra += "_k" + "-".join(str(k) for k in cfg.subjects)
    if not cfg.guide_references or cfg.sample_seed:
        extra += f"_r{int(cfg.guide_references)}_ss{cfg.sample_seed}"
    key = (f"{folder.resolve().as_posix().strip('/').replace('/', '+')}_n{cfg.n}_s{cfg.seed}"
           f"_st{cfg.steps}_g{cfg.guidance}{extra}.npz")
    pipe = load_pipeline(folder)
    cases = heldout_generation_cases(pipe, cfg)
    path = cache / key
    if path.is_file():
        with np.load(path) as z:
            return [z[c.key] for c in cases], cases
    settings = GenerationSettings(steps=cfg.steps, guidance=cfg.guidance, guide_references=cfg.guide_references)
    clips = generate(pipe, cases, settings)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{c.key: v for c, v in zip(cases, clips)})
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return clips, cases


def summarise(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of each metric over the cases that have it (a judge metric is None when undefined)."""
    out = {}
    for k in METRICS:
        vals = [r[k] for r in rows if r.get(k) is not None]
        out[k] = float(np.mean(vals)) if vals else float("nan")
    return out


@torch.no_grad()
def evaluate_heldout(pipe, cfg: HeldoutConfig | None = None, judge=None, out_dir: str | Path | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Generate and judge `cfg.n` held-out casts; returns {"generated", "ground_truth", "gap",
    "cases", "config", "seconds"} and, with `out_dir`, writes `heldout.json` and contact sheets
    (references | generated | ground truth) of the first `cfg.sheets` cases.

    `judge`: a `Judge` or any `idcrafter.scorers.Scorer` (default: the shipped SpriteWorld judge)."""
    from idcrafter.generation import GenerationSettings, generate_and_score
    from idcrafter.scorers import SpritesScorer, Scorer
    from idcrafter.utils.io import atomic_write_json
    from idcrafter.utils.media import contact_sheet, save_image

    cfg = cfg or HeldoutConfig()
    scorer = judge if isinstance(judge, Scorer) else SpritesScorer(judge=judge)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cases = heldout_generation_cases(pipe, cfg)
    settings = GenerationSettings(steps=cfg.steps, guidance=cfg.guidance, guide_references=cfg.guide_references)
    rows = []
    for i, res in enumerate(generate_and_score(pipe, cases, settings, scorer, score_truth=True, progress=progress,
                                               desc="held-out")):
        gen, gt = res.report.metrics, res.truth.metrics
        rows.append({"caption": res.case.prompt, "subjects": len(res.case.references),
                     "generated": {k: gen.get(k) for k in METRICS}, "ground_truth": {k: gt.get(k) for k in METRICS}})
        if out is not None and i < cfg.sheets:
            save_image(out / f"{res.case.key}.png", contact_sheet(
                [("references", res.case.references), ("generated", list(res.frames)),
                 ("ground truth", list(res.case.ground_truth))]))
    generated = summarise([c["generated"] for c in rows])
    truth = summarise([c["ground_truth"] for c in rows])
    result = {"generated": generated, "ground_truth": truth,
              "gap": {k: generated[k] - truth[k] for k in METRICS},
              "cases": rows, "config": asdict(cfg), "seconds": time.time() - t0}
    if out is not None:
        atomic_write_json(out / "heldout.json", result, indent=2)
    return result


def metrics_table(result: dict[str, Any]) -> str:
    """Markdown table: metric | generated | ground truth."""
    lines = ["| metric | generated | ground truth |", "|---|---|---|"]
    lines += [f"| {k} | {result['generated'][k]:.3f} | {result['ground_truth'][k]:.3f} |" for k in METRICS]
    return "\n".join(lines)
