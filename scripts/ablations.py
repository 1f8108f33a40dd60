"""Architecture ablations on SpriteWorld: the paper's two claims, tested with one budget and seed.

Five runs of the `sprites` recipe that differ in one config field each (the shared point,
hierarchical + t5, is run once):

    subject stream: hierarchical | concat | intra_only   (text_mode t5)
    text encoder:   t5 | vlm | t5+vlm                     (hierarchical)

Each run trains `--steps` steps (same data seed, same initialisation seed, same schedule
shortened to the budget), then its EMA pipeline is judged on the same held-out casts
(`idcrafter.heldout`). Results go to `<out>/<name>/result.json`; the table and plot to
`docs/ablations.md` and `docs/ablations.png`. Runs are resumable: rerunning the command
continues unfinished runs and skips finished ones, so the study can be done in pieces.

How it departs from the paper: SpriteWorld has no pretrained text encoder or VLM. Both are
frozen *random* networks over SpriteWorld's vocabulary (the tiny UMT5 and a tiny Qwen2.5-VL),
so the text ablation measures the pathway (prompt-and-reference-grounded tokens reaching the
subject stream and the blocks), not a VLM's pretrained knowledge, which the paper credits for
perceptual quality.

    .venv/bin/python scripts/ablations.py --steps 3000 --threads 2          # everything
    .venv/bin/python scripts/ablations.py --only concat/t5 --steps 3000     # one run
    .venv/bin/python scripts/ablations.py --report-only                     # table + plot

In the latent world (issue 13) the arms keep the recipe's own 20k-step schedule and stop at
`--steps`, so the shared point can be a milestone of a long run of the same recipe instead of a
sixth training (`--base`: that run's kept checkpoint at `--steps` is judged as hierarchical/t5):

    .venv/bin/python scripts/ablations.py --recipe sprites-latent --schedule recipe --steps 2000 \
        --base runs/latent --subjects 2,3,4 --threads 1 --out runs/ablations-latent \
        --doc docs/ablations-latent.md --plot docs/ablations-latent.png --keep docs/ablations-latent
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

VARIANTS: dict[str, dict] = {
    "hierarchical/t5": {},
    "concat/t5": {"subject_variant": "concat"},
    "intra_only/t5": {"subject_variant": "intra_only"},
    "hierarchical/vlm": {"text_mode": "vlm"},
    "hierarchical/t5+vlm": {"text_mode": "t5+vlm"},
}
SHOWN = ("face_sim_mean", "face_sim_min", "subject_sim", "leakage", "action_acc", "motion", "quality",
         "natural", "total")
PROXY = ("ema/x0_err/t0.6", "ema/x0_err_subject/t0.6", "ema/x0_err_subject/t0.9", "ema/ref_gap_rel_subject/t0.6",
         "ema/ref_gap_rel_subject/t0.9")
PROXY_NAMES = ("x0 err t0.6", "x0 err subject t0.6", "x0 err subject t0.9", "ref gap rel t0.6", "ref gap rel t0.9")
ROOT = Path(__file__).resolve().parents[1]


def variant_config(name: str, steps: int, threads: int, extra: list[str], recipe_name: str = "sprites",
                   schedule: str = "budget"):
    """The recipe with one variant's fields. `schedule`: "budget" shortens the recipe's schedule
    to `steps` (warm-up a tenth of it, at most 300); "recipe" keeps the recipe's schedule and stops
    at `steps`, so every arm is the first `steps` steps of one long run of that variant."""
    from idcrafter.config import apply_overrides
    from idcrafter.errors import InputError
    from idcrafter.recipes import recipe

    cfg = recipe(recipe_name)
    cfg.model.preset_overrides = {**cfg.model.preset_overrides, **VARIANTS[name]}
    if VARIANTS[name].get("text_mode", "t5") != "t5":
        cfg.model.vlm_path = "tiny"
    if schedule == "budget":
        sched = [f"train.steps={steps}", f"optim.warmup_steps={min(300, steps // 10)}"]
    elif schedule == "recipe":
        if steps > cfg.train.steps:
            raise InputError(f"--steps {steps} is past the {recipe_name} recipe's schedule ({cfg.train.steps} steps)")
        sched = [f"train.stop_at={steps}"]
    else:
        raise InputError(f"--schedule must be budget or recipe, got {schedule!r}")
    return apply_overrides(cfg, [*sched, f"train.threads={threads}", "eval.sample_every=0", "eval.every=250",
                                 f"checkpoint.every={min(250, steps)}", "log.progress=false", *extra])


def run_variant(name: str, args) -> dict:
    from idcrafter.heldout import HeldoutConfig, evaluate_heldout
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.train import checkpoint as ckpt
    from idcrafter.train.sft import run_sft
    from idcrafter.utils.io import atomic_write_json

    run_dir = args.out / name.replace("/", "_")
    done = run_dir / "result.json"
    if done.is_file():
        return json.loads(done.read_text())
    if name == "hierarchical/t5" and args.base is not None:  # the shared point: a long run's milestone
        metrics_run, final = args.base, ckpt.checkpoint_dir(args.base / "checkpoints", args.steps)
        if not (final / "pipeline").is_dir():
            raise SystemExit(f"--base {args.base} has no kept checkpoint at step {args.steps} ({final})")
        print(f"== {name}: the step-{args.steps} checkpoint of {args.base}", flush=True)
    else:
        cfg = variant_config(name, args.steps, args.threads, args.overrides, args.recipe, args.schedule)
        print(f"== {name}: training {args.steps} steps in {run_dir}", flush=True)
        run_sft(cfg, run_dir, resume=True)
        metrics_run, final = run_dir, ckpt.checkpoint_dir(run_dir / "checkpoints", args.steps)
    # the trainer restores the process's thread count when it ends; judge with the run's own count,
    # or a 2-thread evaluation beside another job oversubscribes the cores (measured: 10-20x slower)
    torch.set_num_threads(args.threads)
    pipe = IDCrafterPipeline.from_pretrained(str(final / "pipeline"))
    held = HeldoutConfig(n=args.heldout, seed=1234, steps=20, subjects=tuple(int(k) for k in args.subjects.split(",")))
    res = evaluate_heldout(pipe, held, out_dir=run_dir / "heldout")
    gaps = [json.loads(line) for line in (metrics_run / "metrics.jsonl").read_text().splitlines()]
    gaps = [g for g in gaps if "ema/ref_gap_rel_subject/t0.6" in g and g["step"] <= args.steps]
    out = {"name": name, "steps": args.steps, "generated": res["generated"], "ground_truth": res["ground_truth"],
           "ref_gap_curve": [(g["step"], g["ema/ref_gap_rel_subject/t0.6"], g["ema/ref_gap_rel_subject/t0.9"])
                             for g in gaps],
           "final_eval": {k: v for k, v in gaps[-1].items() if k.startswith("ema/")} if gaps else {},
           "generated_se": standard_errors(res["cases"]), "cases": case_figures(res["cases"])}
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(done, out, indent=2)
    if args.keep is not None:  # a tracked copy: runs/ does not always survive the machine
        args.keep.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.keep / f"{done.parent.name}.json", out, indent=2)
    return out


def load_results(out: Path, keep: Path | None) -> list[dict]:
    """Each variant's result.json from its run folder, else its tracked copy in `keep`."""
    results = []
    for name in VARIANTS:
        stem = name.replace("/", "_")
        for p in (out / stem / "result.json", *(() if keep is None else (keep / f"{stem}.json",))):
            if p.is_file():
                r = json.loads(p.read_text())
                held = out / stem / "heldout" / "heldout.json"
                if "cases" not in r and held.is_file():  # results written before per-cast figures were kept
                    r["cases"] = case_figures(json.loads(held.read_text())["cases"])
                results.append(r)
                break
    return results


def case_figures(cases: list[dict]) -> list[dict]:
    """Per held-out cast, the generated figures of the table (kept for paired differences)."""
    return [{k: c["generated"].get(k) for k in SHOWN} for c in cases]


def paired_difference(arm: list[dict], base: list[dict], key: str) -> tuple[float, float] | None:
    """Mean and standard error over casts of arm - base (the same casts, so the cast-to-cast
    spread the two share cancels); None without per-cast figures for both."""
    if len(arm) != len(base):
        return None
    d = [a[key] - b[key] for a, b in zip(arm, base) if a.get(key) is not None and b.get(key) is not None]
    if len(d) < 2:
        return None
    return float(np.mean(d)), float(np.std(d, ddof=1) / np.sqrt(len(d)))


def standard_errors(cases: list[dict]) -> dict[str, float]:
    """Standard error of each judge metric's mean over the held-out casts (the table's +-)."""
    out = {}
    for k in SHOWN:
        v = [c["generated"][k] for c in cases if c["generated"].get(k) is not None]
        out[k] = float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")
    return out


def report(results: list[dict], doc: Path, plot: Path, tag: str = "") -> None:
    """The table between the doc's `<!-- ablation-table[:tag] -->` markers (added if absent) and the plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = next((r for r in results if r["name"] == "hierarchical/t5"), None)
    lines = ["| variant | steps | " + " | ".join(SHOWN) + " |", "|---" * (len(SHOWN) + 2) + "|"]
    for r in results:
        se = r.get("generated_se", {})
        lines.append(f"| {r['name']} | {r['steps']} | "
                     + " | ".join(f"{r['generated'][k]:.3f} +- {se.get(k, float('nan')):.3f}" for k in SHOWN) + " |")
    if results:
        gt = results[0]["ground_truth"]
        lines.append("| ground truth | - | " + " | ".join(f"{gt[k]:.3f}" for k in SHOWN) + " |")
    # the denoiser's own figures on the recipe's held-out batch (last EMA evaluation): they move
    # long before the judge's do, so at small budgets they are the readable signal
    lines += ["", "| variant | " + " | ".join(PROXY_NAMES) + " |", "|---" * (len(PROXY) + 1) + "|"]
    for r in results:
        ev = r.get("final_eval", {})
        lines.append(f"| {r['name']} | " + " | ".join(f"{ev[k]:.4f}" if k in ev else "-" for k in PROXY) + " |")
    rel = []
    if base is not None:
        for r in results:
            if r is not base:
                d = {k: 100 * (r["generated"][k] - base["generated"][k]) / max(abs(base["generated"][k]), 1e-9)
                     for k in ("face_sim_mean", "quality", "total")}
                rel.append(f"- {r['name']} vs hierarchical/t5: face_sim_mean {d['face_sim_mean']:+.1f}%, "
                           f"quality {d['quality']:+.1f}%, total {d['total']:+.1f}%")
                pairs = {k: paired_difference(r.get("cases", []), base.get("cases", []), k)
                         for k in ("face_sim_mean", "face_sim_min", "quality", "total")}
                if all(v is not None for v in pairs.values()):
                    rel.append(f"  - paired over the casts (arm - hierarchical/t5, +- SE): "
                               + ", ".join(f"{k} {m:+.3f} +- {se:.3f}" for k, (m, se) in pairs.items()))
    notes = [f"- {r['name']}: {r['note']}" for r in results if r.get("note")]
    table = "\n".join(lines + [""] + rel + ([""] + notes if notes else []))
    text = doc.read_text() if doc.is_file() else "# Architecture ablations\n"
    suffix = f":{tag}" if tag else ""
    start, end = f"<!-- ablation-table{suffix} -->", f"<!-- /ablation-table{suffix} -->"
    block = f"{start}\n{table}\n{end}"
    text = text.split(start)[0] + block + text.split(end)[1] if start in text else text + "\n" + block + "\n"
    doc.write_text(text)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    keys = ("face_sim_mean", "face_sim_min", "subject_sim", "leakage", "action_acc", "quality", "total")
    width = 0.8 / max(len(results), 1)
    for i, r in enumerate(results):
        ax1.bar(np.arange(len(keys)) + i * width, [r["generated"][k] for k in keys], width, label=r["name"])
        if r["ref_gap_curve"]:
            steps, g6, _ = zip(*r["ref_gap_curve"])
            ax2.plot(steps, g6, label=r["name"])
    ax1.set_xticks(np.arange(len(keys)) + 0.4 - width / 2, keys, rotation=30, ha="right")
    ax1.set_title("held-out judge metrics (generated)")
    ax1.legend(fontsize=7)
    ax2.set_title("reference gap (EMA, subject cells, t = 0.6, relative)")
    ax2.set_xlabel("step")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plot, dpi=100)
    print(table)
    print(f"wrote {doc} and {plot}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--heldout", type=int, default=16, help="held-out casts judged per variant")
    ap.add_argument("--only", nargs="*", choices=sorted(VARIANTS), help="run only these variants")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "ablations")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "ablations.md")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "ablations.png")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--tag", default="", help="names the doc's table block, so one doc can hold several studies")
    ap.add_argument("--keep", type=Path, help="also keep each result.json here (a tracked folder, e.g. docs/ablations-latent)")
    ap.add_argument("--recipe", default="sprites", help="the recipe every arm varies (sprites, sprites-latent)")
    ap.add_argument("--schedule", choices=("budget", "recipe"), default="budget",
                    help="budget: the schedule shortened to --steps; recipe: the recipe's own, stopped at --steps")
    ap.add_argument("--base", type=Path, help="a run of --recipe whose step --steps checkpoint is hierarchical/t5")
    ap.add_argument("--subjects", default="2,3", help="held-out cast sizes, cycled")
    ap.add_argument("overrides", nargs="*", help="extra config overrides for every run (key=value)")
    args = ap.parse_args()
    names = args.only or list(VARIANTS)
    if not args.report_only:
        for name in names:
            run_variant(name, args)
    results = load_results(args.out, args.keep)
    if results:
        report(results, args.doc, args.plot, args.tag)


if __name__ == "__main__":
    main()
