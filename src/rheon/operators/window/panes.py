"""Tumbling and sliding windows, computed pane by pane.

Records are aggregated once into their pane (``gcd(size, every)`` wide) per key; when the
watermark passes a window's end, the window's panes are combined into its result. State is one
row of partial aggregates per (key, pane) that some open window still needs: NumPy arrays per
key slot when the key is one integer column (or none) and every aggregation can be held so
(:mod:`rheon.operators.window.arrays`), else a Polars frame merged by group-bys.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from typing_extensions import override

from rheon.core.batch import WM_COL
from rheon.core.frames import keep, pick, stack
from rheon.core.metrics import StateSize
from rheon.operators.dense import argsort
from rheon.operators.packed import key_lines
from rheon.operators.window.arrays import PANE, PaneArrays
from rheon.operators.window.common import WE, WS, RecordBuffer, WindowOperator
from rheon.time.windows import PaneGeometry, Sliding, Tumbling

__all__ = ["PaneWindowOperator"]


class PaneWindowOperator(WindowOperator):
    """Keyed tumbling or sliding window aggregation.

    Per record, against the watermark before it:

    * if every window of the record ended more than ``allowed_lateness`` ago, the record is
      *late*: it goes to the late output and changes nothing;
    * otherwise it is added to its pane, so every window of it that has not fired includes it;
    * each window of it that already fired but is within ``allowed_lateness`` is emitted again,
      updated, right after the record.
    """

    tiebreak = ()  # windows of one size: the end fixes the start
    ARRAYS = True
    """Whether state is held as arrays where it can be (tests and benchmarks compare both forms)."""

    @override
    def _init_state(self) -> None:
        self.geo: PaneGeometry | None = None
        self.panes: pl.DataFrame | None = None
        """The state as a frame (when ``arrays`` cannot hold it)."""
        self.arrays: PaneArrays | None = None
        """The state as arrays (see the module's docstring)."""
        self.arrays_fit = self.ARRAYS and len(self.keys) <= 1
        """Whether the keys and aggregations can be held as arrays at all."""
        self.retry_in = 0
        """Merges into the frame before the next try to hold the state as arrays."""
        self.retry_every = 32
        self.pending = RecordBuffer()

    @override
    def _state_frames(self) -> dict[str, pl.DataFrame]:
        self._flush()
        panes = self.arrays.frame() if self.arrays is not None else self.panes
        return {"panes": panes} if panes is not None else {}

    @override
    def _load_frames(self, frames: dict[str, pl.DataFrame]) -> None:
        self.panes = frames.get("panes")
        self._to_arrays()

    @override
    def state_size(self) -> StateSize:
        """Panes held (one per key and pane) and their bytes."""
        if self.arrays is not None:
            return StateSize(self.arrays.rows, self.arrays.nbytes)
        panes = self.panes
        if panes is None:
            return StateSize(0, 0)
        return StateSize(panes.height, int(panes.estimated_size()))

    def _to_arrays(self) -> bool:
        """Hold the state as arrays from now on if it can be (``self.arrays`` then set)."""
        if self.arrays is not None:
            return True
        if not self.arrays_fit or self.geo is None or self.input_types is None:
            return False
        accumulators = []
        for field, agg in self.aggs.items():
            accumulator = agg.accumulator(self.prefix[field], self.input_types.get(field))
            if accumulator is None:
                self.arrays_fit = False
                return False
            accumulators.append(accumulator)
        arrays = PaneArrays(self.keys[0] if self.keys else None, accumulators, self.geo)
        if self.panes is not None and not arrays.load(self.panes):
            return False
        self.arrays, self.panes = arrays, None
        return True

    def _to_frame(self) -> None:
        """Hold the state as a frame (a batch the arrays cannot hold came)."""
        assert self.arrays is not None
        self.panes, self.arrays = self.arrays.frame(), None
        # Tried again later, less often each time: a batch that does not fit (many keys with
        # few records each) is often followed by more like it.
        self.retry_every = min(2 * self.retry_every, 4096)
        self.retry_in = self.retry_every

    @override
    def _resolved(self) -> None:
        assert self.ttype is not None
        assert isinstance(self.assigner, Tumbling | Sliding)
        self.geo = PaneGeometry.of(self.assigner, ticks_per_ms=self.ttype.ticks_per_ms)

    # -- state -----------------------------------------------------------------------------

    def _add(self, rows: pl.DataFrame) -> None:
        """Add records to the panes (buffered until a window can fire: :class:`RecordBuffer`)."""
        if rows.height == 0:
            return
        self.pending.add(rows)
        if self.pending.full:
            self._flush()

    def _flush(self) -> None:
        rows = self.pending.take()
        if rows is None:
            return
        if self.arrays is None and self.arrays_fit:
            # Back to arrays once the frame's panes can be (a declined batch's have expired).
            self.retry_in -= 1
            if self.retry_in <= 0:
                self.retry_in = self.retry_every
                self._to_arrays()
        if self.arrays is not None:
            if self.arrays.add(rows):
                return
            self._to_frame()
        group = [*self.keys, PANE]
        part = self.partial_frame(rows, group, steps={PANE: self.geo.pane} if self.geo is not None else None)
        state = self.panes
        if state is None or state.height == 0:
            self.panes = part
            return
        # Only panes the state already has need merging; the rest (most of a big batch) are new.
        old = part.get_column(PANE) <= state.get_column(PANE).max()
        if not old.any():
            self.panes = stack([state, part])
            return
        merged = self.merge_frame(stack([state, keep(part, old)]), group)
        self.panes = stack([merged, keep(part, ~old)])

    def _windows(self, panes: pl.DataFrame, lo: int, hi: int, starts: list[int] | None = None) -> pl.DataFrame:
        """Merged partials of the windows ending in ``(lo, hi]`` (restricted to ``starts``)."""
        g = self.geo
        assert g is not None
        if g.pane == g.size:
            start = panes.get_column(PANE).to_numpy()
            held = (start + g.size > lo) & (start + g.size <= hi)
            if starts is not None:
                held &= np.isin(start, starts)
            wins = keep(pick(panes, [*self.keys, PANE, *self.partial_cols]), held)
            begin = wins.get_column(PANE)
            ends = pl.Series(WE, begin.to_numpy() + g.size, dtype=pl.Int64)
            keys, values = [wins.get_column(k) for k in self.keys], [wins.get_column(c) for c in self.partial_cols]
            return pl.DataFrame([*keys, begin.alias(WS), ends, *values])
        if starts is None:
            running = self._running_windows(panes, lo, hi)
            if running is not None:
                return running
        wins = panes.with_columns(pl.int_ranges(0, g.windows_per_pane).alias("__k")).explode("__k")
        wins = wins.with_columns((g.last_start(pl.col(PANE)) - pl.col("__k") * g.every).alias(WS))
        wins = wins.with_columns((pl.col(WS) + g.size).alias(WE))
        wins = wins.filter((pl.col(WE) > pl.col(PANE)) & (pl.col(WE) > lo) & (pl.col(WE) <= hi))
        if starts is not None:
            wins = wins.filter(pl.col(WS).is_in(starts))
        return self.merge_frame(wins, [*self.keys, WS, WE])

    def _running_windows(self, panes: pl.DataFrame, lo: int, hi: int) -> pl.DataFrame | None:
        """Merged partials of the sliding windows ending in ``(lo, hi]``, from running sums over
        the panes sorted by key and time: a window's merge is the difference of the running sums
        at its last and first pane. ``None`` when an aggregation merges by more than addition
        (see :meth:`~rheon.operators.aggregations.Aggregation.running`) or when the windows to
        look at are many more than the panes hold.

        Every key is a candidate for every window end in the range that some pane could reach;
        candidates with no pane are dropped. This replaces copying each pane into each of its
        windows and grouping the copies, which took most of a sliding window's time.
        """
        g = self.geo
        assert g is not None
        plans = [agg.running(panes, self.prefix[field]) for field, agg in self.aggs.items()]
        if any(plan is None for plan in plans):
            return None
        pane = panes.get_column(PANE).to_numpy()
        first_end = self._next_end(max(lo, int(pane.min())))
        last_end = min(hi, int(pane.max()) + g.size)
        ends = np.arange(first_end, last_end + 1, g.every, dtype=np.int64)
        base = first_end - g.size
        inside = pane >= base
        if not inside.all():  # panes before every window in the range
            panes, pane = keep(panes, inside), pane[inside]
        if len(ends) == 0 or panes.height == 0:
            return panes.head(0).select(*self.keys, pl.col(PANE).alias(WS), pl.col(PANE).alias(WE), *self.partial_cols)
        lines = key_lines(panes, self.keys, last_end - base + 1)
        if lines is None:
            return None
        order, on_line = argsort(lines + (pane - base))
        sorted_keys = lines[order]
        key_first = np.flatnonzero(np.append(True, sorted_keys[1:] != sorted_keys[:-1]))
        if len(key_first) * len(ends) > 2 * panes.height * g.windows_per_pane + 1024:
            return None  # sparse in time: most (key, end) pairs would be empty
        key_line = sorted_keys[key_first][:, None]
        first = np.searchsorted(on_line, (key_line + (ends - g.size - base)).ravel())
        after = np.searchsorted(on_line, (key_line + (ends - base)).ravel())
        held = after > first
        first, after = first[held], after[held]
        window_end = np.tile(ends, len(key_first))[held]
        added = [name for names, _ in plans for name in names]  # type: ignore[misc]
        ordered = pick(panes, [*self.keys, *added])[order]
        columns = [*(ordered.get_column(k).gather(first) for k in self.keys)]
        columns += [pl.Series(WS, window_end - g.size), pl.Series(WE, window_end)]
        posts = []
        for names, post in plans:  # type: ignore[misc]
            for name in names:
                values = ordered.get_column(name)
                sums = pl.concat([pl.Series([0], dtype=values.dtype), values.fill_null(0).cum_sum().cast(values.dtype)])
                columns.append((sums.gather(after) - sums.gather(first)).alias(name))
            if post is not None:
                posts.append(post)
        out = pl.DataFrame(columns)
        for post in posts:
            out = post(out)
        return pick(out, [*self.keys, WS, WE, *self.partial_cols])

    def _next_end(self, after: int) -> int:
        """The first window end (of any key) after ``after``: ends fall on one residue of ``every``."""
        g = self.geo
        assert g is not None
        residue = (g.offset + g.size) % g.every
        return after + 1 + (residue - after - 1) % g.every

    @override
    def _fire(self, hi: int, pre: pl.Series | None) -> pl.DataFrame | None:
        lo = self.wm
        if hi <= lo:
            return None
        self.wm = hi
        lateness = self.ticks_lateness
        if self._next_end(lo) > hi and self._next_end(lo - lateness) > hi - lateness:
            return None  # no window ends, and no window's lateness runs out, in (lo, hi]
        self._flush()
        g = self.geo
        if self.arrays is not None:
            wins = self.arrays.windows(lo, hi)
            self.arrays.expire(hi, self.ticks_lateness)
            return self.fired(wins, pre, lo, ordered=True) if wins is not None else None
        panes = self.panes
        if g is None or panes is None or panes.height == 0:
            return None
        near = panes.filter((pl.col(PANE) < hi) & (pl.col(PANE) >= lo - g.size)) if g.pane < g.size else panes
        out = None
        if near.height:
            wins = self._windows(near, lo, hi)
            if wins.height:
                out = self.fired(wins, pre, lo)
        pane = panes.get_column(PANE).to_numpy()
        last_start = (pane - g.offset) // g.every * g.every + g.offset  # (as g.last_start)
        self.panes = keep(panes, last_start + g.size + self.ticks_lateness > hi)
        return out

    # -- records ---------------------------------------------------------------------------

    @override
    def _ingest(
        self, records: pl.DataFrame, work: pl.DataFrame, ticks: pl.Series, pre: pl.Series, hi: int
    ) -> tuple[list[pl.DataFrame], pl.DataFrame | None]:
        g = self.geo
        assert g is not None
        lateness = self.ticks_lateness
        # Column arithmetic in NumPy: a handful of C loops, no query planning per batch (the
        # per-batch cost that dominates at low rates, where a batch is one or a few records).
        # In place where it can be: each fresh array of a big batch costs its page faults.
        pane = np.subtract(ticks.to_numpy(), g.offset, dtype=np.int64)
        np.floor_divide(pane, g.pane, out=pane)
        np.multiply(pane, g.pane, out=pane)
        np.add(pane, g.offset, out=pane)
        wm = pre.to_numpy()
        if g.every == g.size:  # tumbling: a record's only window ends at its pane's end
            first_end = np.add(pane, g.size, out=self.space.array("first_end", len(pane), np.int64))
        else:
            first_end = np.subtract(pane, g.size + g.offset, out=self.space.array("first_end", len(pane), np.int64))
            np.floor_divide(first_end, g.every, out=first_end)
            np.multiply(first_end, g.every, out=first_end)
            np.add(first_end, g.offset + g.every + g.size, out=first_end)
        work = work.hstack([pl.Series(PANE, pane, dtype=pl.Int64)])
        late = None
        special_idx: list[int] = []
        if np.less_equal(first_end, wm, out=self.space.array("touched", len(pane), np.bool_)).any():
            last_end = (pane - g.offset) // g.every * g.every + g.offset + g.size
            late_mask = last_end + lateness <= wm
            touched = first_end <= wm
            if late_mask.any():
                keep = pl.Series(~late_mask)
                late = records.filter(pl.Series(late_mask))
                work = work.filter(keep)
                touched = touched[~late_mask]
            special_idx = np.flatnonzero(touched).tolist()
        pieces: list[pl.DataFrame] = []
        start = 0
        wm_col = work.get_column(WM_COL)
        for i in special_idx:
            seg = work.slice(start, i - start)
            self._add(seg)
            pre_i = int(wm_col[i])
            fired = self._fire(pre_i, seg.get_column(WM_COL))
            if fired is not None:
                pieces.append(fired)
            if not lateness:
                # Its windows that ended by pre_i have fired without it; it only joins the rest,
                # with the next segment (one flush per firing, not one per such record).
                start = i
                continue
            updated = self._touch(work.slice(i, 1), pre_i)
            if updated is not None:
                pieces.append(updated)
            start = i + 1
        tail = work.slice(start)
        self._add(tail)
        fired = self._fire(hi, tail.get_column(WM_COL))
        if fired is not None:
            pieces.append(fired)
        return pieces, late

    def _touch(self, row: pl.DataFrame, pre_i: int) -> pl.DataFrame | None:
        """Add a record some of whose windows already fired; emit allowed-lateness updates."""
        self._add(row)
        self._flush()
        lateness = self.ticks_lateness
        g = self.geo
        if lateness == 0 or g is None or (self.panes is None and self.arrays is None):
            return None
        first = int(row.select(g.first_start(pl.col(PANE))).item())
        last = int(row.select(g.last_start(pl.col(PANE))).item())
        starts = [s for s in range(first, last + 1, g.every) if pre_i - lateness < s + g.size <= pre_i]
        if not starts:
            return None
        if self.arrays is not None:
            key = row.get_column(self.keys[0])[0] if self.keys else None
            ends = {s + g.size for s in starts}
            found = self.arrays.windows(pre_i - lateness, pre_i, ends, key)
            if found is None or found.height == 0:
                return None
            return self.finals(found.hstack([pl.Series(WM_COL, [pre_i] * found.height, dtype=pl.Int64)]))
        panes = self.panes
        assert panes is not None
        for k in self.keys:
            panes = panes.filter(pl.col(k).eq_missing(row.get_column(k)[0]))
        panes = panes.filter((pl.col(PANE) >= min(starts)) & (pl.col(PANE) < max(starts) + g.size))
        wins = self._windows(panes, pre_i - lateness, pre_i, starts)
        if wins.height == 0:
            return None
        wins = wins.with_columns(pl.lit(pre_i, pl.Int64).alias(WM_COL)).sort([WE, WS])
        return self.finals(wins)
