"""An event-time column made usable: given its type, computed from an expression, checked.

Sources (``flow.source(time=...)``) and ``stream.with_time(...)`` both declare event time with a
column name or a Polars expression. :class:`EventTimeColumn` turns each batch's column into the
event-time type the first usable batch fixed (int64 epoch milliseconds or a Datetime), and sends
every record that cannot have an event time to the dead letters with a reason naming the column,
the expression and the value: an expression that fails or gives null for it, text that does not
parse, a null, a time outside the range a flow can handle. The rest of the batch goes on.
"""

from __future__ import annotations

import polars as pl

from rheon.core.batch import MAX_WM, MIN_WM
from rheon.core.bisect import bisect_apply
from rheon.core.errors import FlowError, columns_hint, did_you_mean
from rheon.core.eventtime import TimeType, time_type_of

__all__ = ["EventTimeColumn", "Rejected", "declared_time", "describe_time", "time_column_name", "time_schema"]

Rejected = tuple[str | list[str], pl.DataFrame]
"""Records that cannot have an event time: the reason (one, or one per record) and the records."""

_FAILED = (pl.exceptions.PolarsError, pl.exceptions.PanicException, ArithmeticError, ValueError, TypeError)


def describe_time(time: str | pl.Expr) -> str:
    """How messages show a ``time=`` argument: the column name, or the expression (shortened).

    Examples
    --------
    >>> describe_time("ts")
    "'ts'"
    >>> describe_time(pl.col("when").str.to_datetime())
    'col("when").str.strptime(["raise"])'
    """
    if isinstance(time, str):
        return repr(time)
    text = str(time)
    if len(text) > 80:
        text = text[:77] + "..."
    return text


def time_column_name(time: str | pl.Expr, *, where: str) -> str:
    """The column a ``time=`` argument names: itself, or the expression's output name.

    Examples
    --------
    >>> time_column_name(pl.col("when").str.to_datetime().alias("ts"), where="source 's'")
    'ts'
    >>> time_column_name(pl.lit(1), where="source 's'")
    'literal'
    """
    if isinstance(time, str):
        return time
    if not isinstance(time, pl.Expr):
        msg = f"{where}: time must be a column name or a Polars expression such as rh.col('when').str.to_datetime() (got {time!r})"
        raise FlowError(msg)
    try:
        return time.meta.output_name()
    except pl.exceptions.PolarsError as exc:
        msg = f"{where}: cannot tell which column the time expression {describe_time(time)} makes; name it with .alias('ts')"
        raise FlowError(msg) from exc


def time_schema(time: str | pl.Expr, schema: pl.Schema | None, *, where: str) -> pl.Schema | None:
    """The schema after the time expression (``schema`` itself for a column name), or ``None`` if unknown.

    Raises a :class:`FlowError` naming the missing column when the expression reads one the schema lacks.
    """
    if schema is None or isinstance(time, str):
        return schema
    try:
        return pl.LazyFrame(schema=schema).with_columns(time).collect_schema()
    except pl.exceptions.ColumnNotFoundError as exc:
        names = ", ".join(schema.names())
        missing = [c for c in time.meta.root_names() if c not in schema]
        msg = f"{where}: the time expression {describe_time(time)} reads unknown column(s) {', '.join(map(repr, missing))} (columns: {names})"
        raise FlowError(msg) from exc
    except pl.exceptions.PolarsError as exc:
        msg = f"{where}: the time expression {describe_time(time)} does not apply to the stream: {str(exc).splitlines()[0]}"
        raise FlowError(msg) from exc


def declared_time(
    time: str | pl.Expr, schema: pl.Schema | None, *, where: str
) -> tuple[str, pl.Expr | None, pl.Schema | None, TimeType | None]:
    """What ``time=`` declares on a stream of ``schema``: the column, the expression computing it
    (``None`` for a column name), the schema after it and the time type (``None`` while the
    schema is unknown), checked.

    Examples
    --------
    >>> schema = pl.Schema({"when": pl.String(), "v": pl.Int64()})
    >>> column, expr, after, ttype = declared_time(pl.col("when").str.to_datetime(time_unit="ms"), schema, where="source 's'")
    >>> column, after["when"], ttype.ticks_per_ms
    ('when', Datetime(time_unit='ms', time_zone=None), 1)
    >>> declared_time("whn", schema, where="source 's'")
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: source 's': unknown time column 'whn' (columns: when, v). Did you mean 'when'?
    """
    column = time_column_name(time, where=where)
    expr = time if isinstance(time, pl.Expr) else None
    schema = time_schema(time, schema, where=where)
    if schema is None:
        return column, expr, None, None
    if column not in schema:
        names = schema.names()
        msg = f"{where}: unknown time column '{column}' {columns_hint(names)}.{did_you_mean(column, names)}"
        raise FlowError(msg)
    return column, expr, schema, time_type_of(schema[column], column=column, where=where)


class EventTimeColumn:
    """Fixes and checks a stream's event-time column, batch by batch.

    Parameters
    ----------
    column
        The event-time column's name (for an expression, its output name).
    where
        How messages name the operator: ``"source 'tx'"``.
    expr
        The expression that computes the column from each record, if any.
    time_type
        The column's event-time type when it is known before the first batch.

    Examples
    --------
    >>> col = EventTimeColumn("ts", where="source 's'", expr=pl.col("when").str.to_datetime("%Y-%m-%d", strict=False).alias("ts"))
    >>> good, rejected = col.resolve(pl.DataFrame({"when": ["2024-01-02", "soon"]}))
    >>> good.get_column("ts").to_list()
    [datetime.datetime(2024, 1, 2, 0, 0)]
    >>> for reasons, rows in rejected:
    ...     print(reasons[0], rows.to_dicts())
    time expression col("when").str.strptime(["raise"]).alias("ts") gave no event time (when='soon') [{'when': 'soon'}]
    """

    def __init__(
        self, column: str, *, where: str, expr: pl.Expr | None = None, time_type: TimeType | None = None
    ) -> None:
        self.column = column
        self.where = where
        self.expr = expr
        self.time_type = time_type

    def resolve(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, list[Rejected]]:
        """The records that have an event time, with the column in its type, and those that do not.

        The first batch with a usable value fixes the type; a later batch whose column came out
        as another type (``"ts": "yesterday"`` among numbers makes a JSON batch's column text)
        is converted value by value. Rejected records are returned as they arrived.
        """
        rejected: list[Rejected] = []
        if frame.height == 0:
            return frame, rejected
        if self.expr is not None:
            frame, values = self._evaluate(frame, rejected)
        elif self.column not in frame.columns:
            rejected.append((f"record has no event time (column '{self.column}' is missing)", frame))
            return frame.clear(), rejected
        else:
            values = frame.get_column(self.column)
        frame, values = self._typed(frame, values, rejected)
        frame, values = self._checked(frame, values, rejected)
        if self.expr is not None or values.dtype != frame.schema[self.column]:
            frame = frame.with_columns(values.alias(self.column))
        return frame, rejected

    # -- stages: each moves the records it cannot use from (frame, values) to `rejected` ----------

    def _evaluate(self, frame: pl.DataFrame, rejected: list[Rejected]) -> tuple[pl.DataFrame, pl.Series]:
        """The expression's value for every record; a record it fails on or gives null for is rejected."""
        assert self.expr is not None
        values, failures = self._apply(frame, 0)
        if failures:
            keep = pl.Series([True] * frame.height).scatter([i for i, _ in failures], False)
            rejected.append(([r for _, r in failures], frame.filter(~keep)))
            frame = frame.filter(keep)
        null = values.is_null()
        if null.any():
            bad = frame.filter(null)
            rejected.append(
                (
                    [
                        f"time expression {self._expr_text()} gave no event time ({self._inputs(row)})"
                        for row in bad.iter_rows(named=True)
                    ],
                    bad,
                )
            )
            frame, values = frame.filter(~null), values.filter(~null)
        return frame, values

    def _apply(self, frame: pl.DataFrame, offset: int) -> tuple[pl.Series, list[tuple[int, str]]]:
        """Evaluate on ``frame``; if that fails, on each half, down to the records that fail alone
        (:func:`~rheon.core.bisect.bisect_apply`)."""
        assert self.expr is not None
        # An unknown column or type is about the batch's columns, not a value: every record has it.
        parts, failures = bisect_apply(
            frame,
            lambda part: part.select(self.expr).to_series(),
            failed=_FAILED,
            whole=(pl.exceptions.ColumnNotFoundError, pl.exceptions.SchemaError),
        )
        for part in parts:
            if part.result.len() != part.stop - part.start:
                msg = (
                    f"{self.where}: the time expression {self._expr_text()} gave {part.result.len()} values for "
                    f"{part.stop - part.start} records; it must compute one value from each record (no aggregations)"
                )
                raise FlowError(msg)
        reasons: list[tuple[int, str]] = []
        for f in failures:
            if f.stop - f.start == 1 and not isinstance(
                f.error, pl.exceptions.ColumnNotFoundError | pl.exceptions.SchemaError
            ):
                inputs = self._inputs(frame.row(f.start, named=True))
                reason = f"time expression {self._expr_text()} failed: {_first_line(f.error)} ({inputs})"
                reasons.append((offset + f.start, reason))
            else:
                reason = f"time expression {self._expr_text()} failed: {_first_line(f.error)}"
                reasons += [(offset + i, reason) for i in range(f.start, f.stop)]
        values = [p.result for p in parts]
        joined = pl.concat(values) if len(values) > 1 else (values[0] if values else pl.Series(self.column, []))
        return joined, reasons

    def _typed(
        self, frame: pl.DataFrame, values: pl.Series, rejected: list[Rejected]
    ) -> tuple[pl.DataFrame, pl.Series]:
        """The values in the event-time type; those that cannot have it are rejected."""
        dtype = values.dtype
        if self.time_type is None:
            if dtype == pl.Null:
                return frame, values  # no record has a time yet: nothing fixes the type (_checked)
            kind = dtype
            if dtype.is_float() or (
                dtype == pl.String and values.cast(pl.Int64, strict=False).null_count() < values.len()
            ):
                kind = pl.Int64()  # numbers (as text, or with a fraction of 0) are epoch ms; other text is to parse
            try:
                self.time_type = time_type_of(kind, column=self.column, where=self.where)
            except FlowError as exc:  # no record of this batch has a time a flow can use
                has = values.is_not_null()
                rejected.append((str(exc), frame.filter(has)))
                return frame.filter(~has), values.filter(~has)
        expected = self.time_type.dtype
        if dtype == expected:
            return frame, values
        if isinstance(expected, pl.Datetime) and dtype == pl.String:
            converted = values.str.to_datetime(time_unit=expected.time_unit, time_zone=expected.time_zone, strict=False)
        else:
            try:
                converted = values.cast(expected, strict=False)
            except _FAILED:
                converted = pl.Series(values.name, [None] * values.len(), dtype=expected)
        failed = converted.is_null() & values.is_not_null()
        if dtype.is_float():  # 1.9 is not the millisecond 1: no silent truncation
            failed = failed | (converted.cast(dtype) != values).fill_null(False)
        if failed.any():
            shown = ", ".join(repr(v) for v in values.filter(failed).head(3).to_list())
            reason = f"unparseable event time in column '{self.column}' (expected {expected}; got {shown})"
            rejected.append((reason, frame.filter(failed)))
            frame, converted = frame.filter(~failed), converted.filter(~failed)
        return frame, converted

    def _checked(
        self, frame: pl.DataFrame, values: pl.Series, rejected: list[Rejected]
    ) -> tuple[pl.DataFrame, pl.Series]:
        """Records without an event time, or with one outside ``[MIN_WM, MAX_WM)`` ticks (where
        watermark arithmetic would overflow and windows could never fire), are rejected."""
        nulls_reason = f"record has no event time (column '{self.column}' is null)"
        if self.time_type is None:  # every record left has a null time
            if frame.height:
                rejected.append((nulls_reason, frame))
            return frame.clear(), values.clear()
        ticks = values.cast(pl.Int64)
        low, high = ticks.min(), ticks.max()
        nulls = ticks.null_count() > 0
        outside = low is not None and high is not None and (low < MIN_WM or high >= MAX_WM)  # type: ignore[operator]
        if not (nulls or outside):
            return frame, values
        first, last = pl.Series([MIN_WM, MAX_WM - 1]).cast(self.time_type.dtype).to_list()
        range_reason = (
            f"event time in column '{self.column}' is outside the range a flow can handle ({first} to {last})"
        )
        for reason in (nulls_reason, range_reason):
            bad = ticks.is_null() if reason is nulls_reason else ((ticks < MIN_WM) | (ticks >= MAX_WM)).fill_null(False)
            if bad.any():
                rejected.append((reason, frame.filter(bad)))
                frame, values, ticks = frame.filter(~bad), values.filter(~bad), ticks.filter(~bad)
        return frame, values

    # -- messages ---------------------------------------------------------------------------

    def _expr_text(self) -> str:
        assert self.expr is not None
        return describe_time(self.expr)

    def _inputs(self, row: dict[str, object]) -> str:
        """The record's values the expression reads: ``when='soon'``."""
        assert self.expr is not None
        names = self.expr.meta.root_names()
        return ", ".join(f"{n}={row.get(n)!r}" for n in names) or "no input column"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
