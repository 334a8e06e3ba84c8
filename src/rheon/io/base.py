"""The two extension points of the io layer: a source and a sink.

Both follow one pattern: the user holds a small config object (``rh.io.Records(rows)``); when the
flow runs, the runtime calls its ``build(ctx)`` to get the logic object that does the work
(``next_batch`` / ``write``) and holds connections and positions.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import polars as pl

from rheon.time.clock import Clock, SystemClock

__all__ = ["BuildContext", "Sink", "SinkLogic", "Source", "SourceLogic"]


@dataclass(frozen=True)
class BuildContext:
    """What a source or sink learns about its place in the flow when it is built."""

    flow: str
    operator: str
    clock: Clock = field(default_factory=SystemClock)
    stop: threading.Event = field(default_factory=threading.Event)


class SourceLogic(ABC):
    """The running side of a source: returns whatever data is available now.

    ``last_ingest_ns`` may be set by ``next_batch`` to the wall-clock time (epoch ns) at which its
    oldest record became available; the runtime measures end-to-end latency from it. Sources that
    leave it ``None`` are measured from the moment they were polled.
    """

    last_ingest_ns: int | None = None

    @abstractmethod
    def next_batch(self) -> pl.DataFrame | None:
        """Return the records available now (up to the source's batch size), or ``None``.

        Must not block for long: a source that waits should return ``None`` and report how
        long to wait through :meth:`wait_hint_s`.
        """

    @abstractmethod
    def done(self) -> bool:
        """True once a bounded source has returned its last record."""

    def wait_hint_s(self) -> float | None:
        """Seconds until more data is expected, if the source knows; ``None`` otherwise."""
        return None

    def take_dead_letters(self) -> list[tuple[str, str]]:
        """Records the source could not decode since the last call, as ``(reason, payload)``."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections and files."""


class Source(ABC):
    """A source's config. Subclasses document their delivery guarantee."""

    @abstractmethod
    def build(self, ctx: BuildContext) -> SourceLogic:
        """Create the logic object that reads data."""

    def schema(self) -> pl.Schema | None:
        """The schema of the records, when known before running (enables build-time checks)."""
        return None


class SinkLogic(ABC):
    """The running side of a sink."""

    @abstractmethod
    def write(self, frame: pl.DataFrame) -> None:
        """Write one batch of records (hidden columns already removed; never empty)."""

    def flush(self) -> None:  # noqa: B027 - optional hook
        """Make everything written so far durable/visible."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources; called once, after the last write and flush."""


class Sink(ABC):
    """A sink's config. Subclasses document their delivery guarantee."""

    @abstractmethod
    def build(self, ctx: BuildContext) -> SinkLogic:
        """Create the logic object that writes data."""
