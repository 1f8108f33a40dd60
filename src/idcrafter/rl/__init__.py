"""Online RL post-training of the generator (Flow-GRPO, DiffusionNFT, Diffusion-DPO) and the learned reward model.

Pure maths lives in `advantages.py` and `losses.py`; the sampler with SDE/CPS log-probs is
`idcrafter.sampling` (the same one inference uses); the trainers build on `idcrafter.train.engine`.
"""
