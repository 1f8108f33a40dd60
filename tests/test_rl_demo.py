"""`make demo` shows the shipped SFT generator and the RL post-trained one side by side, and says so
when the RL folder is absent (docs/rl.md)."""

import json

import pytest

from idcrafter.demo import default_model, run_demo


@pytest.fixture(scope="module")
def sft():
    if not (default_model() / "model_index.json").is_file():
        pytest.skip("the shipped sprites-sft generator is absent")
    return default_model()


def test_demo_shows_a_second_generator_beside_sft_from_the_same_seed(sft, tmp_path):
    # the SFT folder stands in for the RL one: the same weights and seed must give the same clip
    result = run_demo(tmp_path / "demo", model=sft, steps=2, subjects=2, compare=sft)
    assert (tmp_path / "demo" / "generated_grpo.mp4").is_file()
    assert all(result["grpo"][k] == result["generated"][k] for k in ("face_sim_mean", "quality", "total"))
    saved = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert saved["grpo_model"] == str(sft)
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| metric | SFT | GRPO | ground truth |" in report


def test_demo_without_the_rl_folder_notes_it_and_shows_sft_alone(sft, tmp_path, capsys):
    missing = tmp_path / "no-grpo"
    result = run_demo(tmp_path / "demo", model=sft, steps=2, subjects=2, compare=missing)
    assert "grpo" not in result and not (tmp_path / "demo" / "generated_grpo.mp4").exists()
    report = (tmp_path / "demo" / "report.md").read_text()
    assert f"No GRPO column: no RL post-trained generator at {missing}" in report
    assert "| metric | generated | ground truth |" in report
    assert "No GRPO column" in capsys.readouterr().out
