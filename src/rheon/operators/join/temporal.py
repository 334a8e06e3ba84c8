"""Temporal join: enrich each left record with the right side's latest value for its key *as of
the record's event time* (Flink's event-time temporal join; a KTable join in event time).

The right stream is a changelog: each record is a new version of its key's value. A left record
waits until the right side's watermark has passed its time (so every version up to that time is
known), then takes the last version at or before it. Versions no pending or future record can
need are dropped. An idle or finished right side does not make left records wait.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl
from typing_extensions import override

from rheon.core.batch import MAX_WM, WM_COL, Batch
from rheon.core.eventtime import TimeType
from rheon.operators.base import LATE, Output
from rheon.operators.join.common import ID, T, TwoInputJoin

__all__ = ["TemporalJoin"]

RT, RID = "__rt", "__rid"


class TemporalJoin(TwoInputJoin):
    """Stream (port 0) x changelog stream (port 1), inner or left."""

    kind = "temporal_join"

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
    ) -> None:
        super().__init__(name, left_keys, right_keys, left_time, right_time, how, suffix, time_type)
        self.pending: pl.DataFrame | None = None
        self.versions: pl.DataFrame | None = None

    def _right_wm(self) -> int:
        return MAX_WM if self.ended[1] or self.idle[1] else self.wm[1]

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        outputs: list[Output] = []
        frame = batch.frame
        if frame.height:
            self.learn_columns(port, frame)
            pre = self.record_watermarks(port, frame)
            rows = self.with_ticks(port, frame)
            is_late = rows.get_column(T) < pre
            if is_late.any():
                outputs.append(
                    (LATE, Batch(frame.filter(is_late), watermark=batch.watermark, ingest_ns=batch.ingest_ns))
                )
                rows = rows.filter(~is_late)
            if port == 0:
                self.pending = rows if self.pending is None else pl.concat([self.pending, rows], how="diagonal_relaxed")
            else:
                versions = self.prefixed_right(rows).rename({T: RT, ID: RID})
                self.versions = (
                    versions if self.versions is None else pl.concat([self.versions, versions], how="diagonal_relaxed")
                )
        before = self.forwarded
        self._update_port(port, batch)
        new_wm = max(self.combined(), self.forwarded)
        pieces = []
        released = self._release(before)
        if released is not None:
            pieces.append(released)
        self._compact(new_wm)
        self.forwarded = new_wm
        outputs.insert(0, self.emit(batch, pieces, new_wm))
        return outputs

    def _release(self, wm_before: int) -> pl.DataFrame | None:
        pending = self.pending
        if pending is None or pending.height == 0:
            return None
        limit = self._right_wm()
        ready = pending.filter(pl.col(T) < limit)
        if ready.height == 0:
            return None
        self.pending = pending.filter(pl.col(T) >= limit)
        ready = ready.sort(T)
        if self.versions is not None and self.versions.height:
            joined = ready.join_asof(
                self.versions.sort(RT),
                left_on=T,
                right_on=RT,
                by=self.left_keys,
                strategy="backward",
                check_sortedness=False,
            )
            if self.how != "left":
                joined = joined.filter(pl.col(RID).is_not_null())
        else:
            if self.how != "left":
                return None
            joined = ready
        joined = joined.sort(ID).with_columns(pl.lit(wm_before, pl.Int64).alias(WM_COL))
        return self.output(joined)

    def _compact(self, watermark: int) -> None:
        """Keep, per key, the last version at or before the oldest time still to be looked up.

        A left record is late only behind the join's combined ``watermark``, not behind its own
        stream's, so that is the oldest time a left record still to come may look up.
        """
        versions = self.versions
        if versions is None or versions.height == 0:
            return
        horizon = watermark if not self.ended[0] else MAX_WM
        if self.pending is not None and self.pending.height:
            horizon = min(horizon, int(self.pending.get_column(T).min()))  # type: ignore[arg-type]
        old = versions.filter(pl.col(RT) <= horizon)
        if old.height <= 1:
            return
        latest = old.sort([RT, RID]).group_by(self.left_keys, maintain_order=True).last()
        self.versions = pl.concat([latest.select(versions.columns), versions.filter(pl.col(RT) > horizon)])

    @override
    def join_buffers(self) -> dict[str, pl.DataFrame | None]:
        return {"pending": self.pending, "versions": self.versions}

    @override
    def load_join_buffers(self, frames: dict[str, pl.DataFrame]) -> None:
        self.pending = frames.get("pending")
        self.versions = frames.get("versions")
