"""Pane window state as NumPy arrays, for windows keyed by one integer column or by none.

Per open pane, each field of each aggregation's accumulator (:mod:`rheon.operators.accumulators`)
is an array with one element per key: key ``k`` sits at slot ``k - base``. Adding a batch is a
few ``bincount`` passes over its records and an elementwise merge per pane; firing a window
reads its panes' arrays where they have records. There is no Polars query per batch but the
one that turns a fired window's exact sums into Int128 columns, which is what makes small
batches cheap (a window of 1,000 keys fed 10,000 records at a time).

The frames this state gives (:meth:`PaneArrays.frame`, :meth:`PaneArrays.windows`) have the
columns, types and values of the Polars path's, so results and checkpoints do not depend on
which path held the state. A batch the arrays cannot hold (keys too far apart, a NaN in a
``min``, a grid much larger than the batch) is declined, and the operator moves its state to
the Polars path.

Examples
--------
>>> from rheon.operators.accumulators import CountAccumulator
>>> from rheon.time.windows import PaneGeometry, Tumbling
>>> state = PaneArrays("k", [CountAccumulator(None, "n")], PaneGeometry.of(Tumbling(10, 0), ticks_per_ms=1))
>>> state.add(pl.DataFrame({"k": [7, 5, 7], "__pane": [0, 0, 10]}))
True
>>> state.windows(0, 20).rows()  # key, window start, window end, count; by end, then key
[(5, 0, 10, 1), (7, 0, 10, 1), (7, 10, 20, 1)]
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

import numpy as np
import polars as pl

from rheon.operators.accumulators import Accumulator, Combine, Fields, Grid, combine, identity
from rheon.operators.dense import Workspace, numpy_integer
from rheon.operators.window.common import WE, WS
from rheon.time.windows import PaneGeometry

__all__ = ["PaneArrays"]

PANE = "__pane"  # each record's pane start (the pane windows' helper column)
ROWS = "__rows"  # records per key and pane: a key has a row in a pane's frame when it is not 0
MAX_SLOTS = 1 << 18  # keys further apart than this take the Polars path (the arrays would be mostly empty)
SPARSE = 4  # a batch whose (pane, key) grid is more than 4x its records...
MIN_GRID = 1 << 16  # ...and bigger than this takes the Polars path (its group-by is cheaper then)


class PaneArrays:
    """The open panes of a tumbling or sliding window, as arrays per key slot.

    ``key`` is the key column (``None``: one group), ``accumulators`` those of the window's
    aggregations, in their order.
    """

    def __init__(self, key: str | None, accumulators: Sequence[Accumulator], geo: PaneGeometry) -> None:
        self.key = key
        self.key_dtype: pl.DataType | None = None
        self.accumulators = list(accumulators)
        self.geo = geo
        self.space = Workspace()
        self.base = 0
        self.cap = 0 if key else 1
        self.panes: dict[int, Fields] = {}
        self.how: dict[str, Combine] = {ROWS: np.add}

    # -- size -----------------------------------------------------------------------------

    @property
    def rows(self) -> int:
        """(key, pane) pairs with records: the rows of :meth:`frame`."""
        return sum(int(np.count_nonzero(fields[ROWS])) for fields in self.panes.values())

    @property
    def nbytes(self) -> int:
        return sum(values.nbytes for fields in self.panes.values() for values in fields.values())

    def _cover(self, low: int, high: int) -> bool:
        """Make slots for keys ``low .. high`` (moving the arrays if needed); ``False`` if the
        keys would then span more than ``MAX_SLOTS``."""
        if self.cap and self.base <= low and high < self.base + self.cap:
            return True
        lo = low if not self.cap else min(self.base, low)
        hi = high if not self.cap else max(self.base + self.cap - 1, high)
        if hi - lo + 1 > MAX_SLOTS:
            return False
        if self.cap:  # room to grow on the side that grew, so that new keys seldom move them
            spare = (hi - lo + 1) // 4
            lo = max(lo - spare, hi + 1 - MAX_SLOTS) if low < self.base else lo
            hi = min(hi + spare, lo + MAX_SLOTS - 1) if high >= self.base + self.cap else hi
        cap, shift = hi - lo + 1, self.base - lo
        for fields in self.panes.values():
            for name, values in fields.items():
                moved = np.full(cap, identity(self.how[name], values.dtype), dtype=values.dtype)
                moved[shift : shift + self.cap] = values
                fields[name] = moved
        self.base, self.cap = lo, cap
        return True

    # -- records ----------------------------------------------------------------------------

    def add(self, rows: pl.DataFrame) -> bool:
        """Add records (with their pane in column ``__pane``); ``False``, with nothing
        changed, when this batch cannot be held as arrays."""
        n = rows.height
        if n == 0:
            return True
        g = self.geo
        pane = rows.get_column(PANE).to_numpy()
        first, last = int(pane.min()), int(pane.max())
        panes = (last - first) // g.pane + 1
        keys = None
        if self.key is not None:
            series = rows.get_column(self.key)
            if series.null_count() or not numpy_integer(series.dtype) or series.dtype == pl.UInt64:
                return False
            if self.key_dtype is None:
                self.key_dtype = series.dtype
            low, high = series.min(), series.max()
            if not self._cover(int(low), int(high)):  # type: ignore[arg-type]
                return False
            keys = series.to_numpy()
        size = panes * self.cap
        if size > SPARSE * n + MIN_GRID:
            return False
        cells = (len(self.panes) + panes) * self.cap
        if cells > MIN_GRID and cells > SPARSE * (self.rows + n) + MIN_GRID:
            return False  # mostly empty arrays: keys far apart, each with few panes
        index = self.space.array("index", n, np.int64)
        np.subtract(pane, first, out=index)
        if g.pane != 1:
            np.floor_divide(index, g.pane, out=index)
        if self.cap != 1:
            np.multiply(index, self.cap, out=index)
        if keys is not None:
            np.add(index, keys, out=index, casting="unsafe")
            np.subtract(index, self.base, out=index)
        grid = Grid(index, size, self.space)
        added: dict[str, np.ndarray] = {ROWS: grid.counts}
        for accumulator in self.accumulators:
            fields = accumulator.add(rows, grid)
            if fields is None:
                return False
            added.update(fields)
            self.how.update({name: accumulator.combines(name) for name in fields})
        counts = grid.counts.reshape(panes, self.cap)
        for i in np.flatnonzero(counts.any(axis=1)).tolist():
            part = {name: values[i * self.cap : (i + 1) * self.cap] for name, values in added.items()}
            start = first + i * g.pane
            held = self.panes.get(start)
            if held is None:
                held = self.panes[start] = {name: values.copy() for name, values in part.items()}
            else:
                combine(held, part, self.how)
            for accumulator in self.accumulators:
                accumulator.settle(held)
        return True

    def load(self, frame: pl.DataFrame) -> bool:
        """Take the panes of a frame of partial rows (a checkpoint's, or the Polars path's);
        ``False``, with nothing changed, if they cannot be held as arrays."""
        if frame.height == 0:
            return True
        # As :meth:`add` would decline them: panes of mostly empty arrays (checked first, as
        # loading costs a few queries; a frame of many keys with few records each is tried often).
        pane = frame.get_column(PANE)
        span = 1
        if self.key is not None:
            keys = frame.get_column(self.key)
            low, high = keys.min(), keys.max()
            if not isinstance(low, int) or not isinstance(high, int):
                return False
            span = (
                max(high, self.base + self.cap - 1 if self.cap else high) - min(low, self.base if self.cap else low) + 1
            )
        if span * pane.n_unique() > SPARSE * frame.height + MIN_GRID:
            return False
        loaded = [accumulator.load(frame) for accumulator in self.accumulators]
        if any(fields is None for fields in loaded):
            return False
        if self.key is not None:
            series = frame.get_column(self.key)
            if series.null_count() or not numpy_integer(series.dtype) or series.dtype == pl.UInt64:
                return False
            self.key_dtype = series.dtype
            if not self._cover(int(series.min()), int(series.max())):  # type: ignore[arg-type]
                return False
            slots = series.to_numpy().astype(np.int64) - self.base
        else:
            slots = np.zeros(frame.height, dtype=np.int64)
        starts = pane.to_numpy()
        values: dict[str, np.ndarray] = {ROWS: np.ones(frame.height, dtype=np.int64)}
        for accumulator, fields in zip(self.accumulators, loaded, strict=True):
            assert fields is not None
            values.update(fields)
            self.how.update({name: accumulator.combines(name) for name in fields})
        for start in np.unique(starts).tolist():
            mine = starts == start
            fields = self.panes.setdefault(start, {})
            for name, column in values.items():
                array = fields.get(name)
                if array is None:
                    array = fields[name] = np.full(self.cap, identity(self.how[name], column.dtype), dtype=column.dtype)
                array[slots[mine]] = column[mine]
        return True

    # -- windows ----------------------------------------------------------------------------

    def _rows(self, parts: list[tuple[int, Fields]], slot: int | None = None) -> pl.DataFrame:
        """Partial rows (key, ``__ws``, ``__we``, partials...) of each ``(end, fields)`` where a
        key (or the key at ``slot``) has records."""
        g = self.geo
        cap = self.cap
        if slot is not None:
            parts = [(end, {name: values[slot : slot + 1] for name, values in fields.items()}) for end, fields in parts]
            cap = 1
        names = list(dict.fromkeys(name for _, fields in parts for name in fields))
        # Each field of every part laid end to end, then one gather where there are records
        # (a big batch fires a hundred windows at once).
        lined: Fields = {}
        for name in names:
            found = [fields.get(name) for _, fields in parts]
            dtype = next(piece.dtype for piece in found if piece is not None)
            fill = None
            if any(piece is None for piece in found):  # a field (an exact sum's bin) only some panes have
                fill = np.full(cap, identity(self.how[name], dtype), dtype=dtype)
            pieces: list[np.ndarray] = [piece if piece is not None else fill for piece in found]  # type: ignore[misc]
            lined[name] = np.concatenate(pieces) if len(pieces) != 1 else pieces[0]
        at = np.flatnonzero(lined[ROWS])
        gathered = {name: values[at] for name, values in lined.items()}
        ends = np.array([end for end, _ in parts], dtype=np.int64)[at // cap]
        columns = []
        if self.key is not None:
            slots = at % cap + (self.base if slot is None else self.base + slot)
            columns.append(pl.Series(self.key, slots).cast(self.key_dtype or pl.Int64()))
        columns += [pl.Series(WS, ends - g.size), pl.Series(WE, ends)]
        columns += [c for accumulator in self.accumulators for c in accumulator.partials(gathered).iter_columns()]
        return pl.DataFrame(columns)

    def windows(self, lo: int, hi: int, ends: set[int] | None = None, key: int | None = None) -> pl.DataFrame | None:
        """Merged partials of the windows ending in ``(lo, hi]`` (key, ``__ws``, ``__we``,
        partials...), ordered by end, then key (emission order); ``None`` if there are none.
        Only those ending at ``ends`` and of ``key``, if given (allowed-lateness updates)."""
        g = self.geo
        slot = None
        if key is not None:
            slot = key - self.base
            if not 0 <= slot < self.cap:
                return None
        starts = sorted(self.panes)
        if g.pane == g.size:  # each window is one pane (tumbling, or hopping with gaps)
            parts = [
                (p + g.size, self.panes[p])
                for p in starts
                if lo < p + g.size <= hi and self._windowed(p) and (ends is None or p + g.size in ends)
            ]
        else:
            parts = []
            for end in self._ends(starts, lo, hi):
                if ends is not None and end not in ends:
                    continue
                inside = starts[bisect_left(starts, end - g.size) : bisect_left(starts, end)]
                merged = {name: values.copy() for name, values in self.panes[inside[0]].items()}
                for p in inside[1:]:
                    combine(merged, self.panes[p], self.how)
                for accumulator in self.accumulators:
                    accumulator.settle(merged)
                parts.append((end, merged))
        return self._rows(parts, slot) if parts else None

    def _windowed(self, pane: int) -> bool:
        """Whether a pane as wide as the window is one (with ``every > size`` some are in none)."""
        g = self.geo
        return (pane - g.offset) % g.every == 0

    def _ends(self, starts: list[int], lo: int, hi: int) -> list[int]:
        """The ends in ``(lo, hi]`` of windows holding some open pane, in order."""
        g = self.geo
        if not starts:
            return []
        panes = np.array(starts, dtype=np.int64)
        first = (panes - g.size - g.offset) // g.every * g.every + g.offset + g.every + g.size
        ends = (first[:, None] + g.every * np.arange(g.windows_per_pane, dtype=np.int64)).ravel()
        pane = panes.repeat(g.windows_per_pane)
        ends = ends[(ends > lo) & (ends <= hi) & (ends > pane) & (ends - g.size <= pane)]
        return [int(end) for end in np.unique(ends)]

    def frame(self) -> pl.DataFrame | None:
        """Every open pane's partial rows: key, ``__pane``, partials (the Polars path's state);
        ``None`` when no pane is open."""
        if not self.panes:
            return None
        rows = self._rows([(p + self.geo.size, self.panes[p]) for p in sorted(self.panes)])
        return rows.drop(WE).rename({WS: PANE})  # a pane's start, not a window's

    def expire(self, hi: int, lateness: int) -> None:
        """Drop panes no window of which can change once the watermark is at ``hi``."""
        g = self.geo
        for start in [
            p for p in self.panes if (p - g.offset) // g.every * g.every + g.offset + g.size + lateness <= hi
        ]:
            del self.panes[start]
