"""The audit judge: attribute accuracy by hand, where the references' true attributes come from,
refusal as a reward, the `--judge audit` command line and the parts being trained apart."""

import json
import subprocess
import sys

import numpy as np
import pytest

from idcrafter.errors import AuditRewardError, InputError
from idcrafter.judge.attributes import (ATTR_NAMES, attribute_accuracy, decode_reference, reference_truth,
                                        wrong_attributes)
from idcrafter.judge.judge import Judge
from idcrafter.judge.parts import AUDIT_MARKER, judge_dir
from idcrafter.world.identity import ATTRIBUTES, Identity
from idcrafter.world.scene import render_reference

AUDIT_DIR = judge_dir() / "audit"
needs_audit = pytest.mark.skipif(not (AUDIT_DIR / "subject.safetensors").is_file() or
                                 not (AUDIT_DIR / "action.safetensors").is_file(),
                                 reason="audit judge parts not trained")
# a character whose every attribute shows (hair, no glasses over the eyes, a pattern)
SHOWN = Identity(head=1, skin=2, hair_style=2, hair_colour=3, eyes=1, accessory=3, shirt=4, pattern=1, pants=2)


def onehot(ident: Identity, **wrong: int) -> dict[str, np.ndarray]:
    """Log-probabilities that read `ident` (with the attributes in `wrong` changed) for sure."""
    vals = {**ident.attributes(), **wrong}
    return {a: np.log(np.eye(n)[vals[a]] * (1 - 1e-6) + 1e-6 / n) for a, n in ATTRIBUTES}


# ---------------------------------------------------------------------- by hand
def test_attribute_accuracy_and_wrong_attributes_by_hand():
    track = onehot(SHOWN, shirt=0, pants=5)  # two visible mistakes of nine
    assert attribute_accuracy(track, None, SHOWN.attributes()) == pytest.approx(7 / 9)
    assert wrong_attributes(track, SHOWN.attributes()) == ["shirt", "pants"]
    # without truth the reference's reading is the truth: the same reading is all right
    assert attribute_accuracy(track, track, None) == 1.0
    # an invisible difference is not a mistake: glasses hide dot / sleepy eyes
    glasses = SHOWN.replace(accessory=2, eyes=0)
    assert wrong_attributes(onehot(glasses, eyes=2), glasses.attributes()) == []


def test_reference_truth_given_then_decoded_then_read():
    ref = render_reference(SHOWN, 32)
    heads_wrong = onehot(SHOWN, skin=0, hair_colour=0, shirt=9)  # the heads misread three attributes
    assert reference_truth(SHOWN.attributes(), ref, heads_wrong) == (SHOWN.attributes(), "given")
    assert reference_truth(SHOWN, ref, heads_wrong) == (SHOWN.attributes(), "given")
    truth, source = reference_truth(None, ref, heads_wrong)
    assert source == "render" and truth == SHOWN.attributes()  # decoded exactly, the heads' mistakes undone
    noisy = np.clip(ref.astype(int) + np.random.default_rng(0).integers(-40, 41, ref.shape), 0, 255).astype(np.uint8)
    truth, source = reference_truth(None, noisy, heads_wrong)
    assert source == "read" and truth == {**SHOWN.attributes(), "skin": 0, "hair_colour": 0, "shirt": 9}
    assert reference_truth(None, np.zeros((32, 20, 3), np.uint8), heads_wrong)[1] == "read"  # not square


def test_decode_reference_recovers_random_identities_from_any_start():
    rng = np.random.default_rng(5)
    for _ in range(6):
        ident = Identity(*[int(rng.integers(n)) for _, n in ATTRIBUTES])
        start = {a: int(rng.integers(n)) for a, n in ATTRIBUTES}
        got = decode_reference(render_reference(ident, 32), start)
        assert got is not None
        # equal up to attributes that do not show (then both render the same reference)
        assert np.array_equal(render_reference(Identity(**got), 32), render_reference(ident, 32))
    assert decode_reference(np.full((32, 32, 3), 30, np.uint8)) is None  # nobody there


class _Bare(Judge):
    """A judge without networks: enough for `_attributes`, which only reads what it is handed."""

    def __init__(self):
        self.kind = "audit"


def test_judge_attribute_figures_by_hand_with_an_unmatched_subject():
    a, b = SHOWN, SHOWN.replace(head=0, skin=4, shirt=1, pants=0)
    ref = {"images": [render_reference(a, 32), render_reference(b, 32), render_reference(a, 32)],
           "attributes": [onehot(a), onehot(b, shirt=7), onehot(a)]}
    emb = {"attributes": [onehot(b, pants=3), onehot(a, shirt=0)]}  # track 0 holds b, track 1 holds a
    subjects = [{}, {}, {}]
    # reference 0 -> track 1 (a, shirt read wrong), reference 1 -> track 0 (b, pants wrong), 2 unmatched
    m = _Bare()._attributes(ref, emb, [1, 0, -1], [None, b.attributes(), None], subjects)
    assert [s["attr_acc"] for s in subjects] == pytest.approx([8 / 9, 8 / 9, 0.0])
    assert m == pytest.approx({"attr_acc_mean": (16 / 9) / 3, "attr_acc_min": 0.0})
    assert [s["attr_source"] for s in subjects] == ["render", "given", "render"]
    assert subjects[0]["attr_wrong"] == ["shirt"] and subjects[1]["attr_wrong"] == ["pants"]
    assert subjects[2]["attr_wrong"] == ATTR_NAMES
    # a swap of identities between tracks reads the other character's attributes: accuracy falls
    _Bare()._attributes(ref, emb, [0, 1, -1], None, subjects)
    assert subjects[0]["attr_acc"] <= 5 / 9 and subjects[1]["attr_acc"] <= 5 / 9


# ---------------------------------------------------------------------- never a reward
def _audit_scorer():
    from idcrafter.scorers import SpritesScorer

    return SpritesScorer(variant="audit", judge=_Bare())


def test_rewards_refuse_the_audit_judge(tmp_path):
    from idcrafter.rewards.composite import CompositeReward
    from idcrafter.rewards.copy_paste import CopyPasteReward
    from idcrafter.rewards.face import FaceReward, JudgeReward

    with pytest.raises(AuditRewardError, match="audit judge"):
        FaceReward(scorer=_audit_scorer())
    with pytest.raises(AuditRewardError):
        JudgeReward(scorer=_audit_scorer())
    with pytest.raises(AuditRewardError):
        CopyPasteReward(scorer=_audit_scorer())
    audit_folder = tmp_path / "audit"
    audit_folder.mkdir()
    (audit_folder / AUDIT_MARKER).write_text("{}")
    with pytest.raises(AuditRewardError, match="holds the audit judge"):
        JudgeReward(weights=audit_folder, scorer=object())
    assert isinstance(AuditRewardError("x"), InputError)

    class Mine(JudgeReward):  # a subclass with its own __init__ is checked once it is whole
        def __init__(self, **kw):
            super().__init__(**kw)
            self.extra = [_audit_scorer()]

    with pytest.raises(AuditRewardError, match="Mine.extra"):
        Mine(scorer=object())
    main = JudgeReward(scorer=object())  # anything but the audit judge is accepted
    CompositeReward(parts=[main])


@needs_audit
def test_audit_scorer_is_refused_by_name_and_main_judge_is_not():
    from idcrafter.rewards import build_reward
    from idcrafter.scorers import build_scorer

    assert build_scorer("sprites-audit").name == "sprites-audit"
    with pytest.raises(AuditRewardError):
        build_reward("face", backend="sprites-audit")
    with pytest.raises(AuditRewardError):
        build_reward("composite", weights=str(AUDIT_DIR))  # the audit folder given as the judge folder


# ---------------------------------------------------------------------- loading and the CLI
@needs_audit
def test_audit_judge_loads_from_either_folder_and_its_marker_makes_it_audit():
    from idcrafter.judge.audit import AuditJudge

    assert AuditJudge.load().kind == "audit" and AuditJudge.load(AUDIT_DIR).kind == "audit"
    assert AuditJudge.load(AUDIT_DIR.parent).kind == "audit"
    assert Judge.load(AUDIT_DIR).kind == "audit"  # the main loader on the audit folder: still the audit judge
    assert Judge.load().kind == "main"
    with pytest.raises(InputError, match="main or audit"):
        Judge.load(kind="other")


def test_audit_parts_are_trained_apart():
    """Every audit part present has another config (width) than the main judge's, and its card
    says how it was trained (command, seed 101, wall time)."""
    from safetensors import safe_open

    parts = sorted(AUDIT_DIR.glob("*.safetensors"))
    if not parts:
        pytest.skip("audit judge parts not trained")
    for p in parts:
        with safe_open(str(p), framework="pt") as f:
            audit_cfg = json.loads(f.metadata()["config"])
        with safe_open(str(judge_dir() / p.name), framework="pt") as f:
            main_cfg = json.loads(f.metadata()["config"])
        assert audit_cfg != main_cfg, p.name
        card = p.with_suffix(".md").read_text()
        assert "--judge audit" in card and "seed=101" in card and "Wall time" in card, p.name
    assert json.loads((AUDIT_DIR / AUDIT_MARKER).read_text())["never_a_reward"] is True


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "idcrafter.cli", *args], capture_output=True, text=True, timeout=300)


def test_cli_judge_bad_judge_value_is_one_line_exit_2(tmp_path):
    for args, needle in ((["--judge", "nope"], "--judge must be main or audit"),
                         (["--judge", "audit", "--face-backend", "dlib"], "--face-backend sprites")):
        res = _cli("judge", "--video", str(tmp_path / "x.mp4"), "--ref", str(tmp_path / "r.png"), *args)
        assert res.returncode == 2 and res.stderr.count("\n") == 1 and needle in res.stderr, res.stderr


@needs_audit
def test_cli_judge_audit_reads_attributes_of_a_ground_truth_clip(tmp_path):
    from idcrafter.cli import write_example
    from idcrafter.world.dataset import make_example

    ex = make_example(44, 0, "heldout", num_subjects=2)
    write_example(ex, tmp_path / "s")
    s = tmp_path / "s"
    res = _cli("judge", "--video", str(s / "clip.mp4"), "--ref", str(s / "ref_0.png"), "--ref", str(s / "ref_1.png"),
               "--prompt", ex.caption, "--judge", "audit", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["attr_acc_mean"] >= 0.85 and out["attr_acc_min"] <= out["attr_acc_mean"]
    assert [p["attr_source"] for p in out["per_subject"]] == ["render", "render"]  # png references decode exactly
    res = _cli("judge", "--video", str(s / "clip.mp4"), "--ref", str(s / "ref_0.png"), "--ref", str(s / "ref_1.png"),
               "--json")
    assert res.returncode == 0 and "attr_acc_mean" not in json.loads(res.stdout)  # the main judge: none
