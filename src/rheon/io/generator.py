"""``rh.io.Generator``: synthetic events produced at a steady rate, in real time."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError
from rheon.io._json import int_range
from rheon.io.base import BuildContext, KeepsDeadLetters, Source, SourceLogic
from rheon.io.records import RowDecoder
from rheon.time.clock import Clock

__all__ = ["Generator"]


class Generator(Source):
    """Call ``fn(i)`` for ``i = 0, 1, 2, ...`` at ``rate`` events per second of wall-clock time.

    ``fn`` returns a dict (one event) or ``None`` (no event this time). A batch holds every
    event that is due when the flow asks, so at low rates each event flows through alone and at
    high rates batches grow (up to ``max_batch``). With ``timestamp="ts"`` each event gets its
    scheduled time, in epoch milliseconds, in column ``ts`` (unless ``fn`` set it). ``limit``
    makes the source bounded.

    ``min_batch_interval="1ms"`` has the flow read the generator at most once a millisecond
    while events keep coming (:attr:`SourceLogic.min_batch_interval_ns`): they go through in
    fewer, larger batches, for less CPU (each batch costs the operators a fixed overhead) and up
    to the interval more latency; an event after a quiet spell still goes at once. It plays the
    part of Kafka's ``linger.ms`` or Flink's buffer timeout; the default reads whatever is due
    as soon as the flow is free.

    Guarantee: resumes from its sequence number after a restart, so with a deterministic
    ``fn`` (and no ``timestamp`` column, which depends on the wall clock) it is exactly-once.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("gen")
    >>> out = rh.io.Collect()
    >>> src = rh.io.Generator(lambda i: {"n": i}, rate=1000, limit=3, timestamp="ts")
    >>> flow.source(src, time="ts").select("n").sink(out)
    >>> flow.run(); out.rows
    [{'n': 0}, {'n': 1}, {'n': 2}]

    With a batch interval, 25 events at one a millisecond come in four batches (a clock the
    example drives stands in for the wall clock):

    >>> from rheon.testing import ManualClock
    >>> flow, sizes = rh.Flow("paced"), []
    >>> src = rh.io.Generator(lambda i: {"n": i}, rate=1000, limit=25, min_batch_interval="10ms")
    >>> flow.source(src).sink(rh.io.Callback(lambda frame: sizes.append(frame.height), batch=True))
    >>> flow.run(clock=ManualClock()); sizes
    [1, 10, 10, 4]
    """

    def __init__(
        self,
        fn: Callable[[int], Mapping[str, Any] | None],
        *,
        rate: float,
        limit: int | None = None,
        timestamp: str | None = None,
        max_batch: int = 10_000,
        min_batch_interval: Duration | None = None,
    ) -> None:
        if not rate > 0:
            msg = f"Generator: rate must be a positive number of events per second (got {rate!r})"
            raise FlowError(msg)
        if limit is not None and limit < 0:
            msg = f"Generator: limit must be >= 0 (got {limit!r})"
            raise FlowError(msg)
        self.fn = fn
        self.rate = float(rate)
        self.limit = limit
        self.timestamp = timestamp
        self.max_batch = max_batch
        self.min_batch_interval_ms = (
            to_ms(min_batch_interval, what="Generator: min_batch_interval") if min_batch_interval is not None else 0
        )

    @override
    def build(self, ctx: BuildContext) -> SourceLogic:
        logic = _GeneratorLogic(self, ctx.clock)
        logic.min_batch_interval_ns = self.min_batch_interval_ms * 1_000_000
        return logic

    def __repr__(self) -> str:
        return f"Generator(rate={self.rate:g}/s, limit={self.limit})"


class _SettledRows:
    """The generator's fast way to a frame, for a batch whose rows the :class:`RowDecoder` would
    take as they are: every row a dict with exactly the fields seen so far, every value of the
    exact Python type of its column (``int`` in range, ``float``, ``str``, ``bool``) or ``None``.
    It then builds the frame the decoder would (the same ``from_dicts`` call) without the
    decoder's per-value checks, which cost ~8 µs per row: most of the source's time at 50k
    events/s. Anything else (a new field, another type, another column type) returns ``None``
    and the decoder decides.
    """

    def __init__(self, seen: Mapping[str, pl.DataType]) -> None:
        self.schema = pl.Schema(seen)
        self.names = set(seen)
        self.columns: list[tuple[str, type, tuple[int, int] | None]] | None = None
        columns: list[tuple[str, type, tuple[int, int] | None]] = []
        for name, dtype in seen.items():
            bounds = int_range(dtype)
            if bounds is not None:
                columns.append((name, int, bounds))
            elif dtype.is_float():
                columns.append((name, float, None))
            elif dtype == pl.String:
                columns.append((name, str, None))
            elif dtype == pl.Boolean:
                columns.append((name, bool, None))
            else:
                return  # no exact-type test for it: the decoder checks every batch
        self.columns = columns

    def frame(self, rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame | None:
        """The batch as a frame, or ``None`` when the decoder must look at it."""
        if self.columns is None or not rows:
            return None
        names = self.names
        if not all(type(row) is dict and row.keys() == names for row in rows):
            return None
        for name, kind, bounds in self.columns:
            values = [row[name] for row in rows]
            types = set(map(type, values))
            if types != {kind}:
                types.discard(type(None))
                if types - {kind}:
                    return None
                values = [v for v in values if v is not None]
            if bounds is not None and values and not (bounds[0] <= min(values) and max(values) < bounds[1]):
                return None
        return pl.from_dicts(rows, schema=self.schema, strict=True)


class _GeneratorLogic(KeepsDeadLetters, SourceLogic):
    def __init__(self, config: Generator, clock: Clock) -> None:
        self.cfg = config
        self.clock = clock
        self.decode = RowDecoder()  # a field keeps its first type; a row that does not fit is a dead letter
        self.settled = _SettledRows({})
        self.dead: list[tuple[str, str]] = []
        self.start_ns: int | None = None
        self.next_i = 0

    def _scheduled_ns(self, i: int) -> int:
        assert self.start_ns is not None
        return self.start_ns + int(i * 1e9 / self.cfg.rate)

    @override
    def next_batch(self) -> pl.DataFrame | None:
        now = self.clock.now_ns()
        if self.start_ns is None:
            self.start_ns = now
        due = int((now - self.start_ns) * self.cfg.rate / 1e9) + 1
        if self.cfg.limit is not None:
            due = min(due, self.cfg.limit)
        end = min(due, self.next_i + self.cfg.max_batch)
        if end <= self.next_i:
            return None
        rows = self._rows(self.next_i, end)
        self.last_ingest_ns = self._scheduled_ns(self.next_i)
        self.next_i = end
        frame = self.settled.frame(rows)
        if frame is None:
            known = len(self.decode.seen)
            frame, _, bad = self.decode(rows)
            self.dead += [(f"Generator: {reason}", payload) for _, reason, payload in bad]
            if len(self.decode.seen) != known:
                self.settled = _SettledRows(self.decode.seen)
        return frame

    def _rows(self, start: int, end: int) -> list[Mapping[str, Any]]:
        """``fn(i)`` for ``start <= i < end``, stamped with their scheduled time if asked, without the ``None``s."""
        fn, ts_col = self.cfg.fn, self.cfg.timestamp
        if ts_col is None:
            return [row for row in map(fn, range(start, end)) if row is not None]
        assert self.start_ns is not None
        start_ns, rate = self.start_ns, self.cfg.rate
        rows: list[Mapping[str, Any]] = []
        for i in range(start, end):
            row = fn(i)
            if row is None:
                continue
            if ts_col not in row:
                row = {**row, ts_col: (start_ns + int(i * 1e9 / rate)) // 1_000_000}  # as _scheduled_ns
            rows.append(row)
        return rows

    @override
    def snapshot(self) -> Any:
        return self.next_i

    @override
    def restore(self, position: Any) -> None:
        self.next_i = int(position)
        self.start_ns = self.clock.now_ns() - int(self.next_i * 1e9 / self.cfg.rate)

    @override
    def done(self) -> bool:
        return self.cfg.limit is not None and self.next_i >= self.cfg.limit

    @override
    def wait_hint_s(self) -> float | None:
        if self.start_ns is None:
            return 0.0
        return max(0.0, (self._scheduled_ns(self.next_i) - self.clock.now_ns()) / 1e9)
