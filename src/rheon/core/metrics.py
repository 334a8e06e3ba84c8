"""Run-time measurements: one registry per running flow, which every part reports to.

The run loop (one thread) writes plain integers and lists between batches; readers on other
threads (``flow.metrics()``, the Prometheus endpoint) read them as they are, at most one batch
behind. Nothing here costs anything per record: counters move per batch.
"""

from __future__ import annotations

import bisect
import math
import re
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = [
    "CheckpointRecord",
    "CheckpointStats",
    "ErrorRate",
    "LatencyHistogram",
    "MetricsRegistry",
    "OperatorStats",
    "SinkHealth",
    "StateSize",
    "reason_kind",
]


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

    def since(self, counts: list[int]) -> LatencyHistogram:
        """The observations made after an earlier copy of :attr:`counts` (the maximum is this
        histogram's, the sum estimated from bucket bounds).

        Examples
        --------
        >>> h = LatencyHistogram(); h.record(1000.0, 100); before = list(h.counts)
        >>> h.record(1.0, 100)
        >>> round(h.quantile(0.99)), round(h.since(before).quantile(0.99))
        (1000, 1)
        """
        out = LatencyHistogram()
        out.counts = [max(a - b, 0) for a, b in zip(self.counts, counts, strict=True)]
        out.count = sum(out.counts)
        bounds = self.BOUNDS_MS
        out.max_ms = next(
            (
                bounds[i] if i < len(bounds) else self.max_ms
                for i in range(len(out.counts) - 1, -1, -1)
                if out.counts[i]
            ),
            0.0,
        )
        out.max_ms = min(out.max_ms, self.max_ms)
        out.sum_ms = sum(c * (bounds[i] if i < len(bounds) else self.max_ms) for i, c in enumerate(out.counts))
        return out

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
    role: str = "operator"
    """``"source"``, ``"operator"`` or ``"sink"``."""
    rows_in: int = 0
    rows_out: int = 0
    batches: int = 0
    late_rows: int = 0
    dead_letters: int = 0
    busy_ns: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    watermark_ms: int | None = None
    """The watermark of the operator's output, epoch ms, once it has one: ``with_time`` makes its
    own, joins and unions take the lowest of their inputs', the others (windows, matches, maps...)
    pass on their input's."""

    def as_dict(self) -> dict[str, int | float | str]:
        """Counters as a plain dict (latency as p50/p99 in ms when measured, the output's
        watermark in epoch ms once it has one)."""
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
        if self.watermark_ms is not None:
            out["watermark_ms"] = self.watermark_ms
        return out


_VALUES = re.compile(r"'[^']*'|\"[^\"]*\"|(?<![\w.])-?\d[\d_.:eE+-]*")
_MAX_REASONS = 20


def reason_kind(reason: str) -> str:
    """A dead-letter reason with its values taken out: a label with few distinct values.

    Examples
    --------
    >>> reason_kind("ZeroDivisionError: division by zero")
    'ZeroDivisionError'
    >>> reason_kind("field 'v' is 'x', which is not Int64: this source has read the column as Int64 so far")
    "field '…' is '…', which is not Int64"
    >>> reason_kind("unparseable event time in column 'ts' (expected Int64; got 'soon')")
    "unparseable event time in column '…'"
    """
    head = reason.split(" (", 1)[0].partition(": ")[0]  # "KeyError: 'x'" -> the exception's name
    return _VALUES.sub(lambda m: "'…'" if m.group(0)[:1] in "'\"" else "N", head).strip()[:80] or "unknown"


@dataclass
class StateSize:
    """How much state an operator holds."""

    keys: int = 0
    bytes: int | None = None
    """Bytes when the operator can tell cheaply (Polars frames, RocksDB); ``None`` otherwise."""
    timers: int = 0


@dataclass
class SinkHealth:
    """How a sink that retries is doing: retries so far and, for a sink with a circuit breaker
    (the webhook), its state: ``closed``, ``open`` or ``half_open``.

    What counts as a retry is the sink's: a delivery sent again (webhook), a reconnection after a
    lost connection (PostgreSQL, Kafka), a request the Kafka client sent again.

    Examples
    --------
    >>> SinkHealth(retries=3, circuit="open")
    SinkHealth(retries=3, circuit='open')
    >>> SinkHealth(retries=2).circuit is None   # no circuit breaker
    True
    """

    retries: int = 0
    circuit: str | None = None
    """``None``: the sink has no circuit breaker."""


@dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint of a run, as the history keeps it.

    Examples
    --------
    >>> CheckpointRecord(id=7, done_ns=10**9, duration_ms=12.5, size_bytes=4096).as_dict()
    {'id': 7, 'done_ms': 1000.0, 'duration_ms': 12.5, 'size_bytes': 4096, 'ok': True, 'error': None}
    """

    id: int
    done_ns: int
    """Wall-clock time (epoch ns) it completed or failed."""
    duration_ms: float
    size_bytes: int | None
    """Bytes on disk; ``None`` for a failed checkpoint."""
    ok: bool = True
    error: str | None = None
    """Why it failed (the exception, one line)."""

    def as_dict(self) -> dict[str, int | float | str | bool | None]:
        """As plain JSON-ready values (times in epoch ms)."""
        return {
            "id": self.id,
            "done_ms": self.done_ns / 1e6,
            "duration_ms": self.duration_ms,
            "size_bytes": self.size_bytes,
            "ok": self.ok,
            "error": self.error,
        }


@dataclass
class CheckpointStats:
    """The checkpoints of a run: counts, the last one, durations, and the latest
    :attr:`HISTORY` checkpoints (:class:`CheckpointRecord`), completed or failed.

    Examples
    --------
    >>> c = CheckpointStats()
    >>> c.completed(duration_ms=12.5, size_bytes=4096, now_ns=10**9, checkpoint_id=1)
    >>> c.failed(duration_ms=3.0, now_ns=2 * 10**9, checkpoint_id=2, error="CheckpointError: disk full")
    >>> c.count, c.failures, c.last_bytes, c.durations.count
    (1, 1, 4096, 1)
    >>> [(r.id, r.ok) for r in c.history]
    [(1, True), (2, False)]
    """

    HISTORY = 100
    """Checkpoints kept in :attr:`history` (the latest)."""

    count: int = 0
    failures: int = 0
    last_ms: float | None = None
    last_bytes: int | None = None
    last_done_ns: int | None = None
    """Wall-clock time (epoch ns) the last checkpoint completed."""
    durations: LatencyHistogram = field(default_factory=LatencyHistogram)
    history: deque[CheckpointRecord] = field(default_factory=lambda: deque(maxlen=CheckpointStats.HISTORY))
    """The latest checkpoints, oldest first (the run loop appends; readers copy it)."""

    def completed(self, *, duration_ms: float, size_bytes: int, now_ns: int, checkpoint_id: int | None = None) -> None:
        """Checkpoint ``checkpoint_id`` (default: the count) done: it took ``duration_ms`` and
        holds ``size_bytes``."""
        self.count += 1
        self.last_ms = duration_ms
        self.last_bytes = size_bytes
        self.last_done_ns = now_ns
        self.durations.record(duration_ms)
        cid = self.count if checkpoint_id is None else checkpoint_id
        self.history.append(CheckpointRecord(cid, now_ns, duration_ms, size_bytes))

    def failed(self, *, duration_ms: float, now_ns: int, checkpoint_id: int, error: str) -> None:
        """Checkpoint ``checkpoint_id`` could not be written (``error`` says why)."""
        self.failures += 1
        self.history.append(CheckpointRecord(checkpoint_id, now_ns, duration_ms, None, ok=False, error=error))


class MetricsRegistry:
    """Every measurement of one running flow, in one place.

    The run loop registers a part (:class:`OperatorStats`) per source, operator and sink and
    counts into it; sinks record end-to-end latency into their part's histogram; dead letters
    are counted by operator and kind of reason (:func:`reason_kind`, at most 20 kinds per
    operator); the checkpoint coordinator reports to :attr:`checkpoints`; each operator's output
    watermark (:attr:`OperatorStats.watermark_ms`) moves with its batches; source watermarks,
    backlog and state sizes are refreshed between batches. ``flow.metrics()`` and the Prometheus
    endpoint read it.

    Examples
    --------
    >>> reg = MetricsRegistry("payments")
    >>> src = reg.part("source 'tx'", "source"); src.rows_out += 3
    >>> reg.count_dead("map 'm'", "KeyError: 'amount'"); reg.count_dead("map 'm'", "KeyError: 'card'")
    >>> reg.dead
    {("map 'm'", 'KeyError'): 2}
    >>> [p.label for p in reg.parts]
    ["source 'tx'"]
    """

    def __init__(self, flow: str) -> None:
        self.flow = flow
        self.parts: list[OperatorStats] = []
        self.dead: dict[tuple[str, str], int] = {}
        self.checkpoints = CheckpointStats()
        self.watermarks: dict[str, int] = {}
        """Source label → its watermark (epoch ms), once it has one."""
        self.backlog: dict[tuple[str, str, str], float] = {}
        """(source label, split, unit) → how much is waiting to be read (``records``, ``bytes``)."""
        self.state: dict[str, StateSize] = {}
        """Operator label → the state it holds, refreshed between batches."""
        self.sinks: dict[str, SinkHealth] = {}
        """Sink label → its retries and circuit state, for sinks that retry."""
        self.started_ns = time.time_ns()

    def part(self, label: str, role: str) -> OperatorStats:
        """Register a source, operator or sink and return its counters."""
        stats = OperatorStats(label, role)
        self.parts.append(stats)
        return stats

    def count_dead(self, operator: str, reason: str, n: int = 1) -> None:
        """Count ``n`` dead letters of ``operator`` by kind of reason."""
        key = (operator, reason_kind(reason))
        if key not in self.dead and sum(1 for op, _ in self.dead if op == operator) >= _MAX_REASONS:
            key = (operator, "other")
        self.dead[key] = self.dead.get(key, 0) + n

    def latency(self) -> LatencyHistogram:
        """End-to-end latency over all sinks."""
        total = LatencyHistogram()
        for part in self.parts:
            if part.role == "sink":
                total.merge(part.latency)
        return total


class ErrorRate:
    """The share of an operator's recent records that failed: its last ~1,000 records, counted
    by batch (a big batch counts whole), judged once it has had 100.

    Examples
    --------
    >>> rate = ErrorRate()
    >>> rate.add(60, 60, ("map 'm'", "KeyError: 'x'", "{}")); rate.over(0.5)   # too few records yet
    False
    >>> rate.add(60, 60, None); rate.over(0.5), rate.failed, rate.rows
    (True, 120, 120)
    >>> for _ in range(20):
    ...     rate.add(100, 0, None)
    >>> rate.over(0.5), rate.rows
    (False, 1000)
    """

    WINDOW = 1_000
    MIN_RECORDS = 100

    def __init__(self) -> None:
        self.batches: deque[tuple[int, int]] = deque()
        self.rows = 0
        self.failed = 0
        self.first: tuple[str, str, str] | None = None
        """The first failure in the window: ``(operator, reason, payload)``."""

    def add(self, rows: int, failed: int, first: tuple[str, str, str] | None) -> None:
        """A batch of ``rows`` records, ``failed`` of which failed (``first`` the first of them)."""
        if rows == 0 and failed == 0:
            return
        self.batches.append((rows, failed))
        self.rows += rows
        self.failed += failed
        if self.first is None and first is not None:
            self.first = first
        while len(self.batches) > 1 and self.rows - self.batches[0][0] >= self.WINDOW:
            old_rows, old_failed = self.batches.popleft()
            self.rows -= old_rows
            self.failed -= old_failed
        if self.failed == 0:
            self.first = None

    def over(self, limit: float) -> bool:
        """Whether more than ``limit`` of the window's records failed (with enough records)."""
        return self.rows >= self.MIN_RECORDS and self.failed > limit * self.rows
