"""The curation config: nested dataclasses read from a TOML or JSON file (unknown keys refused).

    seed = 0
    shard_size = 16
    ref_size = 64

    [[inputs]]                      # any number of them, each an importer (curation.importers)
    kind = "opens2v"                # opens2v | folder | csv | captured | sprites
    path = "data/total_part1.json"  # the annotation JSON / folder / CSV
    video_root = "data/part1"       # opens2v: folder the metadata paths are relative to
    compose = false                 # true: references come from the compose backend -> source "synthetic"

    [scene]       threshold = 27.0, min_scene_len = 15 (PySceneDetect ContentDetector)
    [subjects]    detector = "auto" | "sprites" | "dlib" | "haar" | "annotations" | "owl" (+ queries)
    [compose]     backend = "sprites" | "diffusers" | "http", path / url / prompt
    [face]        detector = "auto" | "sprites" | "dlib" | "haar" | "none"
    [caption]     backend = "keep" | "qwen" | "openai", path / url / model
    [filters]     thresholds (curation.filters)
    [dedup]       max_distance = 4 (perceptual-hash bits)
    [mix]         weights = {real = 0.6, synthetic = 0.3, captured = 0.1}, total = 0

Relative paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from idcrafter.errors import InputError

INPUT_KINDS = ("opens2v", "folder", "csv", "captured", "sprites")
DEFAULT_SOURCE = {"opens2v": "real", "folder": "real", "csv": "real", "captured": "captured", "sprites": "real"}


@dataclass
class InputConfig:
    kind: str = "folder"
    path: str | None = None
    video_root: str | None = None  # opens2v
    cross_pairs: str | None = None  # opens2v: Nexus cross-frame pairs (a JSON file or a folder of them)
    classes: list[str] | None = None  # opens2v: class names kept as subjects (None: people words)
    source: str | None = None  # real | synthetic | captured (default: by kind; compose -> synthetic)
    compose: bool = False
    limit: int | None = None
    # sprites
    num: int = 0
    seed: int = 0
    split: str = "train"
    frames: int = 9
    height: int = 48
    width: int = 48
    max_scenes: int = 2
    duplicates: float = 0.05  # share of raw sprite videos that re-upload an earlier one (dedup has work)

    def resolved_source(self) -> str:
        return self.source or ("synthetic" if self.compose else DEFAULT_SOURCE[self.kind])


@dataclass
class SceneConfig:
    enabled: bool = True
    threshold: float = 27.0
    min_scene_len: int = 15


@dataclass
class SubjectsConfig:
    detector: str = "auto"  # auto | sprites | dlib | haar | annotations | owl
    detector_path: str | None = None  # sprites: a judge folder; owl: an OWL-ViT / OWLv2 folder
    queries: list[str] = field(default_factory=lambda: ["person"])  # owl: the classes to find
    threshold: float = 0.2  # owl: minimum score
    max_subjects: int = 4
    max_frames: int = 16  # frames sampled for detection and tracking
    min_presence: float = 0.3  # a track must be seen in this share of the sampled frames


@dataclass
class ComposeConfig:
    backend: str = "sprites"
    path: str | None = None  # diffusers: a local pipeline folder
    url: str | None = None  # http: the edit endpoint
    prompt: str = ("the same {class_label} in a different pose, lighting and place, whole body, "
                   "on a plain light background")
    steps: int = 20
    guidance: float = 4.0
    timeout: float = 60.0
    keep_background: bool = False  # sprites: keep the new context instead of the plain canvas


@dataclass
class FaceConfig:
    detector: str = "auto"
    min_face_px: float = 8.0  # faces smaller than this lose quality linearly
    sharp_ref: float = 100.0  # variance of the Laplacian at which sharpness saturates


@dataclass
class CaptionConfig:
    backend: str = "keep"
    path: str | None = None
    url: str | None = None
    model: str = "Qwen2.5-VL-7B-Instruct"
    api_key_env: str = "OPENAI_API_KEY"
    prompt: str = ("Describe this video in one paragraph: every subject by appearance, what each does, "
                   "how they interact, the place and the camera.")
    frames: int = 4
    max_new_tokens: int = 160
    overwrite: bool = False  # caption rows that already have one
    timeout: float = 120.0


@dataclass
class FilterConfig:
    aesthetic: str = "auto"  # auto (sprites: the judge's quality model; else none) | sprites | clip | none
    aesthetic_path: str | None = None
    min_aesthetic: float | None = None
    min_duration: float = 0.5  # seconds
    max_duration: float = 60.0
    min_short_side: int = 48
    min_motion: float = 0.02  # Farneback px / frame at 128 px width
    max_motion: float = 12.0
    max_copy_paste: float = 0.9
    min_face_quality: float | None = None
    motion_frames: int = 8


@dataclass
class DedupConfig:
    max_distance: int = 4


@dataclass
class MixConfig:
    weights: dict[str, float] = field(default_factory=lambda: {"real": 1.0, "synthetic": 1.0, "captured": 1.0})
    total: int = 0  # cap on kept rows (0: as many as the weights allow)


@dataclass
class CurationConfig:
    inputs: list[InputConfig] = field(default_factory=list)
    seed: int = 0
    shard_size: int = 16
    ref_size: int = 64
    ref_background: list[int] = field(default_factory=lambda: [240, 240, 235])
    scene: SceneConfig = field(default_factory=SceneConfig)
    subjects: SubjectsConfig = field(default_factory=SubjectsConfig)
    compose: ComposeConfig = field(default_factory=ComposeConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    caption: CaptionConfig = field(default_factory=CaptionConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    mix: MixConfig = field(default_factory=MixConfig)

    def validate(self) -> "CurationConfig":
        if not self.inputs:
            raise InputError("the curation config has no [[inputs]]: add at least one (kind = folder, path = ...)")
        for i, inp in enumerate(self.inputs):
            if inp.kind not in INPUT_KINDS:
                raise InputError(f"inputs[{i}].kind {inp.kind!r}: choose one of {', '.join(INPUT_KINDS)}")
            if inp.kind != "sprites" and not inp.path:
                raise InputError(f"inputs[{i}] ({inp.kind}) needs a path")
            if inp.kind == "sprites" and inp.num < 1:
                raise InputError(f"inputs[{i}] (sprites) needs num >= 1, got {inp.num}")
            if inp.resolved_source() not in ("real", "synthetic", "captured"):
                raise InputError(f"inputs[{i}].source {inp.source!r}: choose real, synthetic or captured")
        if self.shard_size < 1 or self.ref_size < 16:
            raise InputError("shard_size must be >= 1 and ref_size >= 16")
        if any(w < 0 for w in self.mix.weights.values()) or not any(w > 0 for w in self.mix.weights.values()):
            raise InputError(f"mix.weights must be >= 0 with one > 0, got {self.mix.weights}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise InputError(f"{where} must be a table of settings, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(where + '.' + u for u in unknown)}: "
                         f"valid are {', '.join(known)}")
    kwargs = {}
    for name, value in data.items():
        default = getattr(cls(), name) if name != "inputs" else None
        if name == "inputs":
            if not isinstance(value, list):
                raise InputError("inputs must be a list ([[inputs]] tables)")
            kwargs[name] = [_build(InputConfig, v, f"inputs[{i}]") for i, v in enumerate(value)]
        elif is_dataclass(default):
            kwargs[name] = _build(type(default), value, f"{where}.{name}" if where else name)
        else:
            kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise InputError(f"bad settings in {where or 'the config'}: {exc}") from exc


def from_dict(data: dict) -> CurationConfig:
    return _build(CurationConfig, data, "").validate()


def _absolutise(cfg: CurationConfig, root: Path) -> None:
    def fix(p: str | None) -> str | None:
        return None if p is None or "://" in p or Path(p).is_absolute() else str((root / p).resolve())

    for inp in cfg.inputs:
        inp.path, inp.video_root, inp.cross_pairs = fix(inp.path), fix(inp.video_root), fix(inp.cross_pairs)
    cfg.subjects.detector_path = fix(cfg.subjects.detector_path)
    cfg.compose.path, cfg.caption.path = fix(cfg.compose.path), fix(cfg.caption.path)
    cfg.filters.aesthetic_path = fix(cfg.filters.aesthetic_path)


def load_config(path: str | Path) -> CurationConfig:
    """Read a TOML (.toml) or JSON config; relative paths become absolute (from the file's folder)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config not found: {path} (a .toml or .json file; see docs/curation.md)")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except ImportError as exc:  # pragma: no cover - Python 3.10
        raise InputError("TOML configs need Python 3.11+: write the config as JSON") from exc
    except ValueError as exc:
        raise InputError(f"cannot parse {path}: {exc}") from exc
    cfg = from_dict(data)
    _absolutise(cfg, path.parent.resolve())
    return cfg


def sprites_config(num: int, seed: int, compose: bool = True, **overrides: Any) -> CurationConfig:
    """The embedded default: `num` raw SpriteWorld videos through every step."""
    inp = InputConfig(kind="sprites", num=num, seed=seed, compose=compose)
    cfg = CurationConfig(inputs=[inp], seed=seed, ref_size=36)  # the sprites recipe's reference size
    cfg.scene.min_scene_len = 3
    cfg.filters.min_short_side = 32
    cfg.face.min_face_px = 5.0
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        setattr(getattr(cfg, section), name, value)
    return cfg.validate()
