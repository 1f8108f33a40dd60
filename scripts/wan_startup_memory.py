"""Host memory at start-up: the IDCrafter transformer built from a Wan2.1 folder, measured.

    .venv/bin/python scripts/wan_startup_memory.py              # Wan2.1-1.3B shape, 30 layers
    .venv/bin/python scripts/wan_startup_memory.py --layers 4   # a quick run

Writes a Wan2.1-T2V-1.3B-shaped transformer folder with random bf16 weights (sharded safetensors,
as the published folder is) under --dir once, then measures the peak resident memory of fresh
processes (peak resident set while building, above the process's size after its imports):

- `meta`: `IDCrafterTransformer3DModel.from_wan(folder, frozen_dtype=bfloat16)`, today's path:
  built on the meta device, each tensor read and cast as it is loaded, assigned in place;
- `before`: the path this replaced: diffusers loads the Wan in bf16, a full fp32 IDCrafter model
  is constructed next to it and the Wan state dict copied in (the fp32 dtype read from
  `next(wan.parameters())` then skipped the cast, so the result also stayed fp32).

Per rank, the frozen encoders come on top (UMT5-XXL and Qwen2.5-VL-7B in bf16: 27 GB, see
`scripts/scale_figures.py`); transformers loads them with meta initialisation already, so they
cost their own size once.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# after the imports, a thread samples the resident set every 2 ms while the model is built: the
# figure is the peak above the resident set just before building (imports excluded)
BASELINE = """import threading, time, psutil, torch, diffusers, idcrafter.models.transformer
proc = psutil.Process(); start = proc.memory_info().rss; peak = [start]; done = threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss); time.sleep(0.002)
threading.Thread(target=sample, daemon=True).start()
"""
# touch every weight (tensors read from safetensors may be file-backed pages not yet resident)
MEASURE = """_ = [p.detach().sum() for p in m.parameters()]
done.set(); time.sleep(0.01); peak[0] = max(peak[0], proc.memory_info().rss)
print((peak[0] - start) / 1e9, (proc.memory_info().rss - start) / 1e9)
"""
PATHS = {
    "meta": """
import torch
from idcrafter.models.presets import preset, wan_config
from idcrafter.models.transformer import IDCrafterTransformer3DModel
extra = {k: v for k, v in preset("wan2.1-1.3b").items() if k not in wan_config("wan2.1-1.3b")}
m = IDCrafterTransformer3DModel.from_wan(FOLDER, frozen_dtype=torch.bfloat16, **extra)
""",
    "before": """
import torch
from diffusers import WanTransformer3DModel
from idcrafter.models.presets import preset, wan_config
from idcrafter.models.transformer import IDCrafterTransformer3DModel
wan = WanTransformer3DModel.from_pretrained(FOLDER, dtype=torch.bfloat16)
cfg = {**dict(wan.config)}
base = {k: cfg[k] for k in wan_config("wan2.1-1.3b")}
base["patch_size"] = tuple(base["patch_size"])
extra = {k: v for k, v in preset("wan2.1-1.3b").items() if k not in wan_config("wan2.1-1.3b")}
m = IDCrafterTransformer3DModel(**base, **extra)  # fp32, next to the bf16 Wan
m.load_state_dict(wan.state_dict(), strict=False)
""",
}


def write_folder(folder: Path, layers: int) -> None:
    import torch
    from diffusers import WanTransformer3DModel

    from idcrafter.models.presets import wan_config

    if (folder / "config.json").is_file():
        return
    cfg = {**wan_config("wan2.1-1.3b"), "num_layers": layers}
    with torch.device("meta"):
        wan = WanTransformer3DModel(**cfg)
    wan.to(torch.bfloat16).to_empty(device="cpu")
    with torch.no_grad():
        for name, p in wan.named_parameters():
            p.normal_(0, 0.02)
            if any(k in name for k in WanTransformer3DModel._keep_in_fp32_modules):
                p.data = p.data.float()
    wan.save_pretrained(folder, max_shard_size="2GB")


def peak_gb(kind: str, folder: Path) -> tuple[float, float]:
    code = BASELINE + PATHS[kind].replace("FOLDER", repr(str(folder))) + MEASURE
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-3000:])
    peak, after = res.stdout.strip().splitlines()[-1].split()
    return float(peak), float(after)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/idcrafter-wan-startup"))
    args = ap.parse_args()
    folder = args.dir / f"wan1.3b-{args.layers}layers"
    write_folder(folder, args.layers)
    files = sum(p.stat().st_size for p in folder.glob("*.safetensors")) / 1e9
    res = {k: peak_gb(k, folder) for k in ("meta", "before")}
    out = {"layers": args.layers, "weights_on_disk_gb": files,
           "peak_above_imports_gb": {k: v[0] for k, v in res.items()},
           "held_after_build_gb": {k: v[1] for k, v in res.items()}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
