"""The figures of docs/scale.md and docs/model.md are the ones scripts/scale_figures.py measures."""

from __future__ import annotations

from pathlib import Path

import pytest
from script_support import load_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def counts():
    mod = load_script("scale_figures")
    return {name: mod.transformer_counts(name) for name in mod.PRESETS}


def test_lora_and_block_counts_by_hand(counts):
    for c in counts.values():
        d, f, layers = c["dim"], c["ffn"], c["layers"]
        # 8 d x d attention projections (self + cross: q, k, v, out) and the FFN's two, rank 32
        assert c["lora"] == 32 * layers * (8 * 2 * d + 2 * (d + f))
        assert c["trainable_lora"] == c["new"] + c["lora"]
    assert counts["wan2.1-1.3b"]["base"] == 1_418_996_800  # the published Wan2.1-T2V-1.3B size
    assert counts["wan2.1-14b"]["base"] == 14_288_491_584


def test_docs_quote_the_measured_counts(counts):
    scale = (ROOT / "docs" / "scale.md").read_text()
    model = (ROOT / "docs" / "model.md").read_text()
    for name, c in counts.items():
        for key in ("base", "new", "lora"):
            assert f"{c[key]:,}" in scale, (name, key)
        assert f"{c['block'] / 1e6:.1f}M" in scale, (name, "block")
        assert f"{c['new'] / 1e6:.1f} M" in model or f"{c['new'] / 1e9:.3f} B" in model, (name, "model.md")


@pytest.mark.slow
def test_real_size_forward_and_backward_on_this_cpu():
    """The 1.3B preset at its real size (random weights, bf16 base, LoRA, checkpointing): one
    forward and backward at a tiny latent size, with the process's peak memory."""
    res = load_script("scale_figures").forward_backward()
    assert res["trainable"] == 43_745_280 + 68_565_504
    assert res["peak_rss_gb"] < 8  # the base really is bf16 (fp32 would be 5.7 GB for the base alone)
