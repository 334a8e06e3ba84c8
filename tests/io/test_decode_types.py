"""JSON values whose type drifts are dead letters, not a crash or a silent change (rheon.io.kafka.codec).

The codec is tested on its own, then through the Kafka source (tansu) and the MQTT source
(Mosquitto), which share it: the good records still reach a window's sum, the others are dead
letters with the reason and the raw payload, counted in the metrics.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

import rheon as rh
from rheon.io.kafka.codec import Decoder, decoder_for
from rheon.testing import collect
from tests.io import test_mqtt
from tests.io.kafka import conftest as kafka_conftest
from tests.io.kafka.conftest import produce
from tests.io.test_mqtt import publish, source, stop_after

# The brokers' fixtures, shared with the sources' own tests.
paho, broker, topic = test_mqtt.paho, test_mqtt.broker, test_mqtt.topic
kafka_brokers, new_topic = kafka_conftest.kafka_brokers, kafka_conftest.new_topic


def _json(schema: dict[str, Any] | None = None) -> Decoder:
    """The decoder a source with ``format="json"`` uses (it keeps what it learns between batches)."""
    return decoder_for("json", None if schema is None else pl.Schema(schema), "source 'in'")


def _decode(decoder: Decoder, *records: Any) -> tuple[pl.DataFrame, list[int], list[tuple[int, str]]]:
    """Decode one batch; dicts and lists are sent as JSON, bytes as they are."""
    return decoder([r if isinstance(r, bytes) else json.dumps(r).encode() for r in records])


# -- the codec ------------------------------------------------------------------------------------


def test_a_list_where_the_field_was_a_number_is_a_dead_letter_not_a_crash():
    frame, index, bad = _decode(_json(), {"v": 3}, {"v": [1]}, {"v": 4})
    assert frame.schema == pl.Schema({"v": pl.Int64})
    assert frame["v"].to_list() == [3, 4]
    assert index == [0, 2]
    assert [i for i, _ in bad] == [1]
    assert bad[0][1].startswith("field 'v' is [1] (a list), but this source has read it as Int64 so far")
    assert bad[0][1].endswith("Try schema= on the source to set the types")


def test_a_string_among_numbers_does_not_turn_the_column_into_text():
    frame, index, bad = _decode(_json(), {"v": 3}, {"v": "five"}, {"v": 1.5}, {"v": None})
    assert frame.schema == pl.Schema({"v": pl.Float64})  # ints and floats make a float
    assert frame["v"].to_list() == [3.0, 1.5, None]
    assert index == [0, 2, 3]
    assert bad == [(1, 'field \'v\' is "five" (a string), but this source has read it as Float64 so far '
                       "(a field keeps the type it first had). Try schema= on the source to set the types")]  # fmt: skip


def test_the_first_value_decides_even_when_it_is_text():
    frame, _, bad = _decode(_json(), {"id": "a7"}, {"id": 7}, {"id": True})
    assert frame["id"].to_list() == ["a7"]
    assert [(i, reason.split(", but")[0]) for i, reason in bad] == [
        (1, "field 'id' is 7 (an integer)"),
        (2, "field 'id' is true (a boolean)"),
    ]


def test_types_stay_as_the_source_first_saw_them_across_batches():
    decode = _json()
    first, _, _ = _decode(decode, {"v": 1, "s": {"a": 1}, "tags": []})
    assert first.schema == pl.Schema({"v": pl.Int64, "s": pl.Struct({"a": pl.Int64}), "tags": pl.List(pl.Null)})
    # Alone in its batch, "x" would have made the column text, and 2.5 a float.
    frame, index, bad = _decode(
        decode, {"v": "x"}, {"v": 2}, {"v": 2.5}, {"s": {"a": 1, "b": 2}}, {"tags": ["t"], "new": True}
    )
    assert frame.schema == pl.Schema(
        {"v": pl.Int64, "s": pl.Struct({"a": pl.Int64}), "tags": pl.List(pl.String), "new": pl.Boolean}
    )
    assert frame.to_dicts() == [
        {"v": 2, "s": None, "tags": None, "new": None},
        {"v": None, "s": None, "tags": ["t"], "new": True},
    ]
    assert index == [1, 4]
    assert [(i, reason.split(", but")[0]) for i, reason in bad] == [
        (0, "field 'v' is \"x\" (a string)"),
        (2, "field 'v' is 2.5 (a float)"),
        (3, 'field \'s\' is {"a": 1, "b": 2} (an object)'),  # a key its struct did not have
    ]
    # A batch that fits goes through as it is, with the fields it lacks as null columns.
    frame, index, bad = _decode(decode, {"v": 5})
    assert (frame.to_dicts(), index, bad) == ([{"v": 5, "s": None, "tags": None, "new": None}], [0], [])


def test_a_schema_refuses_values_that_would_be_changed_to_fit():
    schema = pl.Schema({"n": pl.Int64, "x": pl.Float64, "s": pl.String, "small": pl.Int8})
    frame, index, bad = _decode(
        _json(schema),
        {"n": 1, "x": 2, "s": "a", "small": 3},  # an int for a Float64 is fine
        {"n": 1.7},
        {"n": "3"},
        {"x": "x"},
        {"s": 3},
        {"small": 300},
        {"n": 4, "other": [1]},  # fields the schema does not name are left out
    )
    assert frame.schema == schema
    assert frame.to_dicts() == [
        {"n": 1, "x": 2.0, "s": "a", "small": 3},
        {"n": 4, "x": None, "s": None, "small": None},
    ]
    assert index == [0, 6]
    assert bad == [
        (1, "does not fit the schema: field 'n' is 1.7 (a float), expected Int64"),
        (2, "does not fit the schema: field 'n' is \"3\" (a string), expected Int64"),
        (3, "does not fit the schema: field 'x' is \"x\" (a string), expected Float64"),
        (4, "does not fit the schema: field 's' is 3 (an integer), expected String"),
        (5, "does not fit the schema: field 'small' is 300 (an integer), expected Int8"),
    ]


def test_a_message_that_does_not_fit_does_not_shape_the_types():
    decode = _json()
    frame, index, bad = _decode(decode, {"v": 1, "w": 5}, {"v": "x", "w": 2.5, "junk": [1]})
    assert (frame.to_dicts(), index, [i for i, _ in bad]) == ([{"v": 1, "w": 5}], [0], [1])
    assert decode.seen == {"v": pl.Int64(), "w": pl.Int64()}  # not Float64 from 2.5, no "junk" column


def test_nan_is_not_json():
    frame, index, bad = _decode(_json(), {"v": 1.0}, b'{"v": NaN}')
    assert (frame["v"].to_list(), index) == ([1.0], [0])
    assert bad == [(1, "invalid JSON: NaN is not a JSON number")]


# -- through the sources ----------------------------------------------------------------------------

_DRIFT = [
    {"k": "a", "v": 3, "ts": 0},
    {"k": "a", "v": [1], "ts": 100},
    {"k": "a", "v": "five", "ts": 200},
    {"k": "a", "v": 4, "ts": 300},
    {"k": "a", "v": 5, "ts": 1500},
]
_TYPED = [{"k": "a", "v": 5, "ts": 0}, {"k": "a", "v": 1.7, "ts": 100}, {"k": "a", "v": 2, "ts": 1500}]
_SCHEMA = {"k": pl.String, "v": pl.Int64, "ts": pl.Int64}


def _sums(flow: rh.Flow, src: Any) -> tuple[Any, Any]:
    sums = collect(src.key_by("k").window(rh.tumbling("1s")).agg(total=rh.sum("v"), n=rh.count()))
    return sums, collect(flow.dead_letters())


@pytest.mark.parametrize("max_batch", [1, 1000], ids=["batch-per-message", "one-batch"])
def test_mqtt_type_drift_goes_to_dead_letters_and_the_sum_goes_on(broker, topic, max_batch):
    flow = rh.Flow("drift")
    src = flow.source(source(broker, topic, max_batch=max_batch), time="ts", name="in")
    sums, dead = _sums(flow, src)
    src.sink(stop_after(flow, 3))
    flow.run(duration="10s", drain=True, on_start=lambda ex: publish(broker, [(topic, e) for e in _DRIFT]))
    assert [(r["window_start"], r["total"], r["n"]) for r in sums.rows] == [(0, 7, 2), (1000, 5, 1)]
    assert [(d["operator"], d["payload"]) for d in dead.rows] == [
        ("source 'in'", json.dumps(_DRIFT[1])),
        ("source 'in'", json.dumps(_DRIFT[2])),
    ]
    assert [d["reason"].split(", but")[0] for d in dead.rows] == [
        "field 'v' is [1] (a list)",
        "field 'v' is \"five\" (a string)",
    ]
    assert all(d["reason"].endswith(f"(topic {topic})") for d in dead.rows)
    assert flow.metrics().dead_letters == 2


def test_mqtt_schema_makes_a_float_for_an_int_a_dead_letter(broker, topic):
    flow = rh.Flow("typed")
    src = flow.source(source(broker, topic, schema=_SCHEMA), time="ts", name="in")
    sums, dead = _sums(flow, src)
    src.sink(stop_after(flow, 2))
    flow.run(duration="10s", drain=True, on_start=lambda ex: publish(broker, [(topic, e) for e in _TYPED]))
    assert [(r["window_start"], r["total"]) for r in sums.rows] == [(0, 5), (1000, 2)]  # not 5 + 1
    assert [(d["operator"], d["reason"], d["payload"]) for d in dead.rows] == [
        (
            "source 'in'",
            f"does not fit the schema: field 'v' is 1.7 (a float), expected Int64 (topic {topic})",
            json.dumps(_TYPED[1]),
        )
    ]
    assert flow.metrics().dead_letters == 1


@pytest.mark.parametrize("max_batch", [1, 1000], ids=["batch-per-message", "one-batch"])
def test_kafka_type_drift_goes_to_dead_letters_and_the_sum_goes_on(kafka_brokers, new_topic, max_batch):
    name = new_topic()
    produce(kafka_brokers, name, [(0, e) for e in _DRIFT])
    flow = rh.Flow("drift")
    kafka = rh.io.Kafka(name, brokers=kafka_brokers, partitions="all", metadata=False, max_batch=max_batch)
    src = flow.source(kafka, time="ts", name="in")
    sums, dead = _sums(flow, src)
    flow.run(duration="2s", drain=True)
    assert [(r["window_start"], r["total"], r["n"]) for r in sums.rows] == [(0, 7, 2), (1000, 5, 1)]
    assert [(d["operator"], d["payload"]) for d in dead.rows] == [
        ("source 'in'", json.dumps(_DRIFT[1])),
        ("source 'in'", json.dumps(_DRIFT[2])),
    ]
    assert [d["reason"] for d in dead.rows] == [
        "field 'v' is [1] (a list), but this source has read it as Int64 so far (a field keeps the type it "
        f"first had). Try schema= on the source to set the types ({name}[0]@1)",
        "field 'v' is \"five\" (a string), but this source has read it as Int64 so far (a field keeps the type "
        f"it first had). Try schema= on the source to set the types ({name}[0]@2)",
    ]
    assert flow.metrics().dead_letters == 2


def test_kafka_schema_makes_a_float_for_an_int_a_dead_letter(kafka_brokers, new_topic):
    name = new_topic()
    produce(kafka_brokers, name, [(0, e) for e in _TYPED])
    flow = rh.Flow("typed")
    kafka = rh.io.Kafka(name, brokers=kafka_brokers, partitions="all", metadata=False, schema=_SCHEMA)
    src = flow.source(kafka, time="ts", name="in")
    sums, dead = _sums(flow, src)
    flow.run(duration="2s", drain=True)
    assert [(r["window_start"], r["total"]) for r in sums.rows] == [(0, 5), (1000, 2)]  # not 5 + 1
    assert [(d["operator"], d["reason"], d["payload"]) for d in dead.rows] == [
        (
            "source 'in'",
            f"does not fit the schema: field 'v' is 1.7 (a float), expected Int64 ({name}[0]@1)",
            json.dumps(_TYPED[1]),
        )
    ]
    assert flow.metrics().dead_letters == 1


# A good record, then a missing and a null time; raw bytes with odd spacing, so that a payload
# re-serialized from the decoded row would not match.
_BAD_TIMES = [b'{"k":"a","v":3,"ts":5}', b'{"k": "a",  "v": 1}', b'{"k": "a", "v": 2,  "ts": null}']


def _bad_time_dead_letters(flow: rh.Flow, src: Any) -> tuple[Any, Any]:
    good = collect(src.window(rh.tumbling("1s")).agg(total=rh.sum("v")))
    return good, collect(flow.dead_letters())


def _check_bad_times(good: Any, dead: Any, flow: rh.Flow) -> None:
    assert [r["total"] for r in good.rows] == [3]
    assert [d["payload"] for d in dead.rows] == [p.decode() for p in _BAD_TIMES[1:]]
    assert all(d["reason"].startswith("record has no event time (column 'ts' is") for d in dead.rows)
    assert flow.metrics().dead_letters == 2


def test_mqtt_records_with_a_bad_time_are_dead_letters_with_the_payload_as_sent(broker, topic):
    flow = rh.Flow("times")
    src = flow.source(source(broker, topic, max_batch=1), time="ts", name="in")
    good, dead = _bad_time_dead_letters(flow, src)
    flow.dead_letters().sink(stop_after(flow, 2))
    flow.run(duration="10s", drain=True, on_start=lambda ex: publish(broker, [(topic, p) for p in _BAD_TIMES]))
    _check_bad_times(good, dead, flow)


def test_kafka_records_with_a_bad_time_are_dead_letters_with_the_payload_as_sent(kafka_brokers, new_topic):
    name = new_topic()
    produce(kafka_brokers, name, [(0, p) for p in _BAD_TIMES])
    flow = rh.Flow("times")
    kafka = rh.io.Kafka(name, brokers=kafka_brokers, partitions="all", max_batch=1)
    good, dead = _bad_time_dead_letters(flow, flow.source(kafka, time="ts", name="in"))
    flow.run(duration="2s", drain=True)
    _check_bad_times(good, dead, flow)


def test_kafka_keeps_the_types_it_learned_across_a_restart(kafka_brokers, new_topic, tmp_path):
    """Without them in the checkpoint, "x" would be the first value the restarted source saw: text."""
    name, ckpt = new_topic(), tmp_path / "ckpt"
    runs = []
    for messages, last in (([{"v": 1}], 1), ([{"v": "x"}, {"v": 2}], 2)):
        produce(kafka_brokers, name, [(0, m) for m in messages])
        flow = rh.Flow("learned")
        src = flow.source(rh.io.Kafka(name, brokers=kafka_brokers, partitions="all", metadata=False, max_batch=1))
        out, dead = collect(src), collect(flow.dead_letters())
        src.sink(lambda row, flow=flow, last=last: flow.stop() if row["v"] == last else None)
        flow.run(checkpoint_dir=ckpt, checkpoint_every="1h", duration="60s")
        runs.append((out.rows, [d["payload"] for d in dead.rows]))
    assert runs == [([{"v": 1}], []), ([{"v": 2}], ['{"v": "x"}'])]


def test_mqtt_keeps_the_types_it_learned_across_a_restart(broker, topic, tmp_path):
    client_id, ckpt = f"rheon-types-{topic[-12:]}", tmp_path / "ckpt"
    runs = []
    for messages, last in (([{"v": 1}], 1), ([{"v": "x"}, {"v": 2}], 2)):
        flow = rh.Flow("learned")
        src = flow.source(source(broker, topic, client_id=client_id, max_batch=1))
        out, dead = collect(src), collect(flow.dead_letters())
        src.sink(lambda row, flow=flow, last=last: flow.stop() if row["v"] == last else None)
        flow.run(
            checkpoint_dir=ckpt, checkpoint_every="1h", duration="60s",
            on_start=lambda ex, m=messages: publish(broker, [(topic, e) for e in m]),
        )  # fmt: skip
        runs.append(([r["v"] for r in out.rows], [d["payload"] for d in dead.rows]))
    assert runs == [([1], []), ([2], ['{"v": "x"}'])]
