"""HttpIngest under hostile or sloppy clients (issue 10): it stays available, refuses what does not fit, loses nothing.

Every test talks to the real server (uvicorn on loopback) with a real client: httpx or raw sockets.
"""

from __future__ import annotations

import json
import logging
import resource
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

GENEROUS = 60.0  # seconds: a bound for waits on a slow, loaded machine, never a time that must pass


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


def wait_for(condition: Callable[[], bool], what: str, timeout: float = GENEROUS) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.005)


def read_until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (the socket's timeout bounds the wait)."""
    reply = b""
    while chunk := conn.recv(4096):
        reply += chunk
    return reply


def read_response(conn: socket.socket) -> bytes:
    """One whole response (its headers and a Content-Length body) on a connection that stays open."""

    def more(sofar: bytes) -> bytes:
        chunk = conn.recv(4096)
        if not chunk:
            raise AssertionError(f"the server closed the connection after {sofar!r}")
        return sofar + chunk

    reply = b""
    while b"\r\n\r\n" not in reply:
        reply = more(reply)
    head = reply.partition(b"\r\n\r\n")[0].lower().split(b"\r\n")
    length = next(int(line.split(b":")[1]) for line in head if line.startswith(b"content-length"))
    while len(reply.partition(b"\r\n\r\n")[2]) < length:
        reply = more(reply)
    return reply


def trickle_until_answered(conn: socket.socket) -> bool:
    """Send a byte every 50 ms until the server answers or closes (True) or GENEROUS seconds pass (False)."""
    conn.settimeout(0.05)
    deadline = time.monotonic() + GENEROUS
    while time.monotonic() < deadline:
        try:
            conn.sendall(b"X")
            conn.recv(4096)  # data (an answer) or b"" (closed)
        except TimeoutError:
            continue
        except OSError:  # reset by the server
            return True
        return True
    return False


def deep(kind: str, depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value] if kind == "lists" else {"x": value}
    return value


# -- availability: connections, timeouts ------------------------------------------------------------


IDLE = 1_000


@pytest.fixture
def many_files() -> None:
    """Room for IDLE client sockets and as many server ones in this process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * IDLE + 500
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} open files; the hard limit is {hard} (raise it with ulimit -Hn)")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


@pytest.mark.usefixtures("many_files")
def test_a_thousand_idle_connections_do_not_lock_out_a_well_behaved_client(serve):
    # header_timeout is long: the idle connections stay open throughout; making room is what lets clients in.
    logic = serve(max_connections=IDLE, header_timeout="300s")
    idle: list[socket.socket] = []
    try:
        for _ in range(IDLE):
            idle.append(socket.create_connection(("127.0.0.1", logic.port), timeout=GENEROUS))
        connections = logic.server.server_state.connections
        wait_for(lambda: len(connections) >= IDLE, f"the server accepted {IDLE} connections")
        statuses = [httpx.post(f"{logic.url}/events", json={"i": i}, timeout=GENEROUS).status_code for i in range(20)]
        with httpx.Client(timeout=GENEROUS) as client:  # and a keep-alive client
            statuses += [client.post(f"{logic.url}/events", json={"i": i}).status_code for i in range(20, 40)]
            assert client.get(f"{logic.url}/health").status_code == 200
        assert statuses == [202] * 40
        assert len(connections) <= IDLE
        still_open = sum(1 for c in idle if _open(c))
        assert still_open >= IDLE - 41  # the server closed at most one idle connection per new one
    finally:
        for conn in idle:
            conn.close()
    assert logic.next_batch()["i"].to_list() == list(range(40))


def _open(conn: socket.socket) -> bool:
    """Whether the server has not closed this (idle) connection."""
    conn.setblocking(False)
    try:
        return conn.recv(1) != b""
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        conn.setblocking(True)


def test_when_every_connection_is_busy_a_new_one_gets_503_and_busy_ones_are_kept(serve):
    logic = serve(max_connections=2, header_timeout="300s", body_timeout="300s")
    head = b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 8\r\n\r\n"
    busy = [socket.create_connection(("127.0.0.1", logic.port), timeout=GENEROUS) for _ in range(2)]
    try:
        for conn in busy:
            conn.sendall(head + b'{"i"')  # headers complete, body not: a request in progress
        wait_for(lambda: logic.counts["requests"] == 2, "both requests started")
        with socket.create_connection(("127.0.0.1", logic.port), timeout=GENEROUS) as third:
            assert read_until_closed(third).startswith(b"HTTP/1.1 503 Service Unavailable")
        for i, conn in enumerate(busy):  # the busy ones were not cut off
            conn.sendall(f": {i}}}".encode())
            assert read_response(conn).startswith(b"HTTP/1.1 202 ")
    finally:
        for conn in busy:
            conn.close()
    assert logic.counts["rejected_503"] == 1
    assert sorted(logic.next_batch()["i"].to_list()) == [0, 1]


def test_a_connection_that_does_not_finish_its_headers_in_time_is_closed(serve):
    logic = serve(header_timeout="1s")
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", logic.port), timeout=GENEROUS) as silent:
        assert read_until_closed(silent) == b""  # nothing was asked: closed without an answer
    with socket.create_connection(("127.0.0.1", logic.port), timeout=GENEROUS) as partial:
        partial.sendall(b"POST /events HTTP/1.1\r\nHost: x\r\n")
        assert read_until_closed(partial).startswith(b"HTTP/1.1 408 Request Timeout")
    # Bytes that keep trickling in do not extend the time (a keep-alive timer would be reset by each).
    with socket.create_connection(("127.0.0.1", logic.port), timeout=GENEROUS) as trickle:
        trickle.sendall(b"POST /events HTTP/1.1\r\n")
        assert trickle_until_answered(trickle), "the trickling connection was never closed"
    # After a response, the next request's headers have the same time.
    with socket.create_connection(("127.0.0.1", logic.port), timeout=GENEROUS) as keep:
        keep.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(keep).startswith(b"HTTP/1.1 200 ")
        keep.sendall(b"GET /health HTTP/1.1\r\n")
        assert read_until_closed(keep).startswith(b"HTTP/1.1 408 ")
    assert logic.counts["rejected_408"] == 3
    assert time.monotonic() - started < GENEROUS
    assert httpx.get(f"{logic.url}/health").status_code == 200


def test_a_body_that_does_not_arrive_in_time_gets_408(serve):
    logic = serve(body_timeout="1s")
    head = b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    with socket.create_connection(("127.0.0.1", logic.port), timeout=GENEROUS) as conn:
        conn.sendall(head + b'[{"a": 1}')
        reply = read_until_closed(conn)
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout")
    assert b"body_timeout=1s" in reply
    assert (logic.counts["rejected_408"], logic.buffered) == (1, 0)


# -- availability: heavy bodies -------------------------------------------------------------------


def test_health_answers_while_a_large_body_is_turned_into_rows(serve):
    logic = serve(max_body=64 << 20, max_buffered=1_000_000)
    rows = 60_000
    body = b"\n".join(
        json.dumps({"user": f"u{i % 100}", "ts": i, "amount": i / 2, "tags": ["a"]}).encode() for i in range(rows)
    )
    answer: list[httpx.Response] = []
    post = threading.Thread(
        target=lambda: answer.append(
            httpx.post(
                f"{logic.url}/events",
                content=body,
                headers={"Content-Type": "application/x-ndjson"},
                timeout=GENEROUS * 3,
            )
        )
    )
    seen_building = False
    with httpx.Client(timeout=GENEROUS) as client:
        post.start()
        deadline = time.monotonic() + GENEROUS * 3
        while post.is_alive() and not seen_building and time.monotonic() < deadline:
            health = client.get(f"{logic.url}/health").json()
            seen_building = health.get("building") == 1
    post.join(GENEROUS * 3)
    assert seen_building, "/health never answered while the body was being turned into rows"
    assert (answer[0].status_code, answer[0].json()) == (202, {"accepted": rows})


@pytest.mark.parametrize(
    ("kind", "depth", "ndjson"),
    [("lists", 600, False), ("lists", 900, False), ("objects", 300, False), ("objects", 900, True)],
)
def test_deeply_nested_events_are_refused_with_400_at_once(serve, kind, depth, ndjson):
    logic = serve()
    event = {"user": "ann", "payload": deep(kind, depth)}
    body = json.dumps(event if ndjson else [event]).encode()
    headers = {"Content-Type": "application/x-ndjson"} if ndjson else {}
    assert len(body) < 10_000
    r = httpx.post(f"{logic.url}/events", content=body, headers=headers, timeout=GENEROUS)
    assert r.status_code == 400
    assert r.json()["error"] == (
        f"events nest {depth + 1} levels deep, more than max_depth=16: flatten them, or raise max_depth= on HttpIngest"
    )
    assert logic.take_dead_letters()[0][0].startswith(f"http: events nest {depth + 1} levels deep")
    assert httpx.post(f"{logic.url}/events", json={"payload": deep(kind, 15)}).status_code == 202  # 16 levels


def test_nesting_past_the_recursion_limit_is_400_not_500(serve):
    logic = serve()
    for body, depth in (
        (b"[" * 50_000 + b"]" * 50_000, 49_999),  # an array around the events does not count
        (b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, 50_000),
        (b'{"a": ' + b"[" * 5_000 + b"]" * 5_000 + b"}", 5_001),
    ):
        r = httpx.post(f"{logic.url}/events", content=body, timeout=GENEROUS)
        assert r.status_code == 400
        assert r.json()["error"].startswith(f"events nest {depth} levels deep, more than max_depth=16")
    with pytest.raises(rh.FlowError, match=r"HttpIngest: max_depth must be an integer from 1 to 256 \(got 5000\)"):
        HttpIngest(max_depth=5_000)  # so Python's parser never meets its recursion limit


def test_too_many_distinct_fields_are_refused_with_400(serve):
    logic = serve(metadata=False)
    own_keys = [{f"k{i}": i} for i in range(5_000)]  # 5,000 distinct keys in an ~83 KB body
    one_object = {f"k{i}": i for i in range(5_000)}
    nested = {"outer": {f"k{i}": i for i in range(5_000)}}
    for events in (own_keys, one_object, nested):
        started = time.monotonic()
        r = httpx.post(f"{logic.url}/events", json=events, timeout=GENEROUS)
        assert r.status_code == 400
        assert r.json()["error"].startswith("more than max_fields=1000 distinct fields in one request")
        assert time.monotonic() - started < GENEROUS
    assert logic.buffered == 0
    assert httpx.post(f"{logic.url}/events", json=own_keys[:1_000]).status_code == 202  # exactly at the cap


def test_without_schema_max_fields_also_bounds_the_columns_a_source_grows_to(serve):
    logic = serve(metadata=False, max_fields=3)
    url = f"{logic.url}/events"
    assert httpx.post(url, json={"a": 1, "b": 2}).status_code == 202
    r = httpx.post(url, json={"c": 3, "d": 4})
    assert r.status_code == 400
    assert r.json()["error"].startswith("the events would give this source 4 columns, more than max_fields=3")
    assert httpx.post(url, json={"a": 5, "c": 6}).status_code == 202  # known fields and one more: fine
    assert httpx.post(url, json={"b": 7}).status_code == 202
    assert logic.next_batch().rows() == [(1, 2, None), (5, None, 6), (None, 7, None)]


# -- authentication --------------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", "   ", " s3cret"])
def test_an_empty_or_spaced_token_is_refused_at_construction(token):
    with pytest.raises(rh.FlowError, match=r"HttpIngest: token must be a non-empty string") as info:
        HttpIngest(token=token)
    assert "s3cret" not in str(info.value)


def test_an_empty_bearer_is_never_accepted(serve):
    logic = serve(token="s3cret")
    for header in ("Bearer", "", "Basic s3cret", "Bearer s3cret2", "Bearer  s3cre"):
        r = httpx.post(f"{logic.url}/events", json={"a": 1}, headers={"Authorization": header})
        assert r.status_code == 401, header
    assert logic.buffered == 0


def test_listening_beyond_loopback_without_a_token_warns(caplog):
    caplog.set_level(logging.WARNING, logger="rheon.io.http.ingest")
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        HttpIngest(host=host)
    HttpIngest(host="0.0.0.0", token="s3cret")
    assert caplog.records == []
    HttpIngest(host="0.0.0.0")
    HttpIngest(host="::", port=9000)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2
    assert warnings[0].startswith("http_ingest_unauthenticated host=0.0.0.0 port=8080: any client")
    assert "set token=" in warnings[0]
    assert all(r.levelno == logging.WARNING for r in caplog.records)


# -- types: nothing coerced, every record accounted for --------------------------------------------


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1.9, "1.9 (a float)"), ("2", '"2" (a string)'), (True, "true (a boolean)"), (2**63, "9223372036854775808")],
)
def test_a_value_that_does_not_fit_the_schema_is_refused_not_converted(serve, value, shown):
    logic = serve(schema={"ts": pl.Int64, "name": pl.String}, metadata=False)
    r = httpx.post(f"{logic.url}/events", json=[{"ts": 1, "name": "ok"}, {"ts": value, "name": "bad"}])
    assert r.status_code == 400
    error = r.json()["error"]
    assert error.startswith(f"event 1 of 2: does not fit the schema: field 'ts' is {shown}")
    assert "expected Int64" in error
    assert error.endswith("the whole request was refused, nothing of it queued")
    assert logic.buffered == 0
    assert len(logic.take_dead_letters()) == 1
    r = httpx.post(f"{logic.url}/events", json={"ts": 2, "name": 3})
    assert (r.status_code, "field 'name' is 3 (an integer)" in r.json()["error"]) == (400, True)
    assert httpx.post(f"{logic.url}/events", json={"ts": 3, "name": "x", "other": 1.5}).status_code == 202
    batch = logic.next_batch()
    assert (batch.schema, batch.rows()) == (pl.Schema({"ts": pl.Int64, "name": pl.String}), [(3, "x")])


def test_without_schema_a_field_keeps_the_type_it_first_had(serve):
    logic = serve(metadata=False)
    url = f"{logic.url}/events"
    assert httpx.post(url, json={"a": 1}).status_code == 202
    for value, shown in ((2.5, "2.5 (a float)"), ("x", '"x" (a string)'), ([1], "[1] (a list)"), (True, "true")):
        r = httpx.post(url, json=[{"a": 2}, {"a": value, "b": "new"}])
        assert r.status_code == 400
        assert r.json()["error"].startswith(f"event 1 of 2: field 'a' is {shown}")
        assert "read it as Int64 so far" in r.json()["error"]
    # The refused requests taught the source nothing: "b" may still be a number.
    assert httpx.post(url, json={"a": 3, "b": 4}).status_code == 202
    batch = logic.next_batch()
    assert (batch.schema, batch.rows()) == (pl.Schema({"a": pl.Int64, "b": pl.Int64}), [(1, None), (3, 4)])


def test_non_json_numbers_and_reserved_fields_are_refused(serve):
    logic = serve(client=True)
    for body, error in (
        (b'{"a": NaN}', "invalid JSON: NaN is not a JSON number"),
        (b'{"a": -Infinity}', "invalid JSON: -Infinity is not a JSON number"),
        (b'{"a": "\xff"}', "body is not UTF-8 text"),
        (b'{"a": 1, "_received_ms": 5}', "field '_received_ms' is reserved"),
        (b'{"_client": "me"}', "field '_client' is reserved"),
    ):
        r = httpx.post(f"{logic.url}/events", content=body)
        assert (r.status_code, r.json()["error"][: len(error)]) == (400, error)
    assert logic.buffered == 0


def test_queued_requests_with_fields_in_any_order_or_missing_or_extra_are_stacked_by_name(serve):
    logic = serve(metadata=True)
    url = f"{logic.url}/events"
    for event in (
        {"k": "a", "ts": 1},
        {"ts": 2, "k": "b"},
        {"ts": 3},
        {"k": "c", "ts": 4, "extra": {"x": None}},
        {"extra": {"x": 1.5}, "ts": 5, "k": "d"},
        {"k": "e", "ts": 6, "nothing": None},
    ):
        assert httpx.post(url, json=event).status_code == 202
    batch = logic.next_batch()
    assert batch.columns == ["k", "ts", "extra", "nothing", "_received_ms"]
    assert batch.schema["ts"] == pl.Int64
    assert batch.schema["extra"] == pl.Struct({"x": pl.Float64})
    assert batch.drop("_received_ms").rows() == [
        ("a", 1, None, None),
        ("b", 2, None, None),
        (None, 3, None, None),
        ("c", 4, {"x": None}, None),
        ("d", 5, {"x": 1.5}, None),
        ("e", 6, None, None),
    ]


def test_requests_in_separate_batches_with_fields_in_another_order_feed_a_window():
    ingest = HttpIngest(port=0, metadata=False)
    flow = rh.Flow("orders")
    src = flow.source(ingest, time="ts", name="in")
    raw = collect(src)
    windows = collect(src.key_by("k").window(rh.tumbling("10s")).agg(n=rh.count(), total=rh.sum("v")))
    dead = collect(flow.dead_letters())
    error: list[BaseException] = []

    def run() -> None:
        try:
            flow.run(duration="120s")
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    events = [
        {"k": "a", "ts": 1_000, "v": 1},
        {"ts": 2_000, "v": 2, "k": "a"},
        {"k": "a", "ts": 3_000},
        {"v": 4, "k": "a", "ts": 25_000},
    ]
    try:
        url = f"{ingest.wait_listening('60s')}/events"
        for i, event in enumerate(events, start=1):
            assert httpx.post(url, json=event, timeout=GENEROUS).status_code == 202
            wait_for(lambda i=i: len(raw) == i or bool(error), f"event {i} read in a batch of its own")
        assert httpx.post(url, json={"k": "a", "ts": "late"}, timeout=GENEROUS).status_code == 400
        wait_for(lambda: len(windows) >= 1 or bool(error), "the first window fired")
        wait_for(lambda: len(dead) == 1 or bool(error), "the refused request reached the dead letters")
    finally:
        flow.stop()
        thread.join(GENEROUS)
    assert not error, error
    assert windows.rows == [{"k": "a", "window_start": 0, "window_end": 10_000, "n": 3, "total": 3}]
    assert [r["v"] for r in raw.rows] == [1, 2, None, 4]
    assert len(raw) + len(dead) == len(events) + 1  # every record is accounted for


def test_the_types_learned_survive_a_restart_from_a_checkpoint(tmp_path):
    def run_once(post: Callable[[str], None]) -> list[dict[str, Any]]:
        ingest = HttpIngest(port=0, metadata=False)
        flow = rh.Flow("types")
        raw = collect(flow.source(ingest, name="in"))
        error: list[BaseException] = []

        def run() -> None:
            try:
                flow.run(duration="120s", checkpoint_dir=tmp_path, checkpoint_every="60s")
            except BaseException as exc:
                error.append(exc)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            post(f"{ingest.wait_listening('60s')}/events")
            wait_for(lambda: len(raw) == 1 or bool(error), "the accepted event went through the flow")
        finally:
            flow.stop()  # and take a checkpoint
            thread.join(GENEROUS)
        assert not error, error
        return raw.rows

    def first(url: str) -> None:
        assert httpx.post(url, json={"a": 1}, timeout=GENEROUS).status_code == 202

    def second(url: str) -> None:
        r = httpx.post(url, json={"a": 2.5}, timeout=GENEROUS)
        assert (r.status_code, "read it as Int64 so far" in r.json()["error"]) == (400, True)
        assert httpx.post(url, json={"a": 3}, timeout=GENEROUS).status_code == 202

    assert run_once(first) == [{"a": 1}]
    assert run_once(second) == [{"a": 3}]
