"""One GRPO iteration and one NFT iteration at Wan2.1-1.3B size on this CPU, with random weights.

    OMP_NUM_THREADS=2 .venv/bin/python scripts/rl_wan_size.py [--size 1.3b] [--frames 1 --height 32 --width 32]

The transformer is the `wan2.1-1.3b` preset (30 layers, dim 1536, ffn 8960, 12 heads; the T5-only
prompt path, so no VLM is needed) with random weights, LoRA r32 on Wan's projections as the real
recipes train, a random tiny Wan VAE (16 latent channels, so the DiT's in/out layers are Wan's)
and a tiny text encoder. Each run does the whole iteration of the real trainers: rollouts through
the pipeline's sampler (SDE log-probs for GRPO, ODE for NFT), a reward, advantages, the update
(GRPO with a KL via the disabled adapter; NFT with its EMA old policy). Printed per trainer:
rollout / reward / update seconds, `ratio_mean_first` and `kl_first` (1 and 0 on fresh rollouts),
and the process's peak resident memory after it (`ru_maxrss`, so it only grows).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1.3b", choices=["1.3b", "14b"])
    ap.add_argument("--frames", type=int, default=1)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="sampling steps per rollout")
    args = ap.parse_args()

    import torch

    from idcrafter.config import apply_overrides
    from idcrafter.models.codecs import WanVAECodec
    from idcrafter.rl.grpo import GRPOTrainer
    from idcrafter.rl.nft import NFTTrainer
    from idcrafter.rl.recipes import rl_recipe

    out = {}
    with tempfile.TemporaryDirectory(prefix="rl-wan-size-") as tmp:
        vae = WanVAECodec.tiny(z_dim=16, base_dim=8).save_pretrained(Path(tmp) / "vae")
        common = [
            f"model.preset=wan2.1-{args.size}", "model.preset_overrides={\"text_mode\": \"t5\"}",
            "model.codec=wan-vae", f"model.codec_path={vae}", "model.text_encoder=tiny", "model.text_dim=32",
            f"model.frames={args.frames}", f"model.height={args.height}", f"model.width={args.width}",
            "model.reference_size=32", "data.frames=2", f"data.height={max(args.height, 24)}",
            f"data.width={max(args.width, 24)}", "data.ref_size=32", "train.mode=lora", "train.lora_rank=32",
            "train.lora_alpha=32", "train.ema_decay=0.9", "train.steps=1", "train.deterministic=false",
            "train.threads=0", "checkpoint.every=0", "rollout.groups=1", "rollout.group_size=2",
            "rollout.batch_size=2", f"rollout.steps={args.steps}", "optim.lr=1e-4",
        ]
        runs = [("grpo", GRPOTrainer, ["grpo.beta=0.004", "grpo.clip_range=1e-3", "grpo.timestep_fraction=0.5"]),
                ("nft", NFTTrainer, ["nft.timesteps=1"])]
        for name, cls, extra in runs:
            cfg = apply_overrides(rl_recipe(name, "debug"), common + extra)
            t0 = time.perf_counter()
            tr = cls(cfg, Path(tmp) / name)
            tr.setup()
            n_params = sum(p.numel() for p in tr.model.parameters())
            n_train = sum(p.numel() for p in tr.trainable.values())
            built = time.perf_counter() - t0
            last = tr.train()
            out[name] = {"parameters": n_params, "trainable": n_train, "build_s": round(built, 1),
                         **{k: round(float(last[k]), 4) for k in ("rollout_s", "reward_s", "update_s")
                            if k in last},
                         **{k: last[k] for k in ("ratio_mean_first", "kl_first", "grad_norm") if k in last},
                         "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}
            print(name, json.dumps(out[name]), flush=True)
            del tr
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
    print(json.dumps({"size": args.size, "frames": args.frames, "height": args.height, "width": args.width,
                      "steps": args.steps, **out}, indent=2))


if __name__ == "__main__":
    main()
