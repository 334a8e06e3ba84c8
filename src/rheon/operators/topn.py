"""Top-N: the ``n`` best rows of each window (:class:`WindowTopN`), or of each key so far
(:class:`RunningTopN`), each with its ``rank`` (1 is the best).

**Per window** (``windowed.agg(...).top_n(n, by)``): rows of a window's result stream are
grouped by ``(window_start, window_end)``, across keys. When the watermark passes a window's end
(judged per record, as windows fire), its ``n`` best rows come out, ordered by ``by``, ties by
the key columns (the columns before ``window_start``) ascending, then arrival; nulls of ``by``
rank last. With ``allowed_lateness``, a window's result row can be updated after it fired: the
update replaces the row of the same key columns, and the window's new top ``n`` comes out right
after it, if it changed. A window's rows are kept until the watermark passes its end plus the
lateness; a row that comes later is late.

**Running** (``key_by(k).top_n(n, by)``): each key's records are handled in event-time order
once the watermark has passed them (:mod:`rheon.operators.ordered`); each time a record enters
the key's best ``n`` (ties: the earlier record ranks first), the key's new best ``n`` rows come
out. State per key: its best ``n`` rows.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import polars as pl
from typing_extensions import override

from rheon.core.batch import MIN_WM, WM_COL, Batch
from rheon.core.collector import no_gc
from rheon.core.columns import ColumnTypes
from rheon.core.deadletters import payloads_of
from rheon.core.eventtime import TimeType, time_type_of
from rheon.operators.base import LATE, MAIN, Operator, Output, State
from rheon.operators.ordered import ORDER, SEQ, TIME, TRIGGER, OrderedKeyed, Released
from rheon.state.backends import KeyedStateBackend
from rheon.state.shared import SharedFiles

__all__ = ["RANK", "RunningTopN", "WindowTopN"]

RANK = "rank"
_TOP = "top_n_rows"  # state of a key: its best rows, best first, as dicts (with TIME and SEQ)
_BLOCK = "__ord_block"
_IDX = "__ord_idx"
_WS = "__top_ws"  # window start, ticks
_WE = "__top_we"  # window end, ticks
_WSEQ = "__top_seq"  # arrival number


class RunningTopN(OrderedKeyed):
    """Each key's best ``n`` records so far, emitted whenever they change."""

    kind = "top_n"

    def __init__(
        self,
        name: str,
        keys: Sequence[str],
        time_col: str,
        n: int,
        by: Sequence[str],
        descending: Sequence[bool],
        time_type: TimeType | None,
        backend: KeyedStateBackend | None = None,
    ) -> None:
        self.n = n
        self.by = list(by)
        self.descending = list(descending)
        super().__init__(name, keys, time_col, time_type, backend)

    @override
    def _signature(self) -> dict[str, Any]:
        return {"n": self.n, "by": self.by, "descending": self.descending, "per_window": False}

    @override
    def _handle(self, released: Released) -> dict[str, pl.DataFrame]:
        rows, block, n = released.rows, released.block, self.n
        fresh = rows.height
        cells = self._cells(released)
        kept: list[list[dict[str, Any]]] = [c.get(_TOP) or [] for c in cells]
        counts = [len(k) for k in kept]
        parts = [rows.with_columns(pl.Series(_BLOCK, block, dtype=pl.Int64))]
        if any(counts):
            old = pl.from_dicts(list(chain.from_iterable(kept)), schema=rows.schema)
            old_block = np.repeat(np.arange(len(kept), dtype=np.int64), counts)
            parts.append(old.with_columns(pl.Series(_BLOCK, old_block, dtype=pl.Int64)))
        every = pl.concat(parts, how="vertical_relaxed") if len(parts) > 1 else parts[0]
        # every row's place in the key's order: by, then time, then arrival (so earlier first)
        order = (
            every.with_row_index(_IDX)
            .sort(
                [_BLOCK, *self.by, TIME, SEQ],
                descending=[False, *self.descending, False, False],
                nulls_last=True,
            )
            .get_column(_IDX)
            .to_numpy()
            .astype(np.int64)
        )
        place = np.empty(len(order), dtype=np.int64)
        place[order] = np.arange(len(order), dtype=np.int64)
        # a full key's new record can enter only if it beats the key's n-th row
        offsets = np.cumsum([fresh, *counts])
        members: dict[int, list[int]] = {}
        bar = np.full(len(kept), np.iinfo(np.int64).max, dtype=np.int64)
        for b, count in enumerate(counts):
            if count:
                members[b] = sorted(place[offsets[b] : offsets[b] + count].tolist())
                if count >= n:
                    bar[b] = members[b][-1]
        fresh_place = place[:fresh]
        candidates = np.flatnonzero(fresh_place < bar[block])
        emitted: list[tuple[int, list[int]]] = []
        for i, b, p in zip(
            candidates.tolist(), block[candidates].tolist(), fresh_place[candidates].tolist(), strict=True
        ):
            best = members.setdefault(b, [])
            if len(best) < n:
                insort(best, p)
            elif p < best[-1]:
                insort(best, p)
                best.pop()
            else:
                continue
            emitted.append((i, list(best)))
        if not emitted:
            return {}
        changed = sorted({block[i] for i, _ in emitted})
        self._keep(every, order, [members[b] for b in changed], [cells[b] for b in changed])
        sizes = np.array([len(best) for _, best in emitted], dtype=np.int64)
        flat = np.fromiter(chain.from_iterable(best for _, best in emitted), dtype=np.int64, count=int(sizes.sum()))
        causes = np.repeat(np.array([i for i, _ in emitted], dtype=np.int64), sizes)
        ranks = np.arange(len(flat), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes) + 1
        out = every[order[flat]].drop(_BLOCK)
        out = out.with_columns(
            pl.Series(RANK, ranks, dtype=pl.Int64),
            pl.Series(TRIGGER, released.times[causes], dtype=pl.Int64),
            pl.Series(ORDER, rows.get_column(SEQ).to_numpy()[causes], dtype=pl.Int64),
        )
        return {MAIN: out}

    @staticmethod
    def _keep(every: pl.DataFrame, order: np.ndarray, bests: list[list[int]], cells: list[dict[str, Any]]) -> None:
        """Store each changed key's best rows (as dicts, best first)."""
        flat = np.fromiter(chain.from_iterable(bests), dtype=np.int64)
        dicts = every[order[flat]].drop(_BLOCK).to_dicts()
        start = 0
        for best, cell in zip(bests, cells, strict=True):
            cell[_TOP] = dicts[start : start + len(best)]
            start += len(best)


class WindowTopN(Operator):
    """The ``n`` best rows of each window of a window result stream, with their rank."""

    kind = "top_n"
    stateful = True
    PRUNE_ROWS = 1024
    """Without lateness, windows that have not fired are cut to their best ``n`` rows once the
    state has doubled (and holds more than this many rows)."""

    def __init__(
        self,
        name: str,
        n: int,
        by: Sequence[str],
        descending: Sequence[bool],
        key_columns: Sequence[str],
        lateness_ms: int,
        time_type: TimeType | None,
    ) -> None:
        super().__init__(name)
        self.n = n
        self.by = list(by)
        self.descending = list(descending)
        self.key_columns = list(key_columns)
        self.lateness_ms = lateness_ms
        self.lateness = lateness_ms
        self.ttype = time_type
        self.input = ColumnTypes(None, where=self.label, passthrough=(WM_COL,))
        self.rows: pl.DataFrame | None = None
        """Rows of windows not yet fired, or fired and still open to updates (user columns,
        ``_WS``, ``_WE``, ``_WSEQ``)."""
        self.wm = MIN_WM
        self.seq = 0
        self.pruned = 0
        if self.ttype is not None:
            self.lateness = self.ttype.ticks(lateness_ms)

    # -- ranking -------------------------------------------------------------------------------

    def _top(self, rows: pl.DataFrame) -> pl.DataFrame:
        """The best ``n`` rows of each window in ``rows``, in (end, start, rank) order, ranked."""
        keys = self.key_columns
        ranked = rows.sort(
            [_WE, _WS, *self.by, *keys, _WSEQ],
            descending=[False, False, *self.descending, *([False] * len(keys)), False],
            nulls_last=True,
        ).with_columns((pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(_WE, _WS)).alias(RANK))
        return ranked.filter(pl.col(RANK) <= self.n)

    def _shown(self, top: pl.DataFrame) -> pl.DataFrame:
        return top.drop(_WS, _WE, _WSEQ)

    # -- running ---------------------------------------------------------------------------------

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        outputs: list[Output] = []
        pieces: list[pl.DataFrame] = []
        lo = self.wm
        pre_all: np.ndarray | None = None
        with no_gc():
            if batch.frame.height:
                frame = batch.frame
                if WM_COL not in frame.columns:
                    frame = frame.with_columns(pl.lit(self.wm, pl.Int64).alias(WM_COL))
                pre_all = np.maximum.accumulate(np.maximum(frame.get_column(WM_COL).to_numpy(), self.wm))
                work = self._accept(frame, batch, outputs)
                if work is not None and work.height:
                    pieces += self._ingest(work, batch, outputs, pre_all, lo)
            pieces.append(self._fire(batch.watermark, pre_all, lo))
            self._expire()
        pieces = [p for p in pieces if p.height]
        main = pl.concat(pieces, how="vertical_relaxed") if len(pieces) > 1 else (pieces[0] if pieces else None)
        outputs.insert(0, (MAIN, batch.with_frame(main if main is not None else pl.DataFrame())))
        return outputs

    def _accept(self, frame: pl.DataFrame, batch: Batch, outputs: list[Output]) -> pl.DataFrame | None:
        work, bad, reasons = self.input.conform(frame)
        if bad is not None:
            outputs.append(self.dead(reasons, payloads_of(frame.filter(bad)), batch))
        for bound in ("window_start", "window_end"):
            present = bound in work.columns
            nulls = work.get_column(bound).is_null() if present else pl.Series([True] * work.height)
            if nulls.any():
                reason = f"record has no {bound} (it is null or missing): top_n ranks the rows of each window"
                outputs.append(self.dead(reason, payloads_of(work.filter(nulls)), batch))
                work = work.filter(~nulls)
        if not work.height:
            return None
        if self.ttype is None:
            self.ttype = time_type_of(work.schema["window_start"], column="window_start", where=self.label)
            self.lateness = self.ttype.ticks(self.lateness_ms)
        work = work.with_columns(
            pl.col("window_start").cast(pl.Int64).alias(_WS),
            pl.col("window_end").cast(pl.Int64).alias(_WE),
            pl.int_range(self.seq, self.seq + work.height, dtype=pl.Int64).alias(_WSEQ),
        )
        self.seq += work.height
        return work

    def _ingest(
        self, work: pl.DataFrame, batch: Batch, outputs: list[Output], pre_all: np.ndarray, lo: int
    ) -> list[pl.DataFrame]:
        """Add a batch's rows: late ones go out, updates of fired windows re-emit their top ``n``."""
        pre = np.maximum.accumulate(np.maximum(work.get_column(WM_COL).to_numpy(), self.wm))
        end = work.get_column(_WE).to_numpy()
        late = pre >= end + self.lateness
        if late.any():
            mask = pl.Series(late)
            late_rows = work.filter(mask).drop(_WS, _WE, _WSEQ)
            outputs.append((LATE, Batch(late_rows, watermark=batch.watermark, ingest_ns=batch.ingest_ns)))
        updates = np.flatnonzero((pre >= end) & ~late).tolist()
        work = work.drop(WM_COL)
        if not updates:
            self._add(work.filter(pl.Series(~late)))
            return []
        pieces: list[pl.DataFrame] = []
        start = 0
        for u in updates:  # rare: each is handled in turn, as it came
            self._add(work[start:u].filter(pl.Series(~late[start:u])))
            pieces.append(self._fire(int(pre[u]), pre_all, lo))
            pieces.append(self._update(work[u], int(pre[u])))
            start = u + 1
        self._add(work[start:].filter(pl.Series(~late[start:])))
        return pieces

    def _add(self, rows: pl.DataFrame) -> None:
        if not rows.height:
            return
        self.rows = rows if self.rows is None else pl.concat([self.rows, rows], how="diagonal_relaxed")
        if self.lateness == 0 and self.rows.height > max(self.PRUNE_ROWS, 2 * self.pruned):
            # nothing leaves a window before it fires: rows outside its best n never enter it
            self.rows = self._top(self.rows).drop(RANK)
            self.pruned = self.rows.height

    def _fire(self, upto: int, pre_all: np.ndarray | None, lo: int) -> pl.DataFrame:
        """The top ``n`` of the windows ending in ``(self.wm, upto]``, each with the watermark
        before the first record whose watermark passed its end."""
        rows, wm = self.rows, self.wm
        self.wm = max(self.wm, upto)
        if rows is None or upto <= wm:
            return pl.DataFrame()
        due = rows.filter((pl.col(_WE) > wm) & (pl.col(_WE) <= upto))
        if not due.height:
            return pl.DataFrame()
        top = self._top(due)
        ends = top.get_column(_WE).to_numpy()
        if pre_all is None or not len(pre_all):
            before = np.full(len(ends), lo, dtype=np.int64)
        else:
            before = np.concatenate([[lo], pre_all])[np.searchsorted(pre_all, ends, side="left")]
        return self._shown(top).with_columns(pl.Series(WM_COL, before, dtype=pl.Int64))

    def _update(self, row: pl.DataFrame, pre: int) -> pl.DataFrame:
        """A row for a window that has fired: it replaces the window's row of the same key columns;
        the window's new top ``n`` comes out if it changed."""
        start, end = row.get_column(_WS).item(), row.get_column(_WE).item()
        rows = self.rows if self.rows is not None else row.clear()
        here = (pl.col(_WS) == start) & (pl.col(_WE) == end)
        window, others = rows.filter(here), rows.filter(~here)
        before = self._shown(self._top(window))
        if self.key_columns:
            kept = window.join(row.select(self.key_columns), on=self.key_columns, how="anti", nulls_equal=True)
        else:
            kept = window.clear()
        window = pl.concat([kept, row], how="diagonal_relaxed")
        self.rows = pl.concat([others, window], how="diagonal_relaxed")
        after = self._shown(self._top(window))
        if after.equals(before):
            return pl.DataFrame()
        return after.with_columns(pl.lit(pre, pl.Int64).alias(WM_COL))

    def _expire(self) -> None:
        """Forget windows whose lateness has run out."""
        if self.rows is None or not self.rows.height:
            return
        open_ = self.rows.get_column(_WE) + self.lateness > self.wm
        if not open_.all():
            self.rows = self.rows.filter(open_)
            self.pruned = min(self.pruned, self.rows.height)

    # -- checkpoints ---------------------------------------------------------------------------

    @override
    def signature(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "n": self.n,
            "by": self.by,
            "descending": self.descending,
            "key_columns": self.key_columns,
            "allowed_lateness_ms": self.lateness_ms,
            "per_window": True,
        }

    @override
    def snapshot(self, files: SharedFiles) -> State:
        frames = {"rows": self.rows} if self.rows is not None and self.rows.height else {}
        return frames, {
            "wm": self.wm,
            "seq": self.seq,
            "pruned": self.pruned,
            "time_type": self.ttype,
            "column_types": self.input.snapshot(),
        }

    @override
    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        self.rows = frames.get("rows")
        self.wm = objects["wm"]
        self.seq = objects["seq"]
        self.pruned = objects["pruned"]
        if self.ttype is None and objects["time_type"] is not None:
            self.ttype = objects["time_type"]
            self.lateness = self.ttype.ticks(self.lateness_ms)
        self.input.restore(objects["column_types"])
