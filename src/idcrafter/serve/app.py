"""The FastAPI application: the JSON API and the page (docs/serving.md documents both).

    POST   /api/generate             multipart refs + prompt [+ model steps cfg seed frames height width]
                                     -> 202 {"job_id", "status", "model", "status_url"}
    GET    /api/jobs/{id}            -> {"status": queued|running|done|failed, "progress", "metrics", ...}
    GET    /api/jobs/{id}/video      -> video/mp4 (409 until done)
    GET    /api/jobs/{id}/sheet      -> image/png (references | generated frames)
    GET    /api/jobs/{id}/metrics    -> application/json (what the page's download button saves)
    DELETE /api/jobs/{id}            -> cancel a queued/running job, or delete a finished one
    GET    /api/models, /api/examples, /api/examples/{i}/refs/{k}, /api/health
    GET    /                         the page (static HTML + JS, no external resources)

Every error is JSON `{"error": message}` with a 4xx status (429 when a queue is full, with
`Retry-After`; 503 while the server stops). Bodies over `limits.max_body_bytes` are refused with
413 before they are parsed.
"""

from __future__ import annotations

import contextlib
import logging
import re
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from idcrafter.serve.jobs import DONE, FAILED, JobManager
from idcrafter.serve.limits import FIELDS, RequestError, Upload, parse_generate
from idcrafter.serve.runner import Example

log = logging.getLogger("idcrafter.serve")

STATIC = Path(__file__).parent / "static"
_PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_MAX_FILES = 64  # multipart parser cap; the model's own maximum is checked with a clearer message
_MEDIA = {"video": "video/mp4", "sheet": "image/png", "metrics": "application/json"}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
                               "object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
}


class BodyTooLarge(Exception):
    pass


def _error(message: str, status: int, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse a POST body over `max_bytes` with 413 before the app parses it.

    A declared Content-Length over the limit is answered at once; a chunked body is counted as
    it arrives. The rest of an oversized body is read and dropped (up to `drain_factor` x the
    limit) so that clients which send the whole body before reading get the 413, not a reset.
    """

    def __init__(self, app: Any, max_bytes: int, drain_factor: int = 4):
        self.app, self.max_bytes, self.drain = app, max_bytes, max_bytes * drain_factor

    def _message(self) -> str:
        return (f"the request is larger than {self.max_bytes / 2**20:.1f} MB (all references together): "
                f"upload fewer or smaller images")

    async def _drain(self, receive: Any, seen: int) -> None:
        while seen <= self.drain:
            msg = await receive()
            if msg["type"] != "http.request":
                return
            seen += len(msg.get("body", b""))
            if not msg.get("more_body", False):
                return

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive, 0)
            await _error(self._message(), 413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    if msg.get("more_body", False):
                        await self._drain(receive, seen)
                    raise BodyTooLarge(self._message())
            return msg

        await self.app(scope, limited, send)


def create_app(manager: JobManager, examples: list[Example] | None = None) -> FastAPI:
    """The app around a running `JobManager`; stopping the app shuts the manager down."""
    examples = list(examples or [])
    limits = manager.limits
    bounds = {name: s.bounds for name, s in manager.slots.items()}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        failed = await run_in_threadpool(manager.shutdown)
        if failed:
            log.warning("server stopped with %d unfinished job(s); they were failed", len(failed))

    # no generated OpenAPI: the multipart form is parsed by hand, so a generated schema would be empty
    app = FastAPI(title="idcrafter", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    _add_error_handlers(app)
    _add_page(app)
    _add_info_routes(app, manager, examples)
    _add_job_routes(app, manager, bounds)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every error as JSON `{"error": ...}`, and the security headers on every response."""

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
        response = await call_next(request)
        for k, v in _SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        if request.url.path.startswith("/api/jobs/") and request.method == "GET":
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(RequestError)
    async def on_request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(str(exc), exc.status, exc.headers)

    @app.exception_handler(BodyTooLarge)
    async def on_too_large(request: Request, exc: BodyTooLarge) -> JSONResponse:
        return _error(str(exc), 413)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = {404: f"no such endpoint {request.url.path[:80]!r}: see docs/serving.md for the API",
                   405: f"{request.method} is not allowed on {request.url.path[:80]}"}.get(exc.status_code)
        return _error(message or str(exc.detail), exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return _error(f"bad request: {where}"[:300], 400)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error("internal server error (the server log has the details)", 500)


def _add_page(app: FastAPI) -> None:
    page = (STATIC / "index.html").read_text(encoding="utf-8")
    assets = {name: (STATIC / name).read_bytes() for name in _PAGE_FILES}

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in assets:  # a fixed set of files: no path from the client reaches the disk
            raise RequestError(f"no static file {name[:40]!r}", 404)
        return Response(assets[name], media_type=_PAGE_FILES[name])


def _add_info_routes(app: FastAPI, manager: JobManager, examples: list[Example]) -> None:
    limits = manager.limits

    @app.get("/api/health")
    async def health() -> dict:
        return {"ok": not manager.closing, **manager.counts()}

    @app.get("/api/models")
    async def models() -> dict:
        return {"models": [s.describe() for s in manager.slots.values()],
                "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                           "max_body_bytes": limits.max_body_bytes, "image_types": ["png", "jpeg", "webp"],
                           "max_prompt_chars": limits.max_prompt_chars, "queue_size": limits.queue_size,
                           "keep_seconds": limits.keep_seconds, "fields": list(FIELDS)}}

    @app.get("/api/examples")
    async def list_examples() -> dict:
        return {"examples": [{"id": i, "caption": ex.caption, "subjects": len(ex.refs),
                              "refs": [f"/api/examples/{i}/refs/{k}" for k in range(len(ex.refs))]}
                             for i, ex in enumerate(examples)]}

    @app.get("/api/examples/{i}/refs/{k}")
    async def example_ref(i: int, k: int) -> Response:
        if not (0 <= i < len(examples) and 0 <= k < len(examples[i].refs)):
            raise RequestError(f"no example reference {i}/{k}", 404)
        return Response(examples[i].refs[k], media_type="image/png")


def _add_job_routes(app: FastAPI, manager: JobManager, bounds: dict) -> None:
    limits = manager.limits

    @app.post("/api/generate", status_code=202)
    async def generate(request: Request) -> JSONResponse:
        manager.check_capacity()  # a full server refuses at once, without reading the upload
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            raise RequestError("send multipart/form-data: reference images as `refs` files and a `prompt` "
                               "field (docs/serving.md has a curl example)", 415)
        fields, uploads = await _read_form(request, limits.max_upload_bytes)
        req = await run_in_threadpool(parse_generate, fields, uploads, bounds, limits)
        job = await run_in_threadpool(manager.submit, req)
        return JSONResponse({"job_id": job.id, "status": job.status, "model": job.model,
                             "status_url": f"/api/jobs/{job.id}"}, status_code=202)

    def _job_id(job_id: str) -> str:
        if not _JOB_ID.match(job_id):
            raise RequestError("malformed job id: use the job_id returned by POST /api/generate", 404)
        return job_id

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str) -> dict:
        return manager.status(_job_id(job_id))

    @app.delete("/api/jobs/{job_id}")
    async def job_cancel(job_id: str) -> dict:
        return manager.cancel(_job_id(job_id))

    @app.get("/api/jobs/{job_id}/{kind}")
    async def job_file(job_id: str, kind: str) -> Response:
        if kind not in _MEDIA:
            raise RequestError(f"no {kind[:20]!r} for a job: ask for video, sheet or metrics", 404)
        job = manager.get(_job_id(job_id))
        if job.status == FAILED:
            raise RequestError(f"job {job.id} failed, it has no {kind}: {job.error}", 409)
        path = job.file(kind) if job.status == DONE else None
        if path is None:
            raise RequestError(f"job {job.id} is {job.status} ({job.progress:.0%}): its {kind} is ready "
                               f"when its status is done", 409)
        ext = {"video": "mp4", "sheet": "png", "metrics": "json"}[kind]
        data = await run_in_threadpool(_read_result, path, job.id)
        name = f"idcrafter-{job.model}-{job.id[:8]}-{kind}.{ext}"
        return Response(data, media_type=_MEDIA[kind],
                        headers={"Content-Disposition": f'inline; filename="{name}"', "Accept-Ranges": "none"})


def _read_result(path: Path, job_id: str) -> bytes:
    """A result file's bytes (read at once: the janitor may collect the job right after)."""
    try:
        return path.read_bytes()
    except OSError:
        raise RequestError(f"job {job_id} is gone: its results were removed", 410) from None


async def _read_form(request: Request, max_upload: int) -> tuple[dict[str, str], list[Upload]]:
    """Form fields and `refs` files, in upload order; file reads stop at the per-file limit."""
    form = await request.form(max_files=_MAX_FILES, max_fields=2 * len(FIELDS), max_part_size=64 * 1024)
    fields: dict[str, str] = {}
    uploads: list[Upload] = []
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key != "refs":
                    raise RequestError(f"unexpected file field {key[:30]!r}: send reference images as `refs`", 400)
                data = await value.read(max_upload + 1)
                if not value.filename and not data:
                    continue  # an empty file input of an HTML form
                uploads.append(Upload(value.filename or "", data, value.size))
            elif key == "refs":
                raise RequestError("refs must be uploaded image files (multipart file parts), not text: "
                                   "the server never reads paths", 400)
            elif key in fields:
                raise RequestError(f"field {key[:30]!r} given more than once", 400)
            else:
                fields[key] = value
    finally:
        await form.close()
    return fields, uploads
