"""Adversarial validation: degenerate videos of held-out casts, scored beside the ground truth.

For each of `num_casts` held-out casts (2-4 subjects by default), every attack of
`attacks.ATTACKS` builds a degenerate video from the cast's ground truth (its parameters drawn
from the attack's range with a per-cast generator), and the judge scores it against the cast's
references and caption, exactly as it scores a generated clip. Targets (`ADVERSARIAL_TARGETS`):

- ground truth total >= 0.88;
- every degenerate kind's mean total <= 0.65 and at least 0.2 below the ground truth's (the swap,
  reversed and mirrored clips: at least 0.15 below, counted on the casts they contradict; a swap
  of subjects asked to do the same, or a jump played backwards, is a correct video; they change
  who does what, not what is drawn; reversed and mirrored clips, which on most casts turn one
  subject's walk around and nothing else, are not held to the 0.65 cap);
- on every cast, the ground truth above every degenerate kind that contradicts its caption
  (`attacks.contradicts_caption`).

`progress_series` checks that the judge follows real progress: clips corrupted like generator
checkpoints of decreasing age (`generator_like` at decreasing severity) must rank in order, and
so must the samples of real checkpoints of one run when their pipeline folders are given.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from idcrafter.judge import attacks as A
from idcrafter.world.dataset import make_example
from idcrafter.world.scene import WorldConfig

GT_MIN = 0.88
KIND_MAX = 0.65
GAP_MIN = 0.2
SWAP_GAP_MIN = 0.15
REPORTED = ("total", "face_sim_mean", "subject_sim", "binding", "motion", "quality", "natural", "copy_paste",
            "leakage")


def adversarial_cases(num_casts: int = 12, seed: int = 1234, frames: int = 9,
                      subjects: Sequence[int] = (2, 3, 4)) -> list:
    """The held-out casts (`make_example(seed, i, "heldout")`, cast sizes cycled from `subjects`)."""
    cfg = WorldConfig(frames=frames)
    return [make_example(seed, i, "heldout", cfg, num_subjects=subjects[i % len(subjects)]) for i in range(num_casts)]


def attack_videos(ex, cast_seed: int, kinds: Sequence[str]) -> dict[str, tuple[np.ndarray, bool]]:
    """{kind: (frames, contradicts the caption)} for one cast; each kind has its own generator
    (seeded by the cast and the kind), so adding a kind never changes the others' videos."""
    out = {}
    for kind in kinds:
        rng = np.random.default_rng([cast_seed, 1 + A.KIND_KEYS[kind]])
        if kind == "swap":
            perm = A.swap_permutation(ex, rng)
            out[kind] = (A.swap_frames(ex, perm, int(rng.integers(1 << 30))), A.contradicts_caption(kind, ex, perm))
        else:
            out[kind] = (A.ATTACKS[kind](ex, rng), A.contradicts_caption(kind, ex))
    return out


def adversarial_validation(judge, num_casts: int = 12, seed: int = 1234, frames: int = 9,
                           subjects: Sequence[int] = (2, 3, 4), kinds: Sequence[str] | None = None,
                           progress: bool = True) -> dict:
    """Score every attack on every cast; returns per-kind means, per-cast totals, targets.

    Keys: `kinds` {kind: {metric: mean}} (ground truth under "ground_truth"; the means of the
    `attacks.CONDITIONAL` kinds over the casts they contradict), `cases` (per cast: caption, K,
    totals per kind, contradicting kinds), `violations` (cast, kind) where a contradicting kind
    scored >= ground truth, `targets` {name: bool}, and the settings.
    """
    from tqdm import tqdm

    kinds = list(kinds or A.ATTACKS)
    unknown = [k for k in kinds if k not in A.ATTACKS]
    if unknown:
        from idcrafter.errors import InputError

        raise InputError(f"unknown attack(s) {', '.join(unknown)}: choose among {', '.join(A.ATTACKS)}")
    rows: dict[str, list[dict]] = {"ground_truth": []}
    cases, violations = [], []
    for i, ex in enumerate(tqdm(adversarial_cases(num_casts, seed, frames, subjects), desc="adversarial casts",
                                disable=not progress)):
        refs = list(ex.refs)
        gt = judge.score(ex.clip.frames, refs, ex.caption, threads=1).metrics
        rows["ground_truth"].append(gt)
        case = {"caption": ex.caption, "subjects": len(refs), "totals": {"ground_truth": gt["total"]},
                "contradicts": []}
        for kind, (video, contradicts) in attack_videos(ex, seed * 1000 + i, kinds).items():
            m = judge.score(video, refs, ex.caption, threads=1).metrics
            case["totals"][kind] = m["total"]
            if contradicts:
                case["contradicts"].append(kind)
                if m["total"] >= gt["total"]:
                    violations.append((i, kind))
            if kind not in A.CONDITIONAL or contradicts:
                rows.setdefault(kind, []).append(m)
        cases.append(case)
    means = {k: {key: float(np.mean([r[key] for r in v if r.get(key) is not None]))
                 for key in REPORTED if any(r.get(key) is not None for r in v)} | {"n": len(v)}
             for k, v in rows.items()}
    return {"kinds": means, "cases": cases, "violations": violations,
            "targets": adversarial_targets(means, violations),
            "settings": {"num_casts": num_casts, "seed": seed, "frames": frames, "subjects": list(subjects)}}


def adversarial_targets(means: dict[str, dict], violations: list) -> dict[str, bool]:
    """The targets of the module docstring, one boolean each (per kind: `<kind>_total`)."""
    gt = means["ground_truth"]["total"]
    out = {"gt_total": gt >= GT_MIN}
    for kind, m in means.items():
        if kind == "ground_truth" or not m.get("n"):
            continue
        gap = SWAP_GAP_MIN if kind in A.CONDITIONAL else GAP_MIN
        capped = kind not in A.PARTIAL
        out[f"{kind}_total"] = (m["total"] <= KIND_MAX or not capped) and m["total"] <= gt - gap
    out["gt_above_contradicting_kinds_on_every_cast"] = not violations
    return out


def format_table(result: dict) -> str:
    """Markdown table of the per-kind means (totals first) and the targets met."""
    cols = [c for c in REPORTED if c in result["kinds"]["ground_truth"]]
    lines = ["| video | n | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for kind, m in result["kinds"].items():
        lines.append(f"| {kind} | {m['n']} | " + " | ".join(f"{m[c]:.3f}" if c in m else "-" for c in cols) + " |")
    ok = result["targets"]
    missed = [k for k, v in ok.items() if not v]
    lines.append("")
    lines.append(f"targets met: {sum(ok.values())}/{len(ok)}" + (f"; missed: {', '.join(missed)}" if missed else ""))
    if result["violations"]:
        lines.append("casts where a contradicting kind scored >= ground truth: " +
                     ", ".join(f"{c}:{k}" for c, k in result["violations"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- progress

def progress_series(judge, num_casts: int = 6, seed: int = 4321, severities: Sequence[float] = (1.0, 0.75, 0.5, 0.25, 0.1),
                    frames: int = 9, pipelines: Sequence | None = None, steps: int = 20,
                    progress: bool = True) -> dict:
    """Does the judge follow a generator's progress?

    Early-checkpoint-like samples: each held-out cast corrupted by `generator_like` at each
    severity (the oldest checkpoint first); their mean totals must increase along the series
    (`synthetic_spearman` = Spearman of totals vs order, 1 = perfect). With `pipelines` (loaded
    pipelines of ONE run, oldest first), each generates the casts (20 steps, guidance 2.5, seed
    = cast index) and `checkpoint_spearman` is the same figure for their mean totals.
    """
    from scipy.stats import spearmanr
    from tqdm import tqdm

    from idcrafter.judge.train.critic import generator_like

    cases = adversarial_cases(num_casts, seed, frames)
    synth = {s: [] for s in severities}
    for i, ex in enumerate(tqdm(cases, desc="progress series", disable=not progress)):
        for s in severities:
            rng = np.random.default_rng([seed, i, int(1000 * s)])
            synth[s].append(judge.score(generator_like(ex, rng, s), list(ex.refs), ex.caption, threads=1).metrics["total"])
    means = [float(np.mean(synth[s])) for s in severities]
    out = {"synthetic": {f"severity_{s}": m for s, m in zip(severities, means)},
           "synthetic_spearman": float(spearmanr(np.arange(len(means)), means)[0])}
    if pipelines:
        ckpt = [_pipeline_total(judge, p, cases, steps) for p in pipelines]
        out["checkpoints"] = ckpt
        out["checkpoint_spearman"] = float(spearmanr(np.arange(len(ckpt)), ckpt)[0]) if len(ckpt) > 1 else float("nan")
    return out


def _pipeline_total(judge, pipe, cases: list, steps: int) -> float:
    """Mean judge total of one pipeline's samples of `cases` (the one generate loop,
    `idcrafter.generation.generate`; 20 steps, guidance 2.5, seed = cast index)."""
    from idcrafter.generation import Case, GenerationSettings, generate

    todo = [Case(key=str(i), prompt=ex.caption, references=list(ex.refs), seed=i, size=ex.clip.frames.shape[:3])
            for i, ex in enumerate(cases)]
    clips = generate(pipe, todo, GenerationSettings(steps=steps, guidance=2.5))
    return float(np.mean([judge.score(c, list(ex.refs), ex.caption, threads=1).metrics["total"] for c, ex in zip(clips, cases)]))
