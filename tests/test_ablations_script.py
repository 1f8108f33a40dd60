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
