"""Run under torchrun by test_train_distributed.py: train a recipe, dump each rank's weights.

    python -m torch.distributed.run --nproc_per_node 2 tests/dist_worker.py OUT_DIR [key=value ...]

Writes OUT_DIR/step1_rank<r>.safetensors (after the first optimizer step) and
OUT_DIR/final_rank<r>.safetensors (at the end).
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file

from idcrafter.config import apply_overrides
from idcrafter.recipes import recipe
from idcrafter.train.sft import Trainer


def dump(trainer: Trainer, tag: str) -> None:
    rank = trainer.accelerator.process_index
    weights = {n: p.detach().clone().contiguous() for n, p in trainer.trainable.items()}
    save_file(weights, str(trainer.run_dir / f"{tag}_rank{rank}.safetensors"))


class DumpFirstStep:
    def on_step_end(self, trainer: Trainer, step: int, metrics: dict) -> None:
        if step == 1:
            dump(trainer, "step1")


def main() -> None:
    out, overrides = Path(sys.argv[1]), sys.argv[2:]
    cfg = apply_overrides(recipe("debug"), overrides)
    trainer = Trainer(cfg, out, callbacks=[DumpFirstStep()])
    trainer.train()
    dump(trainer, "final")


if __name__ == "__main__":
    main()
