"""What a generation request may carry, and the parser that checks it.

Every refusal is a `RequestError` (an `InputError` with an HTTP status): the API returns it as
`{"error": message}` with that status, and the page shows the same message. Nothing here reads
the filesystem: references arrive as bytes, and a client's file name is only echoed in messages.

Images are checked in this order, so that no large decode happens before the size checks:
byte size -> header (PIL reads the header only) -> format (by content, never by file name or
declared content type) -> pixel count -> full decode (truncated or corrupt data is refused).
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

from PIL import Image, UnidentifiedImageError

from idcrafter.errors import InputError

#: PIL format -> file extension of the stored upload (the client's name is never used as a path)
IMAGE_FORMATS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp"}
#: form fields a client may send besides the `refs` files
FIELDS = ("model", "prompt", "steps", "cfg", "seed", "frames", "height", "width")


class RequestError(InputError):
    """A refused request: `status` is the HTTP status (4xx, or 429 / 503 for capacity)."""

    def __init__(self, message: str, status: int = 400, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass(frozen=True)
class ServeLimits:
    """Server-wide limits (the CLI exposes the common ones; docs/serving.md lists all)."""

    queue_size: int = 8  # jobs waiting per device (the running one not counted)
    keep_seconds: float = 3600.0  # results are removed this long after their job finished
    max_kept_jobs: int = 256  # finished jobs kept at most; the oldest are collected first
    max_upload_bytes: int = 8 * 2**20  # per reference image
    max_pixels: int = 4096 * 4096  # per reference image, read from the header before decoding
    min_side: int = 8
    max_refs: int = 4  # server cap; a model's own maximum applies when smaller
    max_prompt_chars: int = 1000
    max_steps: int = 100
    max_cfg: float = 20.0
    max_seed: int = 2**31 - 1
    size_factor: int = 2  # frames / height / width up to this multiple of a model's defaults

    def __post_init__(self) -> None:
        for name in ("queue_size", "max_kept_jobs", "max_upload_bytes", "max_pixels", "min_side", "max_refs",
                     "max_prompt_chars", "max_steps", "size_factor"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"serve limit {name} must be at least 1, got {getattr(self, name)}")
        if not self.keep_seconds > 0:
            raise InputError(f"results must be kept for a positive time, got {self.keep_seconds} s")
        if not self.max_cfg >= 1.0:
            raise InputError(f"max_cfg must be at least 1 (1 turns guidance off), got {self.max_cfg}")

    @property
    def max_body_bytes(self) -> int:
        """Largest multipart body accepted: every reference at its maximum plus the form fields."""
        return self.max_refs * self.max_upload_bytes + 256 * 1024


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float
    default: float


@dataclass(frozen=True)
class ModelBounds:
    """The settings one model accepts (derived from its config and the server's limits)."""

    max_refs: int
    steps: Range
    cfg: Range
    seed: Range
    frames: Range
    height: Range
    width: Range

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Upload:
    """A file as the client sent it: `name` is display-only; `size` is its full size when `data`
    was read only up to the limit."""

    name: str
    data: bytes
    size: int | None = None


@dataclass(frozen=True)
class CheckedImage:
    index: int
    name: str
    format: str
    ext: str
    width: int
    height: int
    data: bytes


@dataclass(frozen=True)
class GenerateRequest:
    model: str
    prompt: str
    refs: tuple[CheckedImage, ...]
    steps: int
    cfg: float
    seed: int
    frames: int
    height: int
    width: int

    def settings(self) -> dict:
        return {k: getattr(self, k) for k in ("steps", "cfg", "seed", "frames", "height", "width")}


def display_name(name: str | None, index: int) -> str:
    """A client file name made safe to echo: printable, at most 60 characters."""
    clean = "".join(c for c in (name or "") if c.isprintable())[:60]
    return f"refs[{index}] {clean!r}" if clean else f"refs[{index}]"


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def check_image(upload: Upload, index: int, limits: ServeLimits) -> CheckedImage:
    """Refuse anything but a whole PNG / JPEG / WebP within the byte and pixel limits."""
    who = display_name(upload.name, index)
    size = upload.size if upload.size is not None else len(upload.data)
    if size == 0:
        raise RequestError(f"{who} is empty: upload a PNG, JPEG or WebP image", 400)
    if size > limits.max_upload_bytes:
        raise RequestError(f"{who} is {_mb(size)}; the limit is {_mb(limits.max_upload_bytes)} per image: "
                           f"upload a smaller image", 413)
    accepted = ", ".join(("PNG", "JPEG", "WebP"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel limit below is ours
        try:
            im = Image.open(io.BytesIO(upload.data))
        except Image.DecompressionBombError:
            raise RequestError(f"{who} declares more pixels than PIL will decode (a decompression bomb?); "
                               f"the limit is {limits.max_pixels / 1e6:.1f} megapixels", 413) from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise RequestError(f"{who} is not an image (its content is not {accepted}, whatever its name): "
                               f"upload a PNG, JPEG or WebP file", 415) from None
        with im:
            fmt = im.format or "unknown"
            if fmt not in IMAGE_FORMATS:
                raise RequestError(f"{who} is a {fmt} image; accepted types are {accepted}", 415)
            w, h = im.size
            if w * h > limits.max_pixels:
                raise RequestError(f"{who} is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit is "
                                   f"{limits.max_pixels / 1e6:.1f} megapixels: downscale it", 413)
            if min(w, h) < limits.min_side:
                raise RequestError(f"{who} is {w}x{h}; each side must be at least {limits.min_side} px", 400)
            try:
                im.load()  # the whole decode: truncated or corrupt data fails here
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
                raise RequestError(f"{who} is a truncated or corrupt {fmt} file: upload it again or re-save it",
                                   415) from None
    return CheckedImage(index, who, fmt, IMAGE_FORMATS[fmt], w, h, upload.data)


def _number(fields: Mapping[str, str], key: str, rng: Range, kind: type) -> int | float:
    raw = fields.get(key)
    if raw is None or str(raw).strip() == "":
        return kind(rng.default)
    try:
        value = kind(str(raw).strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise RequestError(f"{key} must be {what}, got {str(raw)[:40]!r}", 400) from None
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(f"{key} must be a finite number, got {raw!r}", 400)
    if not rng.lo <= value <= rng.hi:
        fmt = (lambda v: f"{int(v)}") if kind is int else (lambda v: f"{v:g}")
        raise RequestError(f"{key} must be between {fmt(rng.lo)} and {fmt(rng.hi)}, got {fmt(value)}", 400)
    return value


def check_prompt(raw: str | None, limits: ServeLimits) -> str:
    prompt = (raw or "").strip()
    if not prompt:
        raise RequestError("no prompt: describe the scene and each subject", 400)
    if len(prompt) > limits.max_prompt_chars:
        raise RequestError(f"the prompt has {len(prompt)} characters; the limit is {limits.max_prompt_chars}", 400)
    if any(not (c.isprintable() or c in "\n\t") for c in prompt):
        raise RequestError("the prompt contains control characters: send plain text", 400)
    return prompt


def parse_generate(fields: Mapping[str, str], uploads: Sequence[Upload], models: Mapping[str, ModelBounds],
                   limits: ServeLimits) -> GenerateRequest:
    """A checked request from the form fields and the `refs` files (in upload order).

    Cheap checks come first (fields, model, prompt, counts), so a request with too many
    references is refused without decoding any of them.
    """
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise RequestError(f"unknown field(s) {', '.join(repr(u[:30]) for u in unknown)}: accepted are "
                           f"refs (files) and {', '.join(FIELDS)}; the server never reads paths", 400)
    names = list(models)
    model = (fields.get("model") or names[0]).strip()
    if model not in models:
        raise RequestError(f"unknown model {model[:40]!r}: this server serves {', '.join(names)}", 400)
    bounds = models[model]
    prompt = check_prompt(fields.get("prompt"), limits)
    n, k_max = len(uploads), bounds.max_refs
    if n == 0:
        raise RequestError(f"no reference image: upload 1 to {k_max} images as `refs`, one per subject", 400)
    if n > k_max:
        raise RequestError(f"{n} reference images given; model {model!r} takes at most {k_max} (one per "
                           f"subject): remove {n - k_max}", 400)
    values = {k: _number(fields, k, getattr(bounds, k), int) for k in ("steps", "seed", "frames", "height", "width")}
    cfg = float(_number(fields, "cfg", bounds.cfg, float))
    _check_like_the_pipeline(prompt, n, values["steps"], cfg, k_max)
    refs = tuple(check_image(u, i, limits) for i, u in enumerate(uploads))
    return GenerateRequest(model=model, prompt=prompt, refs=refs, cfg=cfg, **values)


def _check_like_the_pipeline(prompt: str, n_refs: int, steps: int, cfg: float, max_refs: int) -> None:
    """The pipeline's own input checks (`idcrafter.validation`), run now so that what the
    pipeline would refuse later (a SpriteWorld caption naming 2 subjects with 3 references,
    say) is a 400 at once instead of a failed job."""
    from idcrafter.validation import check_generation

    try:
        check_generation([prompt], [[None] * n_refs], steps, cfg, max_refs)
    except InputError as exc:
        raise RequestError(str(exc), 400) from None
