"""Casting models to a compute dtype while keeping the modules that must stay float32.

diffusers keeps a model's `_keep_in_fp32_modules` (norms, time embedding, modulation tables) in
float32 when it loads with `dtype=...`, but `module.to(dtype)` casts everything. `cast_module`
is the in-memory equivalent of the loader's rule, so a pipeline cast in memory and one loaded
from disk in the same dtype hold the same weights.
"""

from __future__ import annotations

import torch
from torch import nn


def keeps_fp32(name: str, keep: tuple[str, ...] | list[str]) -> bool:
    """Whether tensor `name` (dotted) belongs to a module listed in `keep`: diffusers' loader
    tests `any(m in name ...)`; a name component equal to an entry is the same rule without
    its substring accidents ("norm1" would also match "norm10")."""
    return bool(keep) and any(part in keep for part in name.split("."))


def cast_module(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast floating parameters and buffers to `dtype` in place, keeping the model's
    `_keep_in_fp32_modules` in float32. Returns `module`."""
    keep = tuple(getattr(module, "_keep_in_fp32_modules", None) or ())
    for name, p in module.named_parameters():
        if p.is_floating_point():
            want = torch.float32 if keeps_fp32(name, keep) else dtype
            if p.dtype != want:
                p.data = p.data.to(want)
    for name, b in list(module.named_buffers()):
        if b.is_floating_point() and b.dtype != dtype and not keeps_fp32(name, keep):
            owner_name, _, leaf = name.rpartition(".")
            owner = module.get_submodule(owner_name) if owner_name else module
            owner._buffers[leaf] = b.to(dtype)
    return module


def base_dtype(model: nn.Module) -> torch.dtype:
    """The compute dtype of a model: its first floating parameter outside `_keep_in_fp32_modules`
    (a diffusers Wan lists `scale_shift_table` first and keeps it in float32, so
    `next(model.parameters()).dtype` is float32 even for a bf16 model)."""
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, p in model.named_parameters():
        if p.is_floating_point() and not keeps_fp32(name, keep):
            return p.dtype
    return torch.float32
