"""The web dashboard: ``flow.run(ui=8080)`` serves a live page about the running flow.

Starlette and uvicorn in the flow's process, on their own thread. The page (``static/``, shipped
in the wheel, no CDN) draws the flow's graph with live rates on its edges, charts of throughput,
latency, event-time lag and each step's watermark over the last minutes, the run's latest
checkpoints, the latest dead letters (filterable), and every stream the user named with
``stream.show(title)`` (window results also charted over their windows' time). It updates from
``/api/events`` (server-sent events, one snapshot a second). ``/healthz`` answers while the
process serves; ``/readyz`` while the flow runs. It listens on 127.0.0.1 unless told otherwise;
with a token, the data (``/api/...``) needs ``Authorization: Bearer <token>`` or
``?token=<token>`` (the page passes on the one in its own address); the page and its code,
which hold no data, and the health checks do not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from importlib import resources
from typing import Any

from rheon.core.errors import FlowError
from rheon.core.metrics import LatencyHistogram, MetricsRegistry
from rheon.core.net import listen
from rheon.io.show import Show

__all__ = ["Dashboard", "DashboardSource"]

log = logging.getLogger(__name__)

_ASSETS = {"index.html": "text/html", "app.js": "text/javascript", "style.css": "text/css"}


_WINDOW_TIME = ("window_end", "window_start")
"""The column that places a window result in time on a shown stream's chart (the first there)."""


def _epoch_ms(value: Any) -> float | None:
    """A window bound as epoch ms: int64 epoch milliseconds as they are, a Datetime by its instant
    (a naive one read as UTC); ``None`` for anything else.

    Examples
    --------
    >>> import datetime as dt
    >>> _epoch_ms(1_500), _epoch_ms(dt.datetime(1970, 1, 1, 0, 0, 2, tzinfo=dt.UTC)), _epoch_ms("soon")
    (1500.0, 2000.0, None)
    """
    if isinstance(value, dt.datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)).timestamp() * 1000
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


class DashboardSource:
    """What the dashboard shows, read from the run: the plan's graph, the metrics registry, the
    latest dead letters, and the shown streams.

    Parameters
    ----------
    flow
        The flow's name.
    nodes, edges
        The graph: ``{"id", "label", "kind", "role", "describe"}`` per step and
        ``{"from", "to", "tag"}`` per edge.
    registry
        The run's metrics.
    dead_letters
        The latest dead letters (``{"operator", "reason", "payload"}``), newest last.
    shown
        The ``stream.show(...)`` sinks. Those of window results also get, per row, the time of its
        window (``window_end``, else ``window_start``) in epoch ms, which places it on their chart.
    running
        Whether the flow runs.
    """

    def __init__(
        self,
        flow: str,
        nodes: list[dict[str, str]],
        edges: list[dict[str, str]],
        registry: MetricsRegistry,
        dead_letters: deque[dict[str, Any]],
        shown: list[Show],
        running: Callable[[], bool],
    ) -> None:
        self.flow = flow
        self.nodes = nodes
        self.edges = edges
        self.registry = registry
        self.dead_letters = dead_letters
        self.shown = shown
        self.running = running
        self._samples: deque[tuple[float, list[int]]] = deque(maxlen=int(self.RECENT_S) + 10)

    RECENT_S = 60.0
    """Latency quantiles are over the observations of about the last minute."""

    def _recent_latency(self, now_s: float) -> LatencyHistogram:
        """End-to-end latency since about ``RECENT_S`` ago (a sample of the histogram is kept
        each second, so the page's p50/p99 move with the flow instead of since its start)."""
        total = self.registry.latency()
        samples = self._samples
        if not samples or now_s - samples[-1][0] >= 1.0:
            samples.append((now_s, list(total.counts)))
        base = None
        for sample in samples:
            if sample[0] <= now_s - self.RECENT_S:
                base = sample
        if base is None:  # less than a minute of samples: everything so far
            return total
        return total.since(base[1])

    def snapshot(self, now_s: float | None = None) -> dict[str, Any]:
        """Everything the page draws, now (or at ``now_s``, epoch seconds), as JSON-ready data."""
        reg = self.registry
        parts = {p.label: p for p in list(reg.parts)}
        source_marks = dict(reg.watermarks)
        nodes = []
        for node in self.nodes:
            part = parts.get(node["label"])
            nodes.append(
                {
                    **node,
                    "records_in": part.rows_in if part else 0,
                    "records_out": part.rows_out if part else 0,
                    "busy_s": part.busy_ns / 1e9 if part else 0.0,
                    "late": part.late_rows if part else 0,
                    "dead": part.dead_letters if part else 0,
                    "watermark_ms": (
                        source_marks.get(node["label"]) if node["role"] == "source" else part and part.watermark_ms
                    ),
                }
            )
        now_s = time.time() if now_s is None else now_s
        latency = self._recent_latency(now_s)
        now_ms = now_s * 1000
        marks = list(reg.watermarks.values())
        watermark = min(marks) if marks else None
        ck = reg.checkpoints
        shown = []
        for show in self.shown:
            rows = show.latest()
            columns = show.columns
            entry: dict[str, Any] = {"title": show.title, "columns": columns, "rows": rows, "total": show.total}
            time_column = next((c for c in _WINDOW_TIME if c in columns), None)
            if time_column is not None:  # window results: charted over the window's time
                entry["time_column"] = time_column
                entry["times_ms"] = [_epoch_ms(row.get(time_column)) for row in rows]
            shown.append(entry)
        return {
            "flow": self.flow,
            "running": self.running(),
            "now_ms": now_ms,
            "nodes": nodes,
            "edges": self.edges,
            "latency_p50_ms": latency.quantile(0.5) if latency.count else None,
            "latency_p99_ms": latency.quantile(0.99) if latency.count else None,
            "watermark_ms": watermark,
            "lag_s": (now_ms - watermark) / 1000 if watermark is not None else None,
            "checkpoints": {
                "count": ck.count,
                "failures": ck.failures,
                "last_ms": ck.last_ms,
                "last_bytes": ck.last_bytes,
                "last_done_ms": ck.last_done_ns / 1e6 if ck.last_done_ns is not None else None,
                "history": [record.as_dict() for record in list(ck.history)],
            },
            "dead_letters": list(self.dead_letters)[-100:],
            "dead_total": sum(reg.dead.values()),
            "shown": shown,
        }


class Dashboard:
    """Serve the dashboard for ``source`` on ``host:port`` (port 0: any free port) until :meth:`close`.

    Examples
    --------
    >>> import httpx
    >>> src = DashboardSource("f", [], [], MetricsRegistry("f"), deque(), [], running=lambda: True)
    >>> ui = Dashboard(src, port=0)
    >>> httpx.get(f"{ui.url}/readyz").json()
    {'status': 'running', 'flow': 'f'}
    >>> ui.close()
    """

    def __init__(
        self,
        source: DashboardSource,
        *,
        port: int,
        host: str = "127.0.0.1",
        token: str | None = None,
        every_s: float = 1.0,
    ) -> None:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import Route

        if token is not None and (not isinstance(token, str) or not token.strip()):
            msg = "ui_token must be a non-empty string (or None on a loopback host)"
            raise FlowError(msg)
        self.source = source
        self.token = token
        self.every_s = every_s
        self.sock = listen(host, port, where="ui", option="ui", error=FlowError)
        self.host, self.port = host, int(self.sock.getsockname()[1])
        routes = [
            Route("/", self._asset_route("index.html")),
            Route("/app.js", self._asset_route("app.js")),
            Route("/style.css", self._asset_route("style.css")),
            Route("/api/snapshot", self._snapshot),
            Route("/api/events", self._events),
            Route("/healthz", self._healthz),
            Route("/favicon.ico", self._no_icon),
            Route("/readyz", self._readyz),
        ]
        config = uvicorn.Config(
            Starlette(routes=routes),
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            server_header=False,
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self._stop = threading.Event()
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="rheon-ui", daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        log.info("ui flow=%s url=%s", source.flow, self.url)

    @property
    def url(self) -> str:
        """The page's address (with ``?token=...`` when there is a token)."""
        base = f"http://{self.host}:{self.port}"
        return base if self.token is None else f"{base}/?token={self.token}"

    # -- requests (server thread) ---------------------------------------------------------------

    def _authorized(self, request: Any) -> bool:
        if self.token is None:
            return True
        given = request.query_params.get("token")
        if given is None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if scheme.lower() != "bearer":
                return False
        return hmac.compare_digest(given.encode(), self.token.encode())

    def _asset_route(self, name: str) -> Callable[[Any], Any]:
        async def serve(request: Any) -> Any:
            from starlette.responses import Response

            # The page and its code hold no data: only /api/* needs the token.
            body = resources.files(__package__).joinpath("static", name).read_bytes()
            return Response(body, media_type=_ASSETS[name], headers={"cache-control": "no-store"})

        return serve

    async def _snapshot(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, Response

        if not self._authorized(request):
            return JSONResponse({"error": "missing or wrong token"}, status_code=401)
        return Response(json.dumps(self.source.snapshot(), default=str), media_type="application/json")

    async def _events(self, request: Any) -> Any:
        from starlette.responses import JSONResponse, StreamingResponse

        if not self._authorized(request):
            return JSONResponse({"error": "missing or wrong token"}, status_code=401)

        async def stream() -> AsyncIterator[str]:
            while not self._stop.is_set():
                yield f"data: {json.dumps(self.source.snapshot(), default=str)}\n\n"
                for _ in range(max(int(self.every_s / 0.05), 1)):
                    if self._stop.is_set() or await request.is_disconnected():
                        return
                    await asyncio.sleep(0.05)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"cache-control": "no-store"})

    async def _no_icon(self, request: Any) -> Any:
        from starlette.responses import Response

        return Response(status_code=204)

    async def _healthz(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        return JSONResponse({"status": "ok"})

    async def _readyz(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        running = self.source.running()
        return JSONResponse(
            {"status": "running" if running else "not running", "flow": self.source.flow},
            status_code=200 if running else 503,
        )

    def close(self) -> None:
        """Stop serving (open event streams end)."""
        self._stop.set()
        self.server.should_exit = True
        self.thread.join(timeout=5)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=2)
        self.sock.close()
