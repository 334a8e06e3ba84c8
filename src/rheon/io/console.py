"""``rh.io.Console``: print rows to standard output, one JSON object per line."""

from __future__ import annotations

import json
import sys
from typing import TextIO

import polars as pl
from typing_extensions import override

from rheon.io.base import BuildContext, Sink, SinkLogic

__all__ = ["Console"]


class Console(Sink):
    """Print each row as one line of JSON (``prefix`` first, if given).

    Guarantee: at-least-once across restarts.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("p")
    >>> flow.source(rh.io.Records([{"x": 1, "y": "a"}])).sink(rh.io.Console(prefix="out: "))
    >>> flow.run()
    out: {"x": 1, "y": "a"}
    """

    def __init__(self, *, prefix: str = "", stream: TextIO | None = None) -> None:
        self.prefix = prefix
        self.stream = stream

    @override
    def build(self, ctx: BuildContext) -> SinkLogic:
        return _ConsoleLogic(self.prefix, self.stream)

    def __repr__(self) -> str:
        return "Console()"


class _ConsoleLogic(SinkLogic):
    def __init__(self, prefix: str, stream: TextIO | None) -> None:
        self.prefix = prefix
        self.stream = stream

    @override
    def write(self, frame: pl.DataFrame) -> None:
        out = self.stream or sys.stdout
        for row in frame.iter_rows(named=True):
            out.write(self.prefix + json.dumps(row, default=str) + "\n")

    @override
    def flush(self) -> None:
        (self.stream or sys.stdout).flush()
