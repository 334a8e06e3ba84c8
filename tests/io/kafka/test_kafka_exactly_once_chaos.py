"""``rh.io.KafkaSink`` with checkpoints stays exactly-once when the broker connection or the process
dies at any moment of the commit protocol (issue 10, acceptance 3).

A child process (``kafka_flow_under_test.py``: a Kafka topic, a running count per key, a
transactional KafkaSink) reaches the broker (tansu) only through a :class:`KafkaFaultProxy`, which
reads the Kafka request framing and can cut every connection, closed or half-open, as a chosen
request passes: the ``EndTxn`` that commits a transaction (before it reaches the broker, or after,
losing the reply), a ``Produce`` inside the transaction, ``InitProducerId`` (the fencing at
recovery), ``AddPartitionsToTxn``, ``ListOffsets`` and ``Fetch``. Besides, the test cuts at random
moments and SIGKILLs the child at random moments after the commits it reports, and the child
SIGKILLs itself at points of the sink's commit protocol. The child is restarted with the same
checkpoint directory until it has read all its input; then a ``read_committed`` consumer must see
exactly the rows of an uninterrupted run: each input record's running count once, none missing.
A run that fails on a broker error (a cut it did not ride out) is restarted too; any other failure
fails the test. The counts of each kind of fault, run and recovery are printed (``-s``).

tansu 0.6 shows a ``read_committed`` consumer the rows of aborted and fenced transactions too,
and hides only those of open ones; so here it is recovery's read-back of the rows already visible
that keeps a row from being written twice (on Kafka, the rows of a fenced transaction are aborted
and written again).

First each dangerous moment on its own, in this process; then the chaos. The default chaos run is
short (600 records; >= 2 SIGKILLs and >= 2 cuts): its first two runs get faults placed
deliberately (the reply to an ``EndTxn`` lost, then a SIGKILL with a transaction's rows sent but
not committed; a cut as the restarted child fences, then a SIGKILL right after
``commit_transaction``), so that it surely restarts mid-transaction and after a commit whose
checkpoint did not finish; the runs after them fault at random. ``pytest -m slow`` runs the long
version (>= 50 SIGKILLs and >= 50 cuts, all random).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import rheon as rh
from rheon.io.base import BuildContext
from tests.io.kafka.conftest import produce, tansu
from tests.proxy import TcpProxy, _drop

ROOT = Path(__file__).resolve().parents[3]
LINE_TIMEOUT_S = 240  # a child that says nothing for this long is stuck
READ_TIMEOUT_S = 180

API_NAMES = {
    0: "Produce",
    1: "Fetch",
    2: "ListOffsets",
    3: "Metadata",
    22: "InitProducerId",
    24: "AddPartitionsToTxn",
    26: "EndTxn",
}
API = {name: key for key, name in API_NAMES.items()}


class KafkaFaultProxy(TcpProxy):
    """A :class:`~tests.proxy.TcpProxy` that follows the Kafka request framing from client to broker
    (a 4-byte size, then the request, whose first two bytes are its API key) and can cut every
    connection as a chosen request passes.

    ``arm({"EndTxn"}, nth=1, deliver=False)`` cuts before the ``nth`` next such request reaches the
    broker (and, with ``times=k``, at each of the ``k - 1`` such requests after it); ``deliver=True`` forwards it and drops the broker's reply (the broker acted on it, the
    client cannot know). ``half_open`` as in ``cut``: the broker's side of each connection stays
    open, until :meth:`release_held`. Clients may connect again after ``restore_after`` seconds.
    Each cut done is appended to ``fired``.
    """

    def __init__(self, listen_port: int, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.plan: dict[str, Any] | None = None
        self.plan_lock = threading.Lock()
        self.state_lock = threading.RLock()
        self.muted: set[tuple[socket.socket, socket.socket]] = set()  # pairs whose replies are dropped
        self.fired: list[str] = []
        super().__init__(listen_port, target_port, target_host)

    def arm(
        self, apis: set[str], *, nth: int = 1, deliver: bool, half_open: bool, restore_after: float, times: int = 1
    ) -> None:
        with self.plan_lock:
            self.plan = {
                "apis": {API[a] for a in apis},
                "left": nth,
                "deliver": deliver,
                "half_open": half_open,
                "restore_after": restore_after,
                "times": times,
            }

    def disarm(self) -> None:
        with self.plan_lock:
            self.plan = None

    @property
    def armed(self) -> bool:
        return self.plan is not None

    def _due(self, api: int) -> dict[str, Any] | None:
        with self.plan_lock:
            plan = self.plan
            if plan is None or api not in plan["apis"]:
                return None
            plan["left"] -= 1
            if plan["left"] > 0:
                return None
            plan["times"] -= 1
            self.plan = {**plan, "left": 1} if plan["times"] > 0 else None  # the next one too
            return plan

    def cut(self, *, half_open: bool = False) -> None:
        with self.state_lock:
            if self.open.is_set():
                super().cut(half_open=half_open)

    def restore(self) -> None:
        with self.state_lock:
            if not self.open.is_set() and not self.stopped:
                super().restore()

    def random_cut(self, seconds: float, *, half_open: bool) -> None:
        """Cut now (if open) and restore after ``seconds``."""
        with self.state_lock:
            if not self.open.is_set():
                return
            self.fired.append(f"random {'half-open' if half_open else 'closed'}")
            self.cut_for(seconds, half_open=half_open)

    def release_held(self) -> None:
        """The broker finally notices the connections a half-open cut left it."""
        with self.lock:
            _drop(*self.held)
            self.held.clear()

    def _pipe(self, source: socket.socket, target: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        to_broker = source is pair[0]
        pending = bytearray()
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if not to_broker:
                    if pair not in self.muted:
                        target.sendall(data)
                    continue
                pending += data
                while len(pending) >= 6:
                    size = int.from_bytes(pending[:4], "big")
                    if len(pending) < 4 + size:
                        break
                    frame = bytes(pending[: 4 + size])
                    del pending[: 4 + size]
                    api = int.from_bytes(frame[4:6], "big")
                    plan = self._due(api)
                    if plan is None:
                        target.sendall(frame)
                        continue
                    how = f"{'reply-lost' if plan['deliver'] else 'request-lost'} {'half-open' if plan['half_open'] else 'closed'}"  # fmt: skip
                    self.fired.append(f"{API_NAMES[api]} {how}")
                    if plan["deliver"]:
                        self.muted.add(pair)  # before the request goes out, so its reply surely is dropped
                        target.sendall(frame)
                    with self.state_lock:
                        super().cut(half_open=plan["half_open"])
                        timer = threading.Timer(plan["restore_after"], self.restore)
                        timer.daemon = True
                        timer.start()
                    return
        except OSError:
            pass
        finally:
            with self.lock:
                self.pairs.discard(pair)
                self.muted.discard(pair)
                _drop(*(s for s in (source, target) if s not in self.held))


@pytest.fixture(scope="module")
def broker_behind_fault_proxy() -> Iterator[tuple[str, KafkaFaultProxy]]:
    """tansu advertising the proxy's address, so that every client connection crosses the proxy
    (always tansu, even with RHEON_TEST_KAFKA set: the test needs a broker it can put behind it)."""
    with tansu(what="a Kafka broker for the chaos test", advertise_other_port=True) as (broker_port, proxy_port):
        proxy = KafkaFaultProxy(proxy_port, broker_port)
        yield f"127.0.0.1:{proxy_port}", proxy
        proxy.close()


def create_topics(brokers: str, *names: str, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": brokers})
    futures = admin.create_topics([NewTopic(n, num_partitions=partitions, replication_factor=1) for n in names])
    for future in futures.values():
        future.result(60)


def read_committed(brokers: str, topic: str) -> list[dict[str, Any]]:
    """Every message of ``topic`` as a read_committed consumer sees it: read until the position
    reaches the end offset of each partition (no fixed quiet time)."""
    import confluent_kafka

    c = confluent_kafka.Consumer(
        {
            "bootstrap.servers": brokers,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "isolation.level": "read_committed",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    try:
        partitions = sorted(c.list_topics(topic, timeout=60).topics[topic].partitions)
        tps = [confluent_kafka.TopicPartition(topic, p) for p in partitions]
        ends = {p: c.get_watermark_offsets(tp, timeout=60)[1] for p, tp in zip(partitions, tps, strict=True)}
        c.assign([confluent_kafka.TopicPartition(topic, p, 0) for p in partitions])
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + READ_TIMEOUT_S
        while True:
            for m in c.consume(1000, 0.2):
                if m.error() is None:
                    out.append(json.loads(m.value()))
            if all(tp.offset >= ends[tp.partition] for tp in c.position(tps) if ends[tp.partition] > 0):
                return out
            assert time.monotonic() < deadline, f"{topic}: still not read to its end offsets {ends} after {READ_TIMEOUT_S} s"  # fmt: skip
    finally:
        c.close()


def make_input(n: int) -> tuple[list[tuple[int, dict[str, Any]]], list[tuple[int, str, int]]]:
    """``n`` records over 7 keys, each key in one of 3 partitions; and the rows an uninterrupted run
    writes: each record with its key's running count."""
    messages, expected = [], []
    seen: Counter = Counter()
    for i in range(n):
        card = f"c{i % 7}"
        seen[card] += 1
        messages.append(((i % 7) % 3, {"id": i, "card": card, "n": 1}))
        expected.append((i, card, seen[card]))
    return messages, expected


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line.rstrip("\n"))
    out.put(None)


# -- each dangerous moment on its own ----------------------------------------------------------------


@pytest.mark.parametrize("half_open", [False, True], ids=["closed", "half_open"])
@pytest.mark.parametrize("lost", ["request", "reply"])
@pytest.mark.parametrize("kind", ["source", "sink"])
def test_a_connection_dropped_as_a_client_starts_is_retried_within_its_timeout(
    broker_behind_fault_proxy, kind, lost, half_open
):
    """librdkafka fails a metadata request at once (``_TRANSPORT``) when the connection drops with
    the request in flight. The Kafka source and sink asked for the cluster's metadata once when
    built, so a connection lost at that moment failed the flow at start, ``connect_timeout`` or not."""
    brokers, proxy = broker_behind_fault_proxy
    topic = f"start-{uuid.uuid4().hex[:8]}"
    create_topics(brokers, topic, partitions=2)
    try:
        for attempt in range(3):
            fired = len(proxy.fired)
            proxy.arm({"Metadata"}, deliver=lost == "reply", half_open=half_open, restore_after=0.2, times=3)
            ctx = BuildContext(flow=f"start_{uuid.uuid4().hex[:8]}", operator=kind, checkpointing=True)
            if kind == "source":
                logic: Any = rh.io.Kafka(topic, brokers=brokers, partitions="all", connect_timeout="60s").build(ctx)
                assert sorted(logic.splits()) == [f"{topic}:0", f"{topic}:1"]
            else:
                logic = rh.io.KafkaSink(topic, brokers=brokers).build(ctx)
                assert logic.partitions == [0, 1]
            logic.close()
            assert proxy.fired[fired:], f"attempt {attempt}: no connection was cut"
            proxy.disarm()
            assert proxy.open.wait(30)
    finally:
        proxy.disarm()
        proxy.release_held()


class _LeapingClock:
    """The ``time`` module, but each reading of the monotonic clock is 20 s after the one before."""

    def __init__(self) -> None:
        self.now = time.monotonic()

    def monotonic(self) -> float:
        self.now += 20
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def test_a_read_back_cut_short_does_not_write_visible_rows_again(broker_behind_fault_proxy, monkeypatch):
    """Recovery reads the topic back to find which rows of a checkpoint are already visible. When
    that read ran out of time (the broker unreachable for longer than its 30 s), it returned what
    it had seen so far, and recovery wrote every other row again: each row twice. (The clock
    leaps 20 s at each reading here, so the read runs out of time after one poll; a cut at its
    first fetch makes sure it has seen nothing by then.)"""
    import rheon.io.kafka.sink as sink_module

    brokers, proxy = broker_behind_fault_proxy
    topic = f"back-{uuid.uuid4().hex[:8]}"
    create_topics(brokers, topic, partitions=2)
    ctx = BuildContext(flow=f"readback_{uuid.uuid4().hex[:8]}", operator="out", checkpointing=True)
    rows = pl.DataFrame({"id": list(range(40)), "k": [i % 5 for i in range(40)]})
    first = rh.io.KafkaSink(topic, brokers=brokers, key="k").build(ctx)
    try:
        first.recover(None)
        first.write(rows)
        first.pre_commit(1)
        saved = first.state()
        first.commit(1)  # visible; the process dies before checkpoint 2
    finally:
        first.close()
    assert saved is not None
    second = rh.io.KafkaSink(topic, brokers=brokers, key="k", retries=1, retry_backoff="10ms").build(ctx)
    try:
        second.load_state(*saved)
        with monkeypatch.context() as patch:
            patch.setattr(sink_module, "time", _LeapingClock())
            proxy.arm({"Fetch"}, deliver=False, half_open=False, restore_after=1.0)
            with contextlib.suppress(rh.SinkError):  # cannot tell which rows are visible: fail, not guess
                second.recover(1)
    finally:
        proxy.disarm()
        second.close()
    assert proxy.open.wait(30)
    third = rh.io.KafkaSink(topic, brokers=brokers, key="k").build(ctx)  # restarted again, the broker back
    try:
        third.load_state(*saved)
        third.recover(1)
    finally:
        third.close()
    got = Counter(r["id"] for r in read_committed(brokers, topic))
    assert sum(c - 1 for c in got.values()) == 0, "rows written twice"
    assert sorted(got) == list(range(40))


# -- chaos ------------------------------------------------------------------------------------------


BROKER_ERRORS = ("rheon.core.errors.SinkError", "rheon.core.errors.SourceError", "cimpl.KafkaException")
FAULT_APIS = ["EndTxn"] * 4 + ["Produce"] * 2 + ["AddPartitionsToTxn", "ListOffsets", "Fetch"]
START_APIS = ["InitProducerId", "ListOffsets", "Fetch", "Metadata"]

# Deliberate faults for each of the first runs (and no random one): ``cut`` cuts the connections
# at the first such request, ``die_at`` has the child SIGKILL itself at the n-th time it reaches a
# point (kafka_flow_under_test.py), ``kill_at`` SIGKILLs it from here after that many commits with
# rows. Each run rides out its cut (else it fails on a broker error and is restarted) and is then
# killed, so that a short run reaches the counts it asks for with these alone.
PLAN: tuple[dict[str, Any], ...] = (
    # An EndTxn reaches the broker, which commits; its reply is lost, the connection half-open.
    # Later a SIGKILL with a transaction's rows all sent, not committed: restarted mid-transaction.
    {"cut": "EndTxn", "deliver": True, "half_open": True, "die_at": "in-transaction-sent:3"},
    # Cut as the restarted child fences; later a SIGKILL right after a transaction commits, before
    # its checkpoint's commit has finished: the next recovery finds its rows visible.
    {"cut": "InitProducerId", "deliver": False, "half_open": False, "die_at": "after-commit-transaction:3"},
)


def chaos(
    brokers: str,
    proxy: KafkaFaultProxy,
    tmp_path: Path,
    *,
    sigkills: int,
    cuts: int,
    n: int,
    seed: int,
    plan: tuple[dict[str, Any], ...] = (),
) -> Counter:
    """Run the child flow again and again until it has been SIGKILLed ``sigkills`` times and its
    connections cut ``cuts`` times; each time the child finishes, check its output topic (each row
    once, none missing) and start over with new topics. The first runs follow ``plan`` (see
    ``PLAN``), the others fault at random."""
    rnd = random.Random(seed)
    stats: Counter = Counter()
    messages, expected = make_input(n)
    ends = Counter(p for p, _ in messages)
    ends_arg = ",".join(f"{p}:{end}" for p, end in sorted(ends.items()))
    started = time.monotonic()
    while stats["sigkill"] < sigkills or stats["cut"] < cuts:
        stats["rounds"] += 1
        source_topic, sink_topic = f"in-{uuid.uuid4().hex[:8]}", f"out-{uuid.uuid4().hex[:8]}"
        flow_name = f"kchaos_{uuid.uuid4().hex[:8]}"
        create_topics(brokers, source_topic, sink_topic, partitions=3)
        produce(brokers, source_topic, messages)
        ckpt = tmp_path / f"ckpt-{stats['rounds']}"
        args = [brokers, source_topic, sink_topic, flow_name, str(ckpt), ends_arg]
        errors = 0
        for runs in range(1, 200):
            assert runs < 150, f"the child keeps dying before it finishes ({dict(stats)})"
            planned = plan[stats["runs"]] if stats["runs"] < len(plan) else None
            stats["runs"] += 1
            env = {
                **os.environ,
                "KAFKA_CHAOS_P": "0.02" if planned is None else "0",
                "KAFKA_CHAOS_SEED": str(rnd.randrange(10**9)),
                "PYTHONPATH": str(ROOT),
            }
            if planned is not None:
                if "die_at" in planned:
                    env["KAFKA_CHAOS_AT"] = planned["die_at"]
                if "cut" in planned:
                    proxy.arm({planned["cut"]}, deliver=planned["deliver"], half_open=planned["half_open"],
                              restore_after=0.2)  # fmt: skip
                kill_at = planned.get("kill_at")
            else:
                # 40% of the runs are SIGKILLed from here, after a random number of commits with rows.
                kill_at = rnd.randint(1, 8) if rnd.random() < 0.4 else None
                if runs > 1 and rnd.random() < 0.3:  # a cut while the restarted child fences and recovers
                    proxy.arm({rnd.choice(START_APIS)}, nth=rnd.randint(1, 3), deliver=rnd.random() < 0.5,
                              half_open=rnd.random() < 0.5, restore_after=rnd.uniform(0.05, 1.0))  # fmt: skip
            fired_before = len(proxy.fired)
            err_path = tmp_path / f"stderr-{stats['runs']}.txt"
            with err_path.open("w") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "tests.io.kafka.kafka_flow_under_test", *args],
                    cwd=ROOT,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    text=True,
                    env=env,
                )
                lines: queue.Queue = queue.Queue()
                threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
                commits, done = 0, None
                while True:
                    try:
                        line = lines.get(timeout=LINE_TIMEOUT_S)
                    except queue.Empty:
                        proc.kill()
                        pytest.fail(f"the child said nothing for {LINE_TIMEOUT_S} s: {err_path.read_text()[-3000:]}")
                    if line is None:
                        break
                    what = line.split()
                    if what[0] == "fault":
                        stats["sigkill"] += 1
                        stats[f"sigkill {what[2]}"] += 1
                    elif what[0] == "done":
                        done = line
                    elif what[0] == "read-back":
                        stats["recoveries"] += 1
                        stats["recoveries finding rows visible"] += what[2] != "visible=0"
                    elif what[0] == "recovered":
                        stats["recoveries writing rows"] += 1
                    elif what[0] == "committed" and what[2] != "rows=0":
                        commits += 1
                        if planned is None and not proxy.armed and proxy.open.is_set() and rnd.random() < 0.3:
                            if rnd.random() < 0.6:  # at a chosen request of the commit protocol
                                proxy.arm({rnd.choice(FAULT_APIS)}, nth=rnd.randint(1, 3),
                                          deliver=rnd.random() < 0.5, half_open=rnd.random() < 0.5,
                                          restore_after=rnd.uniform(0.05, 1.0))  # fmt: skip
                            else:  # at a random moment after this commit
                                time.sleep(rnd.uniform(0, 0.03))
                                proxy.random_cut(rnd.uniform(0.05, 1.0), half_open=rnd.random() < 0.5)
                        if kill_at is not None and commits >= kill_at:
                            time.sleep(rnd.uniform(0, 0.03))  # a random moment after the commit
                            proc.send_signal(signal.SIGKILL)
                            kill_at = None
                            stats["sigkill"] += 1
                            stats["sigkill from outside"] += 1
                proc.wait(timeout=LINE_TIMEOUT_S)
            proxy.disarm()
            for cut in proxy.fired[fired_before:]:
                stats["cut"] += 1
                stats[f"cut {cut}"] += 1
            if not proxy.open.wait(30):
                proxy.restore()
            if proc.returncode == -signal.SIGKILL:
                continue
            if proc.returncode != 0:
                # The run failed on a broker error (a cut it did not ride out): a restart recovers.
                stderr = err_path.read_text()
                failure = stderr.strip().splitlines()[-1] if stderr.strip() else ""
                assert failure.startswith(BROKER_ERRORS), stderr[-3000:]
                stats["runs failed"] += 1
                stats[f"failed: {failure[:120]}"] += 1
                errors += 1
                assert errors < 30, f"the child keeps failing: {stderr[-3000:]}"
                continue
            assert done is not None
            assert "dead_letters=0 " in done, done
            break
        proxy.release_held()
        rows = read_committed(brokers, sink_topic)
        got = Counter((r["id"], r["card"], r["n"]) for r in rows)
        stats["rows"] += len(rows)
        doubled = sum(c - 1 for c in got.values())
        missing = len(set(expected) - set(got))
        wrong = len(set(got) - set(expected))
        stats["duplicates"] += doubled
        stats["missing"] += missing
        stats["unexpected"] += wrong
        assert doubled == missing == wrong == 0, f"round {stats['rounds']}: {doubled} rows doubled, {missing} missing, {wrong} unexpected ({dict(stats)})"  # fmt: skip
    stats["seconds"] = round(time.monotonic() - started)
    print(f"kafka chaos: {dict(stats)}")
    return stats


def test_chaos_cuts_connections_and_kills_processes_and_no_row_is_lost_or_doubled(broker_behind_fault_proxy, tmp_path):
    brokers, proxy = broker_behind_fault_proxy
    stats = chaos(brokers, proxy, tmp_path, sigkills=2, cuts=2, n=600, seed=10, plan=PLAN)
    assert stats["duplicates"] == stats["missing"] == 0
    # The planned SIGKILL right after a commit leaves the restored checkpoint's rows visible (so
    # may the others: tansu shows a fenced transaction's rows): recovery must not write them again.
    assert stats["recoveries finding rows visible"] >= 1, dict(stats)


@pytest.mark.slow
def test_chaos_long_version(broker_behind_fault_proxy, tmp_path):
    brokers, proxy = broker_behind_fault_proxy
    stats = chaos(brokers, proxy, tmp_path, sigkills=50, cuts=50, n=1000, seed=20)  # issue 10: >= 50 of each
    assert stats["duplicates"] == stats["missing"] == 0
