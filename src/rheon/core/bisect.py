"""Finding the records a whole-batch computation fails on, so the others can go on.

A Polars expression or a user's batch function either works on a whole frame or raises; it does
not say which record it could not take. :func:`bisect_apply` runs it on the frame and, when it
raises, on each half, down to single records: ``k`` bad records among ``n`` cost about
``2 k log2(n / k)`` more calls, and a batch without one costs a single call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import polars as pl

__all__ = ["Failed", "Part", "bisect_apply"]

R = TypeVar("R")


@dataclass(frozen=True)
class Part(Generic[R]):
    """Rows ``start:stop`` of the frame and what the computation gave for them."""

    start: int
    stop: int
    result: R


@dataclass(frozen=True)
class Failed:
    """Rows ``start:stop`` on which the computation raised ``error`` (one row, unless the error
    was one that concerns the whole frame)."""

    start: int
    stop: int
    error: BaseException


def bisect_apply(
    frame: pl.DataFrame,
    fn: Callable[[pl.DataFrame], R],
    *,
    failed: tuple[type[BaseException], ...] = (Exception,),
    whole: tuple[type[BaseException], ...] = (),
    calls: int | None = None,
) -> tuple[list[Part[R]], list[Failed]]:
    """``fn(frame)``; if it raises one of ``failed``, ``fn`` on each half, down to the rows that
    fail alone. An error of a type in ``whole`` (say, a missing column) fails its rows at once,
    without splitting, and so does any failing part once ``fn`` has been called ``calls`` times
    (a function that fails on every record would otherwise be called twice per record). Parts
    and failures come in row order; other errors propagate.

    Examples
    --------
    >>> frame = pl.DataFrame({"x": [1, 2, 0, 4]})
    >>> parts, bad = bisect_apply(frame, lambda f: [10 // x for x in f["x"]])
    >>> [(p.start, p.stop, p.result) for p in parts], [(b.start, type(b.error).__name__) for b in bad]
    ([(0, 2, [10, 5]), (3, 4, [2])], [(2, 'ZeroDivisionError')])
    >>> _, bad = bisect_apply(frame, lambda f: 1 // 0, calls=3)
    >>> [(b.start, b.stop) for b in bad]
    [(0, 2), (2, 4)]
    """
    parts: list[Part[R]] = []
    failures: list[Failed] = []
    left = [calls if calls is not None else frame.height * 2 + 2]  # calls left

    def run(start: int, stop: int) -> None:
        part = frame if start == 0 and stop == frame.height else frame.slice(start, stop - start)
        left[0] -= 1
        try:
            result = fn(part)
        except whole as exc:
            failures.append(Failed(start, stop, exc))
            return
        except failed as exc:
            if stop - start <= 1 or left[0] < 2:  # splitting takes two calls
                failures.append(Failed(start, stop, exc))
                return
            middle = (start + stop) // 2
            run(start, middle)
            run(middle, stop)
            return
        parts.append(Part(start, stop, result))

    run(0, frame.height)
    return parts, failures
