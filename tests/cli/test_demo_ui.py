"""The display of ``rheon demo``: the board the sinks update, the rendering, live and plain modes."""

from __future__ import annotations

import io
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from rich.console import Console

from rheon.apps.hosts import DEFAULT_START_MS as T0
from rheon.cli.demo_ui import Board, format_event, render, run_demo, vtime
from rheon.runtime.stats import RunStats
from rheon.time.clock import ManualClock


class SteppingClock(ManualClock):
    """A manual clock whose sleeps last at least 0.25 s, so readings come in batches (fast tests)."""

    def sleep(self, seconds: float, wake: threading.Event) -> None:
        super().sleep(max(seconds, 0.25), wake)


@pytest.fixture(autouse=True)
def _restore_rheon_logger() -> Iterator[None]:
    logger = logging.getLogger("rheon")
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def window(host: str, second: int, cpu: float, err: float = 0.5) -> dict[str, object]:
    return {
        "host": host,
        "window_start": T0 + (second - 10) * 1000,
        "window_end": T0 + second * 1000,
        "cpu": cpu,
        "mem": 50.0,
        "err": err,
        "n": 10,
    }


def alert(host: str, event: str, started_s: int, at_s: int, value: float = 90.0) -> dict[str, object]:
    return {
        "host": host,
        "metric": "cpu",
        "event": event,
        "value": value,
        "limit": 85.0,
        "started": T0 + started_s * 1000,
        "at": T0 + at_s * 1000,
    }


def screen(board: Board, stats: RunStats | None = None, width: int = 160) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    console.print(render(board, stats, wall_s=1.0))
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert isinstance(out, str)
    return out


def test_board_keeps_the_latest_window_per_host() -> None:
    board = Board(["web-01"], threshold=85.0)
    board.on_window(window("web-01", 12, 40.0))
    board.on_window(window("web-01", 11, 99.0))  # an older window arriving late changes nothing
    assert board.latest["web-01"]["cpu"] == 40.0
    assert list(board.history["web-01"]) == [40.0]


def test_board_tracks_active_alerts_and_echoes_lines() -> None:
    lines: list[str] = []
    board = Board(["web-01", "db-01"], threshold=85.0, echo=lines.append)
    board.on_alert(alert("db-01", "alert", 12, 42))
    assert board.active == {("db-01", "cpu"): T0 + 12_000}
    board.on_alert(alert("db-01", "resolved", 12, 75, value=70.0))
    assert board.active == {}
    assert (board.alerts, board.resolved) == (1, 1)
    assert lines == [
        "+00:42  ALERT     db-01     cpu 10s avg 90.0 % > 85 % for 30s (since +00:12)",
        "+01:15  RESOLVED  db-01     cpu 10s avg 70.0 % after 1m03s",
    ]
    assert board.summary() == "demo: 1 alerts, 1 resolved; active at the end: none"


def test_render_shows_hosts_sorted_with_status() -> None:
    board = Board(["web-01", "db-01", "api-01"], threshold=85.0)
    board.on_window(window("db-01", 50, 93.2))
    board.on_window(window("web-01", 50, 88.0))
    board.on_window(window("api-01", 50, 20.0))
    board.on_window(window("web-01", 51, 89.0))
    board.on_alert(alert("db-01", "alert", 12, 42))
    out = screen(board)
    rows = [line for line in out.splitlines() if line.lstrip().startswith(("api-01", "db-01", "web-01"))]
    assert [r.split()[0] for r in rows] == ["api-01", "db-01", "web-01"]
    assert "ALERT cpu since +00:12" in rows[1]
    assert "93.2 %" in rows[1]
    assert "above cpu 1s" in rows[2]  # above the limit, not yet for 30 s
    assert rows[0].rstrip().endswith("OK")
    assert "+00:42  ALERT     db-01" in out  # the recent-alerts panel
    assert "starting" in out  # no metrics yet


def test_render_header_shows_flow_metrics() -> None:
    board = Board(["web-01"], threshold=85.0, speed=5.0)
    stats = RunStats(
        flow="monitoring",
        running=True,
        elapsed_s=10.0,
        records_in=1234,
        records_out=1000,
        late_rows=0,
        dead_letters=0,
        latency_p50_ms=1.0,
        latency_p99_ms=4.25,
        watermark_ms=T0 + 47_500,
    )
    out = screen(board, stats)
    assert "in 1,234" in out
    assert "now +00:50" in out  # 10 s of wall clock at x5
    assert "watermark +00:47 (lag 2.5 s)" in out
    assert "p99 4.2 ms" in out or "p99 4.3 ms" in out


def test_vtime_and_format_event() -> None:
    assert vtime(T0) == "+00:00"
    assert format_event(alert("web-01", "resolved", 0, 30, value=80.0)) == (
        "+00:30  RESOLVED  web-01    cpu 10s avg 80.0 % after 30s"
    )


def test_run_demo_plain_mode_prints_alerts() -> None:
    out = io.StringIO()
    board = run_demo(hosts=5, speed=50, duration_ms=4_000, console=Console(file=out), clock=SteppingClock())
    text = out.getvalue()
    assert board.alerts >= 1
    assert text.count(" ALERT ") == board.alerts
    assert text.count(" RESOLVED ") == board.resolved
    assert "\x1b[" not in text


def test_run_demo_live_mode_draws_the_table() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, height=50)
    board = run_demo(hosts=5, speed=50, duration_ms=4_000, console=console, clock=SteppingClock())
    text = out.getvalue()
    assert board.alerts >= 1
    assert "recent alerts" in text
    assert "ALERT cpu since" in text or "RESOLVED" in text
    assert "flow 'monitoring'" in text


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_demo_in_a_pseudo_terminal() -> None:
    import pty

    main, child = pty.openpty()
    env = {**os.environ, "COLUMNS": "140", "LINES": "50", "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rheon.cli", "demo", "--duration", "2s", "--speed", "30", "--hosts", "5"],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
        close_fds=True,
    )
    os.close(child)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([main], [], [], 0.5)
        if ready:
            try:
                data = os.read(main, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(main)
    assert proc.wait(timeout=30) == 0
    text = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[" in text  # drawn with terminal control codes
    assert "rheon demo" in text
    assert "recent alerts" in text
    assert "trend" in text
    assert "flow 'monitoring'" in text


@pytest.fixture(scope="module")
def twenty_hosts() -> Board:
    """A board after three minutes of event time with 20 hosts: some alerts, one still active."""
    console = Console(file=io.StringIO(), width=80, height=24)
    return run_demo(hosts=20, speed=30, duration_ms=6_000, seed=7, console=console, live=False, clock=ManualClock())


def test_the_screen_fits_80_by_24_with_20_hosts(twenty_hosts: Board) -> None:
    board = twenty_hosts
    assert board.alerts >= 1
    out = io.StringIO()
    Console(file=out, width=80, height=24).print(render(board, None, wall_s=1.0, height=24, width=80))
    lines = out.getvalue().rstrip("\n").split("\n")
    assert len(lines) <= 24
    assert max(len(line) for line in lines) <= 80
    assert all(any(line.startswith(host) for line in lines) for host in board.hosts)  # every host
    assert lines[-1].startswith(f"alerts {board.alerts} resolved {board.resolved} active {len(board.active)}: ")


def test_a_small_terminal_shows_flagged_hosts_first_and_counts_the_rest(twenty_hosts: Board) -> None:
    board = twenty_hosts
    out = io.StringIO()
    Console(file=out, width=80, height=12).print(render(board, None, wall_s=1.0, height=12, width=80))
    lines = out.getvalue().rstrip("\n").split("\n")
    assert len(lines) <= 12
    flagged = {h for h, _ in board.active}
    assert flagged
    assert all(any(line.startswith(host) for line in lines) for host in flagged)
    assert any("more hosts OK" in line for line in lines)


def test_the_demo_serves_its_dashboard_with_ui() -> None:
    out = io.StringIO()
    seen: dict[str, int] = {}

    def probe() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "dashboard: " not in out.getvalue():
            time.sleep(0.02)
        url = out.getvalue().split("dashboard: ", 1)[1].split()[0]
        seen["healthz"] = httpx.get(f"{url}/healthz").status_code
        seen["nodes"] = len(httpx.get(f"{url}/api/snapshot").json()["nodes"])

    prober = threading.Thread(target=probe)
    prober.start()
    run_demo(hosts=3, speed=20, duration_ms=1_500, seed=1, console=Console(file=out), live=False, ui=0)
    prober.join(60)
    assert seen["healthz"] == 200
    assert seen["nodes"] > 3
