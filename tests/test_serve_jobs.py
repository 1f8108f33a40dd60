"""The job manager (`idcrafter.serve.jobs`): bounded queues, one running job per device,
cancellation, expiry and a clean stop, with fake slots whose jobs block until released."""

from __future__ import annotations

import pytest
from serve_support import GatedSlot, png_bytes

from idcrafter.errors import InputError
from idcrafter.serve.jobs import JobManager
from idcrafter.serve.limits import RequestError, ServeLimits, Upload, parse_generate

CAPTION = "In a room: the person with pink hair waves."


def request(slot, n_refs: int = 1, **fields):
    ups = [Upload(f"r{i}.png", png_bytes()) for i in range(n_refs)]
    return parse_generate({"prompt": CAPTION, "model": slot.name, **fields}, ups, {slot.name: slot.bounds},
                          ServeLimits())


@pytest.fixture
def fake(tmp_path):
    slot = GatedSlot()
    mgr = JobManager({slot.name: slot}, ServeLimits(queue_size=2, keep_seconds=60, max_kept_jobs=3), root=tmp_path)
    yield slot, mgr
    slot.release.set()
    mgr.shutdown(timeout=5)


def test_queue_bound_and_positions(fake):
    slot, mgr = fake
    running = mgr.submit(request(slot))
    assert slot.started.wait(5)
    a, b = mgr.submit(request(slot)), mgr.submit(request(slot))
    assert mgr.status(running.id)["status"] == "running"
    assert [mgr.status(a.id)["position"], mgr.status(b.id)["position"]] == [1, 2]
    with pytest.raises(RequestError) as info:
        mgr.submit(request(slot))
    assert info.value.status == 429 and "queue for cpu is full (2 job(s) waiting, 1 running)" in str(info.value)
    assert info.value.headers.get("Retry-After")
    slot.release.set()
    for j in (running, a, b):
        assert mgr.wait(j.id, 10)["status"] == "done"
    assert mgr.submit(request(slot)) is not None  # room again once the queue drained


def test_one_running_job_per_device_and_devices_are_independent(tmp_path):
    s0, s1 = GatedSlot("m0", "cpu"), GatedSlot("m1", "cuda:0")
    mgr = JobManager({"m0": s0, "m1": s1}, ServeLimits(queue_size=1), root=tmp_path)
    try:
        j0, j0b = mgr.submit(request(s0)), mgr.submit(request(s0))
        j1 = mgr.submit(request(s1))  # another device: runs while cpu is busy
        assert s0.started.wait(5) and s1.started.wait(5)
        assert mgr.status(j0.id)["status"] == "running" and mgr.status(j1.id)["status"] == "running"
        assert mgr.status(j0b.id)["status"] == "queued"
        assert mgr.counts()["running"] == {"cpu": True, "cuda:0": True}
        mgr.check_capacity()  # cuda:0 still has a waiting place
        with pytest.raises(RequestError) as info:
            mgr.submit(request(s0))
        assert info.value.status == 429 and "queue for cpu is full" in str(info.value)
        mgr.submit(request(s1))
        with pytest.raises(RequestError) as info:
            mgr.check_capacity()
        assert info.value.status == 429 and "every device (cpu, cuda:0)" in str(info.value)
    finally:
        s0.release.set(), s1.release.set()
        mgr.shutdown(5)


def test_uploads_private_named_by_index_and_removed_when_finished(fake):
    slot, mgr = fake
    job = mgr.submit(request(slot, n_refs=2))
    assert slot.started.wait(5)
    seen = slot.seen_uploads[0]
    assert [p.name for p in seen] == ["ref_0.png", "ref_1.png"]  # never the client's names
    assert (mgr.root.stat().st_mode & 0o777) == 0o700
    slot.release.set()
    assert mgr.wait(job.id, 10)["status"] == "done"
    assert not any(p.exists() for p in seen) and not job.uploads.exists()
    assert job.file("video").is_file()


def test_cancel_queued_and_running(fake):
    slot, mgr = fake
    running = mgr.submit(request(slot))
    assert slot.started.wait(5)
    queued = mgr.submit(request(slot))
    out = mgr.cancel(queued.id)
    assert out["status"] == "failed" and out["cancelled"] and "before it ran" in out["error"]
    assert mgr.status(queued.id)["status"] == "failed"
    mgr.cancel(running.id)
    final = mgr.wait(running.id, 5)
    assert final["status"] == "failed" and final["cancelled"] and "during generation" in final["error"]
    assert running.file("video") is None
    # the worker survives and runs the next job
    slot.release.set()
    nxt = mgr.submit(request(slot))
    assert mgr.wait(nxt.id, 5)["status"] == "done"


def test_delete_finished_collects_it_then_410(fake):
    slot, mgr = fake
    slot.release.set()
    job = mgr.submit(request(slot))
    assert mgr.wait(job.id, 5)["status"] == "done"
    assert mgr.cancel(job.id) == {"job_id": job.id, "deleted": True}
    assert not job.folder.exists()
    with pytest.raises(RequestError) as info:
        mgr.status(job.id)
    assert info.value.status == 410 and "deleted by the client" in str(info.value)
    with pytest.raises(RequestError) as info:
        mgr.status("never-issued")
    assert info.value.status == 404


def test_shutdown_after_a_finished_job_was_collected_before_its_worker_let_go(fake):
    """The race CI can hit: a job finishes, the client deletes it, and shutdown runs before the
    worker thread clears `running`. Shutdown must not look the collected job up."""
    slot, mgr = fake
    slot.release.set()
    job = mgr.submit(request(slot))
    assert mgr.wait(job.id, 5)["status"] == "done"
    mgr.cancel(job.id)
    worker = next(iter(mgr._workers.values()))
    worker.running = job.id  # as if the worker had not yet reacquired the lock
    assert mgr.shutdown(timeout=5) == []


def test_failed_job_reports_error_and_worker_survives(fake):
    slot, mgr = fake
    slot.fail_with = RuntimeError("boom")
    slot.release.set()
    job = mgr.submit(request(slot))
    final = mgr.wait(job.id, 5)
    assert final["status"] == "failed" and "RuntimeError: boom" in final["error"] and not final["cancelled"]
    slot.fail_with = InputError("the prompt is wrong: fix it")
    final = mgr.wait(mgr.submit(request(slot)).id, 5)
    assert final["error"] == "the model refused the request: the prompt is wrong: fix it"
    slot.fail_with = None
    assert mgr.wait(mgr.submit(request(slot)).id, 5)["status"] == "done"


def test_expiry_and_max_kept(fake):
    slot, mgr = fake
    slot.release.set()
    jobs = [mgr.submit(request(slot)) for _ in range(2)]
    for j in jobs:
        mgr.wait(j.id, 5)
    more = [mgr.submit(request(slot)) for _ in range(2)]
    for j in more:
        mgr.wait(j.id, 5)
    # four finished, three kept at most: the oldest goes first
    assert mgr.collect_expired() == 1
    with pytest.raises(RequestError) as info:
        mgr.status(jobs[0].id)
    assert info.value.status == 410 and "at most 3" in str(info.value)
    assert mgr.status(jobs[1].id)["expires_in"] > 50
    # past keep_seconds: all collected and their folders removed
    assert mgr.collect_expired(now=max(j.finished for j in more) + 61) == 3
    assert not any(j.folder.exists() for j in jobs + more)
    with pytest.raises(RequestError) as info:
        mgr.status(more[-1].id)
    assert info.value.status == 410 and "60 s after it finished" in str(info.value)


def test_shutdown_fails_unfinished_jobs_and_removes_root(tmp_path):
    slot = GatedSlot()
    mgr = JobManager({slot.name: slot}, ServeLimits(queue_size=3), root=tmp_path)
    running = mgr.submit(request(slot))
    assert slot.started.wait(5)
    queued = mgr.submit(request(slot))
    failed = mgr.shutdown(timeout=5)
    assert set(failed) == {running.id, queued.id}
    assert running.status == "failed" and "server stopped during generation" in running.error
    assert queued.status == "failed" and "server stopped before this job ran" in queued.error
    assert not mgr.root.exists()
    assert not any(w.thread.is_alive() for w in mgr._workers.values())
    with pytest.raises(RequestError) as info:
        mgr.submit(request(slot))
    assert info.value.status == 503
    assert mgr.shutdown() == []  # idempotent
