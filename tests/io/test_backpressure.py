"""A sink slower than the source: the source is held back and memory stays bounded.

The run loop reads a source's next batch only once the previous one has reached the sinks, so a
slow sink slows the sources down instead of piling records up in between. These tests measure
it: how much the source produced against what its rate allowed, and how much the process's
memory grew against what holding every produced record would take.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import rheon as rh
from rheon.io.records import frame_from_rows
from tests.services import reachable, unavailable

PAYLOAD = "x" * 1000  # about 1 KB a record, so buffering shows in megabytes
MB = 2**20


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class MemorySampler:
    """Samples the process's resident memory every few milliseconds, in a thread."""

    def __init__(self, every_s: float = 0.005) -> None:
        if not Path("/proc/self/statm").exists():
            pytest.skip("measuring resident memory needs Linux's /proc")
        self.samples: list[tuple[float, int]] = []
        self.every_s = every_s
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.done.is_set():
            self.samples.append((time.monotonic(), rss_bytes()))
            self.done.wait(self.every_s)

    def __enter__(self) -> MemorySampler:
        self.started = time.monotonic()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join()

    def growth_after(self, warmup_s: float) -> int:
        """Peak resident memory after the warm-up, less what it was when the warm-up ended."""
        later = [rss for t, rss in self.samples if t - self.started >= warmup_s]
        return max(later) - later[0]


@pytest.fixture
def python_allocations() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def test_a_slow_sink_holds_a_fast_generator_back_and_memory_stays_bounded():
    rate, seconds, warmup_s, max_batch, sink_sleep_s = 1_000_000, 3.0, 0.5, 2_000, 0.05

    def event(i: int) -> dict[str, Any]:
        return {"i": i, "payload": PAYLOAD}

    # What one record takes once it is in a frame: the unit of what buffering would cost.
    bytes_per_record = frame_from_rows([event(i) for i in range(10_000)], where="test").estimated_size() / 10_000
    written: list[int] = []

    def slow(frame: pl.DataFrame) -> None:  # a sink writing 2,000 records per 50 ms: 40,000 a second at most
        written.append(frame.height)
        time.sleep(sink_sleep_s)

    flow = rh.Flow("slow-sink")
    flow.source(rh.io.Generator(event, rate=rate, max_batch=max_batch), name="gen").sink(
        rh.io.Callback(slow, batch=True), name="slow"
    )
    with MemorySampler() as memory:
        started = time.monotonic()
        flow.run(duration=f"{seconds}s")
        elapsed = time.monotonic() - started
    allowed = rate * elapsed  # what the source would have produced unhindered
    produced = sum(written)
    buffered_all = produced * bytes_per_record  # memory to hold every record produced (a lower bound)
    growth = memory.growth_after(warmup_s)
    figures = (
        f"rate {rate}/s for {elapsed:.1f} s allows {allowed:,.0f} records; produced {produced:,}; "
        f"{bytes_per_record:.0f} B/record: holding the produced ones takes {buffered_all / MB:.0f} MB, "
        f"the allowed ones {allowed * bytes_per_record / MB:.0f} MB; resident memory grew {growth / MB:.1f} MB"
    )
    print(figures)
    assert max(written) <= max_batch
    assert produced < allowed / 10, figures  # held back: the sink's pace, not the source's rate
    assert produced > 20 * max_batch, figures  # it did run for the whole time
    assert growth < buffered_all / 10, figures  # bounded: a batch or two in flight, not a backlog


# Publishes from another process, so that only what the flow holds counts in this one's memory.
PUBLISHER = """
import json, sys
import paho.mqtt.client as mqtt
host, port, topic, n, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5]
client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
client.connect(host, port)
client.loop_start()
infos = [client.publish(topic, json.dumps({"i": i, "payload": payload}), qos=1) for i in range(n)]
for info in infos:
    info.wait_for_publish(30)
client.disconnect()
client.loop_stop()
"""


@pytest.fixture
def mqtt_broker() -> tuple[str, int]:
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        unavailable("paho-mqtt", "pip install -e '.[mqtt]' (paho-mqtt 2)")
    host, _, port = os.environ.get("RHEON_TEST_MQTT", "127.0.0.1:1883").partition(":")
    if not reachable(host, int(port)):
        unavailable(
            f"an MQTT broker at {host}:{port}", "apt-get install mosquitto && mosquitto -d, or set RHEON_TEST_MQTT"
        )
    return host, int(port)


@pytest.mark.usefixtures("python_allocations")
def test_a_slow_flow_holds_the_mqtt_broker_back_and_memory_stays_bounded(mqtt_broker):
    """Through a running flow: another process publishes 3,000 messages of 1 KB at once, faster
    than the flow takes them; the source's buffer stays at max_buffered, the rest waits at the
    broker, and this process's memory stays far below the messages' size.

    (Not many more: with its default max_queued_messages, Mosquitto 2.0 drops messages for a
    subscriber about 5,000 1 KB messages behind; see Mqtt's docstring.)
    """
    topic, n, max_buffered, max_batch = f"rheon-test/{uuid.uuid4().hex[:12]}", 3_000, 100, 25
    message_bytes = len(json.dumps({"i": n, "payload": PAYLOAD}))
    flow = rh.Flow("slow-mqtt")
    source = rh.io.Mqtt(
        topic, *mqtt_broker, client_id=f"rheon-bp-{uuid.uuid4().hex[:12]}", session_expiry="1m",
        max_buffered=max_buffered, max_batch=max_batch,
    )  # fmt: skip
    logic: list[Any] = []
    buffered: list[int] = []
    received = bytearray(n)  # allocated before measuring, like the rest of the test's own data
    count = [0]

    def slow(frame: pl.DataFrame) -> None:  # 25 messages per 10 ms at most: 2,500 a second
        buffered.append(len(logic[0].buffer))
        for i in frame["i"]:
            count[0] += not received[i]
            received[i] = 1
        if count[0] == n:
            flow.stop()
        time.sleep(0.01)

    flow.source(source, name="in").sink(rh.io.Callback(slow, batch=True))
    publisher: list[subprocess.Popen[bytes]] = []

    def start(executor: Any) -> None:
        logic.append(executor.sources[0].logic)
        args = [sys.executable, "-c", PUBLISHER, *map(str, mqtt_broker), topic, str(n), PAYLOAD]
        publisher.append(subprocess.Popen(args))

    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    started = time.monotonic()
    flow.run(duration="20s", on_start=start)
    elapsed = time.monotonic() - started
    _, peak = tracemalloc.get_traced_memory()
    assert publisher[0].wait(10) == 0
    all_messages = n * message_bytes
    figures = (
        f"{count[0]:,} of {n:,} messages of {message_bytes} B ({all_messages / MB:.1f} MB) in {len(buffered)} "
        f"batches over {elapsed:.1f} s; source buffer at most {max(buffered)} (max_buffered {max_buffered}); "
        f"Python allocations peaked {(peak - before) / MB:.2f} MB above the start"
    )
    print(figures)
    assert count[0] == n, figures
    assert max(buffered) <= max_buffered, figures
    assert max(buffered) >= max_buffered - max_batch, figures  # the flow really fell behind: the buffer filled
    assert peak - before < all_messages / 4, figures  # the broker kept the backlog, not this process
