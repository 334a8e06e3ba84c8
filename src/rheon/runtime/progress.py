"""A live line on the terminal while a flow runs (``flow.run(progress=True)``, ``rheon run``).

It reads the run's :class:`~rheon.core.metrics.MetricsRegistry` four times a second from its own
thread: records in and out, the input rate, the watermark and how far it is behind the wall
clock, late rows, dead letters, checkpoints. Log lines printed meanwhile go above it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from rich.console import Console
from rich.live import Live
from rich.text import Text

from rheon.core.metrics import MetricsRegistry

__all__ = ["ProgressLine", "progress_text"]


def _count(n: float) -> str:
    return f"{n:,.0f}"


def progress_text(
    registry: MetricsRegistry, *, rate: float | None, now_s: float, elapsed_s: float, width: int = 200
) -> Text:
    """The line for the registry's current state (``rate`` in records per second, if known).

    Examples
    --------
    >>> reg = MetricsRegistry("payments")
    >>> src = reg.part("source 'tx'", "source"); src.rows_out = 12_345
    >>> sink = reg.part("sink 'out'", "sink"); sink.rows_in = 1_000
    >>> reg.watermarks["source 'tx'"] = 1_700_000_000_000
    >>> print(progress_text(reg, rate=5_000.0, now_s=1_700_000_002.5, elapsed_s=3.0).plain)
    payments 3s · in 12,345 (5,000/s) · out 1,000 · watermark 22:13:20.000 UTC, 2.5s behind · late 0 · dead letters 0
    """
    parts = registry.parts
    records_in = sum(p.rows_out for p in parts if p.role == "source")
    records_out = sum(p.rows_in for p in parts if p.role == "sink")
    late = sum(p.late_rows for p in parts)
    dead = sum(registry.dead.values())
    text = Text()
    text.append(registry.flow, style="bold")
    text.append(f" {elapsed_s:.0f}s · in ")
    text.append(_count(records_in), style="cyan")
    if rate is not None:
        text.append(f" ({_count(rate)}/s)")
    text.append(" · out ")
    text.append(_count(records_out), style="cyan")
    marks = list(registry.watermarks.values())
    if marks:
        low = min(marks)
        shown = datetime.fromtimestamp(low / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]
        text.append(f" · watermark {shown} UTC, {max(now_s - low / 1000, 0):.1f}s behind")
    text.append(" · late ")
    text.append(_count(late), style="yellow" if late else "")
    text.append(" · dead letters ")
    text.append(_count(dead), style="red" if dead else "")
    if registry.checkpoints.count:
        text.append(f" · checkpoints {registry.checkpoints.count}")
    text.truncate(width, overflow="ellipsis")
    return text


class ProgressLine:
    """Show :func:`progress_text` live on ``console`` (stderr by default) until :meth:`stop`.

    Examples
    --------
    >>> import io
    >>> buf = io.StringIO()
    >>> line = ProgressLine(MetricsRegistry("f"), console=Console(file=buf, width=80))
    >>> line.stop()
    >>> "f 0s · in 0" in buf.getvalue()
    True
    """

    def __init__(self, registry: MetricsRegistry, *, console: Console | None = None) -> None:
        self.registry = registry
        self.started = time.monotonic()
        self._last: tuple[float, int] | None = None
        self._rate: float | None = None
        self.console = console if console is not None else Console(stderr=True)
        self.live = Live(get_renderable=self._render, console=self.console, refresh_per_second=4, transient=False)
        self.live.start()

    def _render(self) -> Text:
        now = time.monotonic()
        records = sum(p.rows_out for p in self.registry.parts if p.role == "source")
        if self._last is None:
            self._last = (now, records)
        elif now - self._last[0] >= 1.0:  # the rate over the last second or so
            self._rate = (records - self._last[1]) / (now - self._last[0])
            self._last = (now, records)
        return progress_text(
            self.registry,
            rate=self._rate,
            now_s=time.time(),
            elapsed_s=now - self.started,
            width=max(self.console.width - 1, 20) if self.console.is_terminal else 400,
        )

    def stop(self) -> None:
        """Show the last state and stop updating."""
        self.live.stop()
