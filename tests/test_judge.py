"""The shipped judge on small cases: it must rank right what it claims to measure."""

import numpy as np
import pytest

from idcrafter.errors import InputError
from idcrafter.judge.judge import Judge
from idcrafter.judge.validate import leaky_example, pasted_example
from idcrafter.world.dataset import make_example
from idcrafter.world.scene import WorldConfig


@pytest.fixture(scope="module")
def judge():
    return Judge.load()


@pytest.fixture(scope="module")
def clips():
    return [make_example(99, i, "heldout", num_subjects=2) for i in range(6)]


def test_ground_truth_scores_high_and_reports_every_key(judge, clips):
    ex = clips[0]
    m = judge.score(ex.clip.frames, list(ex.refs), ex.caption).metrics
    for key in ["face_sim_mean", "face_sim_min", "subject_sim", "leakage", "motion", "action_acc", "quality",
                "natural", "copy_paste", "total"]:
        assert key in m and m[key] is not None and 0 <= m[key] <= 1.0 + 1e-6, key
    faces = [judge.score(e.clip.frames, list(e.refs)).metrics["face_sim_mean"] for e in clips]
    assert np.mean(faces) > 0.7


def test_wrong_references_score_lower_than_right_ones(judge, clips):
    right = [judge.score(e.clip.frames, list(e.refs)).metrics["face_sim_mean"] for e in clips[:4]]
    wrong = [judge.score(e.clip.frames, list(clips[(i + 1) % 4].refs)).metrics["face_sim_mean"]
             for i, e in enumerate(clips[:4])]
    assert np.mean(right) > np.mean(wrong) + 0.3


def test_leaky_clips_have_more_leakage(judge, clips):
    gt = np.mean([judge.score(e.clip.frames, list(e.refs)).metrics["leakage"] for e in clips])
    cfg = WorldConfig()
    leaky = np.mean([judge.score(f, r).metrics["leakage"] for f, r, _ in
                     (leaky_example(3, i, "swap", cfg) for i in range(6))])
    assert leaky > 2 * gt


def test_pasted_references_are_flagged(judge, clips):
    frames, refs = pasted_example(5, 0, WorldConfig())
    assert judge.score(frames, refs).metrics["copy_paste"] > 0.8
    assert judge.score(clips[0].clip.frames, list(clips[0].refs)).metrics["copy_paste"] < 0.8


def test_static_clip_has_no_motion_and_degraded_clip_lower_quality(judge, clips):
    from idcrafter.world.degrade import degrade

    ex = clips[1]
    still = np.repeat(ex.clip.frames[:1], len(ex.clip.frames), 0)
    assert judge.score(still, list(ex.refs)).metrics["motion"] < 0.05
    bad = degrade(ex.clip.frames, np.random.default_rng(0), 1.5)
    assert judge.score(bad, list(ex.refs)).metrics["quality"] < judge.score(ex.clip.frames, list(ex.refs)).metrics["quality"]


def test_caption_binding_and_bad_input(judge, clips):
    ex = clips[2]
    with pytest.raises(InputError, match="names 2 subject"):
        judge.score(ex.clip.frames, [ex.refs[0]], ex.caption)
    with pytest.raises(InputError, match="at most 4"):
        judge.score(ex.clip.frames, [ex.refs[0]] * 5)
    with pytest.raises(InputError, match="aspect"):
        judge.score(np.zeros((5, 48, 60, 3), np.uint8), list(ex.refs))
    with pytest.raises(InputError, match="no subject found"):
        judge.score(ex.clip.frames, [np.full((32, 32, 3), 240, np.uint8), ex.refs[1]])


def test_missing_weights_folder_is_a_clear_error(tmp_path):
    from idcrafter.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="train-judge"):
        Judge.load(tmp_path)
