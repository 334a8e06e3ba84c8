"""``rh.io.Webhook``: POST rows as JSON to an HTTP endpoint (``pip install 'rheon[http]'``: httpx).

Each row (or, with ``batch=True``, each chunk of rows) is one delivery. A delivery is retried with
exponential backoff and full jitter on connection errors, timeouts, ``429`` and ``5xx``; a circuit
breaker stops hammering an endpoint that keeps failing. Whatever cannot be delivered goes to the
flow's dead-letter output with the reason, never silently dropped. Sleeps go through the flow's
clock, so tests with :class:`rheon.testing.ManualClock` do not wait, and stopping the flow
interrupts a backoff.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import polars as pl
from typing_extensions import override

from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError
from rheon.core.extras import import_extra
from rheon.core.metrics import SinkHealth
from rheon.io._json import for_json
from rheon.io.base import BuildContext, KeepsDeadLetters, Sink, SinkLogic
from rheon.time.clock import Clock

if TYPE_CHECKING:
    import httpx

__all__ = ["Webhook"]

log = logging.getLogger(__name__)

_BODY_IN_REASON = 200


def _httpx() -> Any:
    return import_extra("httpx", user="rh.io.Webhook", package="httpx", extra="http")


class Webhook(Sink):
    """POST each row as a JSON object to ``url`` (or, with ``batch=True``, JSON arrays of rows).

    Parameters
    ----------
    url
        The endpoint, ``http://`` or ``https://``.
    batch
        Send one JSON array per batch instead of one request per row, in chunks of ``max_batch``.
    max_batch
        Most rows per request with ``batch=True``.
    timeout
        Per-request timeout (connect, read, write each).
    retries
        How many times a failed delivery is retried (so up to ``retries + 1`` requests). Retried:
        connection errors, timeouts, ``429`` and ``5xx``. Other ``4xx`` and ``3xx`` are not.
    backoff
        Base delay: retry ``n`` (from 0) waits a random time in ``[0, min(max_delay, backoff * 2**n)]``
        ("full jitter"). A ``Retry-After`` header (seconds or a date) raises the wait to what the
        server asked, up to ``max_delay``.
    max_delay
        Longest single wait between retries.
    headers
        Extra request headers, e.g. ``{"Authorization": "Bearer ..."}`` (not shown in ``repr``).
    breaker_failures
        After this many consecutive failed deliveries (retries exhausted) the circuit opens:
        rows are dead-lettered without a request for ``breaker_reset``; then one trial request
        (no retries) decides: success closes the circuit, failure opens it again. ``None``
        disables the breaker. A non-retried ``4xx`` proves the endpoint is up and counts as a
        success for the breaker (the row is still dead-lettered).
    breaker_reset
        How long the circuit stays open.
    seed
        Seed for the jitter (for reproducible tests).

    Undeliverable rows (retries exhausted, status not retried, circuit open) go to
    ``flow.dead_letters()`` with a reason such as ``"webhook: HTTP 503 after 5 retries"`` and
    the row as JSON. Delivery is synchronous: while a row is retried the flow waits
    (backpressure); the circuit breaker bounds how long a dead endpoint holds it up.

    Guarantee: at-least-once. A row is delivered (or dead-lettered) before the flow moves on,
    so every row before a checkpoint is handled when the checkpoint is taken; after a crash,
    rows since the last checkpoint are sent again. A retry after a timeout may also repeat a
    request the server did process. Receivers should deduplicate (e.g. on a key column).

    Examples
    --------
    >>> Webhook("https://hooks.example.com/alerts", batch=True, headers={"Authorization": "Bearer s3cret"})
    Webhook('https://hooks.example.com/alerts', batch=True, timeout_ms=5000, retries=5)

    Delivering to an endpoint that is down: the rows become dead letters, the flow goes on.

    >>> import rheon as rh
    >>> from rheon.testing import ManualClock, collect
    >>> flow = rh.Flow("alerts")
    >>> flow.source(rh.io.Records([{"card": "c1", "total": 1200}])).sink(Webhook("http://127.0.0.1:1", retries=2))
    >>> dead = collect(flow.dead_letters())
    >>> flow.run(clock=ManualClock())
    >>> dead.rows[0]["reason"].split(" (")[0], dead.rows[0]["payload"]
    ('webhook: connection failed', '{"card":"c1","total":1200}')
    """

    def __init__(
        self,
        url: str,
        *,
        batch: bool = False,
        max_batch: int = 100,
        timeout: Duration = "5s",
        retries: int = 5,
        backoff: Duration = "200ms",
        max_delay: Duration = "30s",
        headers: Mapping[str, str] | None = None,
        breaker_failures: int | None = 5,
        breaker_reset: Duration = "30s",
        seed: int | None = None,
    ) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            msg = f"Webhook: url must start with http:// or https:// (got {url!r})"
            raise FlowError(msg)
        for name, value, least in (("max_batch", max_batch, 1), ("retries", retries, 0)):
            if not isinstance(value, int) or value < least:
                msg = f"Webhook: {name} must be a whole number >= {least} (got {value!r})"
                raise FlowError(msg)
        if breaker_failures is not None and (not isinstance(breaker_failures, int) or breaker_failures < 1):
            msg = f"Webhook: breaker_failures must be a whole number >= 1 or None (got {breaker_failures!r})"
            raise FlowError(msg)
        self.url = url
        self.batch = batch
        self.max_batch = max_batch
        self.timeout_ms = to_ms(timeout, what="Webhook: timeout")
        self.retries = retries
        self.backoff_ms = to_ms(backoff, what="Webhook: backoff")
        self.max_delay_ms = to_ms(max_delay, what="Webhook: max_delay")
        self.headers = dict(headers or {})
        self.breaker_failures = breaker_failures
        self.breaker_reset_ms = to_ms(breaker_reset, what="Webhook: breaker_reset")
        self.seed = seed

    def __repr__(self) -> str:
        return f"Webhook({self.url!r}, batch={self.batch}, timeout_ms={self.timeout_ms}, retries={self.retries})"

    @override
    def build(self, ctx: BuildContext) -> SinkLogic:
        return _WebhookLogic(self, ctx)


class _Breaker:
    """Consecutive-failure circuit breaker: closed -> open -> (after reset) half-open -> ..."""

    def __init__(self, threshold: int | None, reset_ns: int, clock: Clock, where: str) -> None:
        self.threshold = threshold
        self.reset_ns = reset_ns
        self.clock = clock
        self.where = where
        self.failures = 0
        self.open_until_ns: int | None = None

    def blocked_for_s(self) -> float | None:
        """Seconds until the next trial while open; ``None`` when a request may be sent."""
        if self.open_until_ns is None:
            return None
        left = self.open_until_ns - self.clock.now_ns()
        return left / 1e9 if left > 0 else None

    @property
    def half_open(self) -> bool:
        return self.open_until_ns is not None

    def success(self) -> None:
        if self.open_until_ns is not None:
            log.info("webhook_circuit_closed sink=%s", self.where)
        self.failures = 0
        self.open_until_ns = None

    def failure(self) -> None:
        self.failures += 1
        if self.threshold is not None and (self.half_open or self.failures >= self.threshold):
            self.open_until_ns = self.clock.now_ns() + self.reset_ns
            log.warning(
                "webhook_circuit_open sink=%s consecutive_failures=%d reset_ms=%d",
                self.where,
                self.failures,
                self.reset_ns // 1_000_000,
            )


class _WebhookLogic(KeepsDeadLetters, SinkLogic):
    def __init__(self, cfg: Webhook, ctx: BuildContext) -> None:
        self.httpx = _httpx()
        self.cfg = cfg
        self.clock = ctx.clock
        self.stop: threading.Event = ctx.stop
        self.where = f"sink '{ctx.operator}'"
        self.rng = random.Random(cfg.seed)
        headers = {"Content-Type": "application/json", "User-Agent": "rheon-webhook", **cfg.headers}
        self.client: httpx.Client = self.httpx.Client(
            timeout=cfg.timeout_ms / 1000, headers=headers, follow_redirects=False
        )
        self.breaker = _Breaker(cfg.breaker_failures, cfg.breaker_reset_ms * 1_000_000, ctx.clock, self.where)
        self.dead: list[tuple[str, str]] = []
        self.requests = 0
        self.retries_done = 0
        self.delivered_rows = 0
        self.failed_while_stopping = False

    @override
    def write(self, frame: pl.DataFrame) -> None:
        rows = for_json(frame).write_ndjson().splitlines()
        if self.cfg.batch:
            size = self.cfg.max_batch
            units = [rows[i : i + size] for i in range(0, len(rows), size)]
        else:
            units = [[row] for row in rows]
        for unit in units:
            body = ("[" + ",".join(unit) + "]") if self.cfg.batch else unit[0]
            reason = self._deliver(body.encode())
            if reason is None:
                self.delivered_rows += len(unit)
            else:
                self.dead.extend((reason, row) for row in unit)

    @override
    def health(self) -> SinkHealth:
        """Retries so far, and the circuit: open (refusing), half-open (next delivery is a trial) or closed."""
        if self.breaker.blocked_for_s() is not None:
            circuit = "open"
        elif self.breaker.half_open:
            circuit = "half_open"
        else:
            circuit = "closed"
        return SinkHealth(self.retries_done, circuit)

    def _deliver(self, body: bytes) -> str | None:
        """Send one request body, retrying; ``None`` on success, else why it failed."""
        if self.stop.is_set() and self.failed_while_stopping:
            return "webhook: not attempted: the flow is stopping and the endpoint is failing"
        wait = self.breaker.blocked_for_s()
        if wait is not None:
            return (
                f"webhook: circuit open after {self.breaker.failures} consecutive failed deliveries "
                f"(next trial in {wait:.1f} s)"
            )
        trial = self.breaker.half_open
        attempts = 1 if trial or self.stop.is_set() else self.cfg.retries + 1
        problem = ""
        for attempt in range(attempts):
            retryable, problem, retry_after_s = self._attempt(body)
            if not problem:
                self.breaker.success()
                return None
            if not retryable:
                self.breaker.success()  # the endpoint answered: it is up, the row is the problem
                return f"webhook: {problem}"
            if attempt == attempts - 1 or self.stop.is_set():
                break
            delay = self._delay(attempt, retry_after_s)
            self.retries_done += 1
            log.debug(
                "webhook_retry sink=%s attempt=%d problem=%s delay_s=%.3f", self.where, attempt + 1, problem, delay
            )
            self.clock.sleep(delay, self.stop)
            if self.stop.is_set():  # stopping interrupted the backoff: give up now
                break
        retried = attempt
        self.breaker.failure()
        if self.stop.is_set():
            self.failed_while_stopping = True
            return f"webhook: {problem} after {retried} retries (the flow is stopping)"
        if trial:
            return f"webhook: {problem} (half-open trial failed; circuit open again)"
        return f"webhook: {problem} after {retried} retries"

    def _attempt(self, body: bytes) -> tuple[bool, str, float | None]:
        """One request: ``(retryable, problem, retry_after_s)``; ``problem`` is empty on success."""
        httpx = self.httpx
        self.requests += 1
        try:
            response = self.client.post(self.cfg.url, content=body)
        except httpx.TimeoutException as exc:
            return True, f"timed out ({type(exc).__name__}, timeout {self.cfg.timeout_ms} ms)", None
        except httpx.TransportError as exc:
            return True, f"connection failed ({type(exc).__name__}: {exc})", None
        status = response.status_code
        if 200 <= status < 300:
            return False, "", None
        if status == 429 or status >= 500:
            return True, f"HTTP {status}", self._retry_after_s(response.headers.get("retry-after"))
        text = response.text[:_BODY_IN_REASON].strip()
        return False, f"HTTP {status} (not retried)" + (f": {text}" if text else ""), None

    def _retry_after_s(self, value: str | None) -> float | None:
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - self.clock.now_ns() / 1e9)

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        cap_s = self.cfg.max_delay_ms / 1000
        delay = self.rng.uniform(0.0, min(cap_s, self.cfg.backoff_ms / 1000 * 2**attempt))
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return min(delay, cap_s)

    @override
    def close(self) -> None:
        self.client.close()
        log.info(
            "webhook_closed sink=%s url=%s requests=%d delivered_rows=%d",
            self.where,
            self.cfg.url,
            self.requests,
            self.delivered_rows,
        )
