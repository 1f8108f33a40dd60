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


def test_plausibility_checks():
    assert M.count_stability([2, 2, 1, 2], 2) == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    steady = np.array([[10, 10, 20, 30]] * 5, float)
    jumpy = steady.copy()
    jumpy[3] += [30, 0, 30, 0]
    assert M.teleport_free([steady]) == 1.0 and M.teleport_free([steady, jumpy]) == 0.5
    e = np.eye(4)
    assert M.morph_free([np.stack([e[0]] * 6)]) == 1.0
    assert M.morph_free([np.stack([e[0]] * 3 + [e[1]] * 3)]) == 0.0
    sim = np.array([[0.9, 0.8]])  # one ref, two tracks that both look like it: a duplicate
    assert M.duplicate_free(sim, [0]) == 0.5


def test_total_weights_sum_and_prompt_free_mode():
    m = dict(quality=1, motion=1, face_sim_mean=1, subject_sim=1, leakage=0, natural=1, action_acc=1)
    assert M.TotalWeights().total(m) == pytest.approx(1.0)
    m2 = {**m, "action_acc": None}
    assert M.TotalWeights().total(m2) == pytest.approx(1.0)
    assert M.TotalWeights().total({**m, "face_sim_mean": 0}) == pytest.approx(0.8)


def test_motion_amplitude_sees_a_moving_square():
    frames = np.zeros((4, 48, 48, 3), np.uint8)
    for t in range(4):
        frames[t, 15:30, 5 + 3 * t:20 + 3 * t] = 255
    still = np.repeat(frames[:1], 4, 0)
    assert M.motion_amplitude(still) < 0.01
    assert M.motion_amplitude(frames) > 0.2


def test_copy_paste_detects_a_static_paste():
    rng = np.random.default_rng(0)
    ref = np.full((32, 32, 3), 240, np.uint8)
    ref[4:30, 10:22] = rng.integers(0, 200, (26, 12, 3))
    mask = np.zeros((32, 32), bool)
    mask[4:30, 10:22] = True
    frames = rng.integers(0, 255, (5, 48, 48, 3)).astype(np.uint8)
    pasted = frames.copy()
    pasted[:, 8:40, 8:40][:, mask] = ref[mask]
    pasted[:] = pasted[0]
    assert M.copy_paste_score(pasted, ref, mask) > 0.9
    assert M.copy_paste_score(frames, ref, mask) < 0.3


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
