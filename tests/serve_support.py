"""Shared pieces of the serving tests: images, a fake slot whose jobs block until released, and
the shipped SpriteWorld model loaded once per test process."""

from __future__ import annotations

import functools
import io
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from idcrafter.serve.limits import ModelBounds, Range, ServeLimits
from idcrafter.serve.runner import JobResult

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "assets" / "checkpoints" / "sprites-sft"


def png_bytes(w: int = 32, h: int = 32, color: tuple[int, int, int] = (200, 40, 40), fmt: str = "PNG") -> bytes:
    img = np.full((h, w, 3), 240, np.uint8)
    img[h // 4: 3 * h // 4, w // 3: 2 * w // 3] = color
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(side: int = 5000, complete: bool = True) -> bytes:
    """A valid white greyscale PNG of side x side pixels in a few kB (a decompression bomb in
    miniature), built by hand because PIL takes seconds to encode one. `complete=False` keeps
    only the first rows of pixel data (the header still declares side x side)."""
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * side  # filter byte 0, then the row
    rows = side if complete else 4
    body = b"".join(comp.compress(row * min(256, rows - i)) for i in range(0, rows, 256)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


@functools.cache
def shipped_slot(name: str = "sprites-sft"):
    """The shipped generator, loaded once per process (tests share it; a slot holds no job state)."""
    from idcrafter.serve.runner import load_slot

    return load_slot(SHIPPED, "cpu", "float32", name=name, limits=ServeLimits())


class GatedSlot:
    """A ModelSlot stand-in whose jobs report progress until `release` (or a cancel) ends them."""

    def __init__(self, name: str = "fake", device: str = "cpu", max_refs: int = 4):
        self.name, self.device, self.kind = name, device, "fake"
        self.bounds = ModelBounds(max_refs, Range(1, 100, 4), Range(1.0, 20.0, 2.5), Range(0, 2**31 - 1, 0),
                                  Range(1, 10, 5), Range(6, 96, 48), Range(6, 96, 48))
        self.release = threading.Event()
        self.started = threading.Event()
        self.seen_uploads: list[list[Path]] = []
        self.fail_with: Exception | None = None

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "device": self.device, "dtype": "float32", "scorer": None,
                "scorer_note": "fake", "max_refs": self.bounds.max_refs, "settings": self.bounds.as_dict()}

    def run(self, req, ref_paths, out: Path, report) -> JobResult:
        self.seen_uploads.append([Path(p) for p in ref_paths])
        assert all(Path(p).is_file() for p in ref_paths)
        self.started.set()
        i = 0
        while not self.release.wait(0.01):
            i += 1
            report(min(0.5, i / 1000), f"step {i}")
        if self.fail_with is not None:
            raise self.fail_with
        (out / "video.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
        (out / "sheet.png").write_bytes(png_bytes())
        (out / "metrics.json").write_text("{}")
        return JobResult({"total": 0.5}, [{"reference": 0, "face_sim": 0.5}], [], req.settings(),
                         {"video": "video.mp4", "sheet": "sheet.png", "metrics": "metrics.json"})


def wait_for(predicate, timeout: float = 10.0, every: float = 0.01) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()
