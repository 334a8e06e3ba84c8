"""Load test for ``HttpIngest``: client processes POST batches of events into HttpIngest -> Collect.

    python benchmarks/http_ingest.py                                   # 2 clients, 100 events/request, 5 s
    python benchmarks/http_ingest.py --clients 4 --events-per-request 1000 --seconds 10 --format ndjson

Each client is a separate process (so the load generator does not share the server's GIL) with
one keep-alive ``httpx.Client`` sending a pre-encoded body as fast as it is answered; a ``429``
(backpressure) makes it wait 5 ms and go on. The flow runs in this process. Reported: accepted
requests/s and events/s over the measured window, 429s, events the flow processed, and the
end-to-end latency (request accepted -> row in the sink) the flow measured.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

import rheon as rh  # noqa: E402
from rheon.io.http import HttpIngest  # noqa: E402


def _body(per_request: int, fmt: str, worker: int) -> tuple[bytes, str]:
    base_ms = 1_700_000_000_000
    events = [
        {"user": f"u{(worker * per_request + i) % 1000}", "action": "click", "value": i, "ts": base_ms + i}
        for i in range(per_request)
    ]
    if fmt == "ndjson":
        return "\n".join(json.dumps(e) for e in events).encode(), "application/x-ndjson"
    return json.dumps(events).encode(), "application/json"


def _client(url: str, start_at: float, seconds: float, per_request: int, fmt: str, worker: int, out: Any) -> None:
    body, content_type = _body(per_request, fmt, worker)
    ok = busy = errors = 0
    with httpx.Client(headers={"Content-Type": content_type}, timeout=10) as client:
        client.get(url.rsplit("/", 1)[0] + "/health")  # connect before the clock starts
        time.sleep(max(0.0, start_at - time.time()))
        end = start_at + seconds
        while time.time() < end:
            try:
                status = client.post(url, content=body).status_code
            except httpx.HTTPError:
                errors += 1
                continue
            if status == 202:
                ok += 1
            elif status == 429:
                busy += 1
                time.sleep(0.005)
            else:
                errors += 1
    out.put((ok, busy, errors))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2, help="client processes (default 2)")
    parser.add_argument("--events-per-request", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured load time")
    parser.add_argument("--format", choices=["json", "ndjson"], default="json")
    parser.add_argument("--max-buffered", type=int, default=100_000)
    args = parser.parse_args()

    ingest = HttpIngest(port=0, max_buffered=args.max_buffered)
    flow = rh.Flow("http-bench")
    out = rh.io.Collect()
    flow.source(ingest, time="ts").sink(out)
    runner = threading.Thread(target=flow.run, kwargs={"duration": "10m"}, daemon=True)
    runner.start()
    url = ingest.wait_listening() + "/events"

    ctx = multiprocessing.get_context("spawn")
    results: Any = ctx.Queue()
    start_at = time.time() + 3.0  # time for the client processes to start
    procs = [
        ctx.Process(
            target=_client, args=(url, start_at, args.seconds, args.events_per_request, args.format, i, results)
        )
        for i in range(args.clients)
    ]
    for p in procs:
        p.start()
    counts = [results.get(timeout=args.seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    requests = sum(c[0] for c in counts)
    events = requests * args.events_per_request
    deadline = time.monotonic() + 30
    while len(out) < events and time.monotonic() < deadline:
        time.sleep(0.01)
    processed = len(out)
    flow.stop()
    runner.join(10)
    stats = flow.metrics()
    assert stats is not None

    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"machine: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{args.clients} client processes, {args.events_per_request} events/request ({args.format}), "
        f"{args.seconds:g} s measured"
    )
    print(f"accepted requests/s: {requests / args.seconds:,.0f}")
    print(f"accepted events/s:   {events / args.seconds:,.0f}")
    print(f"429 responses:       {sum(c[1] for c in counts):,}   errors: {sum(c[2] for c in counts):,}")
    print(f"processed by flow:   {processed:,} of {events:,} accepted")
    if stats.latency_p50_ms is not None and stats.latency_p99_ms is not None:
        print(f"latency accepted->sink: p50 {stats.latency_p50_ms:.1f} ms, p99 {stats.latency_p99_ms:.1f} ms")


if __name__ == "__main__":
    main()
