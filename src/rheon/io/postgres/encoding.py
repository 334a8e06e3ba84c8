"""Polars to PostgreSQL: column types for ``create=True`` and the CSV that ``COPY`` reads."""

from __future__ import annotations

import io
import re

import polars as pl

__all__ = ["copy_csv", "redact", "sql_type"]

_SQL_TYPES: dict[type[pl.DataType], str] = {
    dtype: name
    for name, dtypes in (
        ("smallint", (pl.Int8, pl.Int16, pl.UInt8)), ("integer", (pl.Int32, pl.UInt16)), ("bigint", (pl.Int64, pl.UInt32)),
        ("numeric(20,0)", (pl.UInt64,)), ("real", (pl.Float32,)), ("double precision", (pl.Float64,)),
        ("boolean", (pl.Boolean,)), ("text", (pl.String, pl.Categorical, pl.Enum)), ("date", (pl.Date,)),
        ("time", (pl.Time,)), ("interval", (pl.Duration,)), ("bytea", (pl.Binary,)),
    )
    for dtype in dtypes
}  # fmt: skip


def sql_type(dtype: pl.DataType) -> str:
    """The column type ``create=True`` gives a Polars type.

    Integers map to the smallest of ``smallint``/``integer``/``bigint`` that holds them (UInt64
    to ``numeric(20,0)``), Float32/Float64 to ``real``/``double precision``, String, Categorical
    and Enum to ``text``, Boolean to ``boolean``, Datetime with a time zone to ``timestamptz`` and
    without to ``timestamp``, Date/Time/Duration to ``date``/``time``/``interval``, Decimal to
    ``numeric(p,s)``, Binary to ``bytea``, List/Array/Struct to ``jsonb``; anything else to
    ``text`` (its string form).

    Examples
    --------
    >>> import polars as pl
    >>> [sql_type(t) for t in (pl.Int64(), pl.Datetime("us", "UTC"), pl.List(pl.Int64()), pl.Decimal(10, 2))]
    ['bigint', 'timestamptz', 'jsonb', 'numeric(10,2)']
    """
    if isinstance(dtype, pl.Datetime):
        return "timestamptz" if dtype.time_zone else "timestamp"
    if isinstance(dtype, pl.Decimal):
        return f"numeric({dtype.precision},{dtype.scale})" if dtype.precision else "numeric"
    if isinstance(dtype, pl.List | pl.Array | pl.Struct):
        return "jsonb"
    return _SQL_TYPES.get(type(dtype), "text")


def copy_csv(frame: pl.DataFrame) -> bytes:
    r"""Encode rows as CSV that ``COPY ... (FORMAT csv)`` reads: NULL as an empty unquoted field,
    every other non-numeric value quoted.

    Quoting every text value (not only those plain CSV needs quoted) keeps any value from being
    read as COPY syntax: ``\.`` alone on a line is COPY's end-of-data marker, which silently ended
    a single-column batch, while a quoted ``"\."`` is data. A quoted ``""`` is the empty string.

    Examples
    --------
    >>> copy_csv(pl.DataFrame({"s": ["a", "\\.", "", None], "n": [1, 2, None, 4]}))
    b'"a",1\n"\\.",2\n"",\n,4\n'
    """
    fixes = []
    for name, dtype in frame.schema.items():
        col = pl.col(name)
        if isinstance(dtype, pl.Duration):
            fixes.append((col.dt.total_microseconds().cast(pl.String) + " microseconds").alias(name))
        elif isinstance(dtype, pl.Binary):
            fixes.append(pl.concat_str([pl.lit("\\x"), col.bin.encode("hex")]).alias(name))
        elif isinstance(dtype, pl.List | pl.Array | pl.Struct):
            as_json = pl.struct(col.alias("v")).struct.json_encode().str.slice(5).str.head(-1)  # {"v":...}
            fixes.append(pl.when(col.is_not_null()).then(as_json).alias(name))
        elif isinstance(dtype, pl.Object):
            fixes.append(col.map_elements(str, return_dtype=pl.String).alias(name))
    buf = io.BytesIO()
    (frame.with_columns(fixes) if fixes else frame).write_csv(buf, include_header=False, quote_style="non_numeric")
    return buf.getvalue()


def redact(dsn: str) -> str:
    """A DSN with its password hidden, for messages."""
    return re.sub(r"(password=)\S+", r"\1***", re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn))
