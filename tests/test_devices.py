"""Devices and precision: one --device/--dtype/--offload for every command, the pipeline really
moved and cast, and diffusers' offload helpers working under the pipeline's own code paths."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from idcrafter.devices import load_pipeline, place_pipeline, resolve_device, resolve_dtype
from idcrafter.encoders.text import TextEncoder
from idcrafter.encoders.vlm import VLMGrounder
from idcrafter.errors import InputError
from idcrafter.models.codecs import WanVAECodec
from idcrafter.pipeline import build_pipeline
from idcrafter.utils.dtypes import base_dtype, cast_module, keeps_fp32
from idcrafter.world.dataset import make_example

EX = make_example(0, 0, "heldout", num_subjects=2)


def tiny_pipe(attention: str = "self"):
    torch.manual_seed(0)
    p = build_pipeline("debug", WanVAECodec.tiny(), TextEncoder.tiny(32, max_length=64), VLMGrounder.tiny(64),
                       text_mode="t5+vlm", reference_size=16, subject_attention=attention)
    with torch.no_grad():  # a trained-looking branch, so the subject path matters
        for blk in p.transformer.blocks if attention != "joint" else ():  # "joint" has no gate
            blk.subject_branch.gate.normal_(0, 0.5)
    p.set_progress_bar_config(disable=True)
    return p


def run(p):
    return p(EX.caption, list(EX.refs), height=16, width=16, num_frames=5, num_inference_steps=2,
             generator=torch.Generator().manual_seed(0)).frames


def test_device_and_dtype_resolution():
    assert resolve_device(None) == resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32  # CPU default: the docs' figures are fp32
    assert resolve_dtype("bf16", cpu) == resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("half", cpu) == torch.float16 and resolve_dtype(torch.float32, cpu) == torch.float32
    for bad in ("float64", "int8", "bf17"):
        with pytest.raises(InputError):
            resolve_dtype(bad, cpu)
    for bad in ("gpu", "tpu", "cuda:x"):
        with pytest.raises(InputError):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            resolve_device("cuda")


def test_cast_keeps_the_fp32_modules():
    from idcrafter.models.presets import preset
    from idcrafter.models.transformer import IDCrafterTransformer3DModel

    m = cast_module(IDCrafterTransformer3DModel(**preset("debug")), torch.bfloat16)
    keep = m._keep_in_fp32_modules
    for name, p in m.named_parameters():
        assert p.dtype == (torch.float32 if keeps_fp32(name, keep) else torch.bfloat16), name
    assert m.scale_shift_table.dtype == torch.float32 and m.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    # diffusers lists the fp32 scale_shift_table first: the compute dtype must not be read from it
    assert next(m.parameters()).dtype == torch.float32 and base_dtype(m) == torch.bfloat16
    assert not keeps_fp32("blocks.0.norm10.weight", ("norm1",))  # whole name parts, not substrings


def test_pipeline_is_cast_and_moved_and_generates_in_bf16():
    p = place_pipeline(tiny_pipe(), "cpu", "bfloat16")
    assert base_dtype(p.transformer) == torch.bfloat16 and p.transformer.device.type == "cpu"
    assert p.text_encoder.dtype == torch.bfloat16 and next(p.vlm.parameters()).dtype == torch.bfloat16
    assert next(p.vae.parameters()).dtype == torch.float32  # the codec stays fp32
    out = run(p)
    ref = run(tiny_pipe())
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert 0 < np.abs(out - ref).mean() < 0.1  # bf16 differs from fp32, but only by rounding


def test_load_pipeline_reads_straight_into_the_dtype(tmp_path):
    tiny_pipe().save_pretrained(tmp_path / "p")
    p = load_pipeline(tmp_path / "p", "cpu", "bf16")
    assert base_dtype(p.transformer) == torch.bfloat16 and p.transformer.scale_shift_table.dtype == torch.float32
    assert next(p.vae.parameters()).dtype == torch.float32
    with pytest.raises(InputError, match="not a pipeline folder"):
        load_pipeline(tmp_path, "cpu")


def test_model_cpu_offload_gives_the_same_video():
    base = run(tiny_pipe())
    p = tiny_pipe()
    p.enable_model_cpu_offload(device="cpu")
    assert np.array_equal(run(p), base)


@pytest.mark.parametrize("attention", ["self", "cross", "layered", "joint"])
def test_sequential_offload_hooks_give_the_same_video(attention):
    """diffusers' sequential offload = accelerate's `cpu_offload` on every component: weights on
    the meta device, loaded per module for its forward. The pipeline reads weights outside
    forwards (condition cache, sink key, encoders' devices) and must still work. diffusers' own
    `enable_sequential_cpu_offload` cannot run on a CPU-only machine (it addresses the device as
    cpu:0, which accelerate 1.15 mishandles), so the same hooks are attached with device cpu."""
    from accelerate import cpu_offload

    base = run(tiny_pipe(attention))
    p = tiny_pipe(attention)
    for comp in p.components.values():
        if isinstance(comp, torch.nn.Module):
            cpu_offload(comp, torch.device("cpu"), offload_buffers=len(comp._parameters) > 0)
    assert {q.device.type for q in p.transformer.parameters()} == {"meta"}
    assert p._execution_device.type == "cpu"
    assert np.array_equal(run(p), base)


def test_sequential_offload_on_a_cpu_is_refused_in_one_line():
    with pytest.raises(InputError, match="needs an accelerator"):
        place_pipeline(tiny_pipe(), "cpu", None, offload="sequential")
    with pytest.raises(InputError, match="choose one of"):
        place_pipeline(tiny_pipe(), "cpu", None, offload="everything")


def test_generate_cli_takes_device_and_dtype(tmp_path):
    from idcrafter.utils.media import save_image

    tiny_pipe().save_pretrained(tmp_path / "pipe")
    for i, r in enumerate(EX.refs):
        save_image(tmp_path / f"ref_{i}.png", r)
    cmd = [sys.executable, "-m", "idcrafter.cli", "generate", "--model", str(tmp_path / "pipe"),
           "--ref", str(tmp_path / "ref_0.png"), "--ref", str(tmp_path / "ref_1.png"), "--prompt", EX.caption,
           "--out", str(tmp_path / "o.mp4"), "--steps", "1", "--frames", "5", "--height", "16", "--width", "16"]
    ok = subprocess.run(cmd + ["--device", "cpu", "--dtype", "bfloat16"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "o.mp4").stat().st_size > 0
    bad = subprocess.run(cmd + ["--dtype", "float64", "--overwrite"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "--dtype" in bad.stderr


def test_every_model_command_takes_the_same_device_options():
    from typer.testing import CliRunner

    from idcrafter.cli import app

    runner = CliRunner()
    for cmd in (["generate"], ["eval", "heldout"], ["train", "export"]):
        out = runner.invoke(app, [*cmd, "--help"], env={"COLUMNS": "200"}).output
        assert "--device" in out and "--dtype" in out, cmd
    assert "--offload" in runner.invoke(app, ["generate", "--help"], env={"COLUMNS": "200"}).output
    assert "--no-eval" in runner.invoke(app, ["train", "export", "--help"], env={"COLUMNS": "200"}).output


def test_the_pipeline_is_moved_to_the_resolved_device(monkeypatch):
    """`place_pipeline` hands the resolved device to `pipe.to` (on a GPU machine, cuda)."""
    import idcrafter.devices as dev

    p = tiny_pipe()
    moved = []
    monkeypatch.setattr(type(p), "to", lambda self, *a, **k: moved.append((a, k)) or self)
    monkeypatch.setattr(dev, "best_device", lambda: torch.device("cpu"))
    place_pipeline(p, None, None)
    assert moved == [((torch.device("cpu"),), {})]
