"""Kafka source and sink against a real Kafka-protocol broker."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import Counter

import polars as pl
import pytest

import rheon as rh
from rheon.core.metrics import SinkHealth
from rheon.io.base import BuildContext
from rheon.testing import collect
from tests.crash import Crash, crash_at_row
from tests.io.kafka.conftest import confluent_kafka, produce, read_all


def _events(n: int, partitions: int) -> list[tuple[int, dict]]:
    return [(i % partitions, {"card": f"c{i % 4}", "amount": i, "ts": 1_000 * (i // partitions)}) for i in range(n)]


def test_kafka_to_windows_with_metadata_columns(kafka_brokers, new_topic):
    topic = new_topic(partitions=3)
    produce(kafka_brokers, topic, _events(60, 3), key="k")
    flow = rh.Flow("k2w")
    src = flow.source(rh.io.Kafka(topic, brokers=kafka_brokers, partitions="all"), time="ts", name="in")
    rows = collect(src)
    per_card = collect(src.key_by("card").window(rh.tumbling("5s")).agg(n=rh.count(), total=rh.sum("amount")))
    flow.run(duration="3s")
    assert len(rows) == 60
    first = rows.rows[0]
    assert set(first) == {"card", "amount", "ts", "_key", "_partition", "_offset", "_timestamp", "_headers"}
    assert first["_key"] == b"k"
    assert sorted({r["_partition"] for r in rows.rows}) == [0, 1, 2]
    # Partitions advance together (event time 0..19 s each); windows up to the watermark fired.
    fired = {(r["card"], r["window_start"]): r for r in per_card.rows}
    assert fired[("c0", 0)]["n"] == 4  # i in {0, 4, 8, 12}: ts 0, 1000, 2000, 4000
    assert sum(r["n"] for r in per_card.rows) < 60  # the last windows are still open (no drain)


def test_metadata_columns_carry_key_offset_timestamp_and_headers(kafka_brokers, new_topic):
    topic = new_topic()
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka_brokers})
    sent = [
        (b"k1", {"v": 1}, 1_700_000_000_123, [("trace", b"abc"), ("tenant", b"t1")]),
        (None, {"v": 2}, 1_700_000_001_000, None),
    ]
    for key, value, stamp, headers in sent:
        producer.produce(
            topic, value=json.dumps(value).encode(), key=key, partition=0, timestamp=stamp, headers=headers
        )
    assert producer.flush(10) == 0
    flow = rh.Flow("meta")
    rows = collect(flow.source(rh.io.Kafka(topic, brokers=kafka_brokers, partitions="all")))
    flow.run(duration="2s")
    assert [(r["v"], r["_key"], r["_partition"], r["_offset"], r["_timestamp"]) for r in rows.rows] == [
        (1, b"k1", 0, 0, 1_700_000_000_123),
        (2, None, 0, 1, 1_700_000_001_000),
    ]
    assert json.loads(rows.rows[0]["_headers"]) == {"trace": "abc", "tenant": "t1"}
    assert rows.rows[1]["_headers"] in (None, "{}")


def test_watermark_is_the_minimum_over_partitions(kafka_brokers, new_topic):
    """A partition far ahead in event time must not make another partition's events late."""
    topic = new_topic(partitions=2)
    ahead = [(0, {"ts": t}) for t in range(100_000, 110_000, 1_000)]
    behind = [(1, {"ts": t}) for t in range(0, 12_000, 1_000)]
    produce(kafka_brokers, topic, ahead + behind)
    flow = rh.Flow("minwm")
    src = flow.source(rh.io.Kafka(topic, brokers=kafka_brokers, partitions="all", metadata=False), time="ts")
    win = src.window(rh.tumbling("10s")).agg(n=rh.count())
    out, late = collect(win), collect(win.late())
    flow.run(duration="3s")
    assert late.rows == []
    assert out.rows[0] == {"window_start": 0, "window_end": 10_000, "n": 10}


def test_an_idle_partition_stops_holding_back_after_idle_timeout(kafka_brokers, new_topic):
    topic = new_topic(partitions=2)
    produce(kafka_brokers, topic, [(0, {"ts": t}) for t in range(0, 30_000, 1_000)])  # partition 1 stays empty
    results = {}
    for idle in (None, "500ms"):
        flow = rh.Flow("idle")
        kafka = rh.io.Kafka(topic, brokers=kafka_brokers, partitions="all", metadata=False)
        src = flow.source(kafka, time="ts", idle_timeout=idle)
        out = collect(src.window(rh.tumbling("10s")).agg(n=rh.count()))
        flow.run(duration="2s")
        results[idle] = out.rows
    assert results[None] == []  # the empty partition holds the watermark at -inf
    assert results["500ms"][:2] == [
        {"window_start": 0, "window_end": 10_000, "n": 10},
        {"window_start": 10_000, "window_end": 20_000, "n": 10},
    ]


def test_undecodable_messages_are_dead_letters_with_their_payload(kafka_brokers, new_topic):
    topic = new_topic()
    produce(kafka_brokers, topic, [(0, {"a": 1, "ts": 0}), (0, b"{not json"), (0, b"[1, 2]"), (0, {"a": 4, "ts": 5})])
    flow = rh.Flow("bad")
    src = flow.source(rh.io.Kafka(topic, brokers=kafka_brokers, partitions="all", metadata=False), time="ts", name="in")
    good, bad = collect(src), collect(flow.dead_letters())
    flow.run(duration="2s")
    assert [r["a"] for r in good.rows] == [1, 4]
    assert [(b["operator"], b["payload"]) for b in bad.rows] == [
        ("source 'in'", "{not json"),
        ("source 'in'", "[1, 2]"),
    ]
    assert bad.rows[0]["reason"].startswith("invalid JSON")
    assert bad.rows[0]["reason"].endswith(f"({topic}[0]@1)")
    assert flow.metrics().dead_letters == 2


def test_schema_makes_wrong_types_dead_letters(kafka_brokers, new_topic):
    topic = new_topic()
    produce(kafka_brokers, topic, [(0, {"amount": 5, "ts": 0}), (0, {"amount": "five", "ts": 1})])
    flow = rh.Flow("typed")
    kafka = rh.io.Kafka(
        topic, brokers=kafka_brokers, partitions="all", metadata=False, schema={"amount": pl.Int64, "ts": pl.Int64}
    )
    src = flow.source(kafka, time="ts")
    good, bad = collect(src), collect(flow.dead_letters())
    flow.run(duration="2s")
    assert good.rows == [{"amount": 5, "ts": 0}]
    assert len(bad.rows) == 1
    assert "does not fit the schema" in bad.rows[0]["reason"]


def test_bytes_and_custom_decoders(kafka_brokers, new_topic):
    topic = new_topic()
    produce(kafka_brokers, topic, [(0, b"a,1"), (0, b"b,2")])
    for fmt, expected in (("bytes", [b"a,1", b"b,2"]), (lambda v: {"k": v.split(b",")[0].decode()}, ["a", "b"])):
        flow = rh.Flow("decoders")
        out = collect(
            flow.source(rh.io.Kafka(topic, brokers=kafka_brokers, partitions="all", format=fmt, metadata=False))
        )
        flow.run(duration="2s")
        assert [next(iter(r.values())) for r in out.rows] == expected


def test_unreachable_broker_is_a_clear_error():
    flow = rh.Flow("down")
    flow.source(rh.io.Kafka("t", brokers="127.0.0.1:1", connect_timeout="500ms")).sink(rh.io.Collect())
    expected = r"cannot reach Kafka at 127\.0\.0\.1:1 within 500 ms.*Is the broker running"
    with pytest.raises(rh.SourceError, match=expected):
        flow.run(duration="1s")


def test_sink_to_missing_topic_is_a_clear_error(kafka_brokers):
    flow = rh.Flow("nosuch")
    flow.source(rh.io.Records([{"a": 1}])).sink(
        rh.io.KafkaSink("does-not-exist-xyz", brokers=kafka_brokers), name="out"
    )
    with pytest.raises(rh.SinkError, match=r"sink 'out': topic 'does-not-exist-xyz' does not exist"):
        flow.run()


def test_kafka_sink_without_checkpoints(kafka_brokers, new_topic):
    topic = new_topic(partitions=2)
    flow = rh.Flow("plain-sink")
    flow.source(rh.io.Records([{"card": f"c{i % 3}", "n": i} for i in range(50)])).sink(
        rh.io.KafkaSink(topic, brokers=kafka_brokers, key="card")
    )
    flow.run()
    assert sorted(r["n"] for r in read_all(kafka_brokers, topic)) == list(range(50))


def test_the_kafka_clients_request_retries_count_as_the_sinks_retries(kafka_brokers, new_topic):
    """librdkafka reports its request retries in its statistics, per broker and counted since the
    producer started; the sink's health adds them to its own retries, never going back."""
    topic = new_topic()
    logic = rh.io.KafkaSink(topic, brokers=kafka_brokers).build(BuildContext(flow="f", operator="out"))
    try:
        logic.write(pl.DataFrame({"n": [1, 2]}))
        logic.flush()
        assert logic.health() == SinkHealth(0)  # a healthy broker: nothing retried, no circuit breaker

        def statistics(broker: int, coordinator: int) -> str:
            brokers = {"127.0.0.1:9092/1": {"txretries": broker}, "TxnCoordinator": {"txretries": coordinator}}
            return json.dumps({"name": "rdkafka#producer-1", "brokers": brokers})

        logic._statistics(statistics(2, 1))
        assert logic.health() == SinkHealth(3)
        logic._statistics(statistics(4, 0))  # a coordinator handle started over: its retries stay counted
        assert logic.health() == SinkHealth(5)
        logic._statistics("not json")
        assert logic.health() == SinkHealth(5)
    finally:
        logic.close()


def _pipeline(
    brokers: str, source_topic: str, sink_topic: str, *, crash_after: int | None = None, crash_in_commit: bool = False
) -> rh.Flow:
    flow = rh.Flow("k2k")
    src = flow.source(
        rh.io.Kafka(source_topic, brokers=brokers, partitions="all", metadata=False, max_batch=50), time="ts", name="in"
    )
    totals = src.key_by("card").reduce(lambda a, r: {**r, "amount": a["amount"] + r["amount"]}, name="totals")
    totals.sink(rh.io.KafkaSink(sink_topic, brokers=brokers, key="card"), name="out")
    src.sink(crash_at_row(crash_after), name="watch")
    if crash_in_commit:
        import rheon.io.kafka.sink as sink_module

        real = sink_module._KafkaSinkLogic._transact

        def dying(self, cid, frame, skip):
            real_flush = self._flush

            def flush_then_die():
                real_flush()
                raise Crash  # rows delivered inside the open transaction, never committed

            self._flush = flush_then_die
            real(self, cid, frame, skip)

        sink_module._KafkaSinkLogic._transact = dying  # type: ignore[method-assign]
        flow._restore_transact = (sink_module, real)  # type: ignore[attr-defined]
    return flow


@pytest.mark.parametrize("crash", ["mid_run", "inside_the_kafka_commit"])
def test_exactly_once_kafka_to_kafka_across_crashes(kafka_brokers, new_topic, tmp_path, crash, caplog):
    source_topic, sink_topic = new_topic(partitions=3), new_topic(partitions=3)
    events = [(i % 3, {"card": f"c{i % 5}", "amount": 1, "ts": i * 10}) for i in range(600)]
    produce(kafka_brokers, source_topic, events)
    ckpt = tmp_path / "ckpt"
    flow = _pipeline(kafka_brokers, source_topic, sink_topic, crash_after=250 if crash == "mid_run" else None,
                     crash_in_commit=crash == "inside_the_kafka_commit")  # fmt: skip
    try:
        with contextlib.suppress(Crash):
            flow.run(checkpoint_dir=ckpt, checkpoint_every="100ms", duration="20s")
    finally:
        restore = getattr(flow, "_restore_transact", None)
        if restore is not None:
            restore[0]._KafkaSinkLogic._transact = restore[1]
    with caplog.at_level("INFO", logger="rheon"):
        _pipeline(kafka_brokers, source_topic, sink_topic).run(
            checkpoint_dir=ckpt, checkpoint_every="100ms", duration="4s"
        )
    if crash == "inside_the_kafka_commit" and not os.environ.get("RHEON_TEST_KAFKA"):
        # tansu exposes a fenced transaction's rows; recovery must have found and skipped them.
        assert "kafka_recover" in caplog.text
        assert "already_visible=0" not in caplog.text
    rows = read_all(kafka_brokers, sink_topic)
    # Every input record produced exactly one running-total row: 600 rows, totals 1..120 per card.
    assert len(rows) == 600
    counts = Counter((r["card"], r["amount"]) for r in rows)
    assert set(counts.values()) == {1}
    assert {card: max(a for c, a in counts if c == card) for card, _ in counts} == {f"c{i}": 120 for i in range(5)}


def test_offsets_are_committed_to_the_group_for_monitoring(kafka_brokers, new_topic, tmp_path):
    import confluent_kafka

    topic = new_topic(partitions=2)
    produce(kafka_brokers, topic, [(i % 2, {"i": i}) for i in range(20)])
    flow = rh.Flow("monitor")
    flow.source(rh.io.Kafka(topic, brokers=kafka_brokers, group="watchers", partitions="all")).sink(rh.io.Collect())
    flow.run(checkpoint_dir=tmp_path, duration="1500ms")
    c = confluent_kafka.Consumer({"bootstrap.servers": kafka_brokers, "group.id": "watchers"})
    committed = c.committed([confluent_kafka.TopicPartition(topic, p) for p in (0, 1)], timeout=10)
    c.close()
    assert [tp.offset for tp in committed] == [10, 10]


def test_consumer_group_assignment(kafka_brokers, new_topic):
    """Without partitions=, the source joins the group and is assigned every partition.

    tansu answers a JoinGroup only after the consumer's rebalance timeout (max.poll.interval.ms,
    librdkafka's default 5 minutes), where Kafka waits group.initial.rebalance.delay.ms (3 s):
    hence the short timeout here.
    """
    topic = new_topic(partitions=2)
    produce(kafka_brokers, topic, [(i % 2, {"i": i}) for i in range(10)])
    flow = rh.Flow("group")
    fast_join = {"max.poll.interval.ms": 3000, "session.timeout.ms": 3000}
    out = collect(flow.source(rh.io.Kafka(topic, brokers=kafka_brokers, group="g-" + topic, config=fast_join)))
    flow.run(duration="6s")
    assert sorted(r["i"] for r in out.rows) == list(range(10))
    assert {r["_partition"] for r in out.rows} == {0, 1}


def test_backlog_is_the_consumer_lag_per_partition(kafka_brokers, new_topic):
    topic = new_topic(partitions=2)
    produce(kafka_brokers, topic, [(0, {"i": i}) for i in range(300)] + [(1, {"i": i}) for i in range(50)])
    kafka = rh.io.Kafka(topic, brokers=kafka_brokers, partitions="all", metadata=False, max_batch=100)
    logic = kafka.build(BuildContext(flow="f", operator="in"))
    try:
        # A partition's lag is known once the client has fetched from it (its cached high
        # watermark): read until both have been, which one batch need not cover.
        read, lag = 0, {}
        deadline = time.monotonic() + 60
        while (read == 0 or len(lag) < 2) and time.monotonic() < deadline:
            frame = logic.next_batch()
            read += frame.height if frame is not None else 0
            lag = logic.backlog()
        assert 0 < read <= 350
        assert lag is not None
        assert len(lag) == 2
        assert sum(lag.values()) == 350 - read
        assert {split for split, unit in lag} <= {f"{topic}:0", f"{topic}:1"}
        assert {unit for _, unit in lag} == {"records"}
    finally:
        logic.close()
