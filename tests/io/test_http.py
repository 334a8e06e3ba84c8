"""HttpIngest: a real HTTP client (httpx, raw sockets) against the real server."""

from __future__ import annotations

import pickle
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import polars as pl
import pytest

import rheon as rh
from rheon.io.base import BuildContext
from rheon.io.http import HttpIngest, _HttpIngestLogic
from rheon.testing import collect
from tests.services import free_port


@pytest.fixture
def serve() -> Iterator[Callable[..., _HttpIngestLogic]]:
    """Build HttpIngest logic outside a flow (nothing drains it) and close it afterwards."""
    started: list[_HttpIngestLogic] = []

    def start(**kwargs: Any) -> _HttpIngestLogic:
        logic = HttpIngest(port=0, **kwargs).build(BuildContext(flow="t", operator="in"))
        assert isinstance(logic, _HttpIngestLogic)
        started.append(logic)
        return logic

    yield start
    for logic in started:
        logic.close()


class Running:
    """A flow running in a thread; stop() ends it and re-raises what it raised."""

    def __init__(self, flow: rh.Flow, ingest: HttpIngest) -> None:
        self.flow = flow
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.url = ingest.wait_listening("5s")

    def _run(self) -> None:
        try:
            self.flow.run(duration="20s")
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.flow.stop()
        self.thread.join(10)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


def test_single_array_and_ndjson_requests_flow_into_event_time_windows():
    ingest = HttpIngest(port=0)
    flow = rh.Flow("clicks")
    src = flow.source(ingest, time="ts", name="in")
    raw = collect(src)
    windows = collect(src.key_by("user").window(rh.tumbling("10s")).agg(n=rh.count()))
    running = Running(flow, ingest)
    try:
        post = f"{running.url}/events"
        assert httpx.post(post, json={"user": "ann", "ts": 1_000}).json() == {"accepted": 1}
        r = httpx.post(post, json=[{"user": "ann", "ts": 2_000}, {"user": "bob", "ts": 3_000}])
        assert (r.status_code, r.json()) == (202, {"accepted": 2})
        ndjson = b'{"user": "bob", "ts": 4000}\n{"user": "ann", "ts": 12000}\n'
        r = httpx.post(post, content=ndjson, headers={"Content-Type": "application/x-ndjson"})
        assert r.json() == {"accepted": 2}
        detected = b'{"user": "bob", "ts": 13000}\n{"user": "cy", "ts": 25000}'  # no content type: detected
        assert httpx.post(post, content=detected).json() == {"accepted": 2}
        wait_for(lambda: len(windows) >= 4)
    finally:
        running.stop()
    assert sorted((w["user"], w["window_start"], w["n"]) for w in windows.rows) == [
        ("ann", 0, 2),
        ("ann", 10_000, 1),
        ("bob", 0, 2),
        ("bob", 10_000, 1),
    ]
    assert len(raw) == 7
    assert raw.to_polars().schema["_received_ms"] == pl.Int64
    now_ms = time.time() * 1000
    assert all(now_ms - 60_000 < r["_received_ms"] <= now_ms for r in raw.rows)


def test_token_is_required_but_not_for_health(serve):
    logic = serve(token="s3cret")
    url = logic.url
    assert httpx.post(f"{url}/events", json={"a": 1}).status_code == 401
    wrong = httpx.post(f"{url}/events", json={"a": 1}, headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, wrong.headers["www-authenticate"]) == (401, "Bearer")
    ok = httpx.post(f"{url}/events", json={"a": 1}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 202
    assert httpx.get(f"{url}/health").status_code == 200
    assert logic.next_batch()["a"].to_list() == [1]
    assert "s3cret" not in repr(HttpIngest(token="s3cret"))


def test_a_body_over_max_body_is_rejected(serve):
    logic = serve(max_body=1_000)
    r = httpx.post(f"{logic.url}/events", content=b"[" + b" " * 5_000 + b"]")
    assert r.status_code == 413
    assert "max_body=1000" in r.json()["error"]
    assert logic.buffered == 0


def _send_and_read_status(port: int, data: bytes) -> tuple[bytes, bytes]:
    """Send ``data`` (an incomplete request) and return the response's status line and rest."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(data)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = conn.recv(4096)
            if not chunk:
                break
            reply += chunk
    status, _, rest = reply.partition(b"\r\n")
    return status, rest


def test_max_body_is_enforced_while_reading_not_after(serve):
    logic = serve(max_body=1_000)
    # A declared 10 MB body: answered at once, although only 100 bytes of it were ever sent.
    head = b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
    status, rest = _send_and_read_status(logic.port, head + b"x" * 100)
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    assert b"connection: close" in rest.lower()
    # Chunked, no length: answered as soon as 1,200 bytes arrived, before the body ends.
    head = b"POST /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunks = (b"258\r\n" + b"x" * 600 + b"\r\n") * 2  # no terminating 0-chunk
    status, _ = _send_and_read_status(logic.port, head + chunks)
    assert status == b"HTTP/1.1 413 Request Entity Too Large"
    assert logic.counts["rejected_413"] == 2


def test_bad_json_is_400_and_a_dead_letter_with_the_truncated_body(serve):
    logic = serve()
    r = httpx.post(f"{logic.url}/events", content=b'{"user": "ann", ')
    assert r.status_code == 400
    assert r.json()["error"].startswith("invalid JSON: Expecting property name")
    big = b"[" + b'{"a": 1}, ' * 500 + b"oops]"
    assert httpx.post(f"{logic.url}/events", content=big).status_code == 400
    for body, why in ((b"[1, 2]", "item 0 of the array is a int"), (b'"x"', "got a str"), (b"", "empty body")):
        r = httpx.post(f"{logic.url}/events", content=body)
        assert (r.status_code, why in r.json()["error"]) == (400, True)
    bad_line = b'{"a": 1}\n{"a": \n'
    r = httpx.post(f"{logic.url}/events", content=bad_line, headers={"Content-Type": "application/x-ndjson"})
    assert r.json()["error"].startswith("invalid JSON on NDJSON line 2")
    letters = logic.take_dead_letters()
    assert len(letters) == 6
    reason, payload = letters[0]
    assert reason.startswith("http: invalid JSON: Expecting property name")
    assert reason.endswith("(from 127.0.0.1)")
    assert payload == '{"user": "ann", '
    assert letters[1][1].endswith("... (5006 bytes, truncated)")
    assert len(letters[1][1]) < 1_100
    assert logic.counts["rejected_400"] == 6
    assert logic.buffered == 0
    assert logic.take_dead_letters() == []


def test_bad_requests_reach_the_flows_dead_letters():
    ingest = HttpIngest(port=0)
    flow = rh.Flow("bad")
    good = collect(flow.source(ingest, name="in").select("a"))
    dead = collect(flow.dead_letters())
    running = Running(flow, ingest)
    try:
        assert httpx.post(f"{running.url}/events", content=b"{not json").status_code == 400
        assert httpx.post(f"{running.url}/events", json={"a": 1}).status_code == 202
        wait_for(lambda: len(dead) == 1 and len(good) == 1)
    finally:
        running.stop()
    assert good.rows == [{"a": 1}]
    assert dead.rows[0]["operator"] == "source 'in'"
    assert dead.rows[0]["payload"] == "{not json"
    assert flow.metrics().dead_letters == 1


def test_schema_mismatch_rejects_the_request(serve):
    logic = serve(schema={"ts": pl.Int64, "amount": pl.Float64}, metadata=False)
    r = httpx.post(f"{logic.url}/events", json=[{"ts": 1, "amount": 2.5}, {"ts": "soon", "amount": 1}])
    assert r.status_code == 400
    assert r.json()["error"].startswith("event 1 of 2: does not fit the schema: field 'ts' is \"soon\" (a string)")
    assert httpx.post(f"{logic.url}/events", json=[{"ts": 1, "amount": 2}]).status_code == 202
    assert logic.next_batch().to_dicts() == [{"ts": 1, "amount": 2.0}]


def test_a_full_queue_answers_429_with_retry_after_and_memory_stays_bounded(serve):
    logic = serve(max_buffered=5, retry_after="2s")
    url = f"{logic.url}/events"
    three = [{"i": i} for i in range(3)]
    assert httpx.post(url, json=three).status_code == 202
    r = httpx.post(url, json=three)  # 3 + 3 > 5: the whole request is refused
    assert (r.status_code, r.headers["retry-after"]) == (429, "2")
    assert httpx.post(url, json=three[:2]).status_code == 202  # exactly full
    with httpx.Client() as client:
        statuses = {client.post(url, json=three).status_code for _ in range(50)}
    assert statuses == {429}
    assert logic.buffered == 5
    assert sum(c.frame.height for c in logic.queue) == 5
    health = httpx.get(f"{logic.url}/health").json()
    assert (health["queued"], health["backpressured"], health["counts"]["rejected_429"]) == (5, True, 51)
    too_many = httpx.post(url, json=[{"i": i} for i in range(6)])
    assert too_many.status_code == 429  # refused before its body is even read
    assert [r["i"] for r in logic.next_batch().to_dicts()] == [0, 1, 2, 0, 1]
    assert logic.next_batch() is None
    assert httpx.post(url, json=[{"i": i} for i in range(6)]).status_code == 413  # could never fit
    assert httpx.post(url, json=three).status_code == 202  # drained: accepted again


def test_next_batch_drains_up_to_max_batch_without_blocking(serve):
    logic = serve(max_batch=4, client=True)
    assert logic.next_batch() is None
    httpx.post(f"{logic.url}/events", json=[{"i": i} for i in range(7)])
    httpx.post(f"{logic.url}/events", json=[{"i": 7}, {"i": 8}, {"i": 9}])
    sizes, seen = [], []
    while (batch := logic.next_batch()) is not None:
        sizes.append(batch.height)
        seen += batch["i"].to_list()
        assert batch.columns == ["i", "_received_ms", "_client"]
        assert set(batch["_client"]) == {"127.0.0.1"}
    assert (sizes, seen) == ([4, 4, 2], list(range(10)))
    assert logic.last_ingest_ns is not None
    assert logic.buffered == 0


def test_requests_with_different_columns_share_a_batch(serve):
    logic = serve(metadata=False)
    httpx.post(f"{logic.url}/events", json={"a": 1})
    httpx.post(f"{logic.url}/events", json={"b": "x", "a": 2})
    assert logic.next_batch().to_dicts() == [{"a": 1, "b": None}, {"a": 2, "b": "x"}]


def test_health_reports_status_and_queue_depth(serve):
    logic = serve(max_buffered=100)
    httpx.post(f"{logic.url}/events", json=[{"a": 1}, {"a": 2}])
    r = httpx.get(f"{logic.url}/health")
    assert r.status_code == 200
    body = r.json()
    assert (body["status"], body["queued"], body["max_buffered"], body["backpressured"]) == ("ok", 2, 100, False)
    assert body["counts"]["accepted"] == 2


def test_port_in_use_is_a_clear_source_error():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        flow = rh.Flow("busy")
        flow.source(HttpIngest(port=port), name="in").sink(rh.io.Collect())
        expected = rf"source 'in': cannot listen on 127\.0\.0\.1:{port}: .*in use.*Try another port, or port=0"
        with pytest.raises(rh.SourceError, match=expected):
            flow.run(duration="1s")


def test_close_stops_the_server_and_frees_the_port():
    port = free_port()
    ingest = HttpIngest(port=port)
    logic = ingest.build(BuildContext(flow="t", operator="in"))
    assert ingest.url == f"http://127.0.0.1:{port}"
    assert httpx.get(f"{ingest.url}/health").status_code == 200
    started = time.monotonic()
    logic.close()
    assert time.monotonic() - started < 2
    assert not [t for t in threading.enumerate() if t.name.startswith("rheon-http")]
    assert ingest.url is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/health")
    HttpIngest(port=port).build(BuildContext(flow="t", operator="again")).close()  # the port is free again


def test_config_validates_pickles_and_prints():
    with pytest.raises(rh.FlowError, match=r"path must start with '/' and not be '/health'"):
        HttpIngest(path="/health")
    with pytest.raises(rh.FlowError, match=r"max_buffered must be a positive whole number \(got 0\)"):
        HttpIngest(max_buffered=0)
    with pytest.raises(rh.FlowError, match="port must be a number from 0 to 65535"):
        HttpIngest(port=70_000)
    copy = pickle.loads(pickle.dumps(HttpIngest(port=0, token="t", max_batch=7)))
    assert (copy.max_batch, copy.url, repr(copy)) == (
        7,
        None,
        "HttpIngest(port=0, host='127.0.0.1', path='/events', token='***')",
    )


def test_backlog_is_the_queue_depth(serve):
    logic = serve(max_batch=4)
    assert logic.backlog() == {("queue", "records"): 0.0}
    assert httpx.post(f"{logic.url}/events", json=[{"i": i} for i in range(10)]).status_code == 202
    assert logic.backlog() == {("queue", "records"): 10.0}
    assert logic.next_batch().height == 4
    assert logic.backlog() == {("queue", "records"): 6.0}
