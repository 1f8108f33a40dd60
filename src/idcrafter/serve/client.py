"""A small Python client of the JSON API (docs/serving.md shows a standalone version).

    from idcrafter.serve.client import Client
    c = Client("http://127.0.0.1:7860")
    job = c.generate(["alice.png", "bob.png"], "In a park: the person with ... waves; ...", steps=20)
    status = c.wait(job)                 # {"status": "done", "metrics": {...}, "per_subject": [...]}
    open("out.mp4", "wb").write(c.download(job, "video"))
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import requests


class ApiError(Exception):
    """A refusal of the server: HTTP `status` and its JSON `error` message."""

    def __init__(self, status: int, message: str, retry_after: float | None = None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


class Client:
    def __init__(self, url: str, timeout: float = 60.0, session: requests.Session | None = None):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = session or requests.Session()

    def _check(self, r: requests.Response) -> requests.Response:
        if r.ok:
            return r
        try:
            message = r.json().get("error", r.text)
        except ValueError:
            message = r.text[:200]
        retry = r.headers.get("Retry-After")
        raise ApiError(r.status_code, message, float(retry) if retry else None)

    def generate(self, refs: Sequence[bytes | str | Path], prompt: str, model: str | None = None,
                 **settings: Any) -> str:
        """Submit a job; returns its id. `refs`: image bytes or local file paths (read here, by
        the client: the server never sees a path). `settings`: steps, cfg, seed, frames, height, width."""
        files = []
        for i, ref in enumerate(refs):
            data = ref if isinstance(ref, bytes) else Path(ref).read_bytes()
            name = f"ref_{i}.png" if isinstance(ref, bytes) else Path(ref).name
            files.append(("refs", (name, data, "application/octet-stream")))
        data = {"prompt": prompt, **{k: str(v) for k, v in settings.items() if v is not None}}
        if model is not None:
            data["model"] = model
        r = self.session.post(f"{self.url}/api/generate", files=files, data=data, timeout=self.timeout)
        return self._check(r).json()["job_id"]

    def status(self, job_id: str) -> dict:
        return self._check(self.session.get(f"{self.url}/api/jobs/{job_id}", timeout=self.timeout)).json()

    def wait(self, job_id: str, timeout: float = 600.0, every: float = 0.25) -> dict:
        """Poll until the job is done or failed (or `timeout` passes: then its last status)."""
        deadline = time.time() + timeout
        while True:
            st = self.status(job_id)
            if st["status"] in ("done", "failed") or time.time() > deadline:
                return st
            time.sleep(every)

    def download(self, job_id: str, kind: str = "video") -> bytes:
        """`video` (mp4), `sheet` (png) or `metrics` (json) of a finished job."""
        return self._check(self.session.get(f"{self.url}/api/jobs/{job_id}/{kind}", timeout=self.timeout)).content

    def cancel(self, job_id: str) -> dict:
        return self._check(self.session.delete(f"{self.url}/api/jobs/{job_id}", timeout=self.timeout)).json()
