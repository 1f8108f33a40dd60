"""Training examples: SpriteWorld (procedural or a dataset folder) and real videos (manifest).

Every source is random access by *position* (an int that only grows during training): the
example at position p is a pure function of (config, p). A run stores only its position to resume
exactly, and the global batch of step s is positions [s G, (s + 1) G), G = the global batch size,
split over processes and micro-steps (`BatchStream`); so the examples a run sees do not depend on
the number of processes.

Subjects per batch: by default batches are **padded** to the largest K in the batch (absent
references are zeros with `ref_mask` False, which the model masks out). With
`data.bucket_by_subjects`, every micro-batch holds one K, still as a pure function of position
(micro-batches are aligned: micro-batch m is positions [m B, (m + 1) B)): the procedural source
draws K per micro-batch; the finite sources order each epoch as shuffled chunks of B items of
one K (`bucketed_order`; a bucket's last chunk is filled up with items of the same bucket), so
no K is starved and resuming by position stays exact. Padding costs only subject-stream compute,
a few percent for SpriteWorld's 36-token references; bucketing matters for real references of
~1000 tokens each.

Manifest (JSONL, one object per line; paths are relative to the manifest's folder):

    {"video": "clips/a.mp4", "references": ["refs/a0.png", "refs/a1.png"], "caption": "...",
     "boxes": [[x0, y0, x1, y1], ...]}

`boxes` is optional: one box per subject, in pixels of the source video, the subject's extent
over the clip. It becomes the clip's subject mask (cropped and resized with the frames), which
the reference gap's subject cells (`ref_gap_subject/*`) and the subject loss weight use; clips
without boxes have no mask (docs/scale.md, "Manifests").

A `.parquet` path is a curation manifest (`idcrafter.curation.schema`, made by `idcrafter data
curate`): its kept rows are read, with the same path rules, each clip drawn inside its
[clip_start, clip_end) window and cropped to its `crop`.

Path safety: a path that leaves the manifest's folder (`../x.mp4`, `a/../../x`) is refused, and
so is an absolute path unless `data.absolute_paths=true` (real datasets stored elsewhere); the
check is lexical (`os.path.normpath`), so symlinks placed inside the folder are followed. A
manifest with such a path, or a line that is not {video: str, references: [1..4 str], caption:
str}, is refused whole at start-up with the line number (it is a wrong manifest, not a bad clip).

Videos are decoded with PyAV; `frames` frames (4k+1 for the Wan VAE) are taken every
`frame_stride` frames from a start drawn from the example's own generator, resized to cover
(height, width) and centre-cropped. References go through `prepare_reference` (subject centred
on the plain canvas, `ref_size`). An unreadable video or reference (corrupt, missing, too short)
is skipped: the next item of the same epoch order takes its place, the item is remembered as bad
and counted (`ManifestSource.skipped`, logged as `data/skipped`); a run never crashes on one.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch

from idcrafter.errors import InputError

log = logging.getLogger(__name__)


@dataclass
class DataConfig:
    """Training examples (this module).

    source: "procedural" renders SpriteWorld example `position` of (split, seed) on the fly (an
    infinite, deterministic, resumable stream; nothing on disk); "folder" reads a dataset folder
    written by `idcrafter world make` (shuffled per epoch with `seed`); "manifest" reads a JSONL
    manifest of real videos ({"video", "references", "caption"} per line).
    """

    source: str = "procedural"
    path: str | None = None
    split: str = "train"
    seed: int = 0
    frames: int = 5  # 4k+1 (Wan VAE needs it; the pixel codec accepts any count)
    height: int = 48
    width: int = 48
    ref_size: int = 32
    num_subjects: int | None = None  # procedural: fixed K, None = uniform 1..4
    bucket_by_subjects: bool = False  # one K per micro-batch instead of padding (see train.data)
    limit: int | None = None  # cycle over the first `limit` examples (overfitting, debugging)
    frame_stride: int = 1  # manifest: take every n-th frame
    absolute_paths: bool = False  # manifest: allow absolute paths (real datasets stored elsewhere); see train.data
    batch_size: int = 16  # per process and micro-step
    prefetch: int = 2  # batches prepared ahead in a background thread (0: inline)
    latent_cache: str | None = None  # a folder of `train cache-latents`: the codec's encodings read, not computed
    curriculum: str | None = None  # procedural: "STEP:K[:still],...", e.g. "0:1:still,1000:2,3000:4" (`Stage`)

    def build(self, global_batch: int | None = None) -> "ExampleSource":
        """The source; `global_batch` (examples per optimizer step over all processes) turns a
        curriculum's steps into stream positions (default: `batch_size`, one process)."""
        return build_source(self, global_batch)


@dataclass(frozen=True)
class Stage:
    """One stage of a procedural curriculum: from optimizer step `start`, casts of 1..`max_subjects`
    subjects (uniform), all standing still when `still` (action "stay"), else SpriteWorld's own
    action draw. Written `START:K` or `START:K:still`; stages are comma-separated, the first at 0."""

    start: int
    max_subjects: int
    still: bool = False


def parse_curriculum(spec: str) -> list[Stage]:
    """`"0:1:still,1000:2,3000:4"` -> stages (`InputError` naming the fault otherwise)."""
    from idcrafter.world.scene import MAX_SUBJECTS

    hint = 'write data.curriculum as "STEP:K[:still],...", e.g. "0:1:still,1000:2,3000:4"'
    stages = []
    for part in str(spec).split(","):
        fields = part.strip().split(":")
        if len(fields) not in (2, 3) or not all(f.strip().isdigit() for f in fields[:2]) or \
                (len(fields) == 3 and fields[2].strip() != "still"):
            raise InputError(f"data.curriculum stage {part.strip()!r} is not STEP:K or STEP:K:still: {hint}")
        stage = Stage(int(fields[0]), int(fields[1]), len(fields) == 3)
        if not 1 <= stage.max_subjects <= MAX_SUBJECTS:
            raise InputError(f"data.curriculum stage {part.strip()!r}: K must be in 1..{MAX_SUBJECTS}")
        stages.append(stage)
    if stages[0].start != 0 or any(b.start <= a.start for a, b in zip(stages, stages[1:])):
        raise InputError(f"data.curriculum {spec!r}: the first stage starts at step 0 and starts increase: {hint}")
    return stages


@dataclass
class Sample:
    """One training example (numpy, uint8)."""

    frames: np.ndarray  # (T, H, W, 3) uint8
    refs: np.ndarray  # (K, R, R, 3) uint8, in subject order
    caption: str
    position: int  # the stream position it was drawn at (seeds its noise, timestep, dropout)
    subject: np.ndarray | None = None  # (T, H, W) bool: pixels of any subject (None: unknown)
    item: int | None = None  # index in a finite source (what a latent cache is keyed by); None: endless


@dataclass
class Batch:
    """A collated micro-batch; padded to the largest K (see the module docstring)."""

    video: torch.Tensor  # (B, 3, T, H, W) float32 in [-1, 1]
    refs: torch.Tensor  # (B, K, 3, R, R) float32 in [-1, 1], zeros past each sample's K
    ref_mask: torch.Tensor  # (B, K) bool
    subject: torch.Tensor | None  # (B, T, H, W) bool, None when no sample has masks
    captions: list[str]
    positions: torch.Tensor  # (B,) int64
    ref_images: list[np.ndarray]  # per sample (K_b, R, R, 3) uint8 (for VLM / vision encoders)
    items: torch.Tensor | None = None  # (B,) int64 item indices (finite sources), else None

    def __len__(self) -> int:
        return len(self.captions)


class ExampleSource(Protocol):
    def get(self, position: int) -> Sample: ...


def example_seed(seed: int, position: int, salt: int = 0) -> int:
    """A 63-bit seed for the example at `position` (independent streams for different salts)."""
    return int(np.random.SeedSequence([seed, position, salt]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The permutation of a finite dataset's items in a given epoch."""
    return np.random.default_rng([seed, epoch, 99]).permutation(n)


def bucketed_order(ks: np.ndarray, batch: int, seed: int, epoch: int) -> np.ndarray:
    """An epoch's item order in which every aligned run of `batch` items has one K.

    Items are shuffled, grouped by K (ks[i] = subjects of item i), cut into chunks of `batch`
    (a bucket's last chunk is completed by cycling through that bucket), and the chunks shuffled.
    Length: sum over buckets of ceil(size / batch) * batch.
    """
    rng = np.random.default_rng([seed, epoch, 98])
    perm = rng.permutation(len(ks))
    chunks = []
    for k in np.unique(ks):
        members = perm[ks[perm] == k]
        n = -(-len(members) // batch) * batch
        members = np.resize(members, n)  # cycles: completes the last chunk from the same bucket
        chunks += list(members.reshape(-1, batch))
    order = rng.permutation(len(chunks))
    return np.concatenate([chunks[i] for i in order])


class _EpochOrder:
    """Position -> item index of a finite source: shuffled per epoch, or bucketed by K."""

    def __init__(self, n: int, cfg: DataConfig, subjects):
        self.n, self.cfg = n, cfg
        self.ks = np.asarray(subjects()) if cfg.bucket_by_subjects else None
        self.length = n if self.ks is None else len(bucketed_order(self.ks, cfg.batch_size, cfg.seed, 0))
        self._cache: tuple[int, np.ndarray] | None = None

    def item(self, position: int) -> int:
        epoch, offset = divmod(position, self.length)
        if self._cache is None or self._cache[0] != epoch:
            order = epoch_order(self.n, self.cfg.seed, epoch) if self.ks is None else \
                bucketed_order(self.ks, self.cfg.batch_size, self.cfg.seed, epoch)
            self._cache = (epoch, order)
        return int(self._cache[1][offset])


class ProceduralSource:
    """SpriteWorld rendered on the fly: position p is `make_example(seed, p, split)`; with a
    curriculum (`Stage`), the stage of p's step sets its number of subjects and whether they move."""

    def __init__(self, cfg: DataConfig, global_batch: int | None = None):
        from idcrafter.world.dataset import check_split
        from idcrafter.world.scene import WorldConfig

        self.cfg = cfg
        self.split = check_split(cfg.split)
        self.world = WorldConfig(frames=cfg.frames, height=cfg.height, width=cfg.width, ref_size=cfg.ref_size)
        self.stages = parse_curriculum(cfg.curriculum) if cfg.curriculum else []
        if self.stages and cfg.num_subjects is not None:
            raise InputError("data.curriculum sets the number of subjects: drop data.num_subjects")
        self.global_batch = int(global_batch or cfg.batch_size)

    def stage(self, position: int) -> Stage | None:
        """The curriculum stage the step of `position` is in (None without a curriculum)."""
        step = position // self.global_batch
        return [s for s in self.stages if s.start <= step][-1] if self.stages else None

    def get(self, position: int) -> Sample:
        from idcrafter.world.dataset import make_example
        from idcrafter.world.scene import MAX_SUBJECTS

        index = position % self.cfg.limit if self.cfg.limit else position
        k, stage = self.cfg.num_subjects, self.stage(position)
        top = stage.max_subjects if stage else MAX_SUBJECTS
        if k is None and self.cfg.bucket_by_subjects:  # one K per micro-batch, uniform in 1..top
            micro = position // self.cfg.batch_size
            k = 1 + int(np.random.default_rng([self.cfg.seed, micro, 97]).integers(top))
        elif k is None and stage:  # uniform in 1..top, from the position's own generator
            k = 1 + int(np.random.default_rng([self.cfg.seed, position, 96]).integers(top))
        actions = ["stay"] * k if stage and stage.still else None
        ex = make_example(self.cfg.seed, index, self.split, self.world, num_subjects=k, actions=actions)
        return Sample(ex.clip.frames, ex.refs, ex.caption, position, ex.clip.masks > 0,
                      index if self.cfg.limit else None)

    def get_item(self, item: int) -> Sample:
        """Item `item` of a limited stream (the sample at position `item`)."""
        return self.get(item)


class FolderSource:
    """A SpriteWorld dataset folder, shuffled per epoch; 9-frame data is subsampled evenly to
    `frames` when (T - 1) is a multiple of (frames - 1) (actions are functions of time, so the
    5-frame clip is exactly frames 0, 2, 4, 6, 8 of the 9-frame one)."""

    def __init__(self, cfg: DataConfig):
        from idcrafter.world.dataset import SpriteWorldDataset

        self.cfg = cfg
        self.ds = SpriteWorldDataset(cfg.path)
        t = self.ds.config.frames
        if (t - 1) % max(cfg.frames - 1, 1) or cfg.frames > t:
            raise InputError(f"{cfg.path} has {t}-frame clips; data.frames={cfg.frames} is not an even subsample")
        self.frame_idx = np.linspace(0, t - 1, cfg.frames).round().astype(int)
        self.n = min(len(self.ds), cfg.limit) if cfg.limit else len(self.ds)
        self.order = _EpochOrder(self.n, cfg, lambda: np.asarray(self.ds.num_subjects[: self.n]))

    def get(self, position: int) -> Sample:
        sample = self.get_item(self.order.item(position))
        sample.position = position
        return sample

    def get_item(self, index: int) -> Sample:
        """Item `index` of the folder (its position field set to the index)."""
        item = self.ds[index]
        return Sample(item["frames"][self.frame_idx], item["refs"], item["caption"], index,
                      item["masks"][self.frame_idx] > 0, index)


class ManifestSource:
    """Real videos from a JSONL manifest (format in the module docstring)."""

    def __init__(self, cfg: DataConfig):
        self.cfg = cfg
        path = Path(cfg.path)
        if not path.is_file():
            raise InputError(f"manifest not found: {path} (a JSONL file with video, references, caption)")
        self.root = path.parent
        parquet = path.suffix == ".parquet"  # a curation manifest (idcrafter.curation.schema)
        try:
            lines = [] if parquet else path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise InputError(f"manifest {path} is not UTF-8 text: write it as UTF-8 JSONL") from exc
        self.items = self._parquet(path) if parquet else \
            [self._parse(line, i, path) for i, line in enumerate(lines) if line.strip()]
        if cfg.limit:
            self.items = self.items[: cfg.limit]
        if not self.items:
            raise InputError(f"manifest {path} has no items")
        self.bad: set[int] = set()
        self.order = _EpochOrder(len(self.items), cfg,
                                 lambda: np.array([len(it["references"]) for it in self.items]))

    def _parse(self, line: str, i: int, path: Path) -> dict:
        where = f"{path}:{i + 1}"
        try:
            item = json.loads(line)
            video, refs, caption = item["video"], item["references"], item["caption"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise InputError(f"{where}: each line must be a JSON object with video, references, "
                             f"caption ({exc})") from exc
        if not isinstance(refs, list) or not 1 <= len(refs) <= 4 or not isinstance(caption, str):
            raise InputError(f"{where}: references must be a list of 1 to 4 paths and caption a string")
        allow = self.cfg.absolute_paths
        return {"video": manifest_path(video, self.root, allow, where),
                "references": [manifest_path(r, self.root, allow, where) for r in refs], "caption": caption,
                "boxes": parse_boxes(item.get("boxes"), where),
                "window": item.get("window"), "crop": item.get("crop")}  # as `data convert` writes them

    def _parquet(self, path: Path) -> list[dict]:
        """Kept rows of a curation manifest; their clip window and crop are honoured."""
        from idcrafter.curation.schema import read_training_items

        allow, out = self.cfg.absolute_paths, []
        for i, it in enumerate(read_training_items(path, resolve=False)):
            where = f"{path} row {i}"
            out.append(dict(it, video=manifest_path(it["video"], self.root, allow, where),
                            references=[manifest_path(r, self.root, allow, where) for r in it["references"][:4]]))
        return out

    @property
    def skipped(self) -> int:
        return len(self.bad)

    def get(self, position: int) -> Sample:
        n = len(self.items)
        start = self.order.item(position)
        for attempt in range(n):
            i = (start + attempt) % n
            if i in self.bad:
                continue
            try:
                return self._load(i, position)
            except Exception as exc:  # noqa: BLE001 - any decoder failure means a bad item: skip it
                self.bad.add(i)
                log.warning("skipping manifest item %d (%s): %s: %s (%d skipped so far)", i,
                            self.items[i]["video"], type(exc).__name__, exc, len(self.bad))
        raise InputError(f"every item of the manifest {self.cfg.path} is unreadable ({n} skipped)")

    def _load(self, i: int, position: int) -> Sample:
        from idcrafter.encoders.references import prepare_reference

        item = self.items[i]
        rng = np.random.default_rng(example_seed(self.cfg.seed, position, salt=3))
        frames = read_clip(item["video"], self.cfg.frames, self.cfg.frame_stride, rng, item.get("window"))
        if item.get("crop"):
            x0, y0, x1, y1 = item["crop"]
            frames = frames[:, y0:y1, x0:x1]
        subject = None
        if item.get("boxes"):  # subjects' extent, source pixels: the same crop and resize as the frames
            mask = np.zeros((1, *frames.shape[1:]), np.uint8)
            for x0, y0, x1, y1 in item["boxes"]:
                mask[0, max(int(y0), 0):max(int(np.ceil(y1)), 0), max(int(x0), 0):max(int(np.ceil(x1)), 0)] = 255
            m = resize_center_crop(mask, self.cfg.height, self.cfg.width)[0, :, :, 0] > 127  # (H, W)
            subject = np.broadcast_to(m, (self.cfg.frames, *m.shape)).copy()  # (T, H, W)
        frames = resize_center_crop(frames, self.cfg.height, self.cfg.width)
        refs = np.stack([prepare_reference(r, self.cfg.ref_size) for r in item["references"]])
        return Sample(frames, refs, item["caption"], position, subject)


def parse_boxes(value: object, where: str) -> list[list[float]] | None:
    """A manifest line's optional "boxes": one [x0, y0, x1, y1] per subject, pixels of the source
    video (after a curation crop), the subject's extent over the clip. They give the reference
    gap its subject cells (`ref_gap_subject/*`) on real clips, which have no masks."""
    if value is None:
        return None
    ok = isinstance(value, list) and all(
        isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) and np.isfinite(v) for v in b)
        and b[2] > b[0] and b[3] > b[1] for b in value)
    if not ok:
        raise InputError(f"{where}: boxes must be a list of [x0, y0, x1, y1] pixel boxes (x1 > x0, y1 > y0)")
    return [[float(v) for v in b] for b in value]


def manifest_path(value: object, root: Path, allow_absolute: bool, where: str) -> Path:
    """A manifest entry's path, resolved against the manifest's folder `root` (module docstring:
    escapes refused, absolute paths only with `allow_absolute`)."""
    import os

    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InputError(f"{where}: paths must be non-empty strings, got {value!r}")
    if os.path.isabs(value):
        if not allow_absolute:
            raise InputError(f"{where}: absolute path {value!r} refused: manifest paths are relative to the "
                             "manifest's folder (set data.absolute_paths=true to allow absolute paths)")
        return Path(os.path.normpath(value))
    norm = os.path.normpath(value)
    if norm == ".." or norm.startswith(".." + os.sep):
        raise InputError(f"{where}: path {value!r} leaves the manifest's folder: keep videos and references "
                         "inside it (or give an absolute path with data.absolute_paths=true)")
    return root / norm


def read_clip(path: Path, count: int, stride: int, rng: np.random.Generator,
              window: list[int] | None = None) -> np.ndarray:
    """(count, H, W, 3) uint8: every `stride`-th frame from a random start (PyAV), inside the
    frames [window[0], window[1]) when a window is given (a curation manifest's clip)."""
    import av

    span = (count - 1) * stride + 1
    lo = int(window[0]) if window else 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        total = int(stream.frames or 0)
        total = min(total, int(window[1])) if window and total else total
        frames: list[np.ndarray] = []
        if total - lo >= span:
            start = int(rng.integers(lo, total - span + 1))
            wanted = set(range(start, start + span, stride))
            for j, frame in enumerate(container.decode(stream)):
                if j in wanted:
                    frames.append(frame.to_ndarray(format="rgb24"))
                if j >= start + span - 1:
                    break
        else:  # unknown length: decode everything
            every = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
            every = every[lo:int(window[1])] if window else every
            if len(every) >= span:
                start = int(rng.integers(0, len(every) - span + 1))
                frames = every[start: start + span: stride]
    if len(frames) != count:
        raise ValueError(f"needs {span} frames, has {total or 'fewer'}")
    return np.stack(frames)


def resize_center_crop(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (T, H0, W0, 3) so it covers (height, width), aspect kept, then centre-crop."""
    import cv2

    h0, w0 = frames.shape[1:3]
    scale = max(height / h0, width / w0)
    nh, nw = max(height, round(h0 * scale)), max(width, round(w0 * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    out = np.stack([cv2.resize(f, (nw, nh), interpolation=interp) for f in frames]) if (nh, nw) != (h0, w0) else frames
    top, left = (nh - height) // 2, (nw - width) // 2
    return np.ascontiguousarray(out[:, top:top + height, left:left + width])


def build_source(cfg: DataConfig, global_batch: int | None = None) -> ExampleSource:
    sources = {"procedural": ProceduralSource, "folder": FolderSource, "manifest": ManifestSource}
    if cfg.source not in sources:
        raise InputError(f"data.source must be one of {', '.join(sources)}, got {cfg.source!r}")
    if cfg.curriculum and cfg.source != "procedural":
        raise InputError(f"data.curriculum needs data.source=procedural (it draws each cast), got {cfg.source!r}")
    return ProceduralSource(cfg, global_batch) if cfg.source == "procedural" else sources[cfg.source](cfg)


def collate(samples: list[Sample]) -> Batch:
    """Stack samples into a `Batch` (uint8 -> [-1, 1], channels first, K padded)."""
    k = max(len(s.refs) for s in samples)
    r = samples[0].refs.shape[1]
    video = torch.from_numpy(np.stack([s.frames for s in samples])).permute(0, 4, 1, 2, 3)  # (B, 3, T, H, W)
    refs = torch.zeros(len(samples), k, 3, r, r)
    ref_mask = torch.zeros(len(samples), k, dtype=torch.bool)
    for b, s in enumerate(samples):
        refs[b, : len(s.refs)] = torch.from_numpy(s.refs).permute(0, 3, 1, 2).float().div(127.5).sub(1)
        ref_mask[b, : len(s.refs)] = True
    subject = None
    if any(s.subject is not None for s in samples):
        t, h, w = samples[0].frames.shape[:3]
        subject = torch.stack([torch.from_numpy(s.subject) if s.subject is not None
                               else torch.zeros(t, h, w, dtype=torch.bool) for s in samples])
    items = None if any(s.item is None for s in samples) else torch.tensor([s.item for s in samples], dtype=torch.int64)
    return Batch(video.float().div(127.5).sub(1), refs, ref_mask, subject, [s.caption for s in samples],
                 torch.tensor([s.position for s in samples], dtype=torch.int64), [s.refs for s in samples], items)


def step_positions(base: int, batch_size: int, world_size: int, grad_accum: int, rank: int) -> list[list[int]]:
    """Positions of this rank's micro-batches for the step whose global batch starts at `base`:
    micro i of rank r takes [base + (i W + r) B, base + (i W + r + 1) B) (G = B W A per step)."""
    return [[base + (i * world_size + rank) * batch_size + j for j in range(batch_size)] for i in range(grad_accum)]


class BatchStream:
    """This rank's micro-batches of the steps whose global batches start at `start_position`,
    then + G, + 2G, ... (G = B W A; optionally rendered ahead in one background thread; the
    order, hence the result, is the same either way)."""

    def __init__(self, source: ExampleSource, batch_size: int, world_size: int, rank: int, grad_accum: int,
                 start_position: int, prefetch: int = 0):
        self.source, self.b, self.w, self.r, self.a = source, batch_size, world_size, rank, grad_accum
        self.global_batch = batch_size * world_size * grad_accum
        self.step = 0  # steps produced by this stream
        self.start = start_position
        self.prefetch = prefetch
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()

    def _make(self, step: int) -> list[Batch]:
        base = self.start + step * self.global_batch
        return [collate([self.source.get(p) for p in micro])
                for micro in step_positions(base, self.b, self.w, self.a, self.r)]

    def _worker(self, first: int) -> None:
        step = first
        while not self._stop.is_set():
            try:
                item = (step, self._make(step))
            except Exception as exc:  # noqa: BLE001 - re-raised in the training thread
                item = (step, exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            step += 1

    def next(self) -> list[Batch]:
        """The micro-batches of the next step."""
        if self.prefetch <= 0:
            out = self._make(self.step)
        else:
            if self._queue is None:
                self._queue = queue.Queue(maxsize=self.prefetch)
                threading.Thread(target=self._worker, args=(self.step,), daemon=True).start()
            step, out = self._queue.get()
            assert step == self.step, (step, self.step)
            if isinstance(out, Exception):
                raise out
        self.step += 1
        return out

    def close(self) -> None:
        self._stop.set()

    def __iter__(self) -> Iterator[list[Batch]]:
        while True:
            yield self.next()
