"""Benchmark: the HTTP service under load: the real uvicorn server on localhost, N concurrent clients.

Usage: ``.venv/bin/python bench/serve_load.py [BUNDLE] [--duration 60] [--concurrency 16] [--data DIR]
[--workers 2] [--out bench/results/serve_load.json]``

- Server: ``brainmri serve``'s app (``create_app`` + uvicorn) in a child process on 127.0.0.1 and a free
  port, with the given ``--workers`` (inference threads, 1 ONNX Runtime thread each); started, waited for
  on ``/ready``, and stopped at the end (it is only ever bound to localhost).
- Clients: ``--concurrency`` keep-alive connections in one asyncio loop, each sending ``POST /v1/predict``
  with a real ``brain-tumor-mri/Training`` image (64 files spread over the four classes, cycled) and
  reading the full answer before sending the next; a minimal HTTP/1.1 client on asyncio streams (pre-built
  request bytes) so the load generator takes as little of the shared CPU as possible. Each loop stops at
  the deadline (``--duration`` seconds) or after ``--max-requests``: bounded, it always ends.
- Bundle: the argument, else ``bundles/cpu-fast`` when present, else an *untrained* efficientnet_lite0
  (offline weights) exported at the CPU recipe's size with the default preprocessing (latency does not
  depend on the weights' values); the JSON says which.

Writes requests/s, latency p50/p95/p99/max, errors by kind, status counts, server-side timings, machine
facts (cores, versions) and the load average. Run it alone: it is a timing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
AIMS = {"requests_per_s": 60.0, "p99_ms": 250.0, "errors": 0}

SERVER = """
import sys, uvicorn
from brainmri.serve.app import create_app
from brainmri.serve.settings import ServeSettings
settings = ServeSettings(port=int(sys.argv[2]), workers=int(sys.argv[3]), threads=1, queue_limit=256,
                         access_log=False)
uvicorn.run(create_app(sys.argv[1], settings), host="127.0.0.1", port=settings.port, log_level="warning",
            access_log=False)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def request_bytes(port: int, name: str, data: bytes) -> bytes:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: keep-alive\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return status, await reader.readexactly(length)


async def client_loop(port: int, requests: list[bytes], offset: int, deadline: float, budget: list[int], out: dict):
    """One keep-alive connection: send, read the whole answer, repeat until the deadline or the budget."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    try:
        while time.perf_counter() < deadline and budget[0] > 0:
            budget[0] -= 1
            start = time.perf_counter()
            try:
                writer.write(requests[i % len(requests)])
                await writer.drain()
                status, body = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError) as exc:
                out["errors"].append(f"connection: {type(exc).__name__}")
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            out["latency_ms"].append((time.perf_counter() - start) * 1000.0)
            out["status"][status] = out["status"].get(status, 0) + 1
            if status == 200:
                out["server_ms"].append(json.loads(body)["timings_ms"])
            else:
                out["errors"].append(f"HTTP {status}: {body[:200].decode('utf-8', 'replace')}")
            i += 1
    finally:
        writer.close()


async def run_load(port: int, requests: list[bytes], concurrency: int, duration: float, max_requests: int) -> dict:
    out: dict[str, Any] = {"latency_ms": [], "status": {}, "errors": [], "server_ms": []}
    budget = [max_requests]
    start = time.perf_counter()
    deadline = start + duration
    loops = [client_loop(port, requests, k * 7, deadline, budget, out) for k in range(concurrency)]
    await asyncio.gather(*loops)
    out["wall_s"] = time.perf_counter() - start
    return out


def start_server(bundle: Path, port: int, workers: int) -> subprocess.Popen:
    env = {**os.environ, "BRAINMRI_NO_PROGRESS": "1"}
    env.pop("BRAINMRI_API_KEY", None)
    cmd = [sys.executable, "-c", SERVER, str(bundle), str(port), str(workers)]
    proc = subprocess.Popen(cmd, env=env)
    import urllib.request

    for _ in range(600):  # up to 60 s for the bundle to load, verify and warm up
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server not ready after 60 s")


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    lat = np.asarray(raw["latency_ms"]) if raw["latency_ms"] else np.zeros(1)
    n_ok = raw["status"].get(200, 0)
    server = {}
    for key in ("decode", "preprocess", "model", "total"):
        values = [t[key] for t in raw["server_ms"] if key in t]
        if values:
            server[f"{key}_p50_ms"] = round(float(np.percentile(values, 50)), 2)
    errors: dict[str, int] = {}
    for e in raw["errors"]:
        errors[e[:80]] = errors.get(e[:80], 0) + 1
    return {
        "requests": len(raw["latency_ms"]),
        "ok": n_ok,
        "errors": len(raw["errors"]),
        "error_kinds": errors,
        "status_counts": {str(k): v for k, v in sorted(raw["status"].items())},
        "wall_s": round(raw["wall_s"], 2),
        "requests_per_s": round(n_ok / raw["wall_s"], 2),
        "latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 2) for q in ("p50", "p95", "p99")}
        | {"max": round(float(lat.max()), 2), "mean": round(float(lat.mean()), 2)},
        "server_side_ms": server,
    }


def choose_bundle(arg: str | None, work: Path, data: Path, keep: str | None = None) -> tuple[Path, str]:
    if arg:
        return Path(arg), f"given: {arg}"
    default = REPO / "bundles" / "cpu-fast"
    if default.is_dir():
        return default, "bundles/cpu-fast (trained CPU recipe)"
    from latency import build_default_bundle, default_sizes, real_images

    size = min(default_sizes())
    note = f"untrained efficientnet_lite0 (weights=offline), {size} px, default preprocessing (no bundle given)"
    work = Path(keep) if keep else work
    if (work / f"bundle{size}" / "card.json").is_file():
        return work / f"bundle{size}", note
    print(f"no bundle given and no bundles/cpu-fast: exporting an untrained efficientnet_lite0 at {size} px ...")
    work.mkdir(parents=True, exist_ok=True)
    return build_default_bundle(work, size, real_images(data, 20)), note


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("BRAINMRI_NO_PROGRESS", "1")
    from brainmri.utils import atomic_write_json, machine_facts
    from latency import git_state, real_images

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", nargs="?", help="bundle folder (default: bundles/cpu-fast, else an untrained one)")
    default_data = os.environ.get("BRAINMRI_SHARED_DATA") or str(REPO.parent / "shared" / "data")
    ap.add_argument("--data", default=default_data, help="shared data folder (holds brain-tumor-mri/)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent keep-alive clients (default 16)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server inference threads")
    ap.add_argument("--max-requests", type=int, default=100_000, help="stop after this many requests")
    ap.add_argument("--bundle-out", default=None, help="keep the exported default bundle here (reuse it next time)")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of load before measuring")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "serve_load.json"))
    args = ap.parse_args(argv)

    data = Path(args.data)
    if not (data / "brain-tumor-mri" / "Training").is_dir():
        print(f"error: {data}/brain-tumor-mri/Training not found (pass --data)", file=sys.stderr)
        return 2
    files = real_images(data, 64)
    with tempfile.TemporaryDirectory(prefix="brainmri-serve-load-") as tmp:
        bundle, bundle_note = choose_bundle(args.bundle, Path(tmp), data, args.bundle_out)
        port = free_port()
        requests = [request_bytes(port, f.name, f.read_bytes()) for f in files]
        load_start = [round(x, 2) for x in os.getloadavg()]
        server = start_server(bundle, port, args.workers)
        try:
            if args.warmup > 0:
                asyncio.run(run_load(port, requests, args.concurrency, args.warmup, args.max_requests))
            raw = asyncio.run(run_load(port, requests, args.concurrency, args.duration, args.max_requests))
        finally:
            server.terminate()
            server.wait(timeout=30)
    result = {
        "benchmark": "serve_load",
        "bundle": bundle_note,
        "endpoint": "POST /v1/predict (multipart, one real image per request)",
        "images": f"{len(files)} files of {data / 'brain-tumor-mri' / 'Training'}, cycled",
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "server": {
            "workers": args.workers,
            "ort_threads_per_worker": 1,
            "processes": 1,
            "host": "127.0.0.1",
        },
        **summarise(raw),
        "aims": AIMS,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "machine": machine_facts(),
        "git": git_state(),
    }
    result["aims_met"] = {
        "requests_per_s": result["requests_per_s"] >= AIMS["requests_per_s"],
        "p99_ms": result["latency_ms"]["p99"] <= AIMS["p99_ms"],
        "errors": result["errors"] == AIMS["errors"],
    }
    atomic_write_json(args.out, result)
    lat = result["latency_ms"]
    print(
        f"{result['requests_per_s']} req/s, p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms, "
        f"{result['errors']} errors ({result['requests']} requests, {bundle_note}) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
