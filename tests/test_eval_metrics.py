"""OpenS2V-Eval v1.1 as published: the Total against leaderboard rows, per-video clipping by hand,
MotionAmplitude on synthetic motion, MotionSmoothness windows, FaceSim-Cur / Nexus / GME rules,
the benchmark JSON loader (fuzzed), and the metric backends on tiny random models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idcrafter.errors import InputError
from idcrafter.eval import metrics as M
from idcrafter.eval.opens2v import OpenS2VCase, load_benchmark, parse_benchmark, total_score


def raw(aes, smooth, amp, face, gme, nexus, natural):
    """Leaderboard percentages -> the raw benchmark averages they were normalised from."""
    return dict(aesthetics=4 + 3 * aes / 100, motion_smoothness=smooth / 100, motion_amplitude=amp / 100,
                face_sim=face / 100, gme=gme / 100, nexus=0.05 * nexus / 100, natural=1 + 4 * natural / 100)


# ---------------------------------------------------------------------- Total
@pytest.mark.parametrize("row, total", [
    ((46.84, 97.61, 22.48, 55.23, 68.32, 48.52, 73.63), 60.42),  # RefAlign-14B
    ((47.21, 94.97, 15.02, 55.09, 67.27, 44.08, 67.04), 57.55),  # VACE-14B
    ((46.39, 96.31, 33.42, 51.46, 70.65, 37.43, 69.35), 56.77),  # Phantom-14B (v1.1 csv)
])
def test_total_equals_published_open_domain_rows(row, total):
    t = total_score(raw(*row))
    assert round(t.percent, 2) == total and t.complete and t.domain == "open"
    assert float(t) == pytest.approx(total / 100, abs=5e-5)


def test_total_human_domain_row_has_no_nexus():
    m = raw(52.75, 99.1, 31.8, 57.69, 71.42, 0, 69.2)  # Hailuo, Human-Domain v1.1: 65.26
    del m["nexus"]
    t = total_score(m, domain="human")
    assert round(t.percent, 2) == 65.26 and t.complete and "nexus" not in t.includes


def test_per_video_clipping_and_partial_totals_by_hand():
    per_video = dict(aesthetics=[3.0, 8.0, 5.5],  # clipped 4, 7, 5.5 -> 5.5 -> 0.5
                     motion_smoothness=[0.9, 1.3],  # abs, <= 1: 0.9, 1 -> 0.95
                     motion_amplitude=[-0.5, 2.0],  # abs, <= 1: 0.5, 1 -> 0.75
                     face_sim=[1.2, 0.4],  # <= 1 only: 1, 0.4 -> 0.7
                     gme=[0.2, 0.4],  # 0.3
                     nexus=[0.0, 0.02, 0.1],  # zero dropped; 0.02, 0.05 -> 0.035 -> 0.7
                     natural=[0.5, 6.0, 3.0])  # 1, 5, 3 -> 3 -> 0.5
    want = .16 * .5 + .06 * .95 + .02 * .75 + .2 * .7 + .12 * .3 + .2 * .7 + .24 * .5
    t = total_score(per_video)
    assert float(t) == pytest.approx(want) and t.parts["nexus"] == pytest.approx(0.7)
    assert total_score({**per_video, "nexus": [0.0, 0.0]}).parts["nexus"] == 0.0  # all dropped: 0, as published
    partial = total_score({"aesthetics": 5.5, "face_sim": 0.7}, reasons={"gme": "no GME weights"})
    assert float(partial) == pytest.approx((.16 * .5 + .2 * .7) / .36)
    assert not partial.complete and partial.includes == ("aesthetics", "face_sim")
    assert partial.missing["gme"] == "no GME weights" and "renormalised" in partial.describe()
    for bad in ({"beauty": 1.0}, {"aesthetics": float("nan")}):
        with pytest.raises(InputError):
            total_score(bad)
    with pytest.raises(InputError, match="domain"):
        total_score({}, domain="moon")


# ---------------------------------------------------------------------- MotionAmplitude
def _moving(dx: int, dy: int, frames: int = 5, size: int = 64) -> np.ndarray:
    """A smooth coloured texture seen through a window that moves by (-dx, -dy) per frame, so
    the content moves by (dx, dy) px per frame."""
    import cv2

    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur(rng.integers(0, 256, (size * 3, size * 3, 3)).astype(np.uint8), (0, 0), 2.0)
    c = size
    return np.stack([big[c - t * dy:c - t * dy + size, c - t * dx:c - t * dx + size] for t in range(frames)])


def test_motion_amplitude_on_synthetic_translations_by_hand():
    # content translating by (dx, dy) px/frame: every flow vector is (dx, dy), the resized maps
    # keep that, so the published value is |(dx + dy) / 2|
    assert M.motion_amplitude(_moving(1, 0)) == pytest.approx(0.5, abs=0.06)
    assert M.motion_amplitude(_moving(-2, 0)) == pytest.approx(1.0, abs=0.1)  # abs of the signed mean
    assert M.motion_amplitude(_moving(1, -1)) == pytest.approx(0.0, abs=0.06)  # x and y cancel
    assert M.motion_amplitude(_moving(0, 0)) == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(InputError, match="at least 2"):
        M.motion_amplitude(_moving(1, 0)[:1])


def test_motion_amplitude_is_the_published_computation_step_by_step():
    import cv2

    v = _moving(2, 1, frames=4, size=48)[:, :, :40]  # not square: the flow maps resize to 16 x int(48 * 16 / 40)
    g = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in v]  # the script's quirk on RGB frames
    maps = [cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0) for a, b in zip(g[:-1], g[1:])]
    small = [cv2.resize(m, (16, int(48 * 16 / 40)), interpolation=cv2.INTER_AREA) for m in maps]
    assert small[0].shape == (19, 16, 2)
    assert M.motion_amplitude(v) == abs(float(np.mean(np.mean(np.array(small), axis=0))))
    rgb_gray = [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in v]
    assert not all(np.array_equal(a, b) for a, b in zip(g, rgb_gray))  # the quirk changes the input


# ---------------------------------------------------------------------- MotionSmoothness
def test_smoothness_windows_and_artifacts_by_hand():
    assert M.smoothness_windows(4) == [[0, 0, 0], [0, 1, 2], [1, 2, 3], [2, 2, 3]]
    assert M.smoothness_windows(1) == [[0, 0, 0]]
    assert M.smoothness_windows(5, window=5) == [[0] * 5, [0] * 5, [0, 1, 2, 3, 4], [1, 1, 2, 3, 4], [2, 2, 2, 3, 4]]
    assert M.artifact_frames([0.5, 0.5, 0.6, 0.6]).tolist() == [1, 2]
    assert M.smoothness_from_scores([0.5, 0.5, 0.6, 0.6]) == 0.5
    assert M.smoothness_from_scores([0.5, 0.52, 0.54]) == 1.0  # jumps of 0.02 <= 0.025
    frames = np.zeros((4, 8, 8, 3), np.uint8)
    for t in range(4):
        frames[t] = 10 * t
    seen = []

    def rater(windows):
        seen.extend(windows)
        return [float(w[-1].mean()) / 255 for w in windows]  # 0, 20/255, 30/255, 30/255
    assert M.motion_smoothness(frames, rater) == pytest.approx(1 - 3 / 4)  # jumps at 0->1 and 1->2
    assert len(seen) == 4 and all(len(w) == 3 for w in seen)


# ---------------------------------------------------------------------- FaceSim / Nexus / GME rules
def test_face_nexus_and_gme_rules_by_hand():
    assert M.face_sim_from_frames([0.5, None, -0.2, 0.0, 0.7]) == pytest.approx(0.6)
    assert M.face_sim_from_frames([None, -0.1]) == 0.0
    dets = [(0.7, 0.4, 0.5), (0.5, 0.9, 0.9), (0.9, 0.2, 0.8), (0.9, 0.5, 0.0), (0.61, 0.31, 0.3),
            (0.6, 0.5, 0.5), (0.9, 0.30, 0.5)]  # thresholds are strict: both of the last two are dropped
    assert M.nexus_from_detections(dets, frames_with_detection=4) == pytest.approx((0.5 + 0.3) / 2 / 4)
    assert M.nexus_from_detections([(0.5, 0.9, 0.9)], 3) == 0.0
    t = np.array([1.0, 0.0])
    f = np.array([[0.6, 0.8], [1.0, 0.0]])
    assert M.gme_from_embeddings(t, f) == pytest.approx(0.8)
    assert M.sample_frames(5, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 4]


def test_case_rules_face_categories_and_nexus_labels():
    c = OpenS2VCase("faceobj_3", "p", ("Images/humanobj/human/crop_man/a.jpg", "Images/x/dog/4.jpg"), ("Man", "Dog"))
    assert c.face_scored and c.first_human_reference() == 0 and c.human_references() == [0]
    assert c.nexus_labels() == [(1, "Dog")]  # the man's face is not detected in a *face* case
    h = OpenS2VCase("multihuman_2", "p", ("a/woman/1.jpg", "b/man/2.jpg", "c/cup.jpg"), ("Woman", "Man", "Cup"))
    assert not h.face_scored and h.human_references() == [0, 1]
    assert h.nexus_labels() == [(0, "human"), (1, "human"), (2, "Cup")]


# ---------------------------------------------------------------------- the JSON loader
GOOD = {"singleface_1": {"img_paths": ["Images/a/woman/1.jpg"], "prompt": "a woman smiles", "class_label": ["Woman"],
                         "synthesis_flag": "Real"}}


def test_loader_reads_a_valid_file_and_names_faults(tmp_path):
    p = tmp_path / "Open-Domain_Eval.json"
    p.write_text(json.dumps(GOOD))
    (case,) = load_benchmark(p)
    assert case.key == "singleface_1" and case.class_labels == ("Woman",) and case.extra == {"synthesis_flag": "Real"}
    faults = [([1, 2], "top level"), ({}, "non-empty"), ({"../x": GOOD["singleface_1"]}, "case key"),
              ({"k": {"img_paths": [], "prompt": "p"}}, "img_paths"),
              ({"k": {"img_paths": ["a"], "prompt": ""}}, "prompt"),
              ({"k": {"img_paths": ["a", "b"], "prompt": "p", "class_label": ["Man"]}}, "1 class labels for 2"),
              ({"k": {"img_paths": ["a"], "prompt": "p", "class_label": "Man"}}, "class_label")]
    for data, needle in faults:
        p.write_text(json.dumps(data))
        with pytest.raises(InputError, match=needle):
            load_benchmark(p)
    p.write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_benchmark(p)
    p.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="UTF-8"):
        load_benchmark(p)
    with pytest.raises(InputError, match="not found"):
        load_benchmark(tmp_path / "nope.json")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                     max_leaves=20)
_case = st.fixed_dictionaries({}, optional={"img_paths": _json | st.lists(st.text(max_size=6), max_size=3),
                                            "prompt": _json, "class_label": _json | st.lists(st.text(max_size=4),
                                                                                              max_size=3)})


_keys = st.from_regex(r"[a-z]{1,8}_[0-9]{1,2}", fullmatch=True) | st.text(max_size=12)
_paths = st.lists(st.text(min_size=1, max_size=6).filter(str.strip), min_size=1, max_size=3)
_valid = _paths.flatmap(lambda p: st.fixed_dictionaries(
    {"img_paths": st.just(p), "prompt": st.text(min_size=1, max_size=10).filter(str.strip)},
    optional={"class_label": st.lists(st.text(max_size=4), min_size=len(p), max_size=len(p)) | _json,
              "synthesis_flag": _json}))
ACCEPTED = []


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(_json, st.dictionaries(_keys, _valid | _case | _json, max_size=4)))
def test_loader_fuzz_rejects_malformed_input_with_input_error_only(data):
    from pathlib import Path

    try:
        cases = parse_benchmark(data, Path("fuzz.json"))
    except InputError as exc:
        assert "fuzz.json" in str(exc) and "\n" not in str(exc)
        return
    ACCEPTED.append(len(cases))
    for c in cases:  # whatever is accepted is well-formed
        assert c.prompt.strip() and c.img_paths and all(isinstance(p, str) for p in c.img_paths)
        assert not c.class_labels or len(c.class_labels) == len(c.img_paths)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=64))
def test_loader_fuzz_on_raw_bytes(tmp_path_factory, blob):
    p = tmp_path_factory.mktemp("fuzz") / "b.json"
    p.write_bytes(blob)
    try:
        load_benchmark(p)
    except InputError:
        pass


# ---------------------------------------------------------------------- backends on tiny models
def test_ir_backbone_layout_loads_strictly_and_face_sim_cur(tmp_path):
    from safetensors.torch import save_file

    from idcrafter.eval.backends import CurricularFaceEmbedder, FaceSimCur, IRBackbone, load_state
    from tiny_models import astronaut_video

    full = IRBackbone()
    keys = set(full.state_dict())
    assert len(full.body) == 49 and "output_layer.3.weight" in keys and "output_layer.4.running_mean" in keys
    assert "body.0.res_layer.3.weight" in keys and not any(k.startswith("body.1.shortcut_layer") for k in keys)
    assert full.output_layer[3].in_features == 512 * 7 * 7
    torch.manual_seed(0)
    tiny = IRBackbone(units=(1, 1, 1, 1), widths=(8, 8, 16, 16), dim=32).eval()
    save_file({k: v.contiguous() for k, v in tiny.state_dict().items()}, str(tmp_path / "ir.safetensors"))
    torch.save({"module." + k: v for k, v in tiny.state_dict().items()}, tmp_path / "ir.bin")
    for name in ("ir.safetensors", "ir.bin"):
        again = IRBackbone(units=(1, 1, 1, 1), widths=(8, 8, 16, 16), dim=32)
        again.load_state_dict(load_state(tmp_path / name), strict=True)
    with pytest.raises(InputError, match="not an IR-101"):
        CurricularFaceEmbedder(tmp_path / "ir.safetensors")  # a tiny state dict is not IR-101

    class Stub:  # landmarks of the astronaut's face (256 px), none on a blank frame
        def detect(self, bgr):
            if bgr.std() < 1:
                return []
            k = np.array([[100, 55], [121, 55], [110, 66], [102, 76], [119, 76]], np.float64)
            return [(np.array([88, 38, 133, 84.0]), k)]

    fs = FaceSimCur(Stub(), CurricularFaceEmbedder(tiny))
    video = astronaut_video(3)
    ref = video[0]
    assert fs.score(video, ref) == pytest.approx(1.0, abs=1e-5)  # the same aligned face in every frame
    blank = np.full_like(video, 128)
    assert fs.score(blank, ref) == 0.0 and fs.score(video, blank[0]) is None  # no face: dropped / case skipped


def test_gme_embedder_and_quality_rater_on_tiny_qwen(tmp_path):
    from idcrafter.eval.backends import GmeEmbedder, VLMQualityRater, expand_to_square, gme_resize
    from tiny_models import qwen_folder

    assert gme_resize(48, 48) == (56, 56) and gme_resize(10, 1000, max_pixels=28 * 28 * 4)[0] % 28 == 0
    sq = expand_to_square(np.zeros((2, 4, 3), np.uint8), (9, 9, 9))
    assert sq.shape == (4, 4, 3) and sq[0, 0, 0] == 9 and sq[1, 0, 0] == 0 and sq[3, 0, 0] == 9
    gme = GmeEmbedder(qwen_folder(tmp_path / "gme", kind="qwen2_vl", head=False), min_pixels=28 * 28,
                      max_pixels=56 * 56, batch_size=2)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (40, 40, 3), dtype=np.uint8) for _ in range(3)]
    e = gme.images(imgs)
    t = gme.texts(["a man walks on a beach", "a dog"])
    assert e.shape[0] == 3 and t.shape[0] == 2 and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-5)
    assert np.allclose(gme.images(imgs[2:]), e[2:], atol=1e-4)  # batching (right padding) changes nothing
    rater = VLMQualityRater(qwen_folder(tmp_path / "q"), max_pixels=28 * 28)
    clip = rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8)
    scores = rater([[f, f, f] for f in clip])
    assert len(scores) == 4 and all(0 <= s <= 1 for s in scores)
    assert 0 <= M.motion_smoothness(clip, rater) <= 1


def test_nexus_score_rules_with_a_stub_and_a_tiny_owlv2(tmp_path):
    from idcrafter.eval.backends import GmeEmbedder, OwlImagePromptDetector, nexus_score
    from idcrafter.eval.benchmark import BenchCase
    from tiny_models import owlv2_folder, qwen_folder

    rng = np.random.default_rng(0)
    refs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]
    frames = rng.integers(0, 256, (4, 40, 40, 3), dtype=np.uint8)
    oc = OpenS2VCase("faceobj_1", "p", ("a/man/1.png", "b/dog/1.png"), ("Man", "Dog"))
    case = BenchCase("faceobj_1", "p", 2, 0, opens2v=oc, _refs=refs)

    class Gme:  # every crop is image-similar 0.5 to its reference and text-similar 0.5 to its label
        def images(self, ims):
            ref = ims[0].shape == (32, 32, 3)
            return np.tile([1.0, 0.0] if ref else [0.5, 0.5], (len(ims), 1))

        def texts(self, texts):
            return np.tile([0.0, 1.0], (len(texts), 1))

    class Det:  # two boxes on frames 0 and 1 (one under the confidence bar), none on frames 2 and 3
        calls = []

        def detect(self, frame, prompt):
            Det.calls.append(prompt is refs[1])
            if np.array_equal(frame, frames[0]) or np.array_equal(frame, frames[1]):
                return [(np.array([0, 0, 10, 10.0]), 0.9), (np.array([5, 5, 20, 20.0]), 0.55)]
            return []

    # 32 frames at int(3 i / 31): frame 0 for i <= 10, frame 1 for 11 <= i <= 20 -> 21 frames with a
    # detection; kept: the 0.9 boxes (0.55 <= 0.6), image similarity 0.5 each -> 0.5 / 21
    score = nexus_score(frames, case, Det(), Gme())
    assert score == pytest.approx(0.5 / 21)
    assert all(Det.calls)  # the man is skipped in a *face* case: only the dog was looked for
    det = OwlImagePromptDetector(owlv2_folder(tmp_path / "owl"), score=0.0)
    found = det.detect(frames[0], refs[1])
    assert found and all(0 <= b[0] <= b[2] <= 40 and 0 <= b[1] <= b[3] <= 40 for b, _ in found)
    gme = GmeEmbedder(qwen_folder(tmp_path / "gme", kind="qwen2_vl", head=False), min_pixels=28 * 28,
                      max_pixels=28 * 28)
    value = nexus_score(frames[:2], case, det, gme, count=2)
    assert np.isfinite(value) and value >= 0
