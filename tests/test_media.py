"""Reading references of any image mode, rejecting corrupt files, mp4 round trips."""

import numpy as np
import pytest
from PIL import Image

from idcrafter.errors import InputError
from idcrafter.utils.media import contact_sheet, load_image, read_video, write_mp4


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "CMYK", "P", "LA"])
def test_load_image_accepts_any_mode(tmp_path, mode):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 12, 3)).astype(np.uint8))
    im = rgb.convert(mode)
    path = tmp_path / f"x.{'jpg' if mode == 'CMYK' else 'png'}"
    im.save(path)
    out = load_image(path)
    assert out.shape == (20, 12, 3) and out.dtype == np.uint8


def test_transparent_pixels_become_white(tmp_path):
    a = np.zeros((4, 4, 4), np.uint8)
    Image.fromarray(a, "RGBA").save(tmp_path / "t.png")
    assert np.all(load_image(tmp_path / "t.png") == 255)


def test_missing_and_corrupt_images_fail_clearly(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_image(tmp_path / "nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="corrupt"):
        load_image(bad)


def test_mp4_round_trip_is_close(tmp_path):
    rng = np.random.default_rng(0)
    frames = np.repeat(np.repeat(rng.integers(0, 255, (5, 12, 12, 3)), 4, 1), 4, 2).astype(np.uint8)
    write_mp4(tmp_path / "c.mp4", frames)
    back = read_video(tmp_path / "c.mp4", (48, 48))
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 3


def test_unreadable_video_fails_clearly(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_video(tmp_path / "none.mp4")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    with pytest.raises(InputError, match="cannot decode"):
        read_video(tmp_path / "bad.mp4")


def test_contact_sheet_shape():
    a = np.zeros((8, 8, 3), np.uint8)
    sheet = contact_sheet([("a", [a, a]), ("b", [a])], upscale=2, pad=2, label_width=10)
    assert sheet.shape == (2 * 16 + 3 * 2, 10 + 2 * (16 + 2) + 2, 3)
