"""``rh.io.Redis`` against a real Redis server (RHEON_TEST_REDIS, default redis://127.0.0.1:6379/0)."""

from __future__ import annotations

import datetime as dt
import os
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

import rheon as rh
from rheon.io.redis import Redis
from rheon.testing import ManualClock, collect
from tests.proxy import TcpProxy
from tests.services import free_port, unavailable

try:
    import redis
except ImportError:  # pragma: no cover - reported by the fixture
    redis = None  # type: ignore[assignment]

URL = os.environ.get("RHEON_TEST_REDIS", "redis://127.0.0.1:6379/0")
EVENTS = [{"card": f"c{i % 3}", "amount": i % 5, "ts": i * 100} for i in range(60)]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    if redis is None:
        unavailable("redis-py", "pip install -e '.[redis]'")
    conn = redis.Redis.from_url(URL, decode_responses=True, socket_connect_timeout=2)
    try:
        conn.ping()
    except redis.RedisError as exc:
        unavailable("Redis", f"start redis-server on 127.0.0.1:6379 (apt-get install redis-server), or set RHEON_TEST_REDIS ({exc})")  # fmt: skip
    yield conn
    conn.close()


@pytest.fixture
def prefix(client) -> Iterator[str]:
    p = f"rheon-test:{uuid.uuid4().hex[:10]}:"
    yield p
    keys = list(client.scan_iter(f"{p}*"))
    if keys:
        client.delete(*keys)


def run(rows: list[dict], sink: Redis, *, batch_size: int = 1000, name: str = "redis") -> list[dict]:
    flow = rh.Flow(name)
    flow.source(rh.io.Records(rows, batch_size=batch_size)).sink(sink, name="out")
    dead = collect(flow.dead_letters())
    flow.run()
    return dead.rows


def windows(prefix: str, sink: Redis, *, name: str = "windows") -> None:
    flow = rh.Flow(name)
    src = flow.source(rh.io.Records(EVENTS, batch_size=7), time="ts")
    src.key_by("card").window(rh.tumbling("1s")).agg(n=rh.count(), total=rh.sum("amount")).sink(sink)
    flow.run()


def test_hash_per_row_with_encoded_values(client, prefix):
    at = dt.datetime(2024, 1, 1, 12, 30, tzinfo=dt.UTC)
    rows = [
        {"card": "c1", "n": 3, "avg": 1.5, "ok": True, "at": at, "tags": ["a", "b"], "note": "hi"},
        {"card": "c2", "n": 4, "avg": None, "ok": False, "at": at, "tags": [], "note": None},
    ]
    assert run(rows, Redis(URL, kind="hash", key=prefix + "card:{card}")) == []
    assert client.hgetall(prefix + "card:c1") == {
        "n": "3", "avg": "1.5", "ok": "true", "at": "2024-01-01T12:30:00+00:00", "tags": '["a","b"]', "note": "hi",
    }  # fmt: skip
    assert client.hgetall(prefix + "card:c2") == {"n": "4", "ok": "false", "at": "2024-01-01T12:30:00+00:00", "tags": "[]"}  # fmt: skip
    # A later row's None removes the field, so the hash holds the row's latest values.
    run([{"card": "c1", "n": 5, "avg": None}], Redis(URL, kind="hash", key=prefix + "card:{card}"))
    assert client.hgetall(prefix + "card:c1")["n"] == "5"
    assert "avg" not in client.hgetall(prefix + "card:c1")


def test_hash_of_window_results_is_idempotent_under_replay_with_ttl(client, prefix):
    sink = Redis(URL, kind="hash", key=prefix + "{card}:{window_start}", fields=["total"], ttl="1h")
    windows(prefix, sink)
    first = {k: client.hgetall(k) for k in client.scan_iter(f"{prefix}*")}
    windows(prefix, sink)  # a replay writes the same rows again
    assert {k: client.hgetall(k) for k in client.scan_iter(f"{prefix}*")} == first
    assert len(first) == 18  # 6 windows x 3 cards
    assert first[prefix + "c0:0"] == {"total": "8"}  # i = 0, 3, 6, 9: amounts 0 + 3 + 1 + 4
    ttls = {client.pttl(k) for k in first}
    assert all(3_500_000 < t <= 3_600_000 for t in ttls)


def test_sorted_set_of_window_totals_is_idempotent(client, prefix):
    sink = Redis(URL, kind="zset", key=prefix + "top:{window_start}", member="card", score="total", ttl="10m")
    windows(prefix, sink)
    windows(prefix, sink)
    assert client.zrange(prefix + "top:0", 0, -1, withscores=True) == [("c2", 5.0), ("c1", 7.0), ("c0", 8.0)]
    assert len(list(client.scan_iter(f"{prefix}top:*"))) == 6
    assert 0 < client.pttl(prefix + "top:0") <= 600_000


def test_sorted_set_member_template(client, prefix):
    rows = [{"game": "g1", "player": "ann", "pts": 3.5}, {"game": "g1", "player": "bob", "pts": 1}]
    run(rows, Redis(URL, kind="zset", key=prefix + "{game}", member="{player}@{game}", score="pts"))
    assert client.zrange(prefix + "g1", 0, -1, withscores=True) == [("bob@g1", 1.0), ("ann@g1", 3.5)]


def test_stream_appends_each_row_and_trims(client, prefix):
    rows = [{"card": f"c{i % 2}", "i": i, "note": None if i % 2 else "x"} for i in range(10)]
    run(rows, Redis(URL, kind="stream", key=prefix + "events"), batch_size=3)
    entries = client.xrange(prefix + "events")
    assert [fields for _, fields in entries][:2] == [{"card": "c0", "i": "0", "note": "x"}, {"card": "c1", "i": "1"}]
    assert len(entries) == 10
    run(rows, Redis(URL, kind="stream", key=prefix + "events"))
    assert client.xlen(prefix + "events") == 20  # not idempotent: at-least-once
    run([{"i": i} for i in range(1000)], Redis(URL, kind="stream", key=prefix + "trimmed", maxlen=10))
    assert client.xlen(prefix + "trimmed") < 200  # approximate trimming removes whole nodes


def test_rows_redis_rejects_or_cannot_key_become_dead_letters(client, prefix):
    client.set(prefix + "card:c1", "a plain string")
    rows = [{"card": "c0", "n": 1}, {"card": "c1", "n": 2}, {"card": None, "n": 3}, {"card": "c3", "n": 4}]
    dead = run(rows, Redis(URL, kind="hash", key=prefix + "card:{card}"))
    assert [(d["operator"], d["payload"]) for d in dead] == [
        ("sink 'out'", '{"card": "c1", "n": 2}'),
        ("sink 'out'", '{"card": null, "n": 3}'),
    ]
    assert dead[0]["reason"].startswith(f"Redis rejected HSET '{prefix}card:c1': WRONGTYPE")
    assert dead[1]["reason"] == "cannot write to Redis: key is null"
    assert client.hgetall(prefix + "card:c3") == {"n": "4"}


def test_a_connection_the_server_drops_loses_nothing(client, prefix):
    killed = []

    def kill_at_5(row: dict) -> dict:
        if row["i"] == 5:
            ids = [c["id"] for c in client.client_list() if c["name"] == "rheon:killed:out"]
            killed.extend(client.client_kill_filter(_id=i) for i in ids)
        return row

    flow = rh.Flow("killed")
    src = flow.source(rh.io.Records([{"i": i, "v": -i} for i in range(10)], batch_size=2)).map(kill_at_5)
    src.sink(Redis(URL, kind="hash", key=prefix + "{i}"), name="out")
    flow.run()
    assert killed == [1]
    assert sorted(int(k.rsplit(":", 1)[1]) for k in client.scan_iter(f"{prefix}*")) == list(range(10))


@pytest.fixture
def behind_proxy(client) -> Iterator[tuple[str, TcpProxy]]:
    """The test server's URL through a TcpProxy the test can cut, and the proxy."""
    parts = urlsplit(URL)
    proxy = TcpProxy(free_port(), parts.port or 6379, target_host=parts.hostname or "127.0.0.1")
    auth, _, _ = parts.netloc.rpartition("@")
    netloc = f"127.0.0.1:{proxy.listen_port}"
    yield parts._replace(netloc=f"{auth}@{netloc}" if auth else netloc).geturl(), proxy
    proxy.close()


def test_the_server_going_away_for_two_seconds_mid_run_loses_nothing(client, prefix, behind_proxy, caplog):
    """The network path to Redis goes away mid-run and comes back: both sinks wait it out with backoff."""
    url, proxy = behind_proxy
    n, cut_at = 100, []

    def cut_at_40(row: dict) -> dict:
        if row["i"] == 40:  # before the sinks write the batch holding rows 40..49
            cut_at.append(time.monotonic())
            proxy.cut_for(2.0)
        return row

    flow = rh.Flow("outage")
    rows = flow.source(rh.io.Records([{"i": i, "v": -i} for i in range(n)], batch_size=10)).map(cut_at_40)
    rows.sink(Redis(url, kind="hash", key=prefix + "h:{i}"), name="hash")
    rows.sink(Redis(url, kind="stream", key=prefix + "events"), name="stream")
    with caplog.at_level("WARNING", logger="rheon.io"):
        flow.run()
    assert time.monotonic() - cut_at[0] >= 2.0  # the run went on through the outage, not around it
    assert {k: client.hgetall(k) for k in client.scan_iter(f"{prefix}h:*")} == {
        f"{prefix}h:{i}": {"v": str(-i)} for i in range(n)
    }
    streamed = [int(fields["i"]) for _, fields in client.xrange(prefix + "events")]
    assert set(streamed) == set(range(n))  # at-least-once: a batch resent after a failure may appear twice
    # Paced: 0.2 s, 0.4 s, 0.8 s, ... until the server is back, not a burst of attempts.
    delays = [float(d) for d in re.findall(r"sink=hash attempt=\d+ retries=5 delay_s=([\d.]+)", caplog.text)]
    assert delays[:3] == [0.2, 0.4, 0.8]


class FlakyPipeline:
    """Fail the first ``n`` pipeline executions as a dropped connection would."""

    def __init__(self, monkeypatch, n: int) -> None:
        self.left = n
        real = redis.client.Pipeline.execute

        def execute(pipe, raise_on_error=True):
            if self.left > 0:
                self.left -= 1
                pipe.reset()
                raise redis.ConnectionError("Connection closed by server.")
            return real(pipe, raise_on_error)

        monkeypatch.setattr(redis.client.Pipeline, "execute", execute)


def test_a_failing_connection_is_retried_with_backoff_on_the_flows_clock(client, prefix, monkeypatch, caplog):
    FlakyPipeline(monkeypatch, 2)
    clock = ManualClock(start_ms=0)
    flow = rh.Flow("flaky")
    flow.source(rh.io.Records([{"i": i, "v": i} for i in range(4)])).sink(Redis(URL, key=prefix + "{i}"), name="out")
    with caplog.at_level("WARNING", logger="rheon.io.redis"):
        flow.run(clock=clock)
    assert caplog.text.count("reconnect service=Redis sink=out attempt=") == 2
    assert clock.now_ns() >= 600_000_000  # waited 200 ms, then 400 ms
    assert client.hgetall(prefix + "3") == {"v": "3"}


def test_retries_run_out_with_a_clear_error(client, prefix, monkeypatch):
    FlakyPipeline(monkeypatch, 10)
    sink = Redis(URL, key=prefix + "{i}", retries=2)
    with pytest.raises(rh.SinkError, match=r"lost the connection to Redis at 127\.0\.0\.1:6379/0 .* in 2 retries"):
        run([{"i": 1, "v": 1}], sink)


def test_unreachable_server_is_a_clear_error():
    with pytest.raises(rh.SinkError, match=r"sink 'out': cannot reach Redis at 127\.0\.0\.1:1 within 500 ms .*Is the server running"):  # fmt: skip
        run([{"a": 1}], Redis("redis://127.0.0.1:1", key="k:{a}", connect_timeout="500ms"))


def test_unknown_columns_are_clear_errors(client, prefix):
    with pytest.raises(
        rh.FlowError, match=r"key uses unknown column 'crd' \(columns: card, n\)\. Did you mean 'card'\?"
    ):
        run([{"card": "c", "n": 1}], Redis(URL, key=prefix + "{crd}"))
    with pytest.raises(rh.FlowError, match=r"score column 'card' must be numeric"):
        run([{"card": "c", "n": 1}], Redis(URL, kind="zset", key=prefix + "z", member="n", score="card"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "list", "key": "k"}, "kind must be one of hash, zset, stream"),
        ({"kind": "hash"}, "key= is required"),
        ({"kind": "zset", "key": "k", "score": "s"}, "member= and score= are required"),
        ({"kind": "stream", "key": "k", "ttl": "1h"}, "ttl= is for hashes and sorted sets"),
        ({"kind": "hash", "key": "k", "maxlen": 5}, "maxlen= is for streams"),
        ({"kind": "hash", "key": "card:{card!r}"}, "write column names in braces"),
        ({"kind": "hash", "key": "card:{}"}, "write column names in braces"),
    ],
)
def test_configuration_mistakes_are_flow_errors(kwargs, message):
    with pytest.raises(rh.FlowError, match=message):
        Redis(URL, **kwargs)
