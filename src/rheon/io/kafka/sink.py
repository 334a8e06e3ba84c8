"""``rh.io.KafkaSink``: write rows to a Kafka topic, exactly once with checkpoints.

With checkpoints, the rows of each checkpoint interval are staged (in the checkpoint itself, with
the partitions' end offsets at that moment) and written in one Kafka transaction when the
checkpoint completes. Each row carries the headers ``rheon-txn`` (``<transactional id>:<n>``)
and ``rheon-seq``. Rows are encoded as each batch is written, and staged as messages (key and
value bytes): batches whose columns differ in type are never concatenated, so no value is
converted to fit another batch's type and a checkpoint never fails on them.

Recovering from a crash in the middle of a commit: the restarted producer takes over the
transactional id, which fences the old one. Then the sink reads back, with a ``read_committed``
consumer, what the topic received since interval ``n`` was staged, and writes in a new
transaction only the rows of ``n`` that are not visible. On Kafka a fenced transaction is
aborted, so all of them are written again (or none, if its commit had gone through); some
Kafka-protocol brokers (tansu 0.6) instead expose a fenced transaction's rows, and those are not
written twice. Either way a ``read_committed`` consumer sees every row once.

(A transaction could also commit the checkpoint id as a consumer-group offset, with
``send_offsets_to_transaction``; with librdkafka 2.16 and tansu that call hangs after a broker
reconnect, so the sink reads its own rows back instead.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence, Set
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.deadletters import payloads_of
from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError, SinkError
from rheon.core.metrics import SinkHealth
from rheon.io._reconnect import Reconnects
from rheon.io.base import BuildContext, KeepsDeadLetters, Sink, SinkLogic
from rheon.io.kafka.codec import encode_json, message_keys
from rheon.io.kafka.source import _kafka, _list_topics

__all__ = ["KafkaSink"]

log = logging.getLogger(__name__)

CKPT = "__rheon_ckpt"
_TIMEOUT_S = 30
_STATS_MS = 1000  # how often librdkafka reports its statistics (its request retries, for the metrics)
_KEY, _VALUE = "__rheon_key", "__rheon_value"  # the columns of staged, encoded messages
_ENCODED = pl.Schema({_KEY: pl.Binary(), _VALUE: pl.Binary()})
_NONE: frozenset[int] = frozenset()


class _ReadBackIncomplete(Exception):
    """Recovery's read of the topic ended before it reached the end offsets."""


class KafkaSink(Sink):
    """Write rows to a Kafka topic as JSON (or raw bytes from a ``value`` column).

    Parameters
    ----------
    topic, brokers
        Where to write.
    key
        Column (or columns) whose value becomes the message key, so a key's rows go to one
        partition in order. Several columns make a JSON array key.
    format
        ``"json"`` (each row a JSON object) or ``"bytes"`` (the ``value`` column as is).
    config
        Extra librdkafka producer settings. They override rheon's, among them
        ``delivery.report.only.error=True``: only a failed delivery calls back into Python.
    retries, retry_backoff
        When the broker cannot be reached while a checkpoint's transaction is prepared, try again
        up to ``retries`` times, waiting ``retry_backoff`` and then twice as long each time (up to
        30 s), before failing the run (a restart resumes from the last checkpoint). These retries,
        and the requests the Kafka client (librdkafka) sends again, count in the metrics
        (``rheon_sink_retries_total``).

    Guarantee: exactly-once with checkpoints (one Kafka transaction per checkpoint; a
    ``read_committed`` consumer sees every row once, across crashes; rows become visible when
    their checkpoint completes). Without checkpoints, at-least-once (an idempotent producer,
    rows visible at once).

    Examples
    --------
    >>> import rheon as rh
    >>> rh.io.KafkaSink("alerts", brokers="127.0.0.1:9092", key="card")
    KafkaSink('alerts', brokers='127.0.0.1:9092', key=['card'], format='json')
    """

    def __init__(
        self,
        topic: str,
        *,
        brokers: str = "127.0.0.1:9092",
        key: str | list[str] | None = None,
        format: str = "json",
        config: dict[str, Any] | None = None,
        retries: int = 10,
        retry_backoff: Duration = "200ms",
    ) -> None:
        if format not in ("json", "bytes"):
            msg = f"KafkaSink: format must be 'json' or 'bytes' (got {format!r})"
            raise FlowError(msg)
        if retries < 0:
            msg = f"KafkaSink: retries must not be negative (got {retries})"
            raise FlowError(msg)
        self.retries = retries
        self.retry_backoff_ms = to_ms(retry_backoff, what="KafkaSink: retry_backoff")
        self.topic = topic
        self.brokers = brokers
        self.key = [key] if isinstance(key, str) else (list(key) if key else [])
        self.format = format
        self.config = dict(config or {})

    def __repr__(self) -> str:
        return f"KafkaSink({self.topic!r}, brokers={self.brokers!r}, key={self.key}, format={self.format!r})"

    @override
    def build(self, ctx: BuildContext) -> SinkLogic:
        return _KafkaSinkLogic(self, ctx)


class _KafkaSinkLogic(KeepsDeadLetters, SinkLogic):
    def __init__(self, cfg: KafkaSink, ctx: BuildContext) -> None:
        self.kafka = _kafka()
        self.cfg = cfg
        self.name, self.where = ctx.operator, f"sink '{ctx.operator}'"
        self.clock, self.stop = ctx.clock, ctx.stop
        self.transactional = ctx.checkpointing
        self.txn_id = f"rheon-{ctx.flow}-{ctx.operator}"
        self.admin_group = f"{self.txn_id}.admin"
        self.staged: list[pl.DataFrame] = []  # encoded messages (_ENCODED) since the last checkpoint
        self.pending: dict[int, tuple[pl.DataFrame, dict[int, int]]] = {}
        self.errors: list[str] = []
        self.dead: list[tuple[str, str]] = []
        self.retries_done = 0  # the sink's own: the broker unreachable while preparing or recovering
        self.client_retries: dict[str, int] = {}  # librdkafka's, per broker: requests it sent again
        base = {
            "bootstrap.servers": cfg.brokers,
            "partitioner": "murmur2_random",
            "logger": logging.getLogger("rheon.io.kafka.librdkafka"),
            "statistics.interval.ms": _STATS_MS,
            "stats_cb": self._statistics,
            "on_delivery": self._delivered,
            "delivery.report.only.error": True,  # no Python call per message delivered
            **cfg.config,
        }
        if self.transactional:
            self.producer = self.kafka.Producer({**base, "transactional.id": self.txn_id, "enable.idempotence": True})
        else:
            self.producer = self.kafka.Producer({**base, "enable.idempotence": True})
        self.admin = self.kafka.Consumer(self._consumer_settings(self.admin_group))
        self._check_topic()
        self.initialized = False

    def _consumer_settings(self, group: str) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.cfg.brokers,
            "group.id": group,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "logger": logging.getLogger("rheon.io.kafka.librdkafka"),
            **self.cfg.config,
        }

    def _check_topic(self) -> None:
        try:
            meta = _list_topics(self.kafka, self.admin, 10, self.cfg.topic)
        except self.kafka.KafkaException as exc:
            msg = f"{self.where}: cannot reach Kafka at {self.cfg.brokers} ({exc}). Is the broker running?"
            raise SinkError(msg) from exc
        topic = meta.topics.get(self.cfg.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            msg = f"{self.where}: topic {self.cfg.topic!r} does not exist on {self.cfg.brokers}. Create it first."
            raise SinkError(msg)
        self.partitions = sorted(topic.partitions)

    def _init_transactions(self) -> None:
        if not self.initialized and self.transactional:
            self.producer.init_transactions(_TIMEOUT_S)
            self.initialized = True

    # -- encoding ------------------------------------------------------------------------------

    def _encoded(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The batch as messages (key and value bytes); rows that cannot be encoded go to the dead letters."""
        try:
            keys, values = self._messages(frame)
        except (pl.exceptions.PolarsError, TypeError, ValueError):
            keys, values = [], []
            for i in range(frame.height):
                row = frame.slice(i, 1)
                try:
                    row_keys, row_values = self._messages(row)
                except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
                    reason = f"cannot encode the row as a Kafka message: {str(exc).splitlines()[0]}"
                    self.dead.append((reason, payloads_of(row.drop(CKPT, strict=False))[0]))
                    continue
                keys += row_keys
                values += row_values
        return pl.DataFrame({_KEY: keys, _VALUE: values}, schema=_ENCODED)

    def _messages(self, frame: pl.DataFrame) -> tuple[list[bytes | None], list[bytes]]:
        """The batch's message keys and values, a column each."""
        if self.cfg.format == "bytes":
            if "value" not in frame.columns:
                msg = f"{self.where}: format='bytes' needs a 'value' column (columns: {', '.join(frame.columns)})"
                raise FlowError(msg)
            values = [v if isinstance(v, bytes) else str(v).encode() for v in frame.get_column("value").to_list()]
        else:
            values = encode_json(frame.drop(CKPT, strict=False))
        return message_keys(frame, self.cfg.key), values

    def _statistics(self, text: str) -> None:
        """librdkafka's statistics (every ``_STATS_MS``, served by ``poll``/``flush``): keep each
        broker's request retries (deliveries, transaction calls), counted since the producer started."""
        try:
            brokers = json.loads(text).get("brokers", {})
            retries = {str(name): int(b.get("txretries", 0)) for name, b in brokers.items()}
        except (ValueError, TypeError, AttributeError):
            return
        for name, n in retries.items():
            self.client_retries[name] = max(self.client_retries.get(name, 0), n)

    @override
    def health(self) -> SinkHealth:
        """Retries so far: the sink's own (the broker unreachable while a checkpoint's transaction
        is prepared or recovered) and the Kafka client's (requests it sent again); no circuit breaker."""
        return SinkHealth(self.retries_done + sum(self.client_retries.values()))

    def _delivered(self, err: Any, msg: Any) -> None:
        """The producer's delivery callback: called for failed deliveries only (``delivery.report.only.error``)."""
        if err is not None:
            self.errors.append(str(err))

    def _produce(
        self, keys: Sequence[bytes | None], values: Sequence[bytes], tag: bytes | None = None, skip: Set[int] = _NONE
    ) -> None:
        """Hand the messages to the producer, one ``produce`` call each and nothing else per message.

        With ``tag``, each message carries the headers ``rheon-txn`` (the tag) and ``rheon-seq`` (its
        index), and the indexes in ``skip`` are left out.
        """
        produce, topic = self.producer.produce, self.cfg.topic
        if tag is None:
            for key, value in zip(keys, values, strict=True):
                try:
                    produce(topic, value, key)
                except BufferError:
                    self._produce_when_room(key, value, None)
        else:
            txn = ("rheon-txn", tag)
            for i, (key, value) in enumerate(zip(keys, values, strict=True)):
                if i in skip:
                    continue
                headers = [txn, ("rheon-seq", str(i).encode())]
                try:
                    produce(topic, value, key, headers=headers)
                except BufferError:
                    self._produce_when_room(key, value, headers)
        self.producer.poll(0)

    def _produce_when_room(self, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]] | None) -> None:
        """The local queue is full: let it drain (backpressure), then produce."""
        while True:
            self.producer.poll(0.05)
            try:
                self.producer.produce(self.cfg.topic, value, key, headers=headers)
                return
            except BufferError:
                continue

    def _flush(self) -> None:
        left = self.producer.flush(_TIMEOUT_S)
        if left or self.errors:
            problem = self.errors[0] if self.errors else f"{left} messages not delivered in {_TIMEOUT_S} s"
            self.errors = []
            msg = f"{self.where}: writing to Kafka failed: {problem}"
            raise SinkError(msg)

    # -- the sink protocol ----------------------------------------------------------------------

    @override
    def write(self, frame: pl.DataFrame) -> None:
        if self.transactional:
            self.staged.append(self._encoded(frame))
        else:
            self._produce(*self._messages(frame))

    @override
    def flush(self) -> None:
        self._flush()

    @override
    def pre_commit(self, checkpoint_id: int) -> None:
        if not self.staged:
            return
        frame = pl.concat(self.staged) if len(self.staged) > 1 else self.staged[0]  # all of one schema: _ENCODED
        self.staged = []
        self.pending[checkpoint_id] = (frame, self._high_watermarks())

    def _high_watermarks(self) -> dict[int, int]:
        """Each partition's end offset, retried with backoff while the broker is unreachable."""
        retry = Reconnects(
            self.name, "Kafka", self.cfg.brokers, self.cfg.retries,
            self.cfg.retry_backoff_ms, self.clock, self.stop,
        )  # fmt: skip
        while True:
            try:
                return {
                    p: self.admin.get_watermark_offsets(
                        self.kafka.TopicPartition(self.cfg.topic, p), timeout=_TIMEOUT_S
                    )[1]
                    for p in self.partitions
                }
            except self.kafka.KafkaException as exc:
                retry.failed(exc, str(exc))
                self.retries_done += 1

    @override
    def commit(self, checkpoint_id: int) -> None:
        self._init_transactions()
        for cid in sorted(c for c in self.pending if c <= checkpoint_id):
            frame, _ = self.pending.pop(cid)
            self._transact(cid, frame, skip=set())

    def _transact(self, cid: int, frame: pl.DataFrame, skip: set[int]) -> None:
        """Write interval ``cid``'s messages (an encoded frame) in one transaction, but for those in ``skip``."""
        tag = f"{self.txn_id}:{cid}".encode()
        self.producer.begin_transaction()
        try:
            self._produce(frame.get_column(_KEY).to_list(), frame.get_column(_VALUE).to_list(), tag, skip)
            self._flush()
            self.producer.commit_transaction(_TIMEOUT_S)
        except Exception:
            with contextlib.suppress(self.kafka.KafkaException):
                self.producer.abort_transaction(_TIMEOUT_S)
            raise
        log.debug(
            "kafka_committed sink=%s checkpoint=%d rows=%d skipped=%d",
            self.where,
            cid,
            frame.height - len(skip),
            len(skip),
        )

    @override
    def state(self) -> tuple[dict[str, pl.DataFrame], dict[str, Any]] | None:
        if not self.transactional:
            return None
        frames = {f"pending_{cid}": frame for cid, (frame, _) in self.pending.items()}
        return frames, {"ends": {cid: ends for cid, (_, ends) in self.pending.items()}}

    @override
    def load_state(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any]) -> None:
        self.pending = {}
        for cid, ends in objects["ends"].items():
            frame = frames[f"pending_{cid}"]
            if frame.schema != _ENCODED:  # a checkpoint of rheon 0.1 staged the rows themselves
                frame = self._encoded(frame)
            self.pending[int(cid)] = (frame, ends)

    @override
    def recover(self, checkpoint_id: int | None) -> None:
        if not self.transactional:
            return
        self._init_transactions()  # fences any producer of an earlier run
        for cid in sorted(self.pending):
            frame, ends = self.pending.pop(cid)
            if checkpoint_id is None or cid > checkpoint_id:
                continue  # after the checkpoint: the replay writes these rows again
            skip = self._already_visible(cid, ends)
            log.info(
                "kafka_recover sink=%s checkpoint=%d rows=%d already_visible=%d",
                self.where,
                cid,
                frame.height,
                len(skip),
            )
            if len(skip) == frame.height:
                continue  # its commit went through (or the broker exposed the whole transaction)
            self._transact(cid, frame, skip)

    def _already_visible(self, cid: int, ends: dict[int, int]) -> set[int]:
        """Sequence numbers of interval ``cid`` rows a fenced transaction left visible.

        Only a read that reached the end of every partition tells: one cut short (the broker
        unreachable) is tried again with backoff, never taken for the whole, or the rows it had
        not reached yet would be written a second time.
        """
        retry = Reconnects(
            self.name, "Kafka", self.cfg.brokers, self.cfg.retries,
            self.cfg.retry_backoff_ms, self.clock, self.stop,
        )  # fmt: skip
        while True:
            try:
                return self._read_back(cid, ends)
            except (self.kafka.KafkaException, _ReadBackIncomplete) as exc:
                retry.failed(exc, str(exc))
                self.retries_done += 1

    def _read_back(self, cid: int, ends: dict[int, int]) -> set[int]:
        tag = f"{self.txn_id}:{cid}".encode()
        reader = self.kafka.Consumer(self._consumer_settings(f"{self.txn_id}.recover"))
        seen: set[int] = set()
        try:
            targets = {}
            for p in self.partitions:
                _, high = reader.get_watermark_offsets(self.kafka.TopicPartition(self.cfg.topic, p), timeout=_TIMEOUT_S)
                start = ends.get(p, 0)
                if high > start:
                    targets[p] = high
            if not targets:
                return seen
            reader.assign([self.kafka.TopicPartition(self.cfg.topic, p, ends.get(p, 0)) for p in targets])
            deadline = time.monotonic() + _TIMEOUT_S
            tps = [self.kafka.TopicPartition(self.cfg.topic, p) for p in targets]
            while True:
                for m in reader.consume(1000, 0.2):
                    if m.error() is not None:
                        continue
                    headers = dict(m.headers() or [])
                    if headers.get("rheon-txn") == tag and headers.get("rheon-seq") is not None:
                        seen.add(int(headers["rheon-seq"]))
                # Transaction markers take offsets too: done when the read position, not the
                # last record, reaches the end.
                positions = {tp.partition: tp.offset for tp in reader.position(tps)}
                if all(positions[p] >= end for p, end in targets.items()):
                    return seen
                if time.monotonic() >= deadline:
                    msg = (
                        f"reading back checkpoint {cid}'s rows from {self.cfg.topic!r} did not reach the end offsets "
                        f"{targets} in {_TIMEOUT_S} s (reached {positions})"
                    )
                    raise _ReadBackIncomplete(msg)
        finally:
            reader.close()

    @override
    def close(self) -> None:
        try:
            self.producer.flush(5)
        finally:
            self.admin.close()
