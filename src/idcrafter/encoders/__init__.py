"""Condition encoders: UMT5 text encoder, Qwen2.5-VL grounder, reference-image preparation."""
