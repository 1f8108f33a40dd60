"""`idcrafter serve` as a process: one-line errors, loopback by default, and a stop signal that
fails the in-flight job cleanly (exit 0, no traceback, temporary folder removed)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests
from serve_support import SHIPPED, png_bytes, wait_for

from idcrafter.serve.client import Client

CLI = [sys.executable, "-m", "idcrafter.cli", "serve"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """`idcrafter serve ARGS` in this process (the error paths return before any model loads)."""
    from idcrafter.cli import main

    monkeypatch.setattr(sys, "argv", ["idcrafter", "serve", *args])
    try:
        main()
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_bad_model_folder_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    code, err = _run_main(monkeypatch, capsys, "--model", str(tmp_path / "nothing"), "--port", str(_free_port()))
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error:") and "not a pipeline folder" in err


def test_port_in_use_is_one_line_exit_2(monkeypatch, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, err = _run_main(monkeypatch, capsys, "--model", str(SHIPPED), "--port", str(busy.getsockname()[1]))
    assert code == 2 and "Traceback" not in err and "pass another --port" in err


def test_bad_device_is_one_line_exit_2(monkeypatch, capsys):
    code, err = _run_main(monkeypatch, capsys, "--model", str(SHIPPED), "--model", str(SHIPPED),
                          "--device", "cpu", "--device", "cpu", "--device", "cpu", "--port", str(_free_port()))
    assert code == 2 and "3 --device values for 2 --model folders" in err


def test_public_host_warns(monkeypatch, capsys, tmp_path):
    code, err = _run_main(monkeypatch, capsys, "--model", str(tmp_path), "--host", "0.0.0.0", "--port", str(_free_port()))
    assert code == 2 and "exposes the server with no authentication" in err


def test_serves_on_loopback_and_stops_cleanly(tmp_path):
    port = _free_port()
    log = tmp_path / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(CLI + ["--model", str(SHIPPED), "--port", str(port), "--examples", "0"],
                                stdout=fh, stderr=subprocess.STDOUT, env=ENV, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def up() -> bool:
            try:
                return requests.get(f"{url}/api/health", timeout=2).ok
            except requests.ConnectionError:
                return proc.poll() is not None
        assert wait_for(up, timeout=180, every=0.2) and proc.poll() is None, log.read_text()
        text = log.read_text()
        assert f"on http://127.0.0.1:{port}" in text
        root = Path(re.search(r"results in (\S+),", text).group(1))
        assert root.is_dir() and (root.stat().st_mode & 0o777) == 0o700
        client = Client(url)
        job = client.generate([png_bytes(), png_bytes(color=(30, 160, 60))], "two people in a room", steps=100)
        assert wait_for(lambda: client.status(job)["status"] == "running", timeout=60)
        t0 = time.time()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert time.time() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "Traceback" not in text, text
    assert "failed 1 unfinished job(s)" in text and "server stopped" in text
    assert not root.exists()
