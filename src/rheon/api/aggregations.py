"""Aggregation functions for ``WindowedStream.agg``: ``rh.count()``, ``rh.sum("amount")``, ..."""

from __future__ import annotations

from rheon.core.errors import FlowError
from rheon.operators.aggregations import Count, CountDistinct, Max, Mean, Min, Sum

__all__ = ["count", "count_distinct", "max", "mean", "min", "sum"]


def _column(fn: str, column: object) -> str:
    if not isinstance(column, str) or not column:
        msg = f'rh.{fn}: expected a column name (got {column!r}). Try rh.{fn}("amount").'
        raise FlowError(msg)
    return column


def count(column: str | None = None) -> Count:
    """Count rows, or with a column name, count its non-null values.

    Examples
    --------
    >>> import rheon as rh
    >>> rows = [{"k": 1, "ts": 0, "v": 1}, {"k": 1, "ts": 1, "v": None}]
    >>> flow = rh.Flow("c"); out = rh.io.Collect()
    >>> (flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s"))
    ...      .agg(rows=rh.count(), values=rh.count("v")).sink(out))
    >>> flow.run(); out.rows[0]["rows"], out.rows[0]["values"]
    (2, 1)
    """
    return Count(None if column is None else _column("count", column))


def sum(column: str) -> Sum:
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
    return Sum(_column("sum", column))


def min(column: str) -> Min:
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
    return Min(_column("min", column))


def max(column: str) -> Max:
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
    return Max(_column("max", column))


def mean(column: str) -> Mean:
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
    return Mean(_column("mean", column))


def count_distinct(column: str) -> CountDistinct:
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
    return CountDistinct(_column("count_distinct", column))
