"""Importers: each turns one `[[inputs]]` entry into plan rows (cheap; no video is decoded).

**OpenS2V-5M / OpenS2V-Nexus** (`kind = "opens2v"`), matched against the published demo JSON
(`data_process/demo_result/step5/merge_final_json/dataset1.json`) and dataloader
(`data_process/demo_dataloader.py`) of PKU-YuanGroup/OpenS2V-Nexus. One JSON object maps a clip
key to:

    metadata:   path (video, relative to the part's video folder), face_cut [start, end) frames,
                cut, crop [s_x, e_x, s_y, e_y] (watermark removal), fps, num_frames,
                resolution {height, width}, face_cap_qwen / cap[0] (caption), aesthetic, motion, tech
    annotation: ann_frame_data {ann_frame_idx, annotations [{class_name, bbox xyxy, gme_score,
                aes_score}], img_width, img_height}; mask_map {"1": {class_name}, ...};
                mask_annotation {str(ann_frame_idx): {"1": COCO RLE {size, counts}, ...}}
                (mask "i" belongs to annotations[i - 1]; boxes and masks are in the cropped frame)

We keep as subjects the masks whose class is in `classes` (default: words for people), largest
first, dropping a mask that overlaps an already kept one by IoU > 0.7 (OpenS2V lists one person
as "person", "woman" and "individual"), at most `subjects.max_subjects`. Nexus cross-frame pairs
(`cross_pairs`: a JSON list, or a folder of them, of {cur_id, aft_id, cur_class_name,
aft_class_name, image_similarity, ...}; ids may carry a "part/" prefix) give a subject a reference
from another clip of the same video cluster: the matching mask of the `aft_id` clip's annotated
frame (used when that clip is in the same JSON).

**Folder / CSV** (`kind = "folder" | "csv"`): every video file under the folder (sorted), or a
CSV with a `video` column (relative to the CSV) and optional `caption`, `start`, `end` (frames).

**Captured** (`kind = "captured"`), one folder per take:

    <path>/<take>/video.mp4        the first *.mp4 / *.mov / *.mkv / *.webm of the folder
    <path>/<take>/caption.txt      optional
    <path>/<take>/subjects.json    optional: [{"name", "class_label", "reference": "refs/a.jpg"}]
    <path>/<take>/refs/<name>.png  studio references (without subjects.json: one subject each)

**SpriteWorld** (`kind = "sprites"`): `num` raw videos, rendered by the `materialize` step.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from idcrafter.curation.config import CurationConfig, InputConfig
from idcrafter.curation.schema import new_row, new_subject
from idcrafter.errors import InputError

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PEOPLE = ("person", "man", "woman", "boy", "girl", "child", "kid", "baby", "people", "human", "lady",
          "gentleman", "individual", "face", "human head")


def import_input(inp: InputConfig, cfg: CurationConfig) -> list[dict]:
    rows = {"opens2v": import_opens2v, "folder": import_folder, "csv": import_csv,
            "captured": import_captured, "sprites": import_sprites}[inp.kind](inp, cfg)
    rows = rows[: inp.limit] if inp.limit else rows
    for r in rows:
        r["source"] = inp.resolved_source()
        m = json.loads(r["meta"])
        m["compose"] = bool(inp.compose)
        r["meta"] = json.dumps(m, sort_keys=True)
    return rows


def build_plan(cfg: CurationConfig) -> list[dict]:
    """Every input's rows, numbered (`plan_index`) in config order; ids must be unique."""
    rows: list[dict] = []
    for inp in cfg.inputs:
        rows += import_input(inp, cfg)
    seen: set[str] = set()
    for i, r in enumerate(rows):
        if r["id"] in seen:
            raise InputError(f"two input rows share the id {r['id']!r}: the same video listed twice?")
        seen.add(r["id"])
        r["plan_index"] = i
    return rows


# ----------------------------------------------------------------------------- OpenS2V

def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read JSON {path}: {exc}") from exc


def _mask_iou(a: dict, b: dict) -> float:
    from idcrafter.curation import rle

    ma, mb = rle.decode(a), rle.decode(b)
    union = (ma | mb).sum()
    return float((ma & mb).sum() / union) if union else 0.0


def opens2v_subjects(item: dict, classes: tuple[str, ...], max_subjects: int) -> tuple[int, list[dict]]:
    """(annotated frame, subjects [{index, class_name, bbox, gme_score, aes_score, rle}])."""
    from idcrafter.curation import rle

    ann = item["annotation"]
    frame = int(ann["ann_frame_data"]["ann_frame_idx"])
    boxes = ann["ann_frame_data"]["annotations"]
    masks = ann.get("mask_annotation", {}).get(str(frame), {})
    cands = []
    for key, m in masks.items():
        name = ann["mask_map"][key]["class_name"]
        if name.lower() not in classes:
            continue
        b = boxes[int(key) - 1]
        area = int(rle.decode(m).sum())
        cands.append({"index": int(key), "class_name": name, "bbox": [float(v) for v in b["bbox"]],
                      "gme_score": b.get("gme_score"), "aes_score": b.get("aes_score"), "rle": m, "area": area})
    kept: list[dict] = []
    for c in sorted(cands, key=lambda c: (-c["area"], c["index"])):
        if len(kept) < max_subjects and all(_mask_iou(c["rle"], k["rle"]) <= 0.7 for k in kept):
            kept.append(c)
    return frame, kept


def _cross_pairs(path: Path | None) -> dict[str, list[dict]]:
    if path is None:
        return {}
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    out: dict[str, list[dict]] = {}
    for f in files:
        data = _read_json(f)
        for pair in data if isinstance(data, list) else []:
            cur = str(pair["cur_id"]).split("/")[-1]
            out.setdefault(cur, []).append({**pair, "aft_id": str(pair["aft_id"]).split("/")[-1]})
    return out


def import_opens2v(inp: InputConfig, cfg: CurationConfig) -> list[dict]:
    path = Path(inp.path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: an OpenS2V JSON maps clip keys to {{metadata, annotation}} objects")
    root = Path(inp.video_root) if inp.video_root else path.parent
    classes = tuple(c.lower() for c in (inp.classes or PEOPLE))
    pairs = _cross_pairs(Path(inp.cross_pairs) if inp.cross_pairs else None)
    rows = []
    for key, item in data.items():
        try:
            md = item["metadata"]
            frame, subs = opens2v_subjects(item, classes, cfg.subjects.max_subjects)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: clip {key!r} is not in the OpenS2V format ({type(exc).__name__}: {exc})") from exc
        start, end = md.get("face_cut") or md.get("cut") or [0, md.get("num_frames")]
        s_x, e_x, s_y, e_y = md.get("crop") or [0, md["resolution"]["width"], 0, md["resolution"]["height"]]
        for s in subs:
            for p in pairs.get(key, []):
                other = data.get(p["aft_id"])
                if p.get("cur_class_name") == s["class_name"] and other is not None and p["aft_id"] != key:
                    o_frame, o_subs = opens2v_subjects(other, (p["aft_class_name"].lower(),), 1)
                    if o_subs:
                        om = other["metadata"]
                        oc = om.get("crop") or [0, om["resolution"]["width"], 0, om["resolution"]["height"]]
                        s["cross"] = {"video": str(root / om["path"]), "frame": o_frame, "rle": o_subs[0]["rle"],
                                      "crop": [oc[0], oc[2], oc[1], oc[3]], "clip": p["aft_id"],
                                      "image_similarity": p.get("image_similarity")}
                        break
        caption = md.get("face_cap_qwen") or (md.get("cap") or [None])[0]
        meta = {"opens2v": {"key": key, "ann_frame": frame, "subjects": subs,
                            "scores": {k: md.get(k) for k in ("aesthetic", "motion", "tech")}}}
        rows.append(new_row(id=f"opens2v:{key}", origin="opens2v", video_uri=str(root / md["path"]),
                            clip_start=int(start), clip_end=int(end), fps=float(md.get("fps") or 0) or None,
                            crop=[int(s_x), int(s_y), int(e_x), int(e_y)], caption=caption,
                            caption_origin="annotation" if caption else None, meta=json.dumps(meta)))
    return rows


# ----------------------------------------------------------------------------- folder / CSV

def _videos_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_EXTS and p.is_file())


def import_folder(inp: InputConfig, cfg: CurationConfig) -> list[dict]:
    folder = Path(inp.path)
    if not folder.is_dir():
        raise InputError(f"video folder not found: {folder}")
    return [new_row(id=f"folder:{p.relative_to(folder)}", origin="folder", video_uri=str(p.resolve()))
            for p in _videos_under(folder)]


def import_csv(inp: InputConfig, cfg: CurationConfig) -> list[dict]:
    path = Path(inp.path)
    if not path.is_file():
        raise InputError(f"CSV not found: {path}")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "video" not in reader.fieldnames:
            raise InputError(f"{path} needs a header with a `video` column (and optional caption, start, end)")
        rows = []
        for i, rec in enumerate(reader):
            video = Path(rec["video"])
            video = video if video.is_absolute() else (path.parent / video).resolve()
            try:
                start = int(rec["start"]) if rec.get("start") else None
                end = int(rec["end"]) if rec.get("end") else None
            except ValueError as exc:
                raise InputError(f"{path}:{i + 2}: start/end must be frame numbers ({exc})") from exc
            caption = rec.get("caption") or None
            rows.append(new_row(id=f"csv:{i}:{video.name}", origin="csv", video_uri=str(video), clip_start=start,
                                clip_end=end, caption=caption, caption_origin="annotation" if caption else None))
    return rows


# ----------------------------------------------------------------------------- captured

def import_captured(inp: InputConfig, cfg: CurationConfig) -> list[dict]:
    root = Path(inp.path)
    if not root.is_dir():
        raise InputError(f"captured folder not found: {root} (one sub-folder per take; see docs/curation.md)")
    rows = []
    for take in sorted(p for p in root.iterdir() if p.is_dir()):
        videos = sorted(p for p in take.iterdir() if p.suffix.lower() in VIDEO_EXTS)
        if not videos:
            raise InputError(f"take {take} has no video file ({', '.join(VIDEO_EXTS)})")
        subjects = []
        spec = take / "subjects.json"
        if spec.is_file():
            for s in _read_json(spec):
                ref = take / s["reference"]
                if not ref.is_file():
                    raise InputError(f"{spec}: reference {ref} not found")
                subjects.append(new_subject(name=s.get("name"), class_label=s.get("class_label", "person"),
                                            ref_uri=str(ref.resolve()), ref_origin="provided"))
        else:
            for ref in sorted(p for p in (take / "refs").glob("*") if p.suffix.lower() in IMAGE_EXTS):
                subjects.append(new_subject(name=ref.stem, class_label="person", ref_uri=str(ref.resolve()),
                                            ref_origin="provided"))
        cap = take / "caption.txt"
        caption = cap.read_text().strip() if cap.is_file() else None
        rows.append(new_row(id=f"captured:{take.name}", origin="captured", video_uri=str(videos[0].resolve()),
                            caption=caption, caption_origin="annotation" if caption else None,
                            subjects=subjects))
    return rows


# ----------------------------------------------------------------------------- SpriteWorld

def import_sprites(inp: InputConfig, cfg: CurationConfig) -> list[dict]:
    from idcrafter.world.dataset import check_split
    from idcrafter.world.scene import WorldConfig

    check_split(inp.split)
    try:
        WorldConfig(frames=inp.frames, height=inp.height, width=inp.width)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    rows = []
    for i in range(inp.num):
        name = f"sprites-{inp.split}-{inp.seed}-{i:06d}"
        spec = {"seed": inp.seed, "index": i, "split": inp.split, "frames": inp.frames, "height": inp.height,
                "width": inp.width, "max_scenes": inp.max_scenes, "duplicates": inp.duplicates}
        rows.append(new_row(id=f"sprites:{name}", origin="sprites", video_uri=f"raw/{name}.mp4",
                            meta=json.dumps({"sprites": spec})))
    return rows
