"""Converting between frames and Python dicts, the slow path that user functions need.

Kept in one place so that it can be made fast once: dict rows are built by a small generated
function per schema (a dict literal is about three times faster than ``dict(zip(...))``), and
output rows are turned into columns without trusting Polars' row-wise inference, which silently
truncates values whose type differs from the first rows.
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

import polars as pl

from rheon.core.batch import WM_COL

__all__ = ["ROW_CHUNK", "concat_frames", "frame_to_rows", "no_gc", "rows_to_frame"]

ROW_CHUNK = 2048
"""Rows turned into dicts at a time. Small chunks keep the dicts in the CPU caches and let
Python reuse their memory: a Python ``filter`` then ``map`` runs at ~1.9M rows/s in chunks of
2k rows against ~0.9M in chunks of 32k and more (``benchmarks/``, 2-core VM)."""


def concat_frames(frames: list[pl.DataFrame]) -> pl.DataFrame:
    """Concatenate frames that may differ in columns or types (user functions' output)."""
    frames = [f for f in frames if f.width]
    if not frames:
        return pl.DataFrame()
    if len(frames) == 1:
        return frames[0]
    first = frames[0].schema
    if all(f.schema == first for f in frames[1:]):
        return pl.concat(frames, how="vertical", rechunk=False)
    return pl.concat(frames, how="diagonal_relaxed", rechunk=False)


@contextmanager
def no_gc() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a batch is processed row by row.

    Turning a batch into a million dicts makes the collector run thousands of times and scan
    every live dict: about 40% of the time of a Python ``map`` (measured in
    ``benchmarks/``). Rows are plain dicts of scalars and hold no cycles; anything a user
    function leaves in a cycle is collected once the batch is done.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@functools.lru_cache(maxsize=512)
def _row_builder(names: tuple[str, ...]) -> Callable[..., dict[str, Any]]:
    params = ", ".join(f"_{i}" for i in range(len(names)))
    body = ", ".join(f"{name!r}: _{i}" for i, name in enumerate(names))
    fn: Callable[..., dict[str, Any]] = eval(f"lambda {params}: {{{body}}}")
    return fn


def frame_to_rows(frame: pl.DataFrame) -> tuple[list[dict[str, Any]], list[int] | None]:
    """The user-visible rows of ``frame`` as dicts, and the per-row watermarks if present.

    Examples
    --------
    >>> frame_to_rows(pl.DataFrame({"a": [1, 2], WM_COL: [5, 6]}))
    ([{'a': 1}, {'a': 2}], [5, 6])
    """
    names = tuple(c for c in frame.columns if c != WM_COL)
    wms: list[int] | None = frame.get_column(WM_COL).to_list() if WM_COL in frame.columns else None
    if not names:
        return [{} for _ in range(frame.height)], wms
    columns = [frame.get_column(name).to_list() for name in names]
    return list(map(_row_builder(names), *columns)), wms


def _series(name: str, values: list[Any], like: pl.DataType | None) -> pl.Series:
    try:
        series = pl.Series(name, values, strict=True)
    except (TypeError, OverflowError, pl.exceptions.PolarsError):
        series = pl.Series(name, values, strict=False)
    if like is not None and series.dtype != like and like.is_temporal() and series.dtype.is_temporal():
        # A Datetime that went through Python comes back in microseconds; keep the input's
        # unit and zone so that event time keeps its type through user functions.
        series = series.cast(like, strict=False)
    return series


def rows_to_frame(rows: list[dict[str, Any]], wms: list[int] | None, like: pl.Schema | None = None) -> pl.DataFrame:
    """Turn dict rows back into a frame; ``like`` gives the input's types to keep where they fit.

    Every key of every row becomes a column (missing values are null); each column takes the
    type that holds all its values.

    Examples
    --------
    >>> rows_to_frame([{"a": 1}, {"a": 1.5, "b": "x"}], None).rows()
    [(1.0, None), (1.5, 'x')]
    """
    if not rows:
        return pl.DataFrame()
    first = rows[0]
    names: list[str] = list(first)
    columns: list[list[Any]]
    try:
        if len(set(map(len, rows))) != 1:
            raise KeyError
        columns = [list(map(itemgetter(name), rows)) for name in names]
    except KeyError:
        names = list(dict.fromkeys(key for row in rows for key in row))
        columns = [[row.get(name) for row in rows] for name in names]
    series = [
        _series(name, values, like.get(name) if like is not None else None)
        for name, values in zip(names, columns, strict=True)
    ]
    if wms is not None:
        series.append(pl.Series(WM_COL, wms, dtype=pl.Int64))
    return pl.DataFrame(series)
