"""Fault injection (issue 10): a real process is SIGKILLed in the middle of each kind of write
(checkpoint, metrics line, config, export swap) by `tests/fault_runner.py`; then the test shows
nothing written before is lost and the next command carries on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from idcrafter.config import apply_overrides
from idcrafter.recipes import recipe
from idcrafter.train import checkpoint as ckpt
from idcrafter.train.logger import read_metrics
from idcrafter.train.sft import Trainer
from reliability_helpers import ENV, ROOT, snapshot, stub_heldout

RUN = ["train.steps=6", "checkpoint.every=2", "eval.every=0", "checkpoint.export_final=false"]


def killed(kind: str, match: str, n: int, args: list[str], stub: bool = False) -> subprocess.CompletedProcess:
    env = {**ENV, "STUB_HELDOUT": "1" if stub else "0"}
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "fault_runner.py"), kind, match, str(n), *args],
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, (res.returncode, res.stderr[-2000:])  # it really died by SIGKILL
    return res


def sft_args(run: Path, *extra: str) -> list[str]:
    return ["train", "sft", "--recipe", "debug", "--run-dir", str(run), *RUN, *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, torch.Tensor]:
    tr = Trainer(apply_overrides(recipe("debug"), RUN), tmp_path_factory.mktemp("ref") / "run")
    tr.train()
    return {n: p.detach().clone() for n, p in tr.trainable.items()}


def resume(run: Path, *extra: str) -> Trainer:
    tr = Trainer(apply_overrides(recipe("debug"), [*RUN, *extra]), run, resume=True)
    tr.train()
    return tr


def test_kill_while_committing_a_checkpoint(tmp_path, reference):
    """Killed just before checkpoint 4's folder is renamed into place: checkpoint 2 is intact, the
    half-made one is ignored, and the resumed run ends bitwise equal to an uninterrupted one."""
    run = tmp_path / "run"
    killed("replace-before", "step_00000004", 1, sft_args(run))
    assert [s for s, _ in ckpt.list_checkpoints(run / "checkpoints")] == [2]
    assert (run / "checkpoints" / "step_00000004.tmp").is_dir()  # written, never committed
    tr = resume(run)
    assert all(torch.equal(tr.trainable[k], reference[k]) for k in reference)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == list(range(1, 7))
    assert not list((run / "checkpoints").glob("*.tmp"))


def test_kill_in_the_middle_of_a_metrics_line(tmp_path, reference):
    """Killed half-way through writing step 3's line: steps 1-2 are kept byte for byte (the file
    is only ever appended to), the cut line is skipped, and the history reads 1..6 after resume."""
    run = tmp_path / "run"
    killed("append-half", "metrics.jsonl", 3, sft_args(run))
    before = (run / "metrics.jsonl").read_bytes()
    assert before.count(b"\n") == 2 and not before.endswith(b"\n")  # two whole lines and a cut one
    tr = resume(run)
    after = (run / "metrics.jsonl").read_bytes()
    assert after.startswith(before)  # nothing rewritten
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == list(range(1, 7))
    assert all(torch.equal(tr.trainable[k], reference[k]) for k in reference)


def test_kill_while_replacing_config_json(tmp_path):
    """A resume that changes the config is killed as it swaps config.json in: the old file is
    there, whole and valid; the next resume works."""
    run = tmp_path / "run"
    Trainer(apply_overrides(recipe("debug"), ["train.steps=2", *RUN[1:]]), run).train()
    old = (run / "config.json").read_bytes()
    killed("replace-before", "config.json", 1, sft_args(run, "train.steps=4", "--resume"))
    assert (run / "config.json").read_bytes() == old and json.loads(old)["train"]["steps"] == 2
    tr = Trainer(apply_overrides(recipe("debug"), ["train.steps=4", *RUN[1:]]), run, resume=True)
    tr.train()
    assert tr.step == 4 and json.loads((run / "config.json").read_text())["train"]["steps"] == 4


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A trained run (checkpoints with pipelines) and a first export of it."""
    import idcrafter.heldout
    from idcrafter.train.export import export_run

    root = tmp_path_factory.mktemp("ship")
    cfg = apply_overrides(recipe("debug"), ["train.steps=2", "checkpoint.every=2", "checkpoint.export_pipeline=true",
                                            "checkpoint.export_final=false", "eval.every=0"])
    Trainer(cfg, root / "run").train()
    real = idcrafter.heldout.evaluate_heldout
    idcrafter.heldout.evaluate_heldout = stub_heldout
    try:
        export_run(root / "run", root / "out", n=1, steps=1, progress=False)
    finally:
        idcrafter.heldout.evaluate_heldout = real
    (root / "out" / "PROVENANCE.md").write_text("added by a person")
    return root


@pytest.mark.parametrize("kind,match", [("aside-after", "/out"), ("replace-before", ".old"),
                                        ("replace-before", "heldout.json")])
def test_kill_during_export(shipped, tmp_path, kind, match, monkeypatch):
    """Killed after the old export was renamed aside (the worst moment), before that, or while
    the new one is still being written: a complete old export survives under its name or the
    aside name; the next export succeeds and keeps the file a person added."""
    import shutil

    import idcrafter.heldout
    from idcrafter.pipeline import IDCrafterPipeline
    from idcrafter.train.export import export_run

    out = tmp_path / "out"
    shutil.copytree(shipped / "out", out)
    before = snapshot(out)
    killed(kind, match, 1, ["train", "export", "--run-dir", str(shipped / "run"), "--out", str(out), "--n", "1",
                            "--steps", "1"], stub=True)
    survivors = [p for p in [out, *tmp_path.glob(".out.*.old")] if p.is_dir()]
    assert any(snapshot(p) == before for p in survivors), [p.name for p in tmp_path.iterdir()]
    if kind == "aside-after":
        assert not out.exists()  # only the aside copy is left: still whole
    else:
        assert snapshot(out) == before
    monkeypatch.setattr(idcrafter.heldout, "evaluate_heldout", stub_heldout)
    export_run(shipped / "run", out, n=1, steps=1, progress=False)
    IDCrafterPipeline.from_pretrained(str(out))
    assert (out / "README.md").is_file() and (out / ".idcrafter").is_file()
    if (out / "PROVENANCE.md").exists() or kind != "aside-after":
        assert (out / "PROVENANCE.md").read_text() == "added by a person"


def test_replace_dir_and_append_line_by_hand(tmp_path):
    """The primitives: replace_dir never reuses an existing name, keeps added files; append_line
    closes a cut line so the next record stands alone."""
    from idcrafter.utils.io import append_line, read_lines_json, replace_dir

    (tmp_path / ".t.old").mkdir()  # a folder a person named like an old-style aside: untouched
    (tmp_path / ".t.old" / "keep").write_text("k")
    target, new = tmp_path / "t", tmp_path / "new"
    target.mkdir()
    (target / "a").write_text("old a")
    (target / "notes.md").write_text("mine")
    (target / "sub").mkdir()
    new.mkdir()
    (new / "a").write_text("new a")
    replace_dir(new, target, keep_foreign=True)
    assert (target / "a").read_text() == "new a" and (target / "notes.md").read_text() == "mine"
    assert not (target / "sub").exists() and (tmp_path / ".t.old" / "keep").read_text() == "k"
    log = tmp_path / "m.jsonl"
    append_line(log, json.dumps({"step": 1}))
    with open(log, "a") as fh:
        fh.write('{"step": 2, "lo')  # a kill mid-line
    append_line(log, json.dumps({"step": 3}))
    assert read_lines_json(log) == [{"step": 1}, {"step": 3}]
    assert os.path.getsize(log) == len('{"step": 1}\n{"step": 2, "lo\n{"step": 3}\n')
