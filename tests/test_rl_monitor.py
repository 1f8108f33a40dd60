"""The hacking monitor: the flag rule by hand, audit figures in metrics.jsonl and report.json,
early stop, and its state surviving a resume."""

import json

import pytest

from idcrafter.config import apply_overrides
from idcrafter.rl.grpo import GRPOTrainer
from idcrafter.rl.monitor import hacking_flags
from idcrafter.rl.recipes import rl_recipe
from idcrafter.scorers import ScoreReport
from idcrafter.train.logger import read_metrics


def test_hacking_flags_by_hand():
    audits = [{"face": 0.5, "quality": 0.9}, {"face": 0.6, "quality": 0.85}, {"face": 0.7, "quality": 0.7}]
    assert hacking_flags([0.1, 0.2, 0.3], audits, ["face", "quality"], 3, 0.05) == ["quality"]
    assert hacking_flags([0.1, 0.2, 0.3], audits, ["face", "quality"], 2, 0.05) == ["quality"]  # 0.85 -> 0.7
    assert hacking_flags([0.3, 0.2, 0.1], audits, ["face", "quality"], 3, 0.05) == []  # reward did not rise
    assert hacking_flags([0.1, 0.2, 0.3], audits, ["quality"], 3, 0.25) == []  # within tolerance
    assert hacking_flags([0.1, 0.3], audits[:2], ["face", "quality"], 3, 0.0) == []  # not enough evaluations
    assert hacking_flags([0.1, float("nan"), 0.3], audits, ["missing"], 3, 0.0) == []


class FallingScorer:
    """An audit judge whose figure falls at every evaluation (case by case)."""

    name = "falling"

    def __init__(self):
        self.calls = 0

    def score(self, frames, refs, prompt=None):
        self.calls += 1
        return ScoreReport({"face_sim_mean": 1.0 - 0.05 * self.calls, "quality": 0.5})


def _trainer(tmp_path, *overrides, scorer=None):
    cfg = apply_overrides(rl_recipe("grpo", "debug"), ["checkpoint.every=0", "monitor.every=1", "monitor.n=1",
                                                       "monitor.steps=2", "monitor.window=2", *overrides])
    tr = GRPOTrainer(cfg, tmp_path, monitor_scorer=scorer)
    tr.setup()
    return tr


def test_monitor_flags_rising_reward_with_falling_audit_and_stops(tmp_path):
    tr = _trainer(tmp_path, "train.steps=6", "monitor.stop=true", "monitor.tolerance=0.01",
                  "monitor.metrics=[\"face_sim_mean\",\"quality\"]", scorer=FallingScorer())
    tr.train()
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "audit/face_sim_mean" in r]
    assert rows and all("audit/reward" in r and "monitor/hacking" in r for r in rows)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["hacking_detected"] and report["flags"][0]["falling"] == ["face_sim_mean"]
    stop = report["flags"][0]["step"]
    assert tr.step == stop < 6  # stopped at the first flag (the reward of the debug recipe rises)
    assert (tmp_path / "checkpoints" / f"step_{stop:08d}").is_dir()
    assert (tmp_path / "audit" / f"step_{stop:08d}.json").is_file()


def test_monitor_with_the_sprites_judge_logs_audit_figures(tmp_path):
    tr = _trainer(tmp_path, "train.steps=1", "monitor.scorer=sprites")
    tr.train()
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "audit/face_sim_mean" in r]
    assert len(rows) == 1 and rows[0]["audit/errors"] == 0
    assert 0.0 <= rows[0]["audit/quality"] <= 1.0


def test_monitor_state_survives_resume(tmp_path):
    tr = _trainer(tmp_path, "train.steps=2", "checkpoint.every=1", scorer=FallingScorer())
    tr.train()
    cfg = apply_overrides(rl_recipe("grpo", "debug"), ["checkpoint.every=1", "monitor.every=1", "monitor.n=1",
                                                       "monitor.steps=2", "monitor.window=2", "train.steps=3"])
    again = GRPOTrainer(cfg, tmp_path, resume=True, monitor_scorer=FallingScorer())
    again.setup()
    assert again.monitor.steps == [1, 2] and len(again.monitor.audits) == 2
    assert [a["face_sim_mean"] for a in again.monitor.audits] == pytest.approx([0.95, 0.90])


def _audit_judge_or_skip():
    from idcrafter.errors import MissingWeightsError
    from idcrafter.scorers import build_scorer

    try:
        return build_scorer("sprites-audit")
    except MissingWeightsError as exc:
        pytest.skip(f"the audit judge is not shipped yet ({exc})")


def test_monitor_with_the_shipped_audit_judge_logs_its_attribute_figures(tmp_path):
    """The joint of the monitor and the real audit judge (`sprites-audit`, the recipes' default)."""
    _audit_judge_or_skip()
    tr = _trainer(tmp_path, "train.steps=1", "monitor.scorer=sprites-audit",
                  'monitor.metrics=["face_sim_mean","attr_acc_mean"]')
    tr.train()
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "audit/attr_acc_mean" in r]
    assert len(rows) == 1 and rows[0]["audit/errors"] == 0
    assert 0.0 <= rows[0]["audit/attr_acc_mean"] <= 1.0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["scorer"] == "sprites-audit" and len(report["evaluations"]) == 1


def test_a_missing_audit_scorer_fails_at_set_up_not_mid_run(tmp_path):
    from idcrafter.errors import InputError

    cfg = apply_overrides(rl_recipe("grpo", "debug"), ["monitor.every=1", "monitor.scorer=nope"])
    with pytest.raises(InputError, match="monitor.every=0"):
        GRPOTrainer(cfg, tmp_path).setup()
