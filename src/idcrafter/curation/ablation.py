"""The paper's curation ablation on SpriteWorld: naive pairs against curated pairs.

`make_pairs` curates the same raw SpriteWorld videos twice:

- `naive/`: every reference is cropped from the clip's own frames (compose off) and the
  copy-paste filter is off (it would drop every such pair);
- `curated/`: every reference is the SpriteWorld compose backend's rendering of the subject in
  another pose, scale, lighting and background, and the copy-paste filter is on.

Both manifests are then cut to the clips kept in both (the ids match: same videos, same scene
split), so the two training sets differ only in their references. `scripts/curation_ablation.py`
trains the generator on each at the same budget and judges held-out casts.
"""

from __future__ import annotations

from pathlib import Path

from idcrafter.curation.config import sprites_config
from idcrafter.curation.engine import curate


def make_pairs(out: str | Path, num: int, seed: int, engine: str = "local", workers: int = 1,
               progress: bool = True, split: str = "train") -> dict:
    """Write `out/naive` and `out/curated` (each a curation folder with manifest.parquet)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from idcrafter.curation.schema import read_table, table_bytes
    from idcrafter.utils.io import atomic_write_bytes, atomic_write_json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    arms = {"naive": sprites_config(num, seed, compose=False, **{"filters.max_copy_paste": 1.01}),
            "curated": sprites_config(num, seed, compose=True)}
    summaries = {}
    for name, cfg in arms.items():
        cfg.inputs[0].split = split
        summaries[name] = curate(cfg, out / name, engine=engine, workers=workers, progress=progress)
    tables = {name: read_table(out / name / "manifest.parquet") for name in arms}
    kept = [set(t.filter(t["kept"])["id"].to_pylist()) for t in tables.values()]
    both = set.intersection(*kept)
    for name, t in tables.items():
        in_both = pc.is_in(t["id"], value_set=pa.array(sorted(both), pa.string()))
        lost = pc.and_(t["kept"], pc.invert(in_both))
        reason = pc.if_else(lost, pa.scalar("mixing"), t["drop_reason"])
        t = t.set_column(t.schema.get_field_index("kept"), "kept", pc.and_(t["kept"], in_both))
        t = t.set_column(t.schema.get_field_index("drop_reason"), "drop_reason", reason)
        atomic_write_bytes(out / name / "manifest.parquet", table_bytes(t))
    report = {"clips_in_both": len(both), "naive": summaries["naive"], "curated": summaries["curated"],
              "copy_paste_risk_mean": {name: _mean_risk(t, both) for name, t in tables.items()}}
    atomic_write_json(out / "pairs.json", report)
    write_sheet(out, sorted(both)[:4])
    return report


def write_sheet(out: Path, ids: list[str]) -> Path:
    """`out/pairs_sheet.png`: per clip, 5 of its frames, then its naive and its curated references."""
    import io

    from PIL import Image

    from idcrafter.curation.media import load_clip
    from idcrafter.curation.schema import read_rows
    from idcrafter.utils.io import atomic_write_bytes
    from idcrafter.utils.media import contact_sheet, load_image

    arms = {name: {r["id"]: r for r in read_rows(out / name / "manifest.parquet")} for name in ("naive", "curated")}
    rows = []
    for i in ids:
        r = arms["naive"][i]
        frames, _ = load_clip(out / "naive" / r["video_uri"], r["clip_start"], r["clip_end"], r["crop"], 5)
        rows.append((i.split("-")[-1], list(frames)))
        for name in arms:
            subs = arms[name][i]["subjects"]
            risk = arms[name][i]["copy_paste_risk"]
            rows.append((f"{name} {risk:.2f}", [load_image(out / name / s["ref_uri"]) for s in subs]))
    buf = io.BytesIO()
    Image.fromarray(contact_sheet(rows, upscale=3, label_width=110)).save(buf, format="PNG")
    return atomic_write_bytes(out / "pairs_sheet.png", buf.getvalue())


def _mean_risk(table, ids: set[str]) -> float | None:
    vals = [r for i, r in zip(table["id"].to_pylist(), table["copy_paste_risk"].to_pylist())
            if i in ids and r is not None]
    return float(sum(vals) / len(vals)) if vals else None
