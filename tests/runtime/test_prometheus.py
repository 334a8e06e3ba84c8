"""The Prometheus endpoint, scraped over HTTP while flows run, parsed by prometheus-client."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import polars as pl
import pytest
from prometheus_client.parser import text_string_to_metric_families

import rheon as rh
from rheon.runtime.prometheus import FlowCollector

TIMEOUT_S = 60.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _scrape(url: str) -> Samples:
    text = httpx.get(url, timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= set(ls)]
    return found[0] if len(found) == 1 else None


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def _flow(tmp_path: Path) -> rh.Flow:
    flow = rh.Flow("scraped")
    src = rh.io.Generator(lambda i: {"card": f"c{i % 7}", "amount": i % 5}, rate=2_000, timestamp="ts")
    tx = flow.source(src, time="ts", max_delay="100ms", name="tx")
    tx.map(lambda r: {**r, "inverse": 1 / r["amount"]}, name="boom").sink(rh.io.Collect(), name="inverses")
    per_card = tx.key_by("card").window(rh.tumbling("200ms"), name="per_card").agg(n=rh.count())
    per_card.sink(rh.io.FileSink(tmp_path / "out"), name="files")
    return flow


def test_metrics_are_served_while_the_flow_runs_and_move(tmp_path):
    flow = _flow(tmp_path)
    runner = threading.Thread(
        target=flow.run,
        kwargs={
            "metrics_port": 0,
            "checkpoint_dir": tmp_path / "ckpt",
            "checkpoint_every": "100ms",
            "handle_signals": False,
        },
    )
    runner.start()
    try:
        _wait_for(lambda: flow.metrics_url is not None, "the metrics endpoint")
        url = flow.metrics_url
        assert url is not None
        assert url.startswith("http://127.0.0.1:")

        def ready() -> bool:
            s = _scrape(url)
            return (
                (_value(s, "rheon_checkpoints_total", flow="scraped") or 0) >= 2
                and (_value(s, "rheon_latency_seconds_count", sink="sink 'files'") or 0) > 0
                and (_value(s, "rheon_state_keys", operator="window 'per_card'") or 0) > 0
            )

        _wait_for(ready, "records, window results and two checkpoints")
        first = _scrape(url)
        read = _value(first, "rheon_records_total", operator="source 'tx'", direction="out")
        assert read is not None
        assert read > 0
        _wait_for(
            lambda: (_value(_scrape(url), "rheon_records_total", operator="source 'tx'", direction="out") or 0) > read,
            "the record count to move",
        )
        s = _scrape(url)
        assert _value(s, "rheon_running", flow="scraped") == 1
        assert (_value(s, "rheon_dead_letters_total", operator="map 'boom'", reason="ZeroDivisionError") or 0) > 0
        watermark = _value(s, "rheon_watermark_seconds", source="source 'tx'")
        assert watermark is not None
        assert abs(watermark - time.time()) < 60
        lag = _value(s, "rheon_event_time_lag_seconds", source="source 'tx'")
        assert lag is not None
        assert -1 < lag < 60
        assert (_value(s, "rheon_checkpoint_size_bytes", flow="scraped") or 0) > 0
        assert _value(s, "rheon_checkpoint_failures_total", flow="scraped") == 0
        assert (_value(s, "rheon_busy_seconds_total", operator="window 'per_card'") or 0) > 0
        # The latency histogram: cumulative buckets ending in +Inf == count.
        buckets = sorted(
            (float(dict(ls)["le"]), v)
            for (n, ls), v in s.items()
            if n == "rheon_latency_seconds_bucket" and dict(ls)["sink"] == "sink 'files'"
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts)
        assert buckets[-1][0] == float("inf")
        assert counts[-1] == _value(s, "rheon_latency_seconds_count", sink="sink 'files'")
        assert len(buckets) > 10
    finally:
        flow.stop()
        runner.join(TIMEOUT_S)
    assert not runner.is_alive()
    with pytest.raises(httpx.TransportError):
        httpx.get(url, timeout=2)


def test_the_endpoint_counts_what_flow_metrics_counts(tmp_path):
    """A bounded run: the last scrape during the run and flow.metrics() agree on the totals."""
    rows = [{"k": i % 3, "x": i % 4, "ts": i * 10} for i in range(400)]
    flow = rh.Flow("totals")
    seen: dict[str, Samples] = {}
    scraped = threading.Event()

    def scrape_at_the_end(row: dict) -> None:
        if row["ts"] == 3_990 and flow.metrics_url is not None:
            seen["s"] = _scrape(flow.metrics_url)
            scraped.set()

    src = flow.source(rh.io.Records(rows, batch_size=50), time="ts", name="rows")
    src.map(lambda r: {**r, "y": 1 / r["x"]}, name="inv").sink(rh.io.Collect(), name="ys")
    src.sink(scrape_at_the_end, name="last")
    flow.run(metrics_port=0)
    assert scraped.is_set()
    s, stats = seen["s"], flow.metrics()
    assert _value(s, "rheon_records_total", operator="source 'rows'", direction="out") == stats.records_in == 400
    assert (
        _value(s, "rheon_dead_letters_total", operator="map 'inv'", reason="ZeroDivisionError")
        == stats.dead_letters
        == 100
    )


def test_each_operator_serves_the_watermark_of_its_output():
    """Operators pass their input's watermark on, in their own time unit: a with_time to a
    nanosecond Datetime carries it over (300 ms lower), and the gauge is in epoch seconds all the same."""
    rows = [{"k": i % 3, "v": i, "ts": i * 100} for i in range(100)]  # up to 9,900 ms
    flow = rh.Flow("marks")
    tx = flow.source(rh.io.Records(rows, batch_size=7), time="ts", max_delay="300ms", name="tx")
    kept = tx.filter(rh.col("v") >= 0, name="kept")
    per_k = kept.key_by("k").window(rh.tumbling("1s"), name="per_k").agg(n=rh.count())
    as_ns = kept.with_columns(when=pl.from_epoch("ts", time_unit="ms").dt.cast_time_unit("ns"))
    later = as_ns.with_time("when", max_delay="300ms", name="later")
    per_k.sink(rh.io.Collect(), name="windows")
    later.sink(rh.io.Collect(), name="rows")
    flow.run()
    assert flow._executor is not None
    registry = flow._executor.metrics
    # The last watermark before the end of input (which is +inf, and not shown): 9,900 - 300 ms.
    assert registry.watermarks == {"source 'tx'": 9_600}
    marks = {part.label: part.watermark_ms for part in registry.parts}
    assert marks["filter 'kept'"] == marks["window 'per_k'"] == 9_600
    assert marks["with_time 'later'"] == 9_300
    assert marks["sink 'windows'"] is None  # sinks have no output
    served = {
        s.labels["operator"]: s.value
        for family in FlowCollector(registry, running=lambda: False).collect()
        for s in family.samples
        if s.name == "rheon_operator_watermark_seconds"
    }
    assert served == {
        "filter 'kept'": 9.6,
        "window 'per_k'": 9.6,
        "with_columns 'with_columns_1'": 9.6,
        "with_time 'later'": 9.3,
    }


FLOW_FILE = """
import rheon as rh

flow = rh.Flow("cli_metrics")
flow.source(rh.io.Generator(lambda i: {"i": i}, rate=500), name="numbers").sink(lambda r: None, name="drop")
"""


def test_rheon_run_serves_metrics(tmp_path):
    path = tmp_path / "flow.py"
    path.write_text(textwrap.dedent(FLOW_FILE))
    proc = subprocess.Popen(
        [sys.executable, "-m", "rheon.cli", "run", str(path), "--metrics-port", "0", "--duration", "60s"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + TIMEOUT_S
        assert proc.stderr is not None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            match = re.search(r"url=(http://127\.0\.0\.1:\d+/metrics)", line)
            url = match.group(1) if match else None
        assert url is not None, "rheon run did not log its metrics URL"
        _wait_for(
            lambda: (
                (_value(_scrape(url), "rheon_records_total", operator="source 'numbers'", direction="out") or 0) > 0
            ),
            "records at the CLI's endpoint",
        )
    finally:
        proc.terminate()
        proc.wait(TIMEOUT_S)
