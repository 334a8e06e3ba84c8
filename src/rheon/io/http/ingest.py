"""``rh.io.HttpIngest``: receive events over HTTP (``pip install 'rheon[http]'``: Starlette + uvicorn).

The server runs in a background thread started when the flow builds the source. Each request is
parsed and checked by the handler (the whole request is accepted or rejected, so a client can fix
and resend it) and its events, as one small Polars frame, go into a bounded in-memory queue;
``next_batch`` drains the queue without blocking. When the queue is full the handler answers
``429`` at once instead of waiting or growing memory.
"""

from __future__ import annotations

import hmac
import logging
import math
import socket
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl
from typing_extensions import override

from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError, SourceError
from rheon.core.extras import import_extra
from rheon.io.base import BuildContext, Source, SourceLogic
from rheon.io.http.parse import BadRequest, parse_events

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["HttpIngest"]

log = logging.getLogger(__name__)

_DEAD_PAYLOAD_CHARS = 1_000
_KEEP_DEAD = 1_000


def _server_modules() -> tuple[Any, Any]:
    user, package = "rh.io.HttpIngest", "starlette and uvicorn"
    return (
        import_extra("starlette.applications", user=user, package=package, extra="http"),
        import_extra("uvicorn", user=user, package=package, extra="http"),
    )


class HttpIngest(Source):
    """Receive events (e.g. user actions) over HTTP.

    ``POST {path}`` takes a JSON object, a JSON array of objects, or NDJSON (one object per
    line), and answers:

    - ``202`` ``{"accepted": n}`` once the events are queued for the flow;
    - ``400`` for a body that is not valid JSON, not objects, or does not fit ``schema`` (the
      whole request is rejected and also sent to the dead-letter output, truncated);
    - ``401`` without ``Authorization: Bearer <token>`` when ``token`` is set;
    - ``413`` for a body over ``max_body`` bytes (stopped while reading, not after) or with
      more events than ``max_buffered``;
    - ``429`` with ``Retry-After`` when ``max_buffered`` events are already waiting (the flow
      is behind): backpressure, never an unbounded queue.

    ``GET /health`` answers ``200`` with the status, queue depth and counters (no token needed).

    Parameters
    ----------
    port
        TCP port; ``0`` picks a free one (see :attr:`url` and :meth:`wait_listening`).
    token
        Bearer token clients must send, or ``None`` for no authentication.
    host
        Address to listen on; ``"0.0.0.0"`` accepts connections from other machines.
    path
        Where events are posted.
    max_buffered
        Most events waiting for the flow; beyond that requests get ``429``.
    max_batch
        Most events per batch handed to the flow.
    max_body
        Largest request body, in bytes.
    schema
        Column types; a request with an event that does not fit is rejected with ``400``.
    metadata
        Add ``_received_ms`` (epoch ms, on the flow's clock, when the request was accepted);
        ``time="_received_ms"`` then gives processing-time windows.
    client
        Add ``_client``, the client's IP address.
    retry_after
        What ``429`` responses ask clients to wait (whole seconds, at least 1).
    max_connections
        Most concurrent connections (more get ``503``); with ``max_body`` it bounds memory.

    Guarantee: at-most-once. A ``202`` means the events are queued *in memory*: events accepted
    but not yet processed are lost if the process crashes or the flow stops (they are counted
    and logged at close). HTTP cannot be replayed, so a restart from a checkpoint resumes with
    new requests only. Clients that need more should resend on errors and timeouts and give
    events an id to deduplicate on (a resend after a lost response is a duplicate).

    Examples
    --------
    >>> import threading, time, httpx, rheon as rh
    >>> ingest = HttpIngest(port=0)
    >>> ingest
    HttpIngest(port=0, host='127.0.0.1', path='/events', token=None)
    >>> flow = rh.Flow("clicks"); out = rh.io.Collect()
    >>> flow.source(ingest, time="ts").select("user", "ts").sink(out)
    >>> def client():
    ...     url = ingest.wait_listening()
    ...     httpx.post(url + "/events", json=[{"user": "ann", "ts": 1000}, {"user": "bob", "ts": 2000}])
    ...     deadline = time.monotonic() + 5
    ...     while len(out) < 2 and time.monotonic() < deadline:
    ...         time.sleep(0.01)
    ...     flow.stop()
    >>> threading.Thread(target=client).start()
    >>> flow.run(duration="10s")
    >>> out.rows
    [{'user': 'ann', 'ts': 1000}, {'user': 'bob', 'ts': 2000}]
    """

    def __init__(
        self,
        port: int = 8080,
        token: str | None = None,
        *,
        host: str = "127.0.0.1",
        path: str = "/events",
        max_buffered: int = 100_000,
        max_batch: int = 10_000,
        max_body: int = 1_048_576,
        schema: pl.Schema | dict[str, pl.DataType] | None = None,
        metadata: bool = True,
        client: bool = False,
        retry_after: Duration = "1s",
        max_connections: int = 1_000,
    ) -> None:
        if not isinstance(port, int) or not 0 <= port <= 65_535:
            msg = f"HttpIngest: port must be a number from 0 to 65535 (got {port!r}). Try port=0 for a free port."
            raise FlowError(msg)
        if not path.startswith("/") or path == "/health":
            msg = f"HttpIngest: path must start with '/' and not be '/health' (got {path!r}). Try path='/events'."
            raise FlowError(msg)
        for name, value in (
            ("max_buffered", max_buffered),
            ("max_batch", max_batch),
            ("max_body", max_body),
            ("max_connections", max_connections),
        ):
            if not isinstance(value, int) or value < 1:
                msg = f"HttpIngest: {name} must be a positive whole number (got {value!r})"
                raise FlowError(msg)
        self.port = port
        self.token = token
        self.host = host
        self.path = path
        self.max_buffered = max_buffered
        self.max_batch = max_batch
        self.max_body = max_body
        self.value_schema = pl.Schema(schema) if schema is not None else None
        self.metadata = metadata
        self.client = client
        self.retry_after_s = max(1, math.ceil(to_ms(retry_after, what="HttpIngest: retry_after") / 1000))
        self.max_connections = max_connections
        self._url: str | None = None
        self._listening = threading.Event()

    def __repr__(self) -> str:
        token = None if self.token is None else "***"
        return f"HttpIngest(port={self.port}, host={self.host!r}, path={self.path!r}, token={token!r})"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_url"], state["_listening"] = None, None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._listening = threading.Event()

    @property
    def url(self) -> str | None:
        """Base URL of the running server (e.g. ``http://127.0.0.1:54321``), or ``None``."""
        return self._url

    def wait_listening(self, timeout: Duration = "10s") -> str:
        """Wait until a running flow's server listens and return its base URL.

        Useful with ``port=0``: call it from another thread while the flow runs.
        """
        if not self._listening.wait(to_ms(timeout, what="HttpIngest.wait_listening: timeout") / 1000):
            msg = f"HttpIngest: not listening after {timeout} (is the flow running?)"
            raise SourceError(msg)
        assert self._url is not None
        return self._url

    @override
    def build(self, ctx: BuildContext) -> SourceLogic:
        logic = _HttpIngestLogic(self, ctx)
        self._url = logic.url
        self._listening.set()
        return logic

    def _closed(self) -> None:
        self._listening.clear()
        self._url = None


@dataclass
class _Chunk:
    frame: pl.DataFrame
    received_ns: int


class _HttpIngestLogic(SourceLogic):
    def __init__(self, cfg: HttpIngest, ctx: BuildContext) -> None:
        applications, uvicorn = _server_modules()
        self.cfg = cfg
        self.clock = ctx.clock
        self.where = f"source '{ctx.operator}'"
        self.lock = threading.Lock()
        self.queue: deque[_Chunk] = deque()
        self.buffered = 0
        self.dead: deque[tuple[str, str]] = deque(maxlen=_KEEP_DEAD)
        self.counts = dict.fromkeys(("requests", "accepted", *(f"rejected_{c}" for c in (400, 401, 413, 429))), 0)
        self.sock = self._bind()
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://{cfg.host}:{self.port}"
        from starlette.routing import Route

        routes = [Route(cfg.path, self._events, methods=["POST"]), Route("/health", self._health, methods=["GET"])]
        app = applications.Starlette(routes=routes)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            limit_concurrency=cfg.max_connections,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name=f"rheon-http-{self.port}", daemon=True)
        self.thread.start()
        log.info("http_ingest_listening source=%s url=%s path=%s", self.where, self.url, cfg.path)

    def _bind(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.cfg.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP: asyncio sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.cfg.host, self.cfg.port))
            sock.listen(1024)
        except OSError as exc:
            sock.close()
            msg = (
                f"{self.where}: cannot listen on {self.cfg.host}:{self.cfg.port}: {exc.strerror or exc}. "
                f"Is another server using port {self.cfg.port}? Try another port, or port=0 for a free one."
            )
            raise SourceError(msg) from exc
        return sock

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # reported by next_batch, in the flow's thread
            self.error = exc

    # -- the HTTP side (server thread) ---------------------------------------------------------

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
        from starlette.responses import JSONResponse

        if status >= 400:
            with self.lock:
                self.counts[f"rejected_{status}"] = self.counts.get(f"rejected_{status}", 0) + 1
        return JSONResponse(body, status_code=status, headers=headers)

    def _too_busy(self) -> Response:
        headers = {"Retry-After": str(self.cfg.retry_after_s)}
        body = {"error": "the flow is behind: queue full, retry later", "queued": self.buffered}
        return self._answer(429, body, headers)

    def _authorized(self, request: Request) -> bool:
        if self.cfg.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.cfg.token.encode())

    async def _read_body(self, request: Request) -> bytes | None:
        """The body, or ``None`` once it is known to exceed ``max_body`` (the rest is not read)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.cfg.max_body:
            return None
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.cfg.max_body:
                return None
        return bytes(body)

    async def _events(self, request: Request) -> Response:
        with self.lock:
            self.counts["requests"] += 1
        if not self._authorized(request):
            return self._answer(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
        if self.buffered >= self.cfg.max_buffered:
            return self._too_busy()
        body = await self._read_body(request)
        if body is None:
            error = {"error": f"body larger than max_body={self.cfg.max_body} bytes"}
            return self._answer(413, error, {"Connection": "close"})
        peer = request.client.host if request.client is not None else ""
        try:
            frame = self._frame(parse_events(body, request.headers.get("content-type", "")), peer)
        except BadRequest as exc:
            text = body[:_DEAD_PAYLOAD_CHARS].decode("utf-8", errors="replace")
            if len(body) > _DEAD_PAYLOAD_CHARS:
                text += f"... ({len(body)} bytes, truncated)"
            with self.lock:
                self.dead.append((f"http: {exc} (from {peer or 'unknown'})", text))
            log.debug("http_ingest_rejected source=%s status=400 client=%s reason=%s", self.where, peer, exc)
            return self._answer(400, {"error": str(exc)})
        n = frame.height
        if n > self.cfg.max_buffered:
            error = {"error": f"{n} events in one request, more than max_buffered={self.cfg.max_buffered}"}
            return self._answer(413, error)
        with self.lock:
            if n and self.buffered + n > self.cfg.max_buffered:
                full = True
            else:
                full = False
                if n:
                    self.queue.append(_Chunk(frame, self.clock.now_ns()))
                    self.buffered += n
                self.counts["accepted"] += n
        if full:
            return self._too_busy()
        return self._answer(202, {"accepted": n})

    def _frame(self, events: list[dict[str, Any]], peer: str) -> pl.DataFrame:
        schema = self.cfg.value_schema
        if not events:
            return pl.DataFrame(schema=schema)
        try:
            frame = pl.from_dicts(events, schema=schema, infer_schema_length=None)
        except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
            first = str(exc).splitlines()[0]
            what = "do not fit the schema" if schema is not None else "cannot form a table"
            msg = f"events {what}: {first}"
            raise BadRequest(msg) from exc
        extra = []
        if self.cfg.metadata:
            extra.append(pl.lit(self.clock.now_ns() // 1_000_000, dtype=pl.Int64).alias("_received_ms"))
        if self.cfg.client:
            extra.append(pl.lit(peer, dtype=pl.String).alias("_client"))
        return frame.with_columns(extra) if extra else frame

    async def _health(self, request: Request) -> Response:
        with self.lock:
            body = {
                "status": "ok",
                "queued": self.buffered,
                "max_buffered": self.cfg.max_buffered,
                "backpressured": self.buffered >= self.cfg.max_buffered,
                "counts": dict(self.counts),
            }
        return self._answer(200, body)

    # -- the flow side ---------------------------------------------------------------------------

    @override
    def next_batch(self) -> pl.DataFrame | None:
        if self.error is not None:
            msg = f"{self.where}: the HTTP server stopped: {type(self.error).__name__}: {self.error}"
            raise SourceError(msg) from self.error
        taken: list[_Chunk] = []
        with self.lock:
            room = self.cfg.max_batch
            while self.queue and room > 0:
                chunk = self.queue[0]
                if chunk.frame.height <= room:
                    taken.append(self.queue.popleft())
                else:  # split a large request across batches
                    taken.append(_Chunk(chunk.frame.head(room), chunk.received_ns))
                    chunk.frame = chunk.frame.slice(room)
                room -= taken[-1].frame.height
            self.buffered -= self.cfg.max_batch - room
        if not taken:
            return None
        self.last_ingest_ns = taken[0].received_ns
        frames = [c.frame for c in taken]
        if len(frames) == 1:
            return frames[0]
        if all(f.schema == frames[0].schema for f in frames):
            return pl.concat(frames, how="vertical")
        try:
            return pl.concat(frames, how="diagonal_relaxed")
        except pl.exceptions.PolarsError:
            # Requests whose columns cannot be unified go into separate batches.
            with self.lock:
                for chunk in reversed(taken[1:]):
                    self.queue.appendleft(chunk)
                    self.buffered += chunk.frame.height
            return frames[0]

    @override
    def done(self) -> bool:
        return False

    @override
    def take_dead_letters(self) -> list[tuple[str, str]]:
        with self.lock:
            out = list(self.dead)
            self.dead.clear()
        return out

    @override
    def restore(self, position: Any) -> None:
        """Nothing to rewind: events are not replayable (see the guarantee)."""

    @override
    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=2)
        self.sock.close()
        self.cfg._closed()
        with self.lock:
            dropped, counts = self.buffered, dict(self.counts)
        summary = " ".join(f"{k}={v}" for k, v in counts.items())
        log.info(
            "http_ingest_closed source=%s url=%s %s unprocessed_dropped=%d", self.where, self.url, summary, dropped
        )
        if self.thread.is_alive():
            log.warning("http_ingest_thread_alive source=%s url=%s", self.where, self.url)
