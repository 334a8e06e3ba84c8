"""The Prometheus endpoint: a flow's :class:`~rheon.core.metrics.MetricsRegistry` in the
Prometheus text format, served by ``prometheus-client`` (``flow.run(metrics_port=9108)``).

The registry is read when Prometheus scrapes, so serving metrics costs the flow nothing between
scrapes. Names and labels follow Prometheus' conventions: ``rheon_`` prefix, base units
(seconds, bytes), ``_total`` for counters, and the labels ``flow``, ``operator`` (as messages
name it: ``window 'per_card'``), ``role`` (``source``, ``operator``, ``sink``), ``source``,
``sink``, ``reason``. ``docs/observability.md`` lists every metric.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

from rheon.core.metrics import LatencyHistogram, MetricsRegistry

__all__ = ["FlowCollector", "MetricsServer"]

log = logging.getLogger(__name__)

_EVERY = 4
"""Every 4th latency bound (factor 1.25**4 ≈ 2.44 apart): ~18 buckets from 10 µs to 2 min,
each an exact sum of the histogram's own buckets."""


def _buckets(hist: LatencyHistogram, scale: float) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (upper bound in base units) and the sum, from ``hist``."""
    counts = list(hist.counts)  # one read: the run loop may be adding to it
    bounds = LatencyHistogram.BOUNDS_MS
    out: list[tuple[str, float]] = []
    running = 0
    for i, c in enumerate(counts[:-1]):
        running += c
        if i % _EVERY == _EVERY - 1:
            out.append((repr(bounds[i] * scale), float(running)))
    out.append(("+Inf", float(running + counts[-1])))
    return out, hist.sum_ms * scale


class FlowCollector(Collector):
    """Turns a flow's metrics registry into Prometheus metric families at scrape time.

    Examples
    --------
    >>> reg = MetricsRegistry("payments")
    >>> sink = reg.part("sink 'out'", "sink"); sink.rows_in = 5; sink.latency.record(2.0, 5)
    >>> families = {m.name: m for m in FlowCollector(reg, running=lambda: True).collect()}
    >>> [(s.labels["direction"], s.value) for s in families["rheon_records"].samples if s.name == "rheon_records_total"]
    [('in', 5), ('out', 0)]
    >>> families["rheon_latency_seconds"].samples[-2].value  # _count
    5.0
    """

    def __init__(self, registry: MetricsRegistry, running: Any) -> None:
        self.registry = registry
        self.running = running

    def collect(self) -> Iterator[Metric]:
        reg = self.registry
        flow = reg.flow
        now_s = time.time()
        up = GaugeMetricFamily("rheon_running", "1 while the flow runs, 0 once it has stopped.", labels=["flow"])
        up.add_metric([flow], 1.0 if self.running() else 0.0)
        yield up

        parts = list(reg.parts)
        records = CounterMetricFamily(
            "rheon_records",
            "Records into and out of each source, operator and sink.",
            labels=["flow", "operator", "role", "direction"],
        )
        batches = CounterMetricFamily(
            "rheon_batches", "Batches each part handled.", labels=["flow", "operator", "role"]
        )
        busy = CounterMetricFamily(
            "rheon_busy_seconds", "Time each part spent on its batches.", labels=["flow", "operator", "role"]
        )
        late = CounterMetricFamily(
            "rheon_late_rows",
            "Records that came behind the watermark after their window (or match, join...) had closed.",
            labels=["flow", "operator"],
        )
        for part in parts:
            records.add_metric([flow, part.label, part.role, "in"], part.rows_in)
            records.add_metric([flow, part.label, part.role, "out"], part.rows_out)
            batches.add_metric([flow, part.label, part.role], part.batches)
            busy.add_metric([flow, part.label, part.role], part.busy_ns / 1e9)
            if part.role == "operator":
                late.add_metric([flow, part.label], part.late_rows)
        yield from (records, batches, busy, late)

        dead = CounterMetricFamily(
            "rheon_dead_letters",
            "Records that failed, by operator and kind of reason (values taken out).",
            labels=["flow", "operator", "reason"],
        )
        for (operator, reason), n in list(reg.dead.items()):
            dead.add_metric([flow, operator, reason], n)
        yield dead

        latency = HistogramMetricFamily(
            "rheon_latency_seconds",
            "End-to-end latency at each sink: from a record's arrival at its source to its output.",
            labels=["flow", "sink"],
        )
        for part in parts:
            if part.role == "sink":
                buckets, total = _buckets(part.latency, 1e-3)
                latency.add_metric([flow, part.label], buckets, total)
        yield latency

        watermark = GaugeMetricFamily(
            "rheon_watermark_seconds", "Each source's event-time watermark, epoch seconds.", labels=["flow", "source"]
        )
        lag = GaugeMetricFamily(
            "rheon_event_time_lag_seconds",
            "How far each source's watermark is behind the wall clock (now - watermark).",
            labels=["flow", "source"],
        )
        for source, ms in list(reg.watermarks.items()):
            watermark.add_metric([flow, source], ms / 1e3)
            lag.add_metric([flow, source], now_s - ms / 1e3)
        operator_watermark = GaugeMetricFamily(
            "rheon_operator_watermark_seconds",
            "The event-time watermark of each operator's output, epoch seconds (with_time makes its own, joins "
            "and unions the lowest of their inputs', the others pass on their input's).",
            labels=["flow", "operator"],
        )
        for part in parts:
            mark = part.watermark_ms
            if part.role == "operator" and mark is not None:
                operator_watermark.add_metric([flow, part.label], mark / 1e3)
        yield from (watermark, lag, operator_watermark)

        backlog = GaugeMetricFamily(
            "rheon_source_backlog",
            "What waits to be read, per source and split (Kafka partition, file, queue), in its unit.",
            labels=["flow", "source", "split", "unit"],
        )
        for (source, split, unit), amount in list(reg.backlog.items()):
            backlog.add_metric([flow, source, split, unit], amount)
        yield backlog

        keys = GaugeMetricFamily(
            "rheon_state_keys", "Keys (or panes, sessions) each operator holds.", labels=["flow", "operator"]
        )
        state_bytes = GaugeMetricFamily(
            "rheon_state_bytes", "Bytes of state each operator holds, where it can tell.", labels=["flow", "operator"]
        )
        timers = GaugeMetricFamily("rheon_timers_pending", "Timers waiting to fire.", labels=["flow", "operator"])
        for operator, size in list(reg.state.items()):
            keys.add_metric([flow, operator], size.keys)
            timers.add_metric([flow, operator], size.timers)
            if size.bytes is not None:
                state_bytes.add_metric([flow, operator], size.bytes)
        yield from (keys, state_bytes, timers)

        retries = CounterMetricFamily(
            "rheon_sink_retries",
            "Retries of a sink: deliveries sent again (webhook), reconnections (PostgreSQL, Kafka), requests "
            "the Kafka client sent again.",
            labels=["flow", "sink"],
        )
        circuit = GaugeMetricFamily(
            "rheon_sink_circuit_state",
            "A sink's circuit breaker: 1 for its current state (closed, open, half_open), 0 for the others.",
            labels=["flow", "sink", "state"],
        )
        for sink, health in list(reg.sinks.items()):
            retries.add_metric([flow, sink], health.retries)
            if health.circuit is None:  # no circuit breaker
                continue
            for state in ("closed", "open", "half_open"):
                circuit.add_metric([flow, sink, state], 1.0 if health.circuit == state else 0.0)
        yield from (retries, circuit)

        ck = reg.checkpoints
        count = CounterMetricFamily("rheon_checkpoints", "Checkpoints completed by this run.", labels=["flow"])
        count.add_metric([flow], ck.count)
        failures = CounterMetricFamily(
            "rheon_checkpoint_failures", "Checkpoints that could not be written.", labels=["flow"]
        )
        failures.add_metric([flow], ck.failures)
        durations = HistogramMetricFamily(
            "rheon_checkpoint_duration_seconds", "How long checkpoints took.", labels=["flow"]
        )
        buckets, total = _buckets(ck.durations, 1e-3)
        durations.add_metric([flow], buckets, total)
        yield from (count, failures, durations)
        if ck.last_bytes is not None and ck.last_done_ns is not None:
            last = GaugeMetricFamily("rheon_checkpoint_size_bytes", "Size of the last checkpoint.", labels=["flow"])
            last.add_metric([flow], ck.last_bytes)
            age = GaugeMetricFamily(
                "rheon_checkpoint_age_seconds", "Time since the last checkpoint completed.", labels=["flow"]
            )
            age.add_metric([flow], now_s - ck.last_done_ns / 1e9)
            yield from (last, age)


class _QuietHandler(WSGIRequestHandler):
    """Scrapes are not logged (one line per scrape on stderr otherwise)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """``/metrics`` over HTTP for one run, on ``host:port`` (port 0: any free port).

    Examples
    --------
    >>> import urllib.request
    >>> server = MetricsServer(MetricsRegistry("f"), running=lambda: True, port=0)
    >>> text = urllib.request.urlopen(server.url).read().decode()
    >>> 'rheon_running{flow="f"} 1.0' in text
    True
    >>> server.close()
    """

    def __init__(self, registry: MetricsRegistry, *, running: Any, port: int, host: str = "127.0.0.1") -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(FlowCollector(registry, running))
        self._server = make_server(
            host, port, make_wsgi_app(self.registry), ThreadingWSGIServer, handler_class=_QuietHandler
        )
        # A short poll interval: closing waits for it (prometheus-client's own server polls
        # every 0.5 s, which would add half a second to the end of every run).
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="rheon-metrics", daemon=True
        )
        self._thread.start()
        self.host, self.port = host, int(self._server.server_address[1])
        log.info("metrics flow=%s url=%s", registry.flow, self.url)

    @property
    def url(self) -> str:
        """Where Prometheus scrapes: ``http://127.0.0.1:9108/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
