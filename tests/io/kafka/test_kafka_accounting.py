"""Every Kafka message is accounted for, whatever it holds (issue 10, acceptance 2): see
tests/runtime/test_accounting.py for the records and the checks."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rheon as rh
from rheon.testing import collect
from tests.io.kafka.conftest import produce, read_all
from tests.runtime.test_accounting import (
    ANCHOR,
    NO_SHRINK,
    _python,
    _run_and_account,
    hostile_messages,
    payloads,
    records,
)


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(rows=hostile_messages)
def test_kafka_source_accounts_for_every_message(kafka_brokers, new_topic, tmp_path_factory, rows) -> None:
    topic = new_topic(1)
    messages, sent = payloads(rows)
    produce(kafka_brokers, topic, [(0, m) for m in messages])
    source = rh.io.Kafka(topic, brokers=kafka_brokers, partitions=[0])  # assigned: no group join to wait for
    _run_and_account(source, sent, tmp_path_factory.mktemp("kafka"), feed=lambda: None)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(rows=st.lists(records(), max_size=25), batch_size=st.sampled_from([1, 1000]))
def test_kafka_sink_accounts_for_every_row(kafka_brokers, new_topic, tmp_path_factory, rows, batch_size) -> None:
    """Hostile records from `Records` into a transactional KafkaSink (checkpoints on): every row
    that reaches it is in the topic once, for read_committed readers, or a dead letter."""
    topic = new_topic(1)
    sent = [{**_python(row), "id": i} for i, row in enumerate([ANCHOR, *rows])]
    flow = rh.Flow("kafka-sink")
    flow.source(rh.io.Records(sent, batch_size=batch_size)).sink(
        rh.io.KafkaSink(topic, brokers=kafka_brokers), name="out"
    )
    dead = collect(flow.dead_letters())
    flow.run(checkpoint_dir=tmp_path_factory.mktemp("ckpt"), checkpoint_every="0ms")
    at_source = sum(1 for d in dead.rows if d["operator"].startswith("source "))
    at_sink = sum(1 for d in dead.rows if d["operator"] == "sink 'out'")
    ids = [row["id"] for row in read_all(kafka_brokers, topic, idle_s=0.5)]
    assert len(ids) == len(set(ids)), "rows written twice"
    assert len(ids) + at_sink + at_source == len(sent), (len(ids), at_sink, at_source)
