"""SpriteWorld: identities, split, rendering, determinism, captions and the on-disk dataset."""

import json

import numpy as np
import pytest

from idcrafter.errors import InputError
from idcrafter.world.captions import (
    make_caption, match_mentions, one_hot_logprobs, parse_background, parse_caption,
)
from idcrafter.world.dataset import SpriteWorldDataset, make_dataset, make_example
from idcrafter.world.identity import (
    ATTRIBUTES, NUM_FACES, NUM_IDENTITIES, Identity, face_classes, sample_identities,
)
from idcrafter.world.scene import ACTIONS, WorldConfig, render_clip, render_reference, sample_clip


def test_identity_space_is_large_and_ids_round_trip():
    assert NUM_IDENTITIES >= 10**5
    rng = np.random.default_rng(0)
    for code in rng.integers(0, NUM_IDENTITIES, 200):
        assert Identity.from_id(int(code)).id == code


def test_split_is_disjoint_by_face_and_both_sides_are_used():
    train, held = set(face_classes("train")), set(face_classes("heldout"))
    assert not train & held and len(train) + len(held) == NUM_FACES
    assert 0.1 < len(held) / NUM_FACES < 0.3
    rng = np.random.default_rng(1)
    for split in ("train", "heldout"):
        for ident in sample_identities(rng, 4, split):
            assert ident.split == split
            assert (ident.face_id in held) == (split == "heldout")


def test_every_attribute_value_appears_in_training():
    rng = np.random.default_rng(2)
    ids = [i for _ in range(200) for i in sample_identities(rng, 4, "train")]
    for name, n in ATTRIBUTES:
        assert {getattr(i, name) for i in ids} == set(range(n)), name


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_render_shapes_and_ground_truth(k):
    cfg = WorldConfig(frames=5)
    ex = make_example(3, k, "heldout", cfg, num_subjects=k)
    c = ex.clip
    assert c.frames.shape == (5, 48, 48, 3) and c.frames.dtype == np.uint8
    assert c.masks.shape == (5, 48, 48) and c.masks.max() <= k
    assert c.boxes.shape == c.head_boxes.shape == (5, k, 4)
    assert c.visibility.shape == (5, k) and np.all((c.visibility >= 0) & (c.visibility <= 1))
    assert ex.refs.shape == (k, 32, 32, 3)
    # boxes are inside the frame and heads sit inside their bodies' columns
    assert np.all(c.boxes[..., :2] >= 0) and np.all(c.boxes[..., 2:] <= 48)
    assert np.all(c.head_boxes[..., 1] >= c.boxes[..., 1] - 1e-3)
    # each visible subject owns pixels of the mask inside its box
    for f in range(5):
        for i in range(k):
            if c.visibility[f, i] > 0.2:
                x0, y0, x1, y1 = c.boxes[f, i].astype(int)
                assert (c.masks[f, y0:y1, x0:x1] == i + 1).any()


def test_occlusion_lowers_visibility_of_the_farther_subject():
    rng = np.random.default_rng(0)
    cfg = WorldConfig(frames=9)
    seen = False
    for _ in range(30):
        spec = sample_clip(rng, cfg, 2, "train", actions=["swap", "swap"])
        clip = render_clip(spec)
        if clip.visibility.min() < 0.7:
            seen = True
            f, i = np.unravel_index(clip.visibility.argmin(), clip.visibility.shape)
            other = 1 - i
            assert spec.subjects[other].foot_y[f] >= spec.subjects[i].foot_y[f]  # nearer one in front
            break
    assert seen


def test_actions_move_as_named():
    rng = np.random.default_rng(5)
    cfg = WorldConfig(frames=9)
    for act in ["walk_left", "walk_right", "jump", "stay"]:
        spec = sample_clip(rng, cfg, 1, "train", actions=[act])
        b = render_clip(spec).boxes[:, 0]
        cx, top = (b[:, 0] + b[:, 2]) / 2, b[:, 3]
        if act == "walk_left":
            assert cx[-1] < cx[0] - 8
        elif act == "walk_right":
            assert cx[-1] > cx[0] + 8
        elif act == "jump":
            assert top[4] < top[0] - 3 and abs(top[-1] - top[0]) < 1.5
        else:
            assert abs(cx[-1] - cx[0]) < 1


def test_determinism_and_frame_subsampling():
    a = make_example(11, 4, "train")
    b = make_example(11, 4, "train")
    assert np.array_equal(a.clip.frames, b.clip.frames) and a.caption == b.caption
    c = make_example(12, 4, "train")
    assert not np.array_equal(a.clip.frames, c.clip.frames)


def test_reference_is_canonical_on_light_canvas():
    ident = sample_identities(np.random.default_rng(0), 1, "heldout")[0]
    ref = render_reference(ident, 32)
    assert ref.shape == (32, 32, 3)
    assert np.all(ref[0, 0] > 220) and np.all(ref[-1, -1] > 220)  # corners are canvas
    assert np.array_equal(ref, render_reference(ident, 32))


def test_caption_names_every_subject_in_an_order_unrelated_to_references():
    rng = np.random.default_rng(3)
    first_is_ref0 = 0
    for i in range(300):
        k = int(rng.integers(2, 5))
        spec = sample_clip(rng, WorldConfig(frames=5), k, "train")
        cap = make_caption(spec, rng)
        mentions = parse_caption(cap)
        assert len(mentions) == k
        assert parse_background(cap) == spec.background
        order = match_mentions(mentions, [one_hot_logprobs(s.identity) for s in spec.subjects])
        assert sorted(order) == list(range(k))
        for m, r in zip(mentions, order):
            assert m.action == spec.subjects[r].action
            assert all(getattr(spec.subjects[r].identity, a) == v for a, v in m.attributes.items())
        first_is_ref0 += order[0] == 0
    assert first_is_ref0 < 200  # clause order is shuffled relative to reference order


def test_caption_errors_are_clear():
    with pytest.raises(InputError, match="cannot parse"):
        parse_caption("On a beach: a cat sleeps.")
    mentions = parse_caption("In a room: the person with short red hair and a blue shirt waves.")
    assert mentions[0].attributes["hair_colour"] == 3 and mentions[0].action == "wave"
    with pytest.raises(InputError, match="1 subject"):
        match_mentions(mentions, [one_hot_logprobs(Identity.from_id(0))] * 2)


def test_dataset_on_disk_random_access(tmp_path):
    cfg = WorldConfig(frames=5)
    out = make_dataset(tmp_path / "ds", "heldout", 6, seed=9, config=cfg, progress=False)
    ds = SpriteWorldDataset(out)
    assert len(ds) == 6
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split"] == "heldout" and manifest["seed"] == 9
    for i in (5, 0, 3):  # random order
        item = ds[i]
        ex = make_example(9, i, "heldout", cfg)
        assert np.array_equal(item["frames"], ex.clip.frames)
        assert np.array_equal(item["refs"], ex.refs)
        assert item["caption"] == ex.caption and item["num_subjects"] == len(ex.spec.subjects)
    with pytest.raises(InputError, match="already exists"):
        make_dataset(out, "heldout", 2, seed=9, config=cfg, progress=False)
    with pytest.raises(InputError, match="not a SpriteWorld dataset"):
        SpriteWorldDataset(tmp_path)
    import torch.utils.data

    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=True)
    assert len(list(loader)) == 6


def test_actions_cover_the_issue_list():
    for a in ["walk_left", "walk_right", "jump", "wave", "stay", "approach", "swap"]:
        assert a in ACTIONS
