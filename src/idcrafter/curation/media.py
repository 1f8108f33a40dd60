"""Video access for the curation steps: probe, decode a clip window (cached), atomic writes.

Steps are pure functions of their row, so several steps decode the same clip; `load_clip`
keeps the last few decoded windows per process (keyed by path, size and modification time),
which makes that free without changing any result.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np

from idcrafter.errors import InputError


def resolve(root: str | Path, uri: str) -> Path:
    """`uri` relative to the output folder `root` (absolute uris stay as they are)."""
    p = Path(uri)
    return p if p.is_absolute() else Path(root) / p


def probe(path: str | Path) -> dict:
    """{"fps", "frames", "width", "height"} of a video's first stream (PyAV; frames counted by
    decoding when the container does not say)."""
    import av

    path = Path(path)
    if not path.is_file():
        raise InputError(f"video not found: {path}")
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        frames = int(stream.frames or 0)
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        if frames <= 0:
            frames = sum(1 for _ in container.decode(stream))
    return {"fps": fps, "frames": frames, "width": width, "height": height}


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path), st.st_size, st.st_mtime_ns


def load_clip(path: str | Path, start: int, end: int, crop: list[int] | None = None,
              max_frames: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """((T, H, W, 3) uint8 frames, (T,) absolute frame indices) of frames [start, end),
    `max_frames` of them evenly spaced (first and last kept), cropped to x0 y0 x1 y1."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"video not found: {path}")
    frames, idx = _load_cached(_key(path), int(start), int(end), tuple(crop) if crop else None,
                               max_frames)
    return frames, idx


@lru_cache(maxsize=4)
def _load_cached(key: tuple, start: int, end: int, crop: tuple | None, max_frames: int | None):
    import av

    if end <= start:
        raise ValueError(f"empty clip window [{start}, {end})")
    wanted = np.arange(start, end)
    if max_frames is not None and len(wanted) > max_frames:
        wanted = np.unique(np.linspace(start, end - 1, max_frames).round().astype(int))
    want = set(int(i) for i in wanted)
    out = []
    with av.open(key[0]) as container:
        for j, frame in enumerate(container.decode(video=0)):
            if j in want:
                out.append(frame.to_ndarray(format="rgb24"))
            if j >= end - 1:
                break
    if len(out) != len(wanted):
        raise ValueError(f"{key[0]} has {len(out)} of the frames [{start}, {end}) it should have")
    frames = np.stack(out)
    if crop is not None:
        x0, y0, x1, y1 = crop
        frames = np.ascontiguousarray(frames[:, y0:y1, x0:x1])
    frames.setflags(write=False)  # cached: callers must copy before changing it
    return frames, wanted


def write_video(path: str | Path, frames: np.ndarray, fps: float) -> Path:
    """(T, H, W, 3) uint8 -> lossless H.264 mp4 (yuv444p, qp 0), atomically.
    PyAV encodes in-process (an ffmpeg subprocess per tiny clip cost more than the rendering)."""
    from fractions import Fraction

    import av

    from idcrafter.utils.io import fsync_dir

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    with av.open(str(tmp), "w", format="mp4") as container:
        # lossless (qp 0): x264's lossy decisions were measured to differ between runs of the same
        # row in one process (decoded pixels up to 42 levels apart, so boxes and scores moved);
        # lossless, the decoded pixels are the input's (through yuv444p) whatever the encoder does
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001),
                                      options={"qp": "0", "preset": "veryfast", "threads": "1"})
        stream.width, stream.height = int(frames.shape[2]), int(frames.shape[1])
        stream.pix_fmt = "yuv444p"
        stream.codec_context.thread_count = 1
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """(H, W, 3) uint8 -> PNG, atomically."""
    from PIL import Image

    from idcrafter.utils.io import atomic_write_bytes
    import io

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())
