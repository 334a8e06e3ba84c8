"""Union: several streams into one, with the watermark the minimum over the live inputs."""

from __future__ import annotations

from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.batch import MAX_WM, MIN_WM, WM_COL, Batch
from rheon.operators.base import MAIN, Operator, Output, State
from rheon.state.shared import SharedFiles

__all__ = ["Union"]


class Union(Operator):
    """Forward batches from every input; the output watermark is the minimum over the inputs.

    An input that reports itself idle does not hold the watermark back until it sends data
    again (unless every input still running is idle); an input that ended counts as +infinity. Per-record watermarks are capped by the
    other inputs' watermarks, so a record is never judged against progress the union has not
    made.
    """

    kind = "union"
    stateful = True

    def __init__(self, name: str, ports: int) -> None:
        super().__init__(name)
        self.wm = [MIN_WM] * ports
        self.idle = [False] * ports
        self.ended = [False] * ports
        self.out_wm = MIN_WM

    @override
    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "inputs": len(self.wm)}

    @override
    def snapshot(self, files: SharedFiles) -> State:
        return {}, {"wm": self.wm, "idle": self.idle, "ended": self.ended, "out_wm": self.out_wm}

    @override
    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        self.wm, self.idle, self.ended = list(objects["wm"]), list(objects["idle"]), list(objects["ended"])
        self.out_wm = objects["out_wm"]

    def _combined(self) -> tuple[int, bool]:
        """The inputs' combined watermark, and whether the output is idle.

        Idle inputs are left out while some other input is active. Once every input that has
        not ended is idle, they are all that can still send data, so their own watermark holds.
        """
        remaining = [p for p, ended in enumerate(self.ended) if not ended]
        if not remaining:
            return MAX_WM, False
        active = [self.wm[p] for p in remaining if not self.idle[p]]
        if active:
            return min(active), False
        return min(self.wm[p] for p in remaining), True

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        before = self.out_wm
        self.wm[port] = max(self.wm[port], batch.watermark)
        self.idle[port] = batch.idle and batch.frame.height == 0
        if batch.end:
            self.ended[port] = True
            self.wm[port] = MAX_WM
            self.idle[port] = False
        combined, all_idle = self._combined()
        self.out_wm = max(self.out_wm, combined)
        frame = batch.frame
        if frame.height and WM_COL in frame.columns:
            others = [w for p, w in enumerate(self.wm) if p != port and not self.idle[p] and not self.ended[p]]
            cap = min(others) if others else MAX_WM
            frame = frame.with_columns(
                pl.min_horizontal(pl.col(WM_COL), pl.lit(cap, pl.Int64)).clip(lower_bound=before)
            )
        out = Batch(
            frame,
            watermark=self.out_wm,
            ingest_ns=batch.ingest_ns,
            idle=all_idle,
            end=all(self.ended),
        )
        return [(MAIN, out)]
