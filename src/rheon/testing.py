"""Helpers for testing your own flows: compare rows, drive time, run a stream to a list.

Examples
--------
>>> import rheon as rh
>>> from rheon.testing import assert_rows_equal, collect
>>> flow = rh.Flow("t")
>>> s = flow.source(rh.io.Records([{"x": 1.0}, {"x": 2.0}])).with_columns(y=rh.col("x") / 3)
>>> out = collect(s)
>>> flow.run()
>>> assert_rows_equal(out.rows, [{"x": 1.0, "y": 0.3333333333}, {"x": 2.0, "y": 0.6666666667}], rel_tol=1e-9)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.api.stream import Stream
from rheon.core.durations import to_ms
from rheon.io.base import BuildContext, Source, SourceLogic
from rheon.io.collect import Collect
from rheon.io.records import frame_from_rows
from rheon.time.clock import Clock, ManualClock

__all__ = ["ManualClock", "ScriptedSource", "assert_rows_equal", "collect"]


def collect(stream: Stream) -> Collect:
    """Attach a :class:`~rheon.io.Collect` sink to ``stream`` and return it.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("c")
    >>> out = collect(flow.source(rh.io.Records([{"a": 1}])))
    >>> flow.run(); out.rows
    [{'a': 1}]
    """
    out = Collect()
    stream.sink(out)
    return out


def _close(a: Any, b: Any, rel_tol: float, abs_tol: float) -> bool:
    if isinstance(a, float) and isinstance(b, float | int) and not isinstance(b, bool):
        if math.isnan(a) and isinstance(b, float) and math.isnan(b):
            return True
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
    if isinstance(b, float) and isinstance(a, int) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=rel_tol, abs_tol=abs_tol)
    return bool(a == b)


def _row_diff(got: Mapping[str, Any], want: Mapping[str, Any], rel_tol: float, abs_tol: float) -> str | None:
    if list(got) != list(want):
        return f"columns differ: got {list(got)}, expected {list(want)}"
    for key in want:
        if not _close(got[key], want[key], rel_tol, abs_tol):
            return f"column '{key}': got {got[key]!r}, expected {want[key]!r}"
    return None


def assert_rows_equal(
    actual: Sequence[Mapping[str, Any]],
    expected: Sequence[Mapping[str, Any]],
    *,
    check_order: bool = True,
    rel_tol: float = 0.0,
    abs_tol: float = 0.0,
) -> None:
    """Assert two lists of rows are equal, column order included.

    Floats compare with ``rel_tol``/``abs_tol`` (exact by default). With
    ``check_order=False`` rows are matched as a multiset.

    Examples
    --------
    >>> assert_rows_equal([{"a": 1}], [{"a": 2}])
    Traceback (most recent call last):
    ...
    AssertionError: row 0: column 'a': got 1, expected 2
    >>> assert_rows_equal([{"a": 1}, {"a": 2}], [{"a": 2}, {"a": 1}], check_order=False)
    """
    if len(actual) != len(expected):
        msg = f"got {len(actual)} rows, expected {len(expected)}"
        raise AssertionError(msg)
    if check_order:
        for i, (got, want) in enumerate(zip(actual, expected, strict=True)):
            diff = _row_diff(got, want, rel_tol, abs_tol)
            if diff is not None:
                msg = f"row {i}: {diff}"
                raise AssertionError(msg)
        return
    remaining = list(expected)
    for i, got in enumerate(actual):
        for j, want in enumerate(remaining):
            if _row_diff(got, want, rel_tol, abs_tol) is None:
                del remaining[j]
                break
        else:
            msg = f"row {i} {dict(got)!r} has no match among the expected rows"
            raise AssertionError(msg)


Step = Sequence[Mapping[str, Any]] | pl.DataFrame | str | timedelta


class ScriptedSource(Source):
    """A source that plays a script: batches of rows, and pauses measured on the flow's clock.

    Each step is a list of dicts or a DataFrame (one batch) or a duration such as ``"5s"`` (no
    data until the clock has moved that far). After the last step the source ends, or with
    ``end=False`` stays open without data, like a quiet topic. Pair it with
    :class:`ManualClock` to test idle timeouts and run durations without sleeping.

    Guarantee: exactly-once (the script replays identically).

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("s"); out = rh.io.Collect()
    >>> flow.source(ScriptedSource([[{"x": 1}], "10s", [{"x": 2}, {"x": 3}]])).sink(out)
    >>> flow.run(clock=ManualClock())
    >>> out.rows, flow.metrics().operators[0]["batches"]
    ([{'x': 1}, {'x': 2}, {'x': 3}], 2)
    """

    def __init__(self, script: Sequence[Step], *, end: bool = True) -> None:
        self.script = list(script)
        self.end = end
        for step in self.script:
            if isinstance(step, str | timedelta):
                to_ms(step, what="ScriptedSource: pause")

    @override
    def build(self, ctx: BuildContext) -> SourceLogic:
        return _ScriptLogic(self, ctx.clock)

    def __repr__(self) -> str:
        return f"ScriptedSource({len(self.script)} steps, end={self.end})"


class _ScriptLogic(SourceLogic):
    def __init__(self, source: ScriptedSource, clock: Clock) -> None:
        self.source = source
        self.clock = clock
        self.step = 0
        self.pause_until_ns: int | None = None

    @override
    def next_batch(self) -> pl.DataFrame | None:
        while self.step < len(self.source.script):
            item = self.source.script[self.step]
            if isinstance(item, str | timedelta):
                now = self.clock.now_ns()
                if self.pause_until_ns is None:
                    self.pause_until_ns = now + to_ms(item, what="ScriptedSource: pause") * 1_000_000
                if now < self.pause_until_ns:
                    return None
                self.pause_until_ns = None
                self.step += 1
                continue
            self.step += 1
            if isinstance(item, pl.DataFrame):
                return item
            return frame_from_rows(list(item), where="ScriptedSource")
        return None

    @override
    def done(self) -> bool:
        return self.source.end and self.step >= len(self.source.script)

    @override
    def snapshot(self) -> Any:
        return self.step

    @override
    def restore(self, position: Any) -> None:
        self.step = int(position)
        self.pause_until_ns = None

    @override
    def wait_hint_s(self) -> float | None:
        if self.pause_until_ns is not None:
            return max(0.0, (self.pause_until_ns - self.clock.now_ns()) / 1e9)
        return None
