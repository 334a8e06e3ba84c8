"""The columns of a stream, each with the type it had when first seen.

Records of one stream may arrive with their fields in any order, missing or extra, and (from
sources that do not fix types, or from user functions) with a field's type changing between
batches. Whatever buffers records across batches cannot concatenate such frames as they come:
Polars needs the same columns in the same order, and a relaxed concat would turn ``1`` into
``"1"`` or merge the keys ``1`` and ``"1"``. `ColumnTypes` keeps columns in one order, each with
the type it first had; a later value is kept only if it is that type's value exactly (an integer
for a float column, an in-range integer for a narrower one, a list of nulls for any list), and a
record with a value that does not fit goes to the dead letters with the field, the value and the
type in the reason.

Sources' batches pass through one (all their columns: the runtime's), and so do the columns a
window reads (its own: a union of streams, or a user function, may still drift).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import polars as pl

from rheon.core.frames import pick

log = logging.getLogger(__name__)

__all__ = ["ColumnTypes"]


def _dtype(dtype: Any) -> pl.DataType:
    return dtype() if isinstance(dtype, type) else dtype  # type: ignore[no-any-return]


def _widens(got: pl.DataType, known: pl.DataType) -> bool:
    """Whether ``got`` is ``known`` with some parts still ``Null`` (``[]`` for a list of ints):
    casting then changes no value."""
    if got == known or got == pl.Null:
        return True
    if isinstance(got, pl.List) and isinstance(known, pl.List):
        return _widens(_dtype(got.inner), _dtype(known.inner))
    if isinstance(got, pl.Struct) and isinstance(known, pl.Struct):
        theirs = {f.name: _dtype(f.dtype) for f in known.fields}
        ours = [(f.name, _dtype(f.dtype)) for f in got.fields]
        return [n for n, _ in ours] == list(theirs) and all(_widens(t, theirs[n]) for n, t in ours)
    return False


def _same_kind(got: pl.DataType, known: pl.DataType) -> bool:
    """Whether values of ``got`` may be kept as ``known`` when they survive the cast unchanged."""
    if got.is_integer() and known.is_numeric():  # 3 is an int or a float; never text
        return True
    if got.is_float() and (known.is_float() or known.is_integer()):  # 3.0 for an int is checked exact
        return True
    if isinstance(got, pl.Datetime) and isinstance(known, pl.Datetime):
        return got.time_zone == known.time_zone
    return False


def _has_null(dtype: pl.DataType) -> bool:
    if dtype == pl.Null:
        return True
    if isinstance(dtype, pl.List | pl.Array):
        return _has_null(_dtype(dtype.inner))
    if isinstance(dtype, pl.Struct):
        return any(_has_null(_dtype(f.dtype)) for f in dtype.fields)
    return False


def _common_type(dtypes: list[pl.DataType]) -> pl.DataType | None:
    """One type for a column over frames meant to be one: theirs where they agree (parts still
    ``Null`` aside), Float64 for ints and floats, else the first's (the others' values are then
    checked against it)."""
    settled = [d for d in dtypes if not _has_null(d)]
    if not settled:
        return None
    if all(d == settled[0] for d in settled):
        return settled[0]
    if all(d.is_numeric() for d in settled) and any(d.is_float() for d in settled):
        return pl.Float64()
    return settled[0]


class ColumnTypes:
    """Keep columns in one order with the types they first had; find the records that differ.

    ``columns`` names the columns to keep (others are left out); ``None`` keeps every column, in
    the order first seen, new ones after the known ones (``passthrough`` columns are kept as they
    are, at the end; ``untyped`` columns keep their place but not a type). A missing column is a
    null column. A type is fixed by the first batch in
    which the column has one without ``Null`` in it (a column seen only as nulls, or lists seen
    only empty, fixes nothing yet); until then ``defaults`` gives the type to read it as, if any.

    Examples
    --------
    >>> types = ColumnTypes(["k", "v"], where="window 'w'")
    >>> frame, bad, reasons = types.conform(pl.DataFrame({"v": [1, 2], "k": ["a", "b"], "x": [0, 0]}))
    >>> frame.columns, bad
    (['k', 'v'], None)
    >>> frame, bad, reasons = types.conform(pl.DataFrame({"k": ["c", "d"], "v": [3.0, 3.5]}))
    >>> frame.rows(), reasons  # 3.0 is the integer 3
    ([('c', 3)], ["window 'w': field 'v' is 3.5 (Float64), but this stream has had it as Int64 so far; a field must keep its type. Try schema= on the source, or cast the column"])

    Every column, as a source's batches:

    >>> stream = ColumnTypes(None, where="source 's'")
    >>> stream.conform(pl.DataFrame({"b": [1], "a": ["x"]}))[0].columns
    ['b', 'a']
    >>> stream.conform(pl.DataFrame({"a": ["y"], "c": [[]]}))[0].rows()
    [(None, 'y', [])]
    """

    def __init__(
        self,
        columns: Sequence[str] | None,
        where: str,
        defaults: Mapping[str, pl.DataType] | None = None,
        passthrough: Collection[str] = (),
        untyped: Collection[str] = (),
    ) -> None:
        self.open = columns is None
        self.columns = list(dict.fromkeys(columns or []))
        self.where = where
        self.defaults = dict(defaults or {})
        self.passthrough = set(passthrough)
        self.untyped = set(untyped)
        self.types: dict[str, pl.DataType] = {}
        self.missing: set[str] = set()  # absent fields already warned about

    @classmethod
    def over(cls, frames: Sequence[pl.DataFrame], where: str, passthrough: Collection[str] = ()) -> ColumnTypes:
        """The columns of ``frames`` (meant to become one frame) with one type each: theirs where
        they agree, Float64 for ints and floats, else the first frame's.

        Examples
        --------
        >>> frames = [pl.DataFrame({"a": [None]}), pl.DataFrame({"a": [1], "b": [[]]}), pl.DataFrame({"a": [2.5]})]
        >>> types = ColumnTypes.over(frames, where="batch")
        >>> pl.concat([types.conform(f)[0] for f in frames], how="diagonal").rows()
        [(None, None), (1.0, []), (2.5, None)]
        """
        names = list(dict.fromkeys(c for f in frames for c in f.columns if c not in passthrough))
        types = cls(names, where=where, passthrough=passthrough)
        for name in names:
            common = _common_type([f.schema[name] for f in frames if name in f.schema])
            if common is not None:
                types.types[name] = common
            else:  # nulls everywhere: keep the first frame's shape of it (a list of nulls...)
                types.defaults[name] = next(f.schema[name] for f in frames if name in f.schema)
        return types

    def conform(self, frame: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series | None, list[str]]:
        """``frame``'s columns in order and typed, and the rows that did not fit.

        Returns the rows that fit, a mask of the rows of ``frame`` that did not (``None`` when all
        fit) and one reason per such row.
        """
        schema = frame.schema
        if self.open:
            known = set(self.columns)
            self.columns += [c for c in schema if c not in known and c not in self.passthrough]
        extra = [c for c in schema if c in self.passthrough]
        for name in self.columns:
            dtype = schema.get(name)
            if name not in self.types and dtype is not None and not _has_null(dtype) and name not in self.untyped:
                self.types[name] = dtype
        if all((c in self.types and schema.get(c) == self.types[c]) or c in self.untyped for c in self.columns):
            return pick(frame, [*self.columns, *extra]), None, []
        exprs: list[pl.Expr] = []
        bad = pl.Series([False] * frame.height)
        reasons: list[str | None] = [None] * frame.height
        for name in self.columns:
            known_type = self.types.get(name, self.defaults.get(name))
            got = schema.get(name)
            if got is None or got == pl.Null:  # a missing field is a null, as in SQL
                if got is None and name not in self.types and not self.open and name not in self.missing:
                    self.missing.add(name)
                    log.warning(
                        "missing_field operator=%r field=%r columns=%r "
                        "(read as null until a record has it; check the name if none ever does)",
                        self.where, name, [c for c in frame.columns if not c.startswith("__")],
                    )  # fmt: skip
                exprs.append(pl.lit(None, known_type if known_type is not None else pl.Null()).alias(name))
                continue
            if known_type is None or got == known_type or name in self.untyped:
                continue
            if _widens(got, known_type):
                exprs.append(pl.col(name).cast(known_type))
                continue
            values = frame.get_column(name)
            if _same_kind(got, known_type):
                cast = values.cast(known_type, strict=False)
                fits = values.is_null() | (cast.is_not_null() & _round_trips(values, cast))
            else:
                cast, fits = pl.Series(name, [None] * len(values), known_type), values.is_null()
            for i in (~fits & ~bad).arg_true().to_list():
                reasons[i] = self._reason(name, values[i], got, known_type)
            bad = bad | ~fits
            exprs.append(pl.lit(cast.cast(known_type)).alias(name))
        good = frame.with_columns(exprs).select(*self.columns, *extra)
        if not bad.any():
            return good, None, []
        return good.filter(~bad), bad, [r for r in reasons if r is not None]

    def _reason(self, name: str, value: Any, got: pl.DataType, known: pl.DataType) -> str:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else f"{shown[:57]}..."
        return (
            f"{self.where}: field {name!r} is {shown} ({got}), but this stream has had it as {known} so far; "
            "a field must keep its type. Try schema= on the source, or cast the column"
        )

    def snapshot(self) -> dict[str, Any]:
        """The columns and fixed types, for a checkpoint."""
        return {"columns": list(self.columns), "types": dict(self.types)}

    def restore(self, saved: Mapping[str, Any] | None) -> None:
        """Load what :meth:`snapshot` saved."""
        if saved is None:
            return
        if self.open:
            self.columns = list(saved.get("columns", []))
        self.types = dict(saved.get("types", {}))


def _round_trips(values: pl.Series, cast: pl.Series) -> pl.Series:
    """Whether each value, cast, comes back unchanged (``2.5`` into an Int64 does not)."""
    back = cast.cast(values.dtype, strict=False)
    same = back == values
    if values.dtype.is_float():
        same = same | (values.is_nan() & back.is_nan())
    return same.fill_null(False)
