"""Where and in what precision models run: one definition for every command and API.

Every command that runs a model takes the same three options, defined here once so new
commands import them instead of redefining them:

    from idcrafter.devices import DeviceOption, DtypeOption, OffloadOption
    def my_command(..., device: DeviceOption = None, dtype: DtypeOption = None, offload: OffloadOption = "none"):
        pipe = load_pipeline(folder, device, dtype, offload)

Defaults (`auto`): the best available device (CUDA, then Apple MPS, then the CPU) and, on it,
bfloat16 where the device computes in it natively (CUDA of compute capability 8 or more), float16
on older CUDA devices and on MPS, float32 on the CPU. The CPU default is float32 on purpose: the
SpriteWorld figures of the docs were measured in float32, and bf16 weights change sampled
clips; pass `--dtype bfloat16` to run bf16 on a CPU (fast on CPUs with AMX / AVX512-BF16).

Precision applies to the transformer, the text encoder, the VLM and the subject encoder; the
video codec stays float32 (the Wan VAE decodes visibly worse in bf16, and diffusers' own Wan
examples load it in float32). Modules a model lists in `_keep_in_fp32_modules` (norms, time
embedding, modulation tables) stay float32 whatever the dtype, as diffusers' loader keeps them.

Offload (`--offload`): `none` moves the whole pipeline to the device; `model` and `sequential`
call diffusers' `enable_model_cpu_offload` / `enable_sequential_cpu_offload` (weights wait on
the CPU and move to the device per model / per layer). They save device memory only on an
accelerator. On a CPU, `model` still runs (the "device" is the CPU); `sequential` is refused:
diffusers addresses the CPU as `cpu:0` and accelerate 1.15 then fails on the first offload (the
tests attach the same hooks with device `cpu` to check the pipeline works under them).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from idcrafter.errors import InputError

if TYPE_CHECKING:  # torch is imported where it is used: the CLI defines these options at start-up
    import torch

    from idcrafter.pipeline import IDCrafterPipeline

#: accepted spellings -> torch dtype name
DTYPES: dict[str, str] = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}
OFFLOAD = ("none", "model", "sequential")
#: pipeline components whose precision follows --dtype (the codec stays float32)
DTYPE_COMPONENTS = ("transformer", "text_encoder", "vlm", "subject_encoder")

DeviceOption = Annotated[Optional[str], typer.Option(
    "--device", help="where models run: auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:1, mps")]
DtypeOption = Annotated[Optional[str], typer.Option(
    "--dtype", help="precision of the transformer and encoders: auto (default: bfloat16 on CUDA that supports "
                    "it, float16 on older CUDA and MPS, float32 on CPU), bfloat16, float16, float32")]
OffloadOption = Annotated[str, typer.Option(
    "--offload", help="none (whole pipeline on the device), model or sequential (diffusers' CPU offload: "
                      "less device memory, slower)")]


def best_device() -> "torch.device":
    """CUDA if available, then MPS, then the CPU."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_device(name: str | torch.device | None) -> torch.device:
    """A usable torch device from `auto`/None, `cpu`, `cuda`, `cuda:N` or `mps`; an InputError
    naming what is available otherwise."""
    import torch

    if isinstance(name, torch.device):
        name = str(name)
    if name is None or str(name).strip().lower() in ("", "auto"):
        return best_device()
    text = str(name).strip().lower()
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"--device {name!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: this machine has no CUDA device (torch {torch.__version__}); "
                             f"use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise InputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here "
                             f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise InputError(f"--device {name}: MPS is not available here; use --device cpu or auto")
    elif device.type != "cpu":
        raise InputError(f"--device {name}: unsupported device type {device.type!r}; use auto, cpu, cuda or mps")
    return device


def default_dtype(device: torch.device) -> torch.dtype:
    """bfloat16 where the device computes in it natively, else float16 (accelerators) or float32 (CPU)."""
    import torch

    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype from `auto`/None or a name (bfloat16/bf16, float16/fp16/half, float32/fp32)."""
    import torch

    if isinstance(name, torch.dtype):
        dtype = name
    elif name is None or str(name).strip().lower() in ("", "auto"):
        return default_dtype(device)
    else:
        key = str(name).strip().lower().removeprefix("torch.")
        if key not in DTYPES:
            raise InputError(f"--dtype {name!r} is not a precision: use auto, bfloat16, float16 or float32")
        dtype = getattr(torch, DTYPES[key])
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise InputError(f"--dtype {name}: only float32, bfloat16 and float16 are supported")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"--dtype bfloat16: {torch.cuda.get_device_name(device)} has no bfloat16; use float16")
    return dtype


def place_pipeline(pipe: "IDCrafterPipeline", device: str | torch.device | None = None,
                   dtype: str | torch.dtype | None = None, offload: str = "none") -> "IDCrafterPipeline":
    """Cast the pipeline's models to `dtype` (module docstring: the codec stays float32) and put
    it on `device`, or hand it to diffusers' CPU offload. Returns the same pipeline."""
    import torch

    from idcrafter.utils.dtypes import cast_module

    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    if offload not in OFFLOAD:
        raise InputError(f"--offload {offload!r}: choose one of {', '.join(OFFLOAD)}")
    if offload == "sequential" and dev.type == "cpu":
        # diffusers addresses the device as "cpu:0"; accelerate 1.15 then re-wraps a weight it
        # loads as a plain tensor and fails on the next offload (TypeError in
        # set_module_tensor_to_device). Nothing would be saved anyway: the weights live on the CPU.
        raise InputError("--offload sequential needs an accelerator (cuda or mps): on the CPU the weights already "
                         "live in host memory; use --offload none")
    for name in DTYPE_COMPONENTS:
        comp = getattr(pipe, name, None)
        if isinstance(comp, torch.nn.Module):
            cast_module(comp, dt)
    if offload == "none":
        pipe.to(dev)
    elif offload == "model":
        pipe.enable_model_cpu_offload(device=dev)
    else:
        pipe.enable_sequential_cpu_offload(device=dev)
    return pipe


def load_pipeline(folder: str | Path, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
                  offload: str = "none") -> "IDCrafterPipeline":
    """`IDCrafterPipeline.from_pretrained(folder)` loaded straight into the requested precision
    (the codec in float32) and placed (see `place_pipeline`)."""
    import torch

    from idcrafter.pipeline import IDCrafterPipeline

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        from idcrafter.errors import MissingWeightsError

        raise MissingWeightsError(f"{folder} is not a pipeline folder (no model_index.json): pass a folder written "
                                  f"by IDCrafterPipeline.save_pretrained or `idcrafter build`, e.g. "
                                  f"assets/checkpoints/sprites-sft")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    pipe = IDCrafterPipeline.from_pretrained(str(folder), dtype={"default": dt, "vae": torch.float32},
                                             local_files_only=True)
    return place_pipeline(pipe, dev, dt, offload)
