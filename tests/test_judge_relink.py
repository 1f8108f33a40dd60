"""Judge v2's identity re-linking of tracks (`judge/relink.py`) by hand, and `Judge.score`'s
opt-in thread count."""

import numpy as np
import pytest

from idcrafter.judge.interfaces import Detection
from idcrafter.judge.relink import join_pieces, labels, relink, split_at_switches
from idcrafter.judge.tracking import Track


def _track(frames_seen, t=9, x=10.0):
    return Track([Detection(np.array([x + f, 5, x + f + 8, 25], np.float32), 0.9) if f in frames_seen else None
                  for f in range(t)])


def _sims(labels_, k=3, hi=0.9, lo=0.1):
    """(n, K) cosines: `hi` for the given reference, `lo` elsewhere; -1 = unsure (all 0.4)."""
    out = np.full((len(labels_), k), lo)
    for i, lab in enumerate(labels_):
        if lab < 0:
            out[i] = 0.4
        else:
            out[i, lab] = hi
    return out


def test_similarity_credit_by_hand():
    from idcrafter.judge.channels import similarity_credit

    assert [similarity_credit(v) for v in (0.1, 0.2, 0.5, 0.8, 0.95)] == pytest.approx([0, 0, 0.5, 1, 1])


def test_labels_need_a_confident_and_clear_best_reference():
    sim = np.array([[0.9, 0.1], [0.55, 0.1], [0.7, 0.65], [0.2, 0.95], [0.62, 0.5]])
    # 0.55 < 0.6 is unsure; 0.7 vs 0.65 is not clear by 0.1; 0.62 vs 0.5 is
    assert labels(sim) == [0, -1, -1, 1, 0]
    assert labels(np.zeros((2, 0))) == [-1, -1]


def test_a_switch_is_cut_and_a_single_odd_detection_is_not():
    tr = _track(range(9))
    parts = split_at_switches(tr, [0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert [np.flatnonzero(p.present()).tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    assert parts[0].frames[2] is tr.frames[2]  # detections are moved, never copied or changed
    # one odd detection (a label seen once) is noise: no cut
    assert split_at_switches(tr, [0, 0, 0, 1, 0, 0, 0, 0, 0]) == [tr]
    # unsure detections stay with the run before them, an unsure start with the first sure run
    parts = split_at_switches(tr, [-1, 2, 2, -1, -1, 0, 0, -1, 0])
    assert [np.flatnonzero(p.present()).tolist() for p in parts] == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]
    # at either end of the track one sure detection is enough (a cross-up in the first / last frame)
    parts = split_at_switches(tr, [1, 0, 0, 0, 0, 2, 2, 2, 2])
    assert [np.flatnonzero(p.present()).tolist() for p in parts] == [[0], [1, 2, 3, 4], [5, 6, 7, 8]]
    parts = split_at_switches(tr, [0, 0, 0, 0, 0, 0, 0, 0, 3])
    assert [np.flatnonzero(p.present()).tolist() for p in parts] == [list(range(8)), [8]]
    # ... but an unsure end is no switch
    assert split_at_switches(tr, [0, 0, 0, 0, 0, 0, 0, 0, -1]) == [tr]
    assert split_at_switches(tr, [-1] * 9) == [tr]
    with pytest.raises(ValueError, match="labels"):
        split_at_switches(tr, [0, 0])


def test_pieces_of_one_identity_join_unless_they_overlap():
    a, b, c, d = _track([0, 1]), _track([5, 6, 7]), _track([2, 3, 4]), _track([6, 7])
    out = join_pieces([a, b, c, d], [0, 0, -1, 0])
    # b (longest) takes a; d overlaps b in time so it stays apart; c (unlabelled) is untouched
    seen = sorted(np.flatnonzero(t.present()).tolist() for t in out)
    assert seen == [[0, 1, 5, 6, 7], [2, 3, 4], [6, 7]]
    assert any(t is c for t in out)


def test_relink_keeps_long_tracks_counts_fragments_and_ignores_strangers():
    # subject 0 hidden in frames 2-5: two pieces (2 and 3 frames; a track needs 3), joined; a
    # stranger's 2-frame piece (no confident label) stays a dropped fragment
    # (a single stray detection is no fragment)
    raw = [_track([0, 1]), _track([6, 7, 8]), _track(range(9), x=30), _track([3, 4], x=20), _track([5], x=40)]
    sims = [_sims([0, 0]), _sims([0, 0, 0]), _sims([1] * 9), _sims([-1, -1]), _sims([-1])]
    kept, fragments = relink(raw, sims, need=2.7)
    assert sorted(np.flatnonzero(t.present()).tolist() for t in kept) == [list(range(9)), [0, 1, 6, 7, 8]]
    assert fragments == 1  # the stranger's 2-frame piece
    # without identity (all unsure) it is exactly the tracker's result
    kept, fragments = relink(raw, [_sims([-1] * int(t.present().sum())) for t in raw], need=2.7)
    assert [np.flatnonzero(t.present()).tolist() for t in kept] == [list(range(9)), [6, 7, 8]]
    assert fragments == 2
    # a switch inside one track becomes two subjects
    kept, _ = relink([_track(range(9))], [_sims([0] * 4 + [1] * 5)], need=2.7)
    assert len(kept) == 2


def test_a_stray_box_leaves_a_labelled_track_and_strangers_keep_theirs():
    from idcrafter.judge.relink import drop_strangers

    tr = _track(range(9))
    kept, strays = drop_strangers(tr, [0.9, 0.8, 0.1, 0.5, 0.35, 0.29, 0.9, 0.9, 0.9])
    assert np.flatnonzero(kept.present()).tolist() == [0, 1, 3, 4, 6, 7, 8]
    assert [np.flatnonzero(s.present()).tolist() for s in strays] == [[2], [5]]
    assert strays[0].frames[2] is tr.frames[2] and kept.frames[0] is tr.frames[0]  # moved, not copied
    assert drop_strangers(tr, [0.5] * 9) == (tr, [])
    with pytest.raises(ValueError, match="similarities"):
        drop_strangers(tr, [0.9])
    # in relink: subject 0's track took a box over two others (cosine 0.05 with it) in frame 4;
    # the box leaves it (no fragment: a single detection), the track keeps its other frames,
    # and an unlabelled track is left exactly as the tracker made it
    sims = _sims([0] * 9)
    sims[4] = [0.05, 0.2, 0.1]
    kept, fragments = relink([tr, _track(range(9), x=30)], [sims, _sims([-1] * 9)], need=2.7)
    assert sorted(np.flatnonzero(t.present()).tolist() for t in kept) == [list(range(9)), [0, 1, 2, 3, 5, 6, 7, 8]]
    assert fragments == 0


@pytest.fixture(scope="module")
def judge():
    from idcrafter.judge.judge import Judge

    return Judge.load()


def test_score_leaves_the_thread_count_alone_unless_asked(judge, monkeypatch):
    import torch

    from idcrafter.errors import InputError
    from idcrafter.world.dataset import make_example

    ex = make_example(3, 0, "heldout", num_subjects=2)
    seen = []
    real = judge._score

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(judge, "_score", spy)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        a = judge.score(ex.clip.frames, list(ex.refs), ex.caption)
        assert seen[-1] == 2 and torch.get_num_threads() == 2  # default: untouched
        b = judge.score(ex.clip.frames, list(ex.refs), ex.caption, threads=1)
        assert seen[-1] == 1 and torch.get_num_threads() == 2  # opt-in: set, then restored
        # the joint with `total`: identity counted as credit (0 at a stranger's 0.2, full at 0.8)
        credit = [min(1.0, max(0.0, (s["face_sim"] - 0.2) / 0.6)) for s in a.per_subject]
        assert a.metrics["face_credit"] == pytest.approx(np.mean(credit), abs=1e-9)
        assert a.metrics["face_bound"] == pytest.approx(
            np.mean([c * (0.5 + 0.5 * s["binding"]) for c, s in zip(credit, a.per_subject)]), abs=1e-9)
        assert a.metrics.keys() == b.metrics.keys()  # the figures do not depend on it (beyond float32 sums)
        assert all(b.metrics[k] == pytest.approx(v, abs=1e-5) for k, v in a.metrics.items() if v is not None)
        monkeypatch.setattr(judge, "_score", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
        with pytest.raises(RuntimeError, match="boom"):
            judge.score(ex.clip.frames, list(ex.refs), ex.caption, threads=1)
        assert torch.get_num_threads() == 2  # restored on error too
        for bad in (0, -1, 1.5, True):
            with pytest.raises(InputError, match="threads"):
                judge.score(ex.clip.frames, list(ex.refs), ex.caption, threads=bad)
    finally:
        torch.set_num_threads(before)
