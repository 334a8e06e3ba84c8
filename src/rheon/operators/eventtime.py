"""``stream.with_time(...)``: a new event-time column, and the watermark that goes with it.

Two cases, by what the input stream had:

* **The input has event time** (it comes from a source with ``time=``, after ``with_columns`` or a
  join...). The new watermark is the input's, carried into the new column's type, minus
  ``max_delay``: the new time of a record may be at most ``max_delay`` behind the input's
  watermark when it arrives. Progress that comes without records (an idle partition, the end of
  the input) carries over as it is, and each record keeps the watermark it was judged against.
* **The input has no event time** (a source without ``time=``, a ``select`` that dropped it). The
  watermark is made here as a source makes it: the largest new time seen minus ``max_delay``,
  checkpointed, so ``source.with_time(expr)`` and ``flow.source(..., time=expr)`` give the same
  results.

Either way records are never held back or judged here: one whose new time is behind the
watermark goes on, and the event-time operator after ``with_time`` (a window whose window has
fired, a join, ``dedup``, ``match``) sends it to its own ``late()`` if it can no longer use it.
Records that cannot have an event time at all (null, unparseable, an expression that fails on
them) go to the dead letters.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from typing_extensions import override

from rheon.core.batch import MAX_WM, MIN_WM, WM_COL, Batch
from rheon.core.deadletters import payloads_of
from rheon.core.errors import FlowError
from rheon.core.eventtime import TimeType, time_type_of
from rheon.operators.base import MAIN, Operator, Output, State
from rheon.state.shared import SharedFiles
from rheon.time.column import EventTimeColumn
from rheon.time.watermarks import WatermarkTracker

__all__ = ["WithTime"]


class WithTime(Operator):
    """Declare ``time`` as the stream's event-time column (see the module docstring).

    Parameters
    ----------
    name
        The operator's name.
    time
        The new column (computed by its expression, if it has one) and its type once known.
    max_delay_ms
        How far the new time may be behind the watermark.
    upstream
        The input's event-time column, or ``None`` if the input has no event time.
    upstream_type
        That column's type, when known before the first batch.
    """

    kind = "with_time"
    stateful = True

    def __init__(
        self,
        name: str,
        time: EventTimeColumn,
        max_delay_ms: int,
        upstream: str | None,
        upstream_type: TimeType | None,
    ) -> None:
        super().__init__(name)
        self.time = time
        self.max_delay_ms = max_delay_ms
        self.upstream = upstream
        self.upstream_type = upstream_type
        self.tracker = WatermarkTracker(0) if upstream is None else None
        if self.tracker is not None and time.time_type is not None:
            self.tracker.max_delay = time.time_type.ticks(max_delay_ms)
        self.out_wm = MIN_WM

    # -- checkpoints -----------------------------------------------------------------------

    @override
    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "time": self.time.column, "follows": self.upstream}

    @override
    def snapshot(self, files: SharedFiles) -> State:
        return {}, {
            "time_type": self.time.time_type,
            "upstream_type": self.upstream_type,
            "max_ts": self.tracker.max_ts if self.tracker is not None else None,
            "out_wm": self.out_wm,
        }

    @override
    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        self.time.time_type = objects["time_type"]
        self.upstream_type = objects["upstream_type"]
        self.out_wm = objects["out_wm"]
        if self.tracker is not None:
            self.tracker.max_ts = objects["max_ts"]
            if self.time.time_type is not None:
                self.tracker.max_delay = self.time.time_type.ticks(self.max_delay_ms)

    # -- records ---------------------------------------------------------------------------

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        outputs: list[Output] = []
        frame = batch.frame
        before = self.out_wm
        if frame.height:
            self._learn_upstream(frame)
            known = self.time.time_type is not None
            frame, rejected = self.time.resolve(frame)
            for reasons, rows in rejected:
                outputs.append(self.dead(reasons, payloads_of(rows), batch))
            if not known and self.time.time_type is not None and self.tracker is not None:
                self.tracker.max_delay = self.time.time_type.ticks(self.max_delay_ms)
        if self.tracker is not None:  # our own watermark, from the new times
            if frame.height and self.time.time_type is not None:
                pre = self.tracker.assign(frame.get_column(self.time.column).cast(pl.Int64))
                frame = frame.with_columns(pre.clip(lower_bound=before).alias(WM_COL))
            watermark = MAX_WM if batch.end else self.tracker.watermark
        else:  # the input's watermark, carried into the new column's ticks
            if frame.height:
                if WM_COL in frame.columns:
                    carried = np.maximum(self._carry(frame.get_column(WM_COL).to_numpy()), before)
                else:
                    carried = np.full(frame.height, before, dtype=np.int64)
                frame = frame.with_columns(pl.Series(WM_COL, carried, dtype=pl.Int64))
            watermark = int(self._carry(np.array([batch.watermark], dtype=np.int64))[0])
        self.out_wm = max(self.out_wm, watermark)
        outputs.append(
            (
                MAIN,
                Batch(frame, watermark=self.out_wm, ingest_ns=batch.ingest_ns, idle=batch.idle, end=batch.end),
            )
        )
        return outputs

    def _learn_upstream(self, frame: pl.DataFrame) -> None:
        """The input's time type, from its column, when the plan could not tell it."""
        if self.upstream is None or self.upstream_type is not None or self.upstream not in frame.columns:
            return
        dtype = frame.schema[self.upstream]
        if dtype == pl.Null:
            return
        try:
            self.upstream_type = time_type_of(dtype, column=self.upstream, where=self.label)
        except FlowError:
            return

    def _carry(self, wm: np.ndarray) -> np.ndarray:
        """Watermarks in the input's ticks as watermarks of the new column, ``max_delay`` lower.

        ``MIN_WM`` and ``MAX_WM`` stay what they are. While either type is unknown (no record
        has shown it yet) only the end of input passes; the rest holds at ``MIN_WM``.
        """
        new, old = self.time.time_type, self.upstream_type
        ends = wm >= MAX_WM
        if new is None or old is None:
            return np.where(ends, MAX_WM, MIN_WM).astype(np.int64)
        starts = wm <= MIN_WM
        if new.ticks_per_ms == old.ticks_per_ms:
            moved = wm
        elif new.ticks_per_ms % old.ticks_per_ms == 0:
            factor = new.ticks_per_ms // old.ticks_per_ms  # no overflow: the result is clipped anyway
            moved = np.clip(np.where(starts | ends, 0, wm), MIN_WM // factor, MAX_WM // factor) * factor
        else:
            moved = np.floor_divide(np.where(starts | ends, 0, wm), old.ticks_per_ms // new.ticks_per_ms)
        moved = np.clip(moved - new.ticks(self.max_delay_ms), MIN_WM, MAX_WM - 1)
        return np.where(ends, MAX_WM, np.where(starts, MIN_WM, moved)).astype(np.int64)
