"""Converting between frames and Python dicts, the slow path that user functions need.

Kept in one place so that it can be made fast once: dict rows are built by a small generated
function per schema (a dict literal is about three times faster than ``dict(zip(...))``), and
output rows are turned into columns without trusting Polars' row-wise inference, which silently
truncates values whose type differs from the first rows.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

import polars as pl

from rheon.core.batch import WM_COL
from rheon.core.columns import ColumnTypes
from rheon.core.deadletters import payloads_of

__all__ = ["ROW_CHUNK", "RowsOut", "frame_to_rows", "misfit_reason", "rows_to_frame"]

ROW_CHUNK = 2048
"""Rows turned into dicts at a time. Small chunks keep the dicts in the CPU caches and let
Python reuse their memory: a Python ``filter`` then ``map`` runs at ~1.9M rows/s in chunks of
2k rows against ~0.9M in chunks of 32k and more (``benchmarks/``, 2-core VM)."""


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


Misfit = tuple[int, str, Any, pl.DataType]
"""A value that does not fit its column: ``(row index, field, value, the column's type)``."""

_BUILD_FAILED = (TypeError, OverflowError, ValueError, pl.exceptions.PolarsError)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def _fitting(name: str, values: list[Any]) -> tuple[pl.Series, list[Misfit]]:
    """A column for values Polars cannot put in one type as they are: the type of the first value
    (ints and floats: Float64 when there are floats, as JSON sources read them); a value that does
    not fit it is left out (null) and reported, never converted."""
    first = next(v for v in values if v is not None)
    kind = _kind(first)
    if kind == "number" and any(isinstance(v, float) for v in values):
        dtype: pl.DataType = pl.Float64()
    else:
        dtype = pl.Series(name, [first], strict=True).dtype
    kept: list[Any] = []
    bad: list[Misfit] = []
    for i, value in enumerate(values):
        fits = value is None
        if not fits and _kind(value) == kind:
            try:
                fits = pl.Series(name, [value], dtype=dtype, strict=True).item() == value or value != value
            except _BUILD_FAILED:
                fits = False
        kept.append(value if fits else None)
        if not fits:
            bad.append((i, name, value, dtype))
    return pl.Series(name, kept, dtype=dtype, strict=True), bad


def _series(name: str, values: list[Any], like: pl.DataType | None) -> tuple[pl.Series, list[Misfit]]:
    bad: list[Misfit] = []
    try:
        series = pl.Series(name, values, strict=True)
    except _BUILD_FAILED:
        series, bad = _fitting(name, values)
    if like is not None and series.dtype != like and like.is_temporal() and series.dtype.is_temporal():
        # A Datetime that went through Python comes back in microseconds; keep the input's
        # unit and zone so that event time keeps its type through user functions.
        series = series.cast(like, strict=False)
    return series, bad


def rows_to_frame(
    rows: list[dict[str, Any]], wms: list[int] | None, like: pl.Schema | None = None
) -> tuple[pl.DataFrame, list[Misfit]]:
    """Turn dict rows back into a frame; ``like`` gives the input's types to keep where they fit.

    Every key of every row becomes a column (missing values are null); each column takes the
    type that holds all its values, without converting any: where Polars cannot find one (``1``
    and ``"a"``; an object and a number), the column takes its first value's type (Float64 for ints
    and floats) and the rows whose value does not fit are left out of the frame and returned as
    misfits.

    Examples
    --------
    >>> rows_to_frame([{"a": 1}, {"a": 1.5, "b": "x"}], None)[0].rows()
    [(1.0, None), (1.5, 'x')]
    >>> frame, misfits = rows_to_frame([{"a": {"b": 1}}, {"a": 1.5}, {"a": {"b": 2}}], None)
    >>> frame.rows(), misfits
    ([({'b': 1},), ({'b': 2},)], [(1, 'a', 1.5, Struct({'b': Int64}))])
    """
    if not rows:
        return pl.DataFrame(), []
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
    series: list[pl.Series] = []
    misfits: list[Misfit] = []
    for name, values in zip(names, columns, strict=True):
        column, bad = _series(name, values, like.get(name) if like is not None else None)
        series.append(column)
        misfits += bad
    if wms is not None:
        series.append(pl.Series(WM_COL, wms, dtype=pl.Int64))
    frame = pl.DataFrame(series)
    if misfits:
        misfits.sort(key=itemgetter(0))
        seen: set[int] = set()
        misfits = [m for m in misfits if not (m[0] in seen or seen.add(m[0]))]  # type: ignore[func-returns-value]
        keep = pl.Series([True] * len(rows)).scatter([m[0] for m in misfits], False)
        frame = frame.filter(keep)
    return frame, misfits


def misfit_reason(where: str, name: str, value: Any, dtype: pl.DataType) -> str:
    """Why a row was left out by `rows_to_frame`.

    Examples
    --------
    >>> misfit_reason("map 'm'", "x", "one", pl.Int64())
    "map 'm': field 'x' is 'one' (str), where the column is Int64; a field must keep one type"
    """
    return f"{where}: field {name!r} is {value!r:.60} ({type(value).__name__}), where the column is {dtype}; a field must keep one type"


class RowsOut:
    """Rows a user function returns, as one frame per batch, typed as if the batch were one frame.

    A batch is turned into dicts and back a chunk at a time (`ROW_CHUNK`); where chunks' columns
    came out with different types, each column takes the batch's type (Float64 for ints and
    floats, else the first chunk's), and a row whose value does not fit it is reported, never
    converted. Types may change from one batch to the next: what keeps state across batches (a
    window, a sink) checks its input against the types it has had.

    Examples
    --------
    >>> out = RowsOut("map 'm'")
    >>> a, _ = rows_to_frame([{"x": 3}], None); b, _ = rows_to_frame([{"x": 4.5}], None)
    >>> out.batch([(a, 0), (b, 1)])[0].rows()
    [(3.0,), (4.5,)]
    >>> a, _ = rows_to_frame([{"x": {"b": 1}}], None); b, _ = rows_to_frame([{"x": 4.5}], None)
    >>> frame, bad = out.batch([(a, 0), (b, 1)])
    >>> frame.rows(), [(i, reason.split(",")[0], payload) for i, reason, payload in bad]
    ([({'b': 1},)], [(1, "map 'm': field 'x' is 4.5 (Float64)", '{"x": 4.5}')])
    """

    def __init__(self, where: str) -> None:
        self.where = where

    def misfit(self, name: str, value: Any, dtype: pl.DataType) -> str:
        """The reason for a value that does not fit its batch's column (`rows_to_frame`)."""
        return misfit_reason(self.where, name, value, dtype)

    def batch(self, chunks: list[tuple[pl.DataFrame, int]]) -> tuple[pl.DataFrame, list[tuple[int, str, str]]]:
        """One batch's chunks (each a frame and the input position it starts at) as one frame, and
        ``(position, reason, payload)`` for each row left out (a chunk's start plus the row's place
        in it: in input order, which is what dead letters are sorted by)."""
        chunks = [(f, at) for f, at in chunks if f.width]
        if not chunks:
            return pl.DataFrame(), []
        if len(chunks) == 1:
            return chunks[0][0], []
        first = chunks[0][0].schema
        if all(f.schema == first for f, _ in chunks):
            return pl.concat([f for f, _ in chunks], how="vertical", rechunk=False), []
        bad: list[tuple[int, str, str]] = []
        typed = ColumnTypes.over([f for f, _ in chunks], where=self.where, passthrough={WM_COL})
        frames = [_conform(typed, f, at, bad) for f, at in chunks]
        return pl.concat(frames, how="diagonal", rechunk=False), sorted(bad, key=itemgetter(0))


def _conform(types: ColumnTypes, frame: pl.DataFrame, at: int, bad: list[tuple[int, str, str]]) -> pl.DataFrame:
    good, mask, reasons = types.conform(frame)
    if mask is not None:
        rows = mask.arg_true().to_list()
        bad += zip([at + j for j in rows], reasons, payloads_of(frame.filter(mask)), strict=True)
    return good
