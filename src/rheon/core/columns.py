"""The columns an operator reads, with the types they had when first seen.

Records of one stream may arrive with their fields in any order, with fields missing or extra,
and (from sources that do not fix types, or from user functions) with a field's type changing
between batches. An operator that buffers records across batches (a window) cannot concatenate
such frames as they come: Polars needs the same columns in the same order, and a relaxed concat
would turn ``1`` into ``"1"`` or merge the keys ``1`` and ``"1"``. `ColumnTypes` keeps the
columns the operator needs, in one order, each with the type it first had; a later value is kept
only if it is that type's value exactly (an integer for a float column, an in-range integer for
a narrower one), and a record with a value that does not fit goes to the dead letters with the
field, the value and the type in the reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

log = logging.getLogger(__name__)

__all__ = ["ColumnTypes"]


def _same_kind(got: pl.DataType, known: pl.DataType) -> bool:
    """Whether values of ``got`` may be kept as ``known`` when they survive the cast unchanged."""
    if got.is_integer() and known.is_numeric():  # 3 is an int or a float; never text
        return True
    if got.is_float() and (known.is_float() or known.is_integer()):  # 3.0 for an int is checked exact
        return True
    if isinstance(got, pl.Datetime) and isinstance(known, pl.Datetime):
        return got.time_zone == known.time_zone
    return got == known


class ColumnTypes:
    """Keep ``columns`` in one order with the types they first had; find the records that differ.

    A type is fixed by the first batch in which the column has one other than ``Null`` (a column
    missing from a batch, or seen only as nulls, fixes nothing). Until then ``defaults`` gives the
    type to read it as, if any.

    Examples
    --------
    >>> types = ColumnTypes(["k", "v"], where="window 'w'")
    >>> frame, bad, reasons = types.conform(pl.DataFrame({"v": [1, 2], "k": ["a", "b"], "x": [0, 0]}))
    >>> frame.columns, bad
    (['k', 'v'], None)
    >>> frame, bad, reasons = types.conform(pl.DataFrame({"k": ["c", "d"], "v": [3.0, 3.5]}))
    >>> frame.rows(), reasons  # 3.0 is the integer 3
    ([('c', 3)], ["window 'w': field 'v' is 3.5 (Float64), but this operator has read it as Int64 so far; a field must keep its type. Try schema= on the source, or cast the column"])
    """

    def __init__(self, columns: Sequence[str], where: str, defaults: Mapping[str, pl.DataType] | None = None) -> None:
        self.columns = list(dict.fromkeys(columns))
        self.where = where
        self.defaults = dict(defaults or {})
        self.types: dict[str, pl.DataType] = {}
        self.missing: set[str] = set()  # absent fields already warned about

    def conform(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series | None, list[str]]:
        """``frame``'s columns of interest, in order and typed, and the rows that did not fit.

        Returns the rows that fit (only ``columns``), a mask of the rows of ``frame`` that did not
        (``None`` when all fit) and one reason per such row.
        """
        schema = frame.schema
        for name in self.columns:
            dtype = schema.get(name)
            if name not in self.types and dtype is not None and dtype != pl.Null:
                self.types[name] = dtype
        if all(c in self.types and schema.get(c) == self.types[c] for c in self.columns):
            return frame.select(self.columns), None, []
        exprs: list[pl.Expr] = []
        bad = pl.Series([False] * frame.height)
        reasons: list[str | None] = [None] * frame.height
        for name in self.columns:
            known = self.types.get(name, self.defaults.get(name))
            got = schema.get(name)
            if got is None or got == pl.Null:  # a missing field is a null, as in SQL
                if got is None and name not in self.types and name not in self.missing:
                    self.missing.add(name)
                    log.warning(
                        "missing_field operator=%r field=%r columns=%r "
                        "(read as null until a record has it; check the name if none ever does)",
                        self.where, name, [c for c in frame.columns if not c.startswith("__")],
                    )  # fmt: skip
                exprs.append(pl.lit(None, known if known is not None else pl.Null()).alias(name))
                continue
            if known is None or got == known:
                continue
            values = frame.get_column(name)
            cast = values.cast(known, strict=False) if _same_kind(got, known) else pl.Series([None] * len(values))
            fits = values.is_null() | (cast.is_not_null() & _round_trips(values, cast))
            for i in (~fits & ~bad).arg_true().to_list():
                reasons[i] = self._reason(name, values[i], got, known)
            bad = bad | ~fits
            exprs.append(pl.lit(cast.cast(known)).alias(name))
        good = frame.with_columns(exprs).select(self.columns)
        if not bad.any():
            return good, None, []
        return good.filter(~bad), bad, [r for r in reasons if r is not None]

    def _reason(self, name: str, value: Any, got: pl.DataType, known: pl.DataType) -> str:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else f"{shown[:57]}..."
        return (
            f"{self.where}: field {name!r} is {shown} ({got}), but this operator has read it as {known} so far; "
            "a field must keep its type. Try schema= on the source, or cast the column"
        )

    def snapshot(self) -> dict[str, pl.DataType]:
        """The fixed types, for a checkpoint."""
        return dict(self.types)

    def restore(self, types: Mapping[str, pl.DataType] | None) -> None:
        """Load types saved by :meth:`snapshot`."""
        self.types = dict(types or {})


def _round_trips(values: pl.Series, cast: pl.Series) -> pl.Series:
    """Whether each value, cast, comes back unchanged (``2.5`` into an Int64 does not)."""
    back = cast.cast(values.dtype, strict=False)
    same = back == values
    if values.dtype.is_float():
        same = same | (values.is_nan() & back.is_nan())
    return same.fill_null(False)
