"""Curation engines: a local process pool (default) and Ray Data, running the same steps.

Output folder:

    config.json          the resolved config (a re-run with another config is refused)
    plan.parquet         the imported input rows (importers run once; a resume reuses them)
    shards/shard-NNNNN.parquet   input rows [N S, (N + 1) S) after every step (S = shard_size)
    raw/, refs/          rendered SpriteWorld videos, reference crops
    manifest.parquet     all rows after dedup and mixing (the trainer reads the kept ones)
    summary.json         kept / dropped by reason, per source, seconds per step, clips/s

Resumable: a shard file is written atomically once all its rows passed every step, and a re-run
skips shards whose file exists, so a kill loses at most the shards in flight. A row that raises
is recorded with its error (`steps.apply_step`) and never stops the run.

Ray: the pending rows become a Ray Dataset (one block per shard, order preserved), each step is
one `flat_map` of the same step function (Ray fuses them into one task per block), and the
driver writes a shard's file as soon as its rows come back. Rows travel as JSON strings so that
Arrow never has to infer a type for a column that is null in the first rows it sees.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Iterator

from idcrafter.curation.config import CurationConfig
from idcrafter.curation.schema import DROP_REASONS, SOURCES, read_rows, write_rows
from idcrafter.curation.steps import STEP_NAMES, STEPS, apply_step, get_context
from idcrafter.errors import InputError

TOOL = "idcrafter data curate"
ENGINES = ("local", "ray")


def shard_path(out: Path, i: int) -> Path:
    return out / "shards" / f"shard-{i:05d}.parquet"


def _no_time() -> dict[str, dict[str, float]]:
    return {"wall": dict.fromkeys(STEP_NAMES, 0.0), "cpu": dict.fromkeys(STEP_NAMES, 0.0)}


def run_rows(rows: list[dict], config_json: str, out: str) -> tuple[list[dict], dict]:
    """Every step over `rows` (in order); (output rows, {"wall"|"cpu": seconds per step}). CPU
    seconds are this process's (`time.process_time`), so other load on the machine is not counted."""
    from time import perf_counter, process_time

    ctx = get_context(config_json, out)
    timings = _no_time()
    for name, fn in STEPS:
        t0, c0 = perf_counter(), process_time()
        rows = [r2 for r in rows for r2 in apply_step(name, fn, r, ctx)]
        timings["wall"][name] += perf_counter() - t0
        timings["cpu"][name] += process_time() - c0
    return rows, timings


def _order(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (r["plan_index"], r["scene_index"], r["id"]))


def _shard_job(config_json: str, out: str, index: int, rows: list[dict]) -> tuple[int, int, dict]:
    """Run a shard's rows through every step and write its file; (index, input rows, timings)."""
    done, timings = run_rows(rows, config_json, out)
    write_rows(shard_path(Path(out), index), _order(done))
    return index, len(rows), timings


def _worker_init() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass


def _local(config_json: str, out: Path, shards: dict[int, list[dict]], workers: int) -> Iterator[tuple[int, int, dict]]:
    if workers <= 1:
        _worker_init()
        for i, rows in shards.items():
            yield _shard_job(config_json, str(out), i, rows)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: a forked torch / OpenMP runtime can deadlock in the child
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init) as pool:
        futures = [pool.submit(_shard_job, config_json, str(out), i, rows) for i, rows in shards.items()]
        for fut in as_completed(futures):
            yield fut.result()


def _ray_step(item: dict, name: str, config_json: str, out: str) -> list[dict]:
    from time import perf_counter, process_time

    payload = json.loads(item["payload"])
    ctx = get_context(config_json, out)
    fn = dict(STEPS)[name]
    t0, c0 = perf_counter(), process_time()
    rows = apply_step(name, fn, payload["row"], ctx)
    dt, dc = perf_counter() - t0, process_time() - c0
    results = []
    for j, r in enumerate(rows):
        t = dict(payload["t"]) if j == 0 else {}  # a split row's time is counted once
        if j == 0:
            t[name], t["cpu:" + name] = t.get(name, 0.0) + dt, t.get("cpu:" + name, 0.0) + dc
        results.append({"payload": json.dumps({"row": r, "shard": payload["shard"], "n": payload["n"] if j == 0 else 0,
                                                "t": t})})
    return results


def _ray(config_json: str, out: Path, shards: dict[int, list[dict]], workers: int) -> Iterator[tuple[int, int, dict]]:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise InputError("the ray engine needs Ray: pip install 'ray[data]==2.60.0'") from exc
    import logging

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its per-dataset lines drown the progress bar
    started = not ray.is_initialized()
    if started:
        _start_ray(ray, workers)
    try:
        dctx = ray.data.DataContext.get_current()
        dctx.execution_options.preserve_order = True
        dctx.enable_progress_bars = False
        items = [{"payload": json.dumps({"row": r, "shard": i, "n": 1, "t": {}})}
                 for i, rows in shards.items() for r in rows]
        ds = ray.data.from_items(items, override_num_blocks=max(1, len(shards)))
        for name, _ in STEPS:
            ds = ds.flat_map(partial(_ray_step, name=name, config_json=config_json, out=str(out)))
        current, rows, n_in, timings = None, [], 0, _no_time()
        for item in ds.iter_rows():
            p = json.loads(item["payload"])
            if current is not None and p["shard"] != current:
                write_rows(shard_path(out, current), _order(rows))
                yield current, n_in, timings
                rows, n_in, timings = [], 0, _no_time()
            current = p["shard"]
            rows.append(p["row"])
            n_in += p["n"]
            for k, v in p["t"].items():
                kind, _, step = k.rpartition(":")
                timings["cpu" if kind else "wall"][step] += v
        if current is not None:
            write_rows(shard_path(out, current), _order(rows))
            yield current, n_in, timings
    finally:
        if started:
            ray.shutdown()


def _start_ray(ray, workers: int, attempts: int = 3) -> None:
    """A local Ray instance of `workers` CPUs. Ray waits a fixed 30 s for its raylet to register;
    on this 2-core machine under a load average of ~13 that was measured to fail, so retry."""
    for attempt in range(attempts):
        try:
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False,
                     configure_logging=True, logging_level="ERROR")
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on a start-up timeout
            ray.shutdown()
            if attempt == attempts - 1:
                raise InputError(f"Ray did not start ({exc}) after {attempts} attempts: the machine may be "
                                 f"overloaded; retry later or use --engine local") from exc


def _prepare(cfg: CurationConfig, out: Path) -> list[dict]:
    from idcrafter.curation.importers import build_plan
    from idcrafter.utils.io import atomic_write_text, check_writable_dir, mark_dir

    check_writable_dir(out, TOOL, fix="a new --out")
    out.mkdir(parents=True, exist_ok=True)
    mark_dir(out, TOOL)
    (out / "shards").mkdir(exist_ok=True)
    cfg_file = out / "config.json"
    text = json.dumps(cfg.to_dict(), indent=1, sort_keys=True)
    if cfg_file.is_file():
        if json.loads(cfg_file.read_text()) != json.loads(text):
            raise InputError(f"{out} holds a curation run of another config: resume it with the same config "
                             f"or choose a new --out")
    else:
        atomic_write_text(cfg_file, text)
    plan = out / "plan.parquet"
    if plan.is_file():
        return read_rows(plan)
    rows = build_plan(cfg)
    if not rows:
        raise InputError("the inputs hold no videos: check the paths in [[inputs]]")
    write_rows(plan, rows)
    return rows


def curate(cfg: CurationConfig, out: str | Path, engine: str = "local", workers: int = 1,
           progress: bool = True) -> dict:
    """Run (or resume) a curation into `out`; returns the summary (also written as summary.json)."""
    from tqdm import tqdm

    if engine not in ENGINES:
        raise InputError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if workers < 1:
        raise InputError(f"--workers must be >= 1, got {workers}")
    out = Path(out)
    t0 = time.perf_counter()
    plan = _prepare(cfg, out)
    size = cfg.shard_size
    n_shards = math.ceil(len(plan) / size)
    pending = {i: plan[i * size:(i + 1) * size] for i in range(n_shards) if not shard_path(out, i).is_file()}
    skipped = n_shards - len(pending)
    timings = _no_time()
    config_json = cfg.to_json()
    bar = tqdm(total=len(plan), initial=len(plan) - sum(len(r) for r in pending.values()), unit="video",
               desc=f"curating ({engine}, {workers} worker{'s' * (workers > 1)})", disable=not progress,
               file=sys.stderr)
    runner = _local if engine == "local" else _ray
    with bar:
        for _, n_in, t in runner(config_json, out, pending, workers) if pending else ():
            bar.update(n_in)
            for kind in ("wall", "cpu"):
                for k, v in t[kind].items():
                    timings[kind][k] += v
    summary = finalize(cfg, out, n_shards)
    summary.update(engine=engine, workers=workers, shards=n_shards, shards_skipped=skipped,
                   wall_seconds=time.perf_counter() - t0, step_seconds=timings["wall"],
                   step_cpu_seconds=timings["cpu"], inputs=len(plan))
    from idcrafter.utils.io import atomic_write_json

    atomic_write_json(out / "summary.json", summary)
    return summary


# ----------------------------------------------------------------------------- dedup and mixing

def dedup(hashes: list[str | None], max_distance: int) -> list[bool]:
    """True for each hash within `max_distance` bits of an earlier kept hash (None: never a
    duplicate). Candidates come from max_distance + 1 bands of the 64 bits: two hashes that differ
    in <= d bits agree on at least one of d + 1 bands (pigeonhole), so nothing is missed."""
    from idcrafter.curation.filters import hamming

    bands = max_distance + 1
    edges = [round(64 * b / bands) for b in range(bands + 1)]
    buckets: dict[tuple[int, int], list[str]] = {}
    out = []
    for h in hashes:
        if h is None:
            out.append(False)
            continue
        v = int(h, 16)
        keys = [(b, (v >> edges[b]) & ((1 << (edges[b + 1] - edges[b])) - 1)) for b in range(bands)]
        dup = any(hamming(h, o) <= max_distance for k in keys for o in buckets.get(k, ()))
        out.append(dup)
        if not dup:
            for k in keys:
                buckets.setdefault(k, []).append(h)
    return out


def mix_quotas(counts: dict[str, int], weights: dict[str, float], total: int = 0) -> dict[str, int]:
    """Rows to keep per source so the kept set has the weights' proportions: the largest total
    T (capped at `total` if > 0) with floor(T w_s / W) <= n_s for every source s that has rows
    and weight (W = their weights' sum); sources with weight 0 keep nothing."""
    active = {s: w for s, w in weights.items() if w > 0 and counts.get(s, 0) > 0}
    if not active:
        return {s: 0 for s in counts}
    wsum = sum(active.values())
    t = min(counts[s] / (w / wsum) for s, w in active.items())
    if total > 0:
        t = min(t, total)
    return {s: (math.floor(t * active[s] / wsum + 1e-9) if s in active else 0) for s in counts}


def _mix_order(seed: int, row_id: str) -> str:
    import hashlib

    return hashlib.sha1(f"{seed}:{row_id}".encode()).hexdigest()


def finalize(cfg: CurationConfig, out: Path, n_shards: int) -> dict:
    """Dedup and mixing over all shards, then manifest.parquet and the summary counts."""
    rows = [r for i in range(n_shards) for r in read_rows(shard_path(out, i))]
    kept = [r for r in rows if r["kept"]]
    for r, dup in zip(kept, dedup([r["phash"] for r in kept], cfg.dedup.max_distance)):
        if dup:
            r.update(kept=False, drop_reason="duplicate")
    kept = [r for r in kept if r["kept"]]
    counts = {s: sum(r["source"] == s for r in kept) for s in SOURCES}
    quotas = mix_quotas(counts, cfg.mix.weights, cfg.mix.total)
    for s in SOURCES:
        ranked = sorted((r for r in kept if r["source"] == s), key=lambda r: _mix_order(cfg.seed, r["id"]))
        for r in ranked[quotas[s]:]:
            r.update(kept=False, drop_reason="mixing")
    write_rows(out / "manifest.parquet", rows)
    return summarize(rows)


def summarize(rows: list[dict]) -> dict:
    dropped = {reason: sum(r["drop_reason"] == reason for r in rows) for reason in DROP_REASONS}
    return {"rows": len(rows), "kept": sum(bool(r["kept"]) for r in rows),
            "dropped": {k: v for k, v in dropped.items() if v},
            "kept_by_source": {s: sum(bool(r["kept"]) and r["source"] == s for r in rows) for s in SOURCES},
            "errors": [f"{r['id']}: {r['error']}" for r in rows if r["drop_reason"] == "error"][:20]}


def summary_table(summary: dict) -> str:
    lines = [f"rows {summary['rows']}  kept {summary['kept']}  "
             f"(real {summary['kept_by_source']['real']}, synthetic {summary['kept_by_source']['synthetic']}, "
             f"captured {summary['kept_by_source']['captured']})"]
    for reason, n in summary["dropped"].items():
        lines.append(f"  dropped {reason:16s} {n}")
    if "wall_seconds" in summary:
        lines.append(f"{summary['inputs']} input videos in {summary['wall_seconds']:.1f} s "
                     f"({summary['shards_skipped']} of {summary['shards']} shards were already done)")
    for e in summary["errors"][:5]:
        lines.append(f"  error: {e}")
    return "\n".join(lines)
