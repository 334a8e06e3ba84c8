"""Keyed operators that handle each key's records in event-time order: what ``dedup``,
``changes`` and the running ``top_n`` share.

Records wait in a buffer until the watermark reaches their time. They are then *released*: the
released rows are sorted by key, time and arrival and handed to the operator as one frame, so
that it works on each key's rows side by side with Polars and NumPy and runs Python per key,
not per record. Outputs carry, as window results do, the watermark that held before the time
that released them.

A record is **late** when, at its arrival, a record with a later time had already been
released: it can no longer take its place in the order. That is the watermark's test loosened
to what order needs (as for patterns, ``rheon.cep``): a record behind the watermark still takes
its place if nothing later has been handled yet, so these operators run on the results of
windows, whose time (``window_start``) is behind the watermark that closed them. Lateness is
computed from the per-record watermarks, so it does not depend on batching.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
from typing_extensions import override

from rheon.core.batch import MAX_WM, MIN_WM, WM_COL, Batch
from rheon.core.collector import no_gc
from rheon.core.columns import ColumnTypes
from rheon.core.deadletters import payloads_of
from rheon.core.errors import FlowError
from rheon.core.eventtime import TimeType, time_type_of
from rheon.operators._keys import NAN_KEY
from rheon.operators.base import LATE, MAIN, Operator, Output, State
from rheon.state.backends import KeyedStateBackend
from rheon.state.service import KeyedService
from rheon.state.shared import SharedFiles

__all__ = [
    "HELPER",
    "ORDER",
    "SEQ",
    "TIME",
    "TRIGGER",
    "OrderedKeyed",
    "Released",
    "first_at_or_after",
    "late_behind_frontier",
    "watermarks_before",
]

HELPER = "__ord_"
"""Prefix of the helper columns; outputs lose every column that starts with it."""
TIME = "__ord_t"  # a record's event time in ticks
SEQ = "__ord_seq"  # a record's arrival number (checkpointed), which breaks ties in time
TRIGGER = "__ord_trigger"  # an output's time: the time of the record whose handling made it
ORDER = "__ord_order"  # an output's place among outputs of the same time: that record's SEQ


@dataclass(frozen=True)
class Released:
    """Rows whose time the watermark has reached, in (key, time, arrival) order.

    ``rows`` holds the user's columns plus ``TIME`` and ``SEQ``; ``times`` is ``TIME`` as an
    array; ``heads[b]`` is the position of key ``b``'s first row, ``block[i]`` the key number of
    row ``i`` and ``keys[b]`` key ``b`` as a Python value (a tuple for several key columns).
    """

    rows: pl.DataFrame
    times: np.ndarray
    heads: np.ndarray
    block: np.ndarray
    keys: list[Any]

    @property
    def ends(self) -> np.ndarray:
        """The position of each key's last row."""
        return np.append(self.heads[1:] - 1, len(self.times) - 1)


def first_at_or_after(groups: np.ndarray, times: np.ndarray, q_groups: np.ndarray, q_times: np.ndarray) -> np.ndarray:
    """For each query ``(group, time)``: the position of the first element of ``(groups, times)``
    (sorted by group, then time) with the same group and a time at or after the query's, or -1.

    One stable sort of data and queries together: a query sorts before data of the same group
    and time, and the next data element after it is the answer.

    >>> groups, times = np.array([0, 0, 0, 1]), np.array([1, 5, 5, 2])
    >>> first_at_or_after(groups, times, np.array([0, 0, 0, 1, 1]), np.array([0, 5, 6, 2, 3])).tolist()
    [0, 1, -1, 3, -1]
    """
    n, m = len(times), len(q_times)
    if not m:
        return np.empty(0, dtype=np.int64)
    all_groups = np.concatenate([q_groups, groups])
    all_times = np.concatenate([q_times, times])
    kind = np.concatenate([np.zeros(m, dtype=np.int8), np.ones(n, dtype=np.int8)])
    order = np.lexsort((kind, all_times, all_groups))
    data = np.where(order >= m, order - m, n)
    following = np.minimum.accumulate(data[::-1])[::-1]  # data sorted by (group, time) keep their order
    queries = order < m
    found = np.empty(m, dtype=np.int64)
    found[order[queries]] = following[queries]
    hit = found < n
    same = np.zeros(m, dtype=bool)
    same[hit] = groups[found[hit]] == q_groups[hit]
    return np.where(same, found, -1)


def late_behind_frontier(t: np.ndarray, pre: np.ndarray, frontier: int, buffered: np.ndarray | None) -> np.ndarray:
    """Which records are late by the frontier rule: a record with a later time had been
    released (handled in event-time order) when they arrived.

    ``t`` are the records' times in arrival order, ``pre`` the (non-decreasing) watermark before
    each, ``frontier`` the latest time released before the batch, ``buffered`` the times of
    records still waiting. Record ``j`` is released before record ``i`` when it arrived earlier
    (or was buffered) and the watermark before ``i`` has reached its time; ``i`` is late if its
    time is below the latest time released before it. Computed from the per-record
    watermarks, so it does not depend on batching.

    >>> late_behind_frontier(np.array([5, 1, 9, 2]), np.array([0, 0, 6, 6]), 0, None).tolist()
    [False, False, False, True]
    """
    behind: np.ndarray = t < pre
    if not behind.any():  # the usual case: no record behind the watermark
        return behind
    n = len(t)
    released = np.full(n + 1, frontier, dtype=np.int64)
    np.maximum.at(released, np.maximum(np.arange(1, n + 1), np.searchsorted(pre, t, side="left")), t)
    if buffered is not None and len(buffered):
        np.maximum.at(released, np.searchsorted(pre, buffered, side="left"), buffered)
    late: np.ndarray = t < np.maximum.accumulate(released)[:n]
    return late


def watermarks_before(triggers: np.ndarray, pre: np.ndarray | None, lo: int) -> np.ndarray:
    """The watermark each output carries: the one that held before the watermark reached the
    output's trigger time (``pre``: the watermark before each input record; ``lo``: before the
    batch), never above the trigger, as in Flink, where results precede the watermark that
    made them final.

    >>> watermarks_before(np.array([3, 10]), np.array([2, 5, 8]), 0).tolist()
    [2, 8]
    """
    if pre is None or not len(pre):
        return np.full(len(triggers), lo, dtype=np.int64)
    before = np.concatenate([[lo], pre])  # before[p]: the watermark before record p
    wm: np.ndarray = np.minimum(before[np.searchsorted(pre, triggers, side="left")], triggers)
    return wm


class OrderedKeyed(Operator):
    """Base of the keyed operators that see each key's records in event-time order.

    Subclasses implement :meth:`_handle` (released rows in, output frames out) and may fire
    timers in :meth:`_expire`; state lives in ``self.keyed`` (a :class:`KeyedService`).
    """

    stateful = True

    def __init__(
        self,
        name: str,
        keys: Sequence[str],
        time_col: str,
        time_type: TimeType | None,
        backend: KeyedStateBackend | None = None,
    ) -> None:
        super().__init__(name)
        self.keys = list(keys)
        self.time_col = time_col
        self.ttype = time_type
        self.keyed = KeyedService(backend)
        self.input = ColumnTypes(None, where=self.label, passthrough=(WM_COL,))
        self.pending: list[pl.DataFrame] = []
        """Buffered records (user columns, ``TIME``, ``SEQ``), in arrival order."""
        self.pending_min: int | None = None
        self.wm = MIN_WM
        self.frontier = MIN_WM
        """The latest time released: a record behind it at arrival is late."""
        self.seq = 0
        """The next record's arrival number."""
        if self.ttype is not None:
            self._resolved()

    # -- hooks -----------------------------------------------------------------------------

    def _resolved(self) -> None:
        """Called once the time type is known (durations can be converted to ticks)."""

    @abstractmethod
    def _handle(self, released: Released) -> dict[str, pl.DataFrame]:
        """Handle released rows; outputs per tag, each with ``TRIGGER`` and ``ORDER`` columns."""

    def _expire(self) -> None:
        """The frontier moved: drop state that no record to come can need."""

    def _signature(self) -> dict[str, Any]:
        """What else must stay the same for the state to be restored."""
        return {}

    # -- running -----------------------------------------------------------------------------

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        outputs: list[Output] = []
        produced: dict[str, list[pl.DataFrame]] = {}
        pre: np.ndarray | None = None
        lo = self.wm
        with no_gc():
            if batch.frame.height:
                pre = self._accept(batch.frame, batch, outputs)
            released = self._release(batch.watermark)
            if released is not None:
                for tag, frame in self._handle(released).items():
                    if frame.height:
                        produced.setdefault(tag, []).append(frame)
                self._expire()
            self.wm = max(self.wm, batch.watermark)
            self.keyed.end_batch()
        outputs.insert(0, (MAIN, batch.with_frame(self._emit(produced.pop(MAIN, []), pre, lo))))
        for tag, frames in produced.items():
            outputs.append(
                (tag, Batch(self._emit(frames, pre, lo), watermark=batch.watermark, ingest_ns=batch.ingest_ns))
            )
        return outputs

    def _accept(self, frame: pl.DataFrame, batch: Batch, outputs: list[Output]) -> np.ndarray:
        """Buffer the batch's records; late ones, and ones without a usable time, go out.

        Returns the watermark before each record of the batch (never going back)."""
        if WM_COL not in frame.columns:
            frame = frame.with_columns(pl.lit(self.wm, pl.Int64).alias(WM_COL))
        pre = np.maximum.accumulate(np.maximum(frame.get_column(WM_COL).to_numpy(), self.wm))
        work, bad, reasons = self.input.conform(frame)
        if bad is not None:
            outputs.append(self.dead(reasons, payloads_of(frame.filter(bad)), batch))
        if self.time_col not in work.columns:
            msg = f"{self.label}: the input has no time column {self.time_col!r} (columns: {', '.join(work.columns)})"
            raise FlowError(msg)
        if work.get_column(self.time_col).null_count():
            nulls = work.get_column(self.time_col).is_null()
            reason = f"record has no event time (column '{self.time_col}' is null)"
            outputs.append(self.dead(reason, payloads_of(work.filter(nulls)), batch))
            work = work.filter(~nulls)
        if not work.height:
            return pre
        if self.ttype is None:
            self.ttype = time_type_of(work.schema[self.time_col], column=self.time_col, where=self.label)
            self._resolved()
        work = work.with_columns(
            pl.col(self.time_col).cast(pl.Int64).alias(TIME),
            pl.int_range(self.seq, self.seq + work.height, dtype=pl.Int64).alias(SEQ),
        )
        self.seq += work.height
        t = work.get_column(TIME).to_numpy()
        keep = np.ones(len(t), dtype=bool)
        beyond = t > MAX_WM
        if beyond.any():
            reason = (
                f"event time in column '{self.time_col}' is beyond the end-of-input watermark ({MAX_WM} ticks): "
                "the record could never be released"
            )
            outputs.append(self.dead(reason, payloads_of(work.filter(pl.Series(beyond))), batch))
            keep &= ~beyond
        late = self._behind(t, work.get_column(WM_COL).to_numpy()) & keep
        if late.any():
            rows = work.filter(pl.Series(late)).drop(TIME, SEQ)
            outputs.append((LATE, Batch(rows, watermark=batch.watermark, ingest_ns=batch.ingest_ns)))
            keep &= ~late
        if keep.any():
            self.pending.append((work if keep.all() else work.filter(pl.Series(keep))).drop(WM_COL))
            low = int(t[keep].min())
            self.pending_min = low if self.pending_min is None else min(self.pending_min, low)
        return pre

    def _behind(self, t: np.ndarray, wm: np.ndarray) -> np.ndarray:
        """Which records are late (:func:`late_behind_frontier`)."""
        pre = np.maximum.accumulate(np.maximum(wm, self.wm))
        buffered = np.concatenate([f.get_column(TIME).to_numpy() for f in self.pending]) if self.pending else None
        return late_behind_frontier(t, pre, self.frontier, buffered)

    def _release(self, hi: int) -> Released | None:
        """The buffered rows with times up to ``hi``, sorted by key, time and arrival."""
        if self.pending_min is None or self.pending_min > hi:
            return None
        buffer = pl.concat(self.pending, how="diagonal_relaxed") if len(self.pending) > 1 else self.pending[0]
        t = buffer.get_column(TIME).to_numpy()
        ready = t <= hi
        if ready.all():
            rows, self.pending, self.pending_min = buffer, [], None
        else:
            mask = pl.Series(ready)
            rows, rest = buffer.filter(mask), buffer.filter(~mask)
            self.pending, self.pending_min = [rest], int(t[~ready].min())
        self.frontier = max(self.frontier, int(t[ready].max()))
        return self._sorted(rows)

    def _sorted(self, rows: pl.DataFrame) -> Released:
        keys = self.keys
        n = rows.height
        if n > 1:
            rows = rows.sort([*keys, TIME, SEQ])
        first = np.zeros(n, dtype=bool)
        if keys and n > 1:
            same = rows.select(pl.all_horizontal([pl.col(k).eq_missing(pl.col(k).shift(1)) for k in keys]))
            first = ~same.to_series().to_numpy()
        first[0] = True
        heads = np.flatnonzero(first)
        block = np.cumsum(first) - 1
        return Released(rows, rows.get_column(TIME).to_numpy(), heads, block, self._key_values(rows[heads]))

    def _key_values(self, heads: pl.DataFrame) -> list[Any]:
        """The keys of ``heads`` as Python values, as ``key_by`` operators see them (one value, or a
        tuple for several columns; every NaN is ``NAN_KEY``)."""
        keys = self.keys
        if not keys:
            return [()] * heads.height
        floats = [i for i, k in enumerate(keys) if heads.schema[k].is_float()]
        if len(keys) == 1:
            values = heads.get_column(keys[0]).to_list()
            return [NAN_KEY if v != v else v for v in values] if floats else values
        tuples = heads.select(keys).rows()
        if floats:
            return [tuple(NAN_KEY if (i in floats and v != v) else v for i, v in enumerate(row)) for row in tuples]
        return tuples

    def _cells(self, released: Released) -> list[dict[str, Any]]:
        """The state dict of each released key."""
        cells = self.keyed.cells
        try:
            return [cells(key) for key in released.keys]
        except TypeError as exc:  # a key no dict can hold (a list)
            msg = f"{self.label}: a key of {self.keys} cannot be used as a key ({exc}); key by plain values"
            raise FlowError(msg) from None

    def _emit(self, frames: list[pl.DataFrame], pre: np.ndarray | None, lo: int) -> pl.DataFrame:
        """Outputs in the order they were made, each with the watermark before it."""
        if not frames:
            return pl.DataFrame()
        out = pl.concat(frames, how="diagonal_relaxed") if len(frames) > 1 else frames[0]
        if out.height > 1:
            out = out.sort(TRIGGER, ORDER, maintain_order=True)
        wm = watermarks_before(out.get_column(TRIGGER).to_numpy(), pre, lo)
        shown = [c for c in out.columns if not c.startswith(HELPER) and c != WM_COL]
        return out.select(shown).hstack([pl.Series(WM_COL, wm, dtype=pl.Int64)])

    # -- checkpoints ---------------------------------------------------------------------------

    @override
    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "keys": self.keys, "time": self.time_col, **self._signature()}

    @override
    def close(self) -> None:
        self.keyed.close()

    @override
    def snapshot(self, files: SharedFiles) -> State:
        frames: dict[str, pl.DataFrame] = {}
        if self.pending:
            frames["buffer"] = pl.concat(self.pending, how="diagonal_relaxed")
            self.pending = [frames["buffer"]]
        return frames, {
            **self.keyed.snapshot(files),
            "wm": self.wm,
            "frontier": self.frontier,
            "seq": self.seq,
            "time_type": self.ttype,
            "column_types": self.input.snapshot(),
        }

    @override
    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        self.keyed.restore(objects, files)
        buffer = frames.get("buffer")
        self.pending = [buffer] if buffer is not None and buffer.height else []
        self.pending_min = int(buffer.get_column(TIME).min()) if self.pending else None  # type: ignore[union-attr, arg-type]
        self.wm = objects["wm"]
        self.frontier = objects["frontier"]
        self.seq = objects["seq"]
        if self.ttype is None and objects["time_type"] is not None:
            self.ttype = objects["time_type"]
            self._resolved()
        self.input.restore(objects["column_types"])
