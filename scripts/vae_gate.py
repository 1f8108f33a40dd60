"""Gate 1 of the latent generator (issue 13): does the SpriteWorld VAE keep identity?

Judges held-out ground-truth clips and their VAE reconstructions (encode -> posterior mean ->
decode) against the same references and caption, and prints both side by side. The gate: the
reconstructions' face_sim_mean within 0.05 of the ground truth's, total within 0.03.

    .venv/bin/python scripts/vae_gate.py --vae assets/checkpoints/sprites-vae --n 24 [--judge audit] [--json]

`--judge audit` scores with the audit judge (other seeds and architectures): the check that
does not share the embedders the VAE's identity term was trained against.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

KEYS = ("face_sim_mean", "face_sim_min", "subject_sim", "leakage", "action_acc", "quality", "natural", "total")


def main() -> None:
    from idcrafter.judge.judge import Judge
    from idcrafter.models.codecs import load_codec
    from idcrafter.world.dataset import make_example
    from idcrafter.world.scene import WorldConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vae", default="assets/checkpoints/sprites-vae")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--judge", choices=("main", "audit"), default="main")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    codec = load_codec(args.vae)
    if args.judge == "audit":
        from idcrafter.judge.audit import AuditJudge

        judge = AuditJudge.load()
    else:
        judge = Judge.load()
    world = WorldConfig(frames=5, height=48, width=48, ref_size=40)
    rows: dict[str, list[dict]] = {"ground_truth": [], "reconstruction": []}
    psnr = []
    for i in range(args.n):
        ex = make_example(args.seed, i, "heldout", world, num_subjects=2 + i % 3)
        video = torch.from_numpy(ex.clip.frames).permute(3, 0, 1, 2)[None].float().div(127.5).sub(1)
        with torch.no_grad():
            rec = codec.decode(codec.encode(video)).clamp(-1, 1)  # (1, 3, T, H, W)
        psnr.append(10 * np.log10(4.0 / float((rec - video).square().mean())))
        frames = ((rec[0].permute(1, 2, 3, 0).numpy() + 1) * 127.5 + 0.5).clip(0, 255).astype(np.uint8)
        rows["ground_truth"].append(judge.score(ex.clip.frames, list(ex.refs), ex.caption).metrics)
        rows["reconstruction"].append(judge.score(frames, list(ex.refs), ex.caption).metrics)
    out = {name: {k: float(np.mean([r[k] for r in rs if r.get(k) is not None])) for k in KEYS}
           for name, rs in rows.items()}
    out["psnr_db"] = float(np.mean(psnr))
    gt, rc = out["ground_truth"], out["reconstruction"]
    out["gate"] = {"face_sim_mean_gap": gt["face_sim_mean"] - rc["face_sim_mean"],
                   "total_gap": gt["total"] - rc["total"],
                   "passed": gt["face_sim_mean"] - rc["face_sim_mean"] <= 0.05 and gt["total"] - rc["total"] <= 0.03}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{'metric':16s} {'ground truth':>13s} {'reconstruction':>15s}")
    for k in KEYS:
        print(f"{k:16s} {gt[k]:13.3f} {rc[k]:15.3f}")
    print(f"psnr {out['psnr_db']:.2f} dB; gate {out['gate']}")


if __name__ == "__main__":
    main()
