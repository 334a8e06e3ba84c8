"""Event-time columns: which types are accepted and how they map to integer ticks.

An event-time column is either an integer column of epoch milliseconds or a Polars ``Datetime``
(any unit, any time zone). Internally time is an int64 count of *ticks*: milliseconds for
integer columns, the Datetime's own unit otherwise. Window bounds are cast back to the column's
type, so users see the type they gave.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from rheon.core.errors import FlowError

__all__ = ["TimeType", "time_type_of"]

_TICKS_PER_MS = {"ms": 1, "us": 1_000, "ns": 1_000_000}


@dataclass(frozen=True, slots=True)
class TimeType:
    """How an event-time column is stored.

    Examples
    --------
    >>> t = time_type_of(pl.Datetime("us", "UTC"), column="ts", where="source 'x'")
    >>> t.ticks_per_ms, t.ticks(1500)
    (1000, 1500000)
    """

    dtype: pl.DataType
    ticks_per_ms: int

    def ticks(self, ms: int) -> int:
        """Convert a duration in milliseconds to ticks."""
        return ms * self.ticks_per_ms

    def to_ticks(self, expr: pl.Expr) -> pl.Expr:
        """An expression giving the column as int64 ticks."""
        return expr.cast(pl.Int64)

    def from_ticks(self, expr: pl.Expr) -> pl.Expr:
        """An expression turning int64 ticks back into the column's type."""
        return expr.cast(self.dtype)

    def to_ms(self, ticks: int) -> int:
        """Convert ticks to epoch milliseconds (for metrics and display)."""
        return ticks // self.ticks_per_ms


def time_type_of(dtype: pl.DataType, *, column: str, where: str) -> TimeType:
    """Check that ``dtype`` can hold event time and describe it.

    Examples
    --------
    >>> time_type_of(pl.Int64(), column="ts", where="source 's'").dtype
    Int64
    >>> time_type_of(pl.Float64(), column="ts", where="source 's'").dtype  # whole milliseconds only
    Int64
    >>> time_type_of(pl.String(), column="ts", where="source 's'")
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: source 's': time column 'ts' has type String; expected int64 epoch milliseconds or a Datetime. Parse it with an expression: time=rh.col('ts').str.to_datetime().
    """
    if isinstance(dtype, pl.Datetime):
        return TimeType(dtype, _TICKS_PER_MS[dtype.time_unit or "us"])
    if dtype.is_integer() or dtype.is_float():  # a float is read as whole milliseconds (1.5 is refused)
        return TimeType(pl.Int64(), 1)
    msg = (
        f"{where}: time column '{column}' has type {dtype}; expected int64 epoch milliseconds "
        f"or a Datetime. Parse it with an expression: time=rh.col('{column}').str.to_datetime()."
    )
    raise FlowError(msg)
