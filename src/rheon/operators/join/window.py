"""Window join: pair left and right records of the same key that fall in the same window.

Both sides are buffered per window; when the watermark passes a window's end its pairs come out
(in a left join, a left record with no partner in the window comes out with nulls), with
``window_start`` and ``window_end``. The output's event time is ``window_start``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.batch import MIN_WM, WM_COL, Batch
from rheon.core.eventtime import TimeType
from rheon.operators.base import LATE, Output
from rheon.operators.join.common import ID, T, TwoInputJoin
from rheon.time.windows import PaneGeometry, Sliding, Tumbling

__all__ = ["WindowJoin"]

WS, WE, RT, RID = "__ws", "__we", "__rt", "__rid"


class WindowJoin(TwoInputJoin):
    """Keyed tumbling or sliding window join (inner or left)."""

    kind = "window_join"

    def __init__(
        self,
        name: str,
        left_keys: Sequence[str],
        right_keys: Sequence[str],
        left_time: str,
        right_time: str,
        how: str,
        suffix: str,
        time_type: TimeType | None,
        assigner: Tumbling | Sliding,
    ) -> None:
        super().__init__(name, left_keys, right_keys, left_time, right_time, how, suffix, time_type)
        self.assigner = assigner
        self.buffers: list[pl.DataFrame | None] = [None, None]

    def _geo(self) -> PaneGeometry:
        assert self.ttype is not None
        return PaneGeometry.of(self.assigner, ticks_per_ms=self.ttype.ticks_per_ms)

    def _assign(self, rows: pl.DataFrame, pre: pl.Series) -> tuple[pl.DataFrame, pl.DataFrame]:
        """Each record once per window it belongs to whose end is still ahead; and the late records."""
        g = self._geo()
        pane = g.pane_start(pl.col(T))
        windows = rows.with_columns(pre.alias("__pre"), pl.int_ranges(0, g.windows_per_pane).alias("__k")).explode(
            "__k"
        )
        windows = windows.with_columns((g.last_start(pane) - pl.col("__k") * g.every).alias(WS))
        windows = windows.with_columns((pl.col(WS) + g.size).alias(WE)).filter(pl.col(WE) > pl.col(T))
        alive = windows.filter(pl.col(WE) > pl.col("__pre"))
        alive_ids = alive.get_column(ID).unique().implode()
        return alive.drop("__pre", "__k"), rows.filter(~pl.col(ID).is_in(alive_ids))

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        outputs: list[Output] = []
        frame = batch.frame
        pre: pl.Series | None = None
        if frame.height:
            self.learn_columns(port, frame)
            pre = self.record_watermarks(port, frame)
            rows = self.with_ticks(port, frame)
            alive, late = self._assign(rows, pre)
            if late.height:
                outputs.append(
                    (LATE, Batch(late.select(frame.columns), watermark=batch.watermark, ingest_ns=batch.ingest_ns))
                )
            if port == 1:
                alive = (
                    self.prefixed_right(alive.drop(WS, WE))
                    .rename({T: RT, ID: RID})
                    .with_columns(alive.get_column(WS), alive.get_column(WE))
                )
            buf = self.buffers[port]
            self.buffers[port] = alive if buf is None else pl.concat([buf, alive], how="diagonal_relaxed")
        self._update_port(port, batch)
        new_wm = max(self.combined(), self.forwarded)
        pieces = []
        fired = self._fire(new_wm, pre)
        if fired is not None:
            pieces.append(fired)
        self.forwarded = new_wm
        outputs.insert(0, self.emit(batch, pieces, new_wm))
        return outputs

    def _fire(self, new_wm: int, pre: pl.Series | None) -> pl.DataFrame | None:
        left, right = self.buffers
        if left is None or left.height == 0 or self.ttype is None:
            if right is not None:
                self.buffers[1] = right.filter(pl.col(WE) > new_wm)
            return None
        ready_left = left.filter(pl.col(WE) <= new_wm)
        self.buffers[0] = left.filter(pl.col(WE) > new_wm)
        ready_right = None
        if right is not None:
            ready_right = right.filter(pl.col(WE) <= new_wm)
            self.buffers[1] = right.filter(pl.col(WE) > new_wm)
        if ready_left.height == 0:
            return None
        on = [*self.left_keys, WS, WE]
        if ready_right is not None and ready_right.height:
            pairs = ready_left.join(
                ready_right, on=on, how="left" if self.how == "left" else "inner", maintain_order="left_right"
            )
        else:
            if self.how != "left":
                return None
            pairs = ready_left.with_columns(pl.lit(None, pl.Int64).alias(RID))
        if pairs.height == 0:
            return None
        if pre is not None and len(pre):
            position = pre.search_sorted(pairs.get_column(WE), side="left").cast(pl.Int64)
            before = pre.shift(1, fill_value=self.forwarded).append(pre.tail(1))
            wm = before.gather(position)
        else:
            wm = pl.Series([self.forwarded] * pairs.height, dtype=pl.Int64)
        pairs = pairs.with_columns(wm.clip(lower_bound=MIN_WM).alias(WM_COL)).sort(
            [WE, WS, *self.left_keys, ID, RID], nulls_last=True
        )
        ttype = self.ttype
        return self.output(
            pairs,
            [ttype.from_ticks(pl.col(WS)).alias("window_start"), ttype.from_ticks(pl.col(WE)).alias("window_end")],
        )

    @override
    def signature(self) -> dict[str, Any]:
        return {**super().signature(), "window": repr(self.assigner)}

    @override
    def join_buffers(self) -> dict[str, pl.DataFrame | None]:
        return dict(zip(("left", "right"), self.buffers, strict=True))

    @override
    def load_join_buffers(self, frames: dict[str, pl.DataFrame]) -> None:
        self.buffers = [frames.get("left"), frames.get("right")]
