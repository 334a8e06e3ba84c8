"""Kafka batches read and written column by column (issue 14): whatever a batch mixes, each row
keeps its own message's metadata, bad messages are dead letters in order, and nothing is dropped."""

from __future__ import annotations

import gc
import json
import time
from typing import Any

import polars as pl
import pytest

import rheon as rh
from rheon.core.batch import RAW_COL, SPLIT_COL
from rheon.io._json import JsonDecoder
from rheon.io.base import BuildContext
from rheon.io.kafka.codec import encode_json
from rheon.io.kafka.messages import consume_columns
from tests.io.kafka.conftest import confluent_kafka, produce, read_all


def _read(logic: Any, messages: int) -> list[pl.DataFrame]:
    """Batches from the source logic until ``messages`` messages are read (by their positions)."""
    frames = []
    deadline = time.monotonic() + 60
    while sum(logic.positions.values()) < messages:
        assert time.monotonic() < deadline, f"read {logic.positions} of {messages} messages"
        frame = logic.next_batch()
        if frame is not None and frame.height:
            frames.append(frame)
    return frames


def test_a_batch_of_good_and_bad_messages_keeps_each_rows_metadata_and_the_dead_letters_in_order_14(
    kafka_brokers, new_topic
):
    topic = new_topic()
    sent: list[bytes | None] = [
        b'{"v": 1, "ts": 10}',
        b"{not json",
        b'{"ts": 30, "v": 3}',  # keys in another order
        None,  # a tombstone
        b'{"v": "four", "ts": 50}',  # a string where the first batch had a number: after v is learned
        b'{"v": 6, "ts": 60}',
    ]
    producer = confluent_kafka.Producer({"bootstrap.servers": kafka_brokers})
    for i, value in enumerate(sent):
        producer.produce(topic, value=value, key=f"k{i}".encode(), partition=0)
    assert producer.flush(10) == 0
    kafka = rh.io.Kafka(topic, brokers=kafka_brokers, partitions="all", schema={"v": pl.Int64, "ts": pl.Int64})
    logic = kafka.build(BuildContext(flow="f", operator="in", event_time="ts"))
    try:
        frame = pl.concat(_read(logic, len(sent)))
    finally:
        logic.close()
    assert frame.select("v", "ts", "_key", "_offset", "_partition").rows() == [
        (1, 10, b"k0", 0, 0),
        (3, 30, b"k2", 2, 0),
        (6, 60, b"k5", 5, 0),
    ]
    assert frame[RAW_COL].to_list() == [sent[0].decode(), sent[2].decode(), sent[5].decode()]  # type: ignore[union-attr]
    assert set(frame[SPLIT_COL]) == {f"{topic}:0"}
    reasons = [reason for reason, _ in logic.take_dead_letters()]
    assert [reason.rsplit("@", 1)[1] for reason in reasons] == ["1)", "3)", "4)"]
    assert reasons[0].startswith("invalid JSON")
    assert reasons[1].startswith("message has no value")
    assert reasons[2].startswith("does not fit the schema: field 'v' is \"four\"")
    assert logic.positions == {f"{topic}:0": 6}


def test_a_decoder_that_makes_several_rows_or_none_keeps_each_rows_metadata_14(kafka_brokers, new_topic):
    topic = new_topic()
    produce(kafka_brokers, topic, [(0, b"a,b"), (0, b""), (0, b"c")])

    def split(value: bytes) -> list[dict[str, str]]:
        return [{"part": p.decode()} for p in value.split(b",") if p]

    kafka = rh.io.Kafka(topic, brokers=kafka_brokers, partitions="all", format=split)
    logic = kafka.build(BuildContext(flow="f", operator="in"))
    try:
        frame = pl.concat(_read(logic, 3))
    finally:
        logic.close()
    assert frame.select("part", "_offset").rows() == [("a", 0), ("b", 0), ("c", 2)]


def test_two_topics_keep_a_position_per_topic_and_partition_14(kafka_brokers, new_topic):
    first, second = new_topic(partitions=2), new_topic()
    produce(kafka_brokers, first, [(i % 2, {"i": i}) for i in range(5)])
    produce(kafka_brokers, second, [(0, {"i": 100 + i}) for i in range(3)])
    logic = rh.io.Kafka([first, second], brokers=kafka_brokers, partitions="all").build(
        BuildContext(flow="f", operator="in")
    )
    try:
        frame = pl.concat(_read(logic, 8))
    finally:
        logic.close()
    assert logic.positions == {f"{first}:0": 3, f"{first}:1": 2, f"{second}:0": 3}
    splits = dict(zip(frame["i"], frame[SPLIT_COL], strict=True))
    assert splits == {**{i: f"{first}:{i % 2}" for i in range(5)}, **{100 + i: f"{second}:0" for i in range(3)}}


def test_a_field_new_after_the_types_are_learned_is_a_new_column_not_dropped_14():
    """Once the types are known a batch is read with them (fast), which would leave out a field
    they lack: the colon count must send such a batch to inference, which adds the column."""
    decode = JsonDecoder()
    decode([b'{"a": 1, "s": "x"}'])
    frame, index, bad = decode([b'{"a": 2, "s": "10:30", "new": 5}', b'{"s": "y", "a": 3}'])
    assert frame.rows() == [(2, "10:30", 5), (3, "y", None)]
    assert (index, bad) == ([0, 1], [])
    # A colon written as \u003a in a text must not hide a new field's colon either.
    frame, _, _ = decode([b'{"a": 4, "s": "\\u003a", "other": true}'])
    assert frame.columns == ["a", "s", "new", "other"]
    assert frame.row(0) == (4, ":", None, True)


def test_a_batch_of_known_fields_is_read_without_inferring_its_types_14(monkeypatch):
    decode = JsonDecoder()
    decode([b'{"a": 1, "s": "x", "f": 0.5}'])

    def no_inference(ndjson: bytes) -> Any:
        raise AssertionError("inferred the types of a batch whose fields are all known")

    monkeypatch.setattr(decode, "_infer", no_inference)
    frame, index, bad = decode([b'{"s": "at 10:30", "f": 2, "a": 2}', b'{"s": "z"}', b"{}"])
    assert frame.rows() == [(2, "at 10:30", 2.0), (None, "z", None), (None, None, None)]
    assert (index, bad) == ([0, 1, 2], [])


def test_text_with_unicode_line_separators_is_one_message_each_14(kafka_brokers, new_topic):
    """The sink splits Polars' NDJSON on newlines only: U+2028 and friends stay inside their row."""
    topic = new_topic()
    texts = ["a\u2028b", "c\u2029d", "e\x1cf", "g\x85h", "i\nj", "k\rl"]
    assert len(encode_json(pl.DataFrame({"t": texts}))) == len(texts)
    flow = rh.Flow("separators")
    flow.source(rh.io.Records([{"t": t, "n": i} for i, t in enumerate(texts)])).sink(
        rh.io.KafkaSink(topic, brokers=kafka_brokers, key="n")
    )
    dead = rh.io.Collect()
    flow.dead_letters().sink(dead)
    flow.run()
    assert dead.rows == []
    assert sorted((r["n"], r["t"]) for r in read_all(kafka_brokers, topic)) == list(enumerate(texts))


def test_message_keys_are_the_key_columns_text_14(kafka_brokers, new_topic):
    topic = new_topic()
    rows = [{"card": "c1", "n": 7, "x": 0.5}, {"card": None, "n": -1, "x": None}]
    for key in ("card", "n", "x", ["card", "n"]):
        flow = rh.Flow("keys")
        flow.source(rh.io.Records(rows)).sink(rh.io.KafkaSink(topic, brokers=kafka_brokers, key=key))
        flow.run()
    c = confluent_kafka.Consumer({"bootstrap.servers": kafka_brokers, "group.id": f"keys-{topic}"})
    c.assign([confluent_kafka.TopicPartition(topic, 0, 0)])
    keys: list[bytes | None] = []
    deadline = time.monotonic() + 30
    while len(keys) < 8 and time.monotonic() < deadline:
        keys += [m.key() for m in c.consume(100, 0.2) if m.error() is None]
    c.close()
    assert keys == [b"c1", None, b"7", b"-1", b"0.5", None, b'["c1", 7]', json.dumps([None, -1]).encode()]


class _Message:
    """The part of confluent_kafka.Message that `consume_columns` reads."""

    def __init__(self, offset: int, error: Any = None) -> None:
        self._offset, self._error = offset, error

    def error(self) -> Any:
        return self._error

    def value(self) -> bytes:
        return b"{}"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class _Consumer:
    def __init__(self, messages: list[_Message]) -> None:
        self.messages = messages
        self.gc_was_on: bool | None = None

    def consume(self, num_messages: int, timeout: float) -> list[_Message]:
        self.gc_was_on = gc.isenabled()
        return self.messages[:num_messages]


def test_error_events_are_set_apart_and_the_collector_is_paused_only_while_consuming_14():
    consumer = _Consumer([_Message(1), _Message(-1, error="broker down"), _Message(2)])
    batch, errors = consume_columns(consumer, _Message, 10, topics=False, metadata=False)
    assert batch.offsets == [1, 2]
    assert [e.error() for e in errors] == ["broker down"]
    assert consumer.gc_was_on is False
    assert gc.isenabled()


def test_a_collector_turned_off_by_the_application_stays_off_14():
    gc.disable()
    try:
        consume_columns(_Consumer([_Message(1)]), _Message, 10, topics=False, metadata=False)
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.parametrize("fatal", [False, True])
def test_error_events_are_logged_or_fail_the_source_14(kafka_brokers, new_topic, fatal, caplog):
    class Error:
        def fatal(self) -> bool:
            return fatal

        def __str__(self) -> str:
            return "something went wrong"

    topic = new_topic()
    logic = rh.io.Kafka(topic, brokers=kafka_brokers, partitions="all").build(BuildContext(flow="f", operator="in"))
    try:
        if fatal:
            with pytest.raises(rh.SourceError, match=r"source 'in': fatal Kafka error: something went wrong"):
                logic._report([_Message(0, error=Error())])
        else:
            with caplog.at_level("WARNING", logger="rheon"):
                logic._report([_Message(0, error=Error())])
            assert "kafka_error source=source 'in' error=something went wrong" in caplog.text
    finally:
        logic.close()
