"""``rh.io.Kafka``: read a Kafka topic (confluent-kafka)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.batch import RAW_COL, SPLIT_COL
from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError, SourceError
from rheon.core.extras import import_extra
from rheon.io._json import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FIELDS, JsonDecoder
from rheon.io.base import BuildContext, KeepsDeadLetters, Source, SourceLogic
from rheon.io.kafka.codec import Decoder, decoder_for, raw_payload, raw_payloads
from rheon.io.kafka.messages import Columns, consume_columns

__all__ = ["Kafka"]

log = logging.getLogger(__name__)

METADATA = ("_key", "_partition", "_offset", "_timestamp", "_headers")


def _kafka() -> Any:
    return import_extra("confluent_kafka", user="rh.io.Kafka", package="confluent-kafka", extra="kafka")


_METADATA_RETRY_S = 0.2


def _list_topics(kafka: Any, client: Any, timeout_s: float, topic: str | None = None) -> Any:
    """The cluster's metadata, asked for again until ``timeout_s`` has passed.

    librdkafka fails a metadata request at once (``_TRANSPORT``) when its connection drops while the
    request is in flight, however much of the timeout is left: asked once, a connection lost as a
    client starts would fail the flow.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return client.list_topics(topic, timeout=max(deadline - time.monotonic(), 0.05))
        except kafka.KafkaException:
            if time.monotonic() + _METADATA_RETRY_S >= deadline:
                raise
            time.sleep(_METADATA_RETRY_S)


class Kafka(Source):
    """Read records from one or more Kafka topics.

    Parameters
    ----------
    topic
        A topic name, or several.
    brokers
        The bootstrap servers.
    group
        Consumer group. Without ``partitions``, the source joins the group and Kafka assigns it
        partitions (scale out by running more copies); offsets are also committed to the group
        after each checkpoint, for monitoring.
    format
        ``"json"`` (each message a JSON object; parsed per batch by Polars), ``"bytes"`` (a
        ``value`` column) or a function ``bytes -> dict | list[dict] | None``.
    partitions
        Read these partitions of each topic (or ``"all"``) without joining the group: no
        rebalance delay, no scale-out.
    start
        Where to begin without a checkpoint: ``"earliest"`` or ``"latest"``.
    schema
        Column types for JSON payloads; a message that does not fit goes to the dead letters.
    max_depth, max_fields
        Caps on each JSON message, checked before it is parsed: levels of nested objects and arrays
        (default 16), and distinct fields, nested ones included (default 1,000; also the most columns
        the source learns without a schema). A message over a cap is a dead letter.
    metadata
        Add ``_key``, ``_partition``, ``_offset``, ``_timestamp`` (epoch ms) and ``_headers``
        columns (use ``time="_timestamp"`` for the broker's timestamps as event time).
    max_batch
        Most messages per batch (a batch is whatever is available, up to this).
    connect_timeout
        How long to wait for the brokers at start before failing with a clear error.
    config
        Extra librdkafka settings, e.g. ``{"security.protocol": "SASL_SSL", ...}``. They override
        rheon's, among them ``fetch.queue.backoff.ms=20``: with librdkafka's default (1 s), a
        partition whose local queue had filled waited a second before its next fetch, which halved
        the rate a backlog was read at.

    Watermarks are tracked per partition: the source's watermark is the minimum over its
    partitions, and a partition with no data for the flow source's ``idle_timeout`` stops
    holding it back. Messages that cannot be decoded go to the dead-letter output with their raw
    payload: not JSON or not UTF-8, over a cap, or with a value that does not fit the type its field
    has had so far (see `rheon.io._json.JsonDecoder`); the types learned are kept in checkpoints.
    Consumer reads are ``read_committed``.

    Guarantee: exactly-once with checkpoints: offsets are kept in rheon's checkpoints (not
    auto-committed) and a restarted flow resumes from them.

    Examples
    --------
    >>> import rheon as rh
    >>> rh.io.Kafka("payments", brokers="127.0.0.1:9092", partitions="all")
    Kafka('payments', brokers='127.0.0.1:9092', format='json')
    """

    def __init__(
        self,
        topic: str | Sequence[str],
        *,
        brokers: str = "127.0.0.1:9092",
        group: str = "rheon",
        format: str | Callable[[bytes], Any] = "json",
        partitions: Sequence[int] | str | None = None,
        start: str = "earliest",
        schema: pl.Schema | dict[str, pl.DataType] | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_fields: int = DEFAULT_MAX_FIELDS,
        metadata: bool = True,
        max_batch: int = 10_000,
        connect_timeout: Duration = "10s",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.topics = [topic] if isinstance(topic, str) else list(topic)
        if not self.topics or not all(isinstance(t, str) and t for t in self.topics):
            msg = f"Kafka: topic must be a name or a list of names (got {topic!r})"
            raise FlowError(msg)
        if start not in ("earliest", "latest"):
            msg = f"Kafka: start must be 'earliest' or 'latest' (got {start!r})"
            raise FlowError(msg)
        if (
            partitions is not None
            and partitions != "all"
            and not (isinstance(partitions, Sequence) and all(isinstance(p, int) for p in partitions))
        ):
            msg = f"Kafka: partitions must be a list of partition numbers or 'all' (got {partitions!r})"
            raise FlowError(msg)
        self.brokers = brokers
        self.group = group
        self.format = format
        self.partitions = partitions
        self.start = start
        self.value_schema = pl.Schema(schema) if schema is not None else None
        self.metadata = metadata
        self.max_batch = max_batch
        self.connect_timeout_ms = to_ms(connect_timeout, what="Kafka: connect_timeout")
        self.config = dict(config or {})
        self.max_depth, self.max_fields = max_depth, max_fields
        self._decoder("Kafka")  # validate now

    def _decoder(self, where: str) -> Decoder:
        return decoder_for(self.format, self.value_schema, where, max_depth=self.max_depth, max_fields=self.max_fields)

    def __repr__(self) -> str:
        shown = self.topics[0] if len(self.topics) == 1 else self.topics
        return f"Kafka({shown!r}, brokers={self.brokers!r}, format={self.format!r})"

    @override
    def build(self, ctx: BuildContext) -> SourceLogic:
        return _KafkaLogic(self, ctx)


def _split(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class _KafkaLogic(KeepsDeadLetters, SourceLogic):
    def __init__(self, cfg: Kafka, ctx: BuildContext) -> None:
        kafka = _kafka()
        self.kafka = kafka
        self.cfg = cfg
        self.where = f"source '{ctx.operator}'"
        self.decode = cfg._decoder(self.where)
        self.keep_raw = ctx.event_time is not None  # dead letters for a bad time carry the payload
        settings = {
            "bootstrap.servers": cfg.brokers,
            "group.id": cfg.group,
            "enable.auto.commit": False,
            "auto.offset.reset": cfg.start,
            "isolation.level": "read_committed",
            "enable.partition.eof": False,
            "fetch.queue.backoff.ms": 20,
            "logger": logging.getLogger("rheon.io.kafka.librdkafka"),
            **cfg.config,
        }
        self.consumer = kafka.Consumer(settings)
        self.positions: dict[str, int] = {}  # split -> next offset to read
        self.split_names: dict[tuple[str, int], str] = {}
        self.restored: dict[str, int] | None = None
        self.assigned: list[str] = []
        self.dead: list[tuple[str, str]] = []
        self._connect(settings)

    def _connect(self, settings: dict[str, Any]) -> None:
        cfg = self.cfg
        try:
            meta = _list_topics(self.kafka, self.consumer, cfg.connect_timeout_ms / 1000)
        except self.kafka.KafkaException as exc:
            msg = (
                f"{self.where}: cannot reach Kafka at {cfg.brokers} within {cfg.connect_timeout_ms} ms ({exc}). "
                "Is the broker running? Try a longer connect_timeout or check brokers=."
            )
            raise SourceError(msg) from exc
        missing = [t for t in cfg.topics if t not in meta.topics or meta.topics[t].error is not None]
        if missing and cfg.partitions is not None:
            msg = f"{self.where}: topic {missing[0]!r} does not exist on {cfg.brokers}. Create it first."
            raise SourceError(msg)
        if cfg.partitions is None:
            self.consumer.subscribe(cfg.topics, on_assign=self._on_assign, on_revoke=self._on_revoke)
            return
        wanted: list[tuple[str, int]] = []
        for topic in cfg.topics:
            if cfg.partitions == "all":
                numbers: list[int] = sorted(meta.topics[topic].partitions)
            else:
                numbers = [int(p) for p in cfg.partitions]
            wanted += [(topic, p) for p in numbers]
        self._assign(wanted)

    def _offset_for(self, topic: str, partition: int) -> int:
        restored = self.restored or {}
        default = self.kafka.OFFSET_BEGINNING if self.cfg.start == "earliest" else self.kafka.OFFSET_END
        return int(restored.get(_split(topic, partition), default))

    def _assign(self, wanted: list[tuple[str, int]]) -> None:
        tps = [self.kafka.TopicPartition(t, p, self._offset_for(t, p)) for t, p in wanted]
        self.consumer.assign(tps)
        self.assigned = [_split(t, p) for t, p in wanted]

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        for tp in partitions:
            split = _split(tp.topic, tp.partition)
            if self.restored is not None and split in self.restored:
                tp.offset = self.restored[split]
        consumer.assign(partitions)
        self.assigned = sorted({*self.assigned, *(_split(tp.topic, tp.partition) for tp in partitions)})
        log.info("kafka_assigned source=%s partitions=%s", self.where, ",".join(self.assigned))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        gone = {_split(tp.topic, tp.partition) for tp in partitions}
        self.assigned = [s for s in self.assigned if s not in gone]

    # -- reading -------------------------------------------------------------------------------

    @override
    def next_batch(self) -> pl.DataFrame | None:
        """The messages ready now (up to ``max_batch``) as one frame, built column by column: no
        Python code runs per message (`rheon.io.kafka.messages`), the payloads are decoded in one
        pass, and a position is the last offset read of each partition."""
        single = self.cfg.topics[0]
        batch, errors = consume_columns(
            self.consumer,
            self.kafka.Message,
            self.cfg.max_batch,
            topics=len(self.cfg.topics) > 1,
            metadata=self.cfg.metadata,
        )
        self._report(errors)
        if not len(batch):
            return None
        ends = batch.ends(single)
        for (topic, partition), offset in ends.items():
            self.positions[self._label(topic, partition)] = offset + 1
        frame, index, bad = self.decode(batch.values)
        for i, reason in bad:
            where = f"{batch.topic(i, single)}[{batch.partitions[i]}]@{batch.offsets[i]}"
            self.dead.append((f"{reason} ({where})", raw_payload(batch.values[i])))
        if not index:
            return pl.DataFrame()
        # The rows' messages, unless one row per message: the JSON and bytes decoders give a message at
        # most one row, in order; a decoder of the user's may give several, or none.
        one_each = len(index) == len(batch) and (not callable(self.cfg.format) or index == list(range(len(batch))))
        take = None if one_each else pl.Series(index, dtype=pl.UInt32)

        def picked(series: pl.Series) -> pl.Series:
            return series if take is None else series.gather(take)

        extra = [picked(self._split_column(batch.topics, batch.partitions, list(ends)))]
        if self.cfg.metadata:
            extra += [picked(column) for column in _metadata(batch)]
        if self.keep_raw:
            extra.append(picked(raw_payloads(pl.Series(RAW_COL, batch.values, dtype=pl.Binary))))
        return frame.with_columns(extra)

    def _report(self, errors: list[Any]) -> None:
        """Error events from the consumer: a fatal one fails the source, the others are logged."""
        for m in errors:
            error = m.error()
            if error.fatal():
                msg = f"{self.where}: fatal Kafka error: {error}"
                raise SourceError(msg)
            log.warning("kafka_error source=%s error=%s", self.where, error)

    def _label(self, topic: str, partition: int) -> str:
        """A partition's split name (``topic:partition``), made once."""
        where = (topic, partition)
        label = self.split_names.get(where)
        if label is None:
            label = self.split_names[where] = _split(topic, partition)
        return label

    def _split_column(
        self, topics: list[str] | None, partitions: list[int], present: list[tuple[str, int]]
    ) -> pl.Series:
        """Each message's split name (``topic:partition``), mapped by Polars from its partition
        number, or, with several topics, from the number of its (topic, partition) in ``present``."""
        names = [self._label(topic, partition) for topic, partition in present]
        if topics is None:
            numbers = pl.Series(SPLIT_COL, partitions, dtype=pl.Int64)
            return numbers.replace_strict([p for _, p in present], names, return_dtype=pl.String)
        code = {pair: i for i, pair in enumerate(present)}
        numbers = pl.Series(SPLIT_COL, [code[pair] for pair in zip(topics, partitions, strict=True)], dtype=pl.Int64)
        return numbers.replace_strict(list(range(len(names))), names, return_dtype=pl.String)

    @override
    def done(self) -> bool:
        return False

    @override
    def splits(self) -> list[str] | None:
        return list(self.assigned)

    @override
    def backlog(self) -> dict[tuple[str, str], float]:
        """Consumer lag per assigned partition: its high watermark (as last fetched, no request
        to the broker) minus the next offset this source will read."""
        out: dict[tuple[str, str], float] = {}
        for split in self.assigned:
            topic, partition = split.rsplit(":", 1)
            try:
                low, high = self.consumer.get_watermark_offsets(
                    self.kafka.TopicPartition(topic, int(partition)), cached=True
                )
            except self.kafka.KafkaException:
                continue
            if high < 0:  # nothing fetched from this partition yet
                continue
            position = self.positions.get(split, low if low >= 0 else 0)
            out[(split, "records")] = float(max(high - position, 0))
        return out

    # -- positions ----------------------------------------------------------------------------

    @override
    def snapshot(self) -> Any:
        types = self.decode.state() if isinstance(self.decode, JsonDecoder) else None
        return {"offsets": dict(self.positions), "types": types}

    @override
    def restore(self, position: Any) -> None:
        position = dict(position or {})
        if isinstance(position.get("offsets"), dict):  # else a checkpoint of rheon 0.1: the offsets alone
            if isinstance(self.decode, JsonDecoder):
                self.decode.load_state(position.get("types"))
            position = position["offsets"]
        self.restored = position
        self.positions = dict(self.restored)
        if self.cfg.partitions is not None:
            wanted = [split.rsplit(":", 1) for split in self.assigned]
            self._assign([(topic, int(partition)) for topic, partition in wanted])

    @override
    def checkpoint_done(self, checkpoint_id: int) -> None:
        if not self.positions:
            return
        offsets = []
        for split, offset in self.positions.items():
            topic, partition = split.rsplit(":", 1)
            offsets.append(self.kafka.TopicPartition(topic, int(partition), offset))
        try:
            self.consumer.commit(offsets=offsets, asynchronous=True)
        except self.kafka.KafkaException as exc:  # monitoring only: the checkpoint has them
            log.warning("kafka_commit_failed source=%s error=%s", self.where, exc)

    @override
    def close(self) -> None:
        self.consumer.close()


def _metadata(batch: Columns) -> list[pl.Series]:
    """The ``_key``, ``_partition``, ``_offset``, ``_timestamp`` and ``_headers`` columns of a batch."""
    headers = batch.headers
    assert headers is not None  # read with metadata=True, as are the keys and timestamps
    texts = [_headers_json(h) for h in headers] if any(headers) else [None] * len(batch)
    return [
        pl.Series("_key", batch.keys, dtype=pl.Binary),
        pl.Series("_partition", batch.partitions, dtype=pl.Int32),
        pl.Series("_offset", batch.offsets, dtype=pl.Int64),
        pl.Series("_timestamp", batch.timestamps, dtype=pl.Int64),
        pl.Series("_headers", texts, dtype=pl.String),
    ]


def _headers_json(headers: list[tuple[str, bytes | None]] | None) -> str | None:
    """Headers as a JSON object (text values), or null."""
    if not headers:
        return None
    return json.dumps({k: (v.decode("utf-8", errors="replace") if v is not None else None) for k, v in headers})
