"""Results of an `idcrafter eval` run: averages, breakdown by number of subjects, the OpenS2V
Total, and the files a person reads (results.json / .csv, report.md / .html, figures, contact
sheets of the best and worst cases)."""

from __future__ import annotations

import csv
import html
import io
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from idcrafter.eval import opens2v

SHEETS = 3  # best and worst cases shown


def _mean(vals: list[float]) -> float | None:
    return float(np.mean(vals)) if vals else None


def _numeric(rec: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in rec.get("metrics", {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}


def rank_score(rec: dict[str, Any], kind: str, domain: str) -> float | None:
    """The value cases are ranked by: the judge's total (SpriteWorld) or the case's own OpenS2V
    Total over the metrics it has."""
    m = _numeric(rec)
    if kind == "sprites":
        return m.get("judge/total")
    have = {k: [m[k]] for k in opens2v.WEIGHTS[domain] if k in m}
    if not have:
        return None
    t = opens2v.total_score(have, domain)
    return None if math.isnan(float(t)) else float(t)


def summarise(records: Sequence[dict[str, Any]], spec, suite) -> dict[str, Any]:
    """results.json's content."""
    bench = spec.benchmark
    done = [r for r in records if r.get("status") == "done"]
    names = sorted({k for r in done for k in _numeric(r)})
    averages = {k: _mean([_numeric(r)[k] for r in done if k in _numeric(r)]) for k in names}
    counts = {k: sum(k in _numeric(r) for r in done) for k in names}
    by_k: dict[str, dict[str, float | None]] = {}
    for k in sorted({r["subjects"] for r in done}):
        rows = [r for r in done if r["subjects"] == k]
        by_k[str(k)] = {n: _mean([_numeric(r)[n] for r in rows if n in _numeric(r)]) for n in names}
        by_k[str(k)]["cases"] = len(rows)
    errors: dict[str, int] = {}
    for r in done:
        for name in r.get("errors", {}):
            errors[name] = errors.get(name, 0) + 1
    for r in done:
        r["rank_score"] = rank_score(r, bench.kind, bench.domain)
    out: dict[str, Any] = {
        "benchmark": bench.identity(), "model": str(spec.model) if spec.model else None,
        "videos": str(spec.videos) if spec.videos else None, "identity": spec.identity(),
        "config": spec.config.as_dict(), "cases_total": len(records), "cases_done": len(done),
        "cases_failed": [{"key": r["key"], "error": r.get("error")} for r in records if r.get("status") != "done"],
        "averages": averages, "counts": counts, "by_subjects": by_k, "missing": dict(suite.missing),
        "notes": suite.notes, "metric_errors": errors, "cases": list(records)}
    if bench.kind == "opens2v":
        per_video = {k: [_numeric(r)[k] for r in done if k in _numeric(r)] for k in opens2v.WEIGHTS[bench.domain]}
        reasons = {k: suite.missing.get(k, "no case scored") for k in per_video}
        t = opens2v.total_score({k: (v if v else None) for k, v in per_video.items()}, bench.domain, reasons)
        out["opens2v"] = {"total": None if math.isnan(float(t)) else float(t), "percent": t.percent,
                          "domain": t.domain, "complete": t.complete, "includes": list(t.includes),
                          "missing": t.missing, "parts": t.parts, "description": t.describe()}
    return out


# ---------------------------------------------------------------------- files
def _fmt(v: Any) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _csv(results: dict[str, Any]) -> str:
    names = sorted(results["averages"])
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["key", "subjects", "status", "error", "rank_score", *names])
    for r in results["cases"]:
        m = r.get("metrics", {})
        w.writerow([r["key"], r["subjects"], r.get("status"), r.get("error") or "; ".join(
            f"{k}: {v}" for k, v in r.get("errors", {}).items()), _fmt(r.get("rank_score")),
            *[_fmt(m.get(n)) for n in names]])
    return buf.getvalue()


def _tables(results: dict[str, Any], kind: str) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table of the report."""
    avg, counts = results["averages"], results["counts"]
    tables = []
    if kind == "sprites":
        keys = sorted({k.split("/", 1)[1] for k in avg if k.startswith("judge/")})
        rows = [[k, _fmt(avg.get(f"judge/{k}")), _fmt(avg.get(f"truth/{k}")), _fmt(avg.get(f"audit/{k}"))]
                for k in keys]
        tables.append(("Judge v2 (generated vs ground truth) and the audit judge",
                       ["metric", "generated", "ground truth", "audit judge"], rows))
    else:
        o = results["opens2v"]
        rows = [[k, _fmt(avg.get(k)), _fmt(o["parts"].get(k)), str(counts.get(k, 0)),
                 results["missing"].get(k, "") or results["notes"].get(k, "")] for k in opens2v.METRICS]
        tables.append((o["description"], ["metric", "raw average", "normalised", "videos", "missing / note"], rows))
        ours = [k for k in sorted(avg) if k.startswith("subjects/")]
        if ours:
            tables.append(("Beyond OpenS2V: several people per case (per-subject identity, leakage, copy-paste)",
                           ["metric", "average", "cases"], [[k, _fmt(avg[k]), str(counts[k])] for k in ours]))
    by = results["by_subjects"]
    if by:
        shown = _headline(avg, kind)
        tables.append(("By number of subjects", ["subjects", "cases", *shown],
                       [[k, str(v["cases"]), *[_fmt(v.get(n)) for n in shown]] for k, v in by.items()]))
    return tables


def _headline(avg: dict[str, Any], kind: str) -> list[str]:
    if kind == "sprites":
        want = ("judge/total", "judge/face_sim_mean", "judge/face_sim_min", "judge/leakage", "judge/copy_paste_max",
                "audit/total")
    else:
        want = ("aesthetics", "motion_amplitude", "face_sim", "gme", "natural", "subjects/face_sim_min",
                "subjects/leakage")
    return [k for k in want if k in avg]


def _figures(out: Path, results: dict[str, Any], kind: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from idcrafter.utils.io import atomic_write_bytes

    made = []
    avg = results["averages"]
    fig, ax = plt.subplots(figsize=(9.5, 3.6))
    if kind == "sprites":  # the judge's figures beside the audit judge's, the ground truth as the ceiling
        names = sorted({k.split("/", 1)[1] for k in avg if k.startswith(("judge/", "audit/")) and avg[k] is not None})
        x = np.arange(len(names))
        for off, prefix, colour in ((-0.2, "judge", "#4477aa"), (0.2, "audit", "#bbbbbb")):
            ax.bar(x + off, [avg.get(f"{prefix}/{n}") or 0.0 for n in names], 0.4, color=colour,
                   label=f"{prefix} (generated)")
        truth = [(i, avg.get(f"truth/{n}")) for i, n in enumerate(names) if avg.get(f"truth/{n}") is not None]
        ax.scatter([i - 0.2 for i, _ in truth], [v for _, v in truth], color="#cc3311", marker="_", s=250,
                   label="judge on the ground truth", zorder=3)
    else:  # normalised OpenS2V parts and ours, all on [0, 1]
        parts = {**results["opens2v"]["parts"], **{k: v for k, v in avg.items() if k.startswith("subjects/")}}
        names = list(parts)
        x = np.arange(len(names))
        ax.bar(x, [parts[n] if parts[n] is not None else 0.0 for n in names], 0.6, color="#4477aa")
        ax.set_ylabel("normalised as in the Total")
    if names:
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
        if kind == "sprites":
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title("metric averages")
        fig.tight_layout()
        made.append(_save(fig, out / "figures" / "metrics.png", atomic_write_bytes))
    by, shown = results["by_subjects"], _headline(avg, kind)
    if by and shown:
        fig, ax = plt.subplots(figsize=(8.5, 3.6))
        ks = list(by)
        width = 0.8 / len(shown)
        for j, n in enumerate(shown):
            ax.bar([i + j * width for i in range(len(ks))], [by[k].get(n) or 0.0 for k in ks], width, label=n)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ks))], [f"{k} subject(s)" for k in ks])
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.set_title("by number of subjects")
        fig.tight_layout()
        made.append(_save(fig, out / "figures" / "by_subjects.png", atomic_write_bytes))
    plt.close("all")
    return made


def _save(fig, path: Path, write) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    path.parent.mkdir(parents=True, exist_ok=True)
    write(path, buf.getvalue())
    return f"{path.parent.name}/{path.name}"


def _sheets(out: Path, results: dict[str, Any], cases: Sequence[Any]) -> list[tuple[str, str]]:
    """Contact sheets (references | 8 frames) of the best and worst ranked cases."""
    from idcrafter.utils.io import atomic_write_bytes
    from idcrafter.utils.media import contact_sheet, read_video

    ranked = sorted((r for r in results["cases"] if r.get("rank_score") is not None), key=lambda r: r["rank_score"])
    if not ranked:
        return []
    by_key = {c.key: c for c in cases}
    picks = [("best", r) for r in ranked[::-1][:SHEETS]] + [("worst", r) for r in ranked[:SHEETS]]
    made = []
    for i, (label, r) in enumerate(picks):
        try:
            frames = read_video(r["video"])
            refs = by_key[r["key"]].references
        except Exception:  # noqa: BLE001 - a sheet is a courtesy; the numbers stand without it
            continue
        idx = np.linspace(0, len(frames) - 1, min(8, len(frames))).astype(int)
        shown = [_thumb(frames[j]) for j in idx]
        sheet = contact_sheet([("references", [_thumb(x) for x in refs]), (f"{label} {r['rank_score']:.3f}", shown)],
                              upscale=1)
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(sheet).save(buf, format="PNG")
        name = f"sheets/{label}_{i % SHEETS}_{r['key']}.png"
        (out / "sheets").mkdir(exist_ok=True)
        atomic_write_bytes(out / name, buf.getvalue())
        made.append((name, f"{label}: {r['key']} ({r['rank_score']:.3f}): {r['prompt'][:120]}"))
    return made


def _thumb(image: np.ndarray, height: int = 128) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    if h == height:
        return image
    interp = cv2.INTER_NEAREST if h < height else cv2.INTER_AREA
    return cv2.resize(np.ascontiguousarray(image), (max(1, round(w * height / h)), height), interpolation=interp)


def write_outputs(out: Path, results: dict[str, Any], cases: Sequence[Any]) -> None:
    from idcrafter.utils.io import atomic_write_json, atomic_write_text

    kind = results["benchmark"]["kind"]
    figures = _figures(out, results, kind)
    sheets = _sheets(out, results, cases)
    atomic_write_json(out / "results.json", results, indent=1)
    atomic_write_text(out / "results.csv", _csv(results))
    tables = _tables(results, kind)
    atomic_write_text(out / "report.md", _markdown(results, tables, figures, sheets))
    atomic_write_text(out / "report.html", _html(results, tables, figures, sheets))


def _intro(results: dict[str, Any]) -> list[str]:
    src = f"model `{results['model']}`" if results["model"] else f"videos in `{results['videos']}`"
    lines = [f"Benchmark `{results['benchmark']['name']}` ({results['benchmark']['kind']}), {src}: "
             f"{results['cases_done']} of {results['cases_total']} cases scored."]
    if results["cases_failed"]:
        lines.append("Failed cases: " + "; ".join(f"{f['key']} ({f['error']})" for f in results["cases_failed"]))
    for name, reason in results["missing"].items():
        lines.append(f"Missing metric `{name}`: {reason}")
    for name, count in results["metric_errors"].items():
        lines.append(f"Metric `{name}` failed on {count} case(s): see results.csv")
    return lines


def _markdown(results, tables, figures, sheets) -> str:
    lines = ["# idcrafter eval report", "", *[f"- {x}" for x in _intro(results)], ""]
    for title, header, rows in tables:
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
        lines.append("")
    lines += [f"![{f}]({f})" for f in figures]
    if sheets:
        lines += ["", "## Best and worst cases", ""] + [f"![{cap.split(':')[0]}]({name})\n\n{cap}\n"
                                                        for name, cap in sheets]
    return "\n".join(lines) + "\n"


def _html(results, tables, figures, sheets) -> str:
    e = html.escape
    parts = ["<!doctype html><meta charset='utf-8'><title>idcrafter eval</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}</style>",
             "<h1>idcrafter eval report</h1><ul>", *[f"<li>{e(x)}</li>" for x in _intro(results)], "</ul>"]
    for title, header, rows in tables:
        parts.append(f"<h2>{e(title)}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts += [f"<p><img src='{e(f)}'></p>" for f in figures]
    if sheets:
        parts.append("<h2>Best and worst cases</h2>")
        parts += [f"<figure><img src='{e(n)}'><figcaption>{e(c)}</figcaption></figure>" for n, c in sheets]
    return "\n".join(parts) + "\n"
