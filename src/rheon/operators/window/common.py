"""What every window operator shares: validation, late routing, emission order, output shape.

Emission order is part of the contract (same input, same output, whatever the batching), so it
is defined per record: a window fires *before* the first record that arrives once the watermark
has passed its end, and windows that fire at the same point come out ordered by
``(window_end, window_start, key...)``. An allowed-lateness update comes out right after the
late record that caused it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
from typing_extensions import override

from rheon.core.batch import MAX_WM, MIN_WM, WM_COL, Batch
from rheon.core.columns import ColumnTypes
from rheon.core.deadletters import payloads_of
from rheon.core.errors import FlowError
from rheon.core.eventtime import TimeType, time_type_of
from rheon.core.frames import pick
from rheon.operators.aggregations import Aggregation
from rheon.operators.base import LATE, MAIN, Operator, Output, State
from rheon.operators.dense import DenseGroups, Workspace
from rheon.operators.exactsum import Post
from rheon.operators.packed import PACKED, Packing
from rheon.state.shared import SharedFiles
from rheon.time.windows import Session, WindowAssigner

__all__ = ["WE", "WS", "RecordBuffer", "WindowOperator"]

SEQ = "__seq"  # a row's arrival number, for aggregations that depend on order
WS = "__ws"  # window start, ticks
WE = "__we"  # window end, ticks
# Fewer rows than these and the fast paths gain nothing (their own set-up costs more):
DENSE_MIN_ROWS = 4_096  # grouping by counting (dense.py)
PACK_SORT_MIN_ROWS = 10_000  # sorting by one packed column (packed.py)
PACK_GROUP_MIN_ROWS = 50_000  # grouping by one packed column


class RecordBuffer:
    """Records waiting to be merged into a window's state.

    At low rates each record is its own batch; merging every one into the state would cost a
    dozen Polars calls per record, most of them for nothing until a window closes. Operators
    buffer records here and merge when something can fire or the buffer is big (``full``).
    Every 64 frames the buffer is compacted, since concatenating thousands of tiny frames at
    once is slow (it made window results 26 ms late at 10,000 events/s).

    Examples
    --------
    >>> buf = RecordBuffer(limit_rows=3)
    >>> buf.add(pl.DataFrame({"x": [1, 2]})); buf.full
    False
    >>> buf.add(pl.DataFrame({"x": [3]})); buf.full
    True
    >>> buf.take()["x"].to_list(), buf.take()
    ([1, 2, 3], None)
    """

    COMPACT_FRAMES = 64

    def __init__(self, limit_rows: int = 65_536) -> None:
        self.limit_rows = limit_rows
        self.frames: list[pl.DataFrame] = []
        self.rows = 0

    def add(self, frame: pl.DataFrame) -> None:
        self.frames.append(frame)
        self.rows += frame.height
        if len(self.frames) >= self.COMPACT_FRAMES:
            self.frames = [pl.concat(self.frames, how="vertical_relaxed", rechunk=True)]

    @property
    def full(self) -> bool:
        return self.rows >= self.limit_rows

    def take(self) -> pl.DataFrame | None:
        """Everything buffered, as one frame (``None`` if empty); the buffer is emptied."""
        if not self.frames:
            return None
        out = pl.concat(self.frames, how="vertical_relaxed") if len(self.frames) > 1 else self.frames[0]
        self.frames = []
        self.rows = 0
        return out


class WindowOperator(Operator):
    """Base of window operators.

    Subclasses implement :meth:`_segment` (add on-time records, fire what the watermark allows)
    and :meth:`_fire`; this class validates input, resolves the time type and assembles outputs.
    """

    kind = "window"
    stateful = True

    def __init__(
        self,
        name: str,
        keys: Sequence[str],
        time_col: str,
        aggs: Mapping[str, Aggregation],
        lateness_ms: int,
        assigner: WindowAssigner,
        time_type: TimeType | None = None,
    ) -> None:
        super().__init__(name)
        self.assigner = assigner
        self.keys = list(keys)
        self.time_col = time_col
        self.aggs = dict(aggs)
        self.lateness_ms = lateness_ms
        self.ttype = time_type
        self.wm = MIN_WM
        self.prefix = {field: f"__a{i}" for i, field in enumerate(self.aggs)}
        self.input_types: dict[str, pl.DataType] | None = None
        self.described = {field: repr(agg) for field, agg in self.aggs.items()}
        needed = list(dict.fromkeys([*self.keys, time_col, *(c for a in self.aggs.values() for c in a.inputs())]))
        defaults = {a.column: a.default_input for a in self.aggs.values() if a.column and a.default_input is not None}
        self.masks: list[pl.Expr] = []
        """``where=``: helper columns holding an aggregation's input where its condition holds."""
        for field, agg in list(self.aggs.items()):
            if agg.where is not None:
                masks, self.aggs[field] = agg.masked(f"{self.prefix[field]}_where")
                self.masks += masks
        self.numbered = any(agg.needs_order for agg in self.aggs.values())
        """Whether rows get arrival numbers (column ``SEQ``) for order-dependent aggregations."""
        if self.numbered:
            self.aggs = {field: agg.ordered(time_col, SEQ) for field, agg in self.aggs.items()}
        self.seq = 0
        """The next row's arrival number (checkpointed, so a replay numbers rows the same)."""
        self.failed: list[tuple[str, str]] = []
        """User functions that raised while computing results: ``(reason, payload)``."""
        self._set_aggs(self.aggs)
        self.input = ColumnTypes([*needed, WM_COL], where=self.label, defaults=defaults)
        """The columns buffered and aggregated, in one order and with fixed types (records of one
        stream may come with fields in any order, missing, extra or of drifting types)."""
        self.out_schema: pl.Schema | None = None
        self.no_results: pl.DataFrame | None = None
        """An empty frame of ``out_schema``, made once: most small batches fire nothing, and
        building it took ~0.1 ms, a third of a one-record batch's cost."""
        self.space = Workspace()  # scratch arrays for dense grouping
        self._init_state()
        if self.ttype is not None:
            self._resolved()

    def _set_aggs(self, aggs: Mapping[str, Aggregation]) -> None:
        self.aggs = dict(aggs)
        self.partial_exprs = [e for f, a in self.aggs.items() for e in a.partials(self.prefix[f])]
        self.partial_cols = [e.meta.output_name() for e in self.partial_exprs]
        self.final_exprs = [a.final(self.prefix[f]).alias(f) for f, a in self.aggs.items()]

    def _specialize(self, types: Mapping[str, pl.DataType]) -> None:
        """Pick each aggregation's implementation for its input column's type (once)."""
        self.input_types = dict(types)
        self._set_aggs({f: a.for_input(types[f]) if f in types else a for f, a in self.aggs.items()})

    def partial_frame(
        self, rows: pl.DataFrame, group: list[str], steps: Mapping[str, int] | None = None
    ) -> pl.DataFrame:
        """Raw records grouped by ``group`` into partial columns (``group``, then ``partial_cols``).

        A big batch whose groups form a dense grid of integers (``steps``: columns whose values
        lie on a grid, and its spacing) is grouped by counting (:mod:`rheon.operators.dense`)
        when every aggregation can be done that way.
        """
        if rows.height >= DENSE_MIN_ROWS:
            groups = DenseGroups.of(rows, group, steps, self.space)
            if groups is not None:
                done = self._dense_partials(rows, group, groups)
                if done is not None:
                    return done
        plans = []
        for field, agg in self.aggs.items():
            rows, exprs, post = agg.aggregate(rows, self.prefix[field])
            plans.append((exprs, post))
        return self._grouped(rows, group, [], plans)

    def _dense_partials(self, rows: pl.DataFrame, group: list[str], groups: DenseGroups) -> pl.DataFrame | None:
        parts, posts = [groups.columns()], []
        for field, agg in self.aggs.items():
            done = agg.dense(rows, self.prefix[field], groups)
            if done is None:
                return None
            parts.append(done[0])
            if done[1] is not None:
                posts.append(done[1])
        out = pl.DataFrame([column for part in parts for column in part.iter_columns()])
        for post in posts:
            out = post(out)
        return pick(out, [*group, *self.partial_cols])

    def _grouped(
        self,
        frame: pl.DataFrame,
        group: list[str],
        first: Sequence[pl.Expr],
        plans: list[tuple[list[pl.Expr], Post | None]],
    ) -> pl.DataFrame:
        """``frame`` grouped by ``group`` with ``first`` and each aggregation's expressions, each
        then completed by its step: ``group``, ``first``, then ``partial_cols``."""
        exprs = [*first, *(e for agg_exprs, _ in plans for e in agg_exprs)]
        posts = [post for _, post in plans if post is not None]
        packing = Packing.of(frame, group) if frame.height >= PACK_GROUP_MIN_ROWS and len(group) > 1 else None
        if packing is None:
            out = frame.group_by(group).agg(exprs)
        else:
            out = frame.group_by(packing.expr().alias(PACKED)).agg(exprs)
            out = out.select(*packing.unpacked(), pl.all().exclude(PACKED))
        for post in posts:
            out = post(out)
        if not posts:
            return out
        return pick(out, [*group, *(e.meta.output_name() for e in first), *self.partial_cols])

    # -- hooks -----------------------------------------------------------------------------

    @abstractmethod
    def _init_state(self) -> None:
        """Set up the operator's (empty) state."""

    def _resolved(self) -> None:
        """Called once the time type is known (sizes can be converted to ticks)."""

    @abstractmethod
    def _ingest(
        self, records: pl.DataFrame, work: pl.DataFrame, ticks: pl.Series, pre: pl.Series, hi: int
    ) -> tuple[list[pl.DataFrame], pl.DataFrame | None]:
        """Process a batch of valid records; fire up to ``hi``.

        ``records`` are the records as received (what the late output gets), ``work`` the same
        rows with just the columns the window reads (``self.input``), including ``WM_COL``.
        Returns the result frames in emission order and the late records (or ``None``).
        """

    @abstractmethod
    def _fire(self, hi: int, pre: pl.Series | None) -> pl.DataFrame | None:
        """Emit windows whose end is in ``(self.wm, hi]`` and advance ``self.wm`` to ``hi``."""

    # -- checkpoints -------------------------------------------------------------------------

    @override
    def signature(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "window": repr(self.assigner),
            "keys": self.keys,
            "time": self.time_col,
            "aggs": self.described,
            "allowed_lateness_ms": self.lateness_ms,
        }

    @override
    def state_table(self) -> pl.DataFrame:
        """The window state (panes or sessions per key, with the aggregates' partial columns)."""
        frames = self._state_frames()
        return next(iter(frames.values())) if frames else pl.DataFrame()

    @abstractmethod
    def _state_frames(self) -> dict[str, pl.DataFrame]:
        """The state's frames (after merging anything buffered)."""

    @abstractmethod
    def _load_frames(self, frames: dict[str, pl.DataFrame]) -> None:
        """Load the frames written by :meth:`_state_frames`."""

    @override
    def snapshot(self, files: SharedFiles) -> State:
        objects = {"wm": self.wm, "time_type": self.ttype, "input_types": self.input_types, "seq": self.seq}
        return self._state_frames(), {**objects, "column_types": self.input.snapshot()}

    @override
    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        self._init_state()
        self.wm = objects["wm"]
        self.seq = objects.get("seq", 0)
        if self.ttype is None:
            self.ttype = objects["time_type"]
        if self.ttype is not None:
            self._resolved()
        if self.input_types is None and objects.get("input_types") is not None:
            self._specialize(objects["input_types"])
        self.input.restore(objects.get("column_types"))
        self._load_frames(frames)

    # -- shared machinery ------------------------------------------------------------------

    @property
    def ticks_lateness(self) -> int:
        assert self.ttype is not None
        return self.ttype.ticks(self.lateness_ms)

    def _accept(self, frame: pl.DataFrame, batch: Batch, outputs: list[Output]) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The records of ``frame`` the window can use, as received and as ``self.input``'s
        columns; the others (a field of another type, no event time) go to the dead letters."""
        if WM_COL not in frame.columns:
            frame = frame.with_columns(pl.lit(self.wm, pl.Int64).alias(WM_COL))
        work, bad, reasons = self.input.conform(frame)
        if bad is not None:
            outputs.append(self.dead(reasons, payloads_of(frame.filter(bad)), batch))
            frame = frame.filter(~bad)
        if work.get_column(self.time_col).null_count():
            nulls = work.get_column(self.time_col).is_null()
            reason = f"record has no event time (column '{self.time_col}' is null)"
            outputs.append(self.dead(reason, payloads_of(frame.filter(nulls)), batch))
            frame, work = frame.filter(~nulls), work.filter(~nulls)
        if work.height and self.ttype is None:
            self.ttype = time_type_of(work.schema[self.time_col], column=self.time_col, where=self.label)
            self._resolved()
        if work.height:
            assert self.ttype is not None
            extent = self.ttype.ticks(
                self.assigner.gap_ms if isinstance(self.assigner, Session) else self.assigner.size_ms
            )
            times = work.get_column(self.time_col).cast(pl.Int64)
            if times.max() > MAX_WM - extent:  # type: ignore[operator]
                beyond = times > MAX_WM - extent
                reason = (
                    f"event time in column '{self.time_col}' is too close to the largest one a flow can handle: "
                    f"its windows would end after the end-of-input watermark ({MAX_WM} ticks) and never fire"
                )
                outputs.append(self.dead(reason, payloads_of(frame.filter(beyond)), batch))
                frame, work = frame.filter(~beyond), work.filter(~beyond)
        if self.masks:
            try:
                work = work.with_columns(self.masks)
            except pl.exceptions.PolarsError as exc:
                msg = f"{self.label}: a where= condition of {', '.join(self.described.values())} failed: {exc}"
                raise FlowError(msg) from None
        if self.numbered:
            work = work.with_columns(pl.int_range(self.seq, self.seq + work.height, dtype=pl.Int64).alias(SEQ))
            self.seq += work.height
        if work.height and self.input_types is None:
            schema = work.schema
            self._specialize({f: schema[a.column] for f, a in self.aggs.items() if a.column is not None})
        return frame, work

    def _results(self, merged: pl.DataFrame, *, present: bool = False) -> pl.DataFrame:
        """``keys, WS, WE, aggs...`` (and ``WM`` if there): merged partials turned into results;
        with ``present``, as :meth:`_present` gives them, in the same query."""
        for field, agg in self.aggs.items():
            merged = agg.finish(merged, self.prefix[field])
            self.failed += agg.take_errors()
        if present:
            return self._present(merged, self.final_exprs)
        extra = [pl.col(WM_COL)] if WM_COL in merged.columns else []
        return merged.select(*[pl.col(k) for k in self.keys], pl.col(WS), pl.col(WE), *self.final_exprs, *extra)

    def _present(self, results: pl.DataFrame, aggs: Sequence[pl.Expr] = ()) -> pl.DataFrame:
        """Result rows ``keys, window_start, window_end, aggs..., WM`` (bounds in the time type),
        from results, or from finished partials and the aggregations' final expressions."""
        assert self.ttype is not None
        out = results.select(
            *[pl.col(k) for k in self.keys],
            self.ttype.from_ticks(pl.col(WS)).alias("window_start"),
            self.ttype.from_ticks(pl.col(WE)).alias("window_end"),
            *(aggs or [pl.col(f) for f in self.aggs]),
            pl.col(WM_COL),
        )
        if self.out_schema is None:
            self.out_schema = out.drop(WM_COL).schema
        return out

    def finals(self, merged: pl.DataFrame) -> pl.DataFrame:
        """Result rows ``keys, window_start, window_end, aggs..., WM`` from merged partials."""
        return self._results(merged, present=True)

    def merge_frame(self, partials: pl.DataFrame, group: list[str], first: Sequence[pl.Expr] = ()) -> pl.DataFrame:
        """Partial rows merged per ``group``: ``group``, then ``first``, then ``partial_cols``."""
        plans = [agg.merge(partials, self.prefix[field]) for field, agg in self.aggs.items()]
        return self._grouped(partials, group, first, plans)

    def fired(self, merged: pl.DataFrame, pre: pl.Series | None, lo: int, *, ordered: bool = False) -> pl.DataFrame:
        """:meth:`finals` of fired windows, in emission order (see :meth:`order`; ``ordered``:
        they already are, and one query makes the results). To sort, the results are computed
        first, so the sort moves a narrow frame, not the partials."""
        if ordered:
            return self.finals(self.order(merged, pre, lo, ordered=True))
        return self._present(self.order(self._results(merged), pre, lo))

    tiebreak: tuple[str, ...] = (WS,)
    """Columns that order windows ending together, before the keys (window start, unless the
    window size is fixed and the start adds nothing)."""

    def order(self, windows: pl.DataFrame, pre: pl.Series | None, lo: int, *, ordered: bool = False) -> pl.DataFrame:
        """Sort fired windows into emission order and give each the watermark before it.

        A window fires before the first record whose watermark has passed its end (position
        ``len(pre)`` when none has: it fires at the end). That position only grows with the
        window's end, because watermarks only grow, so sorting by ``(end, start, keys)`` is
        already emission order. Downstream, a result carries the watermark that held before
        its position, as in Flink, where results precede the watermark that triggered them.
        """
        if not ordered:
            by = [WE, *self.tiebreak, *self.keys]
            packing = Packing.of(windows, by) if windows.height >= PACK_SORT_MIN_ROWS else None
            windows = windows.sort(by if packing is None else packing.expr())
        if pre is None or len(pre) == 0 or windows.height == 0:
            return windows.hstack([pl.Series(WM_COL, np.full(windows.height, lo, dtype=np.int64))])
        # NumPy, without a query (they add up on small batches). The ends are sorted and many
        # windows share one, so only the distinct ends are looked up.
        marks = pre.to_numpy()
        ends = windows.get_column(WE).to_numpy()
        first = np.flatnonzero(np.append(True, ends[1:] != ends[:-1]))
        found = np.searchsorted(marks, ends[first], side="left")
        positions = np.repeat(found, np.diff(np.append(first, len(ends))))
        before = marks[positions - 1]  # the watermark before position p: marks[p - 1], or lo at 0
        before[positions == 0] = lo
        return windows.hstack([pl.Series(WM_COL, before, dtype=pl.Int64)])

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        outputs: list[Output] = []
        results: list[pl.DataFrame] = []
        if batch.frame.height:
            records, work = self._accept(batch.frame, batch, outputs)
            if work.height:
                assert self.ttype is not None
                tick_series = work.get_column(self.time_col).cast(pl.Int64)
                pre = work.get_column(WM_COL)
                pieces, late = self._ingest(records, work, tick_series, pre, batch.watermark)
                results.extend(pieces)
                if late is not None and late.height:
                    outputs.append((LATE, Batch(late, watermark=batch.watermark, ingest_ns=batch.ingest_ns)))
        if batch.watermark > self.wm and self.ttype is not None:
            fired = self._fire(batch.watermark, None)
            if fired is not None:
                results.append(fired)
        elif batch.watermark > self.wm:
            self.wm = batch.watermark
        results = [r for r in results if r.height]
        if results:
            main = pl.concat(results, how="vertical_relaxed") if len(results) > 1 else results[0]
        else:
            if self.no_results is None and self.out_schema is not None:
                self.no_results = pl.DataFrame(schema=self.out_schema)
            main = self.no_results if self.no_results is not None else pl.DataFrame()
        outputs.insert(
            0,
            (MAIN, Batch(main, watermark=batch.watermark, ingest_ns=batch.ingest_ns, idle=batch.idle, end=batch.end)),
        )
        if self.failed:
            outputs.append(self.dead([r for r, _ in self.failed], [p for _, p in self.failed], batch))
            self.failed = []
        return outputs
