"""Every Kafka message is accounted for, whatever it holds (issue 10, acceptance 2): see
tests/runtime/test_accounting.py for the records and the checks."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

import rheon as rh
from tests.io.kafka.conftest import produce
from tests.runtime.test_accounting import NO_SHRINK, _run_and_account, hostile_messages, payloads


@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), phases=NO_SHRINK)
@given(rows=hostile_messages)
def test_kafka_source_accounts_for_every_message(kafka_brokers, new_topic, tmp_path_factory, rows) -> None:
    topic = new_topic(1)
    messages, sent = payloads(rows)
    produce(kafka_brokers, topic, [(0, m) for m in messages])
    source = rh.io.Kafka(topic, brokers=kafka_brokers, partitions=[0])  # assigned: no group join to wait for
    _run_and_account(source, sent, tmp_path_factory.mktemp("kafka"), feed=lambda: None)
