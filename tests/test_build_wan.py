"""Building from a Wan2.1 folder: the diffusers layout of Wan-AI/Wan2.1-T2V-*-Diffusers with tiny
random weights of the real classes (sharded and not) and a tiny Qwen2.5-VL folder."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from idcrafter.errors import CorruptFileError, InputError, MissingWeightsError
from idcrafter.world.dataset import make_example

EX = make_example(0, 0, "heldout", num_subjects=2)


def make_wan_folder(path: Path, shard: bool = False, layers: int | None = None, seed: int = 0) -> Path:
    """A WanPipeline folder (transformer/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline, WanTransformer3DModel

    from idcrafter.encoders.text import TextEncoder
    from idcrafter.models.codecs import WanVAECodec
    from idcrafter.models.presets import wan_config

    torch.manual_seed(seed)
    cfg = dict(wan_config("debug"), in_channels=16, out_channels=16, text_dim=32)
    if layers:
        cfg["num_layers"] = layers
    te = TextEncoder.tiny(32, max_length=32)
    pipe = WanPipeline(tokenizer=te.tokenizer, text_encoder=te.model, transformer=WanTransformer3DModel(**cfg),
                       vae=WanVAECodec.tiny().vae, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(path, max_shard_size="50KB" if shard else "10GB")
    return path


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from idcrafter.encoders.vlm import VLMGrounder

    root = tmp_path_factory.mktemp("models")
    make_wan_folder(root / "wan")
    make_wan_folder(root / "wan-sharded", shard=True)
    make_wan_folder(root / "wan-4layers", layers=4)
    VLMGrounder.tiny(64).save_pretrained(root / "qwen")
    return root


SIZES = dict(preset="debug", height=16, width=16, frames=5, reference_size=16, text_max_length=32)


def test_from_wan_keeps_the_frozen_base_in_the_requested_dtype(folders):
    from diffusers import WanTransformer3DModel

    from idcrafter.models.transformer import IDCrafterTransformer3DModel
    from idcrafter.utils.dtypes import base_dtype, keeps_fp32

    wan_dir = folders / "wan"
    model = IDCrafterTransformer3DModel.from_wan(wan_dir, frozen_dtype=torch.bfloat16)
    keep = model._keep_in_fp32_modules
    for name, p in model.named_parameters():  # Wan's weights and the new modules alike
        assert p.dtype == (torch.float32 if keeps_fp32(name, keep) else torch.bfloat16), name
    ref = WanTransformer3DModel.from_pretrained(wan_dir, subfolder="transformer", dtype=torch.bfloat16)
    state = model.state_dict()
    for k, v in ref.state_dict().items():  # exactly what diffusers' own loader makes of the folder
        assert state[k].dtype == v.dtype and torch.equal(state[k], v), k
    # the bug: diffusers lists scale_shift_table (kept fp32) first, so next(parameters()) says fp32
    assert next(ref.parameters()).dtype == torch.float32
    from_instance = IDCrafterTransformer3DModel.from_wan(ref)  # default: the Wan's own dtype
    assert base_dtype(from_instance) == torch.bfloat16
    assert from_instance.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert from_instance.subject_embed.pos.dtype == torch.bfloat16  # new modules follow the base


def test_from_wan_builds_on_meta_and_reads_shards(folders, monkeypatch):
    import accelerate

    from idcrafter.models.transformer import IDCrafterTransformer3DModel

    calls = []
    real = accelerate.init_empty_weights

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(accelerate, "init_empty_weights", spy)
    torch.manual_seed(3)
    a = IDCrafterTransformer3DModel.from_wan(folders / "wan")
    torch.manual_seed(3)
    b = IDCrafterTransformer3DModel.from_wan(folders / "wan-sharded" / "transformer")
    assert calls and calls[0] == {"include_buffers": False}
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)  # same seeds, same shards
    assert not any(p.is_meta for p in a.parameters())
    new = a.new_parameters()
    assert all(torch.count_nonzero(p) == 0 for n, p in new.items() if n.endswith((".gate", ".sink_k")))
    pos = new["subject_embed.pos"]
    assert 0.01 < float(pos.detach().std()) < 0.03  # N(0, 0.02), initialised after the meta build
    assert torch.isfinite(torch.cat([p.flatten() for p in new.values()])).all()


def test_a_folder_that_does_not_fit_the_preset_is_refused_at_config_time(folders, tmp_path):
    from idcrafter.build import check_wan_preset
    from idcrafter.train.cli import resolve_config

    with pytest.raises(InputError, match="needs 30 layers x dim 1536"):
        check_wan_preset(folders / "wan", "wan2.1-1.3b")
    with pytest.raises(InputError, match="preset debug needs 2 layers"):
        check_wan_preset(folders / "wan-4layers", "debug")
    with pytest.raises(InputError, match="2 layers x dim 24"):
        resolve_config("wan2.1-1.3b", tmp_path / "run", False, [f"model.wan_path={folders / 'wan'}"])
    with pytest.raises(InputError, match=r"data.height=470 is not a multiple of 16 .*use 464 or 480"):
        resolve_config("wan2.1-1.3b", tmp_path / "run", False, ["data.height=470"])
    with pytest.raises(InputError, match="model.width=830"):
        resolve_config("wan2.1-1.3b", tmp_path / "run", False, ["model.width=830"])
    cmd = [sys.executable, "-m", "idcrafter.cli", "train", "sft", "--recipe", "wan2.1-1.3b", "--print-config",
           f"model.wan_path={folders / 'wan'}"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "preset wan2.1-1.3b" in res.stderr


def test_the_recipe_names_the_wan_folder_once(folders):
    from idcrafter.builder import frozen_sources
    from idcrafter.config import apply_overrides
    from idcrafter.recipes import recipe

    cfg = apply_overrides(recipe("wan2.1-1.3b"), [f"model.wan_path={folders / 'wan'}"])
    src = frozen_sources(cfg.model)
    assert src["vae"] == str(folders / "wan" / "vae")
    assert src["text_encoder"] == str(folders / "wan" / "text_encoder")


def test_python_from_wan_and_pipeline_behaviour(folders, tmp_path):
    from diffusers import DiffusionPipeline
    from PIL import Image

    from idcrafter.pipeline import IDCrafterPipeline

    with pytest.raises(InputError, match="is a Wan2.1 folder"):
        IDCrafterPipeline.from_pretrained(str(folders / "wan"))
    pipe = IDCrafterPipeline.from_wan(folders / "wan", folders / "qwen", text_mode="t5+vlm", **SIZES)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.transformer.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16 and pipe.fps == 16
    assert next(pipe.vae.parameters()).dtype == torch.float32  # the codec stays fp32
    assert set(pipe.component_sources) == {"vae", "text_encoder", "vlm"}
    frames = pipe(EX.caption, list(EX.refs), num_inference_steps=1, output_type="pil",
                  generator=torch.Generator().manual_seed(0)).frames
    assert len(frames) == 1 and len(frames[0]) == 5 and isinstance(frames[0][0], Image.Image)
    assert frames[0][0].size == (16, 16)
    pipe.save_pretrained(tmp_path / "p")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("diffusers").addHandler(handler)
    try:
        loaded = DiffusionPipeline.from_pretrained(str(tmp_path / "p"))
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert type(loaded) is IDCrafterPipeline
    assert not [r for r in records if r.levelno >= logging.WARNING], [r.getMessage() for r in records]


def test_build_command_links_frozen_components(folders, tmp_path):
    from idcrafter.pipeline import IDCrafterPipeline

    out = tmp_path / "built"
    cmd = [sys.executable, "-m", "idcrafter.cli", "build", "--wan", str(folders / "wan"), "--vlm",
           str(folders / "qwen"), "--out", str(out), "--preset", "debug", "--set", "text_mode=t5+vlm"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    for name, target in (("vae", folders / "wan" / "vae"), ("text_encoder", folders / "wan" / "text_encoder"),
                         ("vlm", folders / "qwen")):
        assert (out / name).is_symlink() and (out / name).resolve() == target.resolve()
    assert not (out / "transformer").is_symlink() and (out / "tokenizer").is_dir()
    links = json.loads((out / "links.json").read_text())
    assert set(links) == {"vae", "text_encoder", "vlm"}
    pipe = IDCrafterPipeline.from_pretrained(str(out))
    assert pipe.config.reference_size == 128  # the debug preset's 64 reference tokens hold 128 px
    assert pipe.transformer.config.text_mode == "t5+vlm" and pipe.vlm is not None
    from idcrafter.build import build_folder
    from idcrafter.errors import FolderInUseError

    build_folder(folders / "wan", out, preset="debug", reference_size=16)  # its own folder: replaced
    assert not (out / "vlm").exists() and (out / "vae").is_symlink()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FolderInUseError):
        build_folder(folders / "wan", foreign, preset="debug", reference_size=16)
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1


def test_links_are_resolved_and_checked_at_load_time(folders, tmp_path):
    from idcrafter.build import build_folder
    from idcrafter.pipeline import IDCrafterPipeline

    wan = tmp_path / "wan"
    shutil.copytree(folders / "wan", wan)
    out = build_folder(wan, tmp_path / "p", preset="debug", reference_size=16)
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)  # follows the links: a self-contained folder
    assert not (copy / "vae").is_symlink()
    IDCrafterPipeline.from_pretrained(str(copy))
    moved = tmp_path / "wan-moved"
    wan.rename(moved)
    with pytest.raises(MissingWeightsError, match=r"ln -sfn NEW_PATH .*p/(vae|text_encoder)"):
        IDCrafterPipeline.from_pretrained(str(out))
    (out / "vae").unlink()
    (out / "vae").symlink_to(moved / "vae")
    (out / "text_encoder").unlink()
    (out / "text_encoder").symlink_to(moved / "text_encoder")
    assert IDCrafterPipeline.from_pretrained(str(out)).component_sources["vae"] == str((moved / "vae").resolve())
    other = make_wan_folder(tmp_path / "other", seed=1)
    (out / "vae").unlink()
    (out / "vae").symlink_to(other / "vae")
    cfg = json.loads((other / "vae" / "config.json").read_text())
    cfg["base_dim"] = cfg.get("base_dim", 3)  # same architecture, but a different folder
    (other / "vae" / "config.json").write_text(json.dumps(cfg, indent=3))
    with pytest.raises(CorruptFileError, match="changed since the pipeline was saved"):
        IDCrafterPipeline.from_pretrained(str(out))


def test_generate_on_a_wan_folder_says_how_to_build(folders, tmp_path):
    from idcrafter.utils.media import save_image

    save_image(tmp_path / "r.png", EX.refs[0])
    cmd = [sys.executable, "-m", "idcrafter.cli", "generate", "--model", str(folders / "wan"), "--ref",
           str(tmp_path / "r.png"), "--prompt", "a person", "--out", str(tmp_path / "o.mp4")]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "idcrafter build --wan" in res.stderr


def test_wan_built_pipeline_equals_wan_before_training(folders):
    """Zero gates: the built pipeline's velocity is Wan's, with references or without."""
    from diffusers import WanTransformer3DModel

    from idcrafter.pipeline import IDCrafterPipeline

    pipe = IDCrafterPipeline.from_wan(folders / "wan", dtype="float32", **SIZES)
    wan = WanTransformer3DModel.from_pretrained(folders / "wan", subfolder="transformer").eval()
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 16, 2, 2, 2, generator=g), torch.full((1,), 700.0)
    txt, _ = pipe.prompt_encoder.encode([EX.caption])
    refs = torch.randn(1, 2, 16, 1, 2, 2, generator=g)
    with torch.no_grad():
        ours = pipe.transformer.eval()(x, t, txt, subject_latents=refs).sample
        assert (ours - wan(x, t, txt).sample).abs().max() <= 1e-5
    assert np.isfinite(ours.numpy()).all()
