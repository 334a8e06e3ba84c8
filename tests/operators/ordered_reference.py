"""Plain-Python, record-at-a-time references of ``dedup``, ``changes`` and ``top_n``.

Written from the semantics in docs/stream-tools.md, not from the engine: records are taken one
at a time in arrival order with the source's watermark (largest time so far minus
``max_delay``); each record first releases the buffered records the watermark has reached, and
is late if a released record is later than it. The records that are not late are then handled
in event-time order, ties by arrival.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]


def in_order(rows: Sequence[Row], max_delay: int, time: str = "ts") -> tuple[list[tuple[int, Row]], list[Row]]:
    """``(arrival number, row)`` of the rows that are not late, in handling order, and the late rows."""
    top: int | None = None
    frontier = -math.inf
    buffer: list[tuple[int, Row]] = []
    kept: list[tuple[int, Row]] = []
    late: list[Row] = []
    for seq, row in enumerate(rows):
        wm = -math.inf if top is None else top - max_delay
        ready = [b for b in buffer if b[1][time] <= wm]
        if ready:
            frontier = max(frontier, *(b[1][time] for b in ready))
            buffer = [b for b in buffer if b[1][time] > wm]
        if row[time] < frontier:
            late.append(row)
        else:
            buffer.append((seq, row))
            kept.append((seq, row))
        top = row[time] if top is None else max(top, row[time])
    return sorted(kept, key=lambda sr: (sr[1][time], sr[0])), late


def key_of(keys: Sequence[str]) -> Callable[[Row], tuple[Any, ...]]:
    return lambda row: tuple(row[k] for k in keys)


def dedup(rows: Sequence[Row], keys: Sequence[str], within: int, max_delay: int) -> tuple[list[Row], ...]:
    """(passed, repeats, late)."""
    handled, late = in_order(rows, max_delay)
    key = key_of(keys)
    last: dict[tuple[Any, ...], int] = {}
    passed, repeats = [], []
    for _, row in handled:
        k = key(row)
        if k in last and row["ts"] - last[k] < within:
            repeats.append(row)
        else:
            passed.append(row)
            last[k] = row["ts"]
    return passed, repeats, late


def changes(rows: Sequence[Row], keys: Sequence[str], columns: Sequence[str], max_delay: int) -> tuple[list[Row], ...]:
    """(changed, late)."""
    handled, late = in_order(rows, max_delay)
    key = key_of(keys)
    last: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    out = []
    for _, row in handled:
        k, value = key(row), tuple(row[c] for c in columns)
        if k not in last or last[k] != value:
            out.append(row)
        last[k] = value
    return out, late


def _order(by: str, descending: bool) -> Callable[[tuple[int, Row]], tuple[Any, ...]]:
    def order(entry: tuple[int, Row]) -> tuple[Any, ...]:
        seq, row = entry
        v = row[by]
        return (v is None, 0 if v is None else (-v if descending else v), row["ts"], seq)

    return order


def running_top_n(
    rows: Sequence[Row], keys: Sequence[str], n: int, by: str, descending: bool, max_delay: int
) -> tuple[list[Row], list[Row]]:
    """(emitted rows with rank, late)."""
    handled, late = in_order(rows, max_delay)
    key = key_of(keys)
    best: dict[tuple[Any, ...], list[tuple[int, Row]]] = {}
    out: list[Row] = []
    order = _order(by, descending)
    for seq, row in handled:
        members = best.setdefault(key(row), [])
        new = sorted([*members, (seq, row)], key=order)[:n]
        if (seq, row) in new:
            best[key(row)] = new
            out += [{**r, "rank": i} for i, (_, r) in enumerate(new, 1)]
    return out, late


def window_top_n(
    rows: Sequence[Row],
    n: int,
    by: str,
    key_columns: Sequence[str],
    lateness: int,
    max_delay: int,
    descending: bool = True,
) -> tuple[list[Row], list[Row]]:
    """(emitted rows with rank, late) of a per-window top n over ``rows`` (which have
    ``window_start``, the stream's time, and ``window_end``)."""
    key = key_of(key_columns)

    def order(entry: tuple[int, Row]) -> tuple[Any, ...]:
        seq, row = entry
        v = row[by]
        ks = tuple((row[k] is None, row[k]) for k in key_columns)
        return (v is None, 0 if v is None else (-v if descending else v), ks, seq)

    def top(entries: list[tuple[int, Row]]) -> list[Row]:
        return [{**r, "rank": i} for i, (_, r) in enumerate(sorted(entries, key=order)[:n], 1)]

    windows: dict[tuple[int, int], list[tuple[int, Row]]] = {}
    fired: set[tuple[int, int]] = set()
    out: list[Row] = []
    late: list[Row] = []

    def fire(upto: float) -> None:
        for w in sorted(windows, key=lambda w: (w[1], w[0])):
            if w not in fired and w[1] <= upto:
                fired.add(w)
                out.extend(top(windows[w]))

    wm = -math.inf
    for seq, row in enumerate(rows):
        fire(wm)
        w = (row["window_start"], row["window_end"])
        if row["window_end"] + lateness <= wm:
            late.append(row)
        elif row["window_end"] <= wm:
            entries = windows.get(w, [])
            before = top(entries)
            entries = [e for e in entries if key(e[1]) != key(row)] + [(seq, row)]
            windows[w] = entries
            fired.add(w)
            after = top(entries)
            if after != before:
                out.extend(after)
        else:
            windows.setdefault(w, []).append((seq, row))
        wm = max(wm, row["window_start"] - max_delay)
    fire(math.inf)
    return out, late
