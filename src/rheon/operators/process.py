"""Keyed process functions: per-record Python with keyed state, timers and side outputs.

The function runs once per record, in arrival order, with a context bound to the record's key.
Event-time timers fire when the watermark passes them, judged per record like everything else:
a timer fires before the first record whose watermark has reached it (in timestamp order, then
registration order), so the output does not depend on batching. Processing-time timers fire
when the flow's clock reaches them.

When a bounded input ends, the watermark jumps to the end of time and every event-time timer
left fires (as in Flink); ``on_timer`` sees ``ctx.input_ended`` and ``ctx.watermark ==
END_WATERMARK`` then, so it can tell those timers from ones a real watermark reached.

>>> from rheon.operators.process import END_WATERMARK
>>> END_WATERMARK == 2**62
True
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.batch import MAX_WM, MIN_WM, WM_COL, Batch
from rheon.core.collector import no_gc
from rheon.core.deadletters import dead_letter_frame, payload_of
from rheon.core.errors import FlowError
from rheon.core.eventtime import TimeType, time_type_of
from rheon.operators._keys import key_getter
from rheon.operators._rows import frame_to_rows, misfit_reason, rows_to_frame
from rheon.operators.base import DEAD, MAIN, Operator, Output, State
from rheon.state.backends import KeyedStateBackend
from rheon.state.keyed import ListState, MapState, StateKindError, StateKinds, ValueState
from rheon.state.service import KeyedService, KeyedTimers
from rheon.state.shared import SharedFiles
from rheon.time.clock import Clock

__all__ = ["END_WATERMARK", "KeyedProcess", "ProcessContext"]

END_WATERMARK: int = MAX_WM
"""``ctx.watermark`` in ``on_timer`` for the timers that fire because the input ended: 2**62,
greater than any watermark a record can make (in any time unit), like Flink's
``Long.MAX_VALUE``. ``ctx.input_ended`` says the same as a flag."""

Row = dict[str, Any]
ProcessFn = Callable[[Row, "ProcessContext"], None]
TimerFn = Callable[[Any, "ProcessContext"], None]


class _StateAccess:
    """``ctx.state(name, default=..., ttl=...)`` for a value; ``.list(...)`` and ``.map(...)``."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ProcessContext) -> None:
        self._ctx = ctx

    def __call__(self, name: str, default: Any = None, *, ttl: str | None = None) -> ValueState:
        op = self._ctx._op
        if op.state_kinds.get(name) != "value":
            op.state_kinds.declare(name, "value")
        return ValueState(self._ctx._cells(), name, op._ttl(ttl), op._now_ms, default)

    def value(self, name: str, default: Any = None, *, ttl: str | None = None) -> ValueState:
        """Same as calling ``ctx.state(name, ...)``."""
        return self(name, default, ttl=ttl)

    def list(self, name: str, *, ttl: str | None = None) -> ListState:
        """A list per key."""
        op = self._ctx._op
        if op.state_kinds.get(name) != "list":
            op.state_kinds.declare(name, "list")
        return ListState(self._ctx._cells(), name, op._ttl(ttl), op._now_ms)

    def map(self, name: str, *, ttl: str | None = None) -> MapState:
        """A dict per key."""
        op = self._ctx._op
        if op.state_kinds.get(name) != "map":
            op.state_kinds.declare(name, "map")
        return MapState(self._ctx._cells(), name, op._ttl(ttl), op._now_ms)


class _Timers:
    """``ctx.timers``: register and delete timers for the current key."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: ProcessContext) -> None:
        self._ctx = ctx

    def register_event_time(self, when: int | datetime) -> None:
        """Call ``on_timer`` once the watermark reaches ``when`` (epoch ms, or a datetime)."""
        op = self._ctx._op
        op.keyed.event_timers.register(op._ticks(when), self._ctx.key)

    def register_processing_time(self, epoch_ms: int) -> None:
        """Call ``on_timer`` once the flow's clock reaches ``epoch_ms``."""
        self._ctx._op.keyed.processing_timers.register(int(epoch_ms), self._ctx.key)

    def delete_event_time(self, when: int | datetime) -> None:
        """Cancel an event-time timer of the current key."""
        op = self._ctx._op
        op.keyed.event_timers.delete(op._ticks(when), self._ctx.key)

    def delete_processing_time(self, epoch_ms: int) -> None:
        """Cancel a processing-time timer of the current key."""
        self._ctx._op.keyed.processing_timers.delete(int(epoch_ms), self._ctx.key)


class ProcessContext:
    """What a process function sees for one record (or one timer).

    Attributes
    ----------
    key
        The record's key (a value, or a tuple for several key columns).
    timestamp
        The record's event time as it is in the record (or the timer's time in ``on_timer``).
    watermark
        The watermark before this record, epoch ms (``None`` before the first). In ``on_timer``
        of an event-time timer: the watermark whose advance fired the timer (at least the
        timer's time); :data:`END_WATERMARK` (2**62) when the timer fires because the input ended.
        In ``on_timer`` of a processing-time timer: the watermark when it fires.
    input_ended
        ``True`` only in ``on_timer`` when the input has ended: a bounded source is exhausted (or
        a draining stop ended it), the watermark jumped to the end and fires every event-time
        timer left. A heartbeat check that alerts on silence can skip those timers.
    state
        Keyed state: ``ctx.state("n", default=0)`` (a value), ``ctx.state.list("seen")``,
        ``ctx.state.map("by_merchant")``; each takes ``ttl="1h"``.
    timers
        ``ctx.timers.register_event_time(ts)`` / ``register_processing_time(ms)`` and deletes.

    Examples
    --------
    >>> import rheon as rh
    >>> def count(record, ctx):
    ...     n = ctx.state("n", default=0)
    ...     n.set(n.get() + 1)
    ...     ctx.emit({"card": ctx.key, "n": n.get()})
    >>> flow = rh.Flow("p"); out = rh.io.Collect()
    >>> rows = [{"card": "a", "ts": 0}, {"card": "b", "ts": 1}, {"card": "a", "ts": 2}]
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("card").process(count).sink(out)
    >>> flow.run(); out.rows
    [{'card': 'a', 'n': 1}, {'card': 'b', 'n': 1}, {'card': 'a', 'n': 2}]

    A heartbeat check: alert when a host is silent for 5 s, but not because the input ended.

    >>> def beat(record, ctx):
    ...     ctx.timers.register_event_time(record["ts"] + 5_000)
    >>> def silent(timestamp, ctx):
    ...     if ctx.input_ended:
    ...         return  # the replay is over: not a silence
    ...     ctx.emit({"host": ctx.key, "due": timestamp, "watermark": ctx.watermark})
    >>> rows = [{"host": "h1", "ts": 0}, {"host": "h2", "ts": 1_000}, {"host": "h2", "ts": 9_000}]
    >>> flow = rh.Flow("beat"); alerts = rh.io.Collect()
    >>> hosts = flow.source(rh.io.Records(rows), time="ts").key_by("host")
    >>> hosts.process(beat, on_timer=silent).sink(alerts)
    >>> flow.run(); alerts.rows
    [{'host': 'h1', 'due': 5000, 'watermark': 9000}, {'host': 'h2', 'due': 6000, 'watermark': 9000}]
    """

    __slots__ = ("_bound", "_op", "input_ended", "key", "state", "timers", "timestamp", "watermark")

    def __init__(self, op: KeyedProcess) -> None:
        self._op = op
        self._bound: dict[str, Any] | None = None
        self.key: Any = None
        self.timestamp: Any = None
        self.watermark: int | None = None
        self.input_ended: bool = False
        self.state = _StateAccess(self)
        self.timers = _Timers(self)

    def _bind(self, key: Any) -> None:
        self.key = key
        self._bound = None

    def _cells(self) -> dict[str, Any]:
        if self._bound is None:
            self._bound = self._op.keyed.cells(self.key)
        return self._bound

    @property
    def now_ms(self) -> int:
        """Processing time (the flow's clock), epoch ms."""
        return self._op._now_ms()

    def emit(self, row: Row) -> None:
        """Send a row (a dict) downstream."""
        self._op._emit(None, row)

    def output(self, tag: str, row: Row) -> None:
        """Send a row to the side output ``tag`` (read it with ``.side_output(tag)``)."""
        self._op._emit(tag, row)


class KeyedProcess(Operator):
    """Runs ``fn(record, ctx)`` per record and ``on_timer(timestamp, ctx)`` per timer."""

    kind = "process"
    stateful = True
    ticking = True

    def __init__(
        self,
        name: str,
        keys: Sequence[str],
        time_col: str | None,
        fn: ProcessFn,
        on_timer: TimerFn | None,
        clock: Clock,
        time_type: TimeType | None,
        ttl_of: Callable[[str], int],
        backend: KeyedStateBackend | None = None,
    ) -> None:
        super().__init__(name)
        self.keys = list(keys)
        self.time_col = time_col
        self.fn = fn
        self.on_timer = on_timer
        self.clock = clock
        self.ttype = time_type
        self.ttl_of = ttl_of
        self.keyed = KeyedService(backend)
        self.state_kinds = StateKinds(self.label)
        self.forwarded = MIN_WM
        self.ctx = ProcessContext(self)
        self._out: dict[str | None, tuple[list[Row], list[int]]] = {}
        self._dead: list[tuple[str, str]] = []
        self._current_wm = MIN_WM

    # -- helpers used by the context ---------------------------------------------------------

    def _now_ms(self) -> int:
        return self.clock.now_ns() // 1_000_000

    def _ttl(self, ttl: str | None) -> int | None:
        return None if ttl is None else self.ttl_of(ttl)

    def _ticks(self, when: int | datetime) -> int:
        per_ms = self.ttype.ticks_per_ms if self.ttype is not None else 1
        if isinstance(when, datetime):
            if when.tzinfo is None:
                msg = f"{self.label}: timer time {when!r} has no time zone; give an aware datetime or epoch ms"
                raise FlowError(msg)
            return int(when.timestamp() * 1000) * per_ms
        return int(when) * per_ms

    def _from_ticks(self, ticks: int) -> Any:
        if self.ttype is None or not isinstance(self.ttype.dtype, pl.Datetime):
            return ticks
        return pl.Series([ticks]).cast(self.ttype.dtype).item()

    def _emit(self, tag: str | None, row: Row) -> None:
        if not isinstance(row, dict):
            msg = f"{self.label}: emit() takes a dict (got {type(row).__name__})"
            raise TypeError(msg)
        rows, wms = self._out.setdefault(tag, ([], []))
        rows.append(row)
        wms.append(self._current_wm)

    # -- timers --------------------------------------------------------------------------------

    def _fire(self, timers: KeyedTimers, upto: int, domain: str, watermark: int) -> None:
        """Fire the timers due at ``upto``; ``on_timer`` sees ``watermark`` (in ticks), the
        watermark whose advance fired them (event time) or that holds now (processing time)."""
        ctx = self.ctx
        ended = watermark >= MAX_WM
        fired_wm: int | None = None
        if ended:
            fired_wm = END_WATERMARK
        elif watermark > MIN_WM:
            fired_wm = watermark // (self.ttype.ticks_per_ms if self.ttype is not None else 1)
        try:
            for at, key in timers.due(upto):
                ctx._bind(key)
                ctx.timestamp = self._from_ticks(at) if domain == "event" else at
                if self.on_timer is None:
                    continue
                # Set per timer: on_timer may not change what the next one sees.
                ctx.watermark, ctx.input_ended = fired_wm, ended
                try:
                    self.on_timer(ctx.timestamp, ctx)
                except StateKindError:
                    raise  # a mistake in the code, not in one timer: stop the run
                except Exception as exc:
                    self.first_error = self.first_error or exc
                    reason = f"on_timer: {type(exc).__name__}: {exc}"
                    self._dead.append((reason, payload_of({"timer": ctx.timestamp, "key": key, "domain": domain})))
        finally:
            ctx.input_ended = False

    # -- running -------------------------------------------------------------------------------

    def _frame(self, tag: str | None, rows: list[Row], wms: list[int]) -> pl.DataFrame:
        """Emitted rows as a frame; a row whose field does not fit the others' type is a dead letter."""
        if not rows:
            return pl.DataFrame()
        frame, misfits = rows_to_frame(rows, wms)
        where = self.label if tag is None else f"{self.label} output {tag!r}"
        self._dead += [(misfit_reason(where, n, v, t), payload_of(rows[i])) for i, n, v, t in misfits]
        return frame

    def _outputs(self, batch: Batch) -> list[Output]:
        outputs: list[Output] = []
        main_rows, main_wms = self._out.pop(None, ([], []))
        outputs.append((MAIN, batch.with_frame(self._frame(None, main_rows, main_wms))))
        for tag, (rows, wms) in self._out.items():
            outputs.append(
                (
                    f"side:{tag}",
                    Batch(self._frame(tag, rows, wms), watermark=batch.watermark, ingest_ns=batch.ingest_ns),
                )
            )
        self._out = {}
        if self._dead:
            letters = dead_letter_frame(self.label, [r for r, _ in self._dead], [p for _, p in self._dead])
            outputs.append((DEAD, Batch(letters, watermark=batch.watermark, ingest_ns=batch.ingest_ns)))
            self._dead = []
        return outputs

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        frame = batch.frame
        with no_gc():
            if frame.height:
                if self.ttype is None and self.time_col is not None and self.time_col in frame.columns:
                    self.ttype = time_type_of(frame.schema[self.time_col], column=self.time_col, where=self.label)
                self._records(frame)
            if batch.watermark > self.forwarded:
                self._current_wm = self.forwarded
                self._fire(self.keyed.event_timers, batch.watermark, "event", batch.watermark)
                self.forwarded = batch.watermark
            self.keyed.end_batch()
        return self._outputs(batch)

    def _records(self, frame: pl.DataFrame) -> None:
        rows, _ = frame_to_rows(frame)
        pre = frame.get_column(WM_COL).to_list() if WM_COL in frame.columns else [self.forwarded] * frame.height
        key_of = key_getter(self.keys, frame.schema)
        per_ms = self.ttype.ticks_per_ms if self.ttype is not None else 1
        ctx, fn, time_col = self.ctx, self.fn, self.time_col
        timers = self.keyed.event_timers
        for row, wm in zip(rows, pre, strict=True):
            due = timers.next_time()
            if due is not None and due <= wm:
                self._current_wm = self.forwarded
                self._fire(timers, wm, "event", wm)
            self.forwarded = max(self.forwarded, wm)
            self._current_wm = wm
            try:
                ctx._bind(key_of(row))
            except KeyError as exc:
                self._dead.append((f"missing key column {exc}", payload_of(row)))
                continue
            except TypeError as exc:  # a key no dict can hold (a list)
                self._dead.append((f"bad key {self.keys}: {exc}", payload_of(row)))
                continue
            ctx.timestamp = row.get(time_col) if time_col is not None else None
            ctx.watermark = wm // per_ms if wm > MIN_WM else None
            try:
                fn(row, ctx)
            except StateKindError:
                raise  # a mistake in the code, not in one record: stop the run
            except Exception as exc:
                self.first_error = self.first_error or exc
                self._dead.append((f"{type(exc).__name__}: {exc}", payload_of(row)))

    @override
    def on_tick(self, now_ns: int, like: Batch) -> list[Output]:
        now_ms = now_ns // 1_000_000
        due = self.keyed.processing_timers.next_time()
        if due is None or due > now_ms:
            return []
        with no_gc():
            self._current_wm = self.forwarded
            self._fire(self.keyed.processing_timers, now_ms, "processing", self.forwarded)
            self.keyed.end_batch()
        return self._outputs(like)

    # -- checkpoints ---------------------------------------------------------------------------

    @override
    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "keys": self.keys, "function": getattr(self.fn, "__qualname__", repr(self.fn))}

    @override
    def close(self) -> None:
        self.keyed.close()

    @override
    def snapshot(self, files: SharedFiles) -> State:
        return {}, {
            **self.keyed.snapshot(files),
            "state_kinds": self.state_kinds.snapshot(),
            "forwarded": self.forwarded,
            "time_type": self.ttype,
        }

    @override
    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        self.keyed.restore(objects, files)
        self.state_kinds.restore(objects.get("state_kinds", {}))  # absent in older checkpoints
        self.forwarded = objects["forwarded"]
        if self.ttype is None:
            self.ttype = objects["time_type"]
