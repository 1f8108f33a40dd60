"""The SpriteWorld RL recipes start from a shipped generator with the reference size it was trained
with: a mismatch would feed the policy subject tokens SFT never saw (a silent joint bug)."""

import json
from pathlib import Path

import pytest

from idcrafter.rl.recipes import RL_RECIPES, rl_recipe

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("trainer", ["grpo", "nft", "dpo"])
@pytest.mark.parametrize("name", ["sprites", "sprites-latent"])
def test_sprites_recipes_match_their_generator(trainer, name):
    cfg = rl_recipe(trainer, name)
    index = json.loads((ROOT / cfg.model.init_pipeline / "model_index.json").read_text())
    assert cfg.model.reference_size == cfg.data.ref_size == index["reference_size"]
    assert (cfg.model.frames, cfg.model.height, cfg.model.width) == (
        index["default_frames"], index["default_height"], index["default_width"])
    assert (cfg.data.frames, cfg.data.height, cfg.data.width) == (cfg.model.frames, cfg.model.height, cfg.model.width)


def test_latent_recipes_start_from_the_latent_generator():
    for trainer in ("grpo", "nft", "dpo"):
        assert rl_recipe(trainer, "sprites-latent").model.init_pipeline == "assets/checkpoints/sprites-latent"
    grpo = rl_recipe("grpo", "sprites-latent")
    assert grpo.rollout.sde_type == "cps" and grpo.grpo.updates == 4 and grpo.rollout.batch_size == 4
    # a recipe is a fresh object: editing one does not leak into the next
    grpo.optim.lr = 5.0
    assert rl_recipe("grpo", "sprites-latent").optim.lr == 1e-3
    assert set(RL_RECIPES["grpo"]) >= {"debug", "sprites", "sprites-latent", "wan2.1-1.3b", "wan2.1-14b"}


@pytest.mark.parametrize("args,message", [
    (["--recipe", "bogus"], "unknown grpo recipe"),
    (["--recipe", "sprites"], "36 px references"),  # the pixel recipe on the latent generator
])
def test_rl_experiment_refuses_a_wrong_recipe_before_any_work(tmp_path, args, message):
    import subprocess
    import sys

    cmd = [sys.executable, str(ROOT / "scripts" / "rl_experiment.py"), "--generator",
           str(ROOT / "assets/checkpoints/sprites-latent"), "--out", str(tmp_path / "exp"), "--arms", "sft,grpo", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "exp").exists()  # nothing made


@pytest.mark.parametrize("argv", [
    ["grpo", "--recipe", "sprites-latent", "data.ref_size=36"],  # RL data drawn at the pixel model's size
    ["sft", "--recipe", "sprites", f"model.init_pipeline={ROOT / 'assets/checkpoints/sprites-latent'}"],
])
def test_trainers_refuse_references_of_another_size_than_the_model(tmp_path, argv):
    """The check at the trainers' depth (builder.check_reference_size): a continued pipeline's own
    reference size wins over the recipe's, and data at another size is refused, not resampled."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "idcrafter.train.cli", *argv, "--run-dir", str(tmp_path / "run"),
                          "train.steps=1"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "data.ref_size=" in res.stderr and "takes 40 px references" in res.stderr
    assert not (tmp_path / "run").exists()


def test_rl_experiment_regenerates_held_out_clips_when_the_weights_or_sampler_change(tmp_path, monkeypatch):
    """The experiment keeps each arm's held-out clips; a run extended in the same folder exports new
    weights, and a stochastic evaluation samples otherwise: neither may reuse the kept clips."""
    import argparse
    import shutil

    import numpy as np
    from safetensors.torch import load_file, save_file

    import idcrafter.generation as G
    from script_support import load_script

    exp = load_script("rl_experiment")
    pipe_dir = tmp_path / "pipe"
    shutil.copytree(ROOT / "assets/checkpoints/sprites-latent", pipe_dir)
    calls = []

    def fake(pipe, cases, settings, *a, **k):  # no sampling: one recognisable clip per case
        calls.append(settings.sampler)
        for c in cases:
            yield G.CaseResult(case=c, frames=np.full((5, 48, 48, 3), len(calls), np.uint8))

    monkeypatch.setattr(G, "generate_and_score", fake)
    args = argparse.Namespace(eval_n=2, eval_steps=2, cfg=1.0, eval_batch=2, eval_sampler="ode",
                              eval_noise_level=None)
    npz = tmp_path / "arm.npz"
    _, first = exp.generate(pipe_dir, npz, args)
    _, again = exp.generate(pipe_dir, npz, args)
    assert calls == ["ode"] and np.array_equal(first[0], again[0])  # kept, not sampled twice
    weights = next((pipe_dir / "transformer").glob("*.safetensors"))
    state = load_file(str(weights))
    name = next(iter(state))
    state[name] = state[name] + 1
    save_file(state, str(weights))  # the run was extended: new weights in the same folder
    _, third = exp.generate(pipe_dir, npz, args)
    assert calls == ["ode", "ode"] and third[0][0, 0, 0, 0] == 2
    args.eval_sampler = "cps"
    exp.generate(pipe_dir, npz, args)
    assert calls == ["ode", "ode", "cps"] and exp.eval_folder_name(args) == "eval-cps0.8"


def test_every_rl_experiment_arm_is_a_valid_config_of_its_trainer():
    """An arm's overrides are typed and validated only when its training starts, an hour into a
    queue: each must apply to its trainer's latent recipe and pass validation now."""
    from idcrafter.config import apply_overrides
    from script_support import load_script

    exp = load_script("rl_experiment")
    for arm, (trainer, extra) in exp.ARMS.items():
        if trainer == "none":
            continue
        cfg = apply_overrides(rl_recipe(trainer, "sprites-latent"), extra).validate()
        if arm in ("grpo_cfg", "grpo_use"):  # rollouts at the users' guidance
            assert cfg.rollout.guidance == 2.5
        if arm == "nft_cps":
            assert cfg.rollout.sde_type == "cps"


def test_rl_experiment_reports_the_training_reward_of_held_out_clips():
    """The report's `composite` column is the reward the arms were trained on, from judge figures:
    checked against a hand computation of 0.6 R_fid + 0.4 R_qual - 0.2 copy_paste."""
    from script_support import load_script

    exp = load_script("rl_experiment")
    row = dict(face_sim_mean=0.4, face_sim_min=0.2, subject_sim=0.5, quality=0.6, natural=0.8, copy_paste=0.1)
    blank = dict(row, face_sim_min=None)  # no subject found: no reward, not a zero
    out = exp.add_composite({"sprites": {"cases": [row, blank], "mean": {}}})["sprites"]
    # R_face = 0.3, R_fid = 0.5 * 0.3 + 0.5 * 0.5 = 0.4, R_qual = 0.6 * 0.6 + 0.4 * 0.8 = 0.68
    assert abs(out["cases"][0]["composite"] - (0.6 * 0.4 + 0.4 * 0.68 - 0.2 * 0.1)) < 1e-9
    assert out["cases"][1]["composite"] is None and abs(out["mean"]["composite"] - 0.492) < 1e-9
