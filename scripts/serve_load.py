"""Load test of `idcrafter serve` on loopback: N concurrent clients, bounded in count and time.

Starts `idcrafter serve` as a separate process on a free 127.0.0.1 port, then runs `--clients`
threads; each submits `--requests` jobs one after another (a held-out example with its
caption, few steps) and polls each accepted job to the end. Every request must be either
accepted (202, and then its job finishes and its video downloads) or refused with 429; any 5xx,
other status, connection error or job that never finishes counts as lost. Prints the figures
(latency percentiles, throughput) and, with `--write-docs`, puts them in docs/serving.md
between the `serve-load` markers. Exit status 1 if anything was lost.

    .venv/bin/python scripts/serve_load.py --clients 20 --requests 3 --queue-size 4 --steps 4 --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "serving.md"
BEGIN, END = "<!-- serve-load -->", "<!-- /serve-load -->"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "idcrafter.cli", "serve", "--model", str(args.model), "--port", str(port),
           "--queue-size", str(args.queue_size), "--device", "cpu", "--log-level", "warning"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if requests.get(f"{url}/api/health", timeout=2).ok:
                return proc
        except requests.ConnectionError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start; its log:\n{log.read_text()}")


class Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: Counter = Counter()
        self.post_s: list[float] = []
        self.post_202_s: list[float] = []
        self.post_429_s: list[float] = []
        self.poll_s: list[float] = []
        self.e2e_s: list[float] = []
        self.run_s: list[float] = []  # server side: started -> finished
        self.done = self.failed = self.lost = 0
        self.problems: list[str] = []

    def add(self, **kw) -> None:
        with self.lock:
            for k, v in kw.items():
                if isinstance(v, list):
                    getattr(self, k).extend(v)
                else:
                    setattr(self, k, getattr(self, k) + v)


def client(i: int, url: str, examples: list[dict], args: argparse.Namespace, stats: Stats, deadline: float) -> None:
    s = requests.Session()
    ex = examples[i % len(examples)]
    refs = [("refs", (f"r{k}.png", s.get(url + r, timeout=30).content, "image/png")) for k, r in enumerate(ex["refs"])]
    for r in range(args.requests):
        if time.time() > deadline:
            stats.add(lost=1, problems=[f"client {i}: request {r} not sent before the deadline"])
            continue
        data = {"prompt": ex["caption"], "steps": str(args.steps), "seed": str(i * 100 + r)}
        t0 = time.perf_counter()
        try:
            resp = s.post(f"{url}/api/generate", files=refs, data=data, timeout=60)
        except requests.RequestException as exc:
            stats.add(lost=1, problems=[f"client {i}: POST raised {exc.__class__.__name__}"])
            continue
        took = time.perf_counter() - t0
        stats.add(post_s=[took], **({"post_202_s": [took]} if resp.status_code == 202 else
                                    {"post_429_s": [took]} if resp.status_code == 429 else {}))
        with stats.lock:
            stats.codes[resp.status_code] += 1
        if resp.status_code == 429:
            time.sleep(min(float(resp.headers.get("Retry-After", 1)), args.backoff))
            continue
        if resp.status_code != 202:
            stats.add(lost=1, problems=[f"client {i}: POST {resp.status_code} {resp.text[:120]}"])
            continue
        job = resp.json()["job_id"]
        while True:
            t1 = time.perf_counter()
            try:
                st = s.get(f"{url}/api/jobs/{job}", timeout=30)
            except requests.RequestException as exc:
                stats.add(lost=1, problems=[f"client {i}: GET raised {exc.__class__.__name__}"])
                break
            stats.add(poll_s=[time.perf_counter() - t1])
            body = st.json() if st.ok else {}
            if not st.ok:
                stats.add(lost=1, problems=[f"client {i}: GET {st.status_code} {st.text[:120]}"])
                break
            if body["status"] == "done":
                video = s.get(f"{url}/api/jobs/{job}/video", timeout=30)
                if video.status_code == 200 and video.content[4:8] == b"ftyp":
                    stats.add(done=1, e2e_s=[time.perf_counter() - t0], run_s=[body["finished"] - body["started"]])
                else:
                    stats.add(lost=1, problems=[f"client {i}: video {video.status_code}"])
                break
            if body["status"] == "failed":
                stats.add(failed=1, lost=1, problems=[f"client {i}: job failed: {body['error']}"])
                break
            if time.time() > deadline:
                stats.add(lost=1, problems=[f"client {i}: job {job} unfinished at the deadline"])
                break
            time.sleep(args.poll)


def pct(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values) * 1000
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()), "n": len(values)}


def run(args: argparse.Namespace) -> dict:
    port = free_port()
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine, said beside the figures
    log = Path(args.log)
    proc = start_server(args, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        examples = requests.get(f"{url}/api/examples", timeout=30).json()["examples"]
        if not examples:
            raise SystemExit("the model has no held-out examples (not a SpriteWorld model?)")
        stats = Stats()
        deadline = time.time() + args.deadline
        threads = [threading.Thread(target=client, args=(i, url, examples, args, stats, deadline))
                   for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(args.deadline + 120)
        wall = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
    sent = sum(stats.codes.values())
    five = sum(v for k, v in stats.codes.items() if k >= 500)
    return {"clients": args.clients, "requests_per_client": args.requests, "requests": args.clients * args.requests,
            "sent": sent, "accepted": stats.codes.get(202, 0), "refused_429": stats.codes.get(429, 0),
            "status_5xx": five, "other_status": sent - stats.codes.get(202, 0) - stats.codes.get(429, 0) - five,
            "done": stats.done, "failed": stats.failed, "lost": stats.lost, "problems": stats.problems[:20],
            "wall_s": wall, "jobs_per_s": stats.done / wall, "requests_per_s": sent / wall,
            "post_ms": pct(stats.post_s), "post_202_ms": pct(stats.post_202_s), "post_429_ms": pct(stats.post_429_s),
            "status_ms": pct(stats.poll_s), "job_ms": pct(stats.e2e_s),
            "run_ms": pct(stats.run_s), "load_average_1min": load_before,
            "queue_size": args.queue_size, "steps": args.steps, "threads": args.threads, "model": str(args.model)}


def table(res: dict) -> str:
    def row(name: str, p: dict) -> str:
        return (f"| {name} | {p.get('n', 0)} | {p.get('p50', 0):.0f} | {p.get('p90', 0):.0f} | "
                f"{p.get('p99', 0):.0f} | {p.get('max', 0):.0f} |")

    cmd = (f"python scripts/serve_load.py --clients {res['clients']} --requests {res['requests_per_client']} "
           f"--queue-size {res['queue_size']} --steps {res['steps']} --threads {res['threads']} --write-docs")
    return "\n".join([
        f"Measured {date.today().isoformat()} on this project's machine (2 shared CPU cores, {platform.machine()}), "
        f"`{cmd}`: {res['clients']} concurrent clients x {res['requests_per_client']} requests, one CPU device, "
        f"queue size {res['queue_size']}, {res['steps']} steps on the shipped SpriteWorld model; the machine's "
        f"1-minute load average was {res['load_average_1min']} when it started (other work shares the cores).", "",
        "| requests | accepted (202) | refused (429) | 5xx | other | lost | jobs done | wall (s) | jobs/s | requests/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {res['requests']} | {res['accepted']} | {res['refused_429']} | {res['status_5xx']} | {res['other_status']} | "
        f"{res['lost']} | {res['done']} | {res['wall_s']:.1f} | {res['jobs_per_s']:.2f} | {res['requests_per_s']:.2f} |",
        "", "| latency (ms) | n | p50 | p90 | p99 | max |", "|---|---|---|---|---|---|",
        row("POST /api/generate, accepted (202)", res["post_202_ms"]),
        row("POST /api/generate, refused (429)", res["post_429_ms"]), row("GET /api/jobs/{id}", res["status_ms"]),
        row("job, submit to video downloaded", res["job_ms"]), row("job run on the server (no queue wait)", res["run_ms"])])


def write_docs(text: str) -> None:
    from idcrafter.utils.io import atomic_write_text

    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        raise SystemExit(f"{DOC} has no {BEGIN} ... {END} section")
    head, rest = doc.split(BEGIN, 1)
    atomic_write_text(DOC, head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "assets" / "checkpoints" / "sprites-sft"))
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=3, help="requests per client")
    ap.add_argument("--queue-size", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server")
    ap.add_argument("--deadline", type=float, default=600.0, help="seconds after which clients stop")
    ap.add_argument("--poll", type=float, default=0.2, help="seconds between status polls")
    ap.add_argument("--backoff", type=float, default=1.0, help="longest wait after a 429 (Retry-After capped)")
    ap.add_argument("--log", default="/tmp/idcrafter-serve-load.log")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not (1 <= args.clients <= 64 and 1 <= args.requests <= 20 and 1 <= args.deadline <= 1800):
        raise SystemExit("bounded load only: clients 1..64, requests 1..20, deadline 1..1800 s")
    res = run(args)
    print(json.dumps(res, indent=2) if args.json else table(res))
    if res["problems"]:
        print("problems:", *res["problems"], sep="\n  ", file=sys.stderr)
    if args.write_docs:
        write_docs(table(res))
        print(f"wrote {DOC}", file=sys.stderr)
    sys.exit(1 if res["lost"] or res["status_5xx"] or res["other_status"] else 0)


if __name__ == "__main__":
    main()
