"""Window assigners: tumbling, sliding and session windows.

These are small frozen config objects (easy to print, compare and pickle). The pane arithmetic
that the window operator runs on whole columns lives here too, as expressions on int64 ticks.

Windows are half-open, ``[start, end)``. Tumbling and sliding windows are aligned to the epoch
(plus an optional ``offset``). A session window starts at its first event and ends ``gap`` after
its last one; two events belong to the same session when they are less than ``gap`` apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError

__all__ = ["PaneGeometry", "Session", "Sliding", "Tumbling", "WindowAssigner", "session", "sliding", "tumbling"]


@dataclass(frozen=True, slots=True)
class Tumbling:
    """Fixed-size, non-overlapping windows. Build with :func:`tumbling`."""

    size_ms: int
    offset_ms: int = 0

    def __repr__(self) -> str:
        return f"tumbling({self.size_ms}ms)" + (f" offset {self.offset_ms}ms" if self.offset_ms else "")


@dataclass(frozen=True, slots=True)
class Sliding:
    """Fixed-size windows that start every ``every_ms``. Build with :func:`sliding`."""

    size_ms: int
    every_ms: int
    offset_ms: int = 0

    def __repr__(self) -> str:
        return f"sliding({self.size_ms}ms every {self.every_ms}ms)"


@dataclass(frozen=True, slots=True)
class Session:
    """Per-key windows that close after ``gap_ms`` without events. Build with :func:`session`."""

    gap_ms: int

    def __repr__(self) -> str:
        return f"session(gap {self.gap_ms}ms)"


WindowAssigner = Tumbling | Sliding | Session


def _positive(value: Duration, what: str) -> int:
    ms = to_ms(value, what=what)
    if ms <= 0:
        msg = f'{what} must be longer than 0 (got {value!r}). Try "1s".'
        raise FlowError(msg)
    return ms


def tumbling(size: Duration, *, offset: Duration | None = None) -> Tumbling:
    """Tumbling event-time windows of ``size``: ``[0, size)``, ``[size, 2*size)``, ...

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"k": "a", "ts": 500}, {"k": "a", "ts": 1500}, {"k": "a", "ts": 1700}]
    >>> flow = rh.Flow("t")
    >>> out = rh.io.Collect()
    >>> (flow.source(rh.io.Records(rows), time="ts").key_by("k")
    ...      .window(rh.tumbling("1s")).agg(n=rh.count()).sink(out))
    >>> flow.run(); out.rows
    [{'k': 'a', 'window_start': 0, 'window_end': 1000, 'n': 1}, {'k': 'a', 'window_start': 1000, 'window_end': 2000, 'n': 2}]
    """
    size_ms = _positive(size, "tumbling: size")
    offset_ms = to_ms(offset, what="tumbling: offset") if offset is not None else 0
    return Tumbling(size_ms, offset_ms % size_ms)


def sliding(size: Duration, *, every: Duration, offset: Duration | None = None) -> Sliding:
    """Sliding (hopping) windows of ``size`` starting every ``every``.

    Each event belongs to about ``size / every`` windows. ``every`` must not exceed ``size``.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("s")
    >>> out = rh.io.Collect()
    >>> (flow.source(rh.io.Records([{"k": 1, "ts": 1500, "v": 2.0}]), time="ts").key_by("k")
    ...      .window(rh.sliding("2s", every="1s")).agg(total=rh.sum("v")).sink(out))
    >>> flow.run(); [(r["window_start"], r["window_end"], r["total"]) for r in out.rows]
    [(0, 2000, 2.0), (1000, 3000, 2.0)]
    """
    size_ms = _positive(size, "sliding: size")
    every_ms = _positive(every, "sliding: every")
    if every_ms > size_ms:
        msg = (
            f"sliding: every ({every!r}) is longer than size ({size!r}), so some events would fall "
            "in no window. Try every <= size, or rh.tumbling(size)."
        )
        raise FlowError(msg)
    offset_ms = to_ms(offset, what="sliding: offset") if offset is not None else 0
    return Sliding(size_ms, every_ms, offset_ms % every_ms)


def session(*, gap: Duration) -> Session:
    """Session windows per key: a session ends once ``gap`` passes without an event.

    Output ``window_start`` is the first event's time; ``window_end`` is the last event's time plus
    ``gap``.

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"u": "x", "ts": t} for t in (0, 10, 20, 100)]
    >>> flow = rh.Flow("s")
    >>> out = rh.io.Collect()
    >>> (flow.source(rh.io.Records(rows), time="ts").key_by("u")
    ...      .window(rh.session(gap="30ms")).agg(n=rh.count()).sink(out))
    >>> flow.run(); out.rows
    [{'u': 'x', 'window_start': 0, 'window_end': 50, 'n': 3}, {'u': 'x', 'window_start': 100, 'window_end': 130, 'n': 1}]
    """
    return Session(_positive(gap, "session: gap"))


@dataclass(frozen=True, slots=True)
class PaneGeometry:
    """Pane arithmetic for tumbling and sliding windows, in ticks.

    A pane is the largest interval that every window either contains whole or not at all
    (``gcd(size, every)``). The operator aggregates each event once into its pane, and a window's
    result combines its panes, so a 10 s window sliding every 1 s costs one update per event,
    not ten.

    Examples
    --------
    >>> g = PaneGeometry.of(Sliding(10, 4, 0), ticks_per_ms=1)
    >>> g.pane, g.windows_per_pane
    (2, 3)
    >>> df = pl.DataFrame({"p": [0, 6]})
    >>> df.select(first=g.first_start(pl.col("p")), last=g.last_start(pl.col("p"))).rows()
    [(-8, 0), (0, 4)]
    """

    size: int
    every: int
    offset: int
    pane: int

    @classmethod
    def of(cls, assigner: Tumbling | Sliding, *, ticks_per_ms: int) -> PaneGeometry:
        size = assigner.size_ms * ticks_per_ms
        every = (assigner.every_ms if isinstance(assigner, Sliding) else assigner.size_ms) * ticks_per_ms
        offset = assigner.offset_ms * ticks_per_ms
        return cls(size, every, offset, math.gcd(size, every))

    @property
    def windows_per_pane(self) -> int:
        """Most windows a pane can belong to."""
        return -(-self.size // self.every)

    def pane_start(self, ticks: pl.Expr) -> pl.Expr:
        """Start of the pane holding each time."""
        return (ticks - self.offset) // self.pane * self.pane + self.offset

    def last_start(self, pane: pl.Expr) -> pl.Expr:
        """Start of the latest window holding each pane."""
        return (pane - self.offset) // self.every * self.every + self.offset

    def first_start(self, pane: pl.Expr) -> pl.Expr:
        """Start of the earliest window holding each pane."""
        return (pane - self.size - self.offset) // self.every * self.every + self.offset + self.every
