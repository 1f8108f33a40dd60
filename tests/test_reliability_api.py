"""The Python API refuses bad input with typed one-line errors (issue 10): pipeline loading
(local folders only, strict, corrupt folders), pipeline calls, config overrides and manifests
(property-based, hypothesis), media files and output paths."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from idcrafter.errors import (ConfigError, CorruptFileError, FolderInUseError, InputError, LimitError,
                              MissingWeightsError, OutputPathError)
from reliability_helpers import (bomb_png, copy_tree, edit_json, no_network, save_tiny_pipeline,  # noqa: F401
                                 snapshot, tiny_pipeline)

CAPTION2 = ("On a beach: the person with spiky red hair and a striped blue shirt waves; "
            "the person with a bald head, a hat and a teal shirt walks to the left.")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    return save_tiny_pipeline(tmp_path_factory.mktemp("pipe") / "p")


@pytest.fixture(scope="module")
def pipe(saved):
    from idcrafter.pipeline import IDCrafterPipeline

    p = IDCrafterPipeline.from_pretrained(str(saved))
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def refs():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(2)]


# ------------------------------------------------------------------ loading: local only, strict
def test_hub_name_is_refused_without_touching_the_network(no_network, tmp_path, monkeypatch):
    from idcrafter.pipeline import IDCrafterPipeline

    monkeypatch.chdir(tmp_path)
    for name in ("org/name", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "not-a-folder"):
        with pytest.raises(MissingWeightsError, match="local folders only"):
            IDCrafterPipeline.from_pretrained(name)
    assert no_network == []


def test_local_folder_loads_with_the_network_blocked(no_network, saved, pipe, refs):
    from idcrafter.pipeline import IDCrafterPipeline

    back = IDCrafterPipeline.from_pretrained(saved)  # a Path works too
    back.set_progress_bar_config(disable=True)
    a = back("a person", refs[:1], num_inference_steps=1, generator=torch.Generator().manual_seed(0)).frames
    b = pipe("a person", refs[:1], num_inference_steps=1, generator=torch.Generator().manual_seed(0)).frames
    assert np.array_equal(a, b)
    assert no_network == []


def _corrupt(kind: str, folder: Path) -> None:
    t = folder / "transformer"
    if kind == "header":
        (t / "diffusion_pytorch_model.safetensors").write_bytes(b"\xff" * 8 + b"{not json")
    elif kind == "truncated":
        f = t / "diffusion_pytorch_model.safetensors"
        f.write_bytes(f.read_bytes()[:200])
    elif kind == "wrong_type":
        edit_json(t / "config.json", num_layers="two")
    elif kind == "float_for_int":
        edit_json(t / "config.json", num_attention_heads=2.5)
    elif kind == "negative":
        edit_json(t / "config.json", ffn_dim=-32)
    elif kind == "fewer_layers":
        edit_json(t / "config.json", num_layers=1)  # the weights hold 2 blocks
    elif kind == "more_layers":
        edit_json(t / "config.json", num_layers=3)
    elif kind == "no_weights":
        (t / "diffusion_pytorch_model.safetensors").unlink()
    elif kind == "pickled":
        (t / "diffusion_pytorch_model.safetensors").rename(t / "diffusion_pytorch_model.bin")
    elif kind == "bad_index":
        (folder / "model_index.json").write_text("{ nope")
    elif kind == "index_types":
        edit_json(folder / "model_index.json", default_height="tall")
    elif kind == "index_zero":
        edit_json(folder / "model_index.json", default_frames=0)
    elif kind == "foreign_class":
        edit_json(folder / "model_index.json", transformer=["os", "system"])
    elif kind == "missing_component":
        import shutil

        shutil.rmtree(folder / "vae")
    elif kind == "config_not_json":
        (t / "config.json").write_bytes(b"\x89\xff\xfe")
    elif kind == "shift":
        edit_json(folder / "scheduler" / "scheduler_config.json", shift=-3.0)


@pytest.mark.parametrize("kind", ["header", "truncated", "wrong_type", "float_for_int", "negative", "fewer_layers",
                                  "more_layers", "no_weights", "pickled", "bad_index", "index_types", "index_zero",
                                  "foreign_class", "missing_component", "config_not_json", "shift"])
def test_corrupt_pipeline_folders_are_refused_in_one_line(saved, tmp_path, kind):
    from idcrafter.pipeline import IDCrafterPipeline

    folder = copy_tree(saved, tmp_path / "p")
    _corrupt(kind, folder)
    with pytest.raises(InputError) as info:
        IDCrafterPipeline.from_pretrained(str(folder))
    msg = str(info.value)
    assert "\n" not in msg and str(folder) in msg, msg
    assert isinstance(info.value, (CorruptFileError, MissingWeightsError)), type(info.value)


def test_fewer_layers_names_the_unexpected_weights(saved, tmp_path):
    from idcrafter.pipeline import IDCrafterPipeline

    folder = copy_tree(saved, tmp_path / "p")
    _corrupt("fewer_layers", folder)
    with pytest.raises(CorruptFileError, match=r"blocks\.1\..*re-export"):
        IDCrafterPipeline.from_pretrained(str(folder))


# ------------------------------------------------------------------ pipeline calls
BAD_CALLS = [
    (dict(guidance_scale=float("nan")), "finite"),
    (dict(guidance_scale=float("inf")), "finite"),
    (dict(guidance_scale=-1.0), "guidance_scale"),
    (dict(guidance_scale=1e6), "guidance_scale"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(num_inference_steps=-5), "num_inference_steps"),
    (dict(num_inference_steps=10**6), "num_inference_steps"),
    (dict(num_inference_steps=2.5), "integer"),
    (dict(num_frames=0), "num_frames"),
    (dict(num_frames=-3), "num_frames"),
    (dict(num_frames=100_000), "num_frames"),
    (dict(height=0), "height"),
    (dict(height=-16), "height"),
    (dict(width=-1), "width"),
    (dict(width=10**6), "width"),
    (dict(height=float("nan")), "height"),
    (dict(output_type="gif"), "output_type"),
    (dict(negative_prompt="\udcff"), "UTF-8"),
]


@pytest.mark.parametrize("kwargs,needle", BAD_CALLS, ids=[f"{list(k)[0]}={list(k.values())[0]}" for k, _ in BAD_CALLS])
def test_bad_call_arguments_raise_input_errors(pipe, refs, kwargs, needle):
    with pytest.raises(InputError, match=needle):
        pipe("a person waves", refs, **{"num_inference_steps": 1, **kwargs})


@pytest.mark.parametrize("prompt,n,needle", [
    ("a person \udcff waves", 1, "UTF-8"),  # undecodable bytes from the command line (surrogateescape)
    ("x" * 2001, 1, "limit"),
    (b"bytes", 1, "text"),
    (CAPTION2, 1, "names 2 subject"),  # a SpriteWorld caption: the reference count must match
    (CAPTION2, 3, "names 2 subject"),
    ("a person waves", 0, "no reference"),
    ("a person waves", 5, "at most 4"),
])
def test_bad_prompts_and_reference_counts(pipe, refs, prompt, n, needle):
    with pytest.raises(InputError, match=needle):
        pipe(prompt, (refs * 3)[:n], num_inference_steps=1)


def test_free_text_is_not_held_to_a_caption_count_and_sizes_are_rounded_with_a_warning(pipe, refs):
    kw = dict(num_inference_steps=1, generator=torch.Generator().manual_seed(0))
    assert pipe("two friends on a beach", refs[:1], **kw).frames.shape == (1, 3, 16, 16, 3)
    assert pipe(CAPTION2, refs, **kw).frames.shape[0] == 1  # the count matches: accepted
    with pytest.warns(UserWarning, match="multiples of 4"):
        out = pipe("a person", refs[:1], height=18, width=16, **kw).frames
    assert out.shape[2] == 16  # rounded down as Wan does
    with pytest.warns(UserWarning, match="multiples of 4"):
        assert pipe("a person", refs[:1], height=2, width=16, **kw).frames.shape[2] == 4  # rounded up to one patch
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the default size needs no rounding and gives no warning
        pipe("a person", refs[:1], **kw)


def test_errors_are_typed():
    from idcrafter.validation import check_float, check_int

    assert issubclass(LimitError, InputError) and issubclass(ConfigError, InputError)
    assert issubclass(MissingWeightsError, FileNotFoundError) and issubclass(OutputPathError, OSError)
    with pytest.raises(LimitError):
        check_int(10, "x", 0, 5)
    with pytest.raises(InputError, match="finite"):
        check_float(math.inf, "x", 0, None)
    assert "\n" not in str(InputError("two\nlines"))


# ------------------------------------------------------------------ config overrides (property-based)
KEYS = ["optim.lr", "optim.betas", "train.steps", "train.mode", "checkpoint.every", "data.batch_size",
        "eval.timesteps", "loss.drop_text", "model.shift", "data.limit", "train.seed", "log.every", "data.frames",
        "optim.grad_clip", "train.ema_decay", "model.preset_overrides", "nonexistent.key", "optim"]
VALUES = st.one_of(st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e-4", "none", "true", "[0.5]", "[]", "{}",
                                    "abc", "3", "1,2", "[1, 2, 3]", "1e400", "0.5", "{\"num_layers\": \"x\"}"]),
                   st.text(max_size=12))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=3))
def test_any_override_gives_a_valid_config_or_one_input_error(pairs):
    """Whatever key=value a user types, the result is a config that passes validation, or an
    InputError, never another exception (and never a config with a NaN or non-positive lr)."""
    from idcrafter.config import apply_overrides, config_to_dict
    from idcrafter.recipes import recipe

    try:
        cfg = apply_overrides(recipe("debug"), [f"{k}={v}" for k, v in pairs]).validate()
    except InputError as exc:
        assert "\n" not in str(exc)
        return
    assert math.isfinite(cfg.optim.lr) and cfg.optim.lr > 0
    assert cfg.checkpoint.every >= 0 and cfg.train.steps >= 1 and cfg.log.every >= 1
    assert all(0 < t <= 1 for t in cfg.eval.timesteps)
    json.dumps(config_to_dict(cfg), allow_nan=False) if math.isfinite(cfg.model.shift) else None


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(["recipe", "optim", "train", "model", "checkpoint", "bogus"]),
                       st.one_of(st.integers(), st.text(max_size=5), st.none(), st.booleans(),
                                 st.dictionaries(st.sampled_from(["lr", "steps", "every", "preset", "x"]),
                                                 st.one_of(st.integers(-3, 3), st.floats(allow_nan=True),
                                                           st.text(max_size=3), st.none()), max_size=3)),
                       max_size=4))
def test_any_config_json_loads_or_is_one_corrupt_file_error(tmp_path_factory, data):
    from idcrafter.config import load_config
    from idcrafter.train.config import Config

    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(json.dumps(data))
    try:
        cfg = load_config(Config, path)
        cfg.validate()
    except InputError as exc:
        assert "\n" not in str(exc)


def test_config_json_wrong_types_and_corrupt(tmp_path):
    from idcrafter.config import config_to_dict, load_config
    from idcrafter.recipes import recipe
    from idcrafter.train.config import Config

    good = config_to_dict(recipe("debug"))
    for section, key, value in [("optim", "lr", "fast"), ("train", "steps", 2.5), ("train", "mode", 3),
                                ("checkpoint", "export_final", "yes"), ("eval", "timesteps", ["a"])]:
        bad = json.loads(json.dumps(good))
        bad[section][key] = value
        (tmp_path / "c.json").write_text(json.dumps(bad))
        with pytest.raises(CorruptFileError, match=f"{section}.{key}"):
            load_config(Config, tmp_path / "c.json")
    (tmp_path / "c.json").write_bytes(b'{"optim": {"lr": 1e-3')
    with pytest.raises(CorruptFileError, match="not valid JSON"):
        load_config(Config, tmp_path / "c.json")


# ------------------------------------------------------------------ manifests (property-based)
PATHS = st.one_of(
    st.sampled_from(["a.mp4", "clips/a.mp4", "./a.mp4", "../a.mp4", "../../etc/passwd", "/etc/passwd", "a/../../b",
                     "a/./b/../c.mp4", "..", ".", "", " ", "a\x00b", "//x", "clips/../a.mp4", "~/a.mp4"]),
    st.text(alphabet="ab./~\\", max_size=10))


@settings(max_examples=200, deadline=None)
@given(PATHS, st.booleans())
def test_manifest_paths_stay_in_the_manifest_folder(path, allow_abs):
    """A manifest path is resolved inside the manifest's folder or refused; absolute paths only
    with the explicit option."""
    import os

    from idcrafter.train.data import manifest_path

    root = Path("/data/set")
    try:
        got = manifest_path(path, root, allow_abs, "m.jsonl:1")
    except InputError as exc:
        assert "m.jsonl:1" in str(exc) and "\n" not in str(exc)
        return
    norm = Path(os.path.normpath(got))
    if os.path.isabs(path):
        assert allow_abs and norm == Path(os.path.normpath(path))
    else:
        assert norm == root or root in norm.parents, (path, got)


def test_manifest_escapes_are_refused_at_start_up(tmp_path):
    from idcrafter.train.config import DataConfig
    from idcrafter.train.data import ManifestSource

    outside = tmp_path / "secret.png"
    outside.write_bytes(b"x")
    (tmp_path / "m").mkdir()
    for bad, needle in [({"video": "../secret.mp4", "references": ["r.png"], "caption": "c"}, "leaves"),
                        ({"video": "a.mp4", "references": [str(outside)], "caption": "c"}, "absolute"),
                        ({"video": "a.mp4", "references": [], "caption": "c"}, "1 to 4"),
                        ({"video": 3, "references": ["r.png"], "caption": "c"}, "strings"),
                        ({"video": "a.mp4", "references": ["r.png"] * 5, "caption": "c"}, "1 to 4")]:
        (tmp_path / "m" / "m.jsonl").write_text(json.dumps(bad) + "\n")
        with pytest.raises(InputError, match=needle):
            ManifestSource(DataConfig(source="manifest", path=str(tmp_path / "m" / "m.jsonl")))
    (tmp_path / "m" / "m.jsonl").write_text(json.dumps({"video": "a.mp4", "references": [str(outside)],
                                                        "caption": "c"}) + "\n")
    src = ManifestSource(DataConfig(source="manifest", path=str(tmp_path / "m" / "m.jsonl"), absolute_paths=True))
    assert src.items[0]["references"] == [outside]
    (tmp_path / "m" / "m.jsonl").write_bytes(b"\xff\xfe{}\n")
    with pytest.raises(InputError, match="UTF-8"):
        ManifestSource(DataConfig(source="manifest", path=str(tmp_path / "m" / "m.jsonl")))


def test_dataset_array_names_cannot_leave_the_folder(tmp_path):
    from idcrafter.world.dataset import SpriteWorldDataset, make_dataset
    from idcrafter.world.scene import WorldConfig

    make_dataset(tmp_path / "d", "train", 2, 0, WorldConfig(frames=2, height=24, width=24, ref_size=16),
                 progress=False)
    assert len(SpriteWorldDataset(tmp_path / "d")) == 2
    m = json.loads((tmp_path / "d" / "manifest.json").read_text())
    m["arrays"]["../../outside"] = {"shape": [1], "dtype": "uint8"}
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptFileError, match="arrays must be among"):
        SpriteWorldDataset(tmp_path / "d")
    (tmp_path / "d" / "manifest.json").write_text("{")
    with pytest.raises(CorruptFileError):
        SpriteWorldDataset(tmp_path / "d")


# ------------------------------------------------------------------ media and output paths
def test_decompression_bomb_and_corrupt_images(tmp_path):
    from idcrafter.encoders.references import prepare_reference
    from idcrafter.utils.media import load_image

    bomb = bomb_png(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000
    with pytest.raises(InputError, match="megapixels|decompression"):
        load_image(bomb)
    with pytest.raises(InputError, match="megapixels|decompression"):
        prepare_reference(bomb, 16)
    (tmp_path / "t.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(InputError, match="corrupt"):
        load_image(tmp_path / "t.png")


def test_write_mp4_raises_when_no_file_was_made(tmp_path, monkeypatch):
    import imageio.v2 as imageio

    from idcrafter.utils import media

    frames = np.zeros((2, 8, 8, 3), np.uint8)
    assert media.write_mp4(tmp_path / "ok.mp4", frames).stat().st_size > 0

    class Silent:  # an encoder that "succeeds" without writing anything (ffmpeg failing quietly)
        def __init__(self, *a, **k): ...
        def __enter__(self): return self
        def __exit__(self, *a): return False
        def append_data(self, f): ...

    monkeypatch.setattr(imageio, "get_writer", lambda *a, **k: Silent())
    with pytest.raises(OutputPathError, match="no file"):
        media.write_mp4(tmp_path / "none.mp4", frames)
    assert not (tmp_path / "none.mp4").exists() and not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(InputError, match="uint8"):
        media.write_mp4(tmp_path / "x.mp4", np.zeros((2, 8, 8), np.float32))


def test_output_paths_under_a_file_read_only_or_a_folder(tmp_path, monkeypatch):
    from idcrafter.utils import io

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutputPathError, match="is a file"):
        io.ensure_dir(blocker / "sub" / "dir")
    with pytest.raises(OutputPathError, match="is a file"):
        io.check_output_file(blocker / "o.mp4", (".mp4",))
    with pytest.raises(OutputPathError, match="is a folder"):
        io.check_output_file(tmp_path, (".mp4",))
    with pytest.raises(OutputPathError, match="must end in .mp4"):
        io.check_output_file(tmp_path / "o.txt", (".mp4",))
    with pytest.raises(OutputPathError, match="already exists"):
        io.check_output_file(blocker, ())
    assert io.check_output_file(tmp_path / "new" / "deep" / "o.mp4", (".mp4",)).parent.is_dir()  # parents made
    monkeypatch.setattr(io.os, "access", lambda p, mode: False)  # root ignores chmod: simulate read-only
    with pytest.raises(OutputPathError, match="permission"):
        io.ensure_dir(tmp_path / "ro")


def test_folder_markers(tmp_path):
    from idcrafter.utils import io

    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    with pytest.raises(FolderInUseError, match="not made by"):
        io.claim_output_dir(tmp_path / "foreign", "idcrafter demo")
    assert (tmp_path / "foreign" / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "foreign" / io.MARKER).exists()
    out = io.claim_output_dir(tmp_path / "ours", "idcrafter demo")
    (out / "x").write_text("1")
    assert io.check_writable_dir(out, "idcrafter demo")
    with pytest.raises(FolderInUseError, match="made by `idcrafter demo`"):
        io.check_writable_dir(out, "idcrafter eval heldout")
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "report.md").write_text("r")
    assert io.check_writable_dir(legacy, "t", signature=("report.md",))  # written before markers existed
