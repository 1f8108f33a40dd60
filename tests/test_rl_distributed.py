"""RL on two CPU processes (torchrun, gloo): each group's samples are spread over the ranks,
rewards are gathered before advantages, the synchronised gradients are the same on both ranks
and equal a single process's on the same samples; weights stay identical."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_dist_worker import dumping  # noqa: E402

from idcrafter.config import apply_overrides  # noqa: E402
from idcrafter.rl.grpo import GRPOTrainer  # noqa: E402
from idcrafter.rl.nft import NFTTrainer  # noqa: E402
from idcrafter.rl.recipes import rl_recipe  # noqa: E402
from idcrafter.train.logger import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# batch 2 per rank = batch 2 in one process: the same rollout batches (and numbers) either way
COMMON = ["train.steps=2", "checkpoint.every=0", "rollout.batch_size=2", "train.mode=full"]
EXTRA = {"grpo": ["grpo.beta=0.04"], "nft": ["nft.kl=0.01"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two(algo: str, out: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "tests" / "rl_dist_worker.py"),
           algo, str(out), *COMMON, *EXTRA[algo]]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.parametrize("algo", ["grpo", "nft"])
def test_two_ranks_sync_gradients_and_match_one_rank(tmp_path, algo):
    two = tmp_path / "two"
    run_two(algo, two)
    g0, g1 = load_file(str(two / "grads_rank0.safetensors")), load_file(str(two / "grads_rank1.safetensors"))
    assert set(g0) == set(g1) and all(torch.equal(g0[k], g1[k]) for k in g0)  # synchronised
    w0, w1 = load_file(str(two / "final_rank0.safetensors")), load_file(str(two / "final_rank1.safetensors"))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)

    cls = {"grpo": GRPOTrainer, "nft": NFTTrainer}[algo]
    one = dumping(cls)(apply_overrides(rl_recipe(algo, "debug"), COMMON + EXTRA[algo]), tmp_path / "one")
    one.train()
    g = load_file(str(tmp_path / "one" / "grads_rank0.safetensors"))
    scale = max(float(v.abs().max()) for v in g.values())
    assert scale > 0
    for k in g:  # the same global batch: the same gradient (up to summation order)
        assert (g[k] - g0[k]).abs().max() <= 1e-4 * scale, k
    r1 = [r["reward"] for r in read_metrics(tmp_path / "one" / "metrics.jsonl") if "reward" in r]
    r2 = [r["reward"] for r in read_metrics(two / "metrics.jsonl") if "reward" in r]
    assert len(r2) == 2 and r1[0] == pytest.approx(r2[0], abs=1e-6)  # every group's samples gathered
