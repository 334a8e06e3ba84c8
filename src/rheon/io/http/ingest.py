"""``rh.io.HttpIngest``: receive events over HTTP (``pip install 'rheon[http]'``: Starlette + uvicorn).

The server runs in a background thread started when the flow builds the source. Each request is
parsed and checked (the whole request is accepted or rejected, so a client can fix and resend it)
in a worker thread, off the server's event loop, and its events, as one small Polars frame, go
into a bounded in-memory queue; ``next_batch`` drains the queue without blocking. When the queue is
full the handler answers ``429`` at once instead of waiting or growing memory.

Rows are decoded by the JSON decoder every JSON source shares (`rheon.io._json.JsonDecoder`), so
they all follow one typing rule: a value that does not fit a ``schema=`` type, or the type its
field first had, is refused, never converted.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl
from typing_extensions import override

from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError, SourceError
from rheon.core.extras import import_extra
from rheon.core.net import listen
from rheon.io._json import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FIELDS, JsonDecoder, check_limits, settled
from rheon.io.base import BuildContext, Source, SourceLogic
from rheon.io.http.parse import BadRequest, parse_events

if TYPE_CHECKING:
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["HttpIngest"]

log = logging.getLogger(__name__)

_DEAD_PAYLOAD_CHARS = 1_000
_KEEP_DEAD = 1_000
_METADATA = ("_received_ms", "_client")


class _Refused(Exception):
    """A request refused after its body was read, with the status and body to answer."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


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
    - ``400`` for a body that is not UTF-8 JSON, not objects, nests deeper than ``max_depth``,
      has more than ``max_fields`` distinct fields, or has an event with a value that does not
      fit its type (see Types); the error names the event, field, value and expected type. The
      whole request is refused (nothing of it is queued, so the client can fix and resend it) and
      is sent to the dead-letter output once, truncated to 1,000 characters;
    - ``401`` without ``Authorization: Bearer <token>`` when ``token`` is set;
    - ``408`` when the body has not arrived ``body_timeout`` after the headers (a connection
      whose headers take longer than ``header_timeout`` is closed, with ``408`` if part of them
      arrived);
    - ``413`` for a body over ``max_body`` bytes (stopped while reading, not after) or with
      more events than ``max_buffered``;
    - ``429`` with ``Retry-After`` when ``max_buffered`` events are already waiting (the flow
      is behind): backpressure, never an unbounded queue;
    - ``503`` to a new connection when ``max_connections`` are open and every one of them is in
      the middle of a request. Idle connections (keep-alive, or headers not complete) do not
      count against others: when the limit is reached, the one idle longest is closed to make room.

    ``GET /health`` answers ``200`` with the status, queue depth, how many requests are being
    turned into rows or waiting for their turn (``building``) and counters (no token needed).
    Bodies are turned into rows in a worker thread, one at a time, so ``/health`` is answered
    while a large body is decoded.

    Types: with ``schema``, an event whose value for a schema field does not fit its type exactly
    is refused (``1.9`` or ``"2"`` for an Int64, ``3`` for a String; ints for a Float64 are fine,
    as is a missing field or ``null``); fields the schema does not name are left out. Without
    ``schema``, each field keeps the type it first had in an accepted request, as for `Kafka`
    (`rheon.io._json.JsonDecoder`, the same decoder): ``2.5`` after ``1``, or ``"x"`` after
    numbers, is refused. Requests may order fields differently and add or leave out fields: rows
    are aligned by name (a missing field is null), never by position.

    Parameters
    ----------
    port
        TCP port; ``0`` picks a free one (see :attr:`url` and :meth:`wait_listening`).
    token
        Bearer token clients must send, or ``None`` for no authentication (an empty token is
        refused). Listening beyond loopback without one logs a warning.
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
        Most connections open at once; with ``max_body`` it bounds memory. Idle ones are closed to
        make room for new ones; a new connection gets ``503`` only when all are busy.
    header_timeout
        How long a connection may take to send a request's headers, from when it opened or its
        previous response ended (however slowly bytes trickle in). Idle keep-alive connections are
        closed after 5 s already.
    body_timeout
        How long the body may take to arrive once the headers have (``408`` after that).
    max_depth
        Deepest nesting of objects and arrays in an event (``{"a": [1]}`` is 2 deep; an array
        around the events does not count), at most 256 (deeper: ``400``). Measured on the raw
        bytes before parsing. The defaults of both caps are the other JSON sources'.
    max_fields
        Most distinct fields in one request, nested fields counted by path (more: ``400``);
        without ``schema``, also the most columns the source's rows grow to: a request that would
        add columns beyond it is refused (the fields already known keep working).

    Guarantee: at-most-once. A ``202`` means the events are queued *in memory*: events accepted
    but not yet processed are lost if the process crashes or the flow stops (they are counted
    and logged at close). HTTP cannot be replayed, so a restart from a checkpoint resumes with
    new requests only (and with the field types learned so far, which checkpoints keep). Clients
    that need more should resend on errors and timeouts and give events an id to deduplicate on (a
    resend after a lost response is a duplicate).

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
        header_timeout: Duration = "10s",
        body_timeout: Duration = "30s",
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_fields: int = DEFAULT_MAX_FIELDS,
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
        check_limits("HttpIngest", max_depth, max_fields)
        if token is not None:
            got = None  # what is wrong with it, without echoing a secret
            if not isinstance(token, str):
                got = f"a {type(token).__name__}"
            elif not token.strip():
                got = repr(token)
            elif token != token.strip():
                got = "a token with surrounding spaces"
            if got is not None:
                msg = (
                    f"HttpIngest: token must be a non-empty string without surrounding spaces (got {got}): an empty "
                    f"token would let any client in. Give a secret (e.g. secrets.token_urlsafe()), or token=None for "
                    f"no authentication on a loopback host"
                )
                raise FlowError(msg)
        timeouts: dict[str, float] = {}
        for name, duration in (("header_timeout", header_timeout), ("body_timeout", body_timeout)):
            timeouts[name] = to_ms(duration, what=f"HttpIngest: {name}") / 1000
            if timeouts[name] <= 0:
                msg = f"HttpIngest: {name} must be positive (got {duration!r}). Try {name}='10s'."
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
        self.header_timeout_s = timeouts["header_timeout"]
        self.body_timeout_s = timeouts["body_timeout"]
        self.max_depth = max_depth
        self.max_fields = max_fields
        self._url: str | None = None
        self._listening = threading.Event()
        if token is None and not _loopback(host):
            log.warning(
                "http_ingest_unauthenticated host=%s port=%s: any client that can reach this address can post events; "
                "set token= (clients then send 'Authorization: Bearer <token>') or listen on host='127.0.0.1'",
                host,
                port,
            )

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


def _aligned(frames: list[pl.DataFrame]) -> pl.DataFrame | None:
    """The frames stacked by column name (fields in any order, missing ones null, metadata last).

    A column some frames only know as nulls takes the others' type; ``None`` when two frames give a
    column different types (changing either would change values).

    Examples
    --------
    >>> a = pl.DataFrame({"k": ["x"], "ts": [1]})
    >>> b = pl.DataFrame({"ts": [2], "k": ["y"], "extra": [None]})
    >>> c = pl.DataFrame({"extra": [1.5], "ts": [3]})
    >>> _aligned([a, b, c]).rows()
    [('x', 1, None), ('y', 2, None), (None, 3, 1.5)]
    >>> _aligned([a, pl.DataFrame({"k": [1]})]) is None
    True
    """
    types: dict[str, pl.DataType] = {}
    for frame in frames:
        for name, dtype in frame.schema.items():
            known = types.get(name)
            if known is None or (known != dtype and not settled(known) and settled(dtype)):
                types[name] = dtype
    order = [n for n in types if n not in _METADATA] + [n for n in _METADATA if n in types]
    stacked: list[pl.DataFrame] = []
    for frame in frames:
        columns: list[pl.Expr] = []
        for name in order:
            dtype, have = types[name], frame.schema.get(name)
            if have is None:
                columns.append(pl.lit(None, dtype).alias(name))
            elif have == dtype:
                columns.append(pl.col(name))
            elif not settled(have):
                columns.append(pl.col(name).cast(dtype, strict=True))
            else:
                return None
        try:
            stacked.append(frame.select(columns))
        except pl.exceptions.PolarsError:
            return None
    try:
        return pl.concat(stacked, how="vertical")
    except pl.exceptions.PolarsError:
        return None


@dataclass
class _Chunk:
    frame: pl.DataFrame
    received_ns: int


class _HttpIngestLogic(SourceLogic):
    wakes_loop = True  # an accepted request wakes the flow (see _enqueue)

    def __init__(self, cfg: HttpIngest, ctx: BuildContext) -> None:
        applications, uvicorn = _server_modules()
        self.cfg = cfg
        self.clock = ctx.clock
        self.wake = ctx.wake
        self.where = f"source '{ctx.operator}'"
        self.lock = threading.Lock()
        self.queue: deque[_Chunk] = deque()
        self.buffered = 0
        self.dead: deque[tuple[str, str]] = deque(maxlen=_KEEP_DEAD)
        statuses = (400, 401, 408, 413, 429, 503)
        self.counts = dict.fromkeys(("requests", "accepted", *(f"rejected_{c}" for c in statuses)), 0)
        self.building = 0  # requests being turned into rows, or waiting for their turn
        self.decoder = JsonDecoder(cfg.value_schema, max_depth=cfg.max_depth, max_fields=cfg.max_fields)
        self.build_lock = threading.Lock()  # one body turned into rows at a time (see _enqueue)
        self.sock = listen(cfg.host, cfg.port, where=self.where, option="port", error=SourceError, backlog=1024)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://{cfg.host}:{self.port}"
        from starlette.routing import Route

        from rheon.io.http.server import ConnectionLimits, protocol_for

        limits = ConnectionLimits(cfg.max_connections, cfg.header_timeout_s, self._count_refused)
        routes = [Route(cfg.path, self._events, methods=["POST"]), Route("/health", self._health, methods=["GET"])]
        app = applications.Starlette(routes=routes)
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            http=protocol_for(limits),  # h11 with a header timeout and a connection limit that sheds idle ones
            limit_concurrency=None,  # uvicorn's counts idle connections too: 1,000 of them would lock clients out
            timeout_keep_alive=5,
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name=f"rheon-http-{self.port}", daemon=True)
        self.thread.start()
        log.info("http_ingest_listening source=%s url=%s path=%s", self.where, self.url, cfg.path)

    def _serve(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        except BaseException as exc:  # reported by next_batch, in the flow's thread
            self.error = exc

    # -- the HTTP side (server thread) ---------------------------------------------------------

    def _count_refused(self, status: int) -> None:
        with self.lock:
            self.counts[f"rejected_{status}"] = self.counts.get(f"rejected_{status}", 0) + 1

    def _answer(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
        from starlette.responses import JSONResponse

        if status >= 400:
            self._count_refused(status)
        return JSONResponse(body, status_code=status, headers=headers)

    def _too_busy(self) -> Response:
        headers = {"Retry-After": str(self.cfg.retry_after_s)}
        body = {"error": "the flow is behind: queue full, retry later", "queued": self.buffered}
        return self._answer(429, body, headers)

    def _authorized(self, request: Request) -> bool:
        if self.cfg.token is None:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        if not given or not self.cfg.token:  # an empty token never matches (and is refused at construction)
            return False
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), self.cfg.token.encode())

    async def _read_body(self, request: Request) -> bytes | None:
        """The body, or ``None`` once it is known to exceed ``max_body`` (the rest is not read).

        Raises ``TimeoutError`` when it has not all arrived within ``body_timeout``.
        """
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.cfg.max_body:
            return None
        body = bytearray()
        async with asyncio.timeout(self.cfg.body_timeout_s):
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.cfg.max_body:
                    return None
        return bytes(body)

    async def _events(self, request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        with self.lock:
            self.counts["requests"] += 1
        if not self._authorized(request):
            return self._answer(401, {"error": "missing or wrong bearer token"}, {"WWW-Authenticate": "Bearer"})
        if self.buffered >= self.cfg.max_buffered:
            return self._too_busy()
        try:
            body = await self._read_body(request)
        except TimeoutError:
            error = {"error": f"the body did not arrive within body_timeout={self.cfg.body_timeout_s:g}s"}
            return self._answer(408, error, {"Connection": "close"})
        if body is None:
            error = {"error": f"body larger than max_body={self.cfg.max_body} bytes"}
            return self._answer(413, error, {"Connection": "close"})
        peer = request.client.host if request.client is not None else ""
        content_type = request.headers.get("content-type", "")
        with self.lock:
            self.building += 1
        try:  # parsing and building rows is CPU work: off the event loop, so /health and others are answered
            n = await run_in_threadpool(self._enqueue, body, content_type, peer)
        except BadRequest as exc:
            text = body[:_DEAD_PAYLOAD_CHARS].decode("utf-8", errors="replace")
            if len(body) > _DEAD_PAYLOAD_CHARS:
                text += f"... ({len(body)} bytes, truncated)"
            with self.lock:
                self.dead.append((f"http: {exc} (from {peer or 'unknown'})", text))
            log.debug("http_ingest_rejected source=%s status=400 client=%s reason=%s", self.where, peer, exc)
            return self._answer(400, {"error": str(exc)})
        except _Refused as exc:
            if exc.status == 429:
                return self._too_busy()
            return self._answer(exc.status, {"error": exc.error})
        finally:
            with self.lock:
                self.building -= 1
        return self._answer(202, {"accepted": n})

    def _enqueue(self, body: bytes, content_type: str, peer: str) -> int:
        """Parse, check and decode a body and queue its rows (in a worker thread); the number queued.

        One body at a time: that bounds the memory parsed bodies take, and the decoder learns types.
        Raises `BadRequest` (400) or `_Refused` (413, 429); then nothing of the request is queued and
        the decoder forgets the types it learnt from it.
        """
        cfg = self.cfg
        with self.build_lock:
            try:
                events = parse_events(body, content_type, max_depth=cfg.max_depth, max_fields=cfg.max_fields)
            except RecursionError as exc:  # the depth check runs first; this is a last line of defence
                msg = f"events nest too deeply to parse (max_depth={cfg.max_depth})"
                raise BadRequest(msg) from exc
            n = len(events)
            if n > cfg.max_buffered:
                raise _Refused(413, f"{n} events in one request, more than max_buffered={cfg.max_buffered}")
            if n == 0:
                return 0
            names = set().union(*(event.keys() for event in events))
            reserved = sorted(names.intersection(self._metadata_names()))
            if reserved:
                msg = (
                    f"field {reserved[0]!r} is reserved: HttpIngest adds it (metadata={cfg.metadata}, "
                    f"client={cfg.client}). Rename the field, or turn the option off"
                )
                raise BadRequest(msg)
            learnt = dict(self.decoder.seen)
            try:
                frame = self._decode(events, names, peer)
                with self.lock:
                    if self.buffered + n > cfg.max_buffered:
                        raise _Refused(429, "queue full")
                    self.queue.append(_Chunk(frame, self.clock.now_ns()))
                    self.buffered += n
                    self.counts["accepted"] += n
                self.wake.set()
            except BaseException:
                self.decoder.seen.clear()
                self.decoder.seen.update(learnt)
                raise
        return n

    def _metadata_names(self) -> set[str]:
        return {name for name, on in zip(_METADATA, (self.cfg.metadata, self.cfg.client), strict=True) if on}

    def _decode(self, events: list[dict[str, Any]], names: set[str], peer: str) -> pl.DataFrame:
        """The events' rows, typed by the shared JSON decoder; `BadRequest` if one does not fit."""
        cfg = self.cfg
        if cfg.value_schema is None:
            new = names.difference(self.decoder.seen)
            if len(self.decoder.seen) + len(new) > cfg.max_fields:
                msg = (
                    f"the events would give this source {len(self.decoder.seen) + len(new)} columns, more than "
                    f"max_fields={cfg.max_fields} (new fields: {', '.join(sorted(new)[:5])}"
                    f"{', ...' if len(new) > 5 else ''}): give schema= to HttpIngest, or raise max_fields="
                )
                raise BadRequest(msg)
        lines = [json.dumps(event).encode() for event in events]
        frame, _, bad = self.decoder(lines)
        if bad:
            i, reason = bad[0]
            others = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            msg = f"event {i} of {len(events)}{others}: {reason}; the whole request was refused, nothing of it queued"
            raise BadRequest(msg)
        if frame.height != len(events):  # the decoder accounts for every message: this cannot happen
            msg = f"{len(events)} events gave {frame.height} rows"
            raise BadRequest(msg)
        extra = []
        if cfg.metadata:
            extra.append(pl.lit(self.clock.now_ns() // 1_000_000, dtype=pl.Int64).alias("_received_ms"))
        if cfg.client:
            extra.append(pl.lit(peer, dtype=pl.String).alias("_client"))
        return frame.with_columns(extra) if extra else frame

    async def _health(self, request: Request) -> Response:
        with self.lock:
            body = {
                "status": "ok",
                "queued": self.buffered,
                "max_buffered": self.cfg.max_buffered,
                "backpressured": self.buffered >= self.cfg.max_buffered,
                "building": self.building,
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
        aligned = _aligned(frames)
        if aligned is not None:
            return aligned
        # Requests whose columns cannot be unified without changing a value go into separate batches.
        with self.lock:
            for chunk in reversed(taken[1:]):
                self.queue.appendleft(chunk)
                self.buffered += chunk.frame.height
        return frames[0]

    @override
    def backlog(self) -> dict[tuple[str, str], float]:
        """Events accepted (``202``) and waiting in the queue for the flow."""
        return {("queue", "records"): float(self.buffered)}

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
    def snapshot(self) -> Any:
        """The field types learned so far (events themselves are not replayable: see the guarantee)."""
        with self.build_lock:
            return {"types": self.decoder.state()}

    @override
    def restore(self, position: Any) -> None:
        """Go on with the field types a checkpoint kept; there are no events to rewind to."""
        with self.build_lock:
            learnt = dict(self.decoder.seen)  # from requests that came before the restore
            self.decoder.load_state((position or {}).get("types"))
            for name, dtype in learnt.items():
                self.decoder.seen.setdefault(name, dtype)

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
