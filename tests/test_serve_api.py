"""The HTTP API on a real loopback server: the shipped model end to end (the same video as the
shared generation loop gives), every status code, the queue limit, cancellation, a client that
disconnects, and a server that stops with jobs in flight."""

from __future__ import annotations

import json
import socket
import time

import numpy as np
import pytest
import requests
from serve_support import GatedSlot, huge_png, png_bytes, shipped_slot, wait_for

from idcrafter.serve.client import ApiError, Client
from idcrafter.serve.limits import ServeLimits
from idcrafter.serve.server import ServerThread, build

CAPTION = "In a room: the person with pink hair waves."


def post(url: str, refs: list[tuple[str, bytes]], **data) -> requests.Response:
    """Always multipart, even with no file (requests would send a urlencoded form)."""
    fields = [(k, (None, str(v))) for k, v in {"prompt": CAPTION, **data}.items()]
    files = [("refs", (name, blob, "image/png")) for name, blob in refs]
    return requests.post(f"{url}/api/generate", files=fields + files, timeout=30)


def error_of(r: requests.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["error"]


@pytest.fixture(scope="module")
def real():
    """The shipped SpriteWorld model behind a loopback server."""
    app, mgr = build([], slots=[shipped_slot()], limits=ServeLimits(queue_size=2), examples=2)
    server = ServerThread(app)
    url = server.start()
    yield url, mgr
    server.stop()


@pytest.fixture
def gated():
    """A fake model whose jobs block until released: deterministic queue states."""
    slot = GatedSlot(max_refs=3)
    app, mgr = build([], slots=[slot], limits=ServeLimits(queue_size=1, max_upload_bytes=100_000, max_refs=3))
    server = ServerThread(app)
    url = server.start()
    yield url, mgr, slot
    slot.release.set()
    server.stop()


def example_refs(url: str, i: int = 0) -> tuple[str, list[bytes]]:
    ex = requests.get(f"{url}/api/examples", timeout=10).json()["examples"][i]
    return ex["caption"], [requests.get(url + r, timeout=10).content for r in ex["refs"]]


def test_generate_end_to_end_is_the_shared_generation_path(real, tmp_path):
    from idcrafter.encoders.references import prepare_reference
    from idcrafter.generation import Case, GenerationSettings, generate
    from idcrafter.scorers import SpritesScorer
    from idcrafter.utils.media import load_image, read_video, write_mp4

    url, _ = real
    caption, refs = example_refs(url)
    client = Client(url)
    job = client.generate(refs, caption, steps=3, seed=5, cfg=2.0)
    st = client.wait(job, timeout=60)
    assert st["status"] == "done" and st["progress"] == 1.0 and st["error"] is None
    assert st["settings"] == {"steps": 3, "cfg": 2.0, "seed": 5, "frames": 5, "height": 48, "width": 48}
    assert [s["reference"] for s in st["per_subject"]] == list(range(len(refs)))
    assert set(st["files"]) == {"video", "sheet", "metrics"}
    served = tmp_path / "served.mp4"
    served.write_bytes(client.download(job, "video"))
    # the same request through the shared loop, outside the server
    pipe = shipped_slot().pipe
    paths = []
    for i, b in enumerate(refs):
        (tmp_path / f"r{i}.png").write_bytes(b)
        paths.append(tmp_path / f"r{i}.png")
    prepared = [prepare_reference(p, pipe.config.reference_size) for p in paths]
    (direct,) = generate(pipe, [Case("x", caption, prepared, seed=5, size=(5, 48, 48))],
                         GenerationSettings(steps=3, guidance=2.0))
    write_mp4(tmp_path / "direct.mp4", direct)
    a, b = read_video(served, (48, 48)), read_video(tmp_path / "direct.mp4", (48, 48))
    assert a.shape == (5, 48, 48, 3) and np.array_equal(a, b)
    report = SpritesScorer().score(direct, prepared, caption)
    assert st["per_subject"][0]["face_sim"] == pytest.approx(report.per_subject[0]["face_sim"], abs=1e-6)
    assert st["metrics"]["total"] == pytest.approx(report.metrics["total"], abs=1e-6)
    metrics = json.loads(client.download(job, "metrics"))
    assert metrics["metrics"]["total"] == pytest.approx(st["metrics"]["total"])
    assert load_image(_write(tmp_path / "sheet.png", client.download(job, "sheet"))).shape[2] == 3


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_free_text_prompt_still_scored_for_identity(real):
    url, _ = real
    _, refs = example_refs(url, 1)
    st = Client(url).wait(Client(url).generate(refs, "two friends in a room", steps=2), timeout=60)
    assert st["status"] == "done" and st["metrics"]["action_acc"] is None
    assert len(st["per_subject"]) == len(refs) and any("action_acc not scored" in n for n in st["notes"])


def test_refusals_have_status_and_json_message(real):
    url, _ = real
    good = ("a.png", png_bytes())
    assert "no reference image" in error_of(post(url, []), 400)
    assert "5 reference images given" in error_of(post(url, [good] * 5), 400)
    assert "steps must be between 1 and 100" in error_of(post(url, [good], steps="1000"), 400)
    assert "unknown field(s) 'path'" in error_of(post(url, [good], path="/etc/passwd"), 400)
    r = requests.post(f"{url}/api/generate", files=[("x", ("a.png", png_bytes()))], data={"prompt": "p"}, timeout=10)
    assert "unexpected file field" in error_of(r, 400)
    r = requests.post(f"{url}/api/generate", files=[("prompt", (None, "p")), ("refs", (None, "/etc/passwd"))],
                      timeout=10)
    assert "never reads paths" in error_of(r, 400)
    assert "is not an image" in error_of(post(url, [("notes.png", b"hello " * 100)]), 415)
    assert "megapixels" in error_of(post(url, [("big.png", huge_png(5000))]), 413)
    big = png_bytes() + b"\x00" * (8 * 2**20)  # a PNG padded past the 8 MB per-image limit
    assert "per image" in error_of(post(url, [("heavy.png", big)]), 413)
    r = requests.post(f"{url}/api/generate", json={"prompt": "p", "refs": ["/etc/passwd"]}, timeout=10)
    assert "multipart/form-data" in error_of(r, 415)
    assert "no job" in error_of(requests.get(f"{url}/api/jobs/unknownid", timeout=10), 404)
    assert "malformed job id" in error_of(requests.get(f"{url}/api/jobs/bad%24id", timeout=10), 404)
    assert error_of(requests.get(f"{url}/api/jobs/..%2F..%2Fetc%2Fpasswd/video", timeout=10), 404)
    assert "no such endpoint" in error_of(requests.get(f"{url}/api/nothing", timeout=10), 404)
    assert "not allowed" in error_of(requests.put(f"{url}/api/generate", timeout=10), 405)
    assert error_of(requests.get(f"{url}/static/..%2F..%2Fpyproject.toml", timeout=10), 404)
    assert error_of(requests.get(f"{url}/api/examples/99/refs/0", timeout=10), 404)


def test_oversized_bodies_refused_before_parsing(real):
    url, mgr = real
    limit = mgr.limits.max_body_bytes
    blob = b"\x00" * (limit + 1)
    r = requests.post(f"{url}/api/generate", data=blob, timeout=30,
                      headers={"content-type": "multipart/form-data; boundary=x"})
    assert "larger than" in error_of(r, 413)

    def chunks():  # valid multipart without Content-Length: counted as it arrives
        yield (b'--x\r\nContent-Disposition: form-data; name="refs"; filename="a.png"\r\n'
               b"Content-Type: image/png\r\n\r\n")
        for _ in range(limit // 2**20 + 2):
            yield b"\x00" * 2**20
        yield b"\r\n--x--\r\n"

    r = requests.post(f"{url}/api/generate", data=chunks(), timeout=30,
                      headers={"content-type": "multipart/form-data; boundary=x"})
    assert "larger than" in error_of(r, 413)
    assert requests.get(f"{url}/api/health", timeout=10).json()["ok"]


def test_page_and_security_headers(real):
    url, _ = real
    r = requests.get(url, timeout=10)
    assert r.status_code == 200 and "<title>idcrafter</title>" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert requests.get(f"{url}/static/app.js", timeout=10).headers["content-type"].startswith("text/javascript")
    models = requests.get(f"{url}/api/models", timeout=10).json()
    assert models["models"][0]["max_refs"] == 4 and models["models"][0]["scorer"] == "SpriteWorld judge"


def test_queue_limit_409_and_cancel_over_http(gated):
    url, mgr, slot = gated
    good = [("a.png", png_bytes())]
    r1 = post(url, good)
    assert r1.status_code == 202 and slot.started.wait(5)
    j1 = r1.json()["job_id"]
    r2 = post(url, good)
    assert r2.status_code == 202
    j2 = r2.json()["job_id"]
    r3 = post(url, good)
    assert "queue for cpu is full" in error_of(r3, 429) and r3.headers["retry-after"] == "5"
    assert requests.get(f"{url}/api/jobs/{j2}", timeout=10).json()["position"] == 1
    assert "is running" in error_of(requests.get(f"{url}/api/jobs/{j1}/video", timeout=10), 409)
    r = requests.delete(f"{url}/api/jobs/{j2}", timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "failed" and r.json()["cancelled"]
    assert "has no video" in error_of(requests.get(f"{url}/api/jobs/{j2}/video", timeout=10), 409)
    assert requests.delete(f"{url}/api/jobs/{j1}", timeout=10).status_code == 200
    st = Client(url).wait(j1, timeout=10, every=0.02)
    assert st["status"] == "failed" and "cancelled by the client during generation" in st["error"]
    slot.release.set()
    j3 = post(url, good).json()["job_id"]
    assert Client(url).wait(j3, timeout=10, every=0.02)["status"] == "done"
    assert requests.get(f"{url}/api/jobs/{j3}/video", timeout=10).status_code == 200
    assert requests.delete(f"{url}/api/jobs/{j3}", timeout=10).json() == {"job_id": j3, "deleted": True}
    assert "is gone" in error_of(requests.get(f"{url}/api/jobs/{j3}", timeout=10), 410)
    assert "is gone" in error_of(requests.get(f"{url}/api/jobs/{j3}/video", timeout=10), 410)


def test_cancel_a_real_running_job(real):
    url, _ = real
    client = Client(url)
    job = client.generate([png_bytes(), png_bytes(color=(20, 90, 200))], CAPTION, steps=100)
    assert wait_for(lambda: client.status(job)["progress"] > 0.05, timeout=30)
    t0 = time.time()
    client.cancel(job)
    st = client.wait(job, timeout=30, every=0.05)
    assert st["status"] == "failed" and st["cancelled"] and 0.05 < st["progress"] < 0.9
    assert time.time() - t0 < 5


def _raw_multipart(prompt: str, blob: bytes) -> bytes:
    b = "xyzBOUNDARY"
    body = (f"--{b}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n{prompt}\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"steps\"\r\n\r\n2\r\n"
            f"--{b}\r\nContent-Disposition: form-data; name=\"refs\"; filename=\"a.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + blob + f"\r\n--{b}--\r\n".encode()
    head = (f"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={b}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def test_client_that_disconnects_keeps_its_job(real):
    url, mgr = real
    port = int(url.rsplit(":", 1)[1])
    before = set(mgr._jobs)
    request = _raw_multipart("disconnect " + CAPTION, png_bytes())
    with socket.create_connection(("127.0.0.1", port)) as s:  # sends everything, reads nothing
        s.sendall(request)
    assert wait_for(lambda: set(mgr._jobs) - before, timeout=10)
    (job_id,) = set(mgr._jobs) - before
    assert mgr.wait(job_id, 60)["status"] == "done"
    # a client that drops in the middle of its upload creates no job and breaks nothing
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(request[: len(request) // 2])
    time.sleep(0.3)
    assert set(mgr._jobs) - before == {job_id}
    assert requests.get(f"{url}/api/health", timeout=10).json()["ok"]


def test_stopping_the_server_fails_in_flight_jobs():
    slot = GatedSlot()
    app, mgr = build([], slots=[slot], limits=ServeLimits(queue_size=2))
    server = ServerThread(app)
    url = server.start()
    client = Client(url)
    running = client.generate([png_bytes()], CAPTION)
    assert slot.started.wait(5)
    queued = client.generate([png_bytes()], CAPTION)
    t0 = time.time()
    server.stop(timeout=20)
    assert not server.thread.is_alive() and time.time() - t0 < 15
    assert mgr._jobs[running].status == "failed" and "server stopped during generation" in mgr._jobs[running].error
    assert mgr._jobs[queued].status == "failed" and "before this job ran" in mgr._jobs[queued].error
    assert not mgr.root.exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=2)


def test_503_while_stopping(gated):
    url, mgr, slot = gated
    mgr.closing = True  # the state between the stop signal and the end of the lifespan
    try:
        with pytest.raises(ApiError) as info:
            Client(url).generate([png_bytes()], CAPTION)
        assert info.value.status == 503 and "stopping" in info.value.message
    finally:
        mgr.closing = False
