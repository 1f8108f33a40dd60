"""Speed of one SFT micro-step (forward + backward) of a recipe, bf16 autocast vs fp32,
measured interleaved in one process so both see the same machine load.

    .venv/bin/python scripts/sft_speed.py --recipe sprites --threads 1 2 --repeats 3

With `--latent-cache DIR` it compares instead encoding the batch (the codec's encoder on the
clip and the references, as every uncached step does) with reading it from a latent cache
(`idcrafter train cache-latents`), both under the recipe's own precision:

    .venv/bin/idcrafter train cache-latents --recipe sprites-latent --out runs/latents-256 data.limit=256
    .venv/bin/python scripts/sft_speed.py --recipe sprites-latent --threads 1 --repeats 5 \
        --latent-cache runs/latents-256 data.limit=256
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from idcrafter.config import apply_overrides
from idcrafter.recipes import recipe
from idcrafter.train.sft import Trainer


def interleaved(step, variants: tuple, repeats: int) -> dict:
    """{variant: [seconds, ...]}: one warm-up call of each, then `repeats` rounds in `variants` order."""
    for v in variants:
        step(v)
    times: dict = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            times[v].append(step(v))
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="sprites")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latent-cache", help="compare encoding with reading this latent cache")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    if args.latent_cache:
        return cache_speed(args)
    cfg = apply_overrides(recipe(args.recipe), ["train.mixed_precision=no", "eval.every=0", "eval.sample_every=0",
                                                "log.progress=false", "data.prefetch=0", "train.ema_decay=0",
                                                *args.overrides])
    tr = Trainer(cfg, tempfile.mkdtemp(prefix="sft_speed_"))
    tr.setup()
    batch = tr.stream.next()[0]

    def step(bf16: bool) -> float:
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = tr.compute_loss(batch)
        loss.backward()
        tr.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - t

    b = len(batch)
    for threads in args.threads:
        torch.set_num_threads(threads)
        times = interleaved(step, (True, False), args.repeats)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        print(f"threads {threads}: bf16 {med[True]:.2f} s/step ({b / med[True]:.2f} samples/s), "
              f"fp32 {med[False]:.2f} s/step ({b / med[False]:.2f} samples/s), speed-up {med[False] / med[True]:.2f}x")
    tr.close()


def cache_speed(args) -> None:
    """Encoded vs cached micro-steps, interleaved (module docstring)."""
    from idcrafter.train.latent_cache import LatentCache

    cfg = apply_overrides(recipe(args.recipe), ["eval.every=0", "eval.sample_every=0", "log.progress=false",
                                                "data.prefetch=0", "train.ema_decay=0", *args.overrides])
    tr = Trainer(cfg, tempfile.mkdtemp(prefix="sft_speed_"))
    tr.setup()
    cache = LatentCache.open(args.latent_cache, cfg)
    batch = tr.stream.next()[0]

    def step(cached: bool) -> float:
        tr.latents = cache if cached else None
        return tr.timed_micro_step(batch)

    for threads in args.threads:
        torch.set_num_threads(threads)
        times = interleaved(step, (False, True), args.repeats)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        spread = {k: (min(v), max(v)) for k, v in times.items()}
        print(f"threads {threads}, batch {len(batch)}: encoded {med[False]:.2f} s/step "
              f"[{spread[False][0]:.2f}-{spread[False][1]:.2f}], cached {med[True]:.2f} s/step "
              f"[{spread[True][0]:.2f}-{spread[True][1]:.2f}], speed-up {med[False] / med[True]:.2f}x")
    tr.close()


if __name__ == "__main__":
    main()
