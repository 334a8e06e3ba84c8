"""Run-time measurements: per-operator counters and latency histograms."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

__all__ = ["LatencyHistogram", "OperatorStats"]


def _bounds() -> list[float]:
    out, b = [], 0.01
    while b < 120_000:
        out.append(round(b, 6))
        b *= 1.25
    return out


class LatencyHistogram:
    """Latencies in milliseconds, in buckets 25% apart from 10 µs to two minutes.

    Examples
    --------
    >>> h = LatencyHistogram()
    >>> for ms in (1, 2, 3, 100):
    ...     h.record(ms)
    >>> h.count, round(h.quantile(0.5), 1) in (1.9, 2.0, 2.1, 2.2, 2.3, 2.4), h.max_ms
    (4, True, 100.0)
    """

    BOUNDS_MS = _bounds()

    def __init__(self) -> None:
        self.counts = [0] * (len(self.BOUNDS_MS) + 1)
        self.count = 0
        self.sum_ms = 0.0
        self.max_ms = 0.0

    def record(self, ms: float, n: int = 1) -> None:
        """Add ``n`` observations of ``ms`` milliseconds."""
        if n <= 0:
            return
        ms = max(float(ms), 0.0)
        self.counts[bisect.bisect_left(self.BOUNDS_MS, ms)] += n
        self.count += n
        self.sum_ms += ms * n
        self.max_ms = max(self.max_ms, ms)

    def quantile(self, q: float) -> float:
        """Estimate the ``q`` quantile (0..1), interpolating inside its bucket."""
        if not self.count:
            return math.nan
        rank = q * self.count
        seen = 0
        for i, c in enumerate(self.counts):
            if c and seen + c >= rank:
                lo = self.BOUNDS_MS[i - 1] if i > 0 else 0.0
                hi = self.BOUNDS_MS[i] if i < len(self.BOUNDS_MS) else self.max_ms
                frac = (rank - seen) / c
                return min(lo + (hi - lo) * frac, self.max_ms)
            seen += c
        return self.max_ms

    def merge(self, other: LatencyHistogram) -> None:
        """Add another histogram's observations to this one."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.sum_ms += other.sum_ms
        self.max_ms = max(self.max_ms, other.max_ms)


@dataclass
class OperatorStats:
    """Counters for one operator of a running flow.

    Examples
    --------
    >>> s = OperatorStats("filter 'big'")
    >>> s.rows_in += 10; s.rows_out += 4
    >>> s.as_dict()["rows_out"]
    4
    """

    label: str
    rows_in: int = 0
    rows_out: int = 0
    batches: int = 0
    late_rows: int = 0
    dead_letters: int = 0
    busy_ns: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def as_dict(self) -> dict[str, int | float | str]:
        """Counters as a plain dict (latency as p50/p99 in ms when measured)."""
        out: dict[str, int | float | str] = {
            "operator": self.label,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "batches": self.batches,
            "late_rows": self.late_rows,
            "dead_letters": self.dead_letters,
            "busy_ms": round(self.busy_ns / 1e6, 3),
        }
        if self.latency.count:
            out["latency_p50_ms"] = round(self.latency.quantile(0.5), 3)
            out["latency_p99_ms"] = round(self.latency.quantile(0.99), 3)
        return out
