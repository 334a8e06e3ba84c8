"""The two extension points of the io layer: a source and a sink.

Both follow one pattern: the user holds a small config object (``rh.io.Records(rows)``); when the
flow runs, the runtime calls its ``build(ctx)`` to get the logic object that does the work
(``next_batch`` / ``write``) and holds connections and positions.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from rheon.core.errors import SourceError
from rheon.core.metrics import SinkHealth
from rheon.time.clock import Clock, SystemClock

__all__ = ["BuildContext", "KeepsDeadLetters", "Sink", "SinkLogic", "Source", "SourceLogic"]


@dataclass(frozen=True)
class BuildContext:
    """What a source or sink learns about its place in the flow when it is built.

    Examples
    --------
    >>> from rheon.time.clock import ManualClock
    >>> ctx = BuildContext(flow="f", operator="src", clock=ManualClock(start_ms=0))
    >>> ctx.operator, ctx.clock.now_ns()
    ('src', 0)
    """

    flow: str
    operator: str
    clock: Clock = field(default_factory=SystemClock)
    stop: threading.Event = field(default_factory=threading.Event)
    state_backend: str = "memory"
    state_dir: Path | None = None
    """Where operators may keep on-disk state (under the checkpoint directory), if anywhere."""
    checkpointing: bool = False
    """Whether the run takes checkpoints (sinks then commit per checkpoint)."""
    event_time: str | None = None
    """A source's event-time column, if the flow names one: a message source may then keep each
    payload as received in ``RAW_COL``, for the dead letters of records whose time is bad."""
    wake: threading.Event = field(default_factory=threading.Event)
    """Set it, from any thread, when data has arrived: the run loop, if asleep, reads the sources
    at once. A source that does declares ``wakes_loop = True`` (:class:`SourceLogic`)."""


class SourceLogic(ABC):
    """The running side of a source: returns whatever data is available now.

    ``last_ingest_ns`` may be set by ``next_batch`` to the wall-clock time (epoch ns) at which its
    oldest record became available; the runtime measures end-to-end latency from it. Sources that
    leave it ``None`` are measured from the moment they were polled.

    Examples
    --------
    A source whose logic hands out ``n`` rows, two at a time:

    >>> import polars as pl, rheon as rh
    >>> class CountdownLogic(rh.io.SourceLogic):
    ...     def __init__(self, n):
    ...         self.left = n
    ...     def next_batch(self):
    ...         if self.left == 0:
    ...             return None
    ...         rows = list(range(self.left, max(self.left - 2, 0), -1))
    ...         self.left -= len(rows)
    ...         return pl.DataFrame({"n": rows})
    ...     def done(self):
    ...         return self.left == 0
    >>> logic = CountdownLogic(3)
    >>> logic.next_batch()["n"].to_list(), logic.next_batch()["n"].to_list(), logic.done()
    ([3, 2], [1], True)
    """

    last_ingest_ns: int | None = None

    @abstractmethod
    def next_batch(self) -> pl.DataFrame | None:
        """Return the records available now (up to the source's batch size), or ``None``.

        Must not block for long: a source that waits should return ``None`` and report how
        long to wait through :meth:`wait_hint_s`.
        """

    wakes_loop: bool = False
    """Whether the source sets ``BuildContext.wake`` when data arrives (a client thread that
    receives messages, a server that accepts requests). The run loop then sleeps until woken
    (or a timer is due) instead of polling it every couple of milliseconds when it has no
    :meth:`wait_hint_s`: less latency, and no CPU spent polling an idle source."""

    min_batch_interval_ns: int = 0
    """After a read that returned records, the run loop reads this source again no sooner than
    this many nanoseconds later (0: as soon as it has more). Records that arrive meanwhile wait
    and go through together; a record after a quiet spell longer than this goes at once. This
    trades latency (at most this much more) for fewer, larger batches: each batch costs the
    operators a fixed overhead (~0.1 ms per Polars query on small frames), so a source at 50k
    records/s read every 1 ms runs a few hundred batches a second instead of thousands."""

    @abstractmethod
    def done(self) -> bool:
        """True once a bounded source has returned its last record."""

    def wait_hint_s(self) -> float | None:
        """Seconds until more data is expected, if the source knows; ``None`` otherwise."""
        return None

    def splits(self) -> list[str] | None:
        """The splits (e.g. Kafka partitions) this source currently reads, if it has splits.

        Records then carry their split in the hidden ``SPLIT_COL`` column and watermarks are
        tracked per split; a listed split with no data yet holds the watermark back until it
        sends data or the source's ``idle_timeout`` passes.
        """
        return None

    def backlog(self) -> dict[tuple[str, str], float] | None:
        """What is waiting to be read, if the source can tell cheaply: ``{(split, unit): amount}``,
        e.g. ``{("0", "records"): 1200}`` for a Kafka partition's lag, ``{("app.log", "bytes"):
        4096}`` for a tailed file, ``{("queue", "records"): 17}`` for an HTTP ingest queue.
        Polled about once a second, between batches."""
        return None

    def checkpoint_done(self, checkpoint_id: int) -> None:  # noqa: B027 - optional hook
        """A checkpoint holding this source's position is complete (e.g. commit offsets)."""

    def run_finished(self) -> None:  # noqa: B027 - optional hook
        """The run ended normally (input exhausted, or stopped between batches): everything
        handed out has gone through the flow and its output is final. Not called after a
        failure. E.g. acknowledge messages when the run takes no checkpoints."""

    def snapshot(self) -> Any:
        """The read position, for a checkpoint (any picklable value).

        A source that can be rewound returns where it is; :meth:`restore` goes back there.
        Sources that cannot (the default) return ``None``.
        """
        return None

    def restore(self, position: Any) -> None:
        """Continue from a position returned by :meth:`snapshot`."""
        msg = f"{type(self).__name__} cannot resume from a checkpoint position"
        raise SourceError(msg)

    def take_dead_letters(self) -> list[tuple[str, str]]:
        """Records the source could not decode since the last call, as ``(reason, payload)``."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and files."""


class KeepsDeadLetters:
    """For a source or sink logic that sets records aside in ``self.dead`` as ``(reason,
    payload)``: :meth:`take_dead_letters` hands them over once. Put it first among the bases.

    >>> class Lines(KeepsDeadLetters, SourceLogic):
    ...     def __init__(self, lines: list[str]) -> None:
    ...         self.lines, self.dead = lines, []
    ...     def next_batch(self) -> pl.DataFrame | None:
    ...         self.dead += [("not JSON", line) for line in self.lines if not line.startswith("{")]
    ...         rows, self.lines = [line for line in self.lines if line.startswith("{")], []
    ...         return pl.DataFrame({"line": rows})
    ...     def done(self) -> bool:
    ...         return not self.lines
    >>> logic = Lines(['{"a": 1}', "{oops", "oops"])
    >>> logic.next_batch().height
    2
    >>> logic.take_dead_letters(), logic.take_dead_letters()
    ([('not JSON', 'oops')], [])
    """

    dead: list[tuple[str, str]]

    def take_dead_letters(self) -> list[tuple[str, str]]:
        """The records set aside since the last call, as ``(reason, payload)``."""
        dead, self.dead = self.dead, []
        return dead


class Source(ABC):
    """A source's config. Subclasses document their delivery guarantee.

    Examples
    --------
    >>> import polars as pl, rheon as rh
    >>> class Numbers(rh.io.Source):
    ...     \"\"\"0..n-1 in one batch. Guarantee: exactly-once (replayable).\"\"\"
    ...     def __init__(self, n):
    ...         self.n = n
    ...     def build(self, ctx):
    ...         return rh.io.Records(pl.DataFrame({"i": range(self.n)})).build(ctx)
    >>> flow = rh.Flow("n"); out = rh.io.Collect()
    >>> flow.source(Numbers(3)).sink(out)
    >>> flow.run(); [r["i"] for r in out.rows]
    [0, 1, 2]
    """

    @abstractmethod
    def build(self, ctx: BuildContext) -> SourceLogic:
        """Create the logic object that reads data."""

    def schema(self) -> pl.Schema | None:
        """The schema of the records, when known before running (enables build-time checks)."""
        return None


class SinkLogic(ABC):
    """The running side of a sink.

    Examples
    --------
    >>> import polars as pl, rheon as rh
    >>> class CountLogic(rh.io.SinkLogic):
    ...     def __init__(self):
    ...         self.count = 0
    ...     def write(self, frame):
    ...         self.count += frame.height
    >>> logic = CountLogic(); logic.write(pl.DataFrame({"a": [1, 2]})); logic.count
    2
    """

    @abstractmethod
    def write(self, frame: pl.DataFrame) -> None:
        """Write one batch of records (hidden columns already removed; never empty)."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make everything written so far durable and visible (the end of a run without
        checkpoints)."""

    # With checkpoints, output becomes final in two phases, as in Flink's two-phase commit:
    # pre_commit(n) when checkpoint n is taken, commit(n) once it is safely on disk. After a
    # crash, recover(n) is called with the checkpoint the flow restarts from.

    def pre_commit(self, checkpoint_id: int) -> None:
        """Make what was written since the last checkpoint durable but not yet visible."""
        self.flush()

    def commit(self, checkpoint_id: int) -> None:  # noqa: B027 - optional hook
        """Make what was pre-committed up to ``checkpoint_id`` visible."""

    def recover(self, checkpoint_id: int | None) -> None:  # noqa: B027 - optional hook
        """At start-up: finish commits up to ``checkpoint_id`` and discard anything later."""

    def health(self) -> SinkHealth | None:
        """Retries so far and circuit-breaker state, for a sink that retries (``None``: it does not)."""
        return None

    def take_dead_letters(self) -> list[tuple[str, str]]:
        """Rows the sink gave up on since the last call (rejected, retries exhausted), as
        ``(reason, payload)``; they go to the flow's dead-letter output."""
        return []

    def state(self) -> tuple[dict[str, pl.DataFrame], dict[str, Any]] | None:
        """What the sink needs kept in checkpoints (e.g. output staged for a transaction)."""
        return None

    def load_state(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any]) -> None:  # noqa: B027
        """Reload what :meth:`state` returned, before :meth:`recover`."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called once, after the last write and flush."""


class Sink(ABC):
    """A sink's config. Subclasses document their delivery guarantee.

    Examples
    --------
    >>> import rheon as rh
    >>> class Total(rh.io.Sink):
    ...     \"\"\"Sum a column. Guarantee: at-least-once.\"\"\"
    ...     def __init__(self, column):
    ...         self.column, self.value = column, 0
    ...     def build(self, ctx):
    ...         sink = self
    ...         class Logic(rh.io.SinkLogic):
    ...             def write(self, frame):
    ...                 sink.value += frame[sink.column].sum()
    ...         return Logic()
    >>> flow = rh.Flow("t"); total = Total("x")
    >>> flow.source(rh.io.Records([{"x": 2}, {"x": 3}])).sink(total)
    >>> flow.run(); total.value
    5
    """

    @abstractmethod
    def build(self, ctx: BuildContext) -> SinkLogic:
        """Create the logic object that writes data."""
