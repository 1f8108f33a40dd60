"""How forgiving is the VAE's decoder to latents the DiT gets slightly wrong?

Held-out clips are encoded, Gaussian noise of standard deviation sigma (in the normalised latent
space the DiT works in, where a clip's latents have unit scale) is added, and the result decoded.
Printed: PSNR per sigma for frame 0 (which the causal VAE encodes alone) and frames 1-4 (one
latent frame for four frames). Written: a contact sheet of the first clip per sigma.

    .venv/bin/python scripts/vae_noise_probe.py --vae assets/checkpoints/sprites-vae --n 8 --out runs/vae-noise.png

A decoder that turns sigma 0.3 into chaos would make a latent DiT hopeless whatever it learns; a
decoder that degrades gracefully leaves the DiT's own error as the thing to fix.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1] (peak-to-peak 2)."""
    return float(10 * np.log10(4.0 / max(float(((a - b) ** 2).mean()), 1e-12)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default="assets/checkpoints/sprites-vae")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--sigmas", default="0,0.1,0.3,0.6,1.0")
    ap.add_argument("--out", type=Path, help="contact sheet of the first clip (.png)")
    args = ap.parse_args()

    from idcrafter.models.codecs import WanVAECodec
    from idcrafter.utils.media import contact_sheet, save_image
    from idcrafter.world.dataset import make_example
    from idcrafter.world.scene import WorldConfig

    torch.set_num_threads(1)
    codec = WanVAECodec.from_pretrained(args.vae)
    world = WorldConfig(frames=5, height=48, width=48, ref_size=40)
    clips = [make_example(args.seed, i, "heldout", world, num_subjects=2 + i % 3).clip.frames for i in range(args.n)]
    video = torch.from_numpy(np.stack(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (N, 3, 5, 48, 48)
    gen = torch.Generator().manual_seed(0)
    rows = []
    print(f"{args.n} held-out clips, {args.vae}")
    print("| sigma | PSNR frame 0 | PSNR frames 1-4 | PSNR clip |")
    print("|---|---|---|---|")
    with torch.no_grad():
        z = codec.encode(video)  # (N, C, 2, 12, 12)
        for sigma in (float(s) for s in args.sigmas.split(",")):
            x = codec.decode(z + sigma * torch.randn(z.shape, generator=gen))
            print(f"| {sigma:g} | {psnr(x[:, :, :1], video[:, :, :1]):.2f} | {psnr(x[:, :, 1:], video[:, :, 1:]):.2f} "
                  f"| {psnr(x, video):.2f} |")
            frames = ((x[0].permute(1, 2, 3, 0).clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
            rows.append((f"sigma {sigma:g}", list(frames)))
    if args.out:
        save_image(args.out, contact_sheet([("ground truth", list(clips[0])), *rows]))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
