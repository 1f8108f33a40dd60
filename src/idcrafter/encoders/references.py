"""Reference images: any input (path, PIL image, array, any mode) -> a square RGB canvas.

Every reference reaches the encoders in one form, the form SpriteWorld renders its canonical
views in: the subject centred on a plain light canvas (240, 240, 235) = `world.scene.CANVAS`,
aspect ratio kept, so a wide or tall photo is letterboxed rather than squashed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from idcrafter.errors import InputError
from idcrafter.utils.media import load_image
from idcrafter.world.scene import CANVAS_RGB  # one canvas colour for the whole project

__all__ = ["CANVAS_RGB", "prepare_reference"]


def prepare_reference(image: str | Path | Image.Image | np.ndarray, size: int | tuple[int, int],
                      canvas: tuple[int, int, int] = CANVAS_RGB) -> np.ndarray:
    """(H, W, 3) uint8 reference: converted to RGB, resized to fit, centred on `canvas`.

    `size` is an int (square) or (H, W). Transparent pixels of PIL images and RGBA/LA arrays are
    composited on `canvas`. Paths are read with `utils.media.load_image` (transparency on
    `canvas` too), which turns missing or corrupt files into a one-line `InputError`. Downscaling averages pixels (box filter), upscaling is bicubic.
    """
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if height < 1 or width < 1:
        raise InputError(f"reference size must be positive, got {size}")
    rgb = _to_rgb(image, canvas)  # (h, w, 3) uint8
    return _fit_on_canvas(rgb, height, width, canvas)


def _to_rgb(image: Any, canvas: tuple[int, int, int]) -> np.ndarray:
    """(h, w, 3) uint8 RGB of a path, PIL image or array."""
    if isinstance(image, (str, Path)):
        return load_image(image, background=canvas)
    if isinstance(image, Image.Image):
        return _pil_to_rgb(image, canvas)
    if isinstance(image, np.ndarray):
        return _array_to_rgb(image, canvas)
    raise InputError(f"cannot use a {type(image).__name__} as a reference image: pass a path, PIL image or array")


def _pil_to_rgb(im: Image.Image, canvas: tuple[int, int, int]) -> np.ndarray:
    """Any PIL mode (RGBA, LA, PA, P with transparency, L, CMYK, I, F, ...) -> RGB on `canvas`."""
    try:
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            bg = Image.new("RGBA", rgba.size, (*canvas, 255))
            im = Image.alpha_composite(bg, rgba)
        elif im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # 16/32-bit grey: scale to 8 bit
            arr = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(arr / max(arr.max(), 1.0) * 255.0 + 0.5, 0, 255).astype(np.uint8))
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot convert a PIL image of mode {im.mode} to RGB: {exc}") from exc


def _array_to_rgb(arr: np.ndarray, canvas: tuple[int, int, int]) -> np.ndarray:
    """(h, w), (h, w, 1), (h, w, 3) or (h, w, 4) array, uint8 or float in [0, 1] -> RGB uint8."""
    if arr.dtype != np.uint8:
        if not np.issubdtype(arr.dtype, np.floating):
            raise InputError(f"reference arrays must be uint8 or float in [0, 1], got {arr.dtype}")
        arr = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4) or min(arr.shape[:2]) < 1:
        raise InputError(f"reference array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {arr.shape}")
    if arr.shape[-1] == 1:
        return np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] == 4:
        alpha = arr[..., 3:].astype(np.float32) / 255.0  # (h, w, 1)
        rgb = arr[..., :3] * alpha + np.asarray(canvas, np.float32) * (1.0 - alpha)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _fit_on_canvas(rgb: np.ndarray, height: int, width: int, canvas: tuple[int, int, int]) -> np.ndarray:
    """Resize (aspect kept) to fit in (height, width) and paste centred on a `canvas` image."""
    h, w = rgb.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = max(1, min(height, round(h * scale))), max(1, min(width, round(w * scale)))
    im = Image.fromarray(rgb)
    if (nh, nw) != (h, w):
        im = im.resize((nw, nh), Image.Resampling.BOX if scale < 1 else Image.Resampling.BICUBIC)
    out = np.empty((height, width, 3), np.uint8)
    out[...] = np.asarray(canvas, np.uint8)
    top, left = (height - nh) // 2, (width - nw) // 2
    out[top:top + nh, left:left + nw] = np.asarray(im, dtype=np.uint8)
    return out
