"""Session windows: per key, events less than ``gap`` apart belong to one session.

State is one row per session: ``[start, last event + gap)`` and its partial aggregates.

Records are processed in vectorized runs. The one thing that cannot be vectorized is a record
that arrives *behind* the watermark (its time is below the watermark before it): it may land in
a session that already fired, or bridge one, and the answer depends on exactly when it came. Such
records are handled one at a time, in order. A record at or ahead of the watermark can never
touch a session that has fired (that session ended at or before the watermark, so before the
record), which is why everything else can be merged in one pass.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from typing_extensions import override

from rheon.core.batch import MAX_WM, WM_COL
from rheon.core.frames import keep, pick, stack
from rheon.core.metrics import StateSize
from rheon.operators.dense import argsort
from rheon.operators.packed import key_lines
from rheon.operators.window.common import WE, WS, RecordBuffer, WindowOperator
from rheon.time.windows import Session

__all__ = ["SessionWindowOperator"]

T = "__t"
FIRED = "__fired"
GROUP = "__g"


class SessionWindowOperator(WindowOperator):
    """Keyed session window aggregation.

    A session fires when the watermark passes its end (last event + gap). With
    ``allowed_lateness``, a fired session is kept that much longer: a late record that falls in
    it (or within ``gap`` of it) updates it and the updated row is emitted at once. A record that
    touches no kept session and whose own session would already have ended more than
    ``allowed_lateness`` ago is late.
    """

    @override
    def _init_state(self) -> None:
        self.gap = 0
        self.sessions: pl.DataFrame | None = None
        # Records not yet merged into sessions (buffered until a session can close), and the
        # earliest end among open sessions, buffered records and fired-but-kept sessions: they
        # tell, without touching the state, whether a watermark step can do anything.
        self.pending = RecordBuffer()
        self.pending_min_end = MAX_WM
        self.min_open_end = MAX_WM
        self.min_fired_end = MAX_WM

    @override
    def _state_frames(self) -> dict[str, pl.DataFrame]:
        self._flush()
        return {"sessions": self.sessions} if self.sessions is not None else {}

    @override
    def _load_frames(self, frames: dict[str, pl.DataFrame]) -> None:
        self.sessions = frames.get("sessions")
        self._refresh_bounds()

    @override
    def state_size(self) -> StateSize:
        """Open sessions held (one per key and session) and their bytes."""
        sessions = self.sessions
        if sessions is None:
            return StateSize(0, 0)
        return StateSize(sessions.height, int(sessions.estimated_size()))

    @override
    def _resolved(self) -> None:
        assert self.ttype is not None
        assert isinstance(self.assigner, Session)
        self.gap = self.ttype.ticks(self.assigner.gap_ms)

    def _sessions(self, rows: pl.DataFrame, known: pl.DataFrame | None = None) -> pl.DataFrame:
        """Records (with their time in ``T``) made into sessions, merged with ``known`` sessions
        of the same keys that they touch: ``keys, WS, WE, partials``, a row per session.

        One sort of the records' and sessions' intervals ``[t, t + gap)`` by key and start finds
        every session (a new one begins where the key changes or the start is at or past the
        furthest end so far), then the records are aggregated once per session: no grouping by
        each distinct time first, and the session numbers are a dense range, which the counting
        path of :mod:`rheon.operators.dense` groups by.
        """
        n = rows.height
        spans = rows.select(*[pl.col(k) for k in self.keys], pl.col(T).alias(WS), (pl.col(T) + self.gap).alias(WE))
        if known is not None and known.height:
            spans = pl.concat([spans, known.select(*self.keys, WS, WE)], how="vertical_relaxed")
        starts, ends = spans.get_column(WS).to_numpy(), spans.get_column(WE).to_numpy()
        order, first, session_ends = self._boundaries(spans, starts, ends, n)
        number = np.zeros(len(order), dtype=np.int64)
        number[first[1:]] = 1
        session_of = np.empty(len(order), dtype=np.int64)
        session_of[order] = np.cumsum(number, out=number)
        bounds = spans[order[first]].with_columns(pl.Series(WE, session_ends, dtype=pl.Int64))
        part = self.partial_frame(rows.hstack([pl.Series(GROUP, session_of[:n])]), [GROUP])
        if spans.height > n:
            assert known is not None
            known = pl.DataFrame([pl.Series(GROUP, session_of[n:]), *pick(known, self.partial_cols).get_columns()])
            touched = np.isin(part.get_column(GROUP).to_numpy(), session_of[n:])
            merged = self.merge_frame(stack([known, keep(part, touched)]), [GROUP])
            part = stack([merged, keep(part, ~touched)])
        of_part: pl.DataFrame = bounds[part.get_column(GROUP)]
        return of_part.hstack(pick(part, self.partial_cols).get_columns())

    def _boundaries(
        self, spans: pl.DataFrame, starts: np.ndarray, ends: np.ndarray, records: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The order of ``spans`` by key and start, the positions in that order where a session
        begins (an interval that is its key's first, or starts at or past the furthest end of
        its key's earlier ones), and each session's end. The first ``records`` rows of ``spans``
        are records (intervals ``gap`` long), the others known sessions."""
        base = int(starts.min())
        width = int(ends.max()) - base + 1
        lines = key_lines(spans, self.keys, width)
        if lines is None:  # too wide to lay end to end: a running maximum per key
            by_key = spans.select(pl.arg_sort_by([*self.keys, WS])).to_series()
            ordered = spans[by_key].with_columns(pl.col(WE).cum_max().over(self.keys).alias("__reach"))
            furthest = ordered.get_column("__reach")
            changed = pl.any_horizontal([pl.col(k).ne_missing(pl.col(k).shift(1)) for k in self.keys])
            starting = ordered.select(changed).to_series() | (ordered.get_column(WS) >= furthest.shift(1))
            begins = starting.fill_null(value=False).to_numpy()
            begins[0] = True  # (a null key compares equal to the null shifted in)
            first = np.flatnonzero(begins)
            last = np.append(first[1:] - 1, len(by_key) - 1)
            return by_key.to_numpy(), first, furthest.to_numpy()[last]
        # Keys laid end to end on one line, so that one running maximum serves them all: key k's
        # intervals lie in [k * width, (k + 1) * width), past every earlier key's.
        order, on_line = argsort(lines + (starts - base))
        reach = on_line + self.gap
        if len(order) > records:  # known sessions: longer than a record's interval
            moved = np.flatnonzero(order >= records)
            reach[moved] = on_line[moved] + (ends - starts)[order[moved]]
        np.maximum.accumulate(reach, out=reach)
        opens = np.empty(len(order), dtype=bool)
        opens[0] = True
        np.greater_equal(on_line[1:], reach[:-1], out=opens[1:])
        first = np.flatnonzero(opens)
        last = np.append(first[1:] - 1, len(order) - 1)
        return order, first, reach[last] - lines[order[first]] + base

    def _split_state(self) -> tuple[pl.DataFrame | None, pl.DataFrame | None]:
        if self.sessions is None or self.sessions.height == 0:
            return None, None
        fired = self.sessions.filter(pl.col(FIRED))
        open_ = self.sessions.filter(~pl.col(FIRED)).drop(FIRED)
        return (open_ if open_.height else None), (fired if fired.height else None)

    def _add_run(self, rows: pl.DataFrame) -> None:
        if rows.height == 0:
            return
        self.pending.add(rows)
        earliest = rows.get_column(T).min()
        assert isinstance(earliest, int)
        self.pending_min_end = min(self.pending_min_end, earliest + self.gap)
        if self.pending.full:
            self._flush()

    def _refresh_bounds(self) -> None:
        state = self.sessions
        if state is None or state.height == 0:
            self.min_open_end = self.min_fired_end = MAX_WM
            return
        open_end, fired_end = state.select(
            pl.col(WE).filter(~pl.col(FIRED)).min().alias("open"),
            pl.col(WE).filter(pl.col(FIRED)).min().alias("fired"),
        ).row(0)
        self.min_open_end = MAX_WM if open_end is None else open_end
        self.min_fired_end = MAX_WM if fired_end is None else fired_end

    def _flush(self) -> None:
        rows = self.pending.take()
        if rows is None:
            return
        self.pending_min_end = MAX_WM
        open_, fired = self._split_state()
        merged = self._sessions(rows, open_)
        merged = merged.with_columns(pl.lit(False).alias(FIRED))
        self.sessions = pl.concat([fired, merged], how="vertical_relaxed") if fired is not None else merged
        self._refresh_bounds()

    @override
    def _fire(self, hi: int, pre: pl.Series | None) -> pl.DataFrame | None:
        lo = self.wm
        if hi <= lo:
            return None
        self.wm = hi
        lateness = self.ticks_lateness
        if min(self.min_open_end, self.pending_min_end) > hi and self.min_fired_end + lateness > hi:
            return None  # nothing closes and nothing runs out of allowed lateness in (lo, hi]
        self._flush()
        if self.sessions is None or self.sessions.height == 0:
            return None
        due = (~pl.col(FIRED)) & (pl.col(WE) <= hi)
        ready = self.sessions.filter(due)
        out = self.fired(ready.drop(FIRED), pre, lo) if ready.height else None
        state = self.sessions.with_columns((pl.col(FIRED) | due).alias(FIRED))
        self.sessions = state.filter(~(pl.col(FIRED) & (pl.col(WE) + lateness <= hi)))
        self._refresh_bounds()
        return out

    @override
    def _ingest(
        self, records: pl.DataFrame, work: pl.DataFrame, ticks: pl.Series, pre: pl.Series, hi: int
    ) -> tuple[list[pl.DataFrame], pl.DataFrame | None]:
        work = work.hstack([ticks.alias(T)])
        behind = (ticks < pre).arg_true().to_list()
        pieces: list[pl.DataFrame] = []
        late: list[pl.DataFrame] = []
        start = 0
        for i in behind:
            run = work.slice(start, i - start)
            self._add_run(run)
            pre_i = int(pre[i])
            fired = self._fire(pre_i, run.get_column(WM_COL))
            if fired is not None:
                pieces.append(fired)
            row = work.slice(i, 1)
            updated = self._behind(row, pre_i)
            if updated is None:
                pass
            elif updated.height == 0:
                late.append(records.slice(i, 1))
            else:
                pieces.append(updated)
            start = i + 1
        tail = work.slice(start)
        self._add_run(tail)
        fired = self._fire(hi, tail.get_column(WM_COL))
        if fired is not None:
            pieces.append(fired)
        return pieces, (pl.concat(late, how="diagonal") if late else None)

    def _behind(self, row: pl.DataFrame, pre_i: int) -> pl.DataFrame | None:
        """Handle one record behind the watermark.

        Returns ``None`` if it was absorbed into an open session, an empty frame if it is late,
        or the updated session row if it updated a fired one.
        """
        self._flush()
        t = int(row.get_column(T)[0])
        state = self.sessions
        overlap = None
        if state is not None and state.height:
            same = pl.lit(True)
            for k in self.keys:
                same = same & pl.col(k).eq_missing(row.get_column(k)[0])
            overlap = same & (pl.col(WS) < t + self.gap) & (pl.col(WE) > t)
            touching = state.filter(overlap)
        else:
            touching = None
        if touching is None or touching.height == 0:
            if t + self.gap + self.ticks_lateness <= pre_i:
                return row.clear()
            merged = self._sessions(row)
        else:
            merged = self._sessions(row, touching.drop(FIRED))
        done = bool(merged.get_column(WE)[0] <= pre_i)
        merged = merged.with_columns(pl.lit(done).alias(FIRED))
        rest = state.filter(~overlap) if state is not None and overlap is not None else None
        self.sessions = pl.concat([rest, merged], how="vertical_relaxed") if rest is not None else merged
        self._refresh_bounds()
        if not done:
            return None
        return self.finals(merged.drop(FIRED).with_columns(pl.lit(pre_i, pl.Int64).alias(WM_COL)))
