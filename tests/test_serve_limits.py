"""Request checks of the server (`idcrafter.serve.limits`): every refusal has its status and a
message naming what was wrong."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from serve_support import huge_png, png_bytes

from idcrafter.serve.limits import (ModelBounds, Range, RequestError, ServeLimits, Upload, check_image,
                                    check_prompt, parse_generate)

LIMITS = ServeLimits(max_upload_bytes=200_000, max_pixels=1000 * 1000)
BOUNDS = {"m": ModelBounds(3, Range(1, 50, 20), Range(1.0, 10.0, 2.5), Range(0, 2**31 - 1, 0),
                           Range(1, 10, 5), Range(6, 96, 48), Range(6, 96, 48))}
CAPTION = "In a room: the person with pink hair waves."


def refused(fn, *args) -> RequestError:
    with pytest.raises(RequestError) as info:
        fn(*args)
    return info.value


def ok_fields(**kw) -> dict:
    return {"prompt": CAPTION, **kw}


@pytest.mark.parametrize("fmt,ext", [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")])
def test_accepted_types_by_content(fmt, ext):
    img = check_image(Upload("weird-name.txt", png_bytes(40, 30, fmt=fmt)), 2, LIMITS)
    assert (img.format, img.ext, img.width, img.height, img.index) == (fmt, ext, 40, 30, 2)


def test_text_named_png_is_415():
    err = refused(check_image, Upload("notes.png", b"just some text, not an image\n" * 5), 0, LIMITS)
    assert err.status == 415 and "refs[0] 'notes.png' is not an image" in str(err)


def test_other_image_types_are_415():
    buf = io.BytesIO()
    Image.new("RGB", (20, 20), (1, 2, 3)).save(buf, format="GIF")
    err = refused(check_image, Upload("a.png", buf.getvalue()), 1, LIMITS)
    assert err.status == 415 and "is a GIF image" in str(err)


def test_pixel_bomb_refused_from_header():
    data = huge_png(1001)  # 1001 x 1001 > 1e6 pixels, a few kB on disk
    assert len(data) < LIMITS.max_upload_bytes
    err = refused(check_image, Upload("big.png", data), 0, LIMITS)
    assert err.status == 413 and "1001x1001" in str(err) and "megapixels" in str(err)
    # exactly at the limit passes
    assert check_image(Upload("ok.png", huge_png(1000)), 0, LIMITS).width == 1000


def test_pil_bomb_guard_is_413():
    # far past PIL's own decompression-bomb threshold: refused without a decode
    err = refused(check_image, Upload("bomb.png", huge_png(20000, complete=False)), 0, ServeLimits())
    assert err.status == 413


def test_byte_size_limit_uses_full_size():
    data = png_bytes()
    err = refused(check_image, Upload("x.png", data[:10], size=LIMITS.max_upload_bytes + 1), 0, LIMITS)
    assert err.status == 413 and "per image" in str(err)
    assert check_image(Upload("x.png", data, size=len(data)), 0, LIMITS).format == "PNG"


def test_truncated_and_empty_and_tiny():
    data = png_bytes(64, 64)
    assert refused(check_image, Upload("t.png", data[: len(data) // 2]), 0, LIMITS).status == 415
    assert refused(check_image, Upload("e.png", b""), 0, LIMITS).status == 400
    err = refused(check_image, Upload("s.png", png_bytes(4, 4)), 0, LIMITS)
    assert err.status == 400 and "4x4" in str(err)


def test_display_name_is_sanitised():
    err = refused(check_image, Upload("a\x00b\nc" + "x" * 200 + ".png", b"text"), 3, LIMITS)
    msg = str(err)
    assert "\x00" not in msg and "\n" not in msg and len(msg) < 300 and "refs[3]" in msg


def test_prompt_rules():
    assert check_prompt("  hi \n there ", LIMITS) == "hi \n there"
    assert refused(check_prompt, "   ", LIMITS).status == 400
    assert "characters" in str(refused(check_prompt, "x" * (LIMITS.max_prompt_chars + 1), LIMITS))
    assert "control" in str(refused(check_prompt, "a\x07b", LIMITS))
    assert check_prompt("x" * LIMITS.max_prompt_chars, LIMITS)


def test_parse_defaults_and_values():
    up = [Upload("a.png", png_bytes()), Upload("b.jpg", png_bytes(fmt="JPEG"))]
    req = parse_generate(ok_fields(), up, BOUNDS, LIMITS)
    assert (req.model, req.steps, req.cfg, req.seed, req.frames, req.height, req.width) == ("m", 20, 2.5, 0, 5, 48, 48)
    assert [r.ext for r in req.refs] == ["png", "jpg"]
    req = parse_generate(ok_fields(steps="7", cfg="1.5", seed="9", frames="3", height="24", width="30", model="m"),
                         up, BOUNDS, LIMITS)
    assert req.settings() == {"steps": 7, "cfg": 1.5, "seed": 9, "frames": 3, "height": 24, "width": 30}


@pytest.mark.parametrize("fields,needle", [
    ({"steps": "0"}, "steps must be between 1 and 50, got 0"),
    ({"steps": "51"}, "steps must be between 1 and 50, got 51"),
    ({"steps": "2.5"}, "steps must be an integer"),
    ({"cfg": "nan"}, "cfg must be a finite number"),
    ({"cfg": "11"}, "cfg must be between 1 and 10, got 11"),
    ({"seed": "-1"}, "seed must be between 0 and"),
    ({"frames": "11"}, "frames must be between 1 and 10"),
    ({"height": "200"}, "height must be between 6 and 96"),
    ({"width": "abc"}, "width must be an integer"),
    ({"model": "other"}, "unknown model 'other'"),
    ({"path": "/etc/passwd"}, "unknown field(s) 'path'"),
    ({"prompt": ""}, "no prompt"),
])
def test_parse_refusals(fields, needle):
    err = refused(parse_generate, {**ok_fields(), **fields}, [Upload("a.png", png_bytes())], BOUNDS, LIMITS)
    assert err.status == 400 and needle in str(err), str(err)


def test_reference_counts():
    assert "no reference image" in str(refused(parse_generate, ok_fields(), [], BOUNDS, LIMITS))
    # too many is refused before any image is decoded (these are not even images)
    err = refused(parse_generate, ok_fields(), [Upload(f"{i}.png", b"x") for i in range(4)], BOUNDS, LIMITS)
    assert err.status == 400 and "4 reference images given; model 'm' takes at most 3" in str(err)
    assert len(parse_generate(ok_fields(), [Upload("a.png", png_bytes())] * 3, BOUNDS, LIMITS).refs) == 3


def test_the_pipelines_own_checks_run_at_request_time():
    two = "In a park: the person with spiky red hair waves; the person with a bald head jumps."
    err = refused(parse_generate, {"prompt": two}, [Upload("a.png", png_bytes())] * 3, BOUNDS, LIMITS)
    assert err.status == 400 and "names 2 subject(s) but 3 reference(s)" in str(err)
    assert len(parse_generate({"prompt": two}, [Upload("a.png", png_bytes())] * 2, BOUNDS, LIMITS).refs) == 2
    # free text is not a caption: any number of references
    assert len(parse_generate({"prompt": "friends at a party"}, [Upload("a.png", png_bytes())] * 3, BOUNDS,
                              LIMITS).refs) == 3


def test_limits_validate_themselves():
    from idcrafter.errors import InputError

    with pytest.raises(InputError):
        ServeLimits(queue_size=0)
    with pytest.raises(InputError):
        ServeLimits(keep_seconds=0)
    assert ServeLimits(max_refs=2, max_upload_bytes=10).max_body_bytes == 20 + 256 * 1024


def test_rgba_and_grey_accepted():
    buf = io.BytesIO()
    Image.fromarray(np.zeros((20, 20, 4), np.uint8)).save(buf, format="PNG")
    assert check_image(Upload("rgba.png", buf.getvalue()), 0, LIMITS).format == "PNG"
    buf = io.BytesIO()
    Image.new("L", (20, 20), 3).save(buf, format="JPEG")
    assert check_image(Upload("g.jpg", buf.getvalue()), 0, LIMITS).format == "JPEG"
