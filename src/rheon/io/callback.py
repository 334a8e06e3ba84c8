"""``rh.io.Callback``: hand each output row (or batch) to a Python function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.io.base import BuildContext, Sink, SinkLogic

__all__ = ["Callback"]


class Callback(Sink):
    """Call ``fn(row)`` for every output row, or ``fn(frame)`` per batch with ``batch=True``.

    ``stream.sink(fn)`` with a plain function is a shortcut for ``stream.sink(rh.io.Callback(fn))``.

    Guarantee: at-least-once across restarts (the function is called as rows are emitted).

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("cb")
    >>> seen = []
    >>> flow.source(rh.io.Records([{"x": 1}, {"x": 2}])).sink(rh.io.Callback(seen.append))
    >>> flow.run(); seen
    [{'x': 1}, {'x': 2}]
    """

    def __init__(self, fn: Callable[[Any], object], *, batch: bool = False) -> None:
        self.fn = fn
        self.batch = batch

    @override
    def build(self, ctx: BuildContext) -> SinkLogic:
        return _CallbackLogic(self.fn, self.batch)

    def __repr__(self) -> str:
        return f"Callback({getattr(self.fn, '__name__', self.fn)!s}, batch={self.batch})"


class _CallbackLogic(SinkLogic):
    def __init__(self, fn: Callable[[Any], object], batch: bool) -> None:
        self.fn = fn
        self.batch = batch

    @override
    def write(self, frame: pl.DataFrame) -> None:
        if self.batch:
            self.fn(frame)
        else:
            for row in frame.iter_rows(named=True):
                self.fn(row)
