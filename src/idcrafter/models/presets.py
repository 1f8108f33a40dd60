"""Model sizes, from `debug` (tests) to Wan2.1-14B. Recipes pick one by name.

Each preset is the full config of `IDCrafterTransformer3DModel`; the Wan part of the real ones
is diffusers' Wan2.1-T2V config, so `from_wan` maps those checkpoints onto them one to one.
"""

from __future__ import annotations

from typing import Any

_WAN_COMMON: dict[str, Any] = dict(
    patch_size=(1, 2, 2), attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
    freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
)

PRESETS: dict[str, dict[str, Any]] = {
    # tiny random model for unit tests (the DESIGN's known-good tiny Wan)
    "debug": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                  out_channels=4, text_dim=32, freq_dim=16, ffn_dim=32, num_layers=2, rope_max_seq_len=32,
                  num_intra_layers=1, num_inter_layers=1, max_subjects=4, max_ref_tokens=64),
    # the embedded default trained on SpriteWorld on a CPU: pixel codec with 3x3 space-to-depth
    # (27 channels at 16x16 for 48x48 frames), 8x8 tokens per frame (6x6 px each), 6x6 tokens per
    # 36 px reference. Sized by a speed probe (scripts/sft_speed.py): dim 128 x 6 layers runs
    # 0.65 s per batch-16 step with bf16 on 2 cores, where dim 192 at 12x12 tokens took 3.1 s.
    "sprites": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=27,
                    out_channels=27, text_dim=64, freq_dim=64, ffn_dim=512, num_layers=6, rope_max_seq_len=64,
                    num_intra_layers=1, num_inter_layers=1, max_subjects=4, max_ref_tokens=64,
                    subject_gate_init=1.0),  # trained from scratch: no Wan to stay equal to
    # the embedded default in latent space: the `sprites` DiT (dim 128 x 6 layers) over the
    # SpriteWorld Wan VAE's latents (16 x 2 x 12 x 12 for 5 x 48 x 48 clips: 4x time, 4x space),
    # patch (1, 2, 2): 6 x 6 tokens per latent frame (8 x 8 px x 4 frames each), 5 x 5 per 40 px
    # reference. Same width and depth as `sprites`, so the two codecs compare at equal DiT cost.
    "sprites-latent": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=16,
                           out_channels=16, text_dim=64, freq_dim=64, ffn_dim=512, num_layers=6,
                           rope_max_seq_len=64, num_intra_layers=1, num_inter_layers=1, max_subjects=4,
                           max_ref_tokens=64, subject_gate_init=1.0),
    # the speed benchmark size of `idcrafter bench model`: dim 256, 6 layers, ffn 1024
    "bench": dict(_WAN_COMMON, num_attention_heads=2, ffn_dim=1024, num_layers=6, rope_max_seq_len=64,
                  num_intra_layers=1, num_inter_layers=1, max_subjects=4, max_ref_tokens=256),
    "wan2.1-1.3b": dict(_WAN_COMMON, num_attention_heads=12, ffn_dim=8960, num_layers=30,
                        num_intra_layers=1, num_inter_layers=1, max_subjects=4, max_ref_tokens=4096,
                        text_mode="t5+vlm", vlm_dim=3584),
    "wan2.1-14b": dict(_WAN_COMMON, num_attention_heads=40, ffn_dim=13824, num_layers=40,
                       num_intra_layers=1, num_inter_layers=1, max_subjects=4, max_ref_tokens=4096,
                       text_mode="t5+vlm", vlm_dim=3584),
}


def preset(name: str, **overrides: Any) -> dict[str, Any]:
    """The config of a named size, with overrides (e.g. subject_variant="concat")."""
    from idcrafter.errors import InputError

    if name not in PRESETS:
        raise InputError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {**PRESETS[name], **overrides}


def wan_config(name: str) -> dict[str, Any]:
    """The `WanTransformer3DModel` part of a preset (to build the matching plain Wan)."""
    keys = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels",
            "text_dim", "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "rope_max_seq_len")
    cfg = {**dict(patch_size=(1, 2, 2), cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6), **PRESETS[name]}
    return {k: cfg[k] for k in keys if k in cfg}


#: transformer classes a preset can select with its `architecture` key ("module:Class")
ARCHITECTURES: dict[str, str] = {
    "idcrafter": "idcrafter.models.transformer:IDCrafterTransformer3DModel",
    "phantom": "idcrafter.models.phantom:PhantomTransformer3DModel",  # the issue-15 peer
}


def transformer_class(architecture: str) -> type:
    """The transformer class of an `architecture` name (ours by default, or a peer)."""
    import importlib

    from idcrafter.errors import InputError

    if architecture not in ARCHITECTURES:
        raise InputError(f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
    module, _, name = ARCHITECTURES[architecture].partition(":")
    return getattr(importlib.import_module(module), name)
