"""docs/observability.md lists exactly the metrics the endpoint serves, and the Grafana
dashboard reads only those."""

from __future__ import annotations

import json
import re

from rheon.core.metrics import MetricsRegistry, SinkHealth, StateSize
from rheon.runtime.prometheus import FlowCollector
from tests.doc_pages import ROOT

DOC = (ROOT / "docs" / "observability.md").read_text()
DASHBOARD = json.loads((ROOT / "docs" / "grafana" / "rheon.json").read_text())


def _served() -> set[str]:
    """Every metric a flow with each kind of measurement serves (Prometheus names, with _total)."""
    reg = MetricsRegistry("f")
    reg.part("source 's'", "source")
    reg.part("sink 'k'", "sink").latency.record(1.0)
    reg.count_dead("map 'm'", "KeyError: 'x'")
    reg.watermarks["source 's'"] = 1_000
    reg.part("window 'w'", "operator").watermark_ms = 1_000
    reg.backlog[("source 's'", "0", "records")] = 5
    reg.state["window 'w'"] = StateSize(3, 100, 1)
    reg.checkpoints.completed(duration_ms=5, size_bytes=10, now_ns=1)
    reg.sinks["sink 'hook'"] = SinkHealth(3, "open")
    names = set()
    for family in FlowCollector(reg, running=lambda: True).collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_the_page_lists_every_served_metric_and_no_other():
    documented = set(re.findall(r"^\| `(rheon_\w+)` \|", DOC, flags=re.M))
    assert documented == _served()


def test_the_dashboard_queries_only_served_metrics_and_shows_the_main_ones():
    exprs = [t["expr"] for panel in DASHBOARD["panels"] for t in panel["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"rheon_\w+", e)}
    assert used <= _served()
    assert {
        "rheon_records_total",
        "rheon_latency_seconds",
        "rheon_event_time_lag_seconds",
        "rheon_dead_letters_total",
    } <= used
    assert all('flow="$flow"' in e for e in exprs)
