"""Kafka going away mid-run and coming back: the flow rides it out, nothing lost or doubled."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest

import rheon as rh
from tests.io.kafka.conftest import produce, read_all, tansu
from tests.proxy import TcpProxy


@pytest.fixture
def broker_behind_proxy():
    """A broker that advertises the proxy's address, so every client connection crosses it.

    Always tansu (even with RHEON_TEST_KAFKA set): the test needs a broker it can put behind a proxy.
    """
    with tansu(what="a Kafka broker for the outage test", advertise_other_port=True) as (broker_port, proxy_port):
        proxy = TcpProxy(proxy_port, broker_port)
        yield f"127.0.0.1:{proxy_port}", proxy
        proxy.close()


def _progress(flow: rh.Flow) -> tuple[int, int]:
    """Records read and checkpoints taken so far by a running flow."""
    stats = flow.metrics()
    return (stats.records_in, stats.checkpoints) if stats is not None else (0, 0)


def wait_until(condition: Callable[[], bool], what: str = "the flow made progress", timeout: float = 120.0) -> None:
    """Wait for what the flow reports, however slow the machine."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not in {timeout:.0f} s: {what}"
        time.sleep(0.02)


RECONNECT = "reconnect service=Kafka sink=out "  # the sink's log line each time it waits for the broker


def _met_outage(flow: rh.Flow, taken: int, caplog: pytest.LogCaptureFixture) -> bool:
    """Whether a checkpoint has met the outage since ``taken`` checkpoints: one with rows to commit
    waits for the broker, in the sink's own retries (logged) or in its producer's (librdkafka logs
    the refused connection); one without any is taken without the broker."""
    if RECONNECT in caplog.text or _progress(flow)[1] >= taken + 2:  # + 2: one begun after the cut
        return True
    return any(
        r.name == "rheon.io.kafka.librdkafka" and "rdkafka#producer" in r.getMessage() and "refused" in r.getMessage()
        for r in list(caplog.records)
    )


def test_broker_outage_mid_run(broker_behind_proxy, tmp_path, caplog):
    from confluent_kafka.admin import AdminClient, NewTopic

    brokers, proxy = broker_behind_proxy
    admin = AdminClient({"bootstrap.servers": brokers})
    for future in admin.create_topics(
        [NewTopic(t, num_partitions=2, replication_factor=1) for t in ("in", "out")]
    ).values():
        future.result(10)
    produce(brokers, "in", [(i % 2, {"card": f"c{i % 3}", "n": 1, "ts": i}) for i in range(300)])

    flow = rh.Flow("outage")
    src = flow.source(rh.io.Kafka("in", brokers=brokers, partitions="all", metadata=False, max_batch=20), time="ts")
    src.key_by("card").reduce(lambda a, r: {**r, "n": a["n"] + 1}, name="count").sink(
        rh.io.KafkaSink("out", brokers=brokers, key="card"), name="out"
    )
    runner = threading.Thread(target=lambda: flow.run(checkpoint_dir=tmp_path, checkpoint_every="200ms"), daemon=True)
    with caplog.at_level("WARNING", logger="rheon.io"):
        runner.start()
        wait_until(lambda: _progress(flow) >= (1, 1))  # running: rows read and a checkpoint taken
        taken = _progress(flow)[1]
        proxy.cut()  # the broker goes away until a checkpoint has met the outage...
        wait_until(lambda: _met_outage(flow, taken, caplog), "a checkpoint during the outage")
        proxy.restore()  # ...and comes back, with more data
    produce(brokers, "in", [(i % 2, {"card": f"c{i % 3}", "n": 1, "ts": i}) for i in range(300, 450)])
    wait_until(lambda: _progress(flow)[0] >= 450)
    flow.stop()  # the last checkpoint commits what is left
    runner.join(60)
    assert not runner.is_alive()
    rows = read_all(brokers, "out")
    assert len(rows) == 450
    counts = Counter((r["card"], r["n"]) for r in rows)
    assert set(counts.values()) == {1}
    assert max(n for _, n in counts) == 150


def test_checkpoints_during_an_outage_wait_for_the_broker(broker_behind_proxy, tmp_path, caplog):
    """A local source keeps feeding a transactional Kafka sink while the broker is cut off: the
    checkpoints taken meanwhile retry with backoff instead of failing the run; every row is
    committed once."""
    from confluent_kafka.admin import AdminClient, NewTopic

    brokers, proxy = broker_behind_proxy
    admin = AdminClient({"bootstrap.servers": brokers})
    for future in admin.create_topics([NewTopic("gen", num_partitions=2, replication_factor=1)]).values():
        future.result(10)
    flow = rh.Flow("outage2")
    src = flow.source(rh.io.Generator(lambda i: {"i": i}, rate=200, limit=800))
    src.sink(rh.io.KafkaSink("gen", brokers=brokers, retry_backoff="100ms"), name="out")
    failure: list[BaseException] = []

    def run() -> None:
        try:
            flow.run(checkpoint_dir=tmp_path, checkpoint_every="200ms")
        except BaseException as exc:
            failure.append(exc)

    runner = threading.Thread(target=run, daemon=True)
    with caplog.at_level("WARNING", logger="rheon.io"):
        runner.start()
        wait_until(lambda: _progress(flow) >= (1, 1))  # running: rows read and a checkpoint taken
        proxy.cut()  # the outage lasts until a checkpoint has waited for the broker twice, with backoff
        wait_until(lambda: caplog.text.count(RECONNECT) >= 2, "the sink waiting for the broker twice")
        proxy.restore()
        runner.join(60)
    assert not runner.is_alive()
    assert failure == []
    # The sink counted each wait for the broker as a retry (the Kafka client's own retries come on top).
    assert flow._executor is not None
    retries = flow._executor.metrics.sinks["sink 'out'"].retries
    assert retries >= caplog.text.count(RECONNECT) >= 2
    rows = read_all(brokers, "gen")
    assert sorted(r["i"] for r in rows) == list(range(800))
