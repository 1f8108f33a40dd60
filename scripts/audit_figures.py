"""The audit judge's figures on held-out casts: ground truth vs a wrong cast vs an identity swap,
beside the main judge's, and the attribute accuracy with each source of the references' truth.

    .venv/bin/python scripts/audit_figures.py --casts 12 --seed 1234 --out runs/aud-judge/figures.json

Casts: `make_example(seed, i, "heldout")` with 2-4 subjects (`adversarial_cases`); the wrong cast
and the swap are `judge.attacks` (the swap's means count only the casts where it contradicts
the caption, as in `validate-judge --adversarial`). The audit judge is scored with the
identities' true attributes (`given`) and, again, from the reference images alone (`render`:
decoded by inverting the renderer). Prints a markdown table; writes the per-cast scores as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

COLUMNS = ("total", "face_sim_mean", "subject_sim", "binding", "attr_acc_mean", "attr_acc_min")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--casts", type=int, default=12)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--out", type=Path, default=None, help="JSON of per-cast scores")
    args = ap.parse_args()

    import torch
    from tqdm import tqdm

    from idcrafter.judge.adversarial import adversarial_cases, attack_videos
    from idcrafter.judge.audit import AuditJudge
    from idcrafter.judge.judge import Judge

    torch.set_num_threads(1)
    main_judge, audit = Judge.load(), AuditJudge.load()
    rows: list[dict] = []
    for i, ex in enumerate(tqdm(adversarial_cases(args.casts, args.seed, args.frames), desc="casts")):
        known = [s.identity.attributes() for s in ex.spec.subjects]
        vids = {"ground_truth": (ex.clip.frames, True), **attack_videos(ex, args.seed * 1000 + i, ["wrong_cast", "swap"])}
        for kind, (frames, contradicts) in vids.items():
            if not contradicts:
                continue  # a swap of subjects doing the same thing is a correct video
            a = audit.score(frames, list(ex.refs), ex.caption, ref_attributes=known)
            r = audit.score(frames, list(ex.refs), ex.caption)  # truth decoded from the references
            m = main_judge.score(frames, list(ex.refs), ex.caption).metrics
            rows.append({"cast": i, "k": len(ex.refs), "kind": kind,
                         "audit": {c: a.metrics.get(c) for c in COLUMNS},
                         "audit_from_refs": {c: r.metrics.get(c) for c in ("attr_acc_mean", "attr_acc_min")},
                         "sources": [s["attr_source"] for s in r.per_subject],
                         "wrong": [s["attr_wrong"] for s in a.per_subject],
                         "main": {c: m.get(c) for c in COLUMNS if c in m}})
    kinds = ["ground_truth", "wrong_cast", "swap"]
    print(f"held-out casts: {args.casts} (seed {args.seed}, {args.frames} frames)\n")
    print("| video | n | main total | audit total | audit face_sim | audit binding | attr_acc_mean | attr_acc_min "
          "| attr_acc_mean (truth from refs) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for kind in kinds:
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue

        def mean(part: str, key: str) -> float:
            return float(np.mean([r[part][key] for r in rs if r[part].get(key) is not None]))
        print(f"| {kind} | {len(rs)} | {mean('main', 'total'):.3f} | {mean('audit', 'total'):.3f} | "
              f"{mean('audit', 'face_sim_mean'):.3f} | {mean('audit', 'binding'):.3f} | "
              f"{mean('audit', 'attr_acc_mean'):.3f} | {mean('audit', 'attr_acc_min'):.3f} | "
              f"{mean('audit_from_refs', 'attr_acc_mean'):.3f} |")
    sources = [s for r in rows for s in r["sources"]]
    print(f"\nreference truth decoded from the images: {sources.count('render')}/{len(sources)} references "
          f"(the rest read by the heads)")
    wrong = [w for r in rows if r["kind"] == "ground_truth" for ws in r["wrong"] for w in ws]
    print("attributes read wrong on ground truth: " + (", ".join(f"{a} {wrong.count(a)}" for a in sorted(set(wrong)))
                                                     or "none"))
    if args.out:
        from idcrafter.utils.io import atomic_write_json

        atomic_write_json(args.out, {"casts": args.casts, "seed": args.seed, "frames": args.frames, "rows": rows})


if __name__ == "__main__":
    main()
