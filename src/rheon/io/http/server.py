"""HttpIngest's HTTP/1.1 connections: uvicorn's h11 protocol with the two limits uvicorn lacks.

uvicorn has no timeout for reading a request's headers (its keep-alive timer only starts after a
response, and any byte, even one of an unfinished request, stops it), and its ``limit_concurrency``
counts every open connection, idle ones too: 1,000 connections that never send a byte make every
other client get ``503`` for as long as they stay open. This protocol instead

- closes a connection whose request headers are not complete ``header_timeout`` after it opened or
  after its previous response (with ``408`` when part of a request had arrived, silently
  otherwise, as at the end of a keep-alive), whatever trickles in meanwhile;
- keeps at most ``max_connections`` connections open: when one more opens, the connection that
  has waited longest without a request in progress (idle keep-alive, or headers not complete yet)
  is closed to make room, as nginx reuses idle keep-alive connections when it runs out; only when
  every open connection is in the middle of a request is the new one refused, with ``503``.

So idle or slow-header connections cannot lock out well-behaved clients, and the server's sockets
stay bounded. The request body's own timeout is the endpoint's (it answers ``408``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ConnectionLimits", "protocol_for"]

log = logging.getLogger(__name__)

_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\ncontent-length: 15\r\nconnection: close\r\n\r\nRequest Timeout"
_BUSY_503 = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 19\r\nretry-after: 1\r\n"
    b"connection: close\r\n\r\nService Unavailable"
)


@dataclass(frozen=True)
class ConnectionLimits:
    """What `protocol_for` enforces.

    Parameters
    ----------
    max_connections
        Most connections open at once.
    header_timeout_s
        Seconds a connection may take to send a request's headers.
    on_refused
        Called with ``408`` or ``503`` each time a connection is closed for a limit (for counters).

    Examples
    --------
    >>> ConnectionLimits(max_connections=10, header_timeout_s=5.0, on_refused=print).max_connections
    10
    """

    max_connections: int
    header_timeout_s: float
    on_refused: Callable[[int], None]


class _LimitedH11Protocol(H11Protocol):
    limits: ClassVar[ConnectionLimits]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting_after: object = None  # the request cycle the next request's headers come after
        self._waiting_since = 0.0
        self._partial = False  # bytes of the awaited request have arrived

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_request()
        limit = self.limits.max_connections
        if len(self.connections) > limit and sum(not c.transport.is_closing() for c in self.connections) > limit:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._header_timer is not None:
            self._partial = True
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not self._waiting_after:  # a request's headers are complete
            self._stop_header_timer()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._await_request()
        super().on_response_complete()  # may start a pipelined request at once (handle_events)

    def _await_request(self) -> None:
        self._stop_header_timer()
        self._waiting_after = self.cycle
        self._waiting_since = self.loop.time()
        self._partial = False
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _idle(self) -> bool:
        """No request in progress (waiting for one, perhaps partly received) and not closing."""
        return not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._partial:
            self.transport.write(_TIMEOUT_408)
            self.limits.on_refused(408)
        log.debug("http_ingest_header_timeout client=%s partial=%s", self.client, self._partial)
        self.transport.close()

    def _make_room(self) -> None:
        idle = [c for c in self.connections if isinstance(c, _LimitedH11Protocol) and c is not self and c._idle()]
        if idle:
            oldest = min(idle, key=lambda c: c._waiting_since)
            log.debug("http_ingest_connection_evicted client=%s for=%s", oldest.client, self.client)
            oldest._stop_header_timer()
            oldest.transport.close()
            return
        log.debug("http_ingest_connection_refused client=%s reason=all_busy", self.client)
        self._stop_header_timer()
        self.transport.write(_BUSY_503)
        self.transport.close()
        self.limits.on_refused(503)


def protocol_for(limits: ConnectionLimits) -> type[H11Protocol]:
    """The protocol class to give uvicorn (``uvicorn.Config(http=...)``) to enforce ``limits``.

    Examples
    --------
    >>> cls = protocol_for(ConnectionLimits(max_connections=10, header_timeout_s=5.0, on_refused=print))
    >>> cls.limits.header_timeout_s, issubclass(cls, H11Protocol)
    (5.0, True)
    """
    return type("IngestH11Protocol", (_LimitedH11Protocol,), {"limits": limits})
