"""The web dashboard, served by a running flow and checked in a real browser (Debian's chromium
driven by Playwright): the graph, a chart that moves, a show() table whose rows are the stream's,
the dead letters and their filter; and over plain HTTP: health, readiness, the token."""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import rheon as rh
from tests.services import unavailable

TIMEOUT_S = 60.0
TOKEN = "s3cret-token"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _wait_for(check, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


class Running:
    """A flow with a dashboard, running in a thread (checkpointing every 200 ms into ``checkpoint_dir``)."""

    def __init__(self, checkpoint_dir: Path | None = None) -> None:
        self.flow = rh.Flow("dashboard")
        src = rh.io.Generator(lambda i: {"card": f"c{i % 4}", "amount": i % 7}, rate=400, timestamp="ts")
        tx = self.flow.source(src, time="ts", name="tx")
        tx.map(lambda r: {**r, "inverse": 1 / r["amount"]}, name="invert").sink(rh.io.Collect(), name="inverses")
        totals = tx.key_by("card").window(rh.tumbling("500ms"), name="per_card").agg(total=rh.sum("amount"))
        self.totals = rh.io.Collect()
        totals.sink(self.totals, name="all_totals")
        self.shown = totals.show("totals per card", name="shown_totals")
        # Every third window left out: a chart over time shows the gaps, one over positions would not.
        totals.filter((rh.col("window_end") // 500) % 3 != 1, name="gappy").show("with gaps", name="shown_gaps")
        kwargs: dict[str, object] = {"ui": 0, "ui_token": TOKEN, "handle_signals": False}
        if checkpoint_dir is not None:
            kwargs.update(checkpoint_dir=checkpoint_dir, checkpoint_every="200ms")
        self.thread = threading.Thread(target=self.flow.run, kwargs=kwargs)
        self.thread.start()
        _wait_for(lambda: self.flow.ui_url is not None, "the dashboard")
        self.url = self.flow.ui_url
        assert self.url is not None
        self.base = self.url.split("/?")[0]

    def stop(self) -> None:
        self.flow.stop()
        self.thread.join(TIMEOUT_S)
        assert not self.thread.is_alive()


@pytest.fixture
def running(tmp_path) -> Iterator[Running]:
    run = Running(tmp_path / "ckpt")
    try:
        yield run
    finally:
        run.stop()


def test_health_readiness_and_the_token(running):
    assert httpx.get(f"{running.base}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{running.base}/readyz").status_code == 200
    assert httpx.get(f"{running.base}/").status_code == 200  # the page holds no data
    assert httpx.get(f"{running.base}/api/snapshot").status_code == 401
    assert httpx.get(f"{running.base}/api/snapshot", headers={"Authorization": "Bearer nope"}).status_code == 401
    snap = httpx.get(f"{running.base}/api/snapshot", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert [n["id"] for n in snap["nodes"]] == [
        "tx",
        "invert",
        "inverses",
        "per_card",
        "all_totals",
        "shown_totals",
        "gappy",
        "shown_gaps",
    ]
    assert {"from": "tx", "to": "per_card", "tag": "main"} in snap["edges"]
    assert running.url.startswith("http://127.0.0.1:")


def test_the_dashboard_stops_with_the_flow():
    run = Running()
    base = run.base
    run.stop()
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base}/healthz", timeout=2)


@pytest.fixture
def page(running):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        unavailable("chromium", "apt-get install chromium (.ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 1600})
            tab.goto(running.url)
            yield tab
        finally:
            browser.close()


def _updates(page) -> int:
    return int(page.evaluate("window.rheonSnapshots || 0"))


def _watermarks(page) -> dict[str, list[float]]:
    """The watermark chart's lines as drawn: step label -> the watermarks (epoch ms), oldest first."""
    return page.evaluate(
        """() => {
            const drawn = document.getElementById("chart-watermark").rheonDrawn;
            const names = [...document.querySelectorAll("#legend-watermark span")].map((s) => s.textContent.slice(2));
            return drawn ? Object.fromEntries(names.map((n, i) => [n, drawn.lines[i].map((p) => p.y)])) : {};
        }"""
    )


def _shown_chart(page, index: int) -> dict:
    """The chart of shown stream ``index`` as drawn (its lines of points: x the time, px where it
    went) and its time axis, read at one moment."""
    return page.evaluate(
        """(index) => {
            const canvas = document.querySelector(`#show-${index} canvas`);
            const axis = [...document.querySelectorAll(`#show-${index} .axis span`)].map((s) => s.textContent);
            return { lines: canvas && canvas.rheonDrawn ? canvas.rheonDrawn.lines : [], axis };
        }""",
        index,
    )


def _clock(ms: float, span: float) -> str:
    """An event time as the page writes it on a time axis (UTC)."""
    at = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    if span >= 86_400_000:
        return at.strftime("%Y-%m-%d %H:%M")
    return at.strftime("%H:%M:%S.%f")[:12] if span < 10_000 else at.strftime("%H:%M:%S")


def test_the_page_shows_the_graph_a_moving_chart_the_shown_stream_and_dead_letters(running, page, tmp_path):
    _wait_for(lambda: _updates(page) >= 3, "three updates in the page")
    # The graph: every step, and live rates on the edges.
    for name in ("tx", "invert", "inverses", "per_card", "all_totals", "shown_totals"):
        assert page.locator(f'#graph g[data-node="{name}"]').count() == 1
    assert page.locator("#graph g[data-node='per_card'] text").first.text_content() == "window 'per_card'"
    _wait_for(lambda: "/s" in " ".join(page.locator("#graph .edge-rate").all_text_contents()), "a rate on an edge")
    # A chart that moves.
    before = page.evaluate("document.getElementById('chart-throughput').toDataURL()")
    seen = _updates(page)
    _wait_for(lambda: _updates(page) >= seen + 2, "two more updates")
    assert page.evaluate("document.getElementById('chart-throughput').toDataURL()") != before
    assert page.locator("#status").inner_text() == "running"
    # The watermark of each source and operator, charted in event time: it moves during the run.
    _wait_for(lambda: len(_watermarks(page).get("window 'per_card'", [])) >= 2, "two watermarks of the window")
    first = _watermarks(page)
    assert set(first) == {"source 'tx'", "map 'invert'", "window 'per_card'", "filter 'gappy'"}
    seen = _updates(page)
    _wait_for(lambda: _updates(page) >= seen + 1, "another update")
    later = _watermarks(page)["window 'per_card'"]
    assert later[-1] > first["window 'per_card'"][0]
    assert abs(later[-1] - time.time() * 1000) < 60_000  # epoch ms: the generator stamps wall-clock time
    # The shown stream: a table whose rows are rows the stream emitted, and a chart of them.
    _wait_for(lambda: page.locator("#show-0 tbody tr").count() >= 4, "rows in the shown table")
    headers = page.locator("#show-0 thead th").all_inner_texts()
    assert headers == ["card", "window_start", "window_end", "total"]
    shown_rows = [row.locator("td").all_inner_texts() for row in page.locator("#show-0 tbody tr").all()]
    emitted = {(r["card"], str(r["window_start"]), str(r["window_end"]), str(r["total"])) for r in running.totals.rows}
    assert shown_rows
    assert all(tuple(row) in emitted for row in shown_rows)
    assert page.locator("#show-0 canvas").count() == 1
    # Window results are charted over event time: each point at its window's end, the axis in times.
    _wait_for(lambda: max(map(len, _shown_chart(page, 1)["lines"]), default=0) >= 4, "four windows on the chart")
    drawn = _shown_chart(page, 1)
    lines, points = drawn["lines"], [p for line in drawn["lines"] for p in line]
    assert {p["x"] for p in points} <= {r["window_end"] for r in running.totals.rows}
    for line in lines:
        assert all(a["x"] < b["x"] and a["px"] < b["px"] for a, b in itertools.pairwise(line))
    steps = {b["x"] - a["x"] for line in lines for a, b in itertools.pairwise(line)}
    assert steps == {500, 1000}  # next window, or the one after a window left out
    lo, hi = min(points, key=lambda p: p["x"]), max(points, key=lambda p: p["x"])
    per_ms = (hi["px"] - lo["px"]) / (hi["x"] - lo["x"])
    assert all(abs(p["px"] - (lo["px"] + (p["x"] - lo["x"]) * per_ms)) < 0.5 for p in points)  # placed by time
    span = hi["x"] - lo["x"]
    assert drawn["axis"] == [_clock(lo["x"], span), _clock(hi["x"], span)]
    # Dead letters: the failures, with reason and payload, and the filter.
    _wait_for(lambda: page.locator("#dead-letters tbody tr").count() > 0, "dead letters in the page")
    assert "ZeroDivisionError: division by zero" in page.locator("#dead-letters tbody").inner_text()
    page.fill("#dl-filter", '"card": "c3"')
    rows = page.locator("#dead-letters tbody tr").all_inner_texts()
    assert rows
    assert all('"card": "c3"' in row for row in rows)
    page.fill("#dl-filter", "no such thing")
    assert page.locator("#dead-letters tbody tr").count() == 0
    page.fill("#dl-filter", "")
    # Checkpoints are kept by the run, not the page: one opened after several lists them all at once.
    assert running.flow._executor is not None
    _wait_for(lambda: running.flow._executor.metrics.checkpoints.count >= 3, "three checkpoints")
    assert page.context.browser is not None
    late = page.context.browser.new_page(viewport={"width": 1400, "height": 1600})
    late.goto(running.url)
    _wait_for(lambda: _updates(late) >= 1, "the first update of a page opened late")
    ids = late.locator("#checkpoints tbody tr").evaluate_all("rows => rows.map((r) => Number(r.dataset.id))")
    assert {1, 2, 3} <= set(ids)
    assert ids == sorted(ids, reverse=True)  # the latest first
    assert late.locator("#checkpoints tbody tr[data-id='1'] td").nth(1).inner_text() == "ok"
    late.close()
    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_latency_on_the_page_is_over_the_last_minute():
    from collections import deque

    from rheon.core.metrics import MetricsRegistry
    from rheon.runtime.ui import DashboardSource

    registry = MetricsRegistry("f")
    sink = registry.part("sink 'out'", "sink")
    source = DashboardSource("f", [], [], registry, deque(), [], running=lambda: True)
    sink.latency.record(1_000.0, 100)  # a slow start
    assert source.snapshot(now_s=1_000.0)["latency_p99_ms"] == pytest.approx(1_000, rel=0.25)
    sink.latency.record(1.0, 100)  # fast since
    assert source.snapshot(now_s=1_030.0)["latency_p99_ms"] == pytest.approx(1_000, rel=0.25)  # still within the minute
    assert source.snapshot(now_s=1_061.0)["latency_p99_ms"] == pytest.approx(1.0, rel=0.25)  # the slow start is past


class _FailsAtCheckpoint(rh.io.Sink):
    """A sink whose output cannot be made durable at checkpoint ``n``."""

    def __init__(self, n: int) -> None:
        self.n = n

    def build(self, ctx):
        n = self.n

        class Logic(rh.io.SinkLogic):
            def write(self, frame):
                pass

            def pre_commit(self, checkpoint_id):
                if checkpoint_id == n:
                    raise rh.SinkError("disk on fire")

        return Logic()


def test_the_snapshot_keeps_the_latest_checkpoints_completed_and_failed(tmp_path):
    from collections import deque

    from rheon.core.metrics import CheckpointStats
    from rheon.runtime.ui import DashboardSource

    flow = rh.Flow("ck")
    flow.source(rh.io.Records([{"i": i} for i in range(40)], batch_size=1)).sink(_FailsAtCheckpoint(4))
    with pytest.raises(rh.SinkError, match="disk on fire"):
        flow.run(checkpoint_dir=tmp_path, checkpoint_every="0ms")
    assert flow._executor is not None
    registry = flow._executor.metrics
    snap = DashboardSource("ck", [], [], registry, deque(), [], running=lambda: False).snapshot()
    history = snap["checkpoints"]["history"]
    assert [(c["id"], c["ok"]) for c in history] == [(1, True), (2, True), (3, True), (4, False)]
    assert history[3]["error"] == "SinkError: disk on fire"
    assert history[3]["size_bytes"] is None
    assert all(c["size_bytes"] > 0 for c in history[:3])
    assert history[0]["done_ms"] <= history[1]["done_ms"] <= history[3]["done_ms"]
    assert (snap["checkpoints"]["count"], snap["checkpoints"]["failures"]) == (3, 1)
    # Bounded: the latest HISTORY checkpoints.
    stats = CheckpointStats()
    for i in range(1, CheckpointStats.HISTORY + 11):
        stats.completed(duration_ms=1.0, size_bytes=10, now_ns=i, checkpoint_id=i)
    assert [r.id for r in stats.history] == list(range(11, CheckpointStats.HISTORY + 11))
