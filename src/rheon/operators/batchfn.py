"""A user's Python function over a whole batch: ``stream.map_batches(fn)``.

The escape hatch for code that is vectorized but not one Polars expression (a NumPy model, a
library call over a column, a lookup in a client that takes many keys at once): ``fn`` takes
the batch's records as a Polars DataFrame and returns a DataFrame, once per batch instead of
once per record.

The contract, checked on every batch (a breach is a bug in the flow, so it stops the run with
an error naming the step):

* ``same_rows=True`` (the default): one output row per input row, in the same order. Each
  output row keeps its input row's place in event time (the hidden per-row watermark).
* ``same_rows=False``: any rows (a filter, an explode, a per-batch aggregate); they all take the
  earliest watermark of the batch, so a row is only late downstream if it is behind where the
  batch started.
* A stream with event time keeps its time column, with its type; with ``same_rows`` also its
  values. (To compute a new time, use ``with_time`` after.)
* With ``schema=``, the output has exactly those columns; values are cast to them.

If ``fn`` raises, it is called again on each half of the batch, down to the records it fails
on alone (:func:`~rheon.core.bisect.bisect_apply`, at most :data:`SEARCH_CALLS` calls): those
go to the dead letters with the exception, the rest go on. A function whose result depends on the whole batch (a batch mean)
sees smaller batches then.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl
from typing_extensions import override

from rheon.core.batch import WM_COL, Batch
from rheon.core.bisect import bisect_apply
from rheon.core.deadletters import payloads_of
from rheon.core.errors import FlowError
from rheon.operators.base import MAIN, Operator, Output

__all__ = ["BatchFn", "MapBatches"]

BatchFn = Callable[[pl.DataFrame], pl.DataFrame]

SEARCH_CALLS = 1024
"""At most about this many calls of the function to find the records of one batch it fails on;
after that a failing part goes to the dead letters whole (a function that fails on every record
of a million-record batch would otherwise be called two million times)."""


class MapBatches(Operator):
    """Runs ``fn`` on each batch's records (see the module's docstring for the contract)."""

    kind = "map_batches"

    def __init__(
        self, name: str, fn: BatchFn, *, same_rows: bool, time: str | None, schema: pl.Schema | None = None
    ) -> None:
        super().__init__(name)
        self.fn = fn
        self.same_rows = same_rows
        self.time = time
        self.schema = schema

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        frame = batch.frame
        if frame.height == 0:
            empty = pl.DataFrame(schema=self.schema) if self.schema is not None else None
            return [(MAIN, self.empty_like(batch, empty))]
        wms = frame.get_column(WM_COL) if WM_COL in frame.columns else None
        records = frame.drop(WM_COL) if wms is not None else frame
        parts, failures = bisect_apply(records, self.fn, calls=SEARCH_CALLS)
        outputs: list[Output] = []
        results: list[pl.DataFrame] = []
        for part in parts:
            given = records.slice(part.start, part.stop - part.start)
            result = self._checked(part.result, given)
            if wms is not None:
                if self.same_rows:
                    result = result.with_columns(wms.slice(part.start, part.stop - part.start).alias(WM_COL))
                else:
                    earliest = wms.slice(part.start, part.stop - part.start).min()
                    result = result.with_columns(pl.lit(earliest, dtype=pl.Int64).alias(WM_COL))
            results.append(result)
        if not results:
            out = pl.DataFrame(schema=self.schema) if self.schema is not None else pl.DataFrame()
        elif len(results) == 1:
            out = results[0]
        else:
            try:
                out = pl.concat(results, how="vertical_relaxed")
            except pl.exceptions.PolarsError as exc:
                msg = f"{self.label}: the function's results for parts of one batch do not fit together: {exc}"
                raise FlowError(msg) from exc
        outputs.append((MAIN, batch.with_frame(out)))
        if failures:
            reasons: list[str] = []
            payloads: list[str] = []
            for f in failures:
                if self.first_error is None:
                    self.first_error = f.error
                failed = records.slice(f.start, f.stop - f.start)
                reasons += [f"{self._fn_name()} raised {type(f.error).__name__}: {f.error}"] * failed.height
                payloads += payloads_of(failed)
            outputs.append(self.dead(reasons, payloads, batch))
        return outputs

    def _fn_name(self) -> str:
        return getattr(self.fn, "__qualname__", type(self.fn).__name__)

    def _checked(self, result: object, given: pl.DataFrame) -> pl.DataFrame:
        """``result`` if it keeps the contract, else a :class:`FlowError` saying how it breaks it."""
        where = f"{self.label}: {self._fn_name()}"
        if isinstance(result, pl.LazyFrame):
            result = result.collect()
        if not isinstance(result, pl.DataFrame):
            msg = f"{where} returned {type(result).__name__}; it must return a Polars DataFrame"
            raise FlowError(msg)
        if WM_COL in result.columns:
            result = result.drop(WM_COL)
        if self.same_rows and result.height != given.height:
            msg = (
                f"{where} returned {result.height} rows for {given.height}; with same_rows=True (the default) it must "
                "return one row per input row, in order. Pass same_rows=False if it filters or adds rows."
            )
            raise FlowError(msg)
        if self.schema is not None:
            result = self._as_declared(result, where)
        time = self.time
        if time is not None:
            if time not in result.columns:
                msg = (
                    f"{where} dropped the event-time column {time!r}; keep it (select it away after map_batches "
                    "if it is not needed)"
                )
                raise FlowError(msg)
            before, after = given.schema[time], result.schema[time]
            if after != before:
                msg = f"{where} changed the event-time column {time!r} from {before} to {after}; keep its type"
                raise FlowError(msg)
            if self.same_rows:
                changed = given.get_column(time).ne_missing(result.get_column(time))
                if changed.any():
                    i = int(changed.arg_max())  # type: ignore[arg-type]
                    msg = (
                        f"{where} changed the event time of a record ({time!r}: {given[time][i]!r} became "
                        f"{result[time][i]!r}); keep event time, or set a new one with with_time() after"
                    )
                    raise FlowError(msg)
        return result

    def _as_declared(self, result: pl.DataFrame, where: str) -> pl.DataFrame:
        assert self.schema is not None
        missing = [n for n in self.schema if n not in result.columns]
        extra = [n for n in result.columns if n not in self.schema]
        if missing or extra:
            msg = f"{where} returned columns {result.columns}, not the declared schema {list(self.schema)}"
            if missing:
                msg += f" (missing {missing})"
            if extra:
                msg += f" (not declared {extra})"
            raise FlowError(msg)
        try:
            return result.select(pl.col(n).cast(t, strict=True) for n, t in self.schema.items())
        except pl.exceptions.PolarsError as exc:
            msg = f"{where} returned values that do not fit the declared schema: {str(exc).splitlines()[0]}"
            raise FlowError(msg) from exc
