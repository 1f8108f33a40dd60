"""Curation throughput: per step and in all, 1 and 2 workers, local pool and Ray Data; and a cost
model for 5M clips.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/curation_bench.py [--num 24] [--repeats 2] [--json]

Runs are interleaved (local-1, local-2, ray-1, ray-2, then again) on fresh output folders, so
the ratios compare runs made under the same machine load (printed: the load average before each
run). "CPU s/clip" is the CPU time (`time.process_time` in the worker) each step took, summed
over workers, divided by the clips produced: contention from other jobs does not inflate it.
"clips/s" is output clips over wall time (engine start-up included, as a user sees it);
"clips/s if idle" = workers / CPU s per clip, the rate on idle cores without start-up.

The cost model: CPU steps measured here on a 480p, 5 s clip (decode + scene split, motion,
perceptual hash, copy-paste risk on 4 references), model steps from the ASSUMED GPU rates given
as options (this machine has no GPU: change them to your measurements).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def run_matrix(num: int, repeats: int, root: Path) -> dict:
    from idcrafter.curation.config import sprites_config
    from idcrafter.curation.engine import curate

    combos = [("local", 1), ("local", 2), ("ray", 1), ("ray", 2)]
    results: dict[str, list[dict]] = {f"{e}-{w}": [] for e, w in combos}
    for rep in range(repeats):
        for engine, workers in combos:
            out = root / f"{engine}-{workers}-{rep}"
            cfg = sprites_config(num, 0)
            cfg.shard_size = max(1, num // 8)
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            try:
                s = curate(cfg, out, engine=engine, workers=workers, progress=False)
            except Exception as exc:  # noqa: BLE001 - record why a run failed (Ray start-up under load)
                print(f"{engine}-{workers} run {rep} failed: {type(exc).__name__}: {exc}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
                continue
            s["measured_wall"] = time.perf_counter() - t0
            s["load_before"] = load
            print(f"{engine}-{workers} run {rep}: {s['measured_wall']:.1f} s, {s['rows']} clips, "
                  f"load average {load:.1f}", flush=True)
            results[f"{engine}-{workers}"].append(s)
            shutil.rmtree(out)
    return results


def real_resolution_cpu(seconds: float = 5.0, fps: int = 24) -> dict:
    """CPU seconds (process time, so other load on the machine does not count) per clip of the
    steps that need no model, on a 832 x 480 clip of 5 s at 24 fps."""
    from idcrafter.curation import filters as F
    from idcrafter.curation.media import load_clip, write_video
    from idcrafter.curation.steps import scene_cuts
    from idcrafter.world.dataset import make_example

    n = int(seconds * fps)
    src = np.concatenate([make_example(0, i, "train").clip.frames for i in range(-(-n // 9))])[:n]
    big = np.stack([np.kron(f, np.ones((10, 17, 1), np.uint8))[:480, :832] for f in src])
    tmp = Path(tempfile.mkdtemp()) / "clip480.mp4"
    write_video(tmp, big, fps)
    out = {}
    t0 = time.process_time()
    scene_cuts(tmp, 0, n, None, 27.0, 15, fps)
    out["decode+scene_split"] = time.process_time() - t0
    frames, _ = load_clip(tmp, n // 2 - 4, n // 2 + 4)
    t0 = time.process_time()
    F.motion_px(frames)
    out["motion"] = time.process_time() - t0
    t0 = time.process_time()
    F.phash(frames[[0, 4, 7]])
    out["phash"] = time.process_time() - t0
    ref = np.full((512, 512, 3), 240, np.uint8)
    ref[100:400, 150:350] = 90
    t0 = time.process_time()
    for _ in range(4):
        F.copy_paste_risk(ref, [ref] * 16, (240, 240, 235))
    out["copy_paste_4_refs"] = time.process_time() - t0
    shutil.rmtree(tmp.parent)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=24, help="raw SpriteWorld videos per run")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--clips", type=float, default=5e6, help="clips in the cost model")
    ap.add_argument("--gpu-caption-clips-per-s", type=float, default=1.0, help="ASSUMED: Qwen2.5-VL-7B captions per GPU-second")
    ap.add_argument("--gpu-detect-clips-per-s", type=float, default=8.0, help="ASSUMED: detection+segmentation clips per GPU-second")
    ap.add_argument("--gpu-aesthetic-clips-per-s", type=float, default=40.0, help="ASSUMED: CLIP aesthetic clips per GPU-second")
    ap.add_argument("--gpu-edit-refs-per-s", type=float, default=0.5, help="ASSUMED: image edits per GPU-second")
    ap.add_argument("--synthetic-share", type=float, default=0.3, help="share of clips whose references are edited")
    ap.add_argument("--refs-per-clip", type=float, default=2.0)
    ap.add_argument("--cpu-hour-usd", type=float, default=0.04, help="ASSUMED price of one core-hour")
    ap.add_argument("--gpu-hour-usd", type=float, default=2.0, help="ASSUMED price of one GPU-hour")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="curbench-"))
    res = run_matrix(a.num, a.repeats, root)
    base = np.median([s["measured_wall"] for s in res["local-1"]])  # the reference engine
    table = {}
    for key, runs in res.items():
        if not runs:
            continue
        wall = float(np.median([s["measured_wall"] for s in runs]))
        clips = runs[0]["rows"]
        steps = {k: float(np.median([s["step_cpu_seconds"][k] for s in runs])) / clips for k in runs[0]["step_seconds"]}
        cpu_per_clip = sum(steps.values())
        table[key] = {"wall_s": wall, "videos": runs[0]["inputs"], "clips": clips, "clips_per_s": clips / wall,
                      "speedup_vs_local_1": float(base / wall), "step_cpu_s_per_clip": steps,
                      "cpu_s_per_clip": cpu_per_clip,
                      "idle_clips_per_s_estimate": int(key.split("-")[1]) / cpu_per_clip,
                      "walls": [s["measured_wall"] for s in runs],
                      "load_average": [s["load_before"] for s in runs]}
    print(json.dumps({"throughput": table}), flush=True)  # kept even if the cost part fails
    cpu = real_resolution_cpu()
    cpu_s = sum(cpu.values())
    gpu_s = (1 / a.gpu_caption_clips_per_s + 1 / a.gpu_detect_clips_per_s + 1 / a.gpu_aesthetic_clips_per_s
             + a.synthetic_share * a.refs_per_clip / a.gpu_edit_refs_per_s)
    cost = {"cpu_s_per_clip_480p_measured": cpu, "cpu_core_hours": a.clips * cpu_s / 3600,
            "gpu_s_per_clip_assumed": gpu_s, "gpu_hours": a.clips * gpu_s / 3600}
    cost["usd"] = cost["cpu_core_hours"] * a.cpu_hour_usd + cost["gpu_hours"] * a.gpu_hour_usd
    cost["wall_days_on_64_gpus_1024_cores"] = max(cost["gpu_hours"] / 64, cost["cpu_core_hours"] / 1024) / 24
    report = {"throughput": table, "cost_model": cost, "args": vars(a)}
    shutil.rmtree(root, ignore_errors=True)
    if a.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{a.num} raw SpriteWorld videos per run, {a.repeats} interleaved repeats (medians)")
    print(f"{'engine':10s} {'wall s':>8s} {'clips':>6s} {'clips/s':>8s} {'vs local-1':>10s} {'CPU s/clip':>10s} "
          f"{'load avg':>8s} {'clips/s if idle':>15s}")
    for k, t in table.items():
        print(f"{k:10s} {t['wall_s']:8.1f} {t['clips']:6d} {t['clips_per_s']:8.2f} {t['speedup_vs_local_1']:10.2f} "
              f"{t['cpu_s_per_clip']:10.3f} {np.mean(t['load_average']):8.1f} {t['idle_clips_per_s_estimate']:15.2f}")
    print("CPU seconds per clip in each step (clips/s of one core = 1 / this):")
    for step in table["local-1"]["step_cpu_s_per_clip"]:
        print(f"  {step:14s} " + " ".join(f"{k}={t['step_cpu_s_per_clip'][step]:.4f}" for k, t in table.items()))
    print("cost model for", f"{a.clips:.0f} clips:", json.dumps(cost, indent=1))


if __name__ == "__main__":
    main()
