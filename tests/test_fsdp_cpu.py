"""Distributed, honestly: the shipped FSDP config really runs FSDP2 on two CPU processes (gloo), a
step equals the single-process step with the same global batch, sharded checkpoints resume
exactly; configs that cannot be honoured fail with one line; DDP gets standard gradient strides."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from idcrafter.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
COMMON = ["train.steps=2", "checkpoint.every=1", "checkpoint.keep_last=3", "eval.every=0", "log.progress=false",
          "optim.warmup_steps=0", "optim.schedule=constant", "optim.lr=1e-3", "data.batch_size=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / "fsdp.yaml"), "--num_processes", "2", "--main_process_port",
           str(free_port()), "-m", "idcrafter.train.cli", "sft", "--recipe", "debug", "--run-dir", str(run_dir),
           *extra, *COMMON]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"))


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fsdp") / "run"
    res = launch(run)
    assert res.returncode == 0, res.stderr[-4000:]
    return run


def test_fsdp_config_runs_fsdp2_on_cpu_processes(fsdp_run, tmp_path):
    from idcrafter.config import apply_overrides
    from idcrafter.recipes import recipe
    from idcrafter.train import checkpoint as ckpt
    from idcrafter.train.sft import Trainer

    marker = ckpt.read_json(fsdp_run / "checkpoints" / "step_00000002" / ckpt.COMPLETE_MARKER)
    assert marker["sharded"] is True and marker["world_size"] == 2  # the trainer's FSDP path, not DDP
    assert (fsdp_run / "checkpoints" / "step_00000002" / "accelerate").is_dir()
    # the same global batch (2 x 2) on one process gives the same weights (EMA ones, as exported)
    single = Trainer(apply_overrides(recipe("debug"), [*COMMON, "data.batch_size=4", "checkpoint.every=0"]),
                     tmp_path / "one")
    single.train()
    one, two = final_weights(tmp_path / "one"), final_weights(fsdp_run)
    assert set(one) == set(two)
    for k in one:
        assert (one[k] - two[k]).abs().max() <= 1e-5 + 1e-4 * one[k].abs().max(), k


def test_fsdp_sharded_checkpoint_resumes_exactly(fsdp_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(fsdp_run, run)
    shutil.rmtree(run / "checkpoints" / "step_00000002")
    shutil.rmtree(run / "pipeline")
    res = launch(run, "--resume")
    assert res.returncode == 0, res.stderr[-4000:]
    a, b = final_weights(fsdp_run), final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_configs_that_cannot_be_honoured_fail_in_one_line(monkeypatch):
    from accelerate.utils import DistributedType

    from idcrafter.train.distributed import honour_launch_config

    class Acc:
        distributed_type = DistributedType.MULTI_CPU

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(InputError, match="FSDP1 on CPU processes"):
        honour_launch_config(Acc())
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.raises(InputError, match="fsdp_offload_params: false"):
        honour_launch_config(Acc())
    Acc.distributed_type = DistributedType.NO
    with pytest.raises(InputError, match="single process"):
        honour_launch_config(Acc())
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    if not torch.cuda.is_available():
        monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
        with pytest.raises(InputError, match="DeepSpeed, which needs CUDA"):
            honour_launch_config(Acc())


def test_single_process_fsdp_launch_is_refused_by_the_trainer(tmp_path, monkeypatch):
    from idcrafter.config import apply_overrides
    from idcrafter.recipes import recipe
    from idcrafter.train.sft import Trainer

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    tr = Trainer(apply_overrides(recipe("debug"), ["train.steps=1"]), tmp_path / "run")
    with pytest.raises(InputError, match="nothing would be sharded"):
        tr.setup()


def test_sink_key_gradient_has_the_bucket_layout():
    """A batch with a row without subjects hands sink_k a slice of SDPA's head-major key gradient;
    DDP then warned on every run. The incoming gradient must have the parameter's strides."""
    from idcrafter.models.presets import preset
    from idcrafter.models.transformer import IDCrafterTransformer3DModel

    torch.manual_seed(0)
    m = IDCrafterTransformer3DModel(**preset("sprites", in_channels=27, out_channels=27))
    bad = []
    for n, p in m.named_parameters():
        p.register_hook(lambda g, n=n, p=p: bad.append((n, g.stride(), p.stride())) if g.stride() != p.stride() else None)
    c = m.config
    x, t = torch.randn(2, c.in_channels, 3, 16, 16), torch.full((2,), 500.0)
    txt, refs = torch.randn(2, 5, c.text_dim), torch.randn(2, 2, c.in_channels, 1, 12, 12)
    out = m(x, t, txt, subject_latents=refs, subject_mask=torch.tensor([[True, True], [False, False]])).sample
    out.square().mean().backward()
    assert not bad, bad[:3]
