"""What a run reports: throughput, latency, late events and dead letters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunStats"]


@dataclass
class RunStats:
    """A snapshot of a flow's metrics: ``flow.metrics()``, during or after a run.

    Attributes
    ----------
    records_in
        Records read from all sources.
    late_rows
        Events that arrived after their window closed (also on ``.late()`` streams).
    dead_letters
        Records that failed (also on ``flow.dead_letters()``).
    latency_p50_ms, latency_p99_ms
        End-to-end latency at the sinks, from a record's arrival to its output.
    watermark_ms
        The flow's event-time watermark (minimum over its sources), epoch ms; ``None`` if none.
    operators
        Per-operator counters.
    unhandled_dead_letters
        Up to 1,000 dead-letter rows kept when the flow has no ``dead_letters()`` consumer.
    checkpoints
        Checkpoints taken by this run.
    restored_from
        The checkpoint this run resumed from, if it did.
    checkpoint_ms, restore_ms
        How long the last checkpoint took, and loading the one this run resumed from.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("s")
    >>> flow.source(rh.io.Records([{"x": 1}, {"x": 0}])).map(lambda r: {"y": 1 / r["x"]}).sink(rh.io.Collect())
    >>> flow.run()
    >>> stats = flow.metrics()
    >>> stats.records_in, stats.dead_letters, stats.unhandled_dead_letters[0]["reason"]
    (2, 1, 'ZeroDivisionError: division by zero')
    """

    flow: str
    running: bool
    elapsed_s: float
    records_in: int
    records_out: int
    late_rows: int
    dead_letters: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    watermark_ms: int | None
    operators: list[dict[str, Any]] = field(default_factory=list)
    unhandled_dead_letters: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: int = 0
    restored_from: int | None = None
    checkpoint_ms: float | None = None
    restore_ms: float | None = None

    @property
    def events_per_s(self) -> float:
        """Average input rate over the run."""
        return self.records_in / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def __str__(self) -> str:
        lat = (
            f", latency p50 {self.latency_p50_ms:.2f} ms p99 {self.latency_p99_ms:.2f} ms"
            if self.latency_p50_ms is not None and self.latency_p99_ms is not None
            else ""
        )
        return (
            f"flow '{self.flow}': {self.records_in} records in, {self.records_out} out in "
            f"{self.elapsed_s:.3f} s ({self.events_per_s:,.0f}/s), {self.late_rows} late, "
            f"{self.dead_letters} dead letters{lat}"
        )
