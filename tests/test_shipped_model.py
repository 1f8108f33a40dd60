"""The generator the repository ships (`assets/checkpoints/sprites-sft`): present, small,
safetensors only, with a complete card, and loadable by the pipeline the demo uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "checkpoints" / "sprites-sft"


def test_shipped_generator_is_small_safetensors_with_a_card():
    assert (SHIPPED / "model_index.json").is_file(), f"{SHIPPED} is missing: `make demo` needs it"
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".pkl", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights), weights
    total_mb = sum(p.stat().st_size for p in files) / 2**20
    assert total_mb < 30, f"shipped folder is {total_mb:.1f} MB; keep shipped checkpoints small"
    card = (SHIPPED / "README.md").read_text()
    for needle in ("Command: `idcrafter train sft --recipe sprites", "seed 0", "Steps:", "Training wall time",
                   "## Held-out judge metrics", "| face_sim_mean |", "## Starting weights"):
        assert needle in card, needle
    held = json.loads((SHIPPED / "heldout" / "heldout.json").read_text())
    assert held["config"]["n"] >= 16 and set(held["generated"]) == set(held["ground_truth"])


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_shipped_generator_loads_as_the_sprites_preset():
    from idcrafter.demo import load_generator

    pipe = load_generator(SHIPPED)
    cfg = pipe.transformer.config
    assert (cfg.num_layers, cfg.num_attention_heads * cfg.attention_head_dim) == (6, 128)
    assert pipe.config.reference_size == 36 and pipe.config.default_frames == 5


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_shipped_latent_generator_links_the_shipped_vae_and_loads():
    """The work-in-progress latent DiT: small, with a card, its VAE a relative link to the sibling
    shipped VAE (so a fresh clone resolves it), and loadable as the `sprites-latent` preset."""
    from idcrafter.demo import load_generator

    folder = SHIPPED.parent / "sprites-latent"
    vae = folder / "vae"
    assert vae.is_symlink() and not Path(vae.readlink()).is_absolute(), "the VAE must be a relative link"
    assert vae.resolve() == (SHIPPED.parent / "sprites-vae").resolve()
    files = [p for p in folder.rglob("*") if p.is_file() and "vae" not in p.relative_to(folder).parts]
    assert sum(p.stat().st_size for p in files) / 2**20 < 15
    card = (folder / "README.md").read_text()
    assert "recipe `sprites-latent`" in card and "## Stages" in card and "| face_sim_mean |" in card
    pipe = load_generator(folder)
    assert type(pipe.vae).__name__ == "AutoencoderKLWan"
    assert pipe.config.reference_size == 40 and pipe.config.default_frames == 5
