"""The judge's pure metric functions, checked against hand computations."""

import numpy as np
import pytest

from idcrafter.judge import metrics as M
from idcrafter.encoders.references import prepare_reference
from idcrafter.judge.judge import check_video
from idcrafter.errors import InputError


def test_hungarian_maximises_similarity_and_leaves_extra_refs_unmatched():
    sim = np.array([[0.1, 0.9], [0.8, 0.85], [0.2, 0.1]])
    match = M.hungarian(sim)
    assert match[:2] == [1, 0] and match[2] == -1
    assert np.allclose(M.matched_scores(sim, match), [0.9, 0.8, 0.0])


def test_leakage_by_hand():
    # ref 0's track resembles ref 1 at 0.7 while refs 0 and 1 share 0.2 -> leak 0.5
    track_ref = np.array([[0.9, 0.1], [0.7, 0.95]])
    ref_ref = np.array([[1.0, 0.2], [0.2, 1.0]])
    leak = M.leakage(track_ref, ref_ref, [0, 1])
    assert np.allclose(leak, [0.5, 0.0])
    assert np.allclose(M.leakage(track_ref[:1, :1], ref_ref[:1, :1], [0]), [0.0])  # one subject: none


def test_roc_auc_by_hand():
    assert M.roc_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2])) == 1.0
    assert M.roc_auc(np.array([0.5]), np.array([0.5])) == 0.5
    assert M.roc_auc(np.array([0.3, 0.9]), np.array([0.5])) == 0.5


FULL = dict(quality=1.0, motion=1.0, face_sim_mean=1.0, subject_sim=1.0, leakage=0.0, natural=1.0, binding=1.0,
            copy_paste=0.0)


def test_total_is_a_weighted_mean_minus_the_copy_paste_penalty_by_hand():
    w = M.TotalWeights()
    assert sum(v for k, v in w.__dict__.items() if k not in ("copy_paste", "light")) == pytest.approx(1.0)
    assert w.total(FULL) == pytest.approx(1.0)
    # one channel at a time: total drops by exactly that channel's weight
    assert w.total({**FULL, "binding": 0.0}) == pytest.approx(1 - 0.37)
    assert w.total({**FULL, "leakage": 1.0}) == pytest.approx(1 - 0.04)
    m = dict(quality=0.5, motion=0.25, face_sim_mean=0.8, subject_sim=0.9, leakage=0.2, natural=0.6, binding=0.5,
             copy_paste=0.1)
    by_hand = (0.12 * 0.5 + 0.02 * 0.25 + 0.12 * 0.8 + 0.06 * 0.9 + 0.37 * 0.5 + 0.04 * 0.8 + 0.27 * 0.6) - 0.30 * 0.1
    assert w.total(m) == pytest.approx(by_hand)
    # unsteady light scales the weighted mean, before the penalty
    assert w.total({**m, "steady_light": 0.4}) == pytest.approx((by_hand + 0.30 * 0.1) * (1 - 0.5 * 0.6) - 0.30 * 0.1)
    assert w.total({**FULL, "steady_light": 0.0}) == pytest.approx(0.5)


def test_total_counts_identity_bound_to_the_caption_when_there_is_a_prompt():
    w = M.TotalWeights()
    bound = {**FULL, "face_bound": 0.5, "subject_bound": 0.25}
    assert w.total(bound) == pytest.approx(1 - 0.12 * 0.5 - 0.06 * 0.75)
    free = {**bound, "binding": None}  # without a prompt nothing is bound: the raw similarities count
    assert w.total(free) == pytest.approx(1.0)


def test_total_without_a_prompt_renormalises_and_clips_at_zero():
    w = M.TotalWeights()
    free = {**FULL, "binding": None, "quality": 0.0}
    assert w.total(free) == pytest.approx(1 - 0.12 / 0.63)  # binding dropped, the rest renormalised
    assert w.total({k: v for k, v in free.items() if k != "binding"}) == pytest.approx(1 - 0.12 / 0.63)
    assert w.total({**FULL, "copy_paste": 0.5}) == pytest.approx(1 - 0.15)
    nothing = dict(quality=0.0, motion=0.0, face_sim_mean=0.0, subject_sim=0.0, leakage=1.0, natural=0.0,
                   binding=0.0, copy_paste=1.0)
    assert w.total(nothing) == 0.0  # clipped, never negative
    assert w.total({**FULL, "face_sim_mean": 1.7, "leakage": -0.3}) == pytest.approx(1.0)  # inputs clipped


def test_motion_amplitude_sees_a_moving_square():
    frames = np.zeros((4, 48, 48, 3), np.uint8)
    for t in range(4):
        frames[t, 15:30, 5 + 3 * t:20 + 3 * t] = 255
    still = np.repeat(frames[:1], 4, 0)
    assert M.motion_amplitude(still) < 0.01
    assert M.motion_amplitude(frames) > 0.2


def test_video_and_reference_checks():
    with pytest.raises(InputError, match="frames, height, width, 3"):
        check_video(np.zeros((4, 48, 48)), (48, 48))
    with pytest.raises(InputError, match="at least 2"):
        check_video(np.zeros((1, 48, 48, 3), np.uint8), (48, 48))
    with pytest.raises(InputError, match="aspect"):
        check_video(np.zeros((3, 48, 64, 3), np.uint8), (48, 48))
    assert check_video(np.zeros((3, 192, 192, 3), np.uint8), (48, 48)).shape == (3, 48, 48, 3)
    tall = np.zeros((60, 20, 3), np.uint8)
    r = prepare_reference(tall, 32)
    assert r.shape == (32, 32, 3) and r[0, 0, 0] > 200 and r[16, 16, 0] < 5
