"""Aggregation functions for ``WindowedStream.agg``: ``rh.count()``, ``rh.sum("amount")``, ..."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Literal

import polars as pl

from rheon.core.errors import FlowError
from rheon.operators.aggregations import (
    ArgMax,
    ArgMin,
    Collect,
    Count,
    CountDistinct,
    First,
    Last,
    Max,
    Mean,
    Median,
    Min,
    Quantile,
    Std,
    Sum,
    Var,
)
from rheon.operators.approx import ApproxCountDistinct, ApproxQuantile
from rheon.operators.user_aggregates import AggFn, UserDefined

__all__ = [
    "Aggregate",
    "agg_fn",
    "approx_count_distinct",
    "approx_quantile",
    "arg_max",
    "arg_min",
    "collect",
    "count",
    "count_distinct",
    "first",
    "last",
    "max",
    "mean",
    "median",
    "min",
    "quantile",
    "std",
    "sum",
    "var",
]

Interpolation = Literal["nearest", "higher", "lower", "midpoint", "linear", "equiprobable"]


def _column(fn: str, column: object) -> str:
    if not isinstance(column, str) or not column:
        msg = f'rh.{fn}: expected a column name (got {column!r}). Try rh.{fn}("amount").'
        raise FlowError(msg)
    return column


def count(column: str | None = None, *, where: pl.Expr | None = None) -> Count:
    """Count rows, or with a column name, count its non-null values.

    Every aggregation takes ``where=``: only rows where that expression is true count (SQL's
    ``COUNT(*) FILTER (WHERE ...)``), so one window can count views and clicks side by side.

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"k": 1, "ts": 0, "v": 1}, {"k": 1, "ts": 1, "v": None}]
    >>> flow = rh.Flow("c"); out = rh.io.Collect()
    >>> (flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s"))
    ...      .agg(rows=rh.count(), values=rh.count("v")).sink(out))
    >>> flow.run(); out.rows[0]["rows"], out.rows[0]["values"]
    (2, 1)

    >>> clicks = [{"page": "a", "ts": t, "event": e} for t, e in enumerate(["view", "click", "view"])]
    >>> flow = rh.Flow("w"); out = rh.io.Collect()
    >>> (flow.source(rh.io.Records(clicks), time="ts").key_by("page").window(rh.tumbling("1s"))
    ...      .agg(views=rh.count(where=rh.col("event") == "view"), clicks=rh.count(where=rh.col("event") == "click"))
    ...      .sink(out))
    >>> flow.run(); out.rows[0]["views"], out.rows[0]["clicks"]
    (2, 1)
    """
    return Count(None if column is None else _column("count", column), where=where)


def sum(column: str, *, where: pl.Expr | None = None) -> Sum:
    """Sum of the non-null values of a numeric column; null if there are none.

    Floats are added exactly (as 128-bit integers on a fixed grid) and rounded once at the end,
    so a window's sum has the same bits whatever the batch sizes and after a crash and replay,
    and ``0.1 + 1e20 - 1e20`` gives ``0.1``. This holds while a window's non-zero values lie
    within a factor of about 3e26 of each other; a wider window, or one with an infinity or NaN,
    gets the ordinary float sum.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("s"); out = rh.io.Collect()
    >>> rows = [{"k": 1, "ts": 0, "v": 2}, {"k": 1, "ts": 1, "v": 3}]
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s")).agg(
    ...     total=rh.sum("v")).sink(out)
    >>> flow.run(); out.rows[0]["total"]
    5
    """
    return Sum(_column("sum", column), where=where)


def min(column: str, *, where: pl.Expr | None = None) -> Min:
    """Smallest non-null value of a column. Of floats, a zero comes out as ``0.0`` even if the
    window held ``-0.0`` (which of two equal zeros wins would otherwise depend on batching).

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("m"); out = rh.io.Collect()
    >>> rows = [{"k": 1, "ts": 0, "v": 2}, {"k": 1, "ts": 1, "v": -3}]
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s")).agg(
    ...     lo=rh.min("v")).sink(out)
    >>> flow.run(); out.rows[0]["lo"]
    -3
    """
    return Min(_column("min", column), where=where)


def max(column: str, *, where: pl.Expr | None = None) -> Max:
    """Largest non-null value of a column. Of floats, a zero comes out as ``0.0`` even if the
    window held ``-0.0`` (which of two equal zeros wins would otherwise depend on batching).

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("m"); out = rh.io.Collect()
    >>> rows = [{"k": 1, "ts": 0, "v": 2}, {"k": 1, "ts": 1, "v": -3}]
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s")).agg(
    ...     hi=rh.max("v")).sink(out)
    >>> flow.run(); out.rows[0]["hi"]
    2
    """
    return Max(_column("max", column), where=where)


def mean(column: str, *, where: pl.Expr | None = None) -> Mean:
    """Mean of the non-null values of a numeric column (a float); null if there are none.

    The sum behind it is exact, as for :func:`sum`.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("m"); out = rh.io.Collect()
    >>> rows = [{"k": 1, "ts": 0, "v": 2}, {"k": 1, "ts": 1, "v": 3}]
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s")).agg(
    ...     avg=rh.mean("v")).sink(out)
    >>> flow.run(); out.rows[0]["avg"]
    2.5
    """
    return Mean(_column("mean", column), where=where)


def count_distinct(column: str, *, where: pl.Expr | None = None) -> CountDistinct:
    """Exact number of distinct non-null values of a column.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("d"); out = rh.io.Collect()
    >>> rows = [{"k": 1, "ts": t, "user": u} for t, u in enumerate(["a", "b", "a", None])]
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s")).agg(
    ...     users=rh.count_distinct("user")).sink(out)
    >>> flow.run(); out.rows[0]["users"]
    2
    """
    return CountDistinct(_column("count_distinct", column), where=where)


def _fraction(fn: str, q: object) -> float:
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0 <= q <= 1:
        msg = f"rh.{fn}: q must be a number from 0 to 1 (got {q!r}). Try rh.{fn}('latency', 0.95)."
        raise FlowError(msg)
    return float(q)


def quantile(
    column: str, q: float, interpolation: Interpolation = "nearest", *, where: pl.Expr | None = None
) -> Quantile:
    """Exact ``q`` quantile of a numeric column's non-null values: the same as Polars'
    ``pl.col(column).quantile(q, interpolation)`` over the window's rows; null if there are none.

    Exact means each pane keeps its values until its windows have fired (memory grows with the
    rows per window).

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"host": "a", "ts": t, "ms": ms} for t, ms in enumerate([12, 15, 11, 240, 14])]
    >>> flow = rh.Flow("q"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("host").window(rh.tumbling("1s")).agg(
    ...     p50=rh.quantile("ms", 0.5), p95=rh.quantile("ms", 0.95, "linear")).sink(out)
    >>> flow.run(); out.rows[0]["p50"], round(out.rows[0]["p95"], 6)
    (14.0, 195.0)
    """
    if interpolation not in ("nearest", "higher", "lower", "midpoint", "linear", "equiprobable"):
        msg = (
            f"rh.quantile: interpolation must be one of nearest, higher, lower, midpoint, linear, equiprobable "
            f"(got {interpolation!r})"
        )
        raise FlowError(msg)
    return Quantile(_column("quantile", column), _fraction("quantile", q), interpolation, where=where)


def median(column: str, *, where: pl.Expr | None = None) -> Median:
    """Exact median of a numeric column's non-null values (Polars' ``median``: the mean of the
    two middle values when there is an even number); null if there are none.

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"host": "a", "ts": t, "ms": ms} for t, ms in enumerate([12, 15, 11, 240])]
    >>> flow = rh.Flow("m"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("host").window(rh.tumbling("1s")).agg(
    ...     mid=rh.median("ms")).sink(out)
    >>> flow.run(); out.rows[0]["mid"]
    13.5
    """
    return Median(_column("median", column), where=where)


def _ddof(fn: str, ddof: object) -> int:
    if isinstance(ddof, bool) or not isinstance(ddof, int) or ddof < 0:
        msg = f"rh.{fn}: ddof must be a whole number >= 0 (got {ddof!r}): 1 for the sample {fn}, 0 for the population's"
        raise FlowError(msg)
    return ddof


def var(column: str, ddof: int = 1, *, where: pl.Expr | None = None) -> Var:
    """Variance of a numeric column's non-null values (sample variance, ``ddof=1``, as Polars;
    ``ddof=0`` for the population's); null with ``ddof`` values or fewer.

    Computed from exact sums of the values and of their squares, so a window's result has the
    same bits whatever the batching. Its relative error is about 1e-16 * (mean / std)**2: fine
    for measurements, not for values like 1e9 ± 1 (subtract a typical value first).

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"k": 1, "ts": t, "v": v} for t, v in enumerate([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])]
    >>> flow = rh.Flow("v"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s")).agg(
    ...     sample=rh.var("v"), population=rh.var("v", ddof=0)).sink(out)
    >>> flow.run(); round(out.rows[0]["sample"], 6), out.rows[0]["population"]
    (4.571429, 4.0)
    """
    return Var(_column("var", column), _ddof("var", ddof), where=where)


def std(column: str, ddof: int = 1, *, where: pl.Expr | None = None) -> Std:
    """Standard deviation of a numeric column's non-null values: the square root of
    :func:`var` (same ``ddof``, same exactness).

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"k": 1, "ts": t, "v": v} for t, v in enumerate([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0])]
    >>> flow = rh.Flow("s"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s")).agg(
    ...     spread=rh.std("v", ddof=0)).sink(out)
    >>> flow.run(); out.rows[0]["spread"]
    2.0
    """
    return Std(_column("std", column), _ddof("std", ddof), where=where)


def first(column: str, *, where: pl.Expr | None = None) -> First:
    """The first non-null value of a column by event time; of rows with the same time, the one
    that arrived first. Null if there is none.

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"k": 1, "ts": 5, "v": "late"}, {"k": 1, "ts": 2, "v": "early"}, {"k": 1, "ts": 2, "v": "tie"}]
    >>> flow = rh.Flow("f"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts", max_delay="1s").key_by("k").window(rh.tumbling("1s")).agg(
    ...     opened=rh.first("v"), closed=rh.last("v")).sink(out)
    >>> flow.run(); out.rows[0]["opened"], out.rows[0]["closed"]
    ('early', 'late')
    """
    return First(_column("first", column), where=where)


def last(column: str, *, where: pl.Expr | None = None) -> Last:
    """The last non-null value of a column by event time; of rows with the same time, the one
    that arrived last. Null if there is none.

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"k": 1, "ts": 0, "state": "ok"}, {"k": 1, "ts": 9, "state": "down"}, {"k": 1, "ts": 9, "state": None}]
    >>> flow = rh.Flow("l"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s")).agg(
    ...     now=rh.last("state")).sink(out)
    >>> flow.run(); out.rows[0]["now"]
    'down'
    """
    return Last(_column("last", column), where=where)


def _by(fn: str, by: object) -> str:
    if not isinstance(by, str) or not by:
        msg = f'rh.{fn}: by= must name the column to compare (got {by!r}). Try rh.{fn}("host", by="cpu").'
        raise FlowError(msg)
    return by


def arg_max(column: str, *, by: str, where: pl.Expr | None = None) -> ArgMax:
    """The value of ``column`` on the row with the largest ``by``: which host was the busiest,
    which page the slowest. Rows whose ``by`` is null are left out; of rows tied on ``by``, the
    first by event time (then by arrival) wins. Null if no row has a ``by``.

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"dc": "eu", "ts": t, "host": h, "cpu": c} for t, (h, c) in enumerate([("a", 40), ("b", 95), ("c", 95)])]
    >>> flow = rh.Flow("a"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("dc").window(rh.tumbling("1s")).agg(
    ...     busiest=rh.arg_max("host", by="cpu"), idlest=rh.arg_min("host", by="cpu")).sink(out)
    >>> flow.run(); out.rows[0]["busiest"], out.rows[0]["idlest"]
    ('b', 'a')
    """
    return ArgMax(_column("arg_max", column), by=_by("arg_max", by), where=where)


def arg_min(column: str, *, by: str, where: pl.Expr | None = None) -> ArgMin:
    """The value of ``column`` on the row with the smallest ``by`` (ties and nulls as
    :func:`arg_max`).

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"k": 1, "ts": t, "page": p, "ms": ms} for t, (p, ms) in enumerate([("/a", 30), ("/b", 9), ("/c", None)])]
    >>> flow = rh.Flow("a"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s")).agg(
    ...     fastest=rh.arg_min("page", by="ms")).sink(out)
    >>> flow.run(); out.rows[0]["fastest"]
    '/b'
    """
    return ArgMin(_column("arg_min", column), by=_by("arg_min", by), where=where)


def collect(column: str, *, where: pl.Expr | None = None) -> Collect:
    """The window's non-null values of a column as a list, in event-time order (ties by
    arrival); ``[]`` when there are none. Each pane keeps its values.

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"user": "u", "ts": t, "page": p} for t, p in [(3, "/cart"), (1, "/home"), (2, None), (2, "/item")]]
    >>> flow = rh.Flow("c"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts", max_delay="1s").key_by("user").window(rh.tumbling("1s")).agg(
    ...     path=rh.collect("page")).sink(out)
    >>> flow.run(); out.rows[0]["path"]
    ['/home', '/item', '/cart']
    """
    return Collect(_column("collect", column), where=where)


def approx_count_distinct(column: str, *, where: pl.Expr | None = None) -> ApproxCountDistinct:
    """Approximate number of distinct non-null values: HyperLogLog with 2**14 registers, a
    relative standard error of about 0.8 % (within 2 % in 95 % of windows), exact-ish for small
    counts (linear counting below ~40,000), and at most 16,384 small entries per window however
    many values it sees, where ``count_distinct`` keeps them all. Sketches of panes merge, so
    sliding windows cost no more than tumbling ones.

    Values are hashed with Polars' hash, which is stable within a Polars version: resume a
    checkpoint with the Polars version that wrote it.

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"page": "home", "ts": i, "user": f"u{i % 1000}"} for i in range(5000)]
    >>> flow = rh.Flow("u"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("page").window(rh.tumbling("1m")).agg(
    ...     users=rh.approx_count_distinct("user"), exact=rh.count_distinct("user")).sink(out)
    >>> flow.run(); abs(out.rows[0]["users"] - 1000) <= 20, out.rows[0]["exact"]
    (True, 1000)
    """
    return ApproxCountDistinct(_column("approx_count_distinct", column), where=where)


def approx_quantile(
    column: str, q: float, relative_error: float = 0.01, *, where: pl.Expr | None = None
) -> ApproxQuantile:
    """Approximate ``q`` quantile of a numeric column's non-null, finite values with a DDSketch:
    the result is within ``relative_error`` (1 % by default) of the exact value of rank
    ``floor(q * (n - 1))`` (``rh.quantile(col, q, "lower")``), whatever the values' range, with
    one small entry per logarithmic bucket the values fall in (a few hundred for values spanning
    six orders of magnitude) instead of every value. Sketches of panes merge.

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"host": "a", "ts": i, "ms": float(1 + i % 500)} for i in range(10_000)]
    >>> flow = rh.Flow("q"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("host").window(rh.tumbling("1m")).agg(
    ...     p99=rh.approx_quantile("ms", 0.99), exact=rh.quantile("ms", 0.99, "lower")).sink(out)
    >>> flow.run(); abs(out.rows[0]["p99"] - out.rows[0]["exact"]) <= 0.01 * out.rows[0]["exact"], out.rows[0]["exact"]
    (True, 495.0)
    """
    if (
        isinstance(relative_error, bool)
        or not isinstance(relative_error, int | float)
        or not 1e-9 <= relative_error < 1
    ):
        msg = f"rh.approx_quantile: relative_error must be a number from 1e-9 to below 1 (got {relative_error!r}), e.g. 0.01"
        raise FlowError(msg)
    return ApproxQuantile(
        _column("approx_quantile", column),
        _fraction("approx_quantile", q),
        float(relative_error),
        where=where,
    )


class Aggregate:
    """Base class for an aggregation of your own, run as the built-ins are: vectorized with
    Polars expressions over a batch's rows, kept per pane as partial columns, merged, finished
    when the window fires, and checkpointed.

    A subclass passes the columns it reads to ``__init__`` and defines three methods; each gets
    ``col``, a function giving the expression of a column by name:

    * ``add(col)``: the partial columns, as ``{name: aggregation}`` over one group's rows
      (``col`` reads the input columns);
    * ``merge(col)``: the same names, as aggregations combining partial rows of one group
      (``col`` reads the partial columns);
    * ``finish(col)``: the result, an expression of the merged partial columns.

    A partial must be mergeable (sums, counts, minima, lists...): a window's result is then the
    same whatever the batching. Set ``dtype`` (a class attribute) to give the result type
    before the flow runs. ``where=`` works as for the built-ins (the inputs read as null where
    it is false). :meth:`__repr__` names the aggregation in errors and in checkpoints: a changed
    one is refused on restore.

    Examples
    --------
    >>> import polars as pl
    >>> import rheon as rh
    >>> class WeightedMean(rh.Aggregate):
    ...     dtype = pl.Float64()
    ...     def __init__(self, value, weight, *, where=None):
    ...         super().__init__(value, weight, where=where)
    ...         self.value, self.weight = value, weight
    ...     def add(self, col):
    ...         return {"total": (col(self.value) * col(self.weight)).sum(), "weight": col(self.weight).sum()}
    ...     def merge(self, col):
    ...         return {"total": col("total").sum(), "weight": col("weight").sum()}
    ...     def finish(self, col):
    ...         return col("total") / col("weight")
    >>> rows = [{"sym": "X", "ts": t, "price": p, "qty": q} for t, (p, q) in enumerate([(10.0, 1), (13.0, 3)])]
    >>> flow = rh.Flow("vwap"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("sym").window(rh.tumbling("1s")).agg(
    ...     vwap=WeightedMean("price", "qty")).sink(out)
    >>> flow.run(); out.rows[0]["vwap"]
    12.25
    """

    dtype: pl.DataType | None = None
    """The result's type, if known before the flow runs."""

    def __init__(self, *inputs: str, where: pl.Expr | None = None) -> None:
        if not inputs or not all(isinstance(c, str) and c for c in inputs):
            msg = f"{type(self).__name__}: pass the input column names to Aggregate.__init__ (got {inputs!r})"
            raise FlowError(msg)
        self.inputs: tuple[str, ...] = tuple(inputs)
        self.where = where

    def add(self, col: Callable[[str], pl.Expr]) -> Mapping[str, pl.Expr]:
        """The partial columns over one group's rows: ``{name: aggregation}``."""
        msg = f"{type(self).__name__} must define add(col)"
        raise NotImplementedError(msg)

    def merge(self, col: Callable[[str], pl.Expr]) -> Mapping[str, pl.Expr]:
        """The partial columns combined over one group's partial rows (same names as add)."""
        msg = f"{type(self).__name__} must define merge(col)"
        raise NotImplementedError(msg)

    def finish(self, col: Callable[[str], pl.Expr]) -> pl.Expr:
        """The result from merged partial columns."""
        msg = f"{type(self).__name__} must define finish(col)"
        raise NotImplementedError(msg)

    def __repr__(self) -> str:
        settings = [
            f"{k}={v!r}"
            for k, v in sorted(vars(self).items())
            if k not in ("inputs", "where") and " at 0x" not in repr(v)
        ]
        return f"{type(self).__name__}({', '.join([*map(repr, self.inputs), *settings])})"

    def as_aggregation(self) -> UserDefined:
        """What a window runs (see :class:`rheon.operators.user_aggregates.UserDefined`)."""
        return UserDefined(None, where=self.where, user=self)


def agg_fn(
    fn: Callable[[list[Any]], Any], column: str, *, dtype: pl.DataType | None = None, where: pl.Expr | None = None
) -> AggFn:
    """A plain Python function over the list of a window's non-null values of a column: the
    easy, slow path (each pane keeps its values; ``fn`` runs once per window result, and not
    for a window with no non-null value, whose result is null). A call that raises gives a null
    result and a dead letter naming the function. Give ``dtype`` when the results' type matters
    or may vary (integers and floats mixed come out as floats).

    Examples
    --------
    >>> import statistics
    >>> import rheon as rh
    >>> rows = [{"k": 1, "ts": t, "v": v} for t, v in enumerate([3, 1, 4, 1, 5])]
    >>> flow = rh.Flow("f"); out = rh.io.Collect()
    >>> flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s")).agg(
    ...     mode=rh.agg_fn(statistics.mode, "v"), kinds=rh.agg_fn(lambda vs: len(set(vs)), "v")).sink(out)
    >>> flow.run(); out.rows[0]["mode"], out.rows[0]["kinds"]
    (1, 4)
    """
    if not callable(fn):
        msg = f"rh.agg_fn: expected a function of a list of values (got {fn!r}). Try rh.agg_fn(statistics.mode, 'v')."
        raise FlowError(msg)
    return AggFn(_column("agg_fn", column), fn=fn, dtype=dtype, where=where)
