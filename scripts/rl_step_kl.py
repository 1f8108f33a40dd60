"""Per-step KL of a LoRA RL checkpoint to its reference, with each step's noise std.

    .venv/bin/python scripts/rl_step_kl.py --run runs/rl-latent/grpo [--checkpoint step_00000080] [--casts 4]

For each of `--casts` training casts (the run's data stream), one rollout with the run's sampler
(`rollout.sde_type`, steps, guidance, noise level) from the checkpoint's raw LoRA weights; at every
stochastic step, printed: the sigma it steps into, the step's noise std, the KL of the policy's
step Gaussian to the reference's (the adapter disabled; mean over elements, as the trainer's
KL), and the RMS change of the velocity. A step whose KL dwarfs the others while its velocity
change does not is a step whose std is too small to train (see `grpo.min_std`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--checkpoint", default=None, help="a folder name under <run>/checkpoints (default: the last)")
    ap.add_argument("--casts", type=int, default=4)
    args = ap.parse_args()
    cfg_path = args.run / "config.json"
    if not cfg_path.is_file():
        fail(f"{args.run} has no config.json: pass an RL run folder with --run")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("train", {}).get("mode") != "lora" or "rollout" not in cfg:
        fail(f"{args.run} is not a LoRA GRPO/NFT run (the reference is the adapter disabled)")
    cks = sorted((args.run / "checkpoints").glob("step_*"))
    ck = args.run / "checkpoints" / args.checkpoint if args.checkpoint else (cks[-1] if cks else None)
    if ck is None or not (ck / "trainable.safetensors").is_file():
        fail(f"no checkpoint with trainable.safetensors in {args.run}/checkpoints: pass --checkpoint NAME")
    import torch
    from safetensors.torch import load_file

    from idcrafter import sampling
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.rl import losses as L
    from idcrafter.rl.policy import Reference, rl_trainable
    from idcrafter.train.config import TrainConfig
    from idcrafter.world.dataset import make_example
    from idcrafter.world.scene import WorldConfig

    torch.set_num_threads(1)
    pipe = IDCrafterPipeline.from_pretrained(cfg["model"]["init_pipeline"])
    pipe.set_progress_bar_config(disable=True)
    trainable = rl_trainable(pipe.transformer, TrainConfig(**cfg["train"]))
    reference = Reference(pipe.transformer, trainable, "lora")  # the adapter disabled, as the trainer's KL
    unexpected = pipe.transformer.load_state_dict(load_file(str(ck / "trainable.safetensors")), strict=False)[1]
    if unexpected:
        fail(f"{ck} holds weights this model does not have ({unexpected[0]}, ...)")
    ro, data = cfg["rollout"], cfg["data"]
    sde_type = "cps" if ro["sde_type"] == "ode" else ro["sde_type"]
    world = WorldConfig.of_pipeline(pipe.config)
    step = sampling.stochastic_step(sde_type)
    level = sampling.DEFAULT_NOISE_LEVEL[sde_type] if ro["noise_level"] is None else ro["noise_level"]
    print(f"{ck}: {sde_type} eta/a {level}, {ro['steps']} steps, guidance {ro['guidance']}")
    print("cast K | sigma_next: std / KL / RMS dv ...")
    for i in range(args.casts):
        ex = make_example(int(data["seed"]), i, data["split"], world, num_subjects=data["num_subjects"])
        cond = pipe.encode_conditions([ex.caption], [list(ex.refs)], ro["guidance"])
        shape = (1, *pipe.codec.latent_shape(*ex.clip.frames.shape[:3]))
        lat = torch.randn(shape, generator=torch.Generator().manual_seed(i))
        with torch.no_grad():
            out = pipe.denoise(cond, lat, ro["steps"], ro["guidance"], mode="sde", sde_type=sde_type,
                               noise_level=level, generator=torch.Generator().manual_seed(1000 + i),
                               return_trajectory=True)
            velocity = pipe.velocity_fn(cond, ro["guidance"])
            cells = []
            for j in out.sde_steps:
                x, s, s2 = out.trajectory[j], float(out.sigmas[j]), float(out.sigmas[j + 1])
                sig = torch.full((1,), s)
                v = velocity(x, sig)
                with reference.active():
                    v_ref = velocity(x, sig)
                a = step(v, s, s2, x, noise_level=level, prev_sample=out.trajectory[j + 1])
                b = step(v_ref, s, s2, x, noise_level=level, prev_sample=out.trajectory[j + 1])
                kl = float(L.kl_to_reference(a.mean, b.mean, a.std)[0])
                dv = float((v - v_ref).pow(2).mean().sqrt())
                cells.append(f"{s2:.3f}: {float(a.std.flatten()[0]):.3f} / {kl:.4f} / {dv:.3f}")
        print(f"cast {i} K={len(ex.refs)} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
