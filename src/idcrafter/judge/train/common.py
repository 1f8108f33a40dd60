"""What every judge-part trainer shares: a resumable optimisation loop on one CPU thread.

`optimise` runs AdamW with a 5% linear warm-up and cosine decay (or any scheduler a trainer
builds, e.g. the detector's one-cycle). With a `Resume` it saves, every `every` steps, the
model(s), the optimiser, the scheduler, the step and the numpy generator's state to
`<work>/<part>.resume.pt` (atomically; loaded with `torch.load(weights_only=True)`), and a later
call with the same arguments continues from there: the data pools are re-rendered from their
seeds, so a killed training resumes to the same weights it would have reached (up to torch's
own CPU nondeterminism). The checkpoint is deleted once the part is saved.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn


def default_work_dir() -> Path:
    """Where resume checkpoints live: `runs/judge-train` under the current folder."""
    return Path("runs") / "judge-train"


@dataclass
class Resume:
    """Resume checkpoints of one part's training (see the module docstring)."""

    work: Path
    part: str
    every: int = 200

    @property
    def path(self) -> Path:
        return Path(self.work) / f"{self.part}.resume.pt"

    def save(self, step: int, modules: dict[str, nn.Module], opt, sched, rng: np.random.Generator) -> None:
        from idcrafter.utils.io import atomic_write_bytes, ensure_dir

        ensure_dir(self.work)
        state = {"step": step, "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": _rng_state(rng),
                 "modules": {k: m.state_dict() for k, m in modules.items()}}
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self.path, buf.getvalue())

    def restore(self, modules: dict[str, nn.Module], opt, sched, rng: np.random.Generator) -> int:
        """Load a checkpoint if there is one; returns the step to start from (0 without one)."""
        if not self.path.is_file():
            return 0
        state = torch.load(self.path, weights_only=True)
        for k, m in modules.items():
            m.load_state_dict(state["modules"][k])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        _set_rng_state(rng, state["rng"])
        return int(state["step"])

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _rng_state(rng: np.random.Generator) -> dict:
    s = rng.bit_generator.state  # PCG64: 128-bit integers, stored as decimal strings
    return {"bit_generator": s["bit_generator"], "state": str(s["state"]["state"]),
            "inc": str(s["state"]["inc"]), "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def _set_rng_state(rng: np.random.Generator, s: dict) -> None:
    rng.bit_generator.state = {"bit_generator": s["bit_generator"],
                               "state": {"state": int(s["state"]), "inc": int(s["inc"])},
                               "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def optimise(modules: dict[str, nn.Module], loss_at: Callable[[int], tuple[torch.Tensor, dict]], steps: int,
             lr: float, rng: np.random.Generator, resume: Resume | None = None, progress: bool = True,
             desc: str = "train", weight_decay: float = 5e-4, warmup: float = 0.05,
             scheduler: Callable | None = None, extra_params: list[nn.Parameter] | None = None) -> dict[str, float]:
    """AdamW over all `modules`' parameters (+ `extra_params`), resumable.

    `loss_at(step)` draws its batch from `rng` (whose state the checkpoint keeps) and returns
    (loss, logs). `scheduler(opt)` builds the learning-rate schedule (default: `warmup` linear
    warm-up, then cosine decay to 0). Returns the mean of the last 50 steps' logs.
    """
    from tqdm import tqdm

    params = [p for m in modules.values() for p in m.parameters()] + list(extra_params or [])
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    warm = max(1, int(steps * warmup))
    sched = scheduler(opt) if scheduler is not None else torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1.0))))
    start = resume.restore(modules, opt, sched, rng) if resume is not None else 0
    for m in modules.values():
        m.train()
    history: list[dict] = []
    bar = tqdm(range(start, steps), desc=desc, disable=not progress, mininterval=10, initial=start, total=steps)
    for step in bar:
        loss, logs = loss_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append({"loss": loss.item(), **logs})
        if step % 50 == 0:
            bar.set_postfix({k: f"{v:.3f}" for k, v in history[-1].items()})
        if resume is not None and (step + 1) % resume.every == 0 and step + 1 < steps:
            resume.save(step + 1, modules, opt, sched, rng)
    for m in modules.values():
        m.eval()
    tail = history[-50:]
    return {k: float(np.mean([h[k] for h in tail])) for k in tail[0]} if tail else {}


def card_table(figures: dict) -> str:
    """Markdown rows `| key | value |` of the scalar figures."""
    return "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
                     for k, v in figures.items() if not isinstance(v, dict))
