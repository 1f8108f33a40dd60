"""`idcrafter serve`: the web page and JSON API on one or more pipeline folders."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import typer

from idcrafter.devices import DtypeOption
from idcrafter.errors import InputError


def serve_cmd(
    model: list[Path] = typer.Option(..., help="a pipeline folder; repeat for models side by side"),
    host: str = typer.Option("127.0.0.1", help="address to bind; keep loopback and put a reverse proxy with "
                                               "authentication in front for anything else (docs/serving.md)"),
    port: int = typer.Option(7860),
    device: list[str] = typer.Option(["auto"], help="where models run (auto: cuda, then mps, then cpu; or cpu, "
                                                    "cuda, cuda:1, mps): one for all models, or one per --model"),
    dtype: DtypeOption = None,
    queue_size: int = typer.Option(8, help="jobs waiting per device (one runs per device); more get HTTP 429"),
    keep_results: float = typer.Option(3600.0, help="seconds a finished job's results are kept"),
    max_steps: int = typer.Option(100, help="largest number of denoising steps a request may ask"),
    max_upload_mb: float = typer.Option(8.0, help="largest reference image, in MB"),
    examples: int = typer.Option(6, help="held-out SpriteWorld examples shown on the page"),
    log_level: str = typer.Option("info"),
) -> None:
    """Serve the page and the JSON API (POST /api/generate, GET /api/jobs/ID, GET /api/jobs/ID/video)."""
    import uvicorn

    from idcrafter.serve.limits import ServeLimits
    from idcrafter.serve.server import build, check_port, is_loopback, uvicorn_config

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not is_loopback(host):
        typer.echo(f"warning: binding {host} exposes the server with no authentication; put a reverse proxy "
                   f"with authentication and TLS in front of it (docs/serving.md)", err=True)
    check_port(host, port)
    if max_upload_mb <= 0:
        raise InputError(f"--max-upload-mb must be positive, got {max_upload_mb}")
    limits = ServeLimits(queue_size=queue_size, keep_seconds=keep_results, max_steps=max_steps,
                         max_upload_bytes=int(max_upload_mb * 2**20))
    app, manager = build(model, device, dtype, limits, examples)
    typer.echo(f"serving {', '.join(manager.slots)} on http://{host}:{port} (results in {manager.root}, "
               f"kept {keep_results:g} s); Ctrl+C stops", err=True)
    # uvicorn re-raises the stop signal once it has shut down: end quietly with status 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.Server(uvicorn_config(app, host, port, log_level)).run()
    except KeyboardInterrupt:
        pass
    finally:
        manager.shutdown()  # no-op when the app's lifespan already did it
    typer.echo("server stopped", err=True)
