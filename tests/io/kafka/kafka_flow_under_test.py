"""The flow the Kafka chaos test kills: a Kafka topic in, a running count per key (a keyed reduce,
checkpointed state), a transactional ``rh.io.KafkaSink`` out, a checkpoint every few milliseconds.

Run (from the repository root): ``python -m tests.io.kafka.kafka_flow_under_test BROKERS IN OUT FLOW
CKPT ENDS`` with ENDS the input topic's end offsets, ``0:500,1:480,...``. The flow stops (a clean stop,
with a last checkpoint) once its source has read up to them. It prints:

- ``committed <checkpoint> rows=<n>`` after each checkpoint's Kafka transaction committed (the
  parent kills it and cuts its connections relative to these lines);
- ``read-back <checkpoint> visible=<k>`` when recovery, reading the topic back, found ``k`` rows of
  a checkpoint whose commit it cannot be sure of already visible; and ``recovered <checkpoint>
  rows=<n> visible=<k>`` once it wrote the other ``n`` in a new transaction;
- ``done rows_in=... dead_letters=... restored_from=...`` at the end.

With ``KAFKA_CHAOS_P=p`` (and ``KAFKA_CHAOS_SEED``) the process SIGKILLs itself with probability p
at each point of the sink's commit protocol, printing ``fault sigkill <where>`` just before: before
and after ``pre_commit`` (``before-pre-commit``, ``after-pre-commit``); inside the transaction,
while its rows are being sent and once they are all delivered (``in-transaction-sending``,
``in-transaction-sent``); just before and just after ``commit_transaction``
(``before-commit-transaction``, ``after-commit-transaction``); after the whole commit
(``after-commit``); before recovery, after recovery has read back what is visible, and after it
wrote the rest (``before-recover``, ``after-read-back``, ``after-recover``). After a transaction
written by recovery commits, it SIGKILLs itself half of the time (``after-recovery-commit``):
checkpoint ``n`` still lists rows that are now visible, and the next recovery must not write them
again. With ``KAFKA_CHAOS_AT=<where>:<n>`` it SIGKILLs itself the ``n``-th time it reaches point
``<where>`` (a transaction's points are reached once per transaction, recovery's included), so
that the parent can place a crash at a chosen moment.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from collections import Counter
from typing import Any


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class _FaultyProducer:
    """A confluent-kafka Producer with fault points around ``commit_transaction``."""

    def __init__(self, real: Any, maybe: Any) -> None:
        self._real = real
        self._maybe = maybe

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def commit_transaction(self, *args: Any) -> Any:
        self._maybe("before-commit-transaction")
        result = self._real.commit_transaction(*args)
        self._maybe("after-commit-transaction")
        return result


def install_faults() -> None:
    from rheon.io.kafka.sink import _KafkaSinkLogic

    p = float(os.environ.get("KAFKA_CHAOS_P", "0"))
    rnd = random.Random(int(os.environ.get("KAFKA_CHAOS_SEED", "0")))
    planned_where, _, planned_nth = os.environ.get("KAFKA_CHAOS_AT", "").rpartition(":")
    reached: Counter[str] = Counter()

    def sigkill(where: str) -> None:
        say(f"fault sigkill {where}")
        os.kill(os.getpid(), signal.SIGKILL)

    def maybe(where: str) -> None:
        reached[where] += 1
        if (p > 0 and rnd.random() < p) or (where == planned_where and reached[where] == int(planned_nth)):
            sigkill(where)

    real_init = _KafkaSinkLogic.__init__

    def init(self: _KafkaSinkLogic, *args: Any) -> None:
        real_init(self, *args)
        self.producer = _FaultyProducer(self.producer, maybe)

    real_pre_commit = _KafkaSinkLogic.pre_commit

    def pre_commit(self: _KafkaSinkLogic, checkpoint_id: int) -> None:
        maybe("before-pre-commit")
        real_pre_commit(self, checkpoint_id)
        maybe("after-pre-commit")

    real_commit = _KafkaSinkLogic.commit

    def commit(self: _KafkaSinkLogic, checkpoint_id: int) -> None:
        rows = sum(frame.height for cid, (frame, _) in self.pending.items() if cid <= checkpoint_id)
        real_commit(self, checkpoint_id)
        maybe("after-commit")
        say(f"committed {checkpoint_id} rows={rows}")

    real_flush = _KafkaSinkLogic._flush
    in_recovery = [False]

    def flush(self: _KafkaSinkLogic) -> None:
        maybe("in-transaction-sending")  # some of the transaction's rows may have gone out
        real_flush(self)
        maybe("in-transaction-sent")

    real_transact = _KafkaSinkLogic._transact

    def transact(self: _KafkaSinkLogic, cid: int, frame: Any, skip: set[int]) -> None:
        real_transact(self, cid, frame, skip)
        if in_recovery[0]:
            say(f"recovered {cid} rows={frame.height - len(skip)} visible={len(skip)}")
            if p > 0 and rnd.random() < 0.5:
                sigkill("after-recovery-commit")

    real_recover = _KafkaSinkLogic.recover

    def recover(self: _KafkaSinkLogic, checkpoint_id: int | None) -> None:
        maybe("before-recover")
        in_recovery[0] = True
        try:
            real_recover(self, checkpoint_id)
        finally:
            in_recovery[0] = False
        maybe("after-recover")

    real_visible = _KafkaSinkLogic._already_visible

    def already_visible(self: _KafkaSinkLogic, cid: int, ends: dict[int, int]) -> set[int]:
        seen = real_visible(self, cid, ends)
        say(f"read-back {cid} visible={len(seen)}")
        maybe("after-read-back")
        return seen

    _KafkaSinkLogic.__init__ = init  # type: ignore[method-assign]
    _KafkaSinkLogic.pre_commit = pre_commit  # type: ignore[method-assign]
    _KafkaSinkLogic.commit = commit  # type: ignore[method-assign]
    _KafkaSinkLogic._flush = flush  # type: ignore[method-assign]
    _KafkaSinkLogic._transact = transact  # type: ignore[method-assign]
    _KafkaSinkLogic.recover = recover  # type: ignore[method-assign]
    _KafkaSinkLogic._already_visible = already_visible  # type: ignore[method-assign]


def stop_at_end(flow: Any, topic: str, ends: dict[int, int]) -> None:
    """Stop the flow (cleanly: a last checkpoint) once its source has read up to ``ends``."""
    from rheon.io.kafka.source import _KafkaLogic

    real_next = _KafkaLogic.next_batch
    wanted = {f"{topic}:{p}": end for p, end in ends.items()}

    def next_batch(self: _KafkaLogic) -> Any:
        batch = real_next(self)
        if all(self.positions.get(split, 0) >= end for split, end in wanted.items()):
            flow.stop()
        return batch

    _KafkaLogic.next_batch = next_batch  # type: ignore[method-assign]


def main() -> None:
    brokers, source_topic, sink_topic, flow_name, ckpt, ends_arg = sys.argv[1:7]
    import rheon as rh

    ends = {int(p): int(end) for p, end in (item.split(":") for item in ends_arg.split(","))}
    install_faults()
    flow = rh.Flow(flow_name)
    source = rh.io.Kafka(
        source_topic, brokers=brokers, group=flow_name, partitions="all", metadata=False, max_batch=20,
        connect_timeout="60s",
    )  # fmt: skip
    counts = flow.source(source, name="in").key_by("card").reduce(lambda a, r: {**r, "n": a["n"] + 1}, name="count")
    counts.sink(rh.io.KafkaSink(sink_topic, brokers=brokers, key="card", retries=20), name="out")
    stop_at_end(flow, source_topic, ends)
    say("ready")
    flow.run(checkpoint_dir=ckpt, checkpoint_every=os.environ.get("KAFKA_CHAOS_EVERY", "20ms"))
    stats = flow.metrics()
    assert stats is not None
    say(f"done rows_in={stats.records_in} dead_letters={stats.dead_letters} restored_from={stats.restored_from}")


if __name__ == "__main__":
    main()
