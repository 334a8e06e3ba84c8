"""``stream.show("title")``: keep a stream's latest rows for the web dashboard."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.batch import user_columns
from rheon.io.base import BuildContext, Sink, SinkLogic

__all__ = ["Show"]


class Show(Sink):
    """The latest ``rows`` rows of a stream, for the dashboard (``flow.run(ui=8080)``) to show as a
    live table, or a live line chart when they are window results.

    Made by ``stream.show(title)``. ``latest()`` returns the rows kept (oldest first) and
    ``total`` counts every row seen; reading them while the flow runs is safe.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("s")
    >>> shown = flow.source(rh.io.Records([{"x": i} for i in range(5)])).show("numbers", rows=3)
    >>> flow.run(); shown.latest(), shown.total
    ([{'x': 2}, {'x': 3}, {'x': 4}], 5)
    """

    def __init__(self, title: str, *, rows: int = 50) -> None:
        self.title = title
        self.rows = rows
        self.total = 0
        self._latest: deque[dict[str, Any]] = deque(maxlen=rows)
        self._columns: list[str] = []
        self._lock = threading.Lock()

    @property
    def columns(self) -> list[str]:
        """The columns seen so far, in order."""
        with self._lock:
            return list(self._columns)

    def latest(self) -> list[dict[str, Any]]:
        """The rows kept, oldest first."""
        with self._lock:
            return list(self._latest)

    def _add(self, frame: pl.DataFrame) -> None:
        frame = user_columns(frame)
        tail = frame.tail(self.rows).to_dicts()
        with self._lock:
            for column in frame.columns:
                if column not in self._columns:
                    self._columns.append(column)
            self._latest.extend(tail)
            self.total += frame.height

    @override
    def build(self, ctx: BuildContext) -> SinkLogic:
        with self._lock:
            self._latest.clear()
            self._columns = []
            self.total = 0
        return _ShowLogic(self)

    def __repr__(self) -> str:
        return f"Show({self.title!r}, rows={self.rows})"


class _ShowLogic(SinkLogic):
    def __init__(self, target: Show) -> None:
        self.target = target

    @override
    def write(self, frame: pl.DataFrame) -> None:
        if frame.height:
            self.target._add(frame)
