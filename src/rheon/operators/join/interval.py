"""Interval join: pair each left record with the right records of the same key whose time is
within ``[left time + lower, left time + upper]``.

Both sides are buffered until the watermark makes a match impossible: a left record waits until
the watermark passes ``left time + upper``, a right record until it passes ``right time -
lower``. A record behind the watermark when it arrives is late (as in Flink) and goes to the
late output. In a left join, a left record that found no match comes out, with nulls, when its
wait is over.

Output event time is the left record's time. Since a pair can be completed by a right record up
to ``upper`` after the left one, the join holds its output watermark back by ``upper`` (as
Flink SQL does), so its results are never late downstream.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.batch import MIN_WM, WM_COL, Batch
from rheon.core.eventtime import TimeType
from rheon.operators.base import LATE, Output
from rheon.operators.join.common import ID, PHASE, POS, T, TwoInputJoin

__all__ = ["IntervalJoin"]

MATCHED = "__matched"
RT, RID, PRE = "__rt", "__rid", "__pre"


class IntervalJoin(TwoInputJoin):
    """Keyed interval join (inner or left)."""

    kind = "interval_join"

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
        lower_ms: int,
        upper_ms: int,
    ) -> None:
        super().__init__(name, left_keys, right_keys, left_time, right_time, how, suffix, time_type)
        self.lower_ms = lower_ms
        self.upper_ms = upper_ms
        self.left_buf: pl.DataFrame | None = None
        self.right_buf: pl.DataFrame | None = None

    @property
    def lo(self) -> int:
        return self.ttype.ticks(self.lower_ms) if self.ttype is not None else self.lower_ms

    @property
    def hi(self) -> int:
        return self.ttype.ticks(self.upper_ms) if self.ttype is not None else self.upper_ms

    @property
    def hold(self) -> int:
        return max(self.hi, 0)

    def _held(self, wm: int) -> int:
        return max(wm - self.hold, MIN_WM)

    # -- arrivals --------------------------------------------------------------------------------

    def _left_arrivals(self, rows: pl.DataFrame) -> pl.DataFrame | None:
        """Pairs made by newly arrived left rows; records them in the left buffer."""
        pairs = None
        matched_ids: pl.Series | None = None
        if self.right_buf is not None and self.right_buf.height:
            joined = rows.join(self.right_buf, on=self.left_keys, how="inner", maintain_order="left_right")
            pairs = joined.filter((pl.col(RT) >= pl.col(T) + self.lo) & (pl.col(RT) <= pl.col(T) + self.hi))
            matched_ids = pairs.get_column(ID).unique()
        stored = rows.drop(PRE, POS).with_columns(
            (pl.col(ID).is_in(matched_ids.implode()) if matched_ids is not None else pl.lit(False)).alias(MATCHED)
        )
        self.left_buf = stored if self.left_buf is None else pl.concat([self.left_buf, stored], how="diagonal_relaxed")
        return pairs

    def _right_arrivals(self, rows: pl.DataFrame) -> pl.DataFrame | None:
        """Pairs made by newly arrived right rows; records them in the right buffer."""
        right = (
            self.prefixed_right(rows).rename({T: RT, ID: RID}).with_columns(rows.get_column(PRE), rows.get_column(POS))
        )
        pairs = None
        if self.left_buf is not None and self.left_buf.height:
            joined = right.join(self.left_buf, on=self.left_keys, how="inner", maintain_order="left_right")
            pairs = joined.filter((pl.col(RT) >= pl.col(T) + self.lo) & (pl.col(RT) <= pl.col(T) + self.hi))
            if pairs.height and self.how == "left":
                hit = pairs.get_column(ID).unique()
                self.left_buf = self.left_buf.with_columns(
                    (pl.col(MATCHED) | pl.col(ID).is_in(hit.implode())).alias(MATCHED)
                )
        stored = right.drop(PRE, POS)
        self.right_buf = (
            stored if self.right_buf is None else pl.concat([self.right_buf, stored], how="diagonal_relaxed")
        )
        return pairs

    # -- the operator ----------------------------------------------------------------------------

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        outputs: list[Output] = []
        emitted: list[pl.DataFrame] = []
        frame = batch.frame
        pre: pl.Series | None = None
        if frame.height:
            self.learn_columns(port, frame)
            pre = self.record_watermarks(port, frame)
            work = self.with_ticks(port, frame).with_columns(
                pre.alias(PRE), pl.int_range(pl.len(), dtype=pl.Int64).alias(POS)
            )
            is_late = work.get_column(T) < work.get_column(PRE)
            if is_late.any():
                outputs.append(
                    (LATE, Batch(frame.filter(is_late), watermark=batch.watermark, ingest_ns=batch.ingest_ns))
                )
                work = work.filter(~is_late)
            pairs = self._left_arrivals(work) if port == 0 else self._right_arrivals(work)
            if pairs is not None and pairs.height:
                emitted.append(
                    pairs.with_columns(
                        pl.lit(1, pl.Int8).alias(PHASE),
                        (pl.col(PRE) - self.hold).clip(lower_bound=MIN_WM).alias(WM_COL),
                    )
                )
        self._update_port(port, batch)
        new_wm = max(self.combined(), self.forwarded)
        expired = self._expire(new_wm, pre)
        if expired is not None:
            emitted.append(expired)
        self.forwarded = new_wm
        pieces: list[pl.DataFrame] = []
        if emitted:
            rows = pl.concat(emitted, how="diagonal_relaxed") if len(emitted) > 1 else emitted[0]
            if RID not in rows.columns:
                rows = rows.with_columns(pl.lit(None, pl.Int64).alias(RID))
            pieces.append(self.output(rows.sort([POS, PHASE, T, ID, RID], nulls_last=True)))
        outputs.insert(0, self.emit(batch, pieces, self._held(new_wm)))
        return outputs

    def _expire(self, new_wm: int, pre: pl.Series | None) -> pl.DataFrame | None:
        """Release left rows whose wait is over (unmatched ones come out in a left join); evict."""
        out = None
        hi, lo = self.hi, self.lo
        if self.left_buf is not None and self.left_buf.height:
            done = pl.col(T) + hi < new_wm
            if self.how == "left":
                lonely = self.left_buf.filter(done & ~pl.col(MATCHED))
                if lonely.height:
                    expiry = lonely.get_column(T) + hi
                    if pre is not None and len(pre):
                        position = pre.search_sorted(expiry, side="right").cast(pl.Int64)
                        before = pre.shift(1, fill_value=self.forwarded).append(pre.tail(1))
                        wm = before.gather(position)
                    else:
                        position = pl.Series([0] * lonely.height, dtype=pl.Int64)
                        wm = pl.Series([self.forwarded] * lonely.height, dtype=pl.Int64)
                    out = lonely.with_columns(
                        position.alias(POS),
                        pl.lit(0, pl.Int8).alias(PHASE),
                        (wm - self.hold).clip(lower_bound=MIN_WM).alias(WM_COL),
                    ).drop(MATCHED)
            self.left_buf = self.left_buf.filter(~done)
        if self.right_buf is not None and self.right_buf.height:
            self.right_buf = self.right_buf.filter(pl.col(RT) >= new_wm + lo)
        return out

    # -- checkpoints -----------------------------------------------------------------------------

    @override
    def signature(self) -> dict[str, Any]:
        return {**super().signature(), "between_ms": [self.lower_ms, self.upper_ms]}

    @override
    def join_buffers(self) -> dict[str, pl.DataFrame | None]:
        return {"left": self.left_buf, "right": self.right_buf}

    @override
    def load_join_buffers(self, frames: dict[str, pl.DataFrame]) -> None:
        self.left_buf = frames.get("left")
        self.right_buf = frames.get("right")
