"""Preference pairs from a generator's own samples, ranked by a judge (Identity-GRPO's third
source beside human labels and synthetic distortions; also the static pairs of the DPO baseline).

    pairs = generator_pairs(pipe, cases, scorer, metric="face_sim_mean")

Each case is generated with two seeds through the one generate-then-score loop
(`idcrafter.generation`); the clip with the higher `metric` is preferred, and a difference below
`tie_margin` is a tie (`drop_ties` leaves those out, as DPO needs strict preferences). A case whose
generation or scoring failed is skipped. `write_pairs` (`rl.distortions`) saves them as a pair file.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from idcrafter.rl.distortions import Pair


def rank(score_a: float, score_b: float, tie_margin: float) -> str:
    """"a", "b" or "tie" for two scores (higher is better)."""
    if abs(score_a - score_b) < tie_margin:
        return "tie"
    return "a" if score_a > score_b else "b"


def generator_pairs(pipe, cases: Sequence[Any], scorer, metric: str = "face_sim_mean", seeds: tuple[int, int] = (0, 1),
                    tie_margin: float = 0.02, drop_ties: bool = False, steps: int = 20,
                    guidance: float = 2.5) -> list[Pair]:
    """Pairs of two samples per case (module docstring); `cases` are `generation.Case`s."""
    from dataclasses import replace

    from idcrafter.generation import GenerationSettings, generate_and_score

    settings = GenerationSettings(steps=steps, guidance=guidance)
    runs = []
    for seed in seeds:
        seeded = [replace(c, seed=int(c.seed) * 1000 + seed) for c in cases]
        runs.append(list(generate_and_score(pipe, seeded, settings, scorer, catch_errors=True)))
    out = []
    for case, ra, rb in zip(cases, *runs):
        if ra.report is None or rb.report is None:
            continue
        sa, sb = ra.report.metrics.get(metric), rb.report.metrics.get(metric)
        if sa is None or sb is None or not (math.isfinite(sa) and math.isfinite(sb)):
            continue
        label = rank(float(sa), float(sb), tie_margin)
        if label == "tie" and drop_ties:
            continue
        out.append(Pair(ra.frames, rb.frames, list(case.references), case.prompt, label, "generator", case.key))
    return out
