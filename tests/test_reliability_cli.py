"""Every command refuses bad input with one line on stderr and exit status 2 (issue 10).

The table runs each case in-process (the imports are paid once, so ~100 cases take seconds);
`test_real_processes_print_one_line` runs a sample of them through the real entry point to show
nothing else (warnings, progress bars, tracebacks) reaches stderr. Folders a case must not touch
are compared byte for byte before and after.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from reliability_helpers import (assert_one_line_error, bomb_png, run_inprocess, run_process, save_tiny_pipeline,
                                 snapshot, write_refs)

CAPTION2 = ("On a beach: the person with spiky red hair and a striped blue shirt waves; "
            "the person with a bald head, a hat and a teal shirt walks to the left.")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """Paths the table's templates name: a tiny pipeline, references, a clip, a trained run, a
    folder a person owns, a plain file, a corrupt image and a decompression bomb."""
    from idcrafter.config import apply_overrides
    from idcrafter.recipes import recipe
    from idcrafter.train.sft import run_sft
    from idcrafter.utils.io import mark_dir
    from idcrafter.utils.media import write_mp4

    root = tmp_path_factory.mktemp("env")
    pipe = save_tiny_pipeline(root / "pipe")
    r0, r1 = write_refs(root, 2)
    write_mp4(root / "clip.mp4", np.random.default_rng(0).integers(0, 255, (3, 48, 48, 3), dtype=np.uint8),
              upscale=1)
    run = root / "run"
    run_sft(apply_overrides(recipe("debug"), ["train.steps=2", "checkpoint.every=2", "checkpoint.export_pipeline=true",
                                              "checkpoint.export_final=false", "eval.every=0"]), run)
    foreign = root / "foreign"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("a person's work")
    (root / "file").write_text("a plain file")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    bomb_png(root / "bomb.png")
    fake_run = root / "fake_run"  # a run folder (marker + config), corrupt config for --resume
    fake_run.mkdir()
    mark_dir(fake_run, "idcrafter train sft")
    (fake_run / "config.json").write_text('{"optim": {"lr": ')
    bad_run = root / "bad_config_run"  # a trained run whose config.json was broken afterwards
    shutil.copytree(run, bad_run)
    (bad_run / "config.json").write_text('{"recipe": "debug", "optim": {"lr": "fast"}}')
    (root / "m").mkdir()
    (root / "m" / "escape.jsonl").write_text(json.dumps({"video": "../clip.mp4", "references": ["../ref_0.png"],
                                                         "caption": "a person waves"}) + "\n")
    (root / "m" / "absolute.jsonl").write_text(json.dumps({"video": str(root / "clip.mp4"),
                                                           "references": [str(r0)], "caption": "a"}) + "\n")
    return {"pipe": str(pipe), "ref0": str(r0), "ref1": str(r1), "clip": str(root / "clip.mp4"), "run": str(run),
            "foreign": str(foreign), "file": str(root / "file"), "corrupt": str(root / "corrupt.png"),
            "bomb": str(root / "bomb.png"), "fake_run": str(fake_run), "bad_run": str(bad_run),
            "root": str(root), "caption": CAPTION2}


GEN = ["generate", "--model", "{pipe}", "--ref", "{ref0}", "--prompt", "a person waves", "--steps", "1"]
SFT = ["train", "sft", "--recipe", "debug", "--run-dir", "{out}/run"]
EXPORT = ["train", "export", "--run-dir", "{run}", "--n", "1", "--steps", "1"]

CASES = [
    # ---- usage errors (click): one line too
    (["generate", "--bogus"], "no such option"),
    (["world", "sample"], "missing option"),
    (["generate", "--model", "{pipe}", "--ref", "{ref0}", "--prompt", "p", "--steps", "abc"], "valid integer"),
    (["nonexistent-command"], "no such command"),
    # ---- world sample
    (["world", "sample", "--subjects", "0", "--out", "{out}"], "between 1 and 4"),
    (["world", "sample", "--subjects", "5", "--out", "{out}"], "between 1 and 4"),
    (["world", "sample", "--seed", "-1", "--out", "{out}"], "--seed"),
    (["world", "sample", "--frames", "0", "--out", "{out}"], "--frames"),
    (["world", "sample", "--frames", "1", "--out", "{out}"], "--frames"),
    (["world", "sample", "--frames", "100000", "--out", "{out}"], "between 2 and 257"),
    (["world", "sample", "--split", "test", "--out", "{out}"], "unknown split"),
    (["world", "sample", "--out", "{foreign}"], "not made by"),
    (["world", "sample", "--out", "{file}"], "is a file"),
    (["world", "sample", "--out", "{file}/sub"], "is a file"),
    # ---- world make
    (["world", "make", "--split", "train", "--num", "0", "--out", "{out}/d"], "--num"),
    (["world", "make", "--split", "train", "--num", "-5", "--out", "{out}/d"], "--num"),
    (["world", "make", "--split", "train", "--num", "2", "--seed", "-1", "--out", "{out}/d"], "--seed"),
    (["world", "make", "--split", "train", "--num", "2", "--frames", "100000", "--out", "{out}/d"], "--frames"),
    (["world", "make", "--split", "train", "--num", "2", "--height", "0", "--out", "{out}/d"], "--height"),
    (["world", "make", "--split", "train", "--num", "2", "--width", "-48", "--out", "{out}/d"], "--width"),
    (["world", "make", "--split", "train", "--num", "2", "--height", "100000", "--out", "{out}/d"], "--height"),
    (["world", "make", "--split", "train", "--num", "2", "--ref-size", "0", "--out", "{out}/d"], "--ref-size"),
    (["world", "make", "--split", "test", "--num", "2", "--out", "{out}/d"], "unknown split"),
    (["world", "make", "--split", "train", "--num", "2", "--out", "{foreign}"], "--overwrite"),
    (["world", "make", "--split", "train", "--num", "2", "--out", "{foreign}", "--overwrite"], "not made by"),
    (["world", "make", "--split", "train", "--num", "2", "--out", "{file}/d"], "is a file"),
    # ---- world validate-judge (train-judge is being rebuilt for judge v2 by helper C)
    (["world", "validate-judge", "--clips", "0"], "--clips"),
    (["world", "validate-judge", "--seed", "-1"], "--seed"),
    # ---- judge
    (["judge", "--video", "{out}/none.mp4", "--ref", "{ref0}"], "not found"),
    (["judge", "--video", "{corrupt}", "--ref", "{ref0}"], "cannot decode"),
    (["judge", "--video", "{clip}", "--ref", "{out}/none.png"], "not found"),
    (["judge", "--video", "{clip}", "--ref", "{corrupt}"], "corrupt"),
    (["judge", "--video", "{clip}", "--ref", "{bomb}"], "megapixels"),
    (["judge", "--video", "{clip}"] + ["--ref", "{ref0}"] * 5, "at most 4"),
    (["judge", "--video", "{clip}", "--ref", "{ref0}", "--prompt", "the person with \udcff hair waves"], "UTF-8"),
    (["judge", "--video", "{clip}", "--ref", "{ref0}", "--prompt", "{caption}"], "names 2 subject"),
    (["judge", "--video", "{clip}", "--ref", "{ref0}", "--judge", "nope"], "--judge"),
    # ---- train vae (issue 13): its weights-init and loss options
    (["train", "vae", "--run-dir", "{out}/vae", "model.init={out}/nowhere"], "model.init"),
    (["train", "vae", "--run-dir", "{out}/vae", "data.frames=6"], "4k+1"),
    (["train", "vae", "--run-dir", "{out}/vae", "loss.gan_weight=abc"], "gan_weight"),
    # ---- generate: the model folder
    (["generate", "--model", "org/name", "--ref", "{ref0}", "--prompt", "p"], "not a local folder"),
    (["generate", "--model", "{root}", "--ref", "{ref0}", "--prompt", "p"], "not a pipeline folder"),
    (["generate", "--model", "{pipe}/model_index.json", "--ref", "{ref0}", "--prompt", "p"], "is a file"),
    # ---- generate: values
    (GEN + ["--cfg", "nan", "--out", "{out}/o.mp4"], "finite"),
    (GEN + ["--cfg", "inf", "--out", "{out}/o.mp4"], "finite"),
    (GEN + ["--cfg", "-1", "--out", "{out}/o.mp4"], "guidance"),
    (GEN[:-1] + ["0", "--out", "{out}/o.mp4"], "num_inference_steps"),
    (GEN[:-1] + ["-3", "--out", "{out}/o.mp4"], "num_inference_steps"),
    (GEN[:-1] + ["100000", "--out", "{out}/o.mp4"], "num_inference_steps"),
    (GEN + ["--frames", "0", "--out", "{out}/o.mp4"], "num_frames"),
    (GEN + ["--frames", "-1", "--out", "{out}/o.mp4"], "num_frames"),
    (GEN + ["--frames", "100000", "--out", "{out}/o.mp4"], "num_frames"),
    (GEN + ["--height", "0", "--out", "{out}/o.mp4"], "height"),
    (GEN + ["--height", "-16", "--out", "{out}/o.mp4"], "height"),
    (GEN + ["--width", "100000", "--out", "{out}/o.mp4"], "width"),
    (GEN + ["--seed", "-1", "--out", "{out}/o.mp4"], "--seed"),
    (["generate", "--model", "{pipe}", "--ref", "{ref0}", "--prompt", "{caption}", "--out", "{out}/o.mp4"],
     "names 2 subject"),
    (["generate", "--model", "{pipe}", "--prompt", "p", "--out", "{out}/o.mp4"] + ["--ref", "{ref0}"] * 5,
     "at most 4"),
    (["generate", "--model", "{pipe}", "--ref", "{ref0}", "--prompt", "a \udcff person", "--out", "{out}/o.mp4"],
     "UTF-8"),
    (["generate", "--model", "{pipe}", "--ref", "{ref0}", "--prompt", "x" * 2001, "--out", "{out}/o.mp4"], "limit"),
    (["generate", "--model", "{pipe}", "--ref", "{out}/missing.png", "--prompt", "p", "--out", "{out}/o.mp4"],
     "not found"),
    (["generate", "--model", "{pipe}", "--ref", "{bomb}", "--prompt", "p", "--out", "{out}/o.mp4"], "megapixels"),
    (["generate", "--model", "{pipe}", "--ref", "{corrupt}", "--prompt", "p", "--out", "{out}/o.mp4"], "corrupt"),
    # ---- generate: the output path
    (GEN + ["--out", "{file}/o.mp4"], "is a file"),
    (GEN + ["--out", "{file}"], "must end in .mp4"),
    (GEN + ["--out", "{foreign}"], "is a folder"),
    (GEN + ["--out", "{out}/o.gif"], "must end in .mp4"),
    (GEN + ["--out", "{foreign}/thesis.mp4"], None),  # placeholder replaced below (existing file)
    # ---- bench
    (["bench", "model", "--steps", "0"], "--steps"),
    (["bench", "model", "--repeats", "0"], "--repeats"),
    (["bench", "model", "--ref-latent", "3"], "--ref-latent"),
    (["bench", "train", "--repeats", "0"], "--repeats"),
    (["bench", "train", "--threads", "0"], "--threads"),
    (["bench", "train", "--target", "bogus"], "unknown --target"),
    # ---- eval heldout
    (["eval", "heldout", "--model", "org/name", "--out", "{out}/h"], "not a local folder"),
    (["eval", "heldout", "--model", "{pipe}", "--n", "0", "--out", "{out}/h"], "--n"),
    (["eval", "heldout", "--model", "{pipe}", "--seed", "-1", "--out", "{out}/h"], "--seed"),
    (["eval", "heldout", "--model", "{pipe}", "--steps", "0", "--out", "{out}/h"], "--steps"),
    (["eval", "heldout", "--model", "{pipe}", "--cfg", "nan", "--out", "{out}/h"], "finite"),
    (["eval", "heldout", "--model", "{pipe}", "--out", "{foreign}"], "not made by"),
    (["eval", "heldout", "--model", "{pipe}", "--out", "{file}"], "is a file"),
    # ---- demo
    (["demo", "--subjects", "0", "--out", "{out}/d"], "--subjects"),
    (["demo", "--subjects", "9", "--out", "{out}/d"], "--subjects"),
    (["demo", "--seed", "-1", "--out", "{out}/d"], "--seed"),
    (["demo", "--out", "{foreign}"], "not made by"),
    (["demo", "--out", "{file}/d"], "is a file"),
    # ---- train sft: config values
    (SFT + ["optim.lr=0"], "optim.lr"),
    (SFT + ["optim.lr=-1e-4"], "optim.lr"),
    (SFT + ["optim.lr=nan"], "optim.lr"),
    (SFT + ["optim.lr=inf"], "optim.lr"),
    (SFT + ["checkpoint.every=-1"], "checkpoint.every"),
    (SFT + ["checkpoint.keep_last=-2"], "checkpoint.keep_last"),
    (SFT + ["eval.every=-5"], "eval.every"),
    (SFT + ["log.every=0"], "log.every"),
    (SFT + ["train.seed=-1"], "train.seed"),
    (SFT + ["data.seed=-1"], "data.seed"),
    (SFT + ["data.frames=0"], "data.frames"),
    (SFT + ["data.batch_size=0"], "batch_size"),
    (SFT + ["eval.timesteps=[0]"], "eval.timesteps"),
    (SFT + ["eval.timesteps=[]"], "eval.timesteps"),
    (SFT + ["optim.betas=[0.9,1.5]"], "optim.betas"),
    (SFT + ["train.steps=many"], "cannot set"),
    (SFT + ["optim.lrr=1"], "did you mean"),
    (SFT + ["nolike"], "key=value"),
    (SFT + ["loss.drop_text=2"], "loss.drop_text"),
    (SFT + ["model.shift=0"], "model.shift"),
    (["train", "sft", "--recipe", "bogus", "--run-dir", "{out}/run"], "unknown recipe"),
    # ---- train sft: run folders and manifests
    (["train", "sft", "--recipe", "debug", "--run-dir", "{run}"], "--resume"),
    (["train", "sft", "--recipe", "debug", "--run-dir", "{foreign}"], "not made by"),
    (["train", "sft", "--recipe", "debug", "--run-dir", "{foreign}", "--resume"], "not made by"),
    (["train", "sft", "--recipe", "debug", "--run-dir", "{foreign}", "--overwrite"], "not made by"),
    (["train", "sft", "--recipe", "debug", "--run-dir", "{file}"], "is a file"),
    (["train", "sft", "--recipe", "debug", "--run-dir", "{run}", "--resume", "--overwrite"], "only one"),
    (["train", "sft", "--recipe", "debug", "--run-dir", "{fake_run}", "--resume"], "not valid JSON"),
    (SFT + ["data.source=manifest", "data.path={root}/m/escape.jsonl"], "leaves the manifest"),
    (SFT + ["data.source=manifest", "data.path={root}/m/absolute.jsonl"], "absolute path"),
    (SFT + ["data.source=manifest", "data.path={root}/m/none.jsonl"], "manifest not found"),
    # ---- train cache-latents
    (["train", "cache-latents", "--recipe", "debug", "--out", "{out}/c"], "finite source"),
    (["train", "cache-latents", "--recipe", "debug", "--out", "{out}/c", "data.limit=4", "--dtype", "int8"],
     "cache dtype"),
    (["train", "cache-latents", "--recipe", "debug", "--out", "{foreign}", "data.limit=4"], "not made by"),
    (["train", "cache-latents", "--recipe", "debug", "--out", "{out}/c", "data.limit=4",
      "data.latent_cache={out}/c"], "drop data.latent_cache"),
    (SFT + ["data.limit=4", "data.latent_cache={out}/none"], "not a finished latent cache"),
    (["train", "cache-latents", "--recipe", "debug", "--out", "{out}/c", "data.limit=4", "--shard-size", "0"],
     "shard_size"),
    (SFT + ["data.curriculum=0:1:fast"], "STEP:K"),
    (SFT + ["data.curriculum=100:2"], "step 0"),
    (SFT + ["data.curriculum=0:9"], "1..4"),
    (SFT + ["train.stop_at=-1"], "stop_at"),
    (SFT + ["train.steps=5", "train.stop_at=6"], "stop_at"),
    # ---- train export
    (EXPORT + ["--out", "{run}"], "run folder"),
    (EXPORT + ["--out", "{run}/shipped"], "run folder"),
    (EXPORT + ["--out", "{root}"], "contains the run folder"),
    (EXPORT + ["--out", "{foreign}"], "not made by"),
    (EXPORT + ["--out", "{file}"], "is a file"),
    (EXPORT + ["--out", "{out}/x", "--n", "0"], "--n"),
    (EXPORT + ["--out", "{out}/x", "--steps", "0"], "--steps"),
    (EXPORT + ["--out", "{out}/x", "--cfg", "nan"], "finite"),
    (EXPORT + ["--out", "{out}/x", "--checkpoint", "99"], "no checkpoint of step 99"),
    (["train", "export", "--run-dir", "{out}/none", "--out", "{out}/x"], "run folder not found"),
    (["train", "export", "--run-dir", "{bad_run}", "--out", "{out}/x", "--n", "1", "--steps", "1"], "optim.lr"),
]
CASES[CASES.index((GEN + ["--out", "{foreign}/thesis.mp4"], None))] = (GEN + ["--out", "{foreign}/thesis.txt"],
                                                                        "must end in .mp4")


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(env, args, needle, tmp_path, capsys, monkeypatch):
    guarded = {k: snapshot(Path(env[k])) for k in ("foreign", "run", "pipe", "fake_run", "bad_run")}
    file_before = Path(env["file"]).read_bytes()
    argv = [a.format(out=tmp_path, **env) for a in args]
    code, _, err = run_inprocess(argv, capsys, monkeypatch)
    assert_one_line_error(code, err, needle)
    for k, snap in guarded.items():
        assert snapshot(Path(env[k])) == snap, f"{k} was changed by a refused command"
    assert Path(env["file"]).read_bytes() == file_before


def test_generate_refuses_an_existing_file_unless_overwrite(env, tmp_path, capsys, monkeypatch):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"someone's video")
    argv = [a.format(out=tmp_path, **env) for a in GEN] + ["--out", str(out)]
    code, _, err = run_inprocess(argv, capsys, monkeypatch)
    assert_one_line_error(code, err, "--overwrite")
    assert out.read_bytes() == b"someone's video"
    code, stdout, err = run_inprocess(argv + ["--overwrite"], capsys, monkeypatch)
    assert code == 0, err
    assert out.read_bytes()[4:8] == b"ftyp" and (tmp_path / "o_sheet.png").is_file()


@pytest.mark.parametrize("args,needle", [
    (GEN + ["--cfg", "nan", "--out", "{out}/o.mp4"], "finite"),
    (GEN + ["--height", "0", "--out", "{out}/o.mp4"], "height"),
    (["generate", "--model", "org/name", "--ref", "{ref0}", "--prompt", "p"], "not a local folder"),
    (["generate", "--model", "{pipe}", "--ref", "{ref0}", "--prompt", "{caption}", "--out", "{out}/o.mp4"], "names 2"),
    (["world", "sample", "--frames", "100000", "--out", "{out}"], "257"),
    (SFT + ["optim.lr=nan"], "optim.lr"),
    (["train", "sft", "--recipe", "debug", "--run-dir", "{run}"], "--resume"),
    (EXPORT + ["--out", "{run}"], "run folder"),
    (["generate", "--bogus"], "no such option"),
])
def test_real_processes_print_one_line(env, tmp_path, args, needle):
    res = run_process([a.format(out=tmp_path, **env) for a in args])
    assert_one_line_error(res.returncode, res.stderr.decode("utf-8", "replace"), needle)


def test_non_utf8_bytes_on_the_command_line(env, tmp_path):
    """Undecodable argv bytes (Python's surrogateescape) in a prompt: one line, exit 2."""
    import os
    import subprocess
    import sys

    from reliability_helpers import ENV

    args = [a.format(out=tmp_path, **env) for a in GEN] + ["--out", str(tmp_path / "o.mp4")]
    argv = [os.fsencode(a) for a in args]
    argv[argv.index(b"a person waves")] = b"a person \xff\xfe waves"
    res = subprocess.run([os.fsencode(sys.executable), b"-m", b"idcrafter.cli", *argv], capture_output=True,
                         env=ENV, timeout=300)
    assert_one_line_error(res.returncode, res.stderr.decode("utf-8", "replace"), "UTF-8")


def test_corrupt_model_folders_through_the_cli(env, tmp_path, capsys, monkeypatch):
    """Bad safetensors header, wrong config types, fewer layers than the weights: one line each."""
    import json as _json

    cases = {"header": "not a readable safetensors", "types": "expected a value like",
             "layers": "do not match its config"}
    for kind, needle in cases.items():
        folder = tmp_path / kind
        shutil.copytree(env["pipe"], folder)
        t = folder / "transformer"
        if kind == "header":
            (t / "diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{bad")
        else:
            cfg = _json.loads((t / "config.json").read_text())
            cfg.update({"num_layers": "2"} if kind == "types" else {"num_layers": 1})
            (t / "config.json").write_text(_json.dumps(cfg))
        argv = ["generate", "--model", str(folder), "--ref", env["ref0"], "--prompt", "p", "--steps", "1",
                "--out", str(tmp_path / f"{kind}.mp4")]
        code, _, err = run_inprocess(argv, capsys, monkeypatch)
        assert_one_line_error(code, err, needle)
        assert not (tmp_path / f"{kind}.mp4").exists()
