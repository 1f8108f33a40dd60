"""SpriteWorld examples, datasets on disk, and the torch Dataset that reads them.

Example i of (split, seed) is rendered from its own generator `default_rng([seed, i, split])`,
so a dataset is deterministic for its seed whatever order or chunking makes it, and any single
example can be re-rendered on its own.

On-disk format (a folder, written to `<out>.tmp` then renamed, so a crash never leaves a
half-written dataset behind):

    manifest.json        format, split, num, seed, world config, array shapes, command
    frames.npy           (N, T, H, W, 3) uint8
    masks.npy            (N, T, H, W) uint8, 0 = background, k + 1 = subject k
    refs.npy             (N, 4, R, R, 3) uint8, references in subject order (zeros past K)
    boxes.npy            (N, T, 4, 4) float32 whole-body boxes x0 y0 x1 y1 (zeros past K)
    head_boxes.npy       (N, T, 4, 4) float32
    visibility.npy       (N, T, 4) float32
    num_subjects.npy     (N,) int64
    meta.jsonl           one JSON line per example: caption, identities, actions, background
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from idcrafter.errors import InputError
from idcrafter.world.captions import make_caption
from idcrafter.world.identity import Split
from idcrafter.world.scene import (
    MAX_SUBJECTS, ClipSpec, RenderedClip, WorldConfig, render_clip, render_reference, sample_clip,
    spec_to_json,
)

FORMAT = "spriteworld-v1"
ARRAY_NAMES = ("frames", "masks", "refs", "boxes", "head_boxes", "visibility", "num_subjects")
SPLIT_CODE = {"train": 0, "heldout": 1}


@dataclass
class Example:
    """One clip with its references, caption and ground truth."""

    clip: RenderedClip
    refs: np.ndarray  # (K, R, R, 3) uint8, in subject order
    caption: str

    @property
    def spec(self) -> ClipSpec:
        return self.clip.spec

    def meta(self) -> dict:
        d = spec_to_json(self.spec)
        d["caption"] = self.caption
        return d


def example_rng(seed: int, index: int, split: Split) -> np.random.Generator:
    return np.random.default_rng([seed, index, SPLIT_CODE[split]])


def check_split(split: str) -> Split:
    if split not in SPLIT_CODE:
        raise InputError(f"unknown split {split!r}: use 'train' or 'heldout'")
    return split  # type: ignore[return-value]


def make_example(seed: int, index: int, split: Split, config: WorldConfig | None = None,
                 num_subjects: int | None = None, actions: list[str] | None = None) -> Example:
    """Render example `index` of (split, seed). K is uniform in 1..4 unless given."""
    from idcrafter.validation import check_int, check_seed

    config = config or WorldConfig()
    rng = example_rng(check_seed(seed), check_int(index, "example index", 0), check_split(split))
    k = int(rng.integers(1, MAX_SUBJECTS + 1)) if num_subjects is None else num_subjects
    if not 1 <= k <= MAX_SUBJECTS:
        raise InputError(f"number of subjects must be in 1..{MAX_SUBJECTS}, got {k}")
    spec = sample_clip(rng, config, k, split, actions=actions)
    clip = render_clip(spec, rng)
    refs = np.stack([render_reference(s.identity, config.ref_size) for s in spec.subjects])
    return Example(clip, refs, make_caption(spec, rng))


def make_dataset(out: str | Path, split: Split, num: int, seed: int, config: WorldConfig | None = None,
                 overwrite: bool = False, command: str | None = None, progress: bool = True) -> Path:
    """Render `num` examples into the folder `out` (format in the module docstring)."""
    from numpy.lib.format import open_memmap
    from tqdm import tqdm

    config = config or WorldConfig()
    out = Path(out)
    from idcrafter.utils.io import check_writable_dir, mark_dir, replace_dir, temp_dir_beside
    from idcrafter.validation import LIMITS, check_int, check_seed

    if out.exists() and not overwrite:
        raise InputError(f"{out} already exists: pass --overwrite or choose another --out")
    # --overwrite replaces only a dataset `world make` wrote (its marker, or a dataset's files)
    check_writable_dir(out, "idcrafter world make", fix="", signature=("manifest.json", "meta.jsonl", "frames.npy"))
    check_int(num, "--num", 1, LIMITS.max_clips)
    check_seed(seed)
    tmp = temp_dir_beside(out)  # a fresh hidden folder: nothing that exists is reused or deleted
    t, h, w, r, k = config.frames, config.height, config.width, config.ref_size, MAX_SUBJECTS
    shapes = {
        "frames": ((num, t, h, w, 3), np.uint8), "masks": ((num, t, h, w), np.uint8),
        "refs": ((num, k, r, r, 3), np.uint8), "boxes": ((num, t, k, 4), np.float32),
        "head_boxes": ((num, t, k, 4), np.float32), "visibility": ((num, t, k), np.float32),
        "num_subjects": ((num,), np.int64),
    }
    arrays = {name: open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dt, shape=shape)
              for name, (shape, dt) in shapes.items()}
    with open(tmp / "meta.jsonl", "w") as meta:
        for i in tqdm(range(num), desc=f"rendering {split}", disable=not progress, file=sys.stderr):
            ex = make_example(seed, i, split, config)
            n = len(ex.spec.subjects)
            arrays["frames"][i] = ex.clip.frames
            arrays["masks"][i] = ex.clip.masks
            arrays["refs"][i, :n] = ex.refs
            arrays["boxes"][i, :, :n] = ex.clip.boxes
            arrays["head_boxes"][i, :, :n] = ex.clip.head_boxes
            arrays["visibility"][i, :, :n] = ex.clip.visibility
            arrays["num_subjects"][i] = n
            meta.write(json.dumps({"index": i, **ex.meta()}) + "\n")
    for a in arrays.values():
        a.flush()
    del arrays
    manifest = {
        "format": FORMAT, "split": split, "num": num, "seed": seed, "config": asdict(config),
        "arrays": {name: {"shape": list(shape), "dtype": np.dtype(dt).name} for name, (shape, dt) in shapes.items()},
        "command": command,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    mark_dir(tmp, "idcrafter world make")
    replace_dir(tmp, out)
    return out


class SpriteWorldDataset:
    """Random access to a dataset folder written by `make_dataset` (a torch map-style Dataset).

    Items are dicts of numpy arrays trimmed to the example's K subjects plus its caption;
    arrays are memory-mapped, opened lazily so DataLoader workers each get their own handle.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / "manifest.json"
        if not path.is_file():
            raise InputError(f"{self.root} is not a SpriteWorld dataset (no manifest.json): "
                             f"make one with `idcrafter world make --out {self.root}`")
        from idcrafter.errors import CorruptFileError

        try:
            self.manifest = json.loads(path.read_text(encoding="utf-8"))
            if self.manifest.get("format") != FORMAT:
                raise InputError(f"{path}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
            self.config = WorldConfig(**self.manifest["config"])
            arrays, num = self.manifest["arrays"], self.manifest["num"]
        except InputError:
            raise
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptFileError(f"{path} is not a valid dataset manifest ({exc.__class__.__name__}: {exc})") from exc
        # array names become file names: only the format's own (no "../x" escaping the folder)
        if not isinstance(arrays, dict) or not set(arrays) <= set(ARRAY_NAMES) or not isinstance(num, int) or num < 1:
            raise CorruptFileError(f"{path}: arrays must be among {', '.join(ARRAY_NAMES)} and num a positive integer")
        self._arrays: dict[str, np.ndarray] | None = None
        with open(self.root / "meta.jsonl") as f:
            self.meta = [json.loads(line) for line in f]

    def __len__(self) -> int:
        return int(self.manifest["num"])

    @property
    def num_subjects(self) -> np.ndarray:
        """(N,) subjects of each example (memory-mapped)."""
        return self._open()["num_subjects"]

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {name: np.load(self.root / f"{name}.npy", mmap_mode="r")
                            for name in self.manifest["arrays"]}
        return self._arrays

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for a dataset of {len(self)}")
        i = i % len(self)
        a = self._open()
        k = int(a["num_subjects"][i])
        return {
            "frames": np.array(a["frames"][i]), "masks": np.array(a["masks"][i]),
            "refs": np.array(a["refs"][i, :k]), "boxes": np.array(a["boxes"][i, :, :k]),
            "head_boxes": np.array(a["head_boxes"][i, :, :k]),
            "visibility": np.array(a["visibility"][i, :, :k]), "num_subjects": k,
            "caption": self.meta[i]["caption"], "meta": self.meta[i],
        }
