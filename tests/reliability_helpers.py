"""Shared pieces of the reliability tests (issue 10): a tiny saved pipeline, folders of bad
kinds, the CLI run in-process (fast) or as a real process, and a network blocker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def tiny_pipeline(seed: int = 0):
    """The debug transformer with a pixel codec and a tiny T5, 3 x 16 x 16 clips, gates opened."""
    from idcrafter.encoders.text import TextEncoder
    from idcrafter.models.codecs import PixelCodec
    from idcrafter.pipeline import build_pipeline

    torch.manual_seed(seed)
    p = build_pipeline("debug", PixelCodec(3, 2), TextEncoder.tiny(32, max_length=32), default_height=16,
                       default_width=16, default_frames=3, reference_size=16)
    with torch.no_grad():
        for blk in p.transformer.blocks:
            blk.subject_branch.gate.normal_(0, 0.5)
    p.set_progress_bar_config(disable=True)
    return p


def save_tiny_pipeline(folder: Path) -> Path:
    tiny_pipeline().save_pretrained(str(folder))
    return folder


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def snapshot(folder: Path) -> dict[str, bytes]:
    """{relative path: bytes} of every file under `folder` (to show nothing was touched)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_refs(folder: Path, n: int, size: int = 16) -> list[Path]:
    from idcrafter.utils.media import save_image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        paths.append(save_image(folder / f"ref_{i}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8)))
    return paths


def bomb_png(path: Path, side: int = 9000) -> Path:
    """A small PNG file whose header says side x side pixels (81 MP): a decompression bomb."""
    from PIL import Image

    Image.new("1", (side, side)).save(path, optimize=True)
    return path


def run_inprocess(args: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """`idcrafter ARGS` in this process (imports paid once): (exit code, stdout, stderr)."""
    from idcrafter.cli import main

    monkeypatch.setattr(sys, "argv", ["idcrafter", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def run_process(args: list[str], timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "idcrafter.cli", *args], capture_output=True, env=env or ENV,
                          timeout=timeout)


def assert_one_line_error(code: int, err: str, needle: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, (code, err[-2000:])
    assert "Traceback" not in err, err[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert needle.lower() in lines[0].lower(), (needle, lines[0])


@pytest.fixture
def no_network(monkeypatch):
    """Every hub download and every socket connection fails loudly (and is recorded)."""
    calls: list[str] = []

    def refuse(name):
        def fn(*a, **k):
            calls.append(name)
            raise AssertionError(f"network use: {name}")
        return fn

    import huggingface_hub

    for name in ("snapshot_download", "hf_hub_download", "model_info"):
        if hasattr(huggingface_hub, name):
            monkeypatch.setattr(huggingface_hub, name, refuse(name))
    import diffusers.pipelines.pipeline_utils as pu

    for name in ("snapshot_download", "hf_hub_download", "model_info"):
        if hasattr(pu, name):
            monkeypatch.setattr(pu, name, refuse(f"diffusers.{name}"))
    monkeypatch.setattr(socket.socket, "connect", refuse("socket.connect"))
    monkeypatch.setattr(socket, "create_connection", refuse("socket.create_connection"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("socket.getaddrinfo"))
    return calls


def stub_heldout(pipe, cfg=None, judge=None, out_dir=None, progress=True):
    """`evaluate_heldout` without the judge (its parts are retrained separately): one clip is
    generated with the exported pipeline, so an export still loads and runs what it ships."""
    from dataclasses import asdict

    from idcrafter.heldout import METRICS, HeldoutConfig
    from idcrafter.utils.io import atomic_write_json, ensure_dir

    cfg = cfg or HeldoutConfig()
    ref = np.full((pipe.config.reference_size,) * 2 + (3,), 200, np.uint8)
    video = pipe("the person with short red hair waves", [ref], num_inference_steps=cfg.steps,
                 generator=torch.Generator().manual_seed(0)).frames[0]
    figures = {k: 0.5 for k in METRICS}
    result = {"generated": figures, "ground_truth": dict(figures), "gap": {k: 0.0 for k in METRICS},
              "cases": [{"caption": "stub", "mean_pixel": float(video.mean())}], "config": asdict(cfg), "seconds": 0.0}
    if out_dir is not None:
        atomic_write_json(Path(ensure_dir(out_dir)) / "heldout.json", result)
    return result
