"""``rh.io.Postgres`` against a real PostgreSQL server (RHEON_TEST_POSTGRES, default 127.0.0.1:5432/test)."""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import polars as pl
import pytest

import rheon as rh
from rheon.io.base import BuildContext
from rheon.io.postgres import Postgres, _PostgresLogic
from rheon.runtime.prometheus import FlowCollector
from rheon.testing import ManualClock, collect
from tests.crash import Crash, crash_at_row
from tests.proxy import TcpProxy
from tests.services import free_port

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
except ImportError:  # pragma: no cover - reported by the fixture
    psycopg = None  # type: ignore[assignment]

EVENTS = [{"card": f"c{i % 4}", "amount": (i * 7) % 11, "ts": i * 100} for i in range(400)]


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    names = [f"rheon_test_{uuid.uuid4().hex[:12]}" for _ in range(2)]
    yield names[0]
    with psycopg.connect(dsn, autocommit=True) as conn:
        for name in names + [f"{name}_ref" for name in names]:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
            if conn.execute("SELECT to_regclass('rheon_progress')").fetchone() != (None,):
                conn.execute("DELETE FROM rheon_progress WHERE target = %s", [name])  # the sink's progress rows


def query(dsn: str, text: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def contents(dsn: str, table: str) -> list[tuple]:
    return sorted(query(dsn, f'SELECT * FROM "{table}"'))


def windows_flow(
    dsn: str, table: str, *, key: list[str] | None, events=EVENTS, batch_size: int = 20, crash_after: int | None = None
) -> rh.Flow:
    flow = rh.Flow("pg")
    src = flow.source(rh.io.Records(events, batch_size=batch_size), time="ts", name="tx")
    per_card = src.key_by("card").window(rh.tumbling("1s"), name="per_card").agg(n=rh.count(), total=rh.sum("amount"))
    per_card.sink(Postgres(table, dsn=dsn, key=key), name="out")
    src.sink(crash_at_row(crash_after), name="watch")
    return flow


def test_creates_the_table_with_types_mapped_from_polars(dsn, table):
    frame = pl.DataFrame(
        {
            "id": [1, 2],
            "small": pl.Series([1, None], dtype=pl.Int16),
            "x": [1.5, float("nan")],
            "name": ['a,"b"\n', ""],
            "flag": [True, None],
            "at": [dt.datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)] * 2,
            "local": [dt.datetime(2024, 1, 1, 12), None],  # noqa: DTZ001 - testing naive timestamps
            "day": [dt.date(2024, 2, 29)] * 2,
            "price": pl.Series([decimal.Decimal("1.25"), None], dtype=pl.Decimal(10, 2)),
            "raw": [b"\x00\xff", b""],
            "tags": [["a", "b"], None],
            "info": [{"k": 1, "v": "x"}, None],
            "took": [dt.timedelta(seconds=-3, microseconds=5), dt.timedelta(days=2)],
        }
    )
    flow = rh.Flow("types")
    flow.source(rh.io.Records(frame)).sink(Postgres(table, dsn=dsn, key="id"))
    flow.run()
    types = query(
        dsn,
        "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = %s::regclass AND attnum > 0 ORDER BY attnum",
        table,
    )
    assert types == [
        ("id", "bigint"), ("small", "smallint"), ("x", "double precision"), ("name", "text"), ("flag", "boolean"),
        ("at", "timestamp with time zone"), ("local", "timestamp without time zone"), ("day", "date"),
        ("price", "numeric(10,2)"), ("raw", "bytea"), ("tags", "jsonb"), ("info", "jsonb"), ("took", "interval"),
    ]  # fmt: skip
    primary = query(dsn, "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary", table)  # fmt: skip
    assert primary == [("id",)]
    first, second = contents(dsn, table)
    assert first[:4] == (1, 1, 1.5, 'a,"b"\n')
    assert first[5] == dt.datetime(2024, 1, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    assert first[8:] == (decimal.Decimal("1.25"), b"\x00\xff", ["a", "b"], {"k": 1, "v": "x"}, dt.timedelta(seconds=-3, microseconds=5))  # fmt: skip
    assert [second[i] for i in (1, 3, 4, 6, 9, 10, 11)] == [None, "", None, None, b"", None, None]


def test_window_results_are_upserted_so_a_rerun_leaves_each_key_once(dsn, table):
    first = [{**e, "amount": 1} for e in EVENTS]
    windows_flow(dsn, table, key=["card", "window_start"], events=first).run()
    windows_flow(dsn, table, key=["card", "window_start"]).run()  # same windows, other totals
    flow = rh.Flow("ref")
    ref = collect(
        flow.source(rh.io.Records(EVENTS), time="ts")
        .key_by("card")
        .window(rh.tumbling("1s"))
        .agg(n=rh.count(), total=rh.sum("amount"))
    )
    flow.run()
    expected = sorted(tuple(r.values()) for r in ref.rows)
    assert len(expected) == 160  # 40 windows x 4 cards
    assert contents(dsn, table) == expected


@pytest.mark.parametrize("key", [["card", "window_start"], None], ids=["upsert", "append"])
@pytest.mark.parametrize("crash", ["mid_run", "before_the_commit"])
def test_exactly_once_across_a_crash_with_checkpoints(dsn, table, tmp_path, monkeypatch, key, crash):
    windows_flow(dsn, f"{table}_ref", key=key).run()
    expected = contents(dsn, f"{table}_ref")
    if crash == "before_the_commit":  # checkpoint 3 is on disk, its transaction not committed
        real = _PostgresLogic.commit

        def dying(self, checkpoint_id):
            if checkpoint_id == 3:
                raise Crash
            real(self, checkpoint_id)

        monkeypatch.setattr(_PostgresLogic, "commit", dying)
    with pytest.raises(Crash):
        windows_flow(dsn, table, key=key, crash_after=None if crash == "before_the_commit" else 190).run(
            checkpoint_dir=tmp_path, checkpoint_every="0ms"
        )
    monkeypatch.undo()
    assert 0 < len(contents(dsn, table)) < len(expected)
    windows_flow(dsn, table, key=key).run(checkpoint_dir=tmp_path, checkpoint_every="0ms")
    assert contents(dsn, table) == expected


def terminate(dsn: str, flow: str, operator: str) -> int:
    return len(
        query(
            dsn,
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = %s",
            f"rheon {flow}/{operator}",
        )
    )


@pytest.mark.parametrize("key", [["id"], None], ids=["upsert", "append"])
def test_reconnects_when_the_server_drops_the_connection_and_loses_nothing(dsn, table, tmp_path, key, caplog):
    killed = []

    def kill_at_60(row: dict) -> dict:
        if row["id"] == 60:
            killed.append(terminate(dsn, "drop", "out"))
        return row

    flow = rh.Flow("drop")
    src = flow.source(rh.io.Records([{"id": i, "v": i * 2} for i in range(100)], batch_size=10))
    src.map(kill_at_60).sink(Postgres(table, dsn=dsn, key=key), name="out")
    with caplog.at_level("INFO", logger="rheon.io.postgres"):
        # One transaction for the whole run: the rows of the first 6 batches are lost with it.
        flow.run(checkpoint_dir=tmp_path, checkpoint_every="1h")
    assert killed == [1]
    assert "reconnect service=PostgreSQL sink=" in caplog.text
    assert "status=aborted" in caplog.text
    assert contents(dsn, table) == [(i, i * 2) for i in range(100)]
    # The reconnections are counted as the sink's retries, and served to Prometheus.
    reconnects = caplog.text.count("reconnect service=PostgreSQL sink=out ")
    health = flow._executor.metrics.sinks["sink 'out'"]
    assert (health.retries, health.circuit) == (reconnects, None)
    assert reconnects >= 1
    served = {
        (s.name, s.labels.get("sink")): s.value
        for family in FlowCollector(flow._executor.metrics, running=lambda: False).collect()
        for s in family.samples
        if s.name.startswith("rheon_sink_")
    }
    assert served == {("rheon_sink_retries_total", "sink 'out'"): reconnects}  # no circuit breaker: no state


@pytest.fixture
def behind_proxy(dsn) -> Iterator[tuple[str, TcpProxy]]:
    """The test server's DSN through a TcpProxy the test can cut, and the proxy.

    With a lock_timeout, so that a write stuck behind a lost transaction's row locks fails the
    test instead of hanging it.
    """
    info = conninfo_to_dict(dsn)
    proxy = TcpProxy(free_port(), int(info.get("port") or 5432), target_host=str(info.get("host") or "127.0.0.1"))
    yield make_conninfo(dsn, host="127.0.0.1", port=proxy.listen_port, options="-c lock_timeout=3s"), proxy
    proxy.close()


@pytest.mark.parametrize("half_open", [False, True], ids=["closed", "half_open"])
@pytest.mark.parametrize("key", [["id"], None], ids=["upsert", "append"])
def test_the_server_going_away_mid_run_writes_each_row_once(dsn, table, tmp_path, key, half_open, behind_proxy, caplog):
    """The network path to PostgreSQL goes away mid-run and comes back: the sink reconnects with
    backoff, finds its transaction aborted, writes its rows again, and the table holds each row once.

    ``half_open``: the server is not told, as when the network fails (rather than the client
    closing): the old session lives on, its transaction open, holding the locks of its rows.
    """
    proxied, proxy = behind_proxy
    n, cut_at = 200, []

    def cut_at_90(row: dict) -> dict:
        if row["id"] == 90:  # rows 0..89 are in the open transaction, which the cut loses
            cut_at.append(time.monotonic())
            proxy.cut_for(2.0, half_open=half_open)
        return row

    flow = rh.Flow("outage")
    src = flow.source(rh.io.Records([{"id": i, "v": i * 2} for i in range(n)], batch_size=10))
    src.map(cut_at_90).sink(Postgres(table, dsn=proxied, key=key), name="out")
    with caplog.at_level("INFO", logger="rheon.io"):
        flow.run(checkpoint_dir=tmp_path, checkpoint_every="1h")
    assert time.monotonic() - cut_at[0] >= 2.0
    rows = contents(dsn, table)
    assert [count for count in Counter(rows).values() if count > 1] == []  # nothing written twice
    assert rows == [(i, i * 2) for i in range(n)]  # nothing lost
    delays = [float(d) for d in re.findall(r"sink=out attempt=\d+ retries=5 delay_s=([\d.]+)", caplog.text)]
    assert delays[:3] == [0.2, 0.4, 0.8]  # paced, until the server was back
    assert re.search(r"postgres_resync sink=out writer=\w+ checkpoint=None marker=0 status=aborted", caplog.text)
    assert ("postgres_lost_session sink=out" in caplog.text) == half_open  # ended, so its locks were freed


def test_rows_the_database_rejects_become_dead_letters(dsn, table):
    query(
        dsn,
        f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, code varchar(3), total bigint NOT NULL CHECK (total >= 0))',
    )
    rows = [{"id": i, "code": "abc", "total": i} for i in range(20)]
    rows[3]["total"] = None
    rows[11]["code"] = "toolong"
    rows[17]["total"] = -5
    flow = rh.Flow("bad")
    flow.source(rh.io.Records(rows, batch_size=10)).sink(Postgres(table, dsn=dsn, key="id"), name="out")
    dead = collect(flow.dead_letters())
    flow.run()
    assert [r[0] for r in contents(dsn, table)] == [i for i in range(20) if i not in (3, 11, 17)]
    assert [r["operator"] for r in dead.rows] == ["sink 'out'"] * 3
    reasons = [r["reason"] for r in dead.rows]
    assert 'null value in column "total"' in reasons[0]
    assert "SQLSTATE 23502" in reasons[0]
    assert "value too long for type character varying(3)" in reasons[1]
    assert "violates check constraint" in reasons[2]
    assert dead.rows[1]["payload"] == '{"id": 11, "code": "toolong", "total": 11}'


def test_an_existing_table_without_a_unique_key_is_a_clear_error(dsn, table):
    query(dsn, f'CREATE TABLE "{table}" (card text, window_start bigint, n bigint)')
    flow = windows_flow(dsn, table, key=["card", "window_start"])
    expected = rf"sink 'out': table {table} has no primary key or unique constraint on \(card, window_start\).*ALTER TABLE {table} ADD PRIMARY KEY \(card, window_start\)"  # fmt: skip
    with pytest.raises(rh.SinkError, match=expected):
        flow.run()


def test_unknown_columns_and_a_missing_table_without_create_are_clear_errors(dsn, table):
    flow = rh.Flow("nocreate")
    flow.source(rh.io.Records([{"id": 1}])).sink(Postgres(table, dsn=dsn, create=False), name="out")
    with pytest.raises(rh.SinkError, match=rf"table {table} does not exist in 127\.0\.0\.1:5432/test.*create=True"):
        flow.run()
    query(dsn, f'CREATE TABLE "{table}" (id bigint)')
    flow = rh.Flow("extra")
    flow.source(rh.io.Records([{"id": 1, "amout": 2}])).sink(Postgres(table, dsn=dsn), name="out")
    with pytest.raises(rh.SinkError, match=r"has no column 'amout' \(columns: id\)\. Add it"):
        flow.run()


def test_unreachable_server_is_a_clear_error():
    flow = rh.Flow("down")
    flow.source(rh.io.Records([{"a": 1}])).sink(
        Postgres("t", dsn="postgresql://127.0.0.1:1/test", connect_timeout="1s"), name="out"
    )
    expected = (
        r"sink 'out': cannot connect to PostgreSQL at 127\.0\.0\.1:1/test within 1 s \(.*\)\. Is the server running"
    )
    with pytest.raises(rh.SinkError, match=expected):
        flow.run()


def test_retries_back_off_on_the_flows_clock_then_fail(dsn, table):
    clock = ManualClock(start_ms=0)
    cfg = Postgres(table, dsn=dsn, retries=3, retry_backoff="1s")
    logic = _PostgresLogic(cfg, BuildContext(flow="retry", operator="out", clock=clock))
    try:
        logic.write(pl.DataFrame({"id": [1]}))
        cfg.dsn = "postgresql://127.0.0.1:1/test"  # the server is gone for good
        terminate(dsn, "retry", "out")
        with pytest.raises(rh.SinkError, match=r"lost the connection to PostgreSQL .* in 3 retries"):
            logic.write(pl.DataFrame({"id": [2]}))
    finally:
        logic.close()
    assert clock.now_ns() == 7 * 10**9  # waited 1 s, 2 s, 4 s
    assert contents(dsn, table) == [(1,)]


def test_without_checkpoints_commit_rows_groups_batches_into_transactions(dsn, table):
    logic = _PostgresLogic(Postgres(table, dsn=dsn, commit_rows=5), BuildContext(flow="group", operator="out"))
    try:
        logic.write(pl.DataFrame({"id": [1, 2, 3]}))
        assert contents(dsn, table) == []  # the table exists, the rows are not committed yet
        logic.write(pl.DataFrame({"id": [4, 5, 6]}))
        assert contents(dsn, table) == [(i,) for i in range(1, 7)]
        logic.write(pl.DataFrame({"id": [7]}))
        logic.flush()
        assert len(contents(dsn, table)) == 7
    finally:
        with contextlib.suppress(Exception):
            logic.close()
