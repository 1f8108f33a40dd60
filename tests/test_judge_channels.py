"""Judge v2's channels on hand-made cases: camera and light compensation, own motion, copy-paste,
binding geometry, plausibility checks, attribute read-out."""

import numpy as np
import pytest

from idcrafter.judge import channels as C
from idcrafter.judge import temporal as TM
from idcrafter.judge.attacks import similarity_warp
from idcrafter.judge.attributes import attribute_accuracy
from idcrafter.world.identity import ATTRIBUTES, Identity


def _scene(seed: int = 0, posts: bool = True) -> np.ndarray:
    """(48, 48, 3) textured background with a horizon and a few posts (enough texture to register)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((48, 48, 3), np.float32)
    img[:26] = (140, 190, 240)
    img[26:] = (70, 150, 60)
    for x in (7, 19, 33, 41) if posts else ():
        img[14:30, x:x + 2] = (90, 60, 30)
    img += rng.normal(0, 6, (48, 48, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _with_square(frame: np.ndarray, x: int, y: int = 28, size: int = 8) -> np.ndarray:
    out = frame.copy()
    out[y:y + size, x:x + size] = (230, 40, 40)
    return out


# ----------------------------------------------------------------------------- temporal

def test_camera_motion_recovers_a_known_shift_and_zoom():
    a = _scene()
    b = similarity_warp(a, 1.7, -1.2, 1.05, 1.15)  # shaken, zoomed, 15% brighter
    warp = TM.camera_motion(a, b, [])
    # a point of frame a lands where the warp says in frame b: x' = s (x - c) + c + d
    pts = np.array([[10.0, 10.0], [36.0, 30.0]])
    want = 1.05 * (pts - 24) + 24 + np.array([1.7, -1.2])
    assert np.abs(TM.apply_warp_to_points(warp, pts) - want).max() < 0.35


def test_still_camera_stays_the_identity_while_a_subject_moves():
    a = _scene()
    warp = TM.camera_motion(_with_square(a, 10), _with_square(a, 14), [np.array([8, 26, 24, 38.0])])
    assert np.allclose(warp, np.eye(2, 3), atol=1e-6)


def _figure(frame: np.ndarray, x: int, arm: int) -> np.ndarray:
    """A red body at x with a yellow arm whose tip is `arm` px up (articulation)."""
    out = _with_square(frame, x, 28, 8)
    out[30 - arm:36, x + 8:x + 10] = (250, 220, 30)
    return out


def test_articulation_counts_and_a_rigid_slide_or_a_shake_does_not():
    base = _scene()

    def box(x: float) -> np.ndarray:
        return np.array([x - 1.0, 20, x + 11, 37])

    waving = np.stack([_figure(base, 12, a) for a in (0, 6, 0, 6)])
    comp = TM.compensate(waving, [[box(12)]] * 4)
    assert np.all(TM.step_activity(comp, np.stack([box(12)] * 4)) > C.ALIVE_FRACTION)
    # a cut-out slid across grass (where it crosses a post, the strip it covers counts a little)
    sliding = np.stack([_figure(_scene(posts=False), 10 + 2 * t, 3) for t in range(4)])
    boxes = np.stack([box(10 + 2 * t) for t in range(4)])
    comp = TM.compensate(sliding, [[b] for b in boxes])
    assert C.alive(TM.step_activity(comp, boxes)) == 0.0
    rng = np.random.default_rng(1)
    still = _figure(base, 12, 3)
    shaken = np.stack([similarity_warp(still, *rng.uniform(-2.5, 2.5, 2), 1 + rng.uniform(-0.08, 0.08),
                                       1 + rng.uniform(-0.2, 0.2)) for _ in range(5)])
    comp = TM.compensate(shaken, [[box(12)]] * 5)
    act = TM.step_activity(comp, np.stack([box(12)] * 5))
    # compensation is not perfect at every step (a zoom fit left 1% of edge pixels once here)
    assert np.median(act) <= C.ALIVE_FRACTION and C.alive(act) < 0.5


def test_background_change_is_not_the_subjects_own_motion():
    prev = np.zeros((10, 10, 3), np.float32)
    cur = np.random.default_rng(0).uniform(100, 200, (10, 10, 3)).astype(np.float32)  # no shift explains it
    comp = {"pairs": [(prev, cur)] * 2, "border": np.ones((10, 10), bool), "background_change": np.zeros(2)}
    box = np.array([[2, 2, 6, 6.0]] * 3)
    assert np.allclose(TM.subject_activity(comp, box, margin=0), [1.0, 1.0])
    # ...but when 30% of the background changed too, own = 1 - 2 * 0.3
    comp["background_change"] = np.array([0.3, 0.6])
    assert np.allclose(TM.subject_activity(comp, box, margin=0), [0.4, 0.0])
    box[1] = np.nan
    comp["background_change"] = np.zeros(2)
    assert np.allclose(TM.subject_activity(comp, box, margin=0), [1.0, 1.0])  # seen in one frame of each pair
    box[:] = np.nan
    assert np.all(np.isnan(TM.subject_activity(comp, box)))


def test_light_gains_and_flicker_by_hand():
    prev = np.full((6, 6, 3), 100, np.uint8)
    cur = (prev * np.array([1.2, 1.0, 0.8])).astype(np.float32)
    g = TM.light_gains(prev, cur, np.ones((6, 6), bool))
    assert np.allclose(g, [1.2, 1.0, 0.8], atol=1e-5)
    gains = np.array([[1.2, 1.0, 0.8], [1.0, 1.0, 1.0]])
    assert TM.flicker(gains) == pytest.approx((abs(np.log(0.8)) + 0.0) / 2)
    assert TM.flicker(np.zeros((0, 3))) == 0.0


def test_stabilise_undoes_the_camera():
    warps = np.array([np.eye(2, 3), np.eye(2, 3)], np.float64)
    warps[0, :, 2] = [2.0, 0.0]  # the camera moved the scene 2 px right, then 1 px down
    warps[1, :, 2] = [0.0, 1.0]
    pts = np.array([[10.0, 5.0], [12.0, 5.0], [12.0, 6.0]])  # a still point, seen through the camera
    assert np.allclose(TM.stabilise(pts, warps), [[10, 5]] * 3)


def test_path_coherence_tells_a_walk_from_a_shuffle():
    h = np.full(9, 24.0)
    walk = np.stack([np.linspace(8, 30, 9), np.full(9, 20.0)], 1)
    stand = np.stack([20 + np.array([0, .3, -.2, .1, 0, -.3, .2, 0, .1]), np.full(9, 20.0)], 1)
    shuffled = walk[[0, 6, 2, 8, 1, 5, 3, 7, 4]]
    assert TM.path_coherence(walk, h) == 1.0 and TM.path_coherence(stand, h) == 1.0
    assert TM.path_coherence(shuffled, h) < 0.3
    u = np.linspace(0, 1, 9)
    jump = np.stack([np.full(9, 20.0), 40 - 24 * 0.22 * 4 * u * (1 - u)], 1)  # up once, down once
    assert TM.bounce_coherence(jump[:, 1], h) == 1.0
    assert TM.bounce_coherence(jump[[0, 4, 1, 7, 2, 5, 8, 3, 6], 1], h) == 0.0
    paused = np.array([45.1, 41, 41, 45.1, 42.4, 42.4, 39.4, 38.5, 39.5])  # up, pause, down, pause, up
    assert TM.bounce_coherence(paused, h) == 0.5
    assert TM.bounce_coherence(40 + 0.4 * np.sin(np.arange(9.0)), h) == 1.0  # a walking bob


def test_a_crowded_step_is_allowed_the_detectors_pull_but_a_shuffle_is_not():
    h = np.full(5, 21.0)
    # a still jumper's head as the detector reads it while walkers pass in front (seed 8080, cast 5)
    still = np.stack([np.array([27.2, np.nan, 26.4, 29.2, 27.1]), np.full(5, 20.0)], 1)
    crowded = np.array([False, False, False, True, False])
    assert TM.path_coherence(still, h) < 0.4  # 2.8 px out and back, beyond 0.03 h of dead zone
    assert TM.path_coherence(still, h, crowded=crowded) == 1.0
    walk = np.stack([np.linspace(8, 38, 9), np.full(9, 20.0)], 1)  # a walk of 3.75 px a step, shuffled
    shuffled = walk[[0, 6, 2, 8, 1, 5, 3, 7, 4]]
    assert TM.path_coherence(shuffled, np.full(9, 21.0), crowded=np.ones(9, bool)) < 0.3


def test_a_loose_anchor_is_allowed_its_regression_error_only():
    h = np.full(9, 20.0)
    off = np.full(9, 20.0)  # a still subject ...
    off[4] -= 3.5  # ... with one anchor 3.5 px (0.175 h) off: out and back
    pts = np.stack([off, np.full(9, 20.0)], 1)
    loose = np.zeros(9, bool)
    loose[4] = True
    assert TM.path_coherence(pts, h) == pytest.approx(1 - (5.8 - 0.15 * 5.8) / (5.8 + 0.05 * 8 * 20))  # a peak's: it costs
    assert TM.path_coherence(pts, h, loose=loose) == 1.0  # a recovered box's centre does not
    far = pts.copy()
    far[4, 0] -= 8.0  # 11.5 px behind: more than any regression error
    assert TM.path_coherence(far, h, loose=loose) == pytest.approx(1 - (13.8 - 0.15 * 13.8) / (13.8 + 8))


def test_a_path_that_turns_back_by_half_a_body_is_two_bodies():
    h = np.full(9, 22.0)
    nan = np.nan
    # seed 1 cast 8's duplicate: the original's glimpse at 37.9 px, then its copy walking right
    stitched = np.array([37.9, nan, nan, 20.3, 24.3, 22.2, 31.8, 33.4, 36.6])
    assert TM.turn_coherence(stitched, h) == 0.0
    # a crowded still subject (3 px of pull and back), a walk, and a walk with one 5 px stumble back
    assert TM.turn_coherence(27 + np.array([0, 1.5, 3, 0.5, -0.2, 2.8, 0, 1, 0]), h) == 1.0
    assert TM.turn_coherence(np.linspace(8, 38, 9), h) == 1.0
    assert TM.turn_coherence(np.array([8, 12, 16, 11, 15, 19, 23, 27, 31.0]), h) == 1.0
    # hysteresis: out 12 px (> 0.5 h = 11) and back 10.9 is no turn; back 11.1 is one
    assert TM.turn_coherence(np.array([20, 26, 32, 27, 21.1]), np.full(5, 22.0)) == 1.0
    assert TM.turn_coherence(np.array([20, 26, 32, 27, 20.9]), np.full(5, 22.0)) == 0.0
    assert TM.turn_coherence(np.array([20, nan, 40.0]), np.full(3, 22.0)) == 1.0  # too few points


def test_crowded_frames_by_hand():
    a = np.array([[10, 10, 20, 30], [10, 10, 20, 30], [np.nan] * 4], np.float32)
    b = np.array([[17, 12, 27, 32], [19, 12, 29, 32], [10, 10, 20, 30]], np.float32)  # 3 px, then 1 px of overlap
    c = np.array([[10, 33, 20, 40]] * 3, np.float32)  # below a and b: no vertical overlap
    ca, cb, cc = TM.crowded_frames([a, b, c])
    assert ca.tolist() == [True, False, False] and cb.tolist() == [True, False, False] and not cc.any()


def test_turning_points_count_reversals_with_hysteresis():
    assert TM.turning_points(np.array([0, 1, 2, 3, 2, 1, 0.0]), 0.5) == 1
    assert TM.turning_points(np.array([0, 0.4, 0, 0.4, 0, 0.4]), 0.5) == 0  # jitter below the threshold
    assert TM.turning_points(np.array([0, 1, 0, 1, 0.0]), 0.5) == 3
    assert TM.turning_points(np.array([0, 0.3, 0.6, 0.3, 0.0]), 0.5) == 1  # slow moves add up
    # a still subject whose box top toggles by 1.5-2 px (0.07-0.09 h; seeds 31337 cast 11, 8080 cast 18)
    toggling = np.array([16.3, 16.7, 18.2, 18.2, 16.4, 16.4, 18.2, 18.5, 16.3])
    assert TM.bounce_coherence(toggling, np.full(9, 25.5)) == 1.0


# ----------------------------------------------------------------------------- channels

def test_alive_motion_likeness_and_copy_paste_by_hand():
    act = np.array([0.0, 0.02, 0.5, np.nan, 0.005])
    assert C.alive(act) == pytest.approx(min(1.0, (2 / 4) / C.ALIVE_STEPS))
    assert C.own_motion(act) == pytest.approx((0 + 0.4 + 1 + 0.1) / 4)
    assert C.alive(np.full(3, np.nan)) == 0.0 and C.own_motion(np.array([])) == 0.0
    assert C.likeness(C.LIKENESS_LO) == 0.0 and C.likeness(1.0) == 1.0
    assert C.likeness((C.LIKENESS_LO + C.LIKENESS_HI) / 2) == pytest.approx(0.5)
    assert C.copy_paste(0.0, 1.0) == 1.0 and C.copy_paste(1.0, 1.0) == 0.0
    assert C.copy_paste(0.25, 0.8) == pytest.approx(0.6)


def test_reference_likeness_finds_a_brightened_rescaled_paste():
    import cv2

    rng = np.random.default_rng(0)
    ref = np.full((32, 32, 3), 240, np.uint8)
    ref[4:30, 10:22] = rng.integers(0, 200, (26, 12, 3))
    mask = np.zeros((32, 32), bool)
    mask[4:30, 10:22] = True
    frames = np.repeat(_scene()[None], 3, 0)
    sprite = cv2.resize(ref[4:30, 10:22], (13, 28), interpolation=cv2.INTER_AREA)  # 1.08x bigger
    frames[:, 12:40, 20:33] = np.clip(sprite * 1.15, 0, 255).astype(np.uint8)  # and 15% brighter
    boxes = np.array([[19.0, 11, 34, 41]] * 3)  # a detector's box, 1 px loose
    assert C.reference_likeness_ncc(frames, ref, mask, boxes) > 0.9
    other = frames.copy()
    other[:, 12:40, 20:33] = rng.integers(0, 200, (28, 13, 3))
    assert C.reference_likeness_ncc(other, ref, mask, boxes) < 0.3
    assert C.reference_likeness_ncc(frames, ref, mask, np.full((3, 4), np.nan)) == 0.0


def test_solo_and_pair_geometry():
    h = np.full(9, 24.0)
    feet = np.stack([np.linspace(10, 26, 9), np.full(9, 40.0)], 1)  # 16 px right of 48
    assert C.solo_geometry("walk_right", feet, h, 48) == 1.0
    assert C.solo_geometry("walk_left", feet, h, 48) == 0.0
    assert C.solo_geometry("stay", feet, h, 48) == 0.0
    jump = np.stack([np.full(9, 20.0), 40 - 24 * 0.22 * 4 * np.linspace(0, 1, 9) * (1 - np.linspace(0, 1, 9))], 1)
    assert C.solo_geometry("jump", jump, h, 48) == 1.0 and C.solo_geometry("stay", jump, h, 48) == 0.0
    assert C.solo_geometry("wave", feet, h, 48) is None
    left = np.stack([np.linspace(8, 18, 9), np.full(9, 40.0)], 1)
    right = np.stack([np.linspace(40, 30, 9), np.full(9, 40.0)], 1)
    assert C.pair_geometry("approach", left, right, 48) == 1.0
    assert C.pair_geometry("approach", left, np.stack([np.full(9, 40.0), np.full(9, 40.0)], 1), 48) == 0.0
    cross_l = np.stack([np.linspace(8, 40, 9), np.full(9, 40.0)], 1)
    cross_r = cross_l[:, ::-1].copy()
    cross_r[:, 0], cross_r[:, 1] = np.linspace(40, 8, 9), 40.0
    assert C.pair_geometry("swap", cross_l, cross_r, 48) == 1.0
    assert C.pair_geometry("swap", left, right, 48) == 0.0  # they meet but never cross


def test_solo_contradiction_by_hand():
    h = np.full(9, 24.0)
    sc = C.solo_contradiction
    still = np.stack([20 + np.array([0, 1, 0, -1, 0, 1, 0, -1, 0.0]), np.full(9, 40.0)], 1)  # 1 px jitter
    assert all(sc(a, still, still, h, 48) == 0.0 for a in ("wave", "stay", "jump", "walk_left"))
    walk = np.stack([np.linspace(10, 26, 9), np.full(9, 40.0)], 1)  # 16 / 48 = 0.33 of the width, right
    assert [sc(a, walk, walk, h, 48) for a in ("wave", "stay", "jump", "walk_left", "walk_right")] \
        == [1.0, 1.0, 1.0, 1.0, 0.0]
    short = np.stack([np.linspace(10, 18, 9), np.full(9, 40.0)], 1)  # 8 / 48 = 0.167: (0.167 - 0.12) / 0.08
    assert sc("wave", short, short, h, 48) == pytest.approx((8 / 48 - 0.12) / 0.08)
    # walking is read from the head: a box dragged sideways under a still head walks nowhere
    assert sc("stay", still, walk, h, 48) == 0.0 and sc("stay", walk, still, h, 48) == 1.0
    assert sc("stay", np.full((9, 2), np.nan), walk, h, 48) == 1.0  # no head seen: the feet serve
    # lifts are read from the feet, held two frames above the mean of the ends: 0.09 h -> (0.09 - 0.06) / 0.06
    up = np.stack([np.full(9, 20.0), 40 - np.array([0, 0, 1, 1, 1, 0, 0, 0, 0]) * 0.09 * 24], 1)
    assert sc("wave", still, up, h, 48) == pytest.approx(0.5) and sc("stay", still, up, h, 48) == pytest.approx(0.5)
    assert sc("jump", still, up, h, 48) == 0.0 and sc("walk_right", still, up, h, 48) == 0.0
    assert sc("wave", up, still, h, 48) == 0.0  # a head drifting up toward a neighbour's lifts nobody
    hidden_legs = h - (40 - up[:, 1])  # the box's bottom rises by as much as the box shrinks: its top stays
    assert sc("wave", still, up, hidden_legs, 48) == 0.0
    blip = np.stack([np.full(9, 20.0), 40 - np.array([0, 0, 0, 3.0, 0, 0, 0, 0, 0])], 1)  # one box bottom off
    assert sc("wave", still, blip, h, 48) == 0.0
    ends = np.stack([np.full(9, 20.0), np.array([39, 40, 40, 39, 40, 40, 40, 40, 41.0])], 1)  # ends 2 px apart
    assert sc("stay", still, ends, h, 48) == 0.0
    assert sc("wave", np.full((9, 2), np.nan), np.full((9, 2), np.nan), h, 48) == 0.0  # never seen


def test_binding_by_hand():
    assert C.binding(0.9, None, 1.0, contradiction=0.25) == pytest.approx(0.75)  # a "wave" that walks off a bit
    assert C.binding(0.1, 1.0, 1.0, contradiction=1.0) == 0.0  # geometry does not rescue what it contradicts
    assert C.binding(0.9, 0.25, 1.0, pair=True, contradiction=1.0) == pytest.approx(0.5)  # pairs: not used
    assert C.binding(0.25, None, 1.0) == pytest.approx(0.5)  # a wave: the recogniser alone
    assert C.binding(0.1, 1.0, 1.0) == pytest.approx(1.0)  # a walk seen in the boxes
    assert C.binding(0.9, 1.0, 1.0, coherence_k=0.55) == pytest.approx(0.5)  # ... made of jumps
    assert C.coherence_credit(0.3) == 0.0 and C.coherence_credit(0.8) == 1.0
    assert C.binding(0.9, 0.0, 0.5) == pytest.approx(0.5)  # half alive
    assert C.binding(0.9, 0.25, 1.0, pair=True) == pytest.approx(0.5)  # pair: sqrt(1 x 0.25)
    assert C.binding(0.9, 0.0, 1.0, pair=True) == 0.0  # a pair action done with nobody
    assert C.binding(0.9, 1.0, 1.0, identity_k=C.identity_credit(0.3, 0.3)) == 0.0  # done by a stranger
    assert C.identity_credit(0.5, 0.4) == pytest.approx(0.5)


def test_bound_fidelity_halves_the_identity_of_a_subject_doing_something_else():
    assert C.bound_fidelity([0.8, 0.6], [1.0, 0.0]) == pytest.approx((0.8 + 0.3) / 2)
    assert C.bound_fidelity([], []) == 0.0


def test_plausibility_checks_by_hand():
    assert C.count_check(2, 2) == 1.0 and C.count_check(3, 2) == 0.5 and C.count_check(0, 3) == 0.0
    assert C.count_check(1, 0) == 0.0
    assert C.present_check([0.25, 0.9], [1, 0], 2) == pytest.approx((1 + 0.5) / 2)
    assert C.present_check([0.9], [0, -1], 2) == pytest.approx(0.5)
    sim = np.array([[0.9, 0.8]])  # one reference, two tracks that both look like it: a duplicate
    assert C.duplicate_check(sim, [0]) == 0.0
    assert C.duplicate_check(np.array([[0.9, 0.1]]), [0]) == 1.0
    assert C.duplicate_check(np.zeros((2, 0)), [-1, -1]) == 0.0  # nobody there is not "no duplicates"
    # two of reference 0 and none of reference 1: the matching hands the copy (track 1) to
    # reference 1; it is reference 0's (0.85 > 0.6, 0.85 - 0.3 > 0.15) while track 0 is too
    copy = np.array([[0.9, 0.85], [0.2, 0.3]])
    assert C.duplicate_check(copy, [0, 1]) == pytest.approx(0.5)
    assert C.duplicate_check(np.array([[0.9, 0.85], [0.2, 0.75]]), [0, 1]) == 1.0  # within the margin: look-alikes
    assert C.duplicate_check(np.array([[0.5, 0.85], [0.2, 0.3]]), [0, 1]) == 1.0  # reference 0's own track is not its
    assert C.duplicate_check(np.array([[0.9, 0.85], [0.2, 0.3]]), [0, -1]) == 1.0 - 0.5  # unmatched copy: as before
    steady = np.array([[10, 10, 20, 30]] * 5, float)
    jumpy = steady.copy()
    jumpy[3] += [30, 0, 30, 0]
    assert C.teleport_free([steady, jumpy]) == [True, False]
    assert C.coherence_check([1.0, 0.6], [True, True], 0, 2) == pytest.approx(2 / 3)  # the worst track
    assert C.coherence_check([1.0, 0.8], [True, False], 0, 2) == 0.0
    assert C.coherence_check([1.0, 1.0], [True, True], 1, 2) == pytest.approx(0.5)  # a fragment
    assert C.coherence_check([], [], 0, 2) == 0.0
    e = np.eye(4)
    assert C.morph_check([np.stack([e[0]] * 6)]) == 1.0
    assert C.morph_check([np.stack([e[0]] * 3 + [e[1]] * 3)]) == 0.0 and C.morph_check([]) == 0.0
    assert C.light_check(0.0) == 1.0 and C.light_check(C.FLICKER_FULL / 2) == pytest.approx(0.5)
    assert C.lifelike_check([0.9, 0.425], [1, -1]) == pytest.approx(0.25) and C.lifelike_check([], []) == 0.0
    assert C.lifelike_check([0.1, 0.9], [0, 1]) == pytest.approx(0.5)
    p = C.Plausibility(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0)
    assert p.natural == pytest.approx(0.4 * 7 / 8)  # one failed check costs 0.6 of the channel
    assert C.half_min([1.0, 0.5]) == pytest.approx(0.625) and C.half_min([]) == 0.0


def test_attribute_accuracy_counts_invisible_differences_as_right():
    bald = Identity(head=0, skin=1, hair_style=0, hair_colour=2, eyes=0, accessory=0, shirt=3, pattern=0, pants=1)

    def onehot(ident: Identity) -> dict:
        return {a: np.log(np.eye(n)[getattr(ident, a)] + 1e-3) for a, n in ATTRIBUTES}

    assert attribute_accuracy(onehot(bald), onehot(bald)) == 1.0
    assert attribute_accuracy(onehot(bald.replace(hair_colour=5)), None, bald) == 1.0  # no hair, no colour
    assert attribute_accuracy(onehot(bald.replace(shirt=4, pants=2)), None, bald.attributes()) == pytest.approx(7 / 9)
    from idcrafter.errors import InputError

    with pytest.raises(InputError, match="out of range"):
        attribute_accuracy(onehot(bald), None, {**bald.attributes(), "shirt": 99})
