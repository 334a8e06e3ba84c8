"""A batch of consumed Kafka messages as columns (lists), read without Python code per message.

confluent-kafka hands out one Python object per message. Reading their fields is one ``map`` of
the message class's method over the batch (C-speed iteration, no Python frame per message), and
Python's cyclic garbage collector is paused while the batch's message objects exist: each batch
makes tens of thousands of GC-tracked objects at once, none of them in a cycle, and the collections
they set off (full ones included, which walk every object in the process) took about half of the
time ``consume`` took (1M messages from tansu: 0.87-0.95 s of main-thread time with the collector
on, 0.46-0.49 s with it paused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rheon.core.collector import no_gc

__all__ = ["Columns", "consume_columns"]


@dataclass
class Columns:
    """The fields of a batch of messages, one list each, in the order of the messages.

    ``topics`` is None when the source reads one topic; ``keys``, ``timestamps`` and ``headers``
    when it does not want them (no metadata columns).

    Examples
    --------
    >>> batch = Columns(values=[b'{"v": 1}'], partitions=[0], offsets=[7])
    >>> len(batch), batch.ends("t")
    (1, {('t', 0): 7})
    """

    values: list[bytes | None]
    partitions: list[int]
    offsets: list[int]
    topics: list[str] | None = None
    keys: list[bytes | None] | None = None
    timestamps: list[int] | None = None
    headers: list[list[tuple[str, bytes | None]] | None] | None = None

    def __len__(self) -> int:
        return len(self.values)

    def topic(self, i: int, single: str) -> str:
        """Message ``i``'s topic (``single`` when the source reads one)."""
        return single if self.topics is None else self.topics[i]

    def ends(self, single: str) -> dict[tuple[str, int], int]:
        """The last offset read of each ``(topic, partition)`` in the batch (it holds each
        partition's messages in offset order, so the last one is the highest)."""
        if self.topics is None:
            return {(single, p): o for p, o in dict(zip(self.partitions, self.offsets, strict=True)).items()}
        return dict(zip(zip(self.topics, self.partitions, strict=True), self.offsets, strict=True))


def consume_columns(
    consumer: Any, message: Any, max_messages: int, *, topics: bool, metadata: bool
) -> tuple[Columns, list[Any]]:
    """Up to ``max_messages`` messages that are ready now, as `Columns`, and the error events among them.

    ``message`` is confluent-kafka's ``Message`` class, whose methods are mapped over the batch;
    ``topics``: whether to keep each message's topic (a source of several topics). Error events
    (confluent-kafka returns them among the messages) are left out of the columns and returned
    as they came, for the caller to report.

    Examples
    --------
    >>> class Message:  # the part of confluent_kafka.Message read here
    ...     def __init__(self, offset): self._offset = offset
    ...     def error(self): return None
    ...     def value(self): return b"{}"
    ...     def partition(self): return 0
    ...     def offset(self): return self._offset
    >>> class Consumer:
    ...     def consume(self, num_messages, timeout): return [Message(5), Message(6)][:num_messages]
    >>> batch, errors = consume_columns(Consumer(), Message, 10, topics=False, metadata=False)
    >>> batch.offsets, batch.values, errors
    ([5, 6], [b'{}', b'{}'], [])
    """
    with no_gc():
        messages = consumer.consume(num_messages=max_messages, timeout=0)
        errors: list[Any] = []
        if messages and any(map(message.error, messages)):
            errors = [m for m in messages if m.error() is not None]
            messages = [m for m in messages if m.error() is None]
        batch = Columns(
            values=list(map(message.value, messages)),
            partitions=list(map(message.partition, messages)),
            offsets=list(map(message.offset, messages)),
            topics=list(map(message.topic, messages)) if topics else None,
        )
        if metadata:
            batch.keys = list(map(message.key, messages))
            batch.timestamps = [stamp for _, stamp in map(message.timestamp, messages)]
            batch.headers = list(map(message.headers, messages))
        del messages  # freed here, while the collector is paused: it never walks them
    return batch, errors
