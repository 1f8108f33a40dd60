"""Jobs: a bounded queue per device, one running job per device, expiry, cancellation, stop.

Life of a job: `submit` checks capacity (`QueueFull` -> HTTP 429), writes the checked uploads
into the job's own folder under a private (0700) temporary root, and queues it. The device's
worker thread runs it through its `ModelSlot`; progress reports go through `Job.report`, which
raises `JobCancelled` once the job is cancelled, so a running job stops at its next step. When
the job ends (done or failed) its uploads are deleted; its results stay for
`limits.keep_seconds`, then the janitor collects the whole folder (ids of collected jobs are
remembered, bounded, so a late poll gets 410 instead of 404). `shutdown` fails queued and
running jobs with a message, joins the workers and removes the root.

Nothing here depends on HTTP; the client's connection plays no part in a job's life, so a
client that disconnects loses nothing (it polls again with its job id).
"""

from __future__ import annotations

import collections
import logging
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from idcrafter.errors import InputError
from idcrafter.serve.limits import GenerateRequest, RequestError, ServeLimits
from idcrafter.serve.runner import JobCancelled, JobResult, ModelSlot

log = logging.getLogger("idcrafter.serve")

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
_EXPIRED_IDS_KEPT = 4096


@dataclass
class Job:
    id: str
    model: str
    device: str
    request: GenerateRequest
    folder: Path
    status: str = QUEUED
    stage: str = "queued"
    progress: float = 0.0
    error: str | None = None
    cancelled: bool = False
    result: JobResult | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _cancel_reason: str = field(default="", repr=False)

    @property
    def uploads(self) -> Path:
        return self.folder / "uploads"

    @property
    def results(self) -> Path:
        return self.folder / "results"

    def report(self, progress: float, stage: str) -> None:
        """Progress from the runner; raises `JobCancelled` once the job is cancelled."""
        if self._cancel.is_set():
            raise JobCancelled(self._cancel_reason)
        self.progress = max(self.progress, min(float(progress), 1.0))
        self.stage = stage

    def file(self, kind: str) -> Path | None:
        """A result file by kind ("video", "sheet", "metrics") once the job is done."""
        if self.status != DONE or self.result is None or kind not in self.result.files:
            return None
        return self.results / self.result.files[kind]

    def public(self, position: int | None, keep_seconds: float) -> dict[str, Any]:
        """The JSON a client sees (`GET /api/jobs/{id}`)."""
        r = self.result
        out: dict[str, Any] = {
            "job_id": self.id, "model": self.model, "status": self.status, "stage": self.stage,
            "progress": round(self.progress, 4), "error": self.error, "cancelled": self.cancelled,
            "metrics": r.metrics if r else {}, "per_subject": r.per_subject if r else [],
            "notes": r.notes if r else [], "settings": r.settings if r else self.request.settings(),
            "references": len(self.request.refs), "created": self.created, "started": self.started,
            "finished": self.finished}
        if position is not None:
            out["position"] = position
        if self.finished is not None:
            out["expires_in"] = max(0.0, round(self.finished + keep_seconds - time.time(), 1))
        if self.status == DONE and r is not None:
            out["files"] = {k: f"/api/jobs/{self.id}/{k}" for k in r.files}
        return out


class _Worker:
    """One thread per device: runs that device's jobs one at a time, in order."""

    def __init__(self, manager: "JobManager", device: str):
        self.manager, self.device = manager, device
        self.queue: collections.deque[str] = collections.deque()
        self.running: str | None = None
        self.thread = threading.Thread(target=self._loop, name=f"idcrafter-serve-{device}", daemon=True)

    def _loop(self) -> None:
        m = self.manager
        while True:
            with m._cond:
                while not self.queue and not m.closing:
                    m._cond.wait()
                if m.closing:
                    return
                job = m._jobs[self.queue.popleft()]
                job.status, job.stage, job.started = RUNNING, "starting", time.time()
                self.running = job.id
            m._run(job)
            with m._cond:
                self.running = None
                m._cond.notify_all()


class JobManager:
    """Queues, runs and keeps jobs for a set of model slots (see the module docstring)."""

    def __init__(self, slots: dict[str, ModelSlot], limits: ServeLimits, root: str | Path | None = None):
        if not slots:
            raise ValueError("a job manager needs at least one model slot")
        self.slots, self.limits = slots, limits
        # mkdtemp makes the folder 0700: uploads and results are private to this user
        self.root = Path(tempfile.mkdtemp(prefix="idcrafter-serve-", dir=root))
        self._cond = threading.Condition()
        self._jobs: dict[str, Job] = {}
        self._expired: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._workers = {d: _Worker(self, d) for d in sorted({s.device for s in slots.values()})}
        self.closing = False
        self._janitor = threading.Thread(target=self._janitor_loop, name="idcrafter-serve-janitor", daemon=True)
        for w in self._workers.values():
            w.thread.start()
        self._janitor.start()

    # ------------------------------------------------------------------ client side
    def _full(self, worker: "_Worker") -> bool:
        # capacity counts the running job too, so a job the worker has not picked up yet does
        # not take a waiting place
        return len(worker.queue) + (worker.running is not None) >= self.limits.queue_size + 1

    def _refuse_full(self, device: str) -> RequestError:
        w = self._workers[device]
        return RequestError(f"the queue for {device} is full ({len(w.queue)} job(s) waiting, "
                            f"{1 if w.running else 0} running): try again in a few seconds", 429,
                            {"Retry-After": "5"})

    def check_capacity(self) -> None:
        """Refuse (429 / 503) before a request is even parsed when no device could take it."""
        with self._cond:
            if self.closing:
                raise RequestError("the server is stopping: submit the job again once it is back", 503)
            if all(self._full(w) for w in self._workers.values()):
                if len(self._workers) == 1:
                    raise self._refuse_full(next(iter(self._workers)))
                raise RequestError(f"the queues of every device ({', '.join(self._workers)}) are full: "
                                   f"try again in a few seconds", 429, {"Retry-After": "5"})

    def submit(self, req: GenerateRequest) -> Job:
        slot = self.slots[req.model]
        worker = self._workers[slot.device]
        with self._cond:
            if self.closing:
                raise RequestError("the server is stopping: submit the job again once it is back", 503)
            if self._full(worker):
                raise self._refuse_full(slot.device)
            job = Job(secrets.token_urlsafe(16), req.model, slot.device, req, self.root / "pending")
            job.folder = self.root / job.id
            self._jobs[job.id] = job
        try:
            job.uploads.mkdir(parents=True)
            job.results.mkdir()
            for ref in req.refs:  # fixed names: the client's file name is never a path
                (job.uploads / f"ref_{ref.index}.{ref.ext}").write_bytes(ref.data)
        except OSError as exc:
            with self._cond:
                self._jobs.pop(job.id, None)
            shutil.rmtree(job.folder, ignore_errors=True)
            raise RequestError(f"the server cannot store the upload ({exc.strerror}): try again later", 507) from None
        with self._cond:
            worker.queue.append(job.id)
            self._cond.notify_all()
        log.info("job %s queued on %s (%s, %d refs)", job.id, slot.device, req.model, len(req.refs))
        return job

    def get(self, job_id: str) -> Job:
        with self._cond:
            job = self._jobs.get(job_id)
            if job is not None:
                return job
            if job_id in self._expired:
                raise RequestError(f"job {job_id} is gone: {self._expired[job_id]}", 410)
        raise RequestError(f"no job {job_id[:40]!r}: check the id returned by POST /api/generate", 404)

    def status(self, job_id: str) -> dict[str, Any]:
        with self._cond:
            job = self.get(job_id)
            return job.public(self._position(job), self.limits.keep_seconds)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Queued: fails at once; running: stops at its next step; finished: results deleted."""
        with self._cond:
            job = self.get(job_id)
            worker = self._workers[job.device]
            if job.status == QUEUED:
                worker.queue.remove(job.id)
                self._finish(job, FAILED, "cancelled by the client before it ran", cancelled=True)
            elif job.status == RUNNING:
                job._cancel_reason = "cancelled by the client during generation"
                job._cancel.set()
                job.stage = "cancelling"
            else:
                self._collect(job, "deleted by the client")
                return {"job_id": job_id, "deleted": True}
            return job.public(self._position(job), self.limits.keep_seconds)

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        """Block until the job finishes (tests and scripts); returns its status."""
        deadline = time.time() + timeout
        with self._cond:
            while True:
                job = self.get(job_id)
                if job.status in (DONE, FAILED) or time.time() >= deadline:
                    return job.public(None, self.limits.keep_seconds)
                self._cond.wait(timeout=min(0.5, max(deadline - time.time(), 0.01)))

    def counts(self) -> dict[str, Any]:
        with self._cond:
            by = collections.Counter(j.status for j in self._jobs.values())
            return {"jobs": dict(by), "queues": {d: len(w.queue) for d, w in self._workers.items()},
                    "running": {d: w.running is not None for d, w in self._workers.items()}}

    # ------------------------------------------------------------------ worker side
    def _position(self, job: Job) -> int | None:
        if job.status != QUEUED:
            return None
        q = self._workers[job.device].queue
        return q.index(job.id) + 1 if job.id in q else None

    def _run(self, job: Job) -> None:
        slot = self.slots[job.model]
        refs = sorted(job.uploads.iterdir(), key=lambda p: int(p.stem.split("_")[1]))
        try:
            result = slot.run(job.request, refs, job.results, job.report)
        except JobCancelled as exc:
            with self._cond:
                self._finish(job, FAILED, str(exc) or "cancelled", cancelled=True)
            log.info("job %s cancelled: %s", job.id, exc)
            return
        except InputError as exc:  # what the pipeline refuses: the message says what to change
            with self._cond:
                self._finish(job, FAILED, f"the model refused the request: {exc}"[:500])
            return
        except Exception as exc:  # noqa: BLE001 - a failed job must not kill the device's worker
            log.exception("job %s failed", job.id)
            with self._cond:
                self._finish(job, FAILED, f"generation failed: {exc.__class__.__name__}: {exc}"[:500])
            return
        with self._cond:
            job.result = result
            self._finish(job, DONE, None)
        log.info("job %s done in %.2f s", job.id, job.finished - (job.started or job.finished))

    def _finish(self, job: Job, status: str, error: str | None, cancelled: bool = False) -> None:
        """Under the lock: final state; the uploads are no longer needed."""
        job.status, job.error, job.cancelled = status, error, cancelled
        job.stage = status if not cancelled else "cancelled"
        if status == DONE:
            job.progress = 1.0
        job.finished = time.time()
        shutil.rmtree(job.uploads, ignore_errors=True)
        self._cond.notify_all()

    def _collect(self, job: Job, why: str) -> None:
        """Under the lock: forget a finished job and delete its folder."""
        self._jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)
        self._expired[job.id] = why
        while len(self._expired) > _EXPIRED_IDS_KEPT:
            self._expired.popitem(last=False)

    def collect_expired(self, now: float | None = None) -> int:
        """Collect jobs finished more than `keep_seconds` ago, and the oldest beyond `max_kept_jobs`."""
        now = time.time() if now is None else now
        keep = self.limits.keep_seconds
        with self._cond:
            finished = sorted((j for j in self._jobs.values() if j.finished is not None), key=lambda j: j.finished)
            old = [j for j in finished if now - j.finished > keep]
            extra = finished[len(old):][: max(0, len(finished) - len(old) - self.limits.max_kept_jobs)]
            for j in old:
                self._collect(j, f"its results were removed {keep:g} s after it finished")
            for j in extra:
                self._collect(j, f"its results were removed to keep at most {self.limits.max_kept_jobs} jobs")
            return len(old) + len(extra)

    def _janitor_loop(self) -> None:
        period = min(30.0, max(self.limits.keep_seconds / 4, 0.2))
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self.closing, timeout=period)
                if self.closing:
                    return
            self.collect_expired()

    # ------------------------------------------------------------------ stop
    def shutdown(self, timeout: float = 30.0) -> list[str]:
        """Fail every unfinished job with a message, stop the workers, delete the root folder.
        Returns the ids of the jobs that were failed."""
        with self._cond:
            if self.closing:
                return []
            self.closing = True
            failed = []
            for w in self._workers.values():
                while w.queue:
                    job = self._jobs[w.queue.popleft()]
                    self._finish(job, FAILED, "the server stopped before this job ran: submit it again")
                    failed.append(job.id)
                # a worker clears `running` only after its job has finished, and a finished job may
                # already be collected (DELETE, the janitor): only a job still running is cancelled
                job = self._jobs.get(w.running) if w.running is not None else None
                if job is not None and job.status == RUNNING:
                    job._cancel_reason = "the server stopped during generation: submit the job again"
                    job._cancel.set()
                    failed.append(job.id)
            self._cond.notify_all()
        deadline = time.time() + timeout
        for w in self._workers.values():
            w.thread.join(max(0.0, deadline - time.time()))
        self._janitor.join(1.0)
        stuck = [w.device for w in self._workers.values() if w.thread.is_alive()]
        if stuck:
            log.warning("worker(s) on %s still busy after %.0f s; leaving them", ", ".join(stuck), timeout)
        shutil.rmtree(self.root, ignore_errors=True)
        if failed:
            log.info("stopped: failed %d unfinished job(s): %s", len(failed), ", ".join(failed))
        return failed
