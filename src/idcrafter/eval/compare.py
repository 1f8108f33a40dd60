"""`idcrafter compare RUN_DIR ...`: runs of `idcrafter eval` side by side, with deltas against the
first run (higher is better for every metric except leakage and copy-paste).

When two runs scored the same cases, a delta carries the standard error of its paired
per-case differences (`paired_delta`): the cases are shared, so the case-to-case spread that
dominates both averages cancels, and a delta within about two standard errors of zero is not a
ranking."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from idcrafter.errors import InputError

LOWER_IS_BETTER = ("leakage", "copy_paste")


def load_results(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise InputError(f"{run_dir} is not an idcrafter eval folder (no results.json): pass folders written by "
                         f"`idcrafter eval --out`")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise InputError(f"{path} is not valid JSON: re-run `idcrafter eval` on that folder") from None


def compare_rows(runs: Sequence[dict[str, Any]]) -> list[tuple[str, list[float | None]]]:
    """(metric, value per run), the OpenS2V Total first when the runs have one."""
    rows: list[tuple[str, list[float | None]]] = []
    if any("opens2v" in r for r in runs):
        rows.append(("opens2v/total", [(r.get("opens2v") or {}).get("total") for r in runs]))
    names = sorted({k for r in runs for k, v in r.get("averages", {}).items() if v is not None})
    rows += [(k, [r.get("averages", {}).get(k) for r in runs]) for k in names]
    return rows


def case_values(run: dict[str, Any], metric: str) -> dict[str, float]:
    """{case key: value} of one metric over a run's scored cases (finite values only)."""
    out = {}
    for c in run.get("cases") or []:
        v = (c.get("metrics") or {}).get(metric)
        if c.get("status", "done") == "done" and isinstance(v, (int, float)) and math.isfinite(v):
            out[c["key"]] = float(v)
    return out


def paired_delta(base: dict[str, float], other: dict[str, float]) -> tuple[float, float, int] | None:
    """(mean, standard error, n) of other - base over the case keys both have; None below 2 cases.
    SE = sample std (ddof 1) of the differences / sqrt(n)."""
    keys = sorted(base.keys() & other.keys())
    if len(keys) < 2:
        return None
    d = [other[k] - base[k] for k in keys]
    mean = sum(d) / len(d)
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return mean, math.sqrt(var / len(d)), len(d)


def compare_markdown(run_dirs: Sequence[str | Path], runs: Sequence[dict[str, Any]]) -> str:
    if len(runs) < 1:
        raise InputError("pass at least one run folder")
    names = [Path(d).name for d in run_dirs]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for metric, vals in compare_rows(runs):
        base = case_values(runs[0], metric)
        cells = []
        for i, v in enumerate(vals):
            if v is None:
                cells.append("n/a")
            elif i == 0 or vals[0] is None:
                cells.append(f"{v:.4f}")
            else:
                d = v - vals[0]
                worse = d > 0 if any(t in metric for t in LOWER_IS_BETTER) else d < 0
                paired = paired_delta(base, case_values(runs[i], metric))
                se = f" ± {paired[1]:.4f}" if paired is not None else ""
                cells.append(f"{v:.4f} ({d:+.4f}{se}{' worse' if worse and abs(d) > 1e-12 else ''})")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    # a sprites world is each generator's own size (`Benchmark.for_model`): the same casts at another length
    benches = {json.dumps({k: v for k, v in (r.get("benchmark") or {}).items() if k != "world"}, sort_keys=True)
               for r in runs}
    ident = {json.dumps({k: v for k, v in (r.get("identity") or {}).items() if k in ("cases", "seed")},
                        sort_keys=True) for r in runs}
    worlds = [(r.get("benchmark") or {}).get("world") for r in runs]
    notes = []
    if len(benches) > 1 or len(ident) > 1:
        notes.append("Warning: these runs were not made on the same benchmark cases; deltas compare different cases.")
    elif len({json.dumps(w, sort_keys=True) for w in worlds}) > 1:
        sizes = ", ".join(f"{n} {w['frames']}x{w['height']}x{w['width']} (refs {w['ref_size']} px)" if w else f"{n} ?"
                          for n, w in zip(names, worlds))
        notes.append(f"The same casts rendered at each model's own size: {sizes}.")
    if len(runs) > 1 and any(r.get("cases") for r in runs):
        notes.append("± : standard error of the paired per-case differences against the first run.")
    for name, r in zip(names, runs):
        if r.get("cases_done") != r.get("cases_total"):
            notes.append(f"{name}: {r.get('cases_done')} of {r.get('cases_total')} cases scored.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"
