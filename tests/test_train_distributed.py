"""Distributed SFT on two CPU processes (torchrun, gloo): gradients are synchronised, and a step
on 2 ranks equals a step on 1 rank with the same global batch."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from idcrafter.config import apply_overrides
from idcrafter.recipes import recipe
from idcrafter.train.sft import Trainer

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["eval.every=0", "checkpoint.every=0", "checkpoint.export_final=false", "train.ema_decay=0",
          "optim.warmup_steps=0", "optim.schedule=constant", "optim.lr=1e-3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(ROOT / "tests" / "dist_worker.py"),
           str(out), "train.steps=3", "data.batch_size=2", *COMMON,
           "eval.every=2", "checkpoint.export_final=true"]  # main-only evaluation and export, with barriers
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def single_step(tmp_path: Path, *overrides: str) -> dict[str, torch.Tensor]:
    tr = Trainer(apply_overrides(recipe("debug"), ["train.steps=1", *COMMON, *overrides]), tmp_path)
    tr.train()
    return {n: p.detach().clone() for n, p in tr.trainable.items()}


def test_ranks_stay_identical(ddp_run):
    a, b = load_file(str(ddp_run / "final_rank0.safetensors")), load_file(str(ddp_run / "final_rank1.safetensors"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    ckpt = ddp_run / "checkpoints" / "step_00000003"
    assert (ckpt / "rng_rank0.json").is_file() and (ckpt / "rng_rank1.json").is_file()
    lines = (ddp_run / "metrics.jsonl").read_text().splitlines()
    assert len([ln for ln in lines if '"loss"' in ln]) == 3  # only the main process logs
    assert len([ln for ln in lines if '"ref_gap/t0.6"' in ln]) == 2  # steps 0 and 2
    assert (ddp_run / "pipeline" / "model_index.json").is_file()


def test_two_ranks_match_one_rank_with_the_same_global_batch(ddp_run, tmp_path):
    two = load_file(str(ddp_run / "step1_rank0.safetensors"))
    one = single_step(tmp_path / "one", "data.batch_size=4")
    accum = single_step(tmp_path / "accum", "data.batch_size=2", "train.grad_accum=2")
    start = Trainer(apply_overrides(recipe("debug"), ["train.steps=1", *COMMON]), tmp_path / "init")
    start.setup()  # the common starting point (weights before any step)
    init = {n: p.detach().clone() for n, p in start.trainable.items()}
    start.close()
    for k in one:
        moved = (one[k] - init[k]).abs().max()
        assert (two[k] - one[k]).abs().max() <= 1e-5 + 1e-3 * moved, k
        assert (accum[k] - one[k]).abs().max() <= 1e-5 + 1e-3 * moved, k
    assert any((one[k] - init[k]).abs().max() > 1e-4 for k in one)  # the step did move weights
