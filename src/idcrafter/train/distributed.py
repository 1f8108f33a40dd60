"""Honouring the accelerate launch config, or refusing it in one line.

The trainer creates its `Accelerator` with `cpu=True` on a machine without CUDA. accelerate then
picks `MULTI_CPU` (DDP over gloo) for several processes and silently ignores an FSDP launch
config (it switches to FSDP only for GPU-like backends), so `accelerate launch --config_file
configs/accelerate/fsdp.yaml` used to run plain DDP on a CPU. `honour_launch_config` makes the
config mean what it says:

- FSDP2 on CPU processes: torch's `fully_shard` works over gloo (all-gather, reduce-scatter and
  DTensor state dicts included), so an FSDP launch on several CPU processes gets accelerate's
  FSDP2 engine for real: the plugin built from the launch config's environment, and the
  distributed type set to FSDP, exactly as accelerate sets it on GPUs. Tested on 2 CPU
  processes (tests/test_fsdp_cpu.py): sharded parameters (DTensor), a step equal to DDP's,
  sharded checkpoints that resume.
- Refused with one line (`InputError`): FSDP1 on CPU processes (its flat parameters cannot mix
  the frozen bf16 base with fp32 trainable weights, and accelerate does not run it on CPUs),
  FSDP's CPU parameter offload on a CPU (nothing to offload to), FSDP on a single process
  (nothing to shard: accelerate would silently run without it), and DeepSpeed without CUDA
  (DeepSpeed's engines need a GPU).
"""

from __future__ import annotations

import os
from typing import Any

from idcrafter.errors import InputError


def _env_true(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def honour_launch_config(acc: Any, mixed_precision: str = "no") -> Any:
    """Check the accelerate launch config against what this machine runs (module docstring);
    switch CPU processes to FSDP2 when the config asks for FSDP. Returns `acc`."""
    import torch
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if _env_true("ACCELERATE_USE_DEEPSPEED") and not torch.cuda.is_available():
        raise InputError("the accelerate config asks for DeepSpeed, which needs CUDA GPUs; this machine has none: "
                         "launch with a CPU config (torchrun --nproc_per_node N, or configs/accelerate/fsdp.yaml)")
    if not _env_true("ACCELERATE_USE_FSDP") or acc.distributed_type == DistributedType.FSDP:
        return acc
    if acc.distributed_type == DistributedType.NO:
        raise InputError("the accelerate config asks for FSDP but this is a single process: nothing would be sharded "
                         "(accelerate would silently train without FSDP); launch with --num_processes 2 or more")
    if acc.distributed_type != DistributedType.MULTI_CPU:
        raise InputError(f"the accelerate config asks for FSDP, which accelerate does not run on "
                         f"{acc.distributed_type.value}: use a CUDA or CPU launch")
    plugin = FullyShardedDataParallelPlugin()  # from the launch config's FSDP_* environment
    if plugin.fsdp_version != 2:
        raise InputError("the accelerate config asks for FSDP1 on CPU processes, which cannot be honoured (flat "
                         "parameters cannot mix the frozen bf16 base with fp32 trainable weights): set "
                         "fsdp_version: 2, as configs/accelerate/fsdp.yaml does")
    offload = getattr(plugin, "cpu_offload", None)
    if offload is not None and getattr(offload, "offload_params", False) or \
            type(offload).__name__ == "CPUOffloadPolicy":
        raise InputError("the accelerate config offloads FSDP parameters to the CPU, but the processes already run "
                         "on the CPU: set fsdp_offload_params: false")
    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    # what accelerate does for GPU backends (state.py: distributed_type FSDP + the plugin), on
    # both the process state and the accelerator state, which accelerate reads in different places
    for state in (PartialState(), AcceleratorState()):
        state.distributed_type = DistributedType.FSDP
    AcceleratorState().fsdp_plugin = plugin
    return acc


def check_shardable(model: Any, distributed_type: Any) -> None:
    """FSDP gathers each block's weights only inside its forward; the `layered` subject attention
    carries subject tokens through every block before the video passes (outside those
    forwards), so it cannot run sharded: refused in one line."""
    from accelerate.utils import DistributedType

    if distributed_type == DistributedType.FSDP and getattr(model.config, "subject_attention", "self") == "layered":
        raise InputError("subject_attention=layered runs every block over the subject tokens outside the blocks' "
                         "forwards, which FSDP cannot shard: use subject_attention=self, or DDP")
