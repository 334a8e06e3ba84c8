"""MQTT source throughput: small JSON events through Mosquitto into ``Mqtt → filter → Collect``.

    python benchmarks/mqtt.py                           # 200k events, QoS 1, broker on 127.0.0.1:1883
    python benchmarks/mqtt.py --events 50000 --qos 0 --linger 20ms

The publisher is a separate process that writes pre-encoded MQTT 3.1.1 PUBLISH packets straight
to a socket (paho's Python publisher tops out near the rate being measured, so it would measure
itself). It publishes with the chosen QoS (default 1: the broker acknowledges each message) as
fast as it can, but stays at most ``--window`` events ahead of the flow: MQTT has no
backpressure from subscriber to publisher, and Mosquitto drops QoS 1 messages for a subscriber
that falls too far behind (measured with Mosquitto 2.0.11: from ~40k pending small messages,
although rh.io.Mqtt allows 65,535 in flight). Lost messages, if any, are reported.

The flow runs in this process: ``Mqtt(qos) → filter(temp >= 25) → Collect`` with no checkpoints
(QoS 1 messages are acknowledged after each batch). The figure is end to end: events / (time the
last record was processed - time of the first publish).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import socket
import sys
import threading
import time
import uuid
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

import rheon as rh  # noqa: E402
from rheon.io.mqtt import Mqtt  # noqa: E402

CHUNK = 2_000  # events per socket write


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    data = s.encode()
    return len(data).to_bytes(2, "big") + data


def _publish_packet(topic: bytes, payload: bytes, qos: int, packet_id: int) -> bytes:
    body = topic + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return bytes([0x30 | (qos << 1)]) + _varint(len(body)) + body


def event(i: int) -> bytes:
    return json.dumps({"device": f"d{i % 100}", "temp": 20.0 + i % 10, "ts": i}).encode()


def publish(
    host: str, port: int, topic: str, n: int, qos: int, window: int, processed: Synchronized[int], times: Queue[float]
) -> None:
    """Publish ``n`` events; put the wall-clock times of the first write and of the last PUBACK."""
    name = _string(topic)
    chunks = [
        b"".join(_publish_packet(name, event(i), qos, i % 65_535 + 1) for i in range(start, min(start + CHUNK, n)))
        for start in range(0, n, CHUNK)
    ]
    connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + _string(f"bench-pub-{uuid.uuid4().hex[:8]}")
    sock = socket.create_connection((host, port))
    sock.sendall(b"\x10" + _varint(len(connect)) + connect)
    assert sock.recv(4)[:2] == b"\x20\x02", "no CONNACK from the broker"
    received = [0]

    def read_pubacks() -> None:  # 4 bytes each
        while received[0] < 4 * n:
            data = sock.recv(65_536)
            if not data:
                return
            received[0] += len(data)

    reader = threading.Thread(target=read_pubacks, daemon=True)
    if qos:
        reader.start()
    times.put(time.time())
    for k, chunk in enumerate(chunks):
        while k * CHUNK - processed.value > window:
            time.sleep(0.0005)
        sock.sendall(chunk)
    if qos:
        reader.join(60)
    times.put(time.time())
    sock.sendall(b"\xe0\x00")  # DISCONNECT
    sock.close()


def run(host: str, port: int, n: int, qos: int, window: int, linger: str, idle_s: float) -> dict[str, Any]:
    topic = f"rheon-bench/{uuid.uuid4().hex[:10]}"
    flow = rh.Flow("mqtt-bench")
    client_id = f"rheon-bench-{uuid.uuid4().hex[:8]}"
    src = flow.source(
        Mqtt(topic, host, port, qos, client_id=client_id, session_expiry="1m", linger=linger), name="mqtt"
    )
    out = rh.io.Collect()
    src.filter(rh.col("temp") >= 25.0).sink(out)
    ctx = multiprocessing.get_context("spawn")
    processed = ctx.Value("q", 0, lock=False)
    times: Queue[float] = ctx.Queue()
    last = [time.time()]

    def count(frame: pl.DataFrame) -> None:  # runs after the filter and Collect have had the batch
        processed.value += frame.height
        last[0] = time.time()
        if processed.value >= n:
            flow.stop()

    src.sink(rh.io.Callback(count, batch=True))
    publisher = ctx.Process(target=publish, args=(host, port, topic, n, qos, window, processed, times))

    def watchdog() -> None:  # give up once nothing has arrived for idle_s
        while processed.value < n and time.time() - last[0] < idle_s:
            time.sleep(0.1)
        flow.stop()

    def start(executor: Any) -> None:
        publisher.start()
        last[0] = time.time() + 5  # the publisher process starts and encodes its packets first
        threading.Thread(target=watchdog, daemon=True).start()

    flow.run(on_start=start, handle_signals=False)
    publisher.join(60)
    first, done = times.get(timeout=10), times.get(timeout=10)
    metrics = flow.metrics()
    assert metrics is not None
    return {
        "received": processed.value,
        "kept": len(out),
        "publish_s": done - first,
        "end_to_end_s": last[0] - first,
        "batches": metrics.operators[0]["batches"],
        "p50_ms": metrics.latency_p50_ms or 0.0,
        "p99_ms": metrics.latency_p99_ms or 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=1883)
    parser.add_argument("--window", type=int, default=20_000, help="most events published ahead of the flow")
    parser.add_argument("--linger", default="0ms", help="Mqtt(linger=...)")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds without data before giving up")
    a = parser.parse_args()
    r = run(a.host, a.port, a.events, a.qos, a.window, a.linger, a.idle)
    n, got = a.events, r["received"]
    print(f"command: python benchmarks/mqtt.py --events {n} --qos {a.qos} --window {a.window} --linger {a.linger}")
    print(f"flow: Mqtt(qos={a.qos}, linger={a.linger!r}) -> filter(temp >= 25) -> Collect; Mosquitto {a.host}:{a.port}")
    print(f"publisher:  {n:,} events, QoS {a.qos}, written in {r['publish_s']:.2f} s (at most {a.window:,} ahead)")
    print(f"received:   {got:,} ({n - got:,} lost), {r['batches']:,} batches, kept by the filter {r['kept']:,}")
    rate = got / r["end_to_end_s"] if r["end_to_end_s"] > 0 else float("nan")
    print(f"end to end: {got:,} in {r['end_to_end_s']:.2f} s = {rate:,.0f} events/s (first publish -> last processed)")
    print(f"latency, arrival at the client -> sink: p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms")


if __name__ == "__main__":
    main()
