"""The judge's subject detector, tracker and quality model (shipped weights in assets/judge)."""

import numpy as np
import pytest
import torch

from idcrafter.judge.detector import DetectorNet, SpriteDetector, reference_boxes
from idcrafter.judge.interfaces import Detection, Detector
from idcrafter.judge.parts import judge_dir, load_part, save_part
from idcrafter.judge.quality import QualityModel
from idcrafter.judge.tracking import Track, box_iou, link_tracks, tracks_from_ground_truth
from idcrafter.world.dataset import make_example
from idcrafter.world.degrade import degrade


def _need(part: str) -> None:
    if not (judge_dir() / f"{part}.safetensors").is_file():
        pytest.skip(f"judge part {part!r} not trained (idcrafter world train-judge --part {part})")


@pytest.fixture(scope="module")
def detector() -> SpriteDetector:
    _need("detector")
    return SpriteDetector.load()


def test_detector_counts_subjects_on_heldout_frames(detector):
    assert isinstance(detector, Detector) and detector.name == "sprites"
    checked = 0
    for k in (1, 2, 3):
        for i in range(3):
            c = make_example(21, 10 * k + i, "heldout", num_subjects=k).clip
            dets = detector.detect_video(c.frames)
            for f in (0, 4, 8):
                v = c.visibility[f]
                if np.any((v > 0.1) & (v < 0.8)):  # ambiguous half-hidden subject: skip the frame
                    continue
                want = c.boxes[f][v >= 0.8]
                assert len(dets[f]) == len(want), (k, i, f)
                iou = box_iou(want, np.stack([d.box for d in dets[f]]))
                assert np.all(iou.max(1) >= 0.5)
                assert all(d.face_box is not None for d in dets[f])
                checked += 1
    assert checked >= 15
    # the single-image entry point agrees with the batched one
    single = detector.detect(c.frames[0])
    assert len(single) == len(dets[0])


def test_detector_finds_the_subject_of_a_reference(detector):
    ex = make_example(5, 0, "heldout", num_subjects=3)
    for ref, s in zip(ex.refs, ex.spec.subjects):
        dets = detector.detect(ref)
        body, head = reference_boxes(s.identity, ref.shape[0])
        assert len(dets) == 1
        assert box_iou(dets[0].box, body)[0, 0] >= 0.5
        assert box_iou(dets[0].face_box, head)[0, 0] >= 0.3


def _det(x: float, y: float, w: float, h: float) -> Detection:
    return Detection(box=np.array([x - w / 2, y - h, x + w / 2, y], np.float32), score=0.9)


@pytest.mark.parametrize("same_size", [False, True])
def test_link_tracks_follows_two_crossing_subjects(same_size):
    t = 9
    xs_a, xs_b = np.linspace(8, 40, t), np.linspace(40, 8, t)  # 4 px per frame each, crossing mid-clip
    hb, yb = (26, 44) if same_size else (22, 40)
    dets = [[_det(xs_a[i], 44, 13, 26), _det(xs_b[i], yb, 11, hb)] for i in range(t)]
    dets = [d[::-1] if i % 2 else d for i, d in enumerate(dets)]  # detection order must not matter
    tracks = link_tracks(dets)
    assert len(tracks) == 2
    for tr in tracks:
        assert tr.present().all()
        cx = (tr.boxes()[:, 0] + tr.boxes()[:, 2]) / 2
        assert np.all(np.diff(cx) > 0) or np.all(np.diff(cx) < 0)


def test_link_tracks_bridges_a_one_frame_gap_and_splits_on_longer_ones():
    t = 9
    dets = [[_det(10 + 3 * i, 44, 13, 26), _det(38, 40, 11, 22)] for i in range(t)]
    dets[4] = dets[4][1:]  # subject A hidden in frame 4
    tracks = link_tracks(dets, max_gap=1)
    assert len(tracks) == 2
    a = next(tr for tr in tracks if tr.frames[0].box[0] < 20)
    assert a.present().tolist() == [True] * 4 + [False] + [True] * 4
    assert np.isnan(a.boxes()[4]).all() and not np.isnan(a.boxes()[5]).any()
    dets[5] = dets[5][1:]  # now hidden for two frames: max_gap=1 starts a new track
    assert len(link_tracks(dets, max_gap=1)) == 3
    assert len(link_tracks(dets, max_gap=2)) == 2
    assert link_tracks([[], []]) == []


def test_tracks_from_ground_truth():
    c = make_example(3, 0, "heldout", num_subjects=2).clip
    tracks = tracks_from_ground_truth(c)
    assert len(tracks) == 2 and isinstance(tracks[0], Track)
    np.testing.assert_allclose(tracks[1].boxes(), c.boxes[:, 1])
    np.testing.assert_allclose(tracks[0].head_boxes(), c.head_boxes[:, 0])


def test_quality_prefers_clean_clips():
    _need("quality")
    q = QualityModel.load()
    frames = make_example(8, 0, "heldout").clip.frames
    clean = q.score(frames)
    bad = q.score(degrade(frames, np.random.default_rng(0), 1.5))
    assert 0.0 <= bad < clean <= 1.0
    assert clean > 0.8 and clean - bad > 0.3


def test_detector_part_round_trip(tmp_path):
    torch.manual_seed(0)
    net = DetectorNet(width=4, threshold=0.42).eval()
    save_part(net, "detector", {"width": 4, "threshold": 0.42}, "# card\n", tmp_path)
    loaded = load_part(DetectorNet, "detector", tmp_path)
    assert loaded.threshold == 0.42 and SpriteDetector(loaded).threshold == 0.42
    for size in (48, 32, 40):
        x = torch.rand(2, 3, size, size) * 2 - 1
        with torch.no_grad():
            a, b = net(x), loaded(x)
        assert a.shape == (2, 9, size // 2, size // 2)
        assert torch.equal(a, b)
    assert (tmp_path / "detector.md").read_text() == "# card\n"
