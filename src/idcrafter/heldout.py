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

import json
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
    pc = pipe.config
    world = WorldConfig(frames=pc.default_frames, height=pc.default_height, width=pc.default_width,
                        ref_size=pc.reference_size)
    return [make_example(cfg.seed, i, "heldout", world, num_subjects=cfg.subjects[i % len(cfg.subjects)])
            for i in range(cfg.n)]


def _frames_uint8(video: np.ndarray) -> np.ndarray:
    return (video * 255 + 0.5).clip(0, 255).astype(np.uint8)  # (T, H, W, 3)


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
    (references | generated | ground truth) of the first `cfg.sheets` cases."""
    from tqdm.auto import tqdm

    from idcrafter.judge.judge import Judge
    from idcrafter.utils.media import contact_sheet, save_image

    cfg = cfg or HeldoutConfig()
    judge = judge or Judge.load()
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    cases = []
    was_training = pipe.transformer.training
    pipe.transformer.eval()
    for i, ex in enumerate(tqdm(heldout_cases(pipe, cfg), desc="held-out", disable=not progress)):
        t, h, w = ex.clip.frames.shape[:3]
        video = pipe(ex.caption, list(ex.refs), height=h, width=w, num_frames=t, num_inference_steps=cfg.steps,
                     guidance_scale=cfg.guidance, generator=torch.Generator().manual_seed(cfg.sample_seed + i),
                     guide_references=cfg.guide_references).frames[0]
        frames = _frames_uint8(video)
        gen = judge.score(frames, list(ex.refs), ex.caption).metrics
        gt = judge.score(ex.clip.frames, list(ex.refs), ex.caption).metrics
        cases.append({"caption": ex.caption, "subjects": len(ex.refs),
                      "generated": {k: gen.get(k) for k in METRICS}, "ground_truth": {k: gt.get(k) for k in METRICS}})
        if out is not None and i < cfg.sheets:
            save_image(out / f"case_{i:02d}.png", contact_sheet(
                [("references", list(ex.refs)), ("generated", list(frames)), ("ground truth", list(ex.clip.frames))]))
    pipe.transformer.train(was_training)
    generated = summarise([c["generated"] for c in cases])
    truth = summarise([c["ground_truth"] for c in cases])
    result = {"generated": generated, "ground_truth": truth,
              "gap": {k: generated[k] - truth[k] for k in METRICS},
              "cases": cases, "config": asdict(cfg), "seconds": time.time() - t0}
    if out is not None:
        (out / "heldout.json").write_text(json.dumps(result, indent=2))
    return result


def metrics_table(result: dict[str, Any]) -> str:
    """Markdown table: metric | generated | ground truth."""
    lines = ["| metric | generated | ground truth |", "|---|---|---|"]
    lines += [f"| {k} | {result['generated'][k]:.3f} | {result['ground_truth'][k]:.3f} |" for k in METRICS]
    return "\n".join(lines)
