"""Run under torchrun by test_reliability_joints.py: on 2 processes with gradient accumulation 2,
train uninterrupted, then train a second run cut after checkpoint 2 and resume it; dump each
rank's final weights of both.

    python -m torch.distributed.run --nproc_per_node 2 tests/reliability_dist_worker.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file

from idcrafter.config import apply_overrides
from idcrafter.recipes import recipe
from idcrafter.train.sft import Trainer

OVERRIDES = ["train.steps=4", "train.grad_accum=2", "data.batch_size=2", "checkpoint.every=2", "eval.every=0",
             "checkpoint.export_final=false", "optim.warmup_steps=1"]


class Crash(Exception):
    pass


class CrashAfterCheckpoint2:
    def on_checkpoint(self, trainer, step, path):
        if step == 2:
            raise Crash()


def dump(trainer: Trainer, path: Path) -> None:
    save_file({n: p.detach().clone().contiguous() for n, p in trainer.trainable.items()}, str(path))


def main() -> None:
    out = Path(sys.argv[1])
    cfg = lambda: apply_overrides(recipe("debug"), OVERRIDES)  # noqa: E731
    a = Trainer(cfg(), out / "uninterrupted")
    a.train()
    rank = a.accelerator.process_index
    dump(a, out / f"uninterrupted_rank{rank}.safetensors")
    b = Trainer(cfg(), out / "cut", callbacks=[CrashAfterCheckpoint2()])
    try:
        b.train()
    except Crash:
        b.close()
    else:
        raise SystemExit("the cut run was not cut")
    c = Trainer(cfg(), out / "cut", resume=True)
    c.train()
    dump(c, out / f"resumed_rank{rank}.safetensors")
    if rank == 0:
        (out / "positions.txt").write_text(f"{a.position} {c.position}\n")


if __name__ == "__main__":
    main()
