"""Which rows of a batch fit the table's columns, so that no value is silently changed on its way in.

PostgreSQL reads every value ``COPY`` sends as text and converts it to the column's type, so it
would take ``"yes"`` as ``true``, ``"3"`` as the number 3 and ``7`` as the text ``'7'``, and a
``jsonb`` column would take a number where objects went so far. :class:`ColumnFit` checks each
column's Polars type against the column's SQL type first; a row with a value that does not fit
goes to the dead letters with the field, the value and the type wanted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import polars as pl

from rheon.core.deadletters import payload_of

__all__ = ["ColumnFit", "kind_of"]

_NUMBERS = frozenset({"integer", "float", "decimal"})
_JSON = frozenset({"object", "array", "string", "boolean"}) | _NUMBERS
_ACCEPTS: dict[str, frozenset[str]] = {
    "smallint": frozenset({"integer"}),
    "integer": frozenset({"integer"}),
    "bigint": frozenset({"integer"}),
    "numeric": _NUMBERS,
    "real": _NUMBERS,
    "double precision": _NUMBERS,
    "text": frozenset({"string", "other"}),
    "character varying": frozenset({"string"}),
    "character": frozenset({"string"}),
    "boolean": frozenset({"boolean"}),
    "timestamp with time zone": frozenset({"datetime with time zone"}),
    "timestamp without time zone": frozenset({"datetime"}),
    "date": frozenset({"date"}),
    "time without time zone": frozenset({"time"}),
    "interval": frozenset({"duration"}),
    "bytea": frozenset({"binary"}),
    "json": _JSON,
    "jsonb": _JSON,
}
_JSON_GROUP = {"object": "objects", "array": "arrays", "string": "JSON text", "boolean": "booleans"}
_SHOW = 80  # characters of a value shown in a reason


def kind_of(dtype: pl.DataType) -> str | None:
    """The kind of value a Polars type holds, as far as a column type cares; ``None`` for Null.

    Examples
    --------
    >>> [kind_of(t) for t in (pl.Int32(), pl.Categorical(), pl.Datetime("us", "UTC"), pl.List(pl.Int64()), pl.Null())]
    ['integer', 'string', 'datetime with time zone', 'array', None]
    """
    if isinstance(dtype, pl.Null):
        return None
    if dtype.is_integer():
        return "integer"
    if dtype.is_float():
        return "float"
    if isinstance(dtype, pl.Decimal):
        return "decimal"
    if isinstance(dtype, pl.String | pl.Categorical | pl.Enum):
        return "string"
    if isinstance(dtype, pl.Datetime):
        return "datetime with time zone" if dtype.time_zone else "datetime"
    if isinstance(dtype, pl.Struct):
        return "object"
    if isinstance(dtype, pl.List | pl.Array):
        return "array"
    simple = {pl.Boolean: "boolean", pl.Date: "date", pl.Time: "time", pl.Duration: "duration", pl.Binary: "binary"}
    return simple.get(type(dtype), "other")


def _base(sql_type: str) -> str:
    """``'numeric(10,2)'`` -> ``'numeric'``, ``'timestamp(3) with time zone'`` -> ``'timestamp with time zone'``."""
    return re.sub(r"\s*\([\d,\s]*\)", "", sql_type).strip()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOW else text[: _SHOW - 3] + "..."


class ColumnFit:
    """Split a batch into the rows whose values fit the table's columns and dead letters.

    A value fits a column when the column's type takes values of its kind as they are: integers
    for integer columns; integers, floats and decimals for ``numeric``/``real``/``double
    precision``; strings for text types, and only strings (PostgreSQL would read ``"yes"`` as a
    boolean and ``7`` as text); Boolean for ``boolean``; Datetime with a time zone for
    ``timestamptz`` and without for ``timestamp``; and so on. A ``json``/``jsonb`` column keeps
    the kind it first held (objects, arrays, numbers, JSON text or booleans): a number where
    objects went so far is a dead letter, as an object next to an array would be. Strings with a
    NUL character, which PostgreSQL text cannot hold, are dead letters too. Columns of other SQL
    types (``uuid``, arrays, enums, ...) are left to the server, whose rejections also become
    dead letters. Nulls fit any column.

    Parameters
    ----------
    table
        The table's name, for reasons.
    where
        The sink, for reasons (``"sink 'out'"``).
    kinds
        The kinds ``json``/``jsonb`` columns have held so far (from :attr:`kinds` of an earlier
        run, restored from a checkpoint).

    Examples
    --------
    >>> fit = ColumnFit("t", "sink 'out'")
    >>> columns = {"id": "bigint", "doc": "jsonb"}
    >>> good, dead = fit.split(pl.DataFrame({"id": [1, 2], "doc": [{"a": 1}, None]}), columns)
    >>> good.height, dead, fit.kinds
    (2, [], {'doc': 'objects'})
    >>> good, dead = fit.split(pl.DataFrame({"id": [3, 4], "doc": [1.5, None]}), columns)
    >>> good["id"].to_list(), dead[0][1]
    ([4], '{"id": 3, "doc": 1.5}')
    >>> print(dead[0][0])
    sink 'out': field 'doc' is 1.5 (Float64), but column doc (jsonb) of table t has held objects so far; a field must keep its type. Cast the value, or send it in another column.
    """

    def __init__(self, table: str, where: str, kinds: Mapping[str, str] | None = None) -> None:
        self.table = table
        self.where = where
        self.kinds: dict[str, str] = dict(kinds or {})

    def _reason(self, name: str, value: Any, dtype: pl.DataType, sql_type: str, problem: str) -> str:
        head = f"{self.where}: field {name!r} is {_show(value)} ({dtype})"
        column = f"column {name} ({sql_type}) of table {self.table}"
        if problem == "nul":
            return (
                f"{head}, which holds a NUL character (\\x00) that PostgreSQL text cannot store. Remove it "
                f"before the sink, e.g. rh.col({name!r}).str.replace_all('\\x00', '', literal=True)."
            )
        if problem == "drift":
            return (
                f"{head}, but {column} has held {self.kinds[name]} so far; a field must keep its type. "
                "Cast the value, or send it in another column."
            )
        return (
            f"{head}, which does not fit {column}, and would not be stored as it is. Cast it before the "
            f"sink (e.g. .with_columns(rh.col({name!r}).cast(...))), or change the column's type."
        )

    def split(self, frame: pl.DataFrame, columns: Mapping[str, str]) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
        """The rows of ``frame`` that fit ``columns`` (name -> SQL type), and ``(reason, payload)``
        for each row that does not."""
        checks: list[tuple[str, str, pl.Expr]] = []  # (column, problem, rows with it)
        for name, dtype in frame.schema.items():
            kind = kind_of(dtype)
            sql_type = columns.get(name)
            if kind is None or sql_type is None:
                continue
            base = _base(sql_type)
            accepts = _ACCEPTS.get(base)
            present = pl.col(name).is_not_null()
            if accepts is not None and kind not in accepts:
                checks.append((name, "type", present))
                continue
            if base in ("json", "jsonb"):
                group = "numbers" if kind in _NUMBERS else _JSON_GROUP[kind]
                have = self.kinds.get(name)
                if have is None and frame.get_column(name).null_count() < frame.height:
                    self.kinds[name] = group
                elif have is not None and have != group:
                    checks.append((name, "drift", present))
            if isinstance(dtype, pl.String):
                checks.append((name, "nul", pl.col(name).str.contains("\x00", literal=True).fill_null(False)))
        if not checks:
            return frame, []
        flags = frame.select(*(expr.alias(str(i)) for i, (_, _, expr) in enumerate(checks)))
        bad = flags.select(pl.any_horizontal(pl.all())).to_series()
        if not bad.any():
            return frame, []
        dead = []
        for row in bad.arg_true().to_list():
            i = next(i for i in range(len(checks)) if flags[row, i])
            name, problem, _ = checks[i]
            record = frame.row(row, named=True)
            reason = self._reason(name, record[name], frame.schema[name], columns[name], problem)
            dead.append((reason, payload_of(record)))
        return frame.filter(~bad), dead
