"""``rh.io.Records``: a bounded in-memory source."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.errors import FlowError, SourceError
from rheon.io.base import BuildContext, Source, SourceLogic

__all__ = ["Records", "frame_from_rows"]


def frame_from_rows(rows: Sequence[Any], *, where: str) -> pl.DataFrame:
    """Build a frame from dicts, inferring types over all rows.

    Examples
    --------
    >>> frame_from_rows([{"a": 1}, {"a": 2.5, "b": "x"}], where="Records").schema
    Schema([('a', Float64), ('b', String)])
    >>> frame_from_rows([1, 2], where="Records")
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: Records: row 0 is a int, expected a dict of column -> value (got 1)
    """
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            msg = f"{where}: row {i} is a {type(row).__name__}, expected a dict of column -> value (got {row!r})"
            raise FlowError(msg)
    if not rows:
        return pl.DataFrame()
    try:
        return pl.from_dicts(rows, infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        msg = f"{where}: could not build a table from the rows: {exc}. Try giving each column one type."
        raise FlowError(msg) from exc


class Records(Source):
    """Bounded in-memory source: a list of dicts, any iterable of dicts, or a Polars DataFrame.

    Batches hold at most ``batch_size`` records. Lists and DataFrames are read whole when the flow
    is built, so column mistakes are caught before running; other iterables (generators) are read
    lazily, ``batch_size`` rows at a time, and can be consumed only once.

    Guarantee: exactly-once (lists and DataFrames resume from their position after a restart;
    a one-shot iterable cannot resume).

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("r")
    >>> out = rh.io.Collect()
    >>> flow.source(rh.io.Records([{"x": 1}, {"x": 2}], batch_size=1)).sink(out)
    >>> flow.run(); out.rows
    [{'x': 1}, {'x': 2}]
    """

    def __init__(self, data: Iterable[Mapping[str, Any]] | pl.DataFrame, *, batch_size: int = 1000) -> None:
        if batch_size < 1:
            msg = f"Records: batch_size must be at least 1 (got {batch_size})"
            raise FlowError(msg)
        self.batch_size = batch_size
        self._frame: pl.DataFrame | None = None
        self._iterable: Iterable[Mapping[str, Any]] | None = None
        if isinstance(data, pl.DataFrame):
            self._frame = data
        elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
            self._frame = frame_from_rows(data, where="Records")
        elif isinstance(data, Iterable):
            self._iterable = data
        else:
            msg = f"Records: expected a list of dicts or a Polars DataFrame (got a {type(data).__name__})"
            raise FlowError(msg)

    @override
    def schema(self) -> pl.Schema | None:
        if self._frame is None or self._frame.width == 0:
            return None
        return self._frame.schema

    @override
    def build(self, ctx: BuildContext) -> SourceLogic:
        if self._frame is not None:
            return _FrameLogic(self._frame, self.batch_size)
        assert self._iterable is not None
        return _IterLogic(iter(self._iterable), self.batch_size)

    def __repr__(self) -> str:
        size = f"{self._frame.height} rows" if self._frame is not None else "iterable"
        return f"Records({size}, batch_size={self.batch_size})"


class _FrameLogic(SourceLogic):
    def __init__(self, frame: pl.DataFrame, batch_size: int) -> None:
        self.frame = frame
        self.batch_size = batch_size
        self.offset = 0

    @override
    def next_batch(self) -> pl.DataFrame | None:
        if self.offset >= self.frame.height:
            return None
        out = self.frame.slice(self.offset, self.batch_size)
        self.offset += out.height
        return out

    @override
    def done(self) -> bool:
        return self.offset >= self.frame.height

    @override
    def snapshot(self) -> Any:
        return self.offset

    @override
    def restore(self, position: Any) -> None:
        self.offset = int(position)


class _IterLogic(SourceLogic):
    def __init__(self, rows: Iterator[Mapping[str, Any]], batch_size: int) -> None:
        self.rows = rows
        self.batch_size = batch_size
        self.count = 0
        self.exhausted = False

    @override
    def next_batch(self) -> pl.DataFrame | None:
        chunk = list(islice(self.rows, self.batch_size))
        if len(chunk) < self.batch_size:
            self.exhausted = True
        if not chunk:
            return None
        self.count += len(chunk)
        return frame_from_rows(chunk, where="Records")

    @override
    def done(self) -> bool:
        return self.exhausted

    @override
    def snapshot(self) -> Any:
        return self.count

    @override
    def restore(self, position: Any) -> None:
        if position:
            msg = (
                "Records over a one-shot iterable cannot resume from a checkpoint. Try a list of dicts or a DataFrame."
            )
            raise SourceError(msg)
