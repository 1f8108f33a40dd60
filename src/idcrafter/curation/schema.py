"""The curation manifest: one Parquet schema, one row per training sample.

A row is a plain dict (what every step function takes and returns, and what Ray Data moves);
`SCHEMA` is its Arrow form. Columns:

| column | type | meaning |
|---|---|---|
| `id` | string | unique row id: `<origin>:<key>` plus `#s<scene>` once the scene split cut it |
| `source` | string | `real`, `synthetic` or `captured` (the three sources mixed by weight) |
| `origin` | string | importer: `opens2v`, `folder`, `csv`, `captured`, `sprites` |
| `video_uri` | string | path of the video, relative to the manifest's folder (or absolute) |
| `clip_start`, `clip_end` | int32 | frames [start, end) of the clip in that video (end exclusive) |
| `fps`, `width`, `height` | float32, int32 | of the video (after `crop`) |
| `crop` | list<int32>[4] or null | x0, y0, x1, y1 window applied to every frame first (watermarks) |
| `caption`, `caption_origin` | string | the caption and who wrote it (`annotation`, `truth`, `qwen`, `openai`) |
| `subjects` | list<struct> | per subject: `name`, `class_label`, `ref_uri` (the reference crop), `ref_origin` (`frame` = cropped from this clip's own frames, `edit:<backend>` = composed into another context, `provided` = shot separately, `cross_clip` = another clip of the same subject), `ref_frame`, `box_frames` + `boxes` (the box track: x0 y0 x1 y1 pixels of the cropped frame at those absolute frame indices), `det_score`, `face_quality` (null for non-faces), `identity` (ground truth when known) |
| `aesthetic`, `motion`, `resolution`, `duration`, `copy_paste_risk`, `face_quality` | float32 | every filter's score (null when that filter did not run); see `curation.filters` |
| `phash` | string | 64-bit perceptual hash (16 hex digits) of the clip's key frames, for dedup |
| `kept` | bool | in the training set |
| `drop_reason` | string or null | the first reason it was dropped (`DROP_REASONS`) |
| `error` | string or null | `step: ExceptionType: message` of a row that failed (drop_reason `error`) |
| `meta` | string | JSON: importer extras (OpenS2V scores, SpriteWorld ground truth) |
| `plan_index`, `scene_index` | int64, int32 | input row number in the plan and scene number inside it (the row order) |

The trainer reads it directly (`read_training_items`, used by `train.data.ManifestSource` for
`.parquet` paths); `to_jsonl` converts it to the JSONL manifest for older readers.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Iterable

from idcrafter.errors import InputError

SCHEMA_VERSION = "idcrafter-curation-v1"
SOURCES = ("real", "synthetic", "captured")
DROP_REASONS = (
    "error", "unreadable", "no_scene", "duration", "resolution", "no_subject", "missing_subject",
    "face_quality", "no_caption", "aesthetic", "motion", "copy_paste", "duplicate", "mixing",
)
SCORE_COLUMNS = ("aesthetic", "motion", "resolution", "duration", "copy_paste_risk", "face_quality")
SUBJECT_FIELDS = ("name", "class_label", "ref_uri", "ref_origin", "ref_frame", "box_frames", "boxes",
                  "det_score", "face_quality", "identity")


def _arrow():
    try:
        import pyarrow as pa
    except ImportError as exc:  # pragma: no cover - pinned dependency
        raise InputError("pyarrow is needed for curation manifests: pip install pyarrow==26.0.1") from exc
    return pa


def subject_type():
    pa = _arrow()
    return pa.struct([
        ("name", pa.string()), ("class_label", pa.string()), ("ref_uri", pa.string()),
        ("ref_origin", pa.string()), ("ref_frame", pa.int32()), ("box_frames", pa.list_(pa.int32())),
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))), ("det_score", pa.float32()),
        ("face_quality", pa.float32()), ("identity", pa.string()),
    ])


def schema():
    """The Arrow schema of a manifest (and of every shard)."""
    pa = _arrow()
    f32 = pa.float32()
    fields = [
        ("id", pa.string()), ("source", pa.string()), ("origin", pa.string()), ("video_uri", pa.string()),
        ("clip_start", pa.int32()), ("clip_end", pa.int32()), ("fps", f32), ("width", pa.int32()),
        ("height", pa.int32()), ("crop", pa.list_(pa.int32(), 4)), ("caption", pa.string()),
        ("caption_origin", pa.string()), ("subjects", pa.list_(subject_type())),
        *[(c, f32) for c in SCORE_COLUMNS],
        ("phash", pa.string()), ("kept", pa.bool_()), ("drop_reason", pa.string()), ("error", pa.string()),
        ("meta", pa.string()), ("plan_index", pa.int64()), ("scene_index", pa.int32()),
    ]
    return pa.schema(fields, metadata={b"format": SCHEMA_VERSION.encode()})


COLUMNS = tuple(schema().names)


def new_row(**fields: Any) -> dict:
    """A row with every column present (unknowns None; kept True until a step drops it)."""
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(kept=True, subjects=[], meta="{}", scene_index=0)
    unknown = set(fields) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown manifest columns {sorted(unknown)}")
    row.update(fields)
    return row


def new_subject(**fields: Any) -> dict:
    s: dict[str, Any] = {f: None for f in SUBJECT_FIELDS}
    s.update(box_frames=[], boxes=[])
    s.update(fields)
    return s


def drop(row: dict, reason: str, error: str | None = None) -> dict:
    """Mark a row dropped for `reason` (the first reason wins; later steps keep it)."""
    if reason not in DROP_REASONS:
        raise ValueError(f"unknown drop reason {reason!r}")
    if row["kept"]:
        row["kept"], row["drop_reason"] = False, reason
    if error is not None and row.get("error") is None:
        row["error"] = error
    return row


def meta(row: dict) -> dict:
    return json.loads(row.get("meta") or "{}")


def set_meta(row: dict, value: dict) -> None:
    row["meta"] = json.dumps(value, sort_keys=True)


def _clean(value: Any) -> Any:
    """numpy scalars / arrays -> Python values Arrow accepts; NaN floats -> None."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def rows_to_table(rows: Iterable[dict]):
    pa = _arrow()
    rows = [_clean({c: r.get(c) for c in COLUMNS}) for r in rows]
    for r in rows:
        r["subjects"] = [{f: s.get(f) for f in SUBJECT_FIELDS} for s in (r["subjects"] or [])]
    return pa.Table.from_pylist(rows, schema=schema())


def table_bytes(table) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def write_rows(path: str | Path, rows: Iterable[dict]) -> Path:
    """Write rows as one Parquet file, atomically."""
    from idcrafter.utils.io import atomic_write_bytes

    return atomic_write_bytes(path, table_bytes(rows_to_table(rows)))


def read_table(path: str | Path, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise InputError(f"manifest not found: {path} (make one with `idcrafter data curate`)")
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as exc:  # noqa: BLE001 - any Arrow failure means a bad file for the user
        raise InputError(f"cannot read Parquet manifest {path}: {type(exc).__name__}: {exc}") from exc
    missing = set(columns or ("id", "video_uri", "subjects", "kept")) - set(table.column_names)
    if missing:
        raise InputError(f"{path} is not an idcrafter curation manifest (no columns {sorted(missing)})")
    return table


def read_rows(path: str | Path) -> list[dict]:
    return read_table(path).to_pylist()


def _resolve(root: Path, uri: str) -> str:
    p = Path(uri)
    return str(p if p.is_absolute() else root / p)


def read_training_items(path: str | Path, resolve: bool = True) -> list[dict]:
    """Kept rows of a manifest as the trainer's items: {"video", "references", "caption",
    "window": [start, end) frames, "crop": x0 y0 x1 y1 or None, "boxes": each subject's extent
    over its box track or None (the trainer's subject mask)}, paths resolved against the
    manifest's folder (or as stored, `resolve=False`: the trainer applies its own path rules).
    Rows without a caption or without any reference crop are skipped."""
    path = Path(path)
    table = read_table(path, ["video_uri", "clip_start", "clip_end", "crop", "caption", "subjects", "kept"])
    items: list[dict] = []
    for r in table.to_pylist():
        subs = [s for s in r["subjects"] or [] if s.get("ref_uri")]
        refs = [s["ref_uri"] for s in subs]
        if not r["kept"] or not refs or not r["caption"]:
            continue
        # each subject's extent over its box track (cropped-frame pixels), when every one has a track
        boxes = [[min(b[0] for b in s["boxes"]), min(b[1] for b in s["boxes"]), max(b[2] for b in s["boxes"]),
                  max(b[3] for b in s["boxes"])] for s in subs if s.get("boxes")]
        window = None if r["clip_start"] is None or r["clip_end"] is None else [r["clip_start"], r["clip_end"]]
        fix = (lambda u: _resolve(path.parent, u)) if resolve else (lambda u: u)
        items.append({"video": fix(r["video_uri"]), "references": [fix(u) for u in refs],
                      "caption": r["caption"], "window": window, "crop": r["crop"],
                      "boxes": boxes if len(boxes) == len(subs) else None})
    return items


def to_jsonl(manifest: str | Path, out: str | Path) -> int:
    """Write the kept rows as the JSONL manifest (`train.data` format with window, crop and boxes,
    which its reader honours); paths inside `out`'s folder become relative, others stay absolute
    (then train with data.absolute_paths=true). Returns the number of lines."""
    import os

    from idcrafter.utils.io import atomic_write_text

    out = Path(out)
    base = out.parent.resolve()

    def rel(p: str) -> str:  # inside out's folder: relative; elsewhere absolute (data.absolute_paths)
        r = os.path.relpath(Path(p).resolve(), base)
        return str(Path(p).resolve()) if r == ".." or r.startswith(".." + os.sep) else r

    lines = [json.dumps(dict(it, video=rel(it["video"]), references=[rel(r) for r in it["references"]]))
             for it in read_training_items(manifest)]
    atomic_write_text(out, "".join(line + "\n" for line in lines))
    return len(lines)
