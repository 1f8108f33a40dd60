"""Run under torchrun by test_rl_distributed.py: one GRPO (or NFT) run on the debug recipe,
dumping each rank's synchronised gradients of the first optimizer step and final weights.

    python -m torch.distributed.run --nproc_per_node 2 tests/rl_dist_worker.py grpo|nft OUT_DIR [key=value ...]

Writes OUT_DIR/grads_rank<r>.safetensors and OUT_DIR/final_rank<r>.safetensors.
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file

from idcrafter.config import apply_overrides
from idcrafter.rl.grpo import GRPOTrainer
from idcrafter.rl.nft import NFTTrainer
from idcrafter.rl.recipes import rl_recipe


def dumping(cls):
    class Dumping(cls):
        def sync_gradients(self, reduce: str = "mean") -> None:
            super().sync_gradients(reduce)
            if self.updates == 0:
                grads = {n: p.grad.detach().clone().contiguous() for n, p in self.trainable.items()
                         if p.grad is not None}
                save_file(grads, str(self.run_dir / f"grads_rank{self.rank}.safetensors"))

    return Dumping


def main() -> None:
    algo, out, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    cls = {"grpo": GRPOTrainer, "nft": NFTTrainer}[algo]
    trainer = dumping(cls)(apply_overrides(rl_recipe(algo, "debug"), overrides), out)
    trainer.train()
    weights = {n: p.detach().clone().contiguous() for n, p in trainer.trainable.items()}
    save_file(weights, str(out / f"final_rank{trainer.rank}.safetensors"))


if __name__ == "__main__":
    main()
