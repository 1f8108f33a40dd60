"""Video files every player plays (H.264, yuv420p, real size, real fps), small clips upscaled only
as far as needed with exact sprite colours, bounded contact sheets, bounded training samples."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from idcrafter.utils.media import (
    contact_sheet, display_upscale, read_video, sample_indices, write_mp4,
)


def probe(path):
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n = sum(1 for _ in c.decode(s))
        return s.codec_context.name, s.codec_context.pix_fmt, s.width, s.height, float(s.average_rate), n


def test_real_size_video_is_h264_yuv420p_at_its_own_size_and_fps(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (9, 200, 352, 3)).astype(np.uint8)
    p = write_mp4(tmp_path / "real.mp4", frames, fps=16)
    assert probe(p) == ("h264", "yuv420p", 352, 200, 16.0, 9)
    odd = write_mp4(tmp_path / "odd.mp4", frames[:, :199, :351])  # 4:2:0 needs even sides: one edge pixel added
    assert probe(odd)[2:4] == (352, 200) and probe(odd)[4] == 16.0  # large clips default to Wan's 16 fps
    with open(p, "rb") as fh:  # +faststart: the moov atom precedes the media data, so browsers stream it
        head = fh.read(4096)
    assert head.find(b"moov") != -1 and (head.find(b"mdat") == -1 or head.find(b"moov") < head.find(b"mdat"))


def test_small_clips_are_upscaled_by_an_even_factor_only_as_far_as_needed(tmp_path):
    assert display_upscale(480, 832) == 1 and display_upscale(192, 300) == 1
    assert display_upscale(48, 48) == 4 and display_upscale(96, 128) == 2 and display_upscale(24, 24) == 8
    assert display_upscale(8, 8) == 8  # capped
    assert all(display_upscale(s, s) % 2 == 0 for s in range(1, 192))
    p = write_mp4(tmp_path / "s.mp4", np.zeros((5, 48, 48, 3), np.uint8))
    assert probe(p) == ("h264", "yuv420p", 192, 192, 4.0, 5)  # SpriteWorld's 4 fps by default


def test_even_upscale_keeps_each_sprite_pixels_colour_in_420(tmp_path):
    """4:2:0 stores one chroma sample per 2x2 block: with an even nearest upscale every block lies
    inside one source pixel, so colours survive; an odd factor mixes neighbours' chroma."""
    frames = np.random.default_rng(1).integers(0, 256, (5, 24, 24, 3)).astype(np.uint8)

    def error(upscale):
        back = read_video(write_mp4(tmp_path / f"u{upscale}.mp4", frames, upscale=upscale), (24, 24))
        return np.abs(back.astype(int) - frames).mean()

    even, odd = error(None), error(3)
    assert even < 4
    assert odd > 3 * even


def test_sample_indices_by_hand():
    assert sample_indices(5, 8) == [0, 1, 2, 3, 4]
    assert sample_indices(81, 8) == [0, 11, 23, 34, 46, 57, 69, 80]
    assert sample_indices(9, 3) == [0, 4, 8]


def test_contact_sheet_samples_frames_and_bounds_its_size():
    frames = [np.full((480, 832, 3), i, np.uint8) for i in range(81)]
    refs = [np.zeros((256, 256, 3), np.uint8)] * 3  # one scale for the sheet: the tallest image -> 192 px
    sheet = contact_sheet([("references", refs), ("generated", frames), ("ground truth", frames)])
    h, w = sheet.shape[:2]
    assert h == 102 + 2 * 192 + 4 * 4  # references 256 * 0.4, two rows of 192 px frames
    assert w == 90 + 8 * (333 + 4) + 4  # 8 sampled frames of 192 x 333 (480 x 832 scaled by 0.4)
    # the sampled cells are frames 0, 11, ..., 80 (their grey level is their index)
    y = 4 + 102 + 4 + 96
    xs = [90 + k * 337 + 100 for k in range(8)]
    assert [int(sheet[y, x, 0]) for x in xs] == sample_indices(81, 8)
    small = contact_sheet([("clip", [np.zeros((48, 48, 3), np.uint8)] * 5)])
    assert small.shape[:2] == (192 + 8, 90 + 5 * (192 + 4) + 4)  # small images: nearest x4, all kept
    old = contact_sheet([("a", [np.zeros((8, 8, 3), np.uint8)] * 2)], upscale=2, pad=2, label_width=10)
    assert old.shape == (16 + 4, 10 + 2 * 18 + 2, 3)


def test_training_samples_are_bounded(tmp_path):
    """The trainer's periodic sample: the clip's own size at the pipeline's fps, a sheet of at most
    8 frames per row."""
    from idcrafter.config import apply_overrides
    from idcrafter.recipes import recipe
    from idcrafter.train.sft import Trainer

    cfg = apply_overrides(recipe("debug"), ["data.frames=17", "model.frames=17", "eval.sample_steps=1",
                                            "eval.every=0", "eval.sample_every=1000", "checkpoint.every=0",
                                            "checkpoint.export_final=false"])
    tr = Trainer(cfg, tmp_path / "run")
    tr.setup()
    try:
        out = tr.sample()
    finally:
        tr.close()
    mp4 = tmp_path / "run" / "samples" / "step_00000000.mp4"
    assert out["sample_path"] == str(mp4)
    codec, fmt, w, h, fps, n = probe(mp4)
    assert (codec, fmt, n, fps) == ("h264", "yuv420p", 17, float(tr.pipe.fps)) and tr.pipe.fps == 4
    assert (w, h) == (24 * 8, 24 * 8)  # 24 px clip, nearest x8 to be visible
    sheet = np.asarray(Image.open(tmp_path / "run" / "samples" / "step_00000000_sheet.png"))
    assert sheet.shape[1] == 90 + 8 * (192 + 4) + 4  # 17 frames -> 8 shown


@pytest.mark.parametrize("bad", [np.zeros((5, 8, 8), np.uint8), np.zeros((0, 8, 8, 3), np.uint8),
                                 np.zeros((2, 8, 8, 3), np.float32)])
def test_write_mp4_refuses_what_is_not_a_clip(tmp_path, bad):
    from idcrafter.errors import InputError

    with pytest.raises(InputError):
        write_mp4(tmp_path / "x.mp4", bad)
