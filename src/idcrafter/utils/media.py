"""Reading and writing clips (mp4), reference images and contact sheets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from idcrafter.errors import InputError


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = 4, upscale: int = 4) -> Path:
    """Write (T, H, W, 3) uint8 frames as H.264 mp4, nearest-upscaled so players show pixels.

    The upscale is lossless for the judge: `read_video` downsamples back with the same factor
    when asked for the original size.
    """
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    big = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)
    # yuv444p keeps colours of small sprites intact (4:2:0 would smear them across 2x2 blocks)
    with imageio.get_writer(path, fps=fps, codec="libx264", quality=None, macro_block_size=1,
                            pixelformat="yuv444p", ffmpeg_params=["-crf", "12"]) as w:
        for f in big:
            w.append_data(f)
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
        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (*background, 255))
                im = Image.alpha_composite(bg, rgba)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise InputError(f"cannot read image {path}: the file is corrupt or not an image") from exc


def save_image(path: str | Path, image: np.ndarray, upscale: int = 1) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image.repeat(upscale, 0).repeat(upscale, 1)).save(path)
    return path


def contact_sheet(rows: list[tuple[str, list[np.ndarray]]], upscale: int = 4, pad: int = 4,
                  label_width: int = 90) -> np.ndarray:
    """One labelled row per list of images (e.g. references | generated | ground truth).

    Images are nearest-upscaled; rows may hold different numbers and sizes of images.
    """
    cells = [[im.repeat(upscale, 0).repeat(upscale, 1) for im in ims] for _, ims in rows]
    row_h = [max(c.shape[0] for c in r) if r else 0 for r in cells]
    width = label_width + max(sum(c.shape[1] + pad for c in r) for r in cells) + pad
    height = sum(row_h) + pad * (len(rows) + 1)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for (label, _), r, h in zip(rows, cells, row_h):
        draw.text((4, y + h // 2 - 5), label, fill=(0, 0, 0))
        x = label_width
        for c in r:
            sheet.paste(Image.fromarray(c), (x, y))
            x += c.shape[1] + pad
        y += h + pad
    return np.asarray(sheet)
