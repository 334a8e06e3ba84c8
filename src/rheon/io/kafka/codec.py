"""Turning message payloads into rows, and rows into payloads.

JSON payloads are parsed per batch by Polars (the values joined into one NDJSON buffer), not per
message in Python. Only when that fails, or would change a value (a number read into a text column,
``1.7`` into an integer one), are the messages parsed one by one, so that the ones that do not fit go
to the dead-letter output with their raw bytes while the rest of the batch is decoded as usual.
`JsonDecoder` states the typing rules.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import polars as pl

from rheon.core.errors import FlowError

__all__ = ["Decoder", "JsonDecoder", "decoder_for", "encode_json"]

Decoded = tuple[pl.DataFrame, list[int], list[tuple[int, str]]]
"""Rows, the index of the message each row came from, and ``(message index, reason)`` failures."""

Decoder = Callable[[Sequence[bytes | None]], Decoded]

_FAILED = (pl.exceptions.PolarsError, pl.exceptions.PanicException, ValueError, TypeError)
"""What Polars raises on input it cannot read (a panic is a BaseException: caught, never fatal)."""

_INT_BITS = [
    (pl.Int8, 8, True), (pl.Int16, 16, True), (pl.Int32, 32, True), (pl.Int64, 64, True), (pl.Int128, 128, True),
    (pl.UInt8, 8, False), (pl.UInt16, 16, False), (pl.UInt32, 32, False), (pl.UInt64, 64, False),
]  # fmt: skip


def _raw(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", errors="replace")


def _dtype(dtype: Any) -> pl.DataType:
    """An instance for a type given as a class (``pl.List(pl.Int64).inner`` is the class ``Int64``)."""
    return dtype() if isinstance(dtype, type) else dtype  # type: ignore[no-any-return]


def _parts(dtype: pl.DataType) -> list[pl.DataType]:
    if isinstance(dtype, pl.List | pl.Array):
        return [_dtype(dtype.inner)]
    if isinstance(dtype, pl.Struct):
        return [_dtype(f.dtype) for f in dtype.fields]
    return []


def _contains(dtype: pl.DataType, kind: Any) -> bool:
    """Whether ``dtype`` is ``kind`` or holds it somewhere inside (a list's items, a struct's fields)."""
    return dtype == kind or any(_contains(part, kind) for part in _parts(dtype))


def _reading(dtype: pl.DataType) -> pl.DataType:
    """The type to have Polars' JSON reader read a ``dtype`` column as, so that it refuses what does not fit.

    Text is read as Categorical, which refuses numbers and booleans where String would turn them into
    text; the integer and time types the reader cannot build (it panics) are read as Int64, decimals as
    text, and then cast to ``dtype`` strictly (an overflow is an error, not a wrap).
    """
    if dtype == pl.String:
        return pl.Categorical()
    if isinstance(dtype, pl.List | pl.Array):
        return pl.List(_reading(_dtype(dtype.inner)))
    if isinstance(dtype, pl.Struct):
        return pl.Struct({f.name: _reading(_dtype(f.dtype)) for f in dtype.fields})
    if dtype in (pl.Int8, pl.Int16, pl.UInt8, pl.UInt16, pl.Time) or isinstance(dtype, pl.Duration):
        return pl.Int64()
    if isinstance(dtype, pl.Decimal):
        return pl.String()
    return dtype


def _read(ndjson: bytes, schema: pl.Schema) -> pl.DataFrame:
    """Read NDJSON into exactly ``schema``; raises (one of ``_FAILED``) when a value does not fit it."""
    frame = pl.read_ndjson(ndjson, schema={name: _reading(dtype) for name, dtype in schema.items()})
    return frame.cast(schema, strict=True)


def _infer(values: Iterable[Any]) -> pl.DataType | None:
    """The type Polars' JSON reader gives these values (None if it cannot give them one)."""
    try:
        frame = pl.read_ndjson(b"\n".join(json.dumps({"v": v}).encode() for v in values), infer_schema_length=None)
    except _FAILED:
        return None
    return frame.schema.get("v")


def _kind(value: Any) -> str:
    """The JSON kind of a parsed value, as reasons name it."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def _json_kind(value: Any) -> str:
    """As `_kind`, but integers and floats are one kind: numbers."""
    return "a number" if isinstance(value, int | float) and not isinstance(value, bool) else _kind(value)


def _fits(value: Any, dtype: pl.DataType, *, open_structs: bool) -> bool:
    """Whether a parsed JSON value becomes a ``dtype`` value unchanged (ints do become floats).

    ``open_structs``: an object may have keys its struct type lacks (they are left out, as with a
    schema's top-level fields); otherwise such an object does not fit.
    """
    if value is None:
        return True
    if isinstance(value, bool) or dtype == pl.Boolean:
        return isinstance(value, bool) and dtype == pl.Boolean
    if dtype.is_integer():
        if not isinstance(value, int):
            return False
        size = next(((b, s) for t, b, s in _INT_BITS if dtype == t), None)
        if size is not None:
            bits, signed = size
            low, high = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
            return low <= value < high
    elif dtype.is_float():
        return isinstance(value, int | float)
    elif dtype == pl.String:
        return isinstance(value, str)
    elif isinstance(dtype, pl.List | pl.Array):
        if not isinstance(value, list) or (isinstance(dtype, pl.Array) and len(value) != dtype.size):
            return False
        inner = _dtype(dtype.inner)
        return all(_fits(item, inner, open_structs=open_structs) for item in value)
    elif isinstance(dtype, pl.Struct):
        fields = {f.name: _dtype(f.dtype) for f in dtype.fields}
        if not isinstance(value, dict) or (not open_structs and not value.keys() <= fields.keys()):
            return False
        return all(_fits(value.get(name), t, open_structs=open_structs) for name, t in fields.items())
    elif dtype == pl.Null:
        return False
    try:  # dates, times, decimals, categories…: ask Polars' reader, as the per-batch path does
        _read(json.dumps({"v": value}).encode(), pl.Schema({"v": dtype}))
    except _FAILED:
        return False
    return True


def _covers(known: pl.DataType, got: pl.DataType) -> bool:
    """False when ``got`` (a type Polars inferred) has struct fields that ``known`` lacks."""
    if isinstance(known, pl.Struct) and isinstance(got, pl.Struct):
        fields = {f.name: _dtype(f.dtype) for f in known.fields}
        return all(f.name in fields and _covers(fields[f.name], _dtype(f.dtype)) for f in got.fields)
    if isinstance(known, pl.List | pl.Array) and isinstance(got, pl.List | pl.Array):
        return _covers(_dtype(known.inner), _dtype(got.inner))
    return True


def _first_type(values: list[Any]) -> pl.DataType:
    """A new field's type: what Polars infers for the batch's values of the same JSON kind as the first.

    So ints and floats make Float64, but a string after numbers does not make the field text. If that
    type would change the first value (Polars joins ``[1]`` and ``["a"]`` into a list of text), the first
    value's own type wins.
    """
    for value in values[:3]:  # a value no type can hold (e.g. a list of numbers and objects) gives way
        kind = _json_kind(value)
        dtype = _infer(v for v in values if _json_kind(v) == kind)
        if dtype is not None and _fits(value, dtype, open_structs=False):
            return dtype
        if (dtype := _infer([value])) is not None:
            return dtype
    return pl.Null()


def _show(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _not_json(constant: str) -> Any:
    msg = f"{constant} is not a JSON number"
    raise ValueError(msg)


class JsonDecoder:
    """Decode JSON objects into rows whose column types stay the same from batch to batch.

    With ``schema``, the columns are the schema's, and a message whose value for one of them does not
    fit its type exactly is a dead letter: ``1.7`` or ``"3"`` for an Int64, ``"x"`` or ``true`` for a
    Float64, ``3`` for a String, ``300`` for an Int8 (ints for a Float64 are fine, as is a missing
    field or ``null``). Fields the schema does not name are left out.

    Without a schema, each field keeps the type it first had at this source: the first batch that
    carries a non-null value for a field fixes its type (Polars' inference over that batch's values of
    the same JSON kind as the first one, so ints and floats make Float64), and from then on a message
    whose value does not fit that type exactly is a dead letter, as with a schema: a ``"five"`` among
    numbers, ``[1]`` where the field was ``3``, ``2.5`` where it was an Int64, an object with a key its
    struct did not have. So a window's ``sum`` over the field never meets text. A field seen only as
    ``null`` (or ``[]``, ``{}``) is not fixed yet; a new field is a new column; a known field a batch lacks is
    a null column. Each source instance learns on its own and again after a restart: give ``schema=``
    where that matters.

    The whole batch is read by Polars at once; only when that fails, or would change a value, are the
    messages checked one by one and the bad ones reported, with the reason naming the field and the
    value.

    Examples
    --------
    >>> decode = JsonDecoder(None)
    >>> frame, index, bad = decode([b'{"v": 3}', b'{"v": "five"}', b'{"v": [1]}', b'{"v": 4}'])
    >>> frame["v"].to_list(), index
    ([3, 4], [0, 3])
    >>> for i, reason in bad:
    ...     print(i, reason.split(",")[0])
    1 field 'v' is "five" (a string)
    2 field 'v' is [1] (a list)
    """

    def __init__(self, schema: pl.Schema | None) -> None:
        self.schema = schema
        self.seen: dict[str, pl.DataType] = {}  # without a schema: the fields' types so far

    def __repr__(self) -> str:
        return f"JsonDecoder(schema={self.schema!r}, seen={pl.Schema(self.seen)!r})"

    def __call__(self, values: Sequence[bytes | None]) -> Decoded:
        frame = self._fast(values)
        if frame is None:
            frame, index, bad = self._slow(values)
        else:
            index, bad = list(range(len(values))), []
        if self.schema is None:
            for name, dtype in frame.schema.items():
                if name not in self.seen and not _contains(dtype, pl.Null) and not _contains(dtype, pl.Struct({})):
                    self.seen[name] = dtype
        return frame, index, bad

    def _fast(self, values: Sequence[bytes | None]) -> pl.DataFrame | None:
        """The whole batch through Polars' reader, or None if any message does not fit."""
        lines = [v for v in values if v and b"\n" not in v]
        if not lines or len(lines) != len(values):
            return None
        ndjson = b"\n".join(lines)
        try:
            if self.schema is not None:
                frame = _read(ndjson, self.schema)
            else:
                inferred = pl.read_ndjson(ndjson, infer_schema_length=None)
                if any(not _covers(self.seen.get(n, t), t) for n, t in inferred.schema.items()):
                    return None
                target = pl.Schema({**self.seen, **{n: self.seen.get(n, t) for n, t in inferred.schema.items()}})
                got = inferred.schema
                if all(target[n] == t and not _contains(t, pl.String) for n, t in got.items()):
                    # Polars converted nothing to get these types: no need to read the batch again.
                    missing = [pl.lit(None, t).alias(n) for n, t in target.items() if n not in got]
                    frame = inferred.with_columns(missing).select(list(target))
                else:
                    frame = _read(ndjson, target)  # refuses text from numbers, floats into ints, ...
        except _FAILED:
            return None
        return frame if frame.height == len(values) else None

    def _slow(self, values: Sequence[bytes | None]) -> Decoded:
        """Parse the messages one by one; those that do not fit the types go to the dead letters."""
        rows: list[dict[str, Any]] = []
        index: list[int] = []
        bad: list[tuple[int, str]] = []
        for i, value in enumerate(values):
            if value is None:
                bad.append((i, "message has no value (a tombstone)"))
                continue
            try:
                parsed = json.loads(value, parse_constant=_not_json)
            except (ValueError, UnicodeDecodeError) as exc:
                bad.append((i, f"invalid JSON: {exc}"))
                continue
            if not isinstance(parsed, dict):
                bad.append((i, f"expected a JSON object, got {type(parsed).__name__}"))
                continue
            rows.append(parsed)
            index.append(i)
        if not rows:
            return pl.DataFrame(), index, bad
        target = self.schema if self.schema is not None else self._types(rows)
        good: list[dict[str, Any]] = []
        kept: list[int] = []
        for row, i in zip(rows, index, strict=True):
            reason = self._misfit(row, target)
            if reason is None:
                good.append(row)
                kept.append(i)
            else:
                bad.append((i, reason))
        frame, kept = self._build(good, kept, target, bad)
        bad.sort()
        return frame, kept, bad

    def _types(self, rows: list[dict[str, Any]]) -> pl.Schema:
        """The known fields' types, and those of the fields new in this batch (`_first_type`)."""
        new: dict[str, list[Any]] = {}
        for row in rows:
            for name, value in row.items():
                if name not in self.seen:
                    new.setdefault(name, [])
                    if value is not None:
                        new[name].append(value)
        return pl.Schema({**self.seen, **{name: _first_type(found) for name, found in new.items()}})

    def _misfit(self, row: dict[str, Any], target: pl.Schema) -> str | None:
        for name, dtype in target.items():
            value = row.get(name)
            if _fits(value, dtype, open_structs=self.schema is not None):
                continue
            got = f"field {name!r} is {_show(value)} ({_kind(value)})"
            if self.schema is not None:
                return f"does not fit the schema: {got}, expected {dtype}"
            return (
                f"{got}, but this source has read it as {dtype} so far (a field keeps the type it first had). "
                f"Try schema= on the source to set the types"
            )
        return None

    def _build(
        self, rows: list[dict[str, Any]], index: list[int], target: pl.Schema, bad: list[tuple[int, str]]
    ) -> tuple[pl.DataFrame, list[int]]:
        """The frame of rows checked to fit ``target``; one that Polars still refuses is a dead letter."""
        if not rows:
            return pl.DataFrame(schema=target), []
        lines = [json.dumps(row).encode() for row in rows]
        try:
            return _read(b"\n".join(lines), target), index
        except _FAILED:
            pass
        frames: list[pl.DataFrame] = []
        kept: list[int] = []
        for line, i in zip(lines, index, strict=True):
            try:
                frames.append(_read(line, target))
            except _FAILED as exc:
                what = "the schema" if self.schema is not None else "the types seen so far"
                bad.append((i, f"does not fit {what}: {str(exc).splitlines()[0]}"))
                continue
            kept.append(i)
        return (pl.concat(frames) if frames else pl.DataFrame(schema=target)), kept


def _bytes(values: Sequence[bytes | None]) -> Decoded:
    return pl.DataFrame({"value": pl.Series(list(values), dtype=pl.Binary)}), list(range(len(values))), []


def _custom(fn: Callable[[bytes], Any], values: Sequence[bytes | None]) -> Decoded:
    rows: list[dict[str, Any]] = []
    index: list[int] = []
    bad: list[tuple[int, str]] = []
    for i, value in enumerate(values):
        try:
            out = fn(value)  # type: ignore[arg-type]
        except Exception as exc:
            bad.append((i, f"decoder failed: {type(exc).__name__}: {exc}"))
            continue
        for row in out if isinstance(out, list) else ([out] if out is not None else []):
            if not isinstance(row, dict):
                bad.append((i, f"decoder returned a {type(row).__name__}, expected a dict"))
                continue
            rows.append(row)
            index.append(i)
    return (pl.from_dicts(rows, infer_schema_length=None) if rows else pl.DataFrame()), index, bad


def decoder_for(fmt: str | Callable[[bytes], Any], schema: pl.Schema | None, where: str) -> Decoder:
    """The decoder for ``format=``: ``"json"`` (see `JsonDecoder`), ``"bytes"`` or a function of the payload.

    Make one per source instance: a JSON decoder remembers the types it has seen.
    """
    if callable(fmt):
        return lambda values: _custom(fmt, values)
    if fmt == "json":
        return JsonDecoder(schema)
    if fmt == "bytes":
        return _bytes
    msg = f"{where}: format must be 'json', 'bytes' or a function bytes -> dict (got {fmt!r})"
    raise FlowError(msg)


def raw_payload(value: bytes | None) -> str:
    """A message's payload as text, for dead letters."""
    return _raw(value)


def encode_json(frame: pl.DataFrame) -> list[bytes]:
    """One JSON object per row (Polars' own writer: vectorized)."""
    if frame.height == 0:
        return []
    text = frame.write_ndjson()
    return [line.encode() for line in text.splitlines()]
