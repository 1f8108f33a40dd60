"""Reading and writing clips (mp4), reference images and contact sheets."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from idcrafter.errors import InputError

MAX_IMAGE_PIXELS = 64_000_000  # references and images read by the CLI (PIL's own bomb limit is 89 MP)


SPRITEWORLD_FPS = 4  # SpriteWorld clips (5-9 frames: actions are functions of normalised time)
WAN_FPS = 16  # Wan2.1's clips (81 frames = 5 s)
MIN_DISPLAY_SIDE = 192  # small clips are nearest-upscaled to at least this, to be visible in a player
MAX_UPSCALE = 8


def display_upscale(height: int, width: int) -> int:
    """The nearest-upscale factor that makes a small clip visible: 1 for clips whose shorter side
    is already >= MIN_DISPLAY_SIDE (real video is written at its own size), otherwise the
    smallest *even* factor reaching it (at most MAX_UPSCALE). Even, because then every 2x2 block
    of 4:2:0 chroma lies inside one source pixel, so yuv420p keeps each sprite pixel's colour
    exactly (an odd factor would average neighbouring pixels' chroma)."""
    side = min(height, width)
    if side >= MIN_DISPLAY_SIDE:
        return 1
    f = 2
    while side * f < MIN_DISPLAY_SIDE and f < MAX_UPSCALE:
        f += 2
    return f


def write_mp4(path: str | Path, frames: np.ndarray, fps: int | None = None, upscale: int | None = None,
              crf: int | None = None) -> Path:
    """Write (T, H, W, 3) uint8 frames as H.264 mp4 in yuv420p (what every player and browser
    plays; `+faststart` so browsers can start before the whole file is read).

    Size: the frames' own, except that small clips (SpriteWorld's 48 px) are nearest-upscaled by
    `display_upscale` (`upscale` overrides it); an odd side left at factor 1 is padded by one
    repeated edge pixel, since 4:2:0 needs even sides. fps: given, else SpriteWorld's 4 for small
    clips and Wan's 16 otherwise (callers with a pipeline pass `pipe.fps`). crf: 12 for upscaled
    clips (sharp sprite edges), 18 otherwise (visually lossless).

    The upscale is lossless for the judge: `read_video(path, (H, W))` area-downsamples back.
    Raises `OutputPathError` when the encoder did not produce the file (`_commit_video`).
    """
    import imageio.v2 as imageio

    from idcrafter.utils.io import ensure_dir

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) < 1:
        raise InputError(f"write_mp4 needs (T, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}")
    h, w = frames.shape[1:3]
    small = min(h, w) < MIN_DISPLAY_SIDE
    factor = display_upscale(h, w) if upscale is None else int(upscale)
    if factor < 1:
        raise InputError(f"write_mp4: upscale must be >= 1, got {upscale}")
    fps = (SPRITEWORLD_FPS if small else WAN_FPS) if fps is None else fps
    crf = (12 if factor > 1 else 18) if crf is None else crf
    ensure_dir(path.parent)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.mp4")  # written aside, renamed in when complete
    try:
        with imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=None, macro_block_size=1,
                                pixelformat="yuv420p",
                                ffmpeg_params=["-crf", str(crf), "-movflags", "+faststart"]) as writer:
            for f in frames:  # one frame at a time: an upscaled 81-frame clip is never held whole
                if factor > 1:
                    f = f.repeat(factor, axis=0).repeat(factor, axis=1)
                if f.shape[0] % 2 or f.shape[1] % 2:
                    f = np.pad(f, ((0, f.shape[0] % 2), (0, f.shape[1] % 2), (0, 0)), mode="edge")
                writer.append_data(f)
        return _commit_video(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _commit_video(tmp: Path, path: Path) -> Path:
    """Rename a finished video into place, or raise if the encoder did not really write it
    (ffmpeg can exit without an error and leave nothing, or an empty file)."""
    from idcrafter.errors import OutputPathError
    from idcrafter.utils.io import fsync_dir

    if not tmp.is_file() or tmp.stat().st_size < 32:
        raise OutputPathError(f"cannot write {path}: the video encoder produced no file (ffmpeg failed)")
    with open(tmp, "rb") as fh:
        if fh.read(12)[4:8] != b"ftyp":
            raise OutputPathError(f"cannot write {path}: the video encoder wrote something that is not an mp4")
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if not path.is_file():
        raise OutputPathError(f"cannot write {path}: the file is not there after writing")
    return path


def read_video(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a video file; resized (area) to `size` = (H, W) if given."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"video not found: {path} (pass an existing .mp4 file)")
    try:
        import av

        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad file for the user
        raise InputError(f"cannot decode video {path}: {exc.__class__.__name__}; is it a valid mp4?") from exc
    if not frames:
        raise InputError(f"video {path} has no frames")
    video = np.stack(frames)
    if size is not None and video.shape[1:3] != tuple(size):
        video = resize_video(video, size)
    return video


def resize_video(video: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resize (T, H, W, 3) uint8 frames to (T, size[0], size[1], 3)."""
    import cv2

    h, w = size
    interp = cv2.INTER_AREA if video.shape[1] >= h else cv2.INTER_LINEAR
    return np.stack([cv2.resize(f, (w, h), interpolation=interp) for f in video])


def load_image(path: str | Path, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any PIL-readable image (transparency composited on `background`;
    L, CMYK, P, ... converted)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"reference image not found: {path} (check the path passed to --ref)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:  # decided from the header, before decoding
                    raise InputError(f"image {path} is {im.size[0]}x{im.size[1]} pixels, over the limit of "
                                     f"{MAX_IMAGE_PIXELS // 1_000_000} megapixels: pass a smaller image")
                im.load()
                return _to_rgb_array(im, background)
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image {path} decompresses to too many pixels (a decompression bomb?): "
                         "pass a smaller image") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InputError(f"cannot read image {path}: the file is corrupt or not an image") from exc


def _to_rgb_array(im: Image.Image, background: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 3) uint8 of a loaded PIL image; transparency composited on `background`."""
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (*background, 255))
        im = Image.alpha_composite(bg, rgba)
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def save_image(path: str | Path, image: np.ndarray, upscale: int = 1) -> Path:
    """Write an image atomically (format from the suffix; PNG when it has none PIL knows)."""
    import io

    from idcrafter.utils.io import atomic_write_bytes, ensure_dir

    path = Path(path)
    ensure_dir(path.parent)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    buf = io.BytesIO()
    Image.fromarray(image.repeat(upscale, 0).repeat(upscale, 1)).save(buf, format=fmt)
    atomic_write_bytes(path, buf.getvalue())
    return path


SHEET_CELL = 192  # px: the height of a contact sheet's largest image
SHEET_MAX_IMAGES = 8  # per row; longer rows are sampled evenly (first and last frame kept)


def sample_indices(n: int, k: int) -> list[int]:
    """k evenly spaced indices of 0..n-1, first and last included (all of them when n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, k)})


def contact_sheet(rows: list[tuple[str, list[np.ndarray]]], upscale: int | None = None, pad: int = 4,
                  label_width: int = 90, max_images: int = SHEET_MAX_IMAGES, cell: int = SHEET_CELL) -> np.ndarray:
    """One labelled row per list of images (e.g. references | generated | ground truth).

    Bounded whatever the clip: a row of more than `max_images` images shows `max_images` of them,
    evenly spaced (its label says how many of how many); every image is scaled by one factor,
    so the tallest is `cell` px high: nearest-upscaled by an integer for small images, area-
    downscaled for large ones (a 480 x 832 frame becomes 192 x 333). `upscale` forces an integer
    nearest factor instead. Rows may hold different numbers and sizes of images.
    """
    picked = []
    for label, ims in rows:
        idx = sample_indices(len(ims), max_images)
        if len(idx) < len(ims):
            label = f"{label}\n{len(idx)} of {len(ims)}"
        picked.append((label, [np.asarray(ims[i]) for i in idx]))
    tallest = max((im.shape[0] for _, ims in picked for im in ims), default=1)
    scale = float(upscale) if upscale is not None else (max(1, cell // tallest) if tallest <= cell else cell / tallest)
    cells = [[_scaled(im, scale) for im in ims] for _, ims in picked]
    row_h = [max(c.shape[0] for c in r) if r else 0 for r in cells]
    width = label_width + max(sum(c.shape[1] + pad for c in r) for r in cells) + pad
    height = sum(row_h) + pad * (len(rows) + 1)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for (label, _), r, h in zip(picked, cells, row_h):
        draw.multiline_text((4, y + h // 2 - 5 * (label.count("\n") + 1)), label, fill=(0, 0, 0))
        x = label_width
        for c in r:
            sheet.paste(Image.fromarray(c), (x, y))
            x += c.shape[1] + pad
        y += h + pad
    return np.asarray(sheet)


def _scaled(im: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 nearest-upscaled by an integer `scale` >= 1, or area-resized by a fraction."""
    if scale >= 1:
        f = int(scale)
        return im if f == 1 else im.repeat(f, 0).repeat(f, 1)
    size = (max(1, round(im.shape[1] * scale)), max(1, round(im.shape[0] * scale)))
    return np.asarray(Image.fromarray(im).resize(size, Image.Resampling.BOX))
