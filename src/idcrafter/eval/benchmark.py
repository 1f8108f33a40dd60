"""Benchmarks `idcrafter eval` runs: the built-in `sprites-heldout` and OpenS2V-Eval JSON files.

- `sprites-heldout`: held-out SpriteWorld casts (identities never seen in training) of 1, 2, 3, 4
  subjects in turn; case i is `make_example(seed, i, "heldout", ...)`, so the benchmark is a pure
  function of `--seed` and `--cases`; scored by the judge v2 and the audit judge (with the
  references' true attributes), beside the judge's figures on the ground-truth render.
  With `--model` the casts are rendered at the generator's own size (frames, height, width and
  reference size from its `model_index.json`, as `idcrafter eval heldout` does): every action is a
  function of normalised time, so a 5-frame and a 9-frame render are the same scene, and no model
  is asked for a length it never trained on. Scoring `--videos` (and `--inputs-only`) uses
  `DEFAULT_WORLD`, 9 x 48 x 48 with 32 px references.
- an OpenS2V-Eval JSON (`{key: {img_paths, prompt, class_label}}`): reference paths are relative
  to `images_root` (default: the JSON's folder, as in the OpenS2V-Eval download); `--cases N`
  takes a seeded sample of N keys, kept in file order.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from idcrafter.errors import InputError
from idcrafter.world.scene import WorldConfig

BUILTIN = ("sprites-heldout",)
#: the SpriteWorld size of `sprites-heldout` when no generator sets it (`--videos`, `--inputs-only`)
DEFAULT_WORLD = asdict(WorldConfig())  # 9 x 48 x 48, 32 px references


@dataclass
class BenchCase:
    key: str
    prompt: str
    subjects: int
    seed: int  # the initial-noise seed when a model generates this case
    ground_truth: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    opens2v: Any = None  # the OpenS2VCase of a JSON benchmark
    _refs: list[np.ndarray] | None = None
    _ref_paths: tuple[Path, ...] = ()

    @property
    def references(self) -> list[np.ndarray]:
        """The reference images (loaded on first use: a missing file fails this case only)."""
        if self._refs is None:
            from idcrafter.utils.media import load_image

            self._refs = [load_image(p) for p in self._ref_paths]
        return self._refs

    def generation_case(self, size: tuple[int | None, int | None, int | None] = (None, None, None)):
        from idcrafter.generation import Case

        if self.ground_truth is not None:
            size = tuple(self.ground_truth.shape[:3])
        return Case(key=self.key, prompt=self.prompt, references=self.references, seed=self.seed, size=size)


def noise_seed(seed: int, index: int) -> int:
    """Case `index`'s initial-noise seed, distinct per (benchmark seed, case)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:7], "big")


@dataclass
class Benchmark:
    name: str
    kind: str  # "sprites" or "opens2v"
    domain: str = "open"
    path: Path | None = None
    images_root: Path | None = None
    world: dict[str, int] | None = None  # sprites: None = the generator's own size, else DEFAULT_WORLD

    @property
    def world_size(self) -> dict[str, int]:
        """The SpriteWorld size the cases are rendered at."""
        return dict(self.world or DEFAULT_WORLD)

    def for_model(self, model: str | Path) -> "Benchmark":
        """This benchmark rendered at the generator's own size (`native_world`) unless a world was
        given explicitly; OpenS2V benchmarks are returned unchanged."""
        if self.kind != "sprites" or self.world is not None:
            return self
        return replace(self, world=native_world(model))

    def identity(self) -> dict[str, Any]:
        """What must match for a run folder to be resumed."""
        ident: dict[str, Any] = {"name": self.name, "kind": self.kind, "domain": self.domain}
        if self.path is not None:
            ident["sha256"] = hashlib.sha256(self.path.read_bytes()).hexdigest()
        if self.kind == "sprites":
            ident["world"] = self.world_size
        return ident

    def cases(self, n: int | None, seed: int) -> list[BenchCase]:
        if n is not None and n < 1:
            raise InputError(f"--cases must be >= 1, got {n}")
        return self._sprites(n or 16, seed) if self.kind == "sprites" else self._opens2v(n, seed)

    def _sprites(self, n: int, seed: int) -> list[BenchCase]:
        from idcrafter.world.dataset import make_example
        from idcrafter.world.scene import MAX_SUBJECTS

        world = WorldConfig(**self.world_size)
        out = []
        for i in range(n):
            ex = make_example(seed, i, "heldout", world, num_subjects=1 + i % MAX_SUBJECTS)
            out.append(BenchCase(f"heldout_{i:04d}", ex.caption, len(ex.refs), noise_seed(seed, i),
                                 ground_truth=ex.clip.frames,
                                 meta={"ref_attributes": [s.identity.attributes() for s in ex.spec.subjects]},
                                 _refs=list(ex.refs)))
        return out

    def _opens2v(self, n: int | None, seed: int) -> list[BenchCase]:
        from idcrafter.eval.opens2v import load_benchmark

        cases = load_benchmark(self.path)
        if n is not None and n < len(cases):
            keep = sorted(np.random.default_rng(seed).choice(len(cases), size=n, replace=False).tolist())
            cases = [cases[i] for i in keep]
        root = self.images_root or self.path.parent
        return [BenchCase(c.key, c.prompt, len(c.img_paths), noise_seed(seed, i), opens2v=c,
                          _ref_paths=tuple(root / p for p in c.img_paths)) for i, c in enumerate(cases)]

    def suite(self, cfg):
        from idcrafter.eval.suite import opens2v_suite, sprites_suite

        return sprites_suite(cfg) if self.kind == "sprites" else opens2v_suite(cfg)


def export_inputs(cases: list[BenchCase], out: str | Path) -> Path:
    """The cases' inputs for another model: `out/benchmark.json` in OpenS2V-Eval's format (paths
    relative to `out`) and the references as `out/Images/<key>/ref_<i>.png`. Generate
    `<key>.mp4` from it with any model, then score them with `--videos`."""
    from idcrafter.utils.io import atomic_write_json, check_writable_dir, mark_dir
    from idcrafter.utils.media import save_image

    out = Path(out)
    check_writable_dir(out, "idcrafter eval --inputs-only", fix="another --out")
    out.mkdir(parents=True, exist_ok=True)
    mark_dir(out, "idcrafter eval --inputs-only")
    index = {}
    for c in cases:
        paths = []
        for i, ref in enumerate(c.references):
            rel = f"Images/{c.key}/ref_{i}.png"
            save_image(out / rel, ref)
            paths.append(rel)
        index[c.key] = {"img_paths": paths, "prompt": c.prompt, "class_label": ["Subject"] * len(paths),
                        "size": list(c.ground_truth.shape[:3]) if c.ground_truth is not None else None}
    return atomic_write_json(out / "benchmark.json", index, indent=1)


def native_world(model: str | Path) -> dict[str, int]:
    """The SpriteWorld size a pipeline folder generates by default (`WorldConfig.of_pipeline` on
    its `model_index.json`, the size `idcrafter eval heldout` renders at); `DEFAULT_WORLD` for a
    folder without one (`load_generator` then says so in one line)."""
    try:
        cfg = json.loads((Path(model) / "model_index.json").read_text())
    except (OSError, ValueError):
        return dict(DEFAULT_WORLD)
    return asdict(WorldConfig.of_pipeline(cfg))


def resolve_benchmark(spec: str, images_root: str | Path | None = None, domain: str | None = None,
                      world: dict[str, int] | None = None) -> Benchmark:
    """A built-in name or the path of an OpenS2V-Eval JSON file."""
    from idcrafter.eval.opens2v import domain_of, load_benchmark

    if spec in BUILTIN:
        b = Benchmark(spec, "sprites")
        if world:
            b.world = dict(world)
        return b
    path = Path(spec)
    if path.suffix.lower() != ".json" and not path.exists():
        raise InputError(f"unknown benchmark {spec!r}: use {', '.join(BUILTIN)} or the path of an OpenS2V-Eval JSON")
    load_benchmark(path)  # validate now: a malformed file fails before any work
    d = domain or domain_of(path)
    if d not in ("open", "human"):
        raise InputError(f"--domain must be open or human, got {d!r}")
    return Benchmark(path.stem, "opens2v", d, path.resolve(), Path(images_root).resolve() if images_root else None)
