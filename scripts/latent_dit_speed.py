"""Latent DiT width, depth and tokens per frame against training speed (issue 13's sizing question).

Each variant is the `sprites-latent` recipe with `model.preset_overrides`; its micro-step
(forward + backward, batch 16, the recipe's bf16 autocast, one thread) reads the batch from a
latent cache, so only the DiT is timed. The variants run round-robin, `--repeats` rounds after a
warm-up round, so they share the machine's load; printed: median s/step, range, parameters, video
tokens, and the speed relative to the recipe's own size.

    .venv/bin/idcrafter train cache-latents --recipe sprites-latent --out runs/latents-256 data.limit=256
    .venv/bin/python scripts/latent_dit_speed.py --latent-cache runs/latents-256 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import tempfile

import torch

#: name -> preset overrides (the first is the recipe's own size, the reference)
VARIANTS = {
    "dim 128 x 6, patch 2 (recipe)": {},
    "dim 128 x 10": {"num_layers": 10},
    "dim 192 x 6": {"num_attention_heads": 3, "ffn_dim": 768},
    "dim 256 x 6": {"num_attention_heads": 4, "ffn_dim": 1024},
    "dim 128 x 6, patch 1 (4x tokens)": {"patch_size": [1, 1, 1], "max_ref_tokens": 128},
}


def main() -> None:
    from idcrafter.config import apply_overrides
    from idcrafter.recipes import recipe
    from idcrafter.train.latent_cache import LatentCache
    from idcrafter.train.sft import Trainer

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latent-cache", required=True)
    ap.add_argument("--limit", type=int, default=256, help="the cache's data.limit")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = {}
    for name, over in VARIANTS.items():
        cfg = apply_overrides(recipe("sprites-latent"), [
            "eval.every=0", "eval.sample_every=0", "log.progress=false", "data.prefetch=0", "train.ema_decay=0",
            f"data.limit={args.limit}", f"model.preset_overrides={json.dumps(over)}"])
        tr = Trainer(cfg, tempfile.mkdtemp(prefix="dit_speed_"))
        tr.setup()
        tr.latents = LatentCache.open(args.latent_cache, cfg)
        batch = tr.stream.next()[0]
        params = sum(p.numel() for p in tr.model.parameters())
        tokens = tr.model.config.patch_size
        z = tr.latents.lookup(batch)[0]
        video_tokens = z.shape[2] // tokens[0] * (z.shape[3] // tokens[1]) * (z.shape[4] // tokens[2])

        steps[name] = (lambda tr=tr, batch=batch: tr.timed_micro_step(batch), params, video_tokens)
    times: dict[str, list[float]] = {n: [] for n in steps}
    for rnd in range(args.repeats + 1):
        for name, (step, _, _) in steps.items():
            dt = step()
            if rnd:  # round 0 warms up
                times[name].append(dt)
    ref = sorted(times[next(iter(times))])[args.repeats // 2]
    print(f"batch 16, bf16, 1 thread, cached latents, median of {args.repeats} interleaved rounds")
    print("| variant | parameters | video tokens | s/step | range | steps/s relative to the recipe |")
    print("|---|---|---|---|---|---|")
    for name, ts in times.items():
        med = sorted(ts)[len(ts) // 2]
        print(f"| {name} | {steps[name][1] / 1e6:.2f} M | {steps[name][2]} | {med:.2f} | {min(ts):.2f}-{max(ts):.2f} "
              f"| {ref / med:.2f} |")


if __name__ == "__main__":
    main()
