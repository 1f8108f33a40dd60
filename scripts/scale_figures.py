"""The parameter and memory figures of docs/scale.md and docs/model.md, measured, printed.

    .venv/bin/python scripts/scale_figures.py                     # parameter counts + memory per GPU
    .venv/bin/python scripts/scale_figures.py --json
    .venv/bin/python scripts/scale_figures.py --forward-backward  # + the real-size 1.3B preset on this CPU

Parameter counts are exact: every model is built on the meta device from its published
architecture (the presets for Wan2.1-1.3B / 14B plus the subject modules; UMT5-XXL's encoder and
Qwen2.5-VL-7B from their published configs; Wan's VAE from diffusers' defaults). LoRA counts are
the adapters peft would add: rank r x (in + out) for every targeted Linear (`train.lora_targets`).
Memory per GPU follows the formulas of docs/scale.md from these counts.

`--forward-backward` builds the real-size `wan2.1-1.3b` transformer with random weights (frozen
base in bf16, LoRA r32 + new modules in fp32, gradient checkpointing), in a fresh process, and
runs one forward and backward at a tiny latent size (1 x 16 x 1 x 8 x 8 latents, 8 text tokens,
one 8 x 8 reference, 8 VLM tokens) under bf16 autocast; it prints both times and the process's
peak resident memory (what building the model and its gradients costs on the host).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

GB = 1e9
PRESETS = ("wan2.1-1.3b", "wan2.1-14b")


def transformer_counts(name: str, lora_rank: int = 32) -> dict[str, int]:
    """Wan base, new subject modules, LoRA on the targets, largest FSDP unit (one block)."""
    import torch

    from idcrafter.models.presets import preset
    from idcrafter.models.transformer import IDCrafterTransformer3DModel
    from idcrafter.train.config import WAN_LORA_TARGETS

    with torch.device("meta"):
        m = IDCrafterTransformer3DModel(**preset(name))
    new = sum(p.numel() for p in m.new_parameters().values())
    total = sum(p.numel() for p in m.parameters())
    lora = sum(lora_rank * (mod.in_features + mod.out_features) for n, mod in m.named_modules()
               if isinstance(mod, torch.nn.Linear) and n.startswith("blocks.")
               and any(n.endswith("." + t) for t in WAN_LORA_TARGETS))
    block = max(sum(p.numel() for p in b.parameters()) for b in m.blocks)
    return {"base": total - new, "new": new, "lora": lora, "trainable_lora": new + lora, "block": block,
            "layers": m.config.num_layers, "dim": m.config.num_attention_heads * m.config.attention_head_dim,
            "ffn": m.config.ffn_dim}


def encoder_counts() -> dict[str, int]:
    """UMT5-XXL encoder, Qwen2.5-VL-7B (bare model, no LM head) and Wan's VAE, from their
    published configurations, on the meta device."""
    import torch
    from diffusers import AutoencoderKLWan
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel, UMT5Config, UMT5EncoderModel

    umt5 = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    qwen = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4,
                         rope_parameters=dict(rope_type="default", rope_theta=1e6, mrope_section=[16, 24, 24])),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                           fullatt_block_indexes=[7, 15, 23, 31]))
    with torch.device("meta"):
        out = {"umt5_xxl_encoder": sum(p.numel() for p in UMT5EncoderModel(umt5).parameters()),
               "qwen2.5_vl_7b": sum(p.numel() for p in Qwen2_5_VLModel(qwen).parameters()),
               "wan_vae": sum(p.numel() for p in AutoencoderKLWan().parameters())}
    return out


def activations_gb(c: dict[str, int], frames: int = 81, height: int = 480, width: int = 832) -> dict[str, float]:
    """bf16 activations of one clip with per-block checkpointing: the stored block inputs L S d
    plus one block recomputed, ~ S (20 d + 2 F) (docs/scale.md); and without checkpointing."""
    s = ((frames - 1) // 4 + 1) * (height // 16) * (width // 16)
    ckpt = (c["layers"] * s * c["dim"] + s * (20 * c["dim"] + 2 * c["ffn"])) * 2 / GB
    full = c["layers"] * s * (20 * c["dim"] + 2 * c["ffn"]) * 2 / GB
    return {"tokens": s, "checkpointed": ckpt, "no_checkpointing": full}


def memory_per_gpu(c: dict[str, int], enc_gb: float, act_gb: float, n: int = 8) -> dict[str, dict[str, float]]:
    """Model states and totals per GPU, batch 1, `lora` mode, EMA on except ZeRO-3 (docs/scale.md)."""
    pf, pt, blk = c["base"], c["trainable_lora"], c["block"]
    states = {
        "DDP": 2 * pf + (16 + 4) * pt + 4 * pt,
        "ZeRO-2": 2 * (pf + pt) + 2 * pt + 16 * pt / n + 4 * pt,
        "ZeRO-3": (2 * (pf + pt) + 16 * pt) / n + 2 * 2 * blk,
        "FSDP2": (2 * pf + (16 + 4) * pt) / n + 2 * 2 * blk,
    }
    return {k: {"states": v / GB, "total": v / GB + enc_gb + act_gb} for k, v in states.items()}


def figures(n: int = 8) -> dict:
    enc = encoder_counts()
    enc_gb = 2 * sum(enc.values()) / GB  # bf16, replicated on every GPU
    out = {"encoders": enc, "encoders_bf16_gb": enc_gb, "gpus": n}
    for name in PRESETS:
        c = transformer_counts(name)
        act = activations_gb(c)
        full_ft = (16 + 4) * (c["base"] + c["new"]) / GB
        out[name] = {**c, "activations": act, "memory": memory_per_gpu(c, enc_gb, act["checkpointed"], n),
                     "full_finetune_states_gb": full_ft, "full_finetune_fsdp_per_gpu_gb": full_ft / n}
    return out


def forward_backward() -> dict[str, float]:
    """Run the real-size forward/backward in a fresh process (module docstring)."""
    code = r'''
import json, resource, time, torch
from idcrafter.models.presets import preset
from idcrafter.models.transformer import IDCrafterTransformer3DModel
from idcrafter.train.config import TrainConfig
from idcrafter.train.modes import setup_trainable
from idcrafter.utils.dtypes import cast_module
torch.manual_seed(0)
with torch.device("meta"):
    m = IDCrafterTransformer3DModel(**preset("wan2.1-1.3b"))
cast_module(m, torch.bfloat16)
m.to_empty(device="cpu")
with torch.no_grad():
    for p in m.parameters():
        p.normal_(0, 0.02)
m.rope.__init__(128, (1, 2, 2), 1024)  # its non-persistent buffers were emptied by to_empty
trainable = setup_trainable(m, TrainConfig(mode="lora"))
m.enable_gradient_checkpointing(); m.train()
g = torch.Generator().manual_seed(0)
x = torch.randn(1, 16, 1, 8, 8, generator=g); t = torch.full((1,), 500.0)
txt = torch.randn(1, 8, 4096, generator=g); refs = torch.randn(1, 1, 16, 1, 8, 8, generator=g)
vlm = torch.randn(1, 8, 3584, generator=g)
t0 = time.perf_counter()
with torch.autocast("cpu", dtype=torch.bfloat16):
    out = m(x, t, txt, subject_latents=refs, grounded_hidden_states=vlm).sample
t1 = time.perf_counter()
out.float().square().mean().backward()
t2 = time.perf_counter()
assert all(p.grad is not None for p in trainable.values())
print(json.dumps({"forward_s": t1 - t0, "backward_s": t2 - t1, "trainable": sum(p.numel() for p in trainable.values()),
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9}))
'''
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def print_table(fig: dict) -> None:
    e = fig["encoders"]
    print(f"frozen encoders: UMT5-XXL encoder {e['umt5_xxl_encoder']:,} + Qwen2.5-VL-7B {e['qwen2.5_vl_7b']:,} "
          f"+ Wan VAE {e['wan_vae']:,} -> E = {fig['encoders_bf16_gb']:.1f} GB in bf16")
    for name in PRESETS:
        c = fig[name]
        print(f"\n[{name}] base {c['base']:,}  new {c['new']:,}  LoRA r32 {c['lora']:,}  "
              f"P_t {c['trainable_lora'] / 1e6:.1f}M  largest FSDP unit {c['block'] / 1e6:.1f}M")
        a = c["activations"]
        print(f"  activations, one 81 x 480 x 832 clip ({a['tokens']:,} tokens): {a['checkpointed']:.1f} GB "
              f"checkpointed, {a['no_checkpointing']:.0f} GB without")
        for k, v in c["memory"].items():
            print(f"  {k:7s} N={fig['gpus']}: model states {v['states']:.1f} GB, total {v['total']:.1f} GB")
        print(f"  full fine-tuning: {c['full_finetune_states_gb']:.0f} GB of states, "
              f"{c['full_finetune_fsdp_per_gpu_gb']:.1f} GB per GPU with FSDP2 at N={fig['gpus']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--forward-backward", action="store_true")
    args = ap.parse_args()
    fig = figures(args.gpus)
    if args.forward_backward:
        fig["forward_backward_1.3b"] = forward_backward()
    if args.json:
        print(json.dumps(fig, indent=2))
        return
    print_table(fig)
    if "forward_backward_1.3b" in fig:
        f = fig["forward_backward_1.3b"]
        print(f"\nwan2.1-1.3b on this CPU (LoRA + checkpointing, bf16 base): forward {f['forward_s']:.2f} s, "
              f"backward {f['backward_s']:.2f} s, peak RSS {f['peak_rss_gb']:.2f} GB")


if __name__ == "__main__":
    main()
