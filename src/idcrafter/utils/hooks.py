"""Running model code outside `forward` under accelerate's offload hooks.

diffusers' `enable_model_cpu_offload` / `enable_sequential_cpu_offload` attach accelerate hooks
to `forward`: model offload moves a whole model onto the device when its `forward` runs;
sequential offload keeps weights on the meta device and loads each module's own parameters
for the duration of that module's `forward`. Code that reads weights from another method (the
condition cache, the subject branch's sink key, encoders deciding where inputs go) sees CPU or
meta tensors. These two helpers give such code what `forward` would have seen.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def weights_on_device(module: nn.Module) -> Iterator[None]:
    """Inside the block, `module`'s own weights are where its offload hook would put them for a
    `forward` call (on the execution device); afterwards the hook offloads them again. A no-op
    for modules without a hook."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None:
        yield
        return
    hook.pre_forward(module)
    try:
        yield
    finally:
        hook.post_forward(module, None)


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: the execution device of an offload hook on it or on any of its
    submodules, else the device of its first parameter (the CPU for a module without any)."""
    for m in module.modules():
        hook = getattr(m, "_hf_hook", None)
        for h in getattr(hook, "hooks", None) or (hook,):  # accelerate's SequentialHook holds several
            dev = getattr(h, "execution_device", None)
            if dev is not None:
                return torch.device(dev)
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
