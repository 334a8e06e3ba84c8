"""``key_by(...).dedup(within=...)``: keep a key's first record, drop its repeats for a while.

Each key's records are handled in event-time order (ties by arrival) once the watermark has
passed them. A record passes if no record of its key that passed has a time ``t0`` with
``t - t0 < within``; otherwise it is a repeat and is dropped (or sent to ``.repeats()``). The
state per key is the time of its last record that passed; an event-time timer at
``t0 + within`` clears it once no record to come can be a repeat of it.

Vectorized per release: the key's rows are cut into *runs* where consecutive rows are less than
``within`` apart. A run's first row passes when it is ``within`` or more after the row before
it (or the key's state); it is the run's *anchor*, else the anchor is the state's time. Rows
less than ``within`` after their anchor are repeats. Only runs longer than ``within`` need more:
there the rows that pass are a chain (each the first row ``within`` after the one before),
followed for all such runs at once, one NumPy step per link.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from typing_extensions import override

from rheon.core.eventtime import TimeType
from rheon.operators.base import MAIN
from rheon.operators.ordered import ORDER, SEQ, TIME, TRIGGER, OrderedKeyed, Released, first_at_or_after
from rheon.state.backends import KeyedStateBackend

__all__ = ["REPEATS", "Dedup", "passing"]

REPEATS = "repeats"
_LAST = "dedup_last"  # state: the time (ticks) of the key's last record that passed


def passing(
    times: np.ndarray, heads: np.ndarray, block: np.ndarray, last: np.ndarray, has_last: np.ndarray, within: int
) -> np.ndarray:
    """Which rows pass: ``times`` sorted per key (``heads``: each key's first row, ``block``: each
    row's key), ``last``/``has_last``: each key's time of its last row that passed before.

    >>> t = np.array([0, 3, 9, 10, 14, 20, 2])
    >>> heads, block = np.array([0, 6]), np.array([0, 0, 0, 0, 0, 0, 1])
    >>> passing(t, heads, block, np.array([0, -5]), np.array([False, True]), 10).tolist()
    [True, False, False, True, False, True, False]
    """
    n = len(times)
    prev = np.empty(n, dtype=np.int64)
    prev[1:] = times[:-1]
    prev[heads] = last
    sure = (times - prev) >= within  # within or more after the row before: passes whatever came before
    sure[heads[~has_last]] = True
    run_start = sure.copy()
    run_start[heads] = True
    run = np.cumsum(run_start) - 1
    starts = np.flatnonzero(run_start)
    anchors = np.where(sure[starts], times[starts], last[block[starts]])
    passed = sure.copy()
    beyond = np.flatnonzero((times - anchors[run]) >= within)  # rows the anchor's reach does not cover
    if beyond.size:
        groups, at = run[beyond], times[beyond]
        following = first_at_or_after(groups, at, groups, at + within)
        firsts = np.ones(beyond.size, dtype=bool)
        firsts[1:] = groups[1:] != groups[:-1]
        link = np.flatnonzero(firsts)  # the first row beyond the anchor's reach passes
        while link.size:
            passed[beyond[link]] = True
            link = following[link]
            link = link[link >= 0]
    return passed


class Dedup(OrderedKeyed):
    """Passes each key's first record, drops the repeats that follow it within ``within``."""

    kind = "dedup"

    def __init__(
        self,
        name: str,
        keys: Sequence[str],
        time_col: str,
        within_ms: int,
        time_type: TimeType | None,
        backend: KeyedStateBackend | None = None,
        *,
        repeats: bool = False,
    ) -> None:
        self.within_ms = within_ms
        self.within = within_ms
        self.repeats = repeats
        """Whether dropped repeats go to the ``repeats`` output (someone reads ``.repeats()``)."""
        super().__init__(name, keys, time_col, time_type, backend)

    @override
    def _resolved(self) -> None:
        assert self.ttype is not None
        self.within = self.ttype.ticks(self.within_ms)

    @override
    def _signature(self) -> dict[str, Any]:
        return {"within_ms": self.within_ms}

    @override
    def _handle(self, released: Released) -> dict[str, pl.DataFrame]:
        cells = self._cells(released)
        before = [c.get(_LAST) for c in cells]
        has_last = np.array([v is not None for v in before], dtype=bool)
        last = np.array([0 if v is None else v for v in before], dtype=np.int64)
        times, block, within = released.times, released.block, self.within
        passed = passing(times, released.heads, block, last, has_last, within)
        rows = np.flatnonzero(passed)
        owners = block[rows]
        ends = rows[np.append(owners[1:] != owners[:-1], True)] if rows.size else rows  # each key's last pass
        timers = self.keyed.event_timers
        keys = released.keys
        for b, t in zip(block[ends].tolist(), times[ends].tolist(), strict=True):
            key = keys[b]
            if has_last[b]:
                timers.delete(int(last[b]) + within, key)
            cells[b][_LAST] = t
            timers.register(t + within, key)
        out = released.rows.with_columns(pl.col(TIME).alias(TRIGGER), pl.col(SEQ).alias(ORDER))
        mask = pl.Series(passed)
        produced = {MAIN: out.filter(mask)}
        if self.repeats:
            produced[REPEATS] = out.filter(~mask)
        return produced

    @override
    def _expire(self) -> None:
        """A key's state is needed while a record less than ``within`` after it can come: records
        to come are not behind the frontier, so the timer fires when the frontier reaches it."""
        cells, within = self.keyed.cells, self.within
        for at, key in self.keyed.event_timers.due(self.frontier):
            cell = cells(key)
            last = cell.get(_LAST)
            if last is not None and last + within <= at:
                del cell[_LAST]
