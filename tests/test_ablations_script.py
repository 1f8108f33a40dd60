"""scripts/ablations.py: each arm differs from its recipe in exactly the variant's fields."""

import pytest
from script_support import load_script

from idcrafter.errors import InputError
from idcrafter.recipes import recipe


def test_latent_arms_keep_the_recipe_schedule_and_change_one_field():
    abl = load_script("ablations")
    base = recipe("sprites-latent")
    cfg = abl.variant_config("concat/t5", 2000, 1, [], "sprites-latent", "recipe")
    assert cfg.train.steps == base.train.steps and cfg.train.stop_at == 2000
    assert cfg.optim.warmup_steps == base.optim.warmup_steps
    assert cfg.model.codec == "wan-vae" and cfg.model.preset == "sprites-latent"
    assert cfg.model.preset_overrides == {**base.model.preset_overrides, "subject_variant": "concat"}
    vlm = abl.variant_config("hierarchical/vlm", 2000, 1, [], "sprites-latent", "recipe")
    assert vlm.model.vlm_path == "tiny" and vlm.model.preset_overrides["text_mode"] == "vlm"
    short = abl.variant_config("concat/t5", 1000, 1, [], "sprites", "budget")
    assert short.train.steps == 1000 and short.train.stop_at == 0 and short.optim.warmup_steps == 100
    with pytest.raises(InputError, match="past"):
        abl.variant_config("concat/t5", base.train.steps + 1, 1, [], "sprites-latent", "recipe")


def test_results_come_from_the_run_folder_else_the_tracked_copy_and_tables_keep_their_tags(tmp_path):
    import json

    abl = load_script("ablations")
    out, keep = tmp_path / "runs", tmp_path / "kept"
    (out / "concat_t5").mkdir(parents=True)
    keep.mkdir()
    row = {"steps": 10, "generated": {k: 0.5 for k in abl.SHOWN}, "ground_truth": {k: 0.9 for k in abl.SHOWN},
           "ref_gap_curve": [], "final_eval": {}}
    (out / "concat_t5" / "result.json").write_text(json.dumps({**row, "name": "concat/t5"}))
    (keep / "concat_t5.json").write_text(json.dumps({**row, "name": "concat/t5", "note": "stale copy"}))
    (keep / "hierarchical_t5.json").write_text(json.dumps({**row, "name": "hierarchical/t5", "note": "rebuilt"}))
    got = abl.load_results(out, keep)
    assert [r["name"] for r in got] == ["hierarchical/t5", "concat/t5"]  # VARIANTS order
    assert "note" not in got[1]  # the run folder wins over the copy
    doc = tmp_path / "doc.md"
    doc.write_text("# x\n")
    abl.report(got, doc, tmp_path / "a.png", tag="bf16")
    abl.report(got[:1], doc, tmp_path / "b.png", tag="fp32")
    text = doc.read_text()
    assert text.count("<!-- ablation-table:bf16 -->") == 1 and text.count("<!-- ablation-table:fp32 -->") == 1
    assert "- hierarchical/t5: rebuilt" in text
    abl.report(got[1:], doc, tmp_path / "a.png", tag="bf16")  # rewritten in place, the other block kept
    text = doc.read_text()
    bf16 = text.split("<!-- ablation-table:bf16 -->")[1].split("<!-- /ablation-table:bf16 -->")[0]
    assert "hierarchical/t5 | 10" not in bf16 and "concat/t5 | 10" in bf16 and "<!-- ablation-table:fp32 -->" in text


def test_paired_difference_by_hand():
    abl = load_script("ablations")
    arm = [{"face_sim_mean": 0.5}, {"face_sim_mean": 0.7}, {"face_sim_mean": 0.4}]
    base = [{"face_sim_mean": 0.4}, {"face_sim_mean": 0.4}, {"face_sim_mean": 0.4}]
    m, se = abl.paired_difference(arm, base, "face_sim_mean")  # differences 0.1, 0.3, 0.0
    assert m == pytest.approx(0.4 / 3)
    assert se == pytest.approx(((0.1 - 0.4 / 3) ** 2 + (0.3 - 0.4 / 3) ** 2 + (0.4 / 3) ** 2) ** 0.5 / 2 ** 0.5 / 3 ** 0.5)
    assert abl.paired_difference(arm[:2], base, "face_sim_mean") is None  # other casts: not paired
