"""Kafka source and sink (``pip install 'rheon[kafka]'``, confluent-kafka)."""

from rheon.io.kafka.sink import KafkaSink
from rheon.io.kafka.source import Kafka

__all__ = ["Kafka", "KafkaSink"]
