"""Aggregations for windows: what users write (``rh.sum("amount")``) and how it runs.

Each aggregation is computed in three vectorized steps, so that it can be built up pane by pane
and batch by batch:

* ``partials``: Polars aggregations over raw records, giving partial columns;
* ``merges``: Polars aggregations that combine partial rows of the same group;
* ``final``: an expression turning merged partials into the result.

Before the first step, :meth:`Aggregation.for_input` may pick an implementation for the input's
type: ``sum`` and ``mean`` of floats add exactly (:mod:`rheon.operators.exactsum`), so that their
results do not depend on how records were batched.

Nulls are ignored like SQL: ``sum``/``min``/``max``/``mean`` of no non-null value is null,
``count()`` counts rows and ``count(col)`` counts non-null values.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
import polars as pl
from typing_extensions import override

from rheon.core.errors import FlowError, columns_hint, did_you_mean
from rheon.operators import exactsum
from rheon.operators.accumulators import (
    Accumulator,
    CountAccumulator,
    ExactSumAccumulator,
    ExtremeAccumulator,
    IntSumAccumulator,
)
from rheon.operators.dense import DenseGroups, numpy_integer
from rheon.operators.exactsum import Post

__all__ = ["Aggregation", "Count", "CountDistinct", "FloatMean", "FloatSum", "Max", "Mean", "Min", "Sum"]


@dataclass(frozen=True)
class Aggregation(ABC):
    """An aggregation of one column (or of rows, for ``count()``)."""

    column: str | None = None
    where: pl.Expr | None = field(default=None, compare=False, kw_only=True)
    """Only rows where this is true are aggregated (``where=``; SQL's ``FILTER (WHERE ...)``)."""

    fn_name = "agg"
    needs_order: ClassVar[bool] = False
    """Whether the result depends on the rows' order (event time, ties by arrival): the window
    then gives each row an arrival number and calls :meth:`ordered`."""
    default_input: ClassVar[pl.DataType | None] = None
    """The type to read the input column as while no record has given it one (all nulls so far)."""

    def for_input(self, dtype: pl.DataType) -> Aggregation:
        """The implementation for an input column of type ``dtype`` (this one, by default)."""
        return self

    def ordered(self, time: str, seq: str) -> Aggregation:
        """This aggregation reading rows' order from columns ``time`` and ``seq`` (arrival)."""
        return self

    def inputs(self) -> list[str]:
        """The columns this aggregation reads: its column and those of ``where``."""
        names = [self.column] if self.column else []
        if self.where is not None:
            names += [c for c in self.where.meta.root_names() if c not in names]
        return names

    def masked(self, helper: str) -> tuple[list[pl.Expr], Aggregation]:
        """For ``where=``: a column ``helper`` holding the input where ``where`` is true and
        null elsewhere (every aggregation ignores nulls; ``count()`` counts it), and this
        aggregation reading ``helper`` instead.

        >>> agg = Sum("v", where=pl.col("ok"))
        >>> (expr,), plain = agg.masked("__h")
        >>> frame = pl.DataFrame({"v": [1, 2, 3], "ok": [True, False, None]})
        >>> frame.select(expr).to_series().to_list(), plain
        ([1, None, None], rh.sum('__h'))
        """
        assert self.where is not None
        value = pl.col(self.column) if self.column else pl.lit(True)
        return [pl.when(self.where).then(value).alias(helper)], replace(self, column=helper, where=None)

    def take_errors(self) -> list[tuple[str, str]]:
        """Failures since the last call, as ``(reason, payload)`` for dead letters (only
        aggregations that run user code have any)."""
        return []

    def aggregate(self, frame: pl.DataFrame, p: str) -> tuple[pl.DataFrame, list[pl.Expr], Post | None]:
        """How to compute :meth:`partials` over a frame of raw records: the frame with any helper
        columns (named ``p`` + suffix), the aggregations to run per group, and a step that
        completes the grouped result (``None``: the aggregations give every partial column)."""
        return frame, self.partials(p), None

    def dense(self, frame: pl.DataFrame, p: str, groups: DenseGroups) -> tuple[pl.DataFrame, Post | None] | None:
        """Like :meth:`aggregate`, computed by counting over ``groups`` (see
        :mod:`rheon.operators.dense`): the aggregated columns, one row per group in ``groups``'
        order, and the completing step; ``None`` (the default) when this aggregation or this
        frame cannot be done that way."""
        return None

    def accumulator(self, p: str, dtype: pl.DataType | None) -> Accumulator | None:
        """This aggregation's partials held in NumPy arrays per group, for an input column of
        type ``dtype`` (see :mod:`rheon.operators.accumulators`); ``None`` (the default) when
        they cannot be.

        >>> Count(None).accumulator("p", None)
        CountAccumulator('p')
        """
        return None

    def finish(self, merged: pl.DataFrame, p: str) -> pl.DataFrame:
        """Add columns :meth:`final` reads to a frame of merged partials (none, by default)."""
        return merged

    def merge(self, partials: pl.DataFrame, p: str) -> tuple[list[pl.Expr], Post | None]:
        """How to merge a frame of partial rows: the aggregations, and a step completing the
        grouped result to the partial columns (``None``: :meth:`merges` as they are)."""
        return self.merges(p), None

    def running(self, partials: pl.DataFrame, p: str) -> tuple[list[str], Post | None] | None:
        """How to merge runs of consecutive rows of ``partials`` by running sums: the partial
        columns that merge by addition alone (a run's merge is then the difference of their
        running sums at its two ends) and a step completing the other partial columns from
        them; ``None`` (the default) when merging takes more than exact addition (a minimum,
        distinct values, float sums).

        >>> Count(None).running(pl.DataFrame({"p": [3, 4]}), "p")
        (['p'], None)
        """
        return None

    @abstractmethod
    def partials(self, p: str) -> list[pl.Expr]:
        """Aggregations over raw records; output columns are named ``p`` + suffix."""

    @abstractmethod
    def merges(self, p: str) -> list[pl.Expr]:
        """Aggregations combining partial rows of one group."""

    @abstractmethod
    def final(self, p: str) -> pl.Expr:
        """The result from merged partial columns."""

    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        """Result type for an input column type (``None`` when unknown)."""
        return dtype

    def check(self, where: str, field_name: str, schema: pl.Schema | None) -> None:
        """Raise :class:`FlowError` if the column is missing or has a type this cannot use."""
        if self.where is not None and not isinstance(self.where, pl.Expr):
            msg = (
                f"{where}: aggregation '{field_name}' = {self!r}: where= must be an expression such as "
                f'rh.col("event") == "view" (got {self.where!r})'
            )
            raise FlowError(msg)
        if schema is None:
            return
        if self.where is not None:
            for name in self.where.meta.root_names():
                self._require(where, field_name, schema, name, "where= reads unknown column {name}")
            try:
                dtype = pl.DataFrame(schema=schema).select(self.where).to_series().dtype
            except pl.exceptions.PolarsError as exc:
                msg = f"{where}: aggregation '{field_name}' = {self!r}: where= cannot be evaluated: {exc}"
                raise FlowError(msg) from None
            if dtype not in (pl.Boolean, pl.Null):
                msg = f"{where}: aggregation '{field_name}' = {self!r}: where= must be true or false per row (it gives {dtype})"
                raise FlowError(msg)
        if self.column is None:
            return
        self._require(where, field_name, schema, self.column, "unknown column {name}")
        self._check_type(where, field_name, schema[self.column])

    def _check_type(self, where: str, field_name: str, dtype: pl.DataType) -> None:
        return None

    def _require(self, where: str, field_name: str, schema: pl.Schema, name: str, what: str) -> None:
        """Raise a :class:`FlowError` if column ``name`` is not in ``schema``: ``what`` says how
        this aggregation reads it (``{name}`` stands for the name), then the columns there and
        the nearest name."""
        if name not in schema:
            msg = (
                f"{where}: aggregation '{field_name}' = {self!r}: {what.format(name=repr(name))} "
                f"{columns_hint(schema.names())}.{did_you_mean(name, schema.names())}"
            )
            raise FlowError(msg)

    def _args(self) -> list[str]:
        """The arguments :func:`repr` shows (the column, by default)."""
        return [repr(self.column)] if self.column is not None else []

    def __repr__(self) -> str:
        args = self._args()
        if self.where is not None:
            args.append(f"where={self.where}")
        return f"rh.{self.fn_name}({', '.join(args)})"


def _numeric(agg: Aggregation, where: str, field_name: str, dtype: pl.DataType) -> None:
    if not (dtype.is_numeric() or dtype in (pl.Boolean, pl.Null)):
        msg = (
            f"{where}: aggregation '{field_name}' = {agg!r}: column '{agg.column}' has type {dtype}, "
            "expected a number. Try casting it first, e.g. .with_columns(rh.col(...).cast(pl.Float64))."
        )
        raise FlowError(msg)


@dataclass(frozen=True, repr=False)
class Count(Aggregation):
    """``count()`` counts rows; ``count(col)`` counts non-null values of ``col``."""

    fn_name = "count"

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        expr = pl.len() if self.column is None else pl.col(self.column).count()
        return [expr.cast(pl.Int64).alias(p)]

    @override
    def dense(self, frame: pl.DataFrame, p: str, groups: DenseGroups) -> tuple[pl.DataFrame, Post | None] | None:
        counts = groups.counts if self.column is None else groups.present(frame.get_column(self.column))
        return pl.DataFrame([pl.Series(p, counts, dtype=pl.Int64)]), None

    @override
    def accumulator(self, p: str, dtype: pl.DataType | None) -> Accumulator | None:
        return CountAccumulator(self.column, p)

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        return [pl.col(p).sum()]

    @override
    def running(self, partials: pl.DataFrame, p: str) -> tuple[list[str], Post | None] | None:
        return [p], None

    @override
    def final(self, p: str) -> pl.Expr:
        return pl.col(p)

    @override
    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        return pl.Int64()


@dataclass(frozen=True, repr=False)
class Sum(Aggregation):
    """Sum of non-null values; null when there are none."""

    fn_name = "sum"
    default_input = pl.Float64()

    @override
    def for_input(self, dtype: pl.DataType) -> Aggregation:
        if dtype.is_float():
            return FloatSum(self.column, float32=dtype == pl.Float32)
        return self

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        c = pl.col(self.column or "")
        return [c.sum().alias(p + "_s"), c.count().cast(pl.Int64).alias(p + "_n")]

    @override
    def dense(self, frame: pl.DataFrame, p: str, groups: DenseGroups) -> tuple[pl.DataFrame, Post | None] | None:
        # Integers, added as floats: exact while every partial sum stays below 2**53 (and within
        # Polars' sum type, which keeps Int32 and UInt32), so the same as Polars' sum then.
        series = frame.get_column(self.column or "")
        dtype = series.dtype
        if not numpy_integer(dtype) or series.null_count() == len(series):
            return None
        result = self.result_dtype(dtype)
        limit = 2**31 if result in (pl.Int32, pl.UInt32) else 2**53
        low, high = series.min(), series.max()  # integers: not all values are null
        largest = max(abs(int(low)), abs(int(high)))  # type: ignore[arg-type]
        if largest * int(groups.counts.max()) >= limit:
            return None
        weights = groups.space.array("weights", len(series), np.float64)
        np.copyto(weights, series.fill_null(0).to_numpy(), casting="unsafe")
        columns = [
            pl.Series(p + "_s", groups.sums(weights).astype(np.int64)),
            pl.Series(p + "_n", groups.present(series)),
        ]
        return pl.DataFrame(columns).cast({p + "_s": result or pl.Int64(), p + "_n": pl.Int64()}), None

    @override
    def accumulator(self, p: str, dtype: pl.DataType | None) -> Accumulator | None:
        if dtype is None or not numpy_integer(dtype) or dtype == pl.UInt64 or self.result_dtype(dtype) != pl.Int64:
            return None
        return IntSumAccumulator(self.column, p)

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        return [pl.col(p + "_s").sum(), pl.col(p + "_n").sum()]

    @override
    def running(self, partials: pl.DataFrame, p: str) -> tuple[list[str], Post | None] | None:
        if not partials.schema[p + "_s"].is_integer():
            return None
        return [p + "_s", p + "_n"], None  # integers: running sums wrap around as the sums do

    @override
    def final(self, p: str) -> pl.Expr:
        return pl.when(pl.col(p + "_n") > 0).then(pl.col(p + "_s"))

    @override
    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        if dtype is None:
            return None
        return pl.DataFrame(schema={"x": dtype}).select(pl.col("x").sum()).schema["x"]

    @override
    def _check_type(self, where: str, field_name: str, dtype: pl.DataType) -> None:
        _numeric(self, where, field_name, dtype)


@dataclass(frozen=True, repr=False)
class _Extreme(Aggregation):
    """``min`` or ``max`` (``smallest``). Of floats, -0.0 is taken as 0.0: which of two equal
    zeros wins would otherwise depend on the order rows meet, so on batching."""

    floats: bool = False
    smallest = True

    @override
    def for_input(self, dtype: pl.DataType) -> Aggregation:
        return replace(self, floats=True) if dtype.is_float() else self

    def _pick(self, x: pl.Expr) -> pl.Expr:
        return x.min() if self.smallest else x.max()

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        x = pl.col(self.column or "")
        return [self._pick(pl.when(x == 0).then(0.0).otherwise(x) if self.floats else x).alias(p)]

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        return [self._pick(pl.col(p))]

    @override
    def final(self, p: str) -> pl.Expr:
        return pl.col(p)

    @override
    def dense(self, frame: pl.DataFrame, p: str, groups: DenseGroups) -> tuple[pl.DataFrame, Post | None] | None:
        """By counting: numbers NumPy holds, without NaN or -0.0 (those batches take the
        group-by, which treats them as :meth:`partials` says)."""
        series = frame.get_column(self.column or "")
        dtype = series.dtype
        if not (numpy_integer(dtype) or dtype in (pl.Float32, pl.Float64)) or series.null_count() == len(series):
            return None
        if dtype.is_float() and (series.is_nan().any() or ((series == 0) & (1 / series < 0)).any()):
            return None
        if not series.null_count():
            extremes = pl.Series(p, groups.extremes(series.to_numpy(), smallest=self.smallest), dtype=dtype)
            return pl.DataFrame([extremes]), None
        # Nulls get stand-ins that cannot win; groups of only nulls get null below.
        filled = series.fill_null(series.max() if self.smallest else series.min())
        extremes = pl.Series(p, groups.extremes(filled.to_numpy(), smallest=self.smallest), dtype=dtype)
        frame = pl.DataFrame([extremes, pl.Series("present", groups.present(series))])
        return frame.select(pl.when(pl.col("present") > 0).then(pl.col(p)).alias(p)), None

    @override
    def accumulator(self, p: str, dtype: pl.DataType | None) -> Accumulator | None:
        if dtype is None or not (numpy_integer(dtype) or dtype in (pl.Float32, pl.Float64)):
            return None
        return ExtremeAccumulator(self.column, p, dtype, smallest=self.smallest)


@dataclass(frozen=True, repr=False)
class Min(_Extreme):
    """Smallest non-null value (of floats, a zero comes out as 0.0, never -0.0)."""

    fn_name = "min"
    smallest = True


@dataclass(frozen=True, repr=False)
class Max(_Extreme):
    """Largest non-null value (of floats, a zero comes out as 0.0, never -0.0)."""

    fn_name = "max"
    smallest = False


@dataclass(frozen=True, repr=False)
class Mean(Aggregation):
    """Arithmetic mean of non-null values (Float64); null when there are none."""

    fn_name = "mean"
    default_input = pl.Float64()

    @override
    def for_input(self, dtype: pl.DataType) -> Aggregation:
        return FloatMean(self.column) if dtype.is_numeric() else self

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        c = pl.col(self.column or "")
        return [c.cast(pl.Float64).sum().alias(p + "_s"), c.count().cast(pl.Int64).alias(p + "_n")]

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        return [pl.col(p + "_s").sum(), pl.col(p + "_n").sum()]

    @override
    def final(self, p: str) -> pl.Expr:
        return pl.when(pl.col(p + "_n") > 0).then(pl.col(p + "_s") / pl.col(p + "_n"))

    @override
    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        return pl.Float64()

    @override
    def _check_type(self, where: str, field_name: str, dtype: pl.DataType) -> None:
        _numeric(self, where, field_name, dtype)


class _ExactFloat(Aggregation):
    """The partials of an exact float sum (:mod:`rheon.operators.exactsum`), for ``sum`` and
    ``mean``; the merged sum is in column ``p_sum``, the count in ``p_n``."""

    @override
    def aggregate(self, frame: pl.DataFrame, p: str) -> tuple[pl.DataFrame, list[pl.Expr], Post | None]:
        return exactsum.plan(frame, self.column or "", p)

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        return exactsum.partials(self.column or "", p)

    @override
    def dense(self, frame: pl.DataFrame, p: str, groups: DenseGroups) -> tuple[pl.DataFrame, Post | None] | None:
        return exactsum.dense(frame, self.column or "", p, groups)

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        return exactsum.merges(p)

    @override
    def merge(self, partials: pl.DataFrame, p: str) -> tuple[list[pl.Expr], Post | None]:
        return exactsum.merge_plan(partials, p)

    @override
    def running(self, partials: pl.DataFrame, p: str) -> tuple[list[str], Post | None] | None:
        return exactsum.running_plan(partials, p)

    @override
    def accumulator(self, p: str, dtype: pl.DataType | None) -> Accumulator | None:
        return ExactSumAccumulator(self.column, p)

    @override
    def finish(self, merged: pl.DataFrame, p: str) -> pl.DataFrame:
        return exactsum.finish(merged, p)


@dataclass(frozen=True, repr=False)
class FloatSum(_ExactFloat, Sum):
    """``sum`` of a float column, added exactly: the same result whatever the batching."""

    float32: bool = False

    @override
    def final(self, p: str) -> pl.Expr:
        total = pl.when(pl.col(p + "_n") > 0).then(pl.col(p + "_sum"))
        return total.cast(pl.Float32) if self.float32 else total


@dataclass(frozen=True, repr=False)
class FloatMean(_ExactFloat, Mean):
    """``mean`` of a numeric column over an exact sum: the same result whatever the batching."""

    @override
    def final(self, p: str) -> pl.Expr:
        return pl.when(pl.col(p + "_n") > 0).then(pl.col(p + "_sum") / pl.col(p + "_n"))


@dataclass(frozen=True, repr=False)
class CountDistinct(Aggregation):
    """Exact number of distinct non-null values (the set is kept per window)."""

    fn_name = "count_distinct"

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        return [pl.col(self.column or "").drop_nulls().unique().alias(p)]

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        return [pl.col(p).list.explode(keep_nulls=False, empty_as_null=False).unique()]

    @override
    def final(self, p: str) -> pl.Expr:
        return pl.col(p).list.len().cast(pl.Int64)

    @override
    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        return pl.Int64()


def _chain(first: Post | None, second: Post | None) -> Post | None:
    """Two completing steps, one after the other."""
    if first is None or second is None:
        return first or second
    return lambda frame: second(first(frame))


_INTERPOLATIONS = ("nearest", "higher", "lower", "midpoint", "linear", "equiprobable")


@dataclass(frozen=True, repr=False)
class _Values(Aggregation):
    """An aggregation of a window's non-null values themselves: each pane keeps them as a list,
    and panes merge by concatenation."""

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        return [pl.col(self.column or "").drop_nulls().alias(p)]

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        return [pl.col(p).list.explode(keep_nulls=False, empty_as_null=False)]


@dataclass(frozen=True, repr=False)
class Quantile(_Values):
    """Exact quantile of non-null values, as Polars' ``quantile(q, interpolation)`` over the
    window's rows: each pane keeps its values (a list), merged by concatenation."""

    q: float = 0.5
    interpolation: str = "nearest"

    fn_name = "quantile"
    default_input = pl.Float64()

    @override
    def final(self, p: str) -> pl.Expr:
        quantile = pl.element().quantile(self.q, self.interpolation)  # type: ignore[arg-type]
        return pl.col(p).list.eval(quantile).list.first()

    @override
    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        if dtype is None:
            return None
        probe = pl.DataFrame(schema={"x": pl.Float64() if dtype == pl.Null else dtype})
        return probe.select(pl.col("x").quantile(self.q, self.interpolation)).schema["x"]  # type: ignore[arg-type]

    @override
    def _check_type(self, where: str, field_name: str, dtype: pl.DataType) -> None:
        _numeric(self, where, field_name, dtype)

    @override
    def _args(self) -> list[str]:
        return [*super()._args(), repr(self.q), f"interpolation={self.interpolation!r}"]


@dataclass(frozen=True, repr=False)
class Median(Quantile):
    """Exact median (Polars' ``median``: the linear-interpolated 0.5 quantile)."""

    q: float = 0.5
    interpolation: str = "linear"

    fn_name = "median"

    @override
    def _args(self) -> list[str]:
        return [repr(self.column)]


@dataclass(frozen=True, repr=False)
class Var(Aggregation):
    """Variance of non-null values (Float64) from exact sums of the values and of their squares
    (each square rounded once, then added exactly: the same bits whatever the batching); null
    with ``ddof`` values or fewer."""

    ddof: int = 1

    fn_name = "var"
    default_input = pl.Float64()

    def _sums(self, p: str) -> tuple[FloatSum, FloatSum]:
        return FloatSum(p + "_x"), FloatSum(p + "_xx")

    def _helpers(self, frame: pl.DataFrame, p: str) -> pl.DataFrame:
        x = pl.col(self.column or "").cast(pl.Float64)
        return frame.with_columns(x.alias(p + "_x"), (x * x).alias(p + "_xx"))

    @override
    def aggregate(self, frame: pl.DataFrame, p: str) -> tuple[pl.DataFrame, list[pl.Expr], Post | None]:
        values, squares = self._sums(p)
        frame, first, post1 = values.aggregate(self._helpers(frame, p), p + "_a")
        frame, second, post2 = squares.aggregate(frame, p + "_b")
        return frame, first + second, _chain(post1, post2)

    @override
    def dense(self, frame: pl.DataFrame, p: str, groups: DenseGroups) -> tuple[pl.DataFrame, Post | None] | None:
        values, squares = self._sums(p)
        frame = self._helpers(frame, p)
        first, second = values.dense(frame, p + "_a", groups), squares.dense(frame, p + "_b", groups)
        if first is None or second is None:
            return None
        return pl.concat([first[0], second[0]], how="horizontal"), _chain(first[1], second[1])

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        values, squares = self._sums(p)
        return values.partials(p + "_a") + squares.partials(p + "_b")

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        values, squares = self._sums(p)
        return values.merges(p + "_a") + squares.merges(p + "_b")

    @override
    def merge(self, partials: pl.DataFrame, p: str) -> tuple[list[pl.Expr], Post | None]:
        values, squares = self._sums(p)
        first, post1 = values.merge(partials, p + "_a")
        second, post2 = squares.merge(partials, p + "_b")
        return first + second, _chain(post1, post2)

    @override
    def finish(self, merged: pl.DataFrame, p: str) -> pl.DataFrame:
        values, squares = self._sums(p)
        return squares.finish(values.finish(merged, p + "_a"), p + "_b")

    @override
    def final(self, p: str) -> pl.Expr:
        n = pl.col(p + "_a_n").cast(pl.Float64)
        total, squares = pl.col(p + "_a_sum"), pl.col(p + "_b_sum")
        spread = (squares - total * (total / n)).clip(lower_bound=0.0)
        return pl.when(pl.col(p + "_a_n") > self.ddof).then(spread / (n - self.ddof))

    @override
    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        return pl.Float64()

    @override
    def _check_type(self, where: str, field_name: str, dtype: pl.DataType) -> None:
        _numeric(self, where, field_name, dtype)

    @override
    def _args(self) -> list[str]:
        return [*super()._args(), *([f"ddof={self.ddof}"] if self.ddof != 1 else [])]


@dataclass(frozen=True, repr=False)
class Std(Var):
    """Standard deviation: the square root of :class:`Var`."""

    fn_name = "std"

    @override
    def final(self, p: str) -> pl.Expr:
        return super().final(p).sqrt()


@dataclass(frozen=True, repr=False)
class _Ordered(Aggregation):
    """An aggregation over rows in order: by event time (column ``time``), ties by arrival
    (``seq``, numbered by the window as rows come in, so the same after a restore)."""

    time: str = ""
    seq: str = ""

    needs_order = True

    @override
    def ordered(self, time: str, seq: str) -> Aggregation:
        return replace(self, time=time, seq=seq)


@dataclass(frozen=True, repr=False)
class First(_Ordered):
    """The first non-null value by event time (ties: the first to arrive)."""

    fn_name = "first"
    last = False

    def _pick(self, value: pl.Expr, t: pl.Expr, s: pl.Expr, by: pl.Expr) -> list[pl.Expr]:
        absent = by.is_not_null() if self.last else by.is_null()
        order = [absent, t, s]
        return [(e.sort_by(order).last() if self.last else e.sort_by(order).first()) for e in (value, t, s)]

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        c = pl.col(self.column or "")
        value, t, s = self._pick(c, pl.col(self.time), pl.col(self.seq), c)
        return [value.alias(p + "_v"), t.alias(p + "_t"), s.alias(p + "_s")]

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        v = pl.col(p + "_v")
        return self._pick(v, pl.col(p + "_t"), pl.col(p + "_s"), v)

    @override
    def final(self, p: str) -> pl.Expr:
        return pl.col(p + "_v")


@dataclass(frozen=True, repr=False)
class Last(First):
    """The last non-null value by event time (ties: the last to arrive)."""

    fn_name = "last"
    last = True


@dataclass(frozen=True, repr=False)
class ArgMax(_Ordered):
    """The value of ``column`` on the row with the largest ``by`` (rows whose ``by`` is null
    are left out); of rows tied on ``by``, the first by event time, then by arrival."""

    by: str = ""

    fn_name = "arg_max"
    largest = True

    def _pick(self, exprs: list[pl.Expr], by: pl.Expr, t: pl.Expr, s: pl.Expr) -> list[pl.Expr]:
        order, descending = [by.is_null(), by, t, s], [False, self.largest, False, False]
        return [e.sort_by(order, descending=descending).first() for e in exprs]

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        by, t, s = pl.col(self.by), pl.col(self.time), pl.col(self.seq)
        picked = self._pick([pl.col(self.column or ""), by, t, s], by, t, s)
        return [e.alias(p + suffix) for e, suffix in zip(picked, ("_v", "_by", "_t", "_s"), strict=True)]

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        by, t, s = pl.col(p + "_by"), pl.col(p + "_t"), pl.col(p + "_s")
        return self._pick([pl.col(p + "_v"), by, t, s], by, t, s)

    @override
    def final(self, p: str) -> pl.Expr:
        return pl.when(pl.col(p + "_by").is_not_null()).then(pl.col(p + "_v"))

    @override
    def inputs(self) -> list[str]:
        names = super().inputs()
        return [*names, self.by] if self.by not in names else names

    @override
    def masked(self, helper: str) -> tuple[list[pl.Expr], Aggregation]:
        """For ``where=``: rows where it does not hold get a null ``by``, so they are left out."""
        assert self.where is not None
        return [pl.when(self.where).then(pl.col(self.by)).alias(helper)], replace(self, by=helper, where=None)

    @override
    def check(self, where: str, field_name: str, schema: pl.Schema | None) -> None:
        super().check(where, field_name, schema)
        if schema is not None:
            self._require(where, field_name, schema, self.by, "unknown column {name} in by=")

    @override
    def _args(self) -> list[str]:
        return [*super()._args(), f"by={self.by!r}"]


@dataclass(frozen=True, repr=False)
class ArgMin(ArgMax):
    """The value of ``column`` on the row with the smallest ``by`` (ties as :class:`ArgMax`)."""

    fn_name = "arg_min"
    largest = False


@dataclass(frozen=True, repr=False)
class Collect(_Ordered):
    """The non-null values as a list, in event-time order (ties by arrival); ``[]`` when none."""

    fn_name = "collect"

    @override
    def partials(self, p: str) -> list[pl.Expr]:
        c = pl.col(self.column or "")
        row = pl.struct(pl.col(self.time).alias("t"), pl.col(self.seq).alias("s"), c.alias("v"))
        return [row.filter(c.is_not_null()).alias(p)]

    @override
    def merges(self, p: str) -> list[pl.Expr]:
        return [pl.col(p).list.explode(keep_nulls=False, empty_as_null=False)]

    @override
    def final(self, p: str) -> pl.Expr:
        e = pl.element()
        return pl.col(p).list.eval(e.sort_by(e.struct.field("t"), e.struct.field("s")).struct.field("v"))

    @override
    def result_dtype(self, dtype: pl.DataType | None) -> pl.DataType | None:
        return None if dtype is None else pl.List(dtype)
