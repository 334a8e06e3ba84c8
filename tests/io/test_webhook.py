"""Webhook sink against a real local HTTP server that can fail, be slow or be down."""

from __future__ import annotations

import email.utils
import json
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import rheon as rh
from rheon.io.base import BuildContext
from rheon.io.webhook import Webhook
from rheon.testing import ManualClock, ScriptedSource, collect
from tests.services import free_port


class Endpoint:
    """A webhook receiver. ``plan`` holds one reply per request; when it is empty, 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.plan: deque[tuple[int, dict[str, str], float, bytes]] = deque()
        self.always: int | None = None
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once (no delayed-ACK stalls)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with endpoint.lock:
                    endpoint.bodies.append(body)
                    endpoint.headers.append({k.lower(): v for k, v in self.headers.items()})
                    if endpoint.plan:
                        status, headers, delay, text = endpoint.plan.popleft()
                    else:
                        status, headers, delay, text = endpoint.always or 200, {}, 0.0, b"ok"
                time.sleep(delay)
                try:
                    self.send_response(status)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(text)))
                    self.end_headers()
                    self.wfile.write(text)
                except OSError:  # the client timed out and went away
                    pass

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def fail(self, times: int, status: int = 503, headers: dict[str, str] | None = None, body: bytes = b"no") -> None:
        for _ in range(times):
            self.plan.append((status, headers or {}, 0.0, body))

    def slow(self, seconds: float) -> None:
        self.plan.append((200, {}, seconds, b"ok"))

    @property
    def received(self) -> list[Any]:
        return [json.loads(b) for b in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint()
    yield server
    server.close()


ROWS = [{"card": f"c{i}", "total": 1_000 + i} for i in range(3)]


def _run(sink: Webhook, script: list[Any] | None = None, clock: ManualClock | None = None) -> tuple[Any, float]:
    """Run ROWS (or a script) into the sink; return the dead letters and the wall time taken."""
    flow = rh.Flow("alerts")
    source = ScriptedSource(script) if script is not None else rh.io.Records(ROWS)
    flow.source(source).sink(sink, name="hook")
    dead = collect(flow.dead_letters())
    started = time.monotonic()
    flow.run(clock=clock or ManualClock())
    return dead.rows, time.monotonic() - started


def test_each_row_is_posted_as_json_with_headers(endpoint):
    dead, _ = _run(Webhook(endpoint.url, headers={"Authorization": "Bearer s3cret"}))
    assert dead == []
    assert endpoint.bodies == [
        b'{"card":"c0","total":1000}',
        b'{"card":"c1","total":1001}',
        b'{"card":"c2","total":1002}',
    ]
    assert endpoint.headers[0]["content-type"] == "application/json"
    assert endpoint.headers[0]["authorization"] == "Bearer s3cret"


def test_batch_mode_posts_json_arrays_chunked_by_max_batch(endpoint):
    rows = [{"n": i} for i in range(5)]
    flow = rh.Flow("batches")
    flow.source(rh.io.Records(rows, batch_size=5)).sink(Webhook(endpoint.url, batch=True, max_batch=2))
    flow.run()
    assert endpoint.received == [[{"n": 0}, {"n": 1}], [{"n": 2}, {"n": 3}], [{"n": 4}]]


def test_failures_are_retried_until_success_without_real_sleeping(endpoint):
    endpoint.fail(3, status=503)
    endpoint.fail(1, status=429, headers={"Retry-After": "7"})
    clock = ManualClock(start_ms=0)
    dead, wall = _run(Webhook(endpoint.url, retries=5, backoff="1s"), [ROWS[:1]], clock)
    assert dead == []
    assert len(endpoint.bodies) == 5  # 4 failures, then delivered
    assert endpoint.received[-1] == ROWS[0]
    assert clock.now_ns() >= 7 * 10**9  # Retry-After was honoured, on the flow's clock...
    assert wall < 1.0  # ...which never really slept


def test_retries_exhausted_make_dead_letters_with_the_reason(endpoint):
    endpoint.always = 503
    dead, wall = _run(Webhook(endpoint.url, retries=3, backoff="2s", breaker_failures=None))
    assert len(endpoint.bodies) == 3 * 4
    assert [(d["operator"], d["reason"]) for d in dead] == [("sink 'hook'", "webhook: HTTP 503 after 3 retries")] * 3
    assert [json.loads(d["payload"]) for d in dead] == ROWS
    assert wall < 1.0


def test_a_4xx_is_not_retried(endpoint):
    endpoint.fail(1, status=400, body=b"card unknown")
    dead, _ = _run(Webhook(endpoint.url, retries=5))
    assert len(endpoint.bodies) == 3  # one request per row
    assert [d["reason"] for d in dead] == ["webhook: HTTP 400 (not retried): card unknown"]
    assert json.loads(dead[0]["payload"]) == ROWS[0]


def test_the_circuit_opens_after_consecutive_failures_and_a_trial_closes_it(endpoint):
    endpoint.fail(4)  # rows 0 and 1: two attempts each
    r = [{"n": i} for i in range(5)]
    sink = Webhook(endpoint.url, retries=1, breaker_failures=2, breaker_reset="30s")
    dead, wall = _run(sink, [r[0:1], r[1:2], r[2:3], "40s", r[3:4], r[4:5]])
    assert [d["reason"] for d in dead[:2]] == ["webhook: HTTP 503 after 1 retries"] * 2
    assert re.fullmatch(
        r"webhook: circuit open after 2 consecutive failed deliveries \(next trial in \d+\.\d s\)", dead[2]["reason"]
    )
    assert [json.loads(d["payload"]) for d in dead] == r[:3]
    assert len(endpoint.bodies) == 6  # 4 failed, row 2 not attempted, rows 3 (trial) and 4 delivered
    assert endpoint.received[4:] == r[3:]
    assert wall < 1.0


def test_a_failed_trial_opens_the_circuit_again(endpoint):
    endpoint.always = 500
    r = [{"n": i} for i in range(4)]
    sink = Webhook(endpoint.url, retries=0, breaker_failures=2, breaker_reset="30s")
    dead, _ = _run(sink, [r[0:1], r[1:2], "31s", r[2:3], r[3:4]])
    assert len(endpoint.bodies) == 3  # rows 0, 1, then the half-open trial (row 2)
    assert [d["reason"].split(" (")[0] for d in dead] == [
        "webhook: HTTP 500 after 0 retries",
        "webhook: HTTP 500 after 0 retries",
        "webhook: HTTP 500",
        "webhook: circuit open after 3 consecutive failed deliveries",
    ]
    assert dead[2]["reason"] == "webhook: HTTP 500 (half-open trial failed; circuit open again)"


def test_a_server_down_at_start_dead_letters_rows_and_the_flow_goes_on():
    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    flow = rh.Flow("down")
    src = flow.source(rh.io.Records(ROWS))
    src.sink(Webhook(url, retries=2, breaker_failures=2), name="hook")
    everything = collect(src)
    dead = collect(flow.dead_letters())
    started = time.monotonic()
    flow.run(clock=ManualClock())
    assert time.monotonic() - started < 1.0
    assert len(everything) == 3
    reasons = [d["reason"] for d in dead.rows]
    assert reasons[0].startswith("webhook: connection failed (ConnectError")
    assert reasons[0].endswith("after 2 retries")
    assert reasons[2].startswith("webhook: circuit open")
    assert [json.loads(d["payload"]) for d in dead.rows] == ROWS


def test_a_slow_server_times_out_and_the_retry_delivers(endpoint):
    endpoint.slow(1.0)
    dead, wall = _run(Webhook(endpoint.url, timeout="150ms", retries=2), [ROWS[:1]])
    assert dead == []
    assert endpoint.received == [ROWS[0], ROWS[0]]  # the timed-out request did arrive: at-least-once
    assert wall < 1.0


def test_a_timeout_reason_names_the_timeout(endpoint):
    endpoint.slow(1.0)
    dead, _ = _run(Webhook(endpoint.url, timeout="100ms", retries=0), [ROWS[:1]])
    assert dead[0]["reason"] == "webhook: timed out (ReadTimeout, timeout 100 ms) after 0 retries"


def test_stopping_the_flow_interrupts_a_backoff(endpoint):
    endpoint.always = 503
    endpoint.fail(1, status=503, headers={"Retry-After": "30"})
    flow = rh.Flow("stop")
    flow.source(rh.io.Records(ROWS)).sink(Webhook(endpoint.url, retries=5, max_delay="60s"), name="hook")
    dead = collect(flow.dead_letters())
    threading.Timer(0.3, flow.stop).start()
    started = time.monotonic()
    flow.run()  # the real clock: a 30 s Retry-After
    assert time.monotonic() - started < 3.0
    reasons = [d["reason"] for d in dead.rows]
    assert reasons[0] == "webhook: HTTP 503 after 0 retries (the flow is stopping)"
    # The rest of the batch is not attempted against a failing endpoint.
    assert reasons[1:] == ["webhook: not attempted: the flow is stopping and the endpoint is failing"] * 2
    assert len(endpoint.bodies) == 1


def test_retry_after_takes_seconds_or_a_date_and_backoff_has_full_jitter():
    clock = ManualClock(start_ms=1_700_000_000_000)
    sink = Webhook("http://127.0.0.1:9", backoff="1s", max_delay="5s", seed=1)
    logic = sink.build(BuildContext(flow="f", operator="o", clock=clock))
    try:
        assert logic._retry_after_s("3") == 3.0
        assert logic._retry_after_s(email.utils.formatdate(1_700_000_012, usegmt=True)) == 12.0
        assert logic._retry_after_s("soon") is None
        delays = [logic._delay(n, None) for n in range(6) for _ in range(50)]
        assert all(0 <= d <= 5 for d in delays)
        assert max(delays[:50]) <= 1
        assert max(delays) > 4
        assert logic._delay(0, 3.0) == 3.0
        assert logic._delay(0, 60.0) == 5.0
    finally:
        logic.close()


def test_config_is_checked_and_repr_hides_headers():
    with pytest.raises(rh.FlowError, match=r"url must start with http:// or https:// \(got 'localhost/x'\)"):
        Webhook("localhost/x")
    with pytest.raises(rh.FlowError, match=r"retries must be a whole number >= 0 \(got -1\)"):
        Webhook("http://x", retries=-1)
    with pytest.raises(rh.FlowError, match=r"Webhook: timeout: cannot read duration '5 sec'"):
        Webhook("http://x", timeout="5 sec")
    assert "secret" not in repr(Webhook("http://x", headers={"Authorization": "secret"}))


def test_retries_and_the_circuit_state_reach_the_metrics(endpoint):
    from rheon.runtime.prometheus import FlowCollector

    endpoint.fail(4)  # rows 0 and 1: two attempts each, then the circuit opens
    r = [{"n": i} for i in range(3)]
    flow = rh.Flow("alerts")
    flow.source(ScriptedSource([r[0:1], r[1:2], r[2:3]])).sink(
        Webhook(endpoint.url, retries=1, breaker_failures=2, breaker_reset="30s"), name="hook"
    )
    flow.run(clock=ManualClock())
    registry = flow._executor.metrics
    assert registry.sinks["sink 'hook'"].retries == 2
    assert registry.sinks["sink 'hook'"].circuit == "open"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in FlowCollector(registry, running=lambda: False).collect()
        for s in family.samples
    }
    assert samples[("rheon_sink_retries_total", (("flow", "alerts"), ("sink", "sink 'hook'")))] == 2
    state = {labels[2][1]: v for (name, labels), v in samples.items() if name == "rheon_sink_circuit_state"}
    assert state == {"closed": 0.0, "open": 1.0, "half_open": 0.0}
