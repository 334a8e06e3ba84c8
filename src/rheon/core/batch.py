"""The unit of data that moves through a flow: a Polars DataFrame plus its event-time progress.

Every record carries, in the hidden column ``WM_COL``, the watermark that held just *before* it
entered the flow (computed at the source when some operator downstream uses event time). That is
what makes results independent of batch boundaries: an operator decides "is this record late?"
and "which windows closed before it?" per record, not per batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import polars as pl

from rheon.core.frames import pick

__all__ = ["MAX_WM", "MIN_WM", "RAW_COL", "SPLIT_COL", "WM_COL", "Batch", "user_columns"]

WM_COL = "__rheon_wm"
"""Hidden int64 column: the watermark before this record, in the stream's time unit."""

SPLIT_COL = "__rheon_split"
"""Hidden string column a source may add: which split (e.g. Kafka partition) a record came from.
Watermarks are then tracked per split; the runtime removes the column."""
RAW_COL = "__rheon_raw"
"""Hidden column a message source may fill with each record's payload as received (text), so
that a record whose event time is missing or unparseable goes to the dead letters as it came;
the executor drops it once the time column is checked."""

MIN_WM = -(2**62)
"""Watermark before any event: nothing is complete. Kept far from int64 limits so that
subtracting a delay never overflows."""

MAX_WM = 2**62
"""Watermark at the end of a bounded input: every window is complete."""


@dataclass(slots=True)
class Batch:
    """A slice of a stream.

    Attributes
    ----------
    frame
        The records; may hold the hidden ``WM_COL``.
    watermark
        Event-time watermark after the last record, in the time column's unit (ms for int64
        epoch-ms columns, the Datetime's own unit otherwise).
    ingest_ns
        Wall-clock time (epoch ns) at which the oldest record of the batch entered the flow;
        0 when unknown. Sinks use it to measure end-to-end latency.
    idle
        The input is idle: it holds no data and must not hold the watermark back.
    end
        The input is finished; ``watermark`` is ``MAX_WM``.

    Examples
    --------
    >>> b = Batch(pl.DataFrame({"x": [1, 2]}), watermark=5)
    >>> b.frame.height, b.watermark, b.end
    (2, 5, False)
    """

    frame: pl.DataFrame
    watermark: int = MIN_WM
    ingest_ns: int = 0
    idle: bool = False
    end: bool = False

    def with_frame(self, frame: pl.DataFrame) -> Batch:
        """The same progress information around another frame."""
        return replace(self, frame=frame)


def user_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """Drop rheon's hidden columns before a frame leaves the engine.

    Examples
    --------
    >>> user_columns(pl.DataFrame({"a": [1], WM_COL: [0]})).columns
    ['a']
    """
    names = frame.columns
    if WM_COL not in names and RAW_COL not in names:
        return frame
    return pick(frame, [c for c in names if c not in (WM_COL, RAW_COL)])
