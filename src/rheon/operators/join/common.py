"""What the two-input joins share: combined watermarks, output columns, emission order.

Output rows are the left record's columns followed by the right record's, without the right
key columns (equal to the left ones); a right column whose name the left already uses gets
``suffix`` (``"_right"`` by default, as in Polars). In a left join the right columns are null
when nothing matched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.batch import MAX_WM, MIN_WM, WM_COL, Batch
from rheon.core.eventtime import TimeType, time_type_of
from rheon.operators.base import MAIN, Operator, Output, State
from rheon.state.shared import SharedFiles

__all__ = ["ID", "PHASE", "POS", "T", "TwoInputJoin", "right_names"]

T = "__t"  # event time in ticks
ID = "__id"  # arrival number, for a stable order
POS = "__pos"  # position in the batch before which a row is emitted
PHASE = "__phase"  # 0: released by the watermark before that record, 1: caused by that record


def right_names(left: Sequence[str], right: Sequence[str], right_keys: Sequence[str], suffix: str) -> dict[str, str]:
    """How right columns are named in the output (right key columns are dropped).

    Examples
    --------
    >>> right_names(["card", "ts", "amount"], ["card", "ts", "city"], ["card"], "_right")
    {'ts': 'ts_right', 'city': 'city'}
    """
    taken = set(left)
    out = {}
    for name in right:
        if name in right_keys or name == WM_COL or name.startswith("__"):
            continue
        out[name] = f"{name}{suffix}" if name in taken else name
    return out


class TwoInputJoin(Operator):
    """Base of joins with two input streams (port 0 left, port 1 right).

    Keeps each input's watermark; the join's watermark is the minimum over inputs that are not
    idle (like ``union``). A record is judged against that combined watermark as it held when
    the record arrived.
    """

    stateful = True

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
        super().__init__(name)
        self.left_keys = list(left_keys)
        self.right_keys = list(right_keys)
        self.left_time = left_time
        self.right_time = right_time
        self.how = how
        self.suffix = suffix
        self.ttype = time_type
        self.wm = [MIN_WM, MIN_WM]
        self.idle = [False, False]
        self.ended = [False, False]
        self.forwarded = MIN_WM
        self.seq = 0
        self.left_columns: list[str] | None = None
        self.right_columns: list[str] | None = None
        self.right_schema: pl.Schema | None = None

    # -- watermarks ---------------------------------------------------------------------------

    def combined(self) -> int:
        remaining = [p for p in (0, 1) if not self.ended[p]]
        if not remaining:
            return MAX_WM
        active = [self.wm[p] for p in remaining if not self.idle[p]]
        return min(active) if active else min(self.wm[p] for p in remaining)

    def _update_port(self, port: int, batch: Batch) -> None:
        self.wm[port] = max(self.wm[port], batch.watermark)
        self.idle[port] = batch.idle and batch.frame.height == 0
        if batch.end:
            self.ended[port] = True
            self.wm[port] = MAX_WM

    def record_watermarks(self, port: int, frame: pl.DataFrame) -> pl.Series:
        """The combined watermark before each record of a batch from ``port``."""
        other = 1 - port
        cap = MAX_WM if self.ended[other] or self.idle[other] else self.wm[other]
        own = frame.get_column(WM_COL) if WM_COL in frame.columns else pl.Series([self.wm[port]] * frame.height)
        return own.clip(upper_bound=cap).clip(lower_bound=self.forwarded).cast(pl.Int64)

    # -- rows ---------------------------------------------------------------------------------

    def with_ticks(self, port: int, frame: pl.DataFrame) -> pl.DataFrame:
        column = self.left_time if port == 0 else self.right_time
        if self.ttype is None:
            self.ttype = time_type_of(frame.schema[column], column=column, where=self.label)
        ids = pl.int_range(self.seq, self.seq + frame.height, dtype=pl.Int64)
        self.seq += frame.height
        return frame.with_columns(pl.col(column).cast(pl.Int64).alias(T), ids.alias(ID))

    def learn_columns(self, port: int, frame: pl.DataFrame) -> None:
        names = [c for c in frame.columns if c != WM_COL and not c.startswith("__")]
        if port == 0 and self.left_columns is None:
            self.left_columns = names
        if port == 1 and self.right_columns is None:
            self.right_columns = names
            self.right_schema = pl.Schema({n: frame.schema[n] for n in names})

    def output(self, pairs: pl.DataFrame, extra: Sequence[pl.Expr] = ()) -> pl.DataFrame:
        """Select output columns from a frame holding left columns and ``__r_``-prefixed right ones."""
        left = self.left_columns or []
        right = right_names(left, self.right_columns or [], self.right_keys, self.suffix)
        exprs = [pl.col(c) for c in left]
        for name, out in right.items():
            src = f"__r_{name}"
            if src in pairs.columns:
                exprs.append(pl.col(src).alias(out))
            else:
                dtype = self.right_schema[name] if self.right_schema is not None else pl.Null()
                exprs.append(pl.lit(None, dtype).alias(out))
        return pairs.select(*exprs, *extra, pl.col(WM_COL))

    def prefixed_right(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Right rows with every non-key column renamed ``__r_<name>`` (keys renamed to the left's)."""
        renames = {}
        for rk, lk in zip(self.right_keys, self.left_keys, strict=True):
            renames[rk] = lk
        for c in frame.columns:
            if c not in renames and c != WM_COL and not c.startswith("__"):
                renames[c] = f"__r_{c}"
        keep = [c for c in frame.columns if c in renames or c in (T, ID)]
        return frame.select(keep).rename({c: renames[c] for c in keep if c in renames})

    # -- checkpoints ---------------------------------------------------------------------------

    def _base_state(self) -> dict[str, Any]:
        return {
            "wm": self.wm,
            "idle": self.idle,
            "ended": self.ended,
            "forwarded": self.forwarded,
            "seq": self.seq,
            "time_type": self.ttype,
            "columns": (self.left_columns, self.right_columns, self.right_schema),
        }

    def _load_base(self, objects: dict[str, Any]) -> None:
        self.wm, self.idle, self.ended = list(objects["wm"]), list(objects["idle"]), list(objects["ended"])
        self.forwarded, self.seq = objects["forwarded"], objects["seq"]
        if self.ttype is None:
            self.ttype = objects["time_type"]
        self.left_columns, self.right_columns, self.right_schema = objects["columns"]

    @override
    def signature(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "keys": [self.left_keys, self.right_keys],
            "time": [self.left_time, self.right_time],
            "how": self.how,
        }

    def join_buffers(self) -> dict[str, pl.DataFrame | None]:
        """The rows the join holds, by name: what a checkpoint keeps besides the watermarks."""
        raise NotImplementedError

    def load_join_buffers(self, frames: dict[str, pl.DataFrame]) -> None:
        """Put back the rows :meth:`join_buffers` gave (a name is missing when it held none)."""
        raise NotImplementedError

    @override
    def snapshot(self, files: SharedFiles) -> State:
        frames = {name: frame for name, frame in self.join_buffers().items() if frame is not None}
        return frames, self._base_state()

    @override
    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        self._load_base(objects)
        self.load_join_buffers(frames)

    @staticmethod
    def emit(batch: Batch, frames: list[pl.DataFrame], watermark: int) -> Output:
        frames = [f for f in frames if f.height]
        frame = pl.concat(frames, how="diagonal_relaxed") if frames else pl.DataFrame()
        return MAIN, Batch(frame, watermark=watermark, ingest_ns=batch.ingest_ns, end=batch.end)
