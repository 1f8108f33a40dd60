"""The paper's "w/o curated data" ablation on SpriteWorld: naive pairs vs curated pairs.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/curation_ablation.py --num 2000 --steps 1500 \
        [--out runs/curation-ablation] [--init assets/checkpoints/sprites-sft] [--threads 1] [--n 16]

1. `idcrafter data pairs` curates the same raw SpriteWorld videos twice: naive (references cropped
   from the clip's own frames) and curated (references rendered in another pose, scale, light and
   place); both manifests keep the same clips.
2. The generator is fine-tuned from `--init` on each set for the same `--steps` (same recipe,
   seed, batch; only `data.path` differs). Resumable: re-running continues both runs.
3. Each run is exported (`idcrafter train export --no-eval`) and its export judged on the same
   held-out casts as `--init` (`idcrafter eval heldout --model EXPORT --n N`): the script prints
   copy-paste, quality, identity (face_sim_mean / min, subject_sim) and total of both arms and
   of `--init` itself, and writes them to `<out>/ablation.json`.

Every command is printed before it runs, so any step can be repeated by hand.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

KEYS = ("copy_paste", "quality", "face_sim_mean", "face_sim_min", "subject_sim", "leakage", "total")


def run(cmd: list[str]) -> str:
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    res = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return res.stdout


def last_json(text: str) -> dict:
    start = text.index("{")
    return json.JSONDecoder().raw_decode(text[start:])[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("runs/curation-ablation"))
    ap.add_argument("--num", type=int, default=2000, help="raw SpriteWorld videos")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1500, help="fine-tuning steps of each arm (the same budget)")
    ap.add_argument("--init", default="assets/checkpoints/sprites-sft", help="pipeline both arms start from")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workers", type=int, default=1, help="curation workers")
    ap.add_argument("--n", type=int, default=16, help="held-out casts judged per arm")
    a = ap.parse_args()
    exe = str(Path(sys.executable).parent / "idcrafter")
    data = a.out / "data"
    if not (data / "pairs.json").is_file():
        run([exe, "data", "pairs", "--num", str(a.num), "--seed", str(a.seed), "--out", str(data),
             "--workers", str(a.workers)])
    results = {"init": last_json(run([exe, "eval", "heldout", "--model", a.init, "--n", str(a.n), "--json"]))}
    for arm in ("naive", "curated"):
        run_dir = a.out / arm
        overrides = [f"model.init_pipeline={a.init}", "data.source=manifest",
                     f"data.path={(data / arm / 'manifest.parquet').resolve()}", "data.frames=5", "data.frame_stride=2",
                     f"train.steps={a.steps}", f"train.threads={a.threads}", "checkpoint.every=250",
                     "eval.sample_every=0", "optim.warmup_steps=50", "optim.lr=1e-4"]
        run([exe, "train", "sft", "--recipe", "sprites", "--run-dir", str(run_dir), "--resume", *overrides])
        # beside the run folder: export refuses a target inside the run it reads (it would delete the run)
        export = a.out / f"{arm}-export"
        if not (export / "model_index.json").is_file():
            # --no-eval: a manifest-trained run has no eval.path, so export's own check would be empty;
            # each arm is judged below exactly as --init is
            run([exe, "train", "export", "--run-dir", str(run_dir), "--out", str(export), "--no-eval"])
        results[arm] = last_json(run([exe, "eval", "heldout", "--model", str(export), "--n", str(a.n), "--json"]))
    table = {arm: {k: (r.get("generated", r).get(k)) for k in KEYS} for arm, r in results.items()}
    (a.out / "ablation.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                                     "results": results, "table": table}, indent=1))
    print(f"{'metric':16s}" + "".join(f"{arm:>10s}" for arm in table))
    for k in KEYS:
        print(f"{k:16s}" + "".join(f"{(table[arm][k] if table[arm][k] is not None else float('nan')):10.3f}"
                                   for arm in table))


if __name__ == "__main__":
    main()
