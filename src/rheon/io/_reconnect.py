"""Paced reconnection for sinks that hold a connection to a server (PostgreSQL, Redis).

A sink counts failed attempts with one :class:`Reconnects` per write: each failure either waits
(``backoff``, then twice as long each time, at most 30 s) or, past ``retries``, raises a
:class:`~rheon.core.errors.SinkError` that names the sink, the server and the last error. While
the flow stops (its last checkpoint), each wait is at most `STOPPING_MAX_WAIT_S`: short enough not
to hold a stop for long, long enough that a server's passing error does not spend every retry at
once and fail the last commit.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from rheon.core.errors import SinkError
from rheon.time.clock import Clock

log = logging.getLogger("rheon.io")

MAX_BACKOFF_S = 30.0
STOPPING_MAX_WAIT_S = 1.0


@dataclass
class Reconnects:
    """Counts one write's reconnection attempts and paces them.

    >>> from rheon.time.clock import ManualClock
    >>> import threading
    >>> r = Reconnects("db", "PostgreSQL", "localhost:5432", retries=1, backoff_ms=100,
    ...                clock=ManualClock(), stop=threading.Event())
    >>> r.failed(OSError("refused"), "refused")  # waits 0.1 s on the clock, then returns
    >>> r.failed(OSError("refused"), "refused")
    Traceback (most recent call last):
    rheon.core.errors.SinkError: sink 'db': lost the connection to PostgreSQL at localhost:5432 and could not restore it in 1 retries (refused). Is the server running?
    """

    sink: str
    service: str
    server: str
    retries: int
    backoff_ms: int
    clock: Clock
    stop: threading.Event
    attempt: int = 0

    def failed(self, exc: BaseException, problem: str) -> None:
        """Note a failed attempt: wait before the next one, or raise once the retries are spent."""
        self.attempt += 1
        if self.attempt > self.retries:
            msg = (
                f"sink '{self.sink}': lost the connection to {self.service} at {self.server} and could not "
                f"restore it in {self.retries} retries ({problem}). Is the server running?"
            )
            raise SinkError(msg) from exc
        delay = min(self.backoff_ms / 1000 * 2 ** (self.attempt - 1), MAX_BACKOFF_S)
        log.warning(
            "reconnect service=%s sink=%s attempt=%d retries=%d delay_s=%.2f error=%r",
            self.service, self.sink, self.attempt, self.retries, delay, problem,
        )  # fmt: skip
        if self.stop.is_set():  # stopping: wait all the same, but briefly
            self.clock.sleep(min(delay, STOPPING_MAX_WAIT_S), threading.Event())
        else:
            self.clock.sleep(delay, self.stop)
