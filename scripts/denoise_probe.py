"""Where along the noise scale does a SpriteWorld generator fail? Start the sampler part-way.

For a held-out batch, noise the ground truth to sigma = `start` (1.0 is plain generation; 0.6
keeps the layout) and integrate the pipeline's own ODE schedule from there to 0, with the true
conditions and no guidance. Prints the final latent error against the truth for each start and
writes a sheet (x0 predicted at the start | final | truth). Read the sheet: a sampled clip may
differ from the truth by up to twice the x0 guess's error even for a perfect model (it is a
draw, the guess is the posterior mean), but it should be as clean as a SpriteWorld render;
per-token speckle in the final rows that the x0 rows lack means the low-noise end was not
learned (what the `sprites` recipe's timestep distribution fixed, docs/sprites.md).

    .venv/bin/python scripts/denoise_probe.py --model assets/checkpoints/sprites-sft [--steps 20]
    .venv/bin/python scripts/denoise_probe.py --model runs/latent/checkpoints/step_00001000/pipeline \
        --recipe sprites-latent
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from idcrafter import sampling
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.recipes import recipe
    from idcrafter.train import losses
    from idcrafter.train.conditions import ConditionEncoder
    from idcrafter.train.evaluation import Evaluator
    from idcrafter.utils.media import contact_sheet, save_image

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="assets/checkpoints/sprites-sft")
    ap.add_argument("--recipe", default="sprites", help="the recipe the model was trained with (its held-out batch)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--starts", type=float, nargs="+", default=[1.0, 0.9, 0.6, 0.3])
    ap.add_argument("--out", default="outputs/denoise_probe.png")
    args = ap.parse_args()

    pipe = IDCrafterPipeline.from_pretrained(args.model)
    pipe.transformer.eval()
    dev = torch.device("cpu")
    ev = Evaluator(recipe(args.recipe), pipe, ConditionEncoder(pipe, dev), dev)  # the recipe's held-out batch
    b, z0 = len(ev.batch), ev.z0  # z0: (B, C, F', h, w)
    cond = pipe.encode_conditions([s.caption for s in ev.samples], [list(s.refs) for s in ev.samples], 1.0)
    velocity = pipe.velocity_fn(cond, 1.0)  # no guidance
    gen = torch.Generator().manual_seed(0)
    rows = []
    with torch.no_grad():
        for start in args.starts:
            full = sampling.sigma_schedule(args.steps, shift=pipe.scheduler.config.shift)
            sig = torch.cat([torch.tensor([start]), full[full < start - 1e-6]])  # (S + 1,)
            z_start = losses.interpolate(z0, torch.randn(z0.shape, generator=gen), torch.full((b,), start))
            # the pipeline's own velocity and sampler, so the probe tests exactly what generation runs
            x0 = losses.x0_from_velocity(z_start, velocity(z_start, sig[0]), torch.full((b,), start))
            z = sampling.sample(velocity, z_start, sig).latents
            e0, e1 = ((x0 - z0) ** 2).mean().item(), ((z - z0) ** 2).mean().item()
            print(f"start {start:.2f}: x0 error at start {e0:.4f}, final error {e1:.4f} ({len(sig) - 1} steps)")
            rows += [(f"x0 @ {start:g}", x0), (f"final @ {start:g}", z)]
    rows.append(("truth", z0))

    from idcrafter.generation import to_uint8

    def frames(z: torch.Tensor) -> list[np.ndarray]:
        video = pipe.codec.decode(z[:1]).clamp(-1, 1).add(1).div(2)[0]  # (3, F, H, W)
        return list(to_uint8(video))  # the one float -> uint8 conversion (idcrafter.generation)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    save_image(args.out, contact_sheet([(name, frames(z)) for name, z in rows]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
