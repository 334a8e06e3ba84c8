"""The operator that hands batches to a sink's logic."""

from __future__ import annotations

from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.batch import Batch, user_columns
from rheon.core.errors import RheonError, SinkError
from rheon.core.metrics import LatencyHistogram
from rheon.io.base import SinkLogic
from rheon.operators.base import Operator, Output, State
from rheon.state.shared import SharedFiles
from rheon.time.clock import Clock

__all__ = ["SinkOperator"]


class SinkOperator(Operator):
    """Write every non-empty batch to the sink.

    The executor decides when written data becomes final: at each checkpoint
    (``pre_commit``/``commit``) when checkpointing, else with ``flush`` when the run ends.
    Records end-to-end latency: from when a batch's oldest record entered the flow to when the
    sink has written it.
    """

    kind = "sink"
    stateful = True  # only sinks whose logic has state put anything in checkpoints

    def __init__(self, name: str, logic: SinkLogic, ports: int, clock: Clock, latency: LatencyHistogram) -> None:
        super().__init__(name)
        self.logic = logic
        self.ended = [False] * ports
        self.clock = clock
        self.latency = latency
        self.closed = False

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        frame = batch.frame
        if frame.height:
            try:
                self.logic.write(user_columns(frame))
            except RheonError:
                raise
            except Exception as exc:
                msg = f"{self.label}: write failed: {type(exc).__name__}: {exc}"
                raise SinkError(msg) from exc
            if batch.ingest_ns:
                self.latency.record((self.clock.now_ns() - batch.ingest_ns) / 1e6, frame.height)
        if batch.end:
            self.ended[port] = True
        letters = self.logic.take_dead_letters()
        if letters:
            return [self.dead([r for r, _ in letters], [p for _, p in letters], batch)]
        return []

    @override
    def signature(self) -> dict[str, Any]:
        return {"kind": self.kind, "sink": type(self.logic).__name__}

    @override
    def snapshot(self, files: SharedFiles) -> State | None:
        return self.logic.state()

    @override
    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        self.logic.load_state(frames, objects)

    @override
    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.logic.close()
