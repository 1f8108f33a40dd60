"""Building and running the server: models -> slots -> job manager -> app -> uvicorn.

`build` is what `idcrafter serve` runs; `ServerThread` runs the same app on a free loopback
port inside the current process (tests, `scripts/serve_load.py`).
"""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from idcrafter.errors import InputError
from idcrafter.serve.jobs import JobManager
from idcrafter.serve.limits import ServeLimits
from idcrafter.serve.runner import ModelSlot, heldout_examples, load_slot


#: flags headless Chromium needs on a machine with no network but loopback, run as root
#: (browser tests and scripts/serve_screenshot.py; Chromium is Debian's, at /usr/bin/chromium)
HEADLESS_CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync")


def unique_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, with -2, -3 ... appended to repeats (the page and API select models by name)."""
    names: list[str] = []
    for p in paths:
        base = Path(p).resolve().name or "model"
        name, i = base, 2
        while name in names:
            name, i = f"{base}-{i}", i + 1
        names.append(name)
    return names


def devices_for(models: Sequence[Path], devices: Sequence[str]) -> list[str]:
    """One device for every model, or one device per model."""
    devices = list(devices) or ["auto"]
    if len(devices) == 1:
        return devices * len(models)
    if len(devices) != len(models):
        raise InputError(f"{len(devices)} --device values for {len(models)} --model folders: give one device "
                         f"for all models or one per model")
    return devices


def build(models: Sequence[str | Path], devices: Sequence[str] = ("auto",), dtype: str | None = None,
          limits: ServeLimits | None = None, examples: int = 6,
          slots: Sequence[ModelSlot] | None = None) -> tuple[Any, JobManager]:
    """(FastAPI app, its running JobManager) serving `models` (or ready-made `slots`)."""
    from idcrafter.serve.app import create_app

    limits = limits or ServeLimits()
    if slots is None:
        if not models:
            raise InputError("no model given: pass --model DIR (a pipeline folder such as assets/checkpoints/sprites-sft)")
        paths = [Path(m) for m in models]
        slots = [load_slot(p, d, dtype, n, limits)
                 for p, d, n in zip(paths, devices_for(paths, devices), unique_names(paths))]
    manager = JobManager({s.name: s for s in slots}, limits)
    return create_app(manager, heldout_examples(list(slots), examples)), manager


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """InputError if (host, port) cannot be bound, before any model is loaded."""
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be in 0..65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise InputError(f"cannot listen on {host}:{port} ({exc.strerror}): pass another --port or --host") from None


def uvicorn_config(app: Any, host: str, port: int, log_level: str = "info", access_log: bool = False) -> Any:
    import uvicorn

    # graceful shutdown waits for open requests this long, then the lifespan fails unfinished jobs
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=access_log,
                          timeout_graceful_shutdown=5, lifespan="on")


class ServerThread:
    """Run an app with uvicorn on 127.0.0.1 in a thread: `with ServerThread(app) as url: ...`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        if not is_loopback(host):
            raise InputError("ServerThread serves on loopback only")
        self.host = host
        self.port = port or _free_port(host)
        # uvicorn installs signal handlers only in the main thread, so this one leaves them alone
        self.server = uvicorn.Server(uvicorn_config(app, host, self.port, log_level))
        self.thread = threading.Thread(target=self.server.run, name="idcrafter-serve-http", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError(f"the server did not start on {self.url}")
            time.sleep(0.02)
        return self.url

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
