"""Hostile JSON is a dead letter, never a crash, and never a crash loop (rheon.io._json).

A message nested hundreds of levels deep, one that is not UTF-8, one with thousands of fields: the
shared JSON decoder refuses each with a reason before Polars or Python's parser sees it. Through
the Kafka source (tansu) and the MQTT source (Mosquitto): the good messages around a poison one
are processed, the poison one is a dead letter with its payload, and a flow restarted from a
checkpoint before it replays it without dying either.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import rheon as rh
from rheon.io._json import JsonDecoder, oversized
from rheon.testing import collect
from tests.crash import Crash
from tests.io import test_mqtt
from tests.io.kafka import conftest as kafka_conftest
from tests.io.kafka.conftest import produce
from tests.io.test_mqtt import publish, source

paho, broker, topic = test_mqtt.paho, test_mqtt.broker, test_mqtt.topic
kafka_brokers, new_topic = kafka_conftest.kafka_brokers, kafka_conftest.new_topic

DEEP_LISTS = b'{"k": "a", "v": ' + b"[" * 900 + b"]" * 900 + b"}"  # ~1.8 KB, 901 levels
DEEP_OBJECTS = b'{"k": "a", "v": ' + b'{"x":' * 300 + b"1" + b"}" * 300 + b"}"  # ~1.8 KB, 301 levels
NOT_UTF8 = b'{"k": "a", "v": 1, "note": "\xff\xfe"}'
WIDE = json.dumps({"k": "a", **{f"f{i}": i for i in range(2_000)}}).encode()
POISON = [DEEP_LISTS, DEEP_OBJECTS, NOT_UTF8, WIDE]
REASONS = [
    "nested 901 levels deep, more than max_depth=16",
    "nested 301 levels deep, more than max_depth=16",
    "invalid JSON: not UTF-8 (byte 0xff at position 28)",
    "has more than max_fields=1000 distinct fields (nested ones included)",
]


def _good(i: int) -> bytes:
    return json.dumps({"k": "a", "v": i}).encode()


def _check(bad: list[tuple[int, str]], at: list[int]) -> None:
    assert [i for i, _ in bad] == at
    assert [reason.split(" (a record")[0] for _, reason in bad] == REASONS


# -- the decoder ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arrays", [False, True], ids=["objects", "arrays-allowed"])
def test_poison_messages_are_dead_letters_in_one_batch(arrays):
    decode = JsonDecoder(arrays=arrays)
    frame, index, bad = decode([_good(1), *POISON, _good(2)])
    assert frame.to_dicts() == [{"k": "a", "v": 1}, {"k": "a", "v": 2}]
    assert index == [0, 5]
    _check(bad, [1, 2, 3, 4])


def test_poison_messages_are_dead_letters_one_per_batch():
    decode = JsonDecoder()
    assert decode([_good(1)])[0].to_dicts() == [{"k": "a", "v": 1}]
    for message, reason in zip(POISON, REASONS, strict=True):
        frame, index, bad = decode([message])
        assert (frame.height, index) == (0, [])
        assert [r.split(" (a record")[0] for _, r in bad] == [reason]
    assert decode([_good(2)])[0].to_dicts() == [{"k": "a", "v": 2}]


def test_a_deep_array_of_objects_is_refused_before_it_is_split():
    decode = JsonDecoder(arrays=True)
    deep_item = b"[" + DEEP_OBJECTS + b"]"
    frame, index, bad = decode([b'[{"v": 1}, {"v": 2}]', deep_item, b'[{"v": "x"}]'])
    assert (frame["v"].to_list(), index) == ([1, 2], [0, 0])
    assert [(i, r.split(",")[0]) for i, r in bad] == [
        (1, "nested 302 levels deep"),
        (2, "item 0 of the array: field 'v' is \"x\" (a string)"),
    ]


def test_the_caps_are_configurable_and_exact():
    decode = JsonDecoder(max_depth=3, max_fields=4)
    at_the_caps = b'{"a": [[1]], "b": {"c": 1, "d": 2}}'  # 3 deep, 4 distinct fields (a, b, b.c, b.d)
    over_depth = b'{"a": [[[1]]]}'
    over_fields = b'{"a": [[1]], "b": {"c": 1, "d": 2, "e": 3}}'
    brackets_in_text = b'{"s": "[[[[{{{{", "t": "]]]]"}'  # no nesting at all
    frame, index, bad = decode([at_the_caps, over_depth, over_fields, brackets_in_text])
    assert index == [0, 3]
    assert frame.to_dicts()[1]["s"] == "[[[[{{{{"
    assert [(i, r.split(" (a record")[0]) for i, r in bad] == [
        (1, "nested 4 levels deep, more than max_depth=3"),
        (2, "has more than max_fields=4 distinct fields (nested ones included)"),
    ]
    # Items of a list share their path: a thousand objects of the same two fields are two fields.
    frame, _, bad = JsonDecoder(max_fields=3)([json.dumps({"xs": [{"p": i, "q": i} for i in range(1000)]}).encode()])
    assert (frame.height, bad) == (1, [])


def test_a_source_learns_at_most_max_fields_columns():
    decode = JsonDecoder(max_fields=5)
    frame, index, bad = decode([json.dumps({f"f{i}": i, f"g{i}": i}).encode() for i in range(4)])
    assert frame.columns == ["f0", "g0", "f1", "g1"]
    assert index == [0, 1]
    assert [(i, r.split(".")[0]) for i, r in bad] == [
        (2, "would add 2 fields to the 4 columns this source has, more than max_fields=5"),
        (3, "would add 2 fields to the 4 columns this source has, more than max_fields=5"),
    ]
    frame, _, bad = decode([b'{"f0": 7, "h": 1}', b'{"f1": 8}'])  # one more column is within the cap
    assert (frame.columns, frame.height, bad) == (["f0", "g0", "f1", "g1", "h"], 2, [])


def test_bad_caps_are_refused_with_the_value():
    with pytest.raises(rh.FlowError, match=r"Kafka: max_depth must be an integer from 1 to 256 \(got 0\)"):
        rh.io.Kafka("t", max_depth=0)
    with pytest.raises(rh.FlowError, match=r"Mqtt: max_fields must be a positive integer \(got -1\)"):
        rh.io.Mqtt("t", max_fields=-1)


def test_the_cheap_screen_finds_exactly_the_lines_over_the_caps():
    lines = [b'{"a": 1}', b'{"s": "' + b"[" * 50 + b'"}', b"[" * 20 + b"]" * 20, b'{"t": "\\"[[[[[[[[[[[[[[[[[[\\""}']
    assert oversized(lines, 16, 1000) == {2: oversized([lines[2]], 16, 1000)[0]}
    assert oversized(lines, 20, 1000) == {}


# -- through the sources ---------------------------------------------------------------------------


def _flow(src: rh.io.Source, stop_at: int | None = None, crash_at: int | None = None) -> tuple[rh.Flow, Any, Any]:
    flow = rh.Flow("poison")
    stream = flow.source(src, name="in")
    out, dead = collect(stream), collect(flow.dead_letters())

    def watch(row: dict[str, Any]) -> None:
        if row["v"] == crash_at:
            raise Crash  # after the poison messages, before any checkpoint covers them
        if row["v"] == stop_at:
            flow.stop()

    stream.sink(watch, name="watch")
    return flow, out, dead


def _check_dead(dead: Any, where: list[str]) -> None:
    assert [d["payload"] for d in dead.rows] == [m.decode("utf-8", errors="replace") for m in POISON]
    reasons = [d["reason"] for d in dead.rows]
    assert [r.endswith(f" ({w})") for r, w in zip(reasons, where, strict=True)] == [True] * len(POISON)
    assert [r.removesuffix(f" ({w})").split(" (a record")[0] for r, w in zip(reasons, where, strict=True)] == REASONS


def _run_three_times(make: Any, send: Any, ckpt: Path, where: list[str]) -> None:
    """Run to a checkpoint; send poison then good; crash; restart from the checkpoint."""
    first, out, _ = _flow(make(), stop_at=1)
    first.run(checkpoint_dir=ckpt, checkpoint_every="1h", duration="60s", on_start=lambda ex: send([_good(1)]))
    assert [r["v"] for r in out.rows] == [1]  # a graceful stop: checkpointed after message 1

    second, out, dead = _flow(make(), crash_at=2)
    with pytest.raises(Crash):  # not RecursionError: the flow went past the poison
        second.run(
            checkpoint_dir=ckpt, checkpoint_every="1h", duration="60s", on_start=lambda ex: send([*POISON, _good(2)])
        )
    _check_dead(dead, where)

    third, out, dead = _flow(make(), stop_at=2)
    third.run(checkpoint_dir=ckpt, checkpoint_every="1h", duration="60s")  # replays the poison, and goes on
    assert [r["v"] for r in out.rows] == [2]
    _check_dead(dead, where)
    assert third.metrics().dead_letters == len(POISON)


def test_kafka_poison_between_good_messages_and_a_restart_that_replays_it(kafka_brokers, new_topic, tmp_path):
    name = new_topic()

    def make() -> rh.io.Kafka:
        return rh.io.Kafka(name, brokers=kafka_brokers, partitions="all", metadata=False, max_batch=1)

    def send(messages: list[bytes]) -> None:
        produce(kafka_brokers, name, [(0, m) for m in messages])

    _run_three_times(make, send, tmp_path / "ckpt", [f"{name}[0]@{i}" for i in range(1, 5)])


@pytest.mark.parametrize("max_batch", [1, 100], ids=["batch-per-message", "batches"])
def test_mqtt_poison_between_good_messages_and_a_restart_that_replays_it(broker, topic, tmp_path, max_batch):
    client_id = test_mqtt._unique("rheon-poison")

    def make() -> rh.io.Mqtt:
        return source(broker, topic, client_id=client_id, max_batch=max_batch)

    def send(messages: list[bytes]) -> None:
        publish(broker, [(topic, m) for m in messages])

    _run_three_times(make, send, tmp_path / "ckpt", [f"topic {topic}"] * len(POISON))
