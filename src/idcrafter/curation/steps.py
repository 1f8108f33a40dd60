"""The curation steps: each a pure function `(row, ctx) -> list[row]` of its input row.

`ctx` holds the config, the output folder and the backends (built once per worker process from
the config, deterministic), so every engine (local pool, Ray Data) runs exactly this code and
gets the same rows. Files a step writes (raw SpriteWorld videos, reference crops) are named by
the row id and written atomically, so re-running a step rewrites the same bytes.

Order: materialize -> probe -> scene_split -> subjects -> compose -> face_quality -> caption ->
filters -> phash. A row that raised is dropped with reason `error` and skipped by later steps; a
dropped row still gets the cheap scores, but no captioning or composing (that is where the cost
is). Dedup and source mixing look at all rows together, so they run once at the end
(`curation.engine.finalize`).
"""

from __future__ import annotations

import hashlib
import io
import json
from functools import cached_property
from pathlib import Path
from typing import Callable

import numpy as np

from idcrafter.curation import filters as F
from idcrafter.curation.config import CurationConfig
from idcrafter.curation.media import load_clip, probe, resolve, write_png, write_video
from idcrafter.curation.schema import drop, meta, new_subject, set_meta
from idcrafter.curation.sprites import SPRITE_FPS, mask_crop, render_raw, sprite_head_box

Step = Callable[[dict, "Context"], list[dict]]
PEOPLE = ("person", "man", "woman", "boy", "girl", "child", "kid", "baby", "human", "lady", "individual", "face")


class Context:
    """Config, output folder and lazily built backends of one worker process."""

    def __init__(self, cfg: CurationConfig, out: str | Path):
        self.cfg, self.out = cfg, Path(out)
        self.bg = tuple(int(v) for v in cfg.ref_background)

    def path(self, row: dict) -> Path:
        return resolve(self.out, row["video_uri"])

    def detector_kind(self, row: dict) -> str:
        kind = self.cfg.subjects.detector
        if kind != "auto":
            return kind
        return {"sprites": "sprites", "opens2v": "annotations"}.get(row["origin"], "dlib")

    def face_kind(self, row: dict) -> str:
        kind = self.cfg.face.detector
        if kind != "auto":
            return kind
        return "sprites" if row["origin"] == "sprites" else "dlib"

    @cached_property
    def sprite_detector(self):
        from idcrafter.judge.detector import SpriteDetector

        return SpriteDetector.load(self.cfg.subjects.detector_path)

    def face_detector(self, kind: str):
        from idcrafter.judge.backends.registry import build_face_detector

        cache = self.__dict__.setdefault("_face", {})
        if kind not in cache:
            cache[kind] = build_face_detector(kind)
        return cache[kind]

    @cached_property
    def owl(self):
        from idcrafter.curation.backends import OwlDetector

        sc = self.cfg.subjects
        return OwlDetector(sc.detector_path, sc.queries, sc.threshold)

    @cached_property
    def face_embedder(self):
        from idcrafter.judge.backends.registry import build_face_embedder

        return build_face_embedder("dlib")

    @cached_property
    def composer(self):
        from idcrafter.curation.backends import build_composer

        return build_composer(self.cfg.compose)

    @cached_property
    def captioner(self):
        from idcrafter.curation.backends import build_captioner

        return build_captioner(self.cfg.caption)

    def aesthetic(self, row: dict):
        from idcrafter.curation.backends import build_aesthetic

        kind = self.cfg.filters.aesthetic
        if kind == "auto":
            kind = "sprites" if row["origin"] == "sprites" else "none"
        cache = self.__dict__.setdefault("_aes", {})
        if kind not in cache:
            cache[kind] = build_aesthetic(kind, self.cfg.filters.aesthetic_path)
        return cache[kind]


_CONTEXTS: dict[tuple[str, str], Context] = {}


def get_context(config_json: str, out: str) -> Context:
    """The worker's context for a config (built once per process)."""
    from idcrafter.curation.config import from_dict

    key = (config_json, str(out))
    if key not in _CONTEXTS:
        _CONTEXTS[key] = Context(from_dict(json.loads(config_json)), out)
    return _CONTEXTS[key]


def _safe(row_id: str) -> str:
    """A file name for a row id (readable prefix + a hash, so ids with '/' or ':' are safe)."""
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in row_id)[-60:]
    return f"{stem}-{hashlib.sha1(row_id.encode()).hexdigest()[:8]}"


def _frames(row: dict, ctx: Context, max_frames: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Sampled frames of the row's clip (a writable copy of the cached decode) and their indices."""
    frames, idx = load_clip(ctx.path(row), row["clip_start"], row["clip_end"], row["crop"], max_frames)
    return np.array(frames), idx


# ----------------------------------------------------------------------------- materialize, probe

def materialize(row: dict, ctx: Context) -> list[dict]:
    """Make sure the video exists: SpriteWorld rows are rendered here (video + instance masks)."""
    if row["origin"] != "sprites":
        if not ctx.path(row).is_file():
            drop(row, "unreadable", f"materialize: video not found: {ctx.path(row)}")
        return [row]
    m = meta(row)
    frames, masks, scenes, dup = render_raw(m["sprites"])
    path = ctx.path(row)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        write_video(path, frames, SPRITE_FPS)
    mask_path = path.with_suffix(".masks.npz")
    if not mask_path.is_file():
        from idcrafter.utils.io import atomic_write_bytes

        buf = io.BytesIO()
        np.savez_compressed(buf, masks=masks)
        atomic_write_bytes(mask_path, buf.getvalue())
    m["sprites"].update(scenes=scenes, duplicate_of=dup)
    set_meta(row, m)
    row["fps"] = SPRITE_FPS
    return [row]


def probe_step(row: dict, ctx: Context) -> list[dict]:
    """fps, size (after the crop) and the clip window, clamped to the video's length."""
    try:
        info = probe(ctx.path(row))
    except Exception as exc:  # noqa: BLE001 - an unreadable container is a data problem
        return [drop(row, "unreadable", f"probe: {type(exc).__name__}: {exc}")]
    row["fps"] = row["fps"] or info["fps"]
    x0, y0, x1, y1 = row["crop"] or (0, 0, info["width"], info["height"])
    x1, y1 = min(x1, info["width"]), min(y1, info["height"])
    row["crop"] = None if (x0, y0, x1, y1) == (0, 0, info["width"], info["height"]) else [x0, y0, x1, y1]
    row["width"], row["height"] = x1 - x0, y1 - y0
    start = max(int(row["clip_start"] or 0), 0)
    end = min(int(row["clip_end"] if row["clip_end"] is not None else info["frames"]), info["frames"])
    row["clip_start"], row["clip_end"] = start, end
    if end - start < 2:
        drop(row, "no_scene", f"probe: clip [{start}, {end}) has fewer than 2 frames")
    return [row]


# ----------------------------------------------------------------------------- scene split

def scene_cuts(path: Path, start: int, end: int, crop, threshold: float, min_len: int, fps: float) -> list[int]:
    """Absolute frame numbers where PySceneDetect's ContentDetector cuts [start, end); frames are
    streamed (never all in memory) and shrunk to <= 256 px width, as PySceneDetect's own
    downscaling does."""
    import av
    import cv2
    from scenedetect import ContentDetector, FrameTimecode

    det = ContentDetector(threshold=threshold, min_scene_len=min_len)
    cuts: list[int] = []
    with av.open(str(path)) as container:
        for j, frame in enumerate(container.decode(video=0)):
            if j < start:
                continue
            if j >= end:
                break
            img = frame.to_ndarray(format="bgr24")
            if crop:
                img = img[crop[1]:crop[3], crop[0]:crop[2]]
            if img.shape[1] > 256:
                img = cv2.resize(img, (256, max(1, round(img.shape[0] * 256 / img.shape[1]))),
                                 interpolation=cv2.INTER_AREA)
            cuts += [tc.frame_num for tc in det.process_frame(FrameTimecode(j, float(fps)), img)]
    return [c for c in cuts if start < c < end]


def scene_split(row: dict, ctx: Context) -> list[dict]:
    """One row per scene (ids get `#s<j>`); each scene is a pure function of the parent row."""
    sc = ctx.cfg.scene
    if not sc.enabled or not row["kept"]:
        return [row]
    cuts = scene_cuts(ctx.path(row), row["clip_start"], row["clip_end"], row["crop"], sc.threshold,
                      sc.min_scene_len, row["fps"])
    bounds = [row["clip_start"], *cuts, row["clip_end"]]
    out = []
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        child = dict(row, id=f"{row['id']}#s{j}", scene_index=j, clip_start=a, clip_end=b,
                     subjects=[dict(s) for s in row["subjects"]])
        out.append(child)
    return out


# ----------------------------------------------------------------------------- subjects

def _sprite_scene(row: dict) -> dict | None:
    """The ground-truth scene that overlaps the clip most (SpriteWorld rows)."""
    scenes = meta(row).get("sprites", {}).get("scenes") or []
    best, best_overlap = None, 0
    for s in scenes:
        overlap = min(s["end"], row["clip_end"]) - max(s["start"], row["clip_start"])
        if overlap > best_overlap:
            best, best_overlap = s, overlap
    return best


def _sprite_masks(row: dict, ctx: Context, idx: np.ndarray) -> np.ndarray:
    with np.load(ctx.path(row).with_suffix(".masks.npz")) as z:
        return z["masks"][idx]  # (T, H, W) uint8


def subject_crops(row: dict, ctx: Context, k: int, frames: np.ndarray, idx: np.ndarray) -> dict[int, np.ndarray]:
    """{absolute frame: (R, R, 3) crop} of subject k at its track frames among `idx`, framed as
    every reference is (`sprites.mask_crop`): SpriteWorld uses the instance masks, OpenS2V its
    RLE masks (annotated frame only), other detectors the box."""
    s = row["subjects"][k]
    pos = {int(f): i for i, f in enumerate(idx)}
    size = ctx.cfg.ref_size
    m = meta(row)
    out = {}
    masks = _sprite_masks(row, ctx, idx) if row["origin"] == "sprites" else None
    for f, box in zip(s["box_frames"], s["boxes"]):
        if f not in pos:
            continue
        img = frames[pos[f]]
        if masks is not None:
            code = m["subject_codes"][k]
            mk = masks[pos[f]] == code
        elif "opens2v" in m and f == m["opens2v"]["ann_frame"] and k < len(m["opens2v"]["subjects"]):
            from idcrafter.curation import rle

            mk = rle.decode(m["opens2v"]["subjects"][k]["rle"])[: img.shape[0], : img.shape[1]]
        else:
            mk = np.ones(img.shape[:2], bool)
        out[int(f)] = mask_crop(img, mk, box, size, ctx.bg)
    return out


def _write_ref(row: dict, ctx: Context, k: int, image: np.ndarray, tag: str) -> str:
    uri = f"refs/{_safe(row['id'])}_{k}_{tag}.png"
    path = ctx.out / uri
    path.parent.mkdir(parents=True, exist_ok=True)
    write_png(path, image)
    return uri


def _sprite_subjects(row: dict, ctx: Context, frames: np.ndarray, idx: np.ndarray) -> list[dict]:
    """Detector tracks, each matched to the ground-truth instance it overlaps most."""
    from idcrafter.judge.tracking import detect_tracks

    _, tracks = detect_tracks(ctx.sprite_detector, frames, ctx.cfg.subjects.min_presence)
    if row["origin"] != "sprites":  # SpriteWorld-like video without ground truth: plain tracks
        return [new_subject(class_label="person", box_frames=[int(idx[t]) for t, d in enumerate(tr.frames) if d],
                            boxes=[d.box.tolist() for d in tr.frames if d is not None],
                            det_score=float(np.mean([d.score for d in tr.frames if d is not None])))
                for tr in tracks][: ctx.cfg.subjects.max_subjects]
    scene = _sprite_scene(row)
    masks = _sprite_masks(row, ctx, idx)
    subjects, codes = [], []
    for tr in tracks:
        votes = np.zeros(256, np.int64)
        for t, d in enumerate(tr.frames):
            if d is not None:
                x0, y0, x1, y1 = (int(round(float(v))) for v in d.box)
                votes += np.bincount(masks[t, max(y0, 0):y1, max(x0, 0):x1].ravel(), minlength=256)
        votes[0] = 0
        code = int(votes.argmax())
        if code == 0 or code in codes or scene is None or code > len(scene["identities"]):
            continue
        seen = [(int(idx[t]), d) for t, d in enumerate(tr.frames) if d is not None]
        codes.append(code)
        subjects.append(new_subject(name=f"subject {code}", class_label="person",
                                    identity=str(scene["identities"][code - 1]),
                                    box_frames=[f for f, _ in seen], boxes=[d.box.tolist() for _, d in seen],
                                    det_score=float(np.mean([d.score for _, d in seen]))))
    m = meta(row)
    m["subject_codes"] = codes
    visible = [i + 1 for i, v in enumerate(scene["visibility"] if scene else []) if v >= 0.5]
    m["missing_subjects"] = [c for c in visible if c not in codes]
    set_meta(row, m)
    return subjects


def _face_subjects(row: dict, ctx: Context, frames: np.ndarray, idx: np.ndarray, kind: str) -> list[dict]:
    """Face tracks (a judge face backend per frame, linked by the judge's tracker); the subject
    box is the face box widened to head and shoulders (2.4 x wide, 3 x tall)."""
    from idcrafter.judge.tracking import link_tracks

    det = ctx.face_detector(kind)
    h, w = frames.shape[1:3]
    tracks = [tr for tr in link_tracks([det.detect(np.ascontiguousarray(f)) for f in frames])
              if tr.present().sum() >= max(1, ctx.cfg.subjects.min_presence * len(frames))]
    out = []
    for tr in tracks:
        seen = [(int(idx[t]), d) for t, d in enumerate(tr.frames) if d is not None]
        boxes = []
        for _, d in seen:
            x0, y0, x1, y1 = (float(v) for v in d.head)
            fw, fh = x1 - x0, y1 - y0
            boxes.append([max(0.0, x0 - 0.7 * fw), max(0.0, y0 - 0.5 * fh), min(w, x1 + 0.7 * fw), min(h, y1 + 1.5 * fh)])
        out.append(new_subject(class_label="person", box_frames=[f for f, _ in seen], boxes=boxes,
                               det_score=float(np.mean([d.score for _, d in seen]))))
    out.sort(key=lambda s: -np.mean([(b[2] - b[0]) * (b[3] - b[1]) for b in s["boxes"]]))
    return out[: ctx.cfg.subjects.max_subjects]


def _owl_subjects(row: dict, ctx: Context, frames: np.ndarray, idx: np.ndarray) -> list[dict]:
    """Open-vocabulary detections linked into tracks; a track's class is its most frequent query."""
    from collections import Counter

    from idcrafter.judge.tracking import link_tracks

    tracks = [tr for tr in link_tracks([ctx.owl.detect(np.ascontiguousarray(f)) for f in frames])
              if tr.present().sum() >= max(1, ctx.cfg.subjects.min_presence * len(frames))]
    out = []
    for tr in tracks:
        seen = [(int(idx[t]), d) for t, d in enumerate(tr.frames) if d is not None]
        label = Counter(getattr(d, "label", "object") for _, d in seen).most_common(1)[0][0]
        out.append(new_subject(class_label=label, box_frames=[f for f, _ in seen], boxes=[d.box.tolist() for _, d in seen],
                               det_score=float(np.mean([d.score for _, d in seen]))))
    out.sort(key=lambda s: -s["det_score"])
    return out[: ctx.cfg.subjects.max_subjects]


def _assign_provided(row: dict, ctx: Context, frames: np.ndarray, idx: np.ndarray, kind: str) -> dict:
    """Captured takes: face tracks matched one-to-one to the provided references by the Hungarian
    algorithm on dlib face-embedding cosine (a reference without a detectable face, or a
    detector that is not a face backend, leaves the box tracks empty)."""
    from scipy.optimize import linear_sum_assignment

    from idcrafter.utils.media import load_image

    if kind not in ("dlib", "haar"):
        return row
    tracks = _face_subjects(row, ctx, frames, idx, kind)
    det, emb = ctx.face_detector(kind), ctx.face_embedder
    refs = []
    for s in row["subjects"]:
        img = load_image(resolve(ctx.out, s["ref_uri"]))
        faces = det.detect(img)
        if not faces:
            return row
        refs.append(emb.embed(img, max(faces, key=lambda d: float(np.prod(d.head[2:] - d.head[:2])))))
    pos = {int(f): i for i, f in enumerate(idx)}
    feats = []
    for tr in tracks:
        j = int(np.argmax([(b[2] - b[0]) * (b[3] - b[1]) for b in tr["boxes"]]))
        img = frames[pos[tr["box_frames"][j]]]
        faces = det.detect(img)
        box = np.asarray(tr["boxes"][j])
        best = max(faces, key=lambda d: _overlap(d.head, box)) if faces else None
        feats.append(emb.embed(img, best) if best is not None else np.zeros_like(refs[0]))
    if not tracks:
        return row
    sim = np.stack(refs) @ np.stack(feats).T  # (refs, tracks), unit vectors
    for r, t in zip(*linear_sum_assignment(-sim)):
        tr = tracks[t]
        row["subjects"][r].update(box_frames=tr["box_frames"], boxes=tr["boxes"], det_score=tr["det_score"])
    return row


def _overlap(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    return float(max(iw, 0) * max(ih, 0))


def _annotated_subjects(row: dict) -> list[dict]:
    """OpenS2V's subjects, when their annotated frame lies in this clip (a scene the split cut
    away from the annotated frame has no known subjects)."""
    m = meta(row)["opens2v"]
    if not row["clip_start"] <= m["ann_frame"] < row["clip_end"]:
        return []
    return [new_subject(class_label=s["class_name"], box_frames=[m["ann_frame"]], boxes=[s["bbox"]],
                        det_score=s.get("gme_score")) for s in m["subjects"]]


def _cross_ref(row: dict, ctx: Context, k: int) -> np.ndarray | None:
    """OpenS2V-Nexus: subject k cut from the annotated frame of another clip of its cluster."""
    from idcrafter.curation import rle

    subs = meta(row).get("opens2v", {}).get("subjects", [])
    cross = subs[k].get("cross") if k < len(subs) else None
    if not cross:
        return None
    frames, _ = load_clip(cross["video"], cross["frame"], cross["frame"] + 1, cross["crop"])
    mk = rle.decode(cross["rle"])[: frames.shape[1], : frames.shape[2]]
    ys, xs = np.where(mk)
    if not len(ys):
        return None
    return mask_crop(frames[0], mk, (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1), ctx.cfg.ref_size, ctx.bg)


def subjects_step(row: dict, ctx: Context) -> list[dict]:
    """Detection + tracking + reference crops. A subject's reference is cut from the frame where
    it is largest; provided references (captured takes) and Nexus cross-clip crops are kept."""
    if not row["kept"]:
        return [row]
    frames, idx = _frames(row, ctx, ctx.cfg.subjects.max_frames)
    kind = ctx.detector_kind(row)
    if row["subjects"] and all(s.get("ref_uri") for s in row["subjects"]):
        return [_assign_provided(row, ctx, frames, idx, kind)]  # captured: references shot separately
    if kind == "sprites":
        row["subjects"] = _sprite_subjects(row, ctx, frames, idx)
    elif kind == "annotations":
        row["subjects"] = _annotated_subjects(row)
        frames, idx = load_clip(ctx.path(row), row["subjects"][0]["box_frames"][0],
                                row["subjects"][0]["box_frames"][0] + 1, row["crop"]) if row["subjects"] else (frames, idx)
    elif kind == "owl":
        row["subjects"] = _owl_subjects(row, ctx, frames, idx)
    else:
        row["subjects"] = _face_subjects(row, ctx, frames, idx, kind)
    if not row["subjects"]:
        return [drop(row, "no_subject")]
    for k, s in enumerate(row["subjects"]):
        cross = _cross_ref(row, ctx, k) if row["origin"] == "opens2v" else None
        if cross is not None:
            s["ref_uri"], s["ref_origin"], s["ref_frame"] = _write_ref(row, ctx, k, cross, "cross"), "cross_clip", None
            continue
        crops = subject_crops(row, ctx, k, frames, idx)
        areas = {f: (b[2] - b[0]) * (b[3] - b[1]) for f, b in zip(s["box_frames"], s["boxes"]) if f in crops}
        best = max(areas, key=lambda f: (areas[f], -f))
        s["ref_uri"], s["ref_origin"], s["ref_frame"] = _write_ref(row, ctx, k, crops[best], "frame"), "frame", best
    return [row]


# ----------------------------------------------------------------------------- compose

def compose_step(row: dict, ctx: Context) -> list[dict]:
    """Synthetic compositions: every subject's reference is replaced by the compose backend's
    rendering of it in another context (requests are seeded by row id and subject)."""
    if not row["kept"] or not meta(row).get("compose"):
        return [row]
    from idcrafter.utils.media import load_image

    for k, s in enumerate(row["subjects"]):
        if s["ref_origin"] != "frame":
            continue
        src = load_image(ctx.out / s["ref_uri"])
        seed = int(hashlib.sha1(f"{ctx.cfg.seed}:{row['id']}:{k}".encode()).hexdigest()[:8], 16)
        request = {"prompt": ctx.cfg.compose.prompt.format(class_label=s["class_label"] or "subject"),
                   "seed": seed, "size": ctx.cfg.ref_size, "background": ctx.bg,
                   "class_label": s["class_label"], "identity": s["identity"]}
        edited = ctx.composer.compose(src, F.subject_pixels(src, ctx.bg), request)
        name = ctx.composer.name
        s["ref_uri"], s["ref_origin"] = _write_ref(row, ctx, k, edited, f"edit-{name}"), f"edit:{name}"
    return [row]


# ----------------------------------------------------------------------------- face quality

def _face_box(kind: str, ctx: Context, img: np.ndarray, box) -> np.ndarray | None:
    if kind == "sprites":
        return sprite_head_box(np.asarray(box))
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    crop = np.ascontiguousarray(img[max(y0, 0):y1, max(x0, 0):x1])
    if crop.size == 0:
        return None
    faces = ctx.face_detector(kind).detect(crop)
    if not faces:
        return None
    f = max(faces, key=lambda d: float((d.head[2] - d.head[0]) * (d.head[3] - d.head[1])))
    return np.asarray(f.head, np.float32) + np.array([max(x0, 0), max(y0, 0)] * 2, np.float32)


def face_quality_step(row: dict, ctx: Context) -> list[dict]:
    """Per person subject: mean over up to 4 of its track frames of `filters.face_quality` (0 where
    no face is found); the row's score is the worst subject's."""
    kind = ctx.face_kind(row)
    people = [s for s in row["subjects"] if (s["class_label"] or "").lower() in PEOPLE and s["box_frames"]]
    if kind == "none" or not row["kept"] or not people:
        return [row]
    frames, idx = _frames(row, ctx, ctx.cfg.subjects.max_frames)
    pos = {int(f): i for i, f in enumerate(idx)}
    if row["origin"] == "opens2v":
        f0 = people[0]["box_frames"][0]
        frames, pos = load_clip(ctx.path(row), f0, f0 + 1, row["crop"])[0], {f0: 0}
    for s in people:
        pairs = [(f, b) for f, b in zip(s["box_frames"], s["boxes"]) if f in pos]
        pick = [pairs[int(i)] for i in np.unique(np.linspace(0, len(pairs) - 1, min(4, len(pairs))).round())] if pairs else []
        scores = []
        for f, b in pick:
            img = frames[pos[f]]
            fb = _face_box(kind, ctx, img, b)
            if fb is None:
                scores.append(0.0)
                continue
            x0, y0, x1, y1 = (int(round(float(v))) for v in fb)
            face = img[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)]
            scores.append(F.face_quality(face, min(x1 - x0, y1 - y0), ctx.cfg.face.min_face_px, ctx.cfg.face.sharp_ref))
        s["face_quality"] = float(np.mean(scores)) if scores else None
    scored = [s["face_quality"] for s in people if s["face_quality"] is not None]
    row["face_quality"] = float(min(scored)) if scored else None
    return [row]


# ----------------------------------------------------------------------------- caption

def caption_step(row: dict, ctx: Context) -> list[dict]:
    """`keep`: the importer's caption (SpriteWorld: its scene's ground-truth caption); a model
    backend captions rows without one (or all of them with `caption.overwrite`)."""
    if not row["kept"]:
        return [row]
    if row["origin"] == "sprites" and not row["caption"]:
        scene = _sprite_scene(row)
        if scene is not None:
            row["caption"], row["caption_origin"] = scene["caption"], "truth"
    cap = ctx.captioner
    if cap is not None and (row["caption"] is None or ctx.cfg.caption.overwrite):
        frames, _ = _frames(row, ctx, ctx.cfg.caption.frames)
        row["caption"], row["caption_origin"] = cap.caption(frames, ctx.cfg.caption.prompt), cap.name
    return [row]


# ----------------------------------------------------------------------------- filters, phash

def filters_step(row: dict, ctx: Context) -> list[dict]:
    """Every filter's score, then the first failing filter drops the row (reason order as in
    `schema.DROP_REASONS`)."""
    fc = ctx.cfg.filters
    if row["clip_end"] is None or row["fps"] is None:
        return [row]
    row["duration"] = (row["clip_end"] - row["clip_start"]) / row["fps"]
    row["resolution"] = float(min(row["width"] or 0, row["height"] or 0))
    if row.get("error") is None and row["drop_reason"] not in ("unreadable", "no_scene"):
        mid = (row["clip_start"] + row["clip_end"]) // 2
        a = max(row["clip_start"], mid - fc.motion_frames // 2)
        b = min(row["clip_end"], a + fc.motion_frames)
        row["motion"] = F.motion_px(load_clip(ctx.path(row), a, b, row["crop"])[0])
        aes = ctx.aesthetic(row)
        if aes is not None:
            row["aesthetic"] = aes.score(_frames(row, ctx, 8)[0])
        row["copy_paste_risk"] = _copy_paste(row, ctx)
    checks = [
        ("duration", not fc.min_duration <= row["duration"] <= fc.max_duration),
        ("resolution", row["resolution"] < fc.min_short_side),
        ("missing_subject", bool(meta(row).get("missing_subjects"))),
        ("face_quality", fc.min_face_quality is not None and row["face_quality"] is not None
         and row["face_quality"] < fc.min_face_quality),
        ("no_caption", not row["caption"]),
        ("aesthetic", fc.min_aesthetic is not None and row["aesthetic"] is not None
         and row["aesthetic"] < fc.min_aesthetic),
        ("motion", row["motion"] is not None and not fc.min_motion <= row["motion"] <= fc.max_motion),
        ("copy_paste", row["copy_paste_risk"] is not None and row["copy_paste_risk"] > fc.max_copy_paste),
    ]
    for reason, failed in checks:
        if failed:
            drop(row, reason)
    return [row]


def _copy_paste(row: dict, ctx: Context) -> float | None:
    """Max over subjects of `filters.copy_paste_risk` against the subject's own frame crops."""
    from idcrafter.utils.media import load_image

    subs = [k for k, s in enumerate(row["subjects"]) if s.get("ref_uri") and s["box_frames"]]
    if not subs:
        return None
    frames, idx = _frames(row, ctx, ctx.cfg.subjects.max_frames)
    if row["origin"] == "opens2v":
        f0 = row["subjects"][0]["box_frames"][0]
        frames, idx = load_clip(ctx.path(row), f0, f0 + 1, row["crop"])
    risks = []
    for k in subs:
        ref = load_image(resolve(ctx.out, row["subjects"][k]["ref_uri"]))
        ref = mask_crop(ref, np.ones(ref.shape[:2], bool), (0, 0, ref.shape[1], ref.shape[0]), ctx.cfg.ref_size, ctx.bg)
        crops = list(subject_crops(row, ctx, k, frames, idx).values())
        risks.append(F.copy_paste_risk(ref, crops, ctx.bg))
    return float(max(risks))


def phash_step(row: dict, ctx: Context) -> list[dict]:
    if row.get("error") is None and row["drop_reason"] not in ("unreadable", "no_scene"):
        row["phash"] = F.phash(_frames(row, ctx, 3)[0])
    return [row]


STEPS: list[tuple[str, Step]] = [
    ("materialize", materialize), ("probe", probe_step), ("scene_split", scene_split),
    ("subjects", subjects_step), ("compose", compose_step), ("face_quality", face_quality_step),
    ("caption", caption_step), ("filters", filters_step), ("phash", phash_step),
]
STEP_NAMES = [name for name, _ in STEPS]


def apply_step(name: str, fn: Step, row: dict, ctx: Context) -> list[dict]:
    """Run one step on one row; an exception drops the row with reason `error` and its message
    (never raises). Rows with an error (failed or unreadable) pass through untouched."""
    if row.get("error") is not None:
        return [row]
    try:
        return fn(row, ctx)
    except Exception as exc:  # noqa: BLE001 - a bad row must never stop the run
        row.update(kept=False, drop_reason="error", error=f"{name}: {type(exc).__name__}: {exc}"[:500])
        return [row]
