"""Name -> backend factories for face detectors and face embedders.

Each registry maps a backend name to a factory `(path: str | None) -> backend`. Factories made
with `lazy` import their module only when called, so importing this registry does not import
dlib, OpenCV or insightface. Adding a backend is one line, e.g.

    FACE_DETECTORS["haar"] = lazy("idcrafter.judge.backends.haar:HaarFaceDetector", "optional")

The SpriteWorld judge's parts are registered as "sprites" (path = a judge parts folder,
default `assets/judge`).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Literal

from idcrafter.errors import InputError
from idcrafter.judge.interfaces import Detector, FaceEmbedder

Factory = Callable[[str | None], Any]
PathUse = Literal["none", "optional", "required"]


def lazy(target: str, path_use: PathUse = "none") -> Factory:
    """Factory that imports `module:Class` on first use and builds it.

    path_use: "none" -> the class takes no weights path (passing one is an error, not silently
    ignored); "optional" -> `Class(path)` when a path is given, else `Class()`;
    "required" -> `Class(path)`, and a missing path is an InputError.
    """
    module_name, _, attr = target.partition(":")

    def build(path: str | None) -> Any:
        cls = getattr(importlib.import_module(module_name), attr)
        backend = f"{cls.name} ({attr})"
        if path is None:
            if path_use == "required":
                raise InputError(f"{backend} needs a weights path: pass --face-weights PATH")
            return cls()
        if path_use == "none":
            raise InputError(f"{backend} takes no weights path, got {path!r}: drop the path")
        return cls(path)

    return build


def _sprite_detector(path: str | None) -> Any:
    from idcrafter.judge.detector import SpriteDetector

    return SpriteDetector.load(path)


FACE_DETECTORS: dict[str, Factory] = {
    "dlib": lazy("idcrafter.judge.backends.dlib_face:DlibFaceDetector", "none"),
    "haar": lazy("idcrafter.judge.backends.haar:HaarFaceDetector", "optional"),
    "sprites": _sprite_detector,
}

FACE_EMBEDDERS: dict[str, Factory] = {
    "sprites": lazy("idcrafter.judge.embedders:SpriteFaceEmbedder", "optional"),
    "dlib": lazy("idcrafter.judge.backends.dlib_face:DlibFaceEmbedder", "optional"),
    "insightface": lazy(
        "idcrafter.judge.backends.insightface_onnx:InsightFaceEmbedder", "required"
    ),
}


def _lookup(registry: dict[str, Factory], kind: str, name: str) -> Factory:
    """The factory registered under `name`, or InputError listing the valid names."""
    if name not in registry:
        valid = ", ".join(sorted(registry))
        raise InputError(f"unknown face {kind} {name!r}: choose one of {valid}")
    return registry[name]


def build_face_detector(name: str, path: str | None = None) -> Detector:
    """Face detector backend `name` ("dlib", "haar"); `path` is its weights file if it has one."""
    return _lookup(FACE_DETECTORS, "detector", name)(path)


def build_face_embedder(name: str, path: str | None = None) -> FaceEmbedder:
    """Face embedder backend `name` ("dlib", "insightface"); "insightface" needs `path`."""
    return _lookup(FACE_EMBEDDERS, "embedder", name)(path)
