"""Clocks. Whatever reads the time takes a clock, so tests can drive time instead of sleeping."""

from __future__ import annotations

import threading
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock"]


class Clock(Protocol):
    """What rheon needs from a clock: wall-clock now, and a sleep that can be woken."""

    def now_ns(self) -> int:
        """Wall-clock time in epoch nanoseconds."""
        ...

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        """Sleep up to ``seconds``, returning early when ``wake`` is set."""
        ...


class SystemClock:
    """The real clock.

    Examples
    --------
    >>> SystemClock().now_ns() > 1_600_000_000 * 10**9
    True
    """

    def now_ns(self) -> int:
        return time.time_ns()

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        if seconds > 0:
            wake.wait(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


class ManualClock:
    """A clock that moves only when told to; ``sleep`` advances it instantly.

    Use it to test rate-limited sources, idle timeouts and run durations without waiting.

    Examples
    --------
    >>> import threading
    >>> c = ManualClock(start_ms=1_000)
    >>> c.now_ns() // 1_000_000
    1000
    >>> c.sleep(0.5, threading.Event()); c.now_ns() // 1_000_000
    1500
    >>> c.advance("2s"); c.now_ns() // 1_000_000
    3500
    """

    def __init__(self, start_ms: int = 1_700_000_000_000) -> None:
        self._now_ns = start_ms * 1_000_000
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now_ns

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        with self._lock:
            self._now_ns += max(int(seconds * 1e9), 1)

    def advance(self, duration: str) -> None:
        """Move the clock forward by a duration such as ``"250ms"``."""
        from rheon.core.durations import to_ms

        with self._lock:
            self._now_ns += to_ms(duration, what="ManualClock.advance") * 1_000_000

    def __repr__(self) -> str:
        return f"ManualClock(now_ms={self._now_ns // 1_000_000})"
