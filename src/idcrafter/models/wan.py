"""Reading diffusers Wan2.1 transformer folders, and `IDCrafterTransformer3DModel.from_wan`.

Host memory: `from_wan` builds the IDCrafter transformer on the meta device (no weights
allocated), reads Wan's safetensors tensor by tensor, casting each to the requested dtype as it
is read, and assigns them into the model (`load_state_dict(assign=True)`: no second copy). Only
the new subject modules are then allocated and initialised. Peak memory is therefore about the
model in the target dtype plus one tensor, instead of an fp32 model next to a second Wan copy
(`scripts/wan_startup_memory.py` measures both).

Dtype: `frozen_dtype` is the dtype of every Wan weight in the result, except the modules the
model keeps in float32 (`_keep_in_fp32_modules`: norms, time embedder, `scale_shift_table`), as
diffusers' own loader does. The default is the dtype of the folder's (or instance's) weights,
read from a tensor outside those modules: reading `next(wan.parameters())` instead would give
float32 for a bf16 Wan, because diffusers lists `scale_shift_table` first and keeps it fp32.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from idcrafter.errors import CorruptFileError, InputError, MissingWeightsError

WAN_KEYS = ("patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
            "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "rope_max_seq_len")
WEIGHTS = "diffusion_pytorch_model.safetensors"


def transformer_folder(path: str | Path) -> Path:
    """The folder holding a Wan transformer's config.json: `path/transformer` (a Wan pipeline
    folder) or `path` itself (a transformer folder)."""
    path = Path(path)
    for cand in (path / "transformer", path):
        if (cand / "config.json").is_file():
            return cand
    raise MissingWeightsError(
        f"no Wan transformer at {path}: put a diffusers-format WanTransformer3DModel there (config.json + "
        f"safetensors), e.g. the folder Wan-AI/Wan2.1-T2V-1.3B-Diffusers or its transformer/ subfolder")


def read_wan_config(path: str | Path) -> dict[str, Any]:
    """The transformer config of a Wan folder, checked for what `from_wan` needs."""
    folder = transformer_folder(path)
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{folder / 'config.json'} is not readable JSON ({exc.__class__.__name__})") from exc
    if not isinstance(cfg, dict) or cfg.get("_class_name", "WanTransformer3DModel") != "WanTransformer3DModel":
        raise InputError(f"{folder} holds a {cfg.get('_class_name') if isinstance(cfg, dict) else '?'}, "
                         "not a WanTransformer3DModel: point at a Wan2.1 text-to-video folder")
    if cfg.get("image_dim") or cfg.get("added_kv_proj_dim"):
        raise InputError(f"{folder}: Wan image-to-video checkpoints are not supported; use a text-to-video Wan2.1")
    defaults = {"cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
                "freq_dim": 256, "patch_size": [1, 2, 2]}
    cfg = {**defaults, **cfg}
    missing = [k for k in WAN_KEYS if k not in cfg]
    if missing:
        raise CorruptFileError(f"{folder / 'config.json'} lacks {', '.join(missing)}: not a Wan2.1 transformer config")
    return cfg


def base_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The Wan part of an `IDCrafterTransformer3DModel` config."""
    base = {k: cfg[k] for k in WAN_KEYS}
    base["patch_size"] = tuple(base["patch_size"])
    return base


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a transformer folder: the shards its index names, or the single file."""
    index = folder / f"{WEIGHTS}.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptFileError(f"{index} is not a safetensors index (weight_map)") from exc
        files = [folder / n for n in names]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise MissingWeightsError(f"{folder}: shard(s) {', '.join(absent[:3])} named by {index.name} are missing")
        return files
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    pickled = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt")]
    hint = f" (only pickled weights {pickled[0]}: convert them to safetensors)" if pickled else ""
    raise MissingWeightsError(f"no {WEIGHTS} (or sharded index) in {folder}{hint}")


def load_wan_state(path: str | Path, dtype: torch.dtype | None, keep: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Every tensor of a Wan transformer folder, each cast to `dtype` as it is read (tensors of
    modules named in `keep` stay float32; `dtype` None keeps the stored dtypes)."""
    from safetensors import safe_open

    from idcrafter.utils.dtypes import keeps_fp32

    state: dict[str, torch.Tensor] = {}
    for f in weight_files(transformer_folder(path)):
        try:
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for k in fh.keys():
                    t = fh.get_tensor(k)
                    if dtype is not None and t.is_floating_point():
                        t = t.to(torch.float32 if keeps_fp32(k, keep) else dtype)
                    state[k] = t
        except (OSError, ValueError, RuntimeError) as exc:
            if isinstance(exc, InputError):
                raise
            raise CorruptFileError(f"{f} is not a readable safetensors file ({exc.__class__.__name__})") from exc
    return state


def stored_dtype(state: dict[str, torch.Tensor], keep: tuple[str, ...]) -> torch.dtype:
    """The dtype of the first floating tensor outside the float32-kept modules (module docstring)."""
    from idcrafter.utils.dtypes import keeps_fp32

    for k, t in state.items():
        if t.is_floating_point() and not keeps_fp32(k, keep):
            return t.dtype
    return torch.float32


def from_wan(cls: type, wan: Any, frozen_dtype: torch.dtype | None = None, **subject_config: Any):
    """`IDCrafterTransformer3DModel.from_wan` (see its docstring and this module's)."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    from idcrafter.utils.dtypes import keeps_fp32

    keep = tuple(cls._keep_in_fp32_modules)
    if isinstance(wan, WanTransformer3DModel):
        cfg = {k: v for k, v in dict(wan.config).items()}
        if cfg.get("image_dim") or cfg.get("added_kv_proj_dim"):
            raise InputError("Wan image-to-video checkpoints are not supported: use a text-to-video Wan2.1")
        state = dict(wan.state_dict())
        if frozen_dtype is not None:
            state = {k: (t.to(torch.float32 if keeps_fp32(k, keep) else frozen_dtype) if t.is_floating_point() else t)
                     for k, t in state.items()}
    else:
        cfg = read_wan_config(wan)
        state = load_wan_state(wan, frozen_dtype, keep)
    dtype = frozen_dtype or stored_dtype(state, keep)
    with init_empty_weights(include_buffers=False):  # rotary tables (non-persistent buffers) stay real
        model = cls(**base_config(cfg), **subject_config)
    new = set(model.new_parameters())
    own = dict(model.named_parameters())
    shapes = [k for k, t in state.items() if k in own and tuple(own[k].shape) != tuple(t.shape)]
    if shapes:
        k = shapes[0]
        raise CorruptFileError(f"Wan weight {k} has shape {tuple(state[k].shape)} but the config builds "
                               f"{tuple(own[k].shape)}: the folder's config.json does not match its weights")
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    bad = [k for k in missing if k not in new]
    if unexpected or bad:
        raise CorruptFileError(f"Wan weights did not map onto the model: unexpected={unexpected[:5]} missing={bad[:5]}")
    del state
    _init_new_modules(model, dtype, keep)
    with torch.no_grad():
        for blk in model.blocks if model.config.subject_attention == "cross" else ():
            blk.subject_branch.to_k.load_state_dict(blk.attn2.to_k.state_dict())
            blk.subject_branch.to_v.load_state_dict(blk.attn2.to_v.state_dict())
            blk.subject_branch.norm_k.load_state_dict(blk.attn2.norm_k.state_dict())
    return model


def _init_new_modules(model: torch.nn.Module, dtype: torch.dtype, keep: tuple[str, ...]) -> None:
    """Allocate the modules still on the meta device (the new ones) and initialise them with
    their own `reset_parameters`, in module order; cast them to `dtype` (kept modules: fp32)."""
    from idcrafter.utils.dtypes import keeps_fp32

    pending = [(n, m) for n, m in model.named_modules() if any(p.is_meta for p in m.parameters(recurse=False))]
    for name, m in pending:
        if not hasattr(m, "reset_parameters"):
            raise RuntimeError(f"{name} ({type(m).__name__}) has no reset_parameters: it cannot be initialised "
                               "after a meta-device build")
        m.to_empty(device="cpu", recurse=False)
        m.reset_parameters()
        for pname, p in m.named_parameters(recurse=False):
            want = torch.float32 if keeps_fp32(f"{name}.{pname}", keep) else dtype
            if p.dtype != want:
                p.data = p.data.to(want)
