"""The terminal side of ``rheon demo``: a live table of hosts and alerts, or plain alert lines.

The flow (:func:`rheon.apps.monitoring.build_flow`) runs on the main thread and feeds a
:class:`Board` through its callback sinks; a ``rich.live.Live`` display redraws the board a few
times a second from its own thread. When stdout is not a terminal, alerts are printed as lines
as they happen, followed by a summary.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from rheon.apps.hosts import DEFAULT_START_MS, host_names
from rheon.apps.monitoring import build_flow
from rheon.core.logs import configure_logging
from rheon.runtime.stats import RunStats
from rheon.time.clock import Clock

__all__ = ["Board", "format_event", "render", "run_demo", "sparkline", "vtime"]

Row = dict[str, Any]

_BARS = "▁▂▃▄▅▆▇█"
_METRIC_LABEL = {"cpu": "cpu", "err": "error rate"}


def vtime(ms: int, start_ms: int = DEFAULT_START_MS) -> str:
    """Event time as the demo shows it: virtual time since the start, ``+MM:SS``.

    Examples
    --------
    >>> vtime(DEFAULT_START_MS + 83_000), vtime(DEFAULT_START_MS + 3_723_000), vtime(DEFAULT_START_MS - 9_000)
    ('+01:23', '+1:02:03', '-00:09')
    """
    sign = "-" if ms < start_ms else "+"
    s = abs(ms - start_ms) // 1000
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    return f"{sign}{h}:{m:02d}:{sec:02d}" if h else f"{sign}{m:02d}:{sec:02d}"


def _span(ms: int) -> str:
    s = max(ms, 0) // 1000
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def format_event(row: Row, start_ms: int = DEFAULT_START_MS) -> str:
    """One line for an alert or a resolution (the non-interactive output of ``rheon demo``).

    Examples
    --------
    >>> row = {"host": "db-01", "metric": "cpu", "event": "alert", "value": 91.23, "limit": 85.0,
    ...        "started": DEFAULT_START_MS + 12_000, "at": DEFAULT_START_MS + 42_000}
    >>> print(format_event(row))
    +00:42  ALERT     db-01     cpu 10s avg 91.2 % > 85 % for 30s (since +00:12)
    >>> print(format_event({**row, "event": "resolved", "value": 60.0, "at": DEFAULT_START_MS + 75_000}))
    +01:15  RESOLVED  db-01     cpu 10s avg 60.0 % after 1m03s
    """
    label = _METRIC_LABEL.get(row["metric"], row["metric"])
    head = f"{vtime(row['at'], start_ms)}  {row['event'].upper():<8}  {row['host']:<8}  {label} 10s avg {row['value']:.1f} %"
    if row["event"] == "alert":
        return f"{head} > {row['limit']:g} % for {_span(row['at'] - row['started'])} (since {vtime(row['started'], start_ms)})"
    return f"{head} after {_span(row['at'] - row['started'])}"


def sparkline(values: list[float], top: float = 100.0) -> str:
    """A tiny bar chart of values between 0 and ``top``.

    Examples
    --------
    >>> sparkline([0, 25, 50, 75, 100])
    '▁▃▅▆█'
    """
    last = len(_BARS) - 1
    return "".join(_BARS[min(last, max(0, round(v / top * last)))] for v in values)


@dataclass
class _Rate:
    """Events per second over the last second or so, from successive counter readings."""

    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=16))

    def update(self, t: float, count: int) -> float:
        self.samples.append((t, count))
        while len(self.samples) > 2 and t - self.samples[1][0] >= 1.0:
            self.samples.popleft()
        t0, c0 = self.samples[0]
        return (count - c0) / (t - t0) if t > t0 else 0.0


class Board:
    """What the demo shows, updated by the flow's sinks and read by the display thread.

    Examples
    --------
    >>> board = Board(["db-01"], threshold=85.0)
    >>> board.on_window({"host": "db-01", "window_end": DEFAULT_START_MS + 10_000, "cpu": 91.0, "mem": 40.0,
    ...                  "err": 0.5, "n": 10})
    >>> board.on_alert({"host": "db-01", "metric": "cpu", "event": "alert", "value": 91.0, "limit": 85.0,
    ...                 "started": DEFAULT_START_MS, "at": DEFAULT_START_MS + 30_000})
    >>> board.active, board.alerts, board.latest["db-01"]["cpu"]
    ({('db-01', 'cpu'): 1767225600000}, 1, 91.0)
    """

    def __init__(
        self,
        hosts: list[str],
        *,
        threshold: float,
        err_threshold: float = 5.0,
        speed: float = 1.0,
        start_ms: int = DEFAULT_START_MS,
        echo: Callable[[str], object] | None = None,
        recent: int = 8,
        history: int = 16,
    ) -> None:
        self.hosts = sorted(hosts)
        self.threshold = threshold
        self.err_threshold = err_threshold
        self.speed = speed
        self.start_ms = start_ms
        self.echo = echo
        self.lock = threading.Lock()
        self.latest: dict[str, Row] = {}
        self.history_len = history
        self.history: dict[str, deque[float]] = {h: deque(maxlen=history) for h in hosts}
        self.active: dict[tuple[str, str], int] = {}
        self.above: dict[tuple[str, str], int] = {}
        self.recent: deque[Row] = deque(maxlen=recent)
        self.alerts = 0
        self.resolved = 0
        self._rate = _Rate()

    def on_window(self, row: Row) -> None:
        """Sink for window results: keep each host's latest 10 s averages."""
        with self.lock:
            host = row["host"]
            last = self.latest.get(host)
            if last is None or row["window_end"] > last["window_end"]:
                self.latest[host] = row
                if row["cpu"] is not None:
                    self.history.setdefault(host, deque(maxlen=self.history_len)).append(row["cpu"])
                for metric, limit in (("cpu", self.threshold), ("err", self.err_threshold)):
                    value = row[metric]
                    if value is not None and value > limit:
                        self.above.setdefault((host, metric), row["window_end"])
                    else:
                        self.above.pop((host, metric), None)

    def on_alert(self, row: Row) -> None:
        """Sink for alert transitions: track active alerts and the recent ones; echo in plain mode."""
        with self.lock:
            key = (row["host"], row["metric"])
            if row["event"] == "alert":
                self.active[key] = row["started"]
                self.alerts += 1
            else:
                self.active.pop(key, None)
                self.resolved += 1
            self.recent.appendleft(row)
        if self.echo is not None:
            self.echo(format_event(row, self.start_ms))

    def summary(self) -> str:
        """One line: how many alerts, resolutions, and which are still active."""
        with self.lock:
            active = ", ".join(f"{h} {m}" for h, m in sorted(self.active)) or "none"
            return f"demo: {self.alerts} alerts, {self.resolved} resolved; active at the end: {active}"


# -- rendering -----------------------------------------------------------------------------------


def _level_style(value: float | None, limit: float) -> str:
    if value is None:
        return "dim"
    if value > limit:
        return "bold red"
    if value > limit * 0.85:
        return "yellow"
    return ""


def _metrics_line(board: Board, stats: RunStats, wall_s: float, *, compact: bool) -> Text:
    """The flow's figures in one line (``compact``: short names, for an 80-column terminal)."""
    rate = board._rate.update(wall_s, stats.records_in)
    now_ms = board.start_ms + round(stats.elapsed_s * 1000 * board.speed)
    wm = stats.watermark_ms
    space = "" if compact else " "
    wm_text = f"{vtime(wm, board.start_ms)} (lag {(now_ms - wm) / 1000:.1f}{space}s)" if wm is not None else "-"
    p99 = f"{stats.latency_p99_ms:.1f}{space}ms" if stats.latency_p99_ms is not None else "-"
    parts = [("now", vtime(now_ms, board.start_ms)), ("ev/s" if compact else "events/s", f"{rate:,.0f}")]
    if not compact:
        parts.append(("in", f"{stats.records_in:,}"))
    parts += [
        ("wm" if compact else "watermark", wm_text),
        ("p99", p99),
        ("late", str(stats.late_rows)),
        ("dead", str(stats.dead_letters)),
    ]
    return Text(" " if compact else "  ").join(Text.assemble((f"{k} ", "dim"), (v, "bold")) for k, v in parts)


def _header(board: Board, stats: RunStats | None, wall_s: float) -> Panel:
    title = Text.assemble(
        ("rheon demo", "bold cyan"),
        f" · {len(board.hosts)} hosts · event time x{board.speed:g} · alert: 10 s avg cpu > "
        f"{board.threshold:g} % or errors > {board.err_threshold:g} % for 30 s",
    )
    if stats is None:
        return Panel(Group(title, Text("starting…", style="dim")), border_style="cyan")
    return Panel(Group(title, _metrics_line(board, stats, wall_s, compact=False)), border_style="cyan")


def _table(board: Board, trend: int, hosts: list[str] | None = None) -> Table:
    table = Table(expand=True, header_style="bold", box=None, pad_edge=False)
    table.add_column("host", no_wrap=True)
    table.add_column("cpu 10s", justify="right", no_wrap=True)
    table.add_column("trend", no_wrap=True)
    table.add_column("mem 10s", justify="right", no_wrap=True)
    table.add_column("err 10s", justify="right", no_wrap=True)
    table.add_column("n", justify="right", style="dim", no_wrap=True)
    table.add_column("end", style="dim", no_wrap=True)
    table.add_column("status", no_wrap=True, overflow="ellipsis")
    for host in board.hosts if hosts is None else hosts:
        row = board.latest.get(host)
        alerts = {m: since for (h, m), since in board.active.items() if h == host}
        if alerts:
            status = Text(
                "ALERT " + ", ".join(f"{m} since {vtime(s, board.start_ms)}" for m, s in sorted(alerts.items())),
                style="bold white on red",
            )
        elif row is not None and (pending := {m: s for (h, m), s in board.above.items() if h == host}):
            status = Text(
                "above " + ", ".join(f"{m} {_span(row['window_end'] - s)}" for m, s in sorted(pending.items())),
                style="yellow",
            )
        else:
            status = Text("OK", style="green")
        if row is None:
            table.add_row(host, "-", "", "-", "-", "", "", status)
            continue
        cpu, mem, err = row["cpu"], row["mem"], row["err"]
        table.add_row(
            Text(host, style="bold red" if alerts else ""),
            Text(f"{cpu:.1f} %" if cpu is not None else "-", style=_level_style(cpu, board.threshold)),
            Text(
                sparkline(list(board.history.get(host, ()))[-trend:]),
                style=_level_style(cpu, board.threshold) or "cyan",
            ),
            Text(f"{mem:.1f} %" if mem is not None else "-"),
            Text(f"{err:.2f} %" if err is not None else "-", style=_level_style(err, board.err_threshold)),
            str(row["n"]),
            vtime(row["window_end"], board.start_ms),
            status,
        )
    return table


def _recent(board: Board, limit: int) -> Panel:
    lines: list[Text] = []
    for row in list(board.recent)[:limit]:
        style = "bold red" if row["event"] == "alert" else "green"
        lines.append(Text(format_event(row, board.start_ms), style=style))
    body: RenderableType = Group(*lines) if lines else Text("no alerts yet", style="dim")
    title = f"recent alerts ({board.alerts} alerts, {board.resolved} resolved, {len(board.active)} active)"
    return Panel(body, title=title, title_align="left", border_style="red" if board.active else "green")


_ROOMY = 14
"""Lines the full layout needs besides one per host (bordered header and alert panel)."""


def _compact(board: Board, stats: RunStats | None, wall_s: float, height: int, width: int) -> RenderableType:
    """The screen for a small terminal (80x24 with 20 hosts): two header lines, the hosts (those
    in alert or above their limit first, then the rest while they fit), and the latest alert."""
    header = Text.assemble(
        ("rheon demo", "bold cyan"),
        f" · {len(board.hosts)} hosts · x{board.speed:g} · cpu>{board.threshold:g}% err>{board.err_threshold:g}%"
        " for 30s · Ctrl-C stops",
    )
    metrics = Text("starting…", style="dim") if stats is None else _metrics_line(board, stats, wall_s, compact=True)
    with board.lock:
        room = max(height - 4, 1)  # header, metrics, table header and the alert line
        flagged = {h for h, _ in board.active} | {h for h, _ in board.above}
        hosts = [h for h in board.hosts if h in flagged] + [h for h in board.hosts if h not in flagged]
        shown = hosts if len(hosts) <= room else hosts[: room - 1]
        hidden = len(hosts) - len(shown)
        table = _table(board, max(5, min(board.history_len, width - 73)), hosts=sorted(shown))
        if board.recent:
            latest = board.recent[0]
            last = Text(
                format_event(latest, board.start_ms), style="bold red" if latest["event"] == "alert" else "green"
            )
        else:
            last = Text("no alerts yet", style="dim")
        counts = Text(f"alerts {board.alerts} resolved {board.resolved} active {len(board.active)}: ", style="dim")
        lines: list[RenderableType] = [header, metrics, table]
        if hidden:
            lines.append(Text(f"+{hidden} more hosts OK (a taller terminal shows them)", style="dim"))
        lines.append(Text.assemble(counts, last))
        for line in lines:
            if isinstance(line, Text):
                line.no_wrap = True
                line.overflow = "ellipsis"
        return Group(*lines)


def render(
    board: Board,
    stats: RunStats | None = None,
    *,
    wall_s: float | None = None,
    height: int | None = None,
    width: int | None = None,
) -> RenderableType:
    """The whole screen: header with flow metrics, the host table and the recent alerts.

    ``stats`` is ``flow.metrics()``; ``wall_s`` a monotonic time in seconds for the events/s
    meter; ``height`` and ``width`` the terminal's size, which limit how many recent alerts are
    listed and how long the cpu trends are.

    Examples
    --------
    >>> import io
    >>> from rich.console import Console
    >>> board = Board(["web-01", "db-01"], threshold=85.0)
    >>> board.on_window({"host": "db-01", "window_end": DEFAULT_START_MS + 10_000, "cpu": 91.0, "mem": 40.0,
    ...                  "err": 0.5, "n": 10})
    >>> console = Console(file=io.StringIO(), width=120)
    >>> console.print(render(board))
    >>> screen = console.file.getvalue()
    >>> "db-01" in screen and "91.0 %" in screen and "no alerts yet" in screen
    True
    """
    if height is not None and height < len(board.hosts) + _ROOMY:
        return _compact(board, stats, time.monotonic() if wall_s is None else wall_s, height, width or 80)
    limit = board.recent.maxlen or 8
    if height is not None:
        limit = max(2, min(limit, height - len(board.hosts) - 10))
    with board.lock:
        return Group(
            _header(board, stats, time.monotonic() if wall_s is None else wall_s),
            _table(board, board.history_len if width is None else max(5, min(board.history_len, width - 73))),
            _recent(board, limit),
            Text("Ctrl-C to stop", style="dim"),
        )


# -- running -------------------------------------------------------------------------------------


def run_demo(
    *,
    hosts: int = 20,
    speed: float = 5.0,
    duration_ms: int | None = 30_000,
    seed: int = 7,
    threshold: float = 85.0,
    live: bool | None = None,
    console: Console | None = None,
    clock: Clock | None = None,
    ui: int | None = None,
) -> Board:
    """Run the monitoring demo for ``duration_ms`` of wall-clock time (``None``: until Ctrl-C).

    ``live=None`` shows the live table when the console is a terminal and prints alert lines
    otherwise. ``clock`` replaces the wall clock (tests pass a ``ManualClock``). With ``ui`` (a
    port; 0 for any free one) the web dashboard is served too, and its address printed first.
    Returns the final :class:`Board`.

    Examples
    --------
    >>> import io
    >>> from rich.console import Console
    >>> from rheon.time.clock import ManualClock
    >>> out = io.StringIO()
    >>> board = run_demo(hosts=3, speed=20, duration_ms=3_000, seed=1, console=Console(file=out), clock=ManualClock())
    >>> print(out.getvalue().splitlines()[1])
    +00:41  ALERT     api-01    cpu 10s avg 91.2 % > 85 % for 30s (since +00:11)
    """
    console = console or Console()
    live = console.is_terminal if live is None else live
    err_threshold = 5.0
    board = Board(
        host_names(hosts),
        threshold=threshold,
        err_threshold=err_threshold,
        speed=speed,
        echo=None if live else (lambda line: console.print(line, highlight=False, soft_wrap=True)),
    )
    flow = build_flow(hosts, speed, seed, threshold, board.on_window, board.on_alert, err_threshold=err_threshold)
    duration = f"{duration_ms}ms" if duration_ms is not None else None

    def announce(executor: object) -> None:
        if flow.ui_url is not None:
            console.print(f"dashboard: {flow.ui_url}", highlight=False, soft_wrap=True)

    if live:
        with Live(
            console=console,
            refresh_per_second=4,
            get_renderable=lambda: render(board, flow.metrics(), height=console.size.height, width=console.size.width),
        ):
            configure_logging("WARNING")  # log lines go above the live display
            flow.run(duration=duration, clock=clock, ui=ui, on_start=announce)
        configure_logging("WARNING")
    else:
        configure_logging("WARNING")
        console.print(
            f"rheon demo: {hosts} host{'s' if hosts != 1 else ''}, event time x{speed:g}, alerting on cpu > {threshold:g} % "
            f"or error rate > {err_threshold:g} % for 30 s (10 s averages); printing alerts as they happen",
            highlight=False,
            soft_wrap=True,
        )
        flow.run(duration=duration, clock=clock, ui=ui, on_start=announce)
    console.print(board.summary(), highlight=False, soft_wrap=True)
    console.print(str(flow.metrics()), highlight=False, soft_wrap=True)
    return board
