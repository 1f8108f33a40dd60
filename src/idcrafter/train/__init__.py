"""Training: rectified-flow SFT (`sft.Trainer`), its config (`config.Config`), checkpoints, data.

Nothing heavy is imported here; import the submodules you need.
"""
