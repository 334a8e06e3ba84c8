"""One JSON decoder for every JSON source (Kafka, MQTT, JSON-lines files, HTTP ingest).

Payloads are parsed per batch by Polars (the values joined into one NDJSON buffer), not per message in
Python. Only when that fails, or would change a value (a number read into a text column, ``1.7`` into
an integer one), are the messages parsed one by one, so that the ones that do not fit go to the
dead-letter output while the rest of the batch is decoded as usual. `JsonDecoder` states the rules.

Before Polars sees a batch, each message is checked against two caps, with C-speed counts for the
messages far within them: ``max_depth`` (levels of nested objects and arrays) and ``max_fields``
(distinct fields, nested ones included). Polars' reader builds nested columns at a cost that grows
steeply with depth (measured with Polars 2.1: 10,000 records nested 16 deep take ~4 s and ~0.5 GB,
32 deep ~16 s and ~2.5 GB, 100 records 64 deep ~3.4 s; 900 deep objects crash the process), and
Python's parser raises ``RecursionError`` past ~1,000 levels: a message over a cap is a dead letter
and never reaches either parser.
"""

from __future__ import annotations

import base64
import io
import json
import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from rheon.core.errors import FlowError

__all__ = [
    "DEFAULT_MAX_DEPTH", "DEFAULT_MAX_FIELDS", "Decoded", "JsonDecoder", "check_limits", "contains", "fits",
    "for_json", "int_range", "json_kind", "kind", "load_types", "oversized", "settled", "show", "types_state",
]  # fmt: skip

DEFAULT_MAX_DEPTH = 16
"""Most levels of nested objects and arrays in one record (``{"a": [1]}`` is 2 deep)."""

DEFAULT_MAX_FIELDS = 1_000
"""Most distinct fields in one record, nested ones included; also, without a schema, most columns a
source learns."""

_MAX_DEPTH_LIMIT = 256  # beyond this, the Python checks below would recurse too deep themselves

Decoded = tuple[pl.DataFrame, list[int], list[tuple[int, str]]]
"""Rows, the index of the message each row came from, and ``(message index, reason)`` failures."""

_FAILED = (pl.exceptions.PolarsError, pl.exceptions.PanicException, ValueError, TypeError)
"""What Polars raises on input it cannot read (a panic is a BaseException: caught, never fatal)."""

_INT_BITS = [
    (pl.Int8, 8, True), (pl.Int16, 16, True), (pl.Int32, 32, True), (pl.Int64, 64, True), (pl.Int128, 128, True),
    (pl.UInt8, 8, False), (pl.UInt16, 16, False), (pl.UInt32, 32, False), (pl.UInt64, 64, False),
]  # fmt: skip

_NOT_STRUCTURE = bytes(c for c in range(256) if c not in b'{}[]"\n')
_OPENS, _NOT_OPENS = bytes.maketrans(b"[", b"{"), bytes(c for c in range(256) if c not in b"{[\n")


def check_limits(where: str, max_depth: int, max_fields: int) -> None:
    """Refuse caps that are not positive integers (or a depth the checks themselves cannot handle).

    Examples
    --------
    >>> check_limits("Kafka", 16, 0)
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: Kafka: max_fields must be a positive integer (got 0)
    """
    if not isinstance(max_depth, int) or isinstance(max_depth, bool) or not 1 <= max_depth <= _MAX_DEPTH_LIMIT:
        msg = f"{where}: max_depth must be an integer from 1 to {_MAX_DEPTH_LIMIT} (got {max_depth!r})"
        raise FlowError(msg)
    if not isinstance(max_fields, int) or isinstance(max_fields, bool) or max_fields < 1:
        msg = f"{where}: max_fields must be a positive integer (got {max_fields!r})"
        raise FlowError(msg)


# -- the caps ----------------------------------------------------------------------------------------


def _lines(values: Sequence[bytes | None]) -> bytes | None:
    """The values joined into NDJSON, one per line; None if one is missing or empty or holds a newline.

    Checked at C speed over the batch, not value by value.
    """
    if not values or not all(values):  # a tombstone (None) or an empty value
        return None
    ndjson = b"\n".join(values)  # type: ignore[arg-type]
    return ndjson if ndjson.count(b"\n") == len(values) - 1 else None  # else a value holds a newline


def _line_starts(a: np.ndarray) -> np.ndarray:
    return np.concatenate(([0], np.flatnonzero(a == 10) + 1))


def _longest_line(buf: bytes) -> int:
    """The length of the longest of the newline-separated lines."""
    return int(np.diff(_line_starts(np.frombuffer(buf, np.uint8)), append=len(buf) + 1).max()) - 1


def _depths(buf: bytes) -> np.ndarray:
    """The deepest nesting of objects and arrays on each of the newline-separated lines.

    Brackets inside strings do not count. On a line that is not valid JSON the figure may be off,
    but only past the point where any JSON parser stops reading.
    """
    if b"\\" in buf:  # escaped backslashes, then escaped quotes: so an escaped quote does not end its string
        buf = buf.replace(b"\\\\", b"").replace(b'\\"', b"")
    small = buf.translate(None, _NOT_STRUCTURE)  # brackets, quotes and newlines only
    if b'"' in small:
        small = small.replace(b'""', b"")  # strings without brackets in them (keeps every quote's parity)
    a = np.frombuffer(small + b"\n", np.uint8)  # each line, even an empty one, ends in a newline
    breaks = np.flatnonzero(a == 10)
    starts = np.concatenate(([0], breaks[:-1] + 1))
    step = (a == 123).view(np.int8) + (a == 91).view(np.int8) - (a == 125).view(np.int8) - (a == 93).view(np.int8)
    if b'"' in small:
        quote = a == 34
        # A line with an odd number of quotes (not JSON) must not put the next ones inside a string:
        # its newline counts as a closing quote.
        odd = np.add.reduceat(quote, starts, dtype=np.int32) & 1
        quote[breaks[odd.astype(bool)]] = True
        step[(np.cumsum(quote, dtype=np.int32) & 1).astype(bool)] = 0  # inside a string
    depth = np.cumsum(step, dtype=np.int32)
    depth_before = np.concatenate(([0], depth[breaks[:-1]]))
    return np.asarray(np.maximum.reduceat(depth, starts) - depth_before)


def _field_count(value: Any, limit: int) -> int:
    """Distinct field paths in a parsed value (a list's items share their list's path); stops past ``limit``."""
    paths: dict[tuple[int, str], int] = {}
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack and len(paths) <= limit:
        node, path = stack.pop()
        if isinstance(node, dict):
            for key, item in node.items():
                child = paths.setdefault((path, key), len(paths) + 1)
                if isinstance(item, dict | list):
                    stack.append((item, child))
        elif isinstance(node, list):
            stack.extend((item, path) for item in node if isinstance(item, dict | list))
    return len(paths)


def oversized(lines: Sequence[bytes] | bytes, max_depth: int, max_fields: int) -> dict[int, str]:
    """The lines over a cap, with the reason: ``{line index: reason}``.

    ``lines`` hold one JSON text each, without newlines (or are given joined by newlines, as one
    ``bytes``). First, at C speed over the whole batch: as long as no line has more opening brackets
    than ``max_depth``, nor more bytes than ``max_fields``, nothing else is done. Otherwise the
    lines' depths are measured (outside strings), and the distinct fields of the lines with more
    colons than ``max_fields``.

    Examples
    --------
    >>> oversized([b'{"a": [[1]]}', b'{"s": "[[[[[[["}', b'{"a": ' + b"[" * 900 + b"]" * 900 + b"}"], 8, 1000)
    {2: 'nested 901 levels deep, more than max_depth=8 (a record this deep would take Polars too long to read)'}
    >>> oversized([b'{"a": 1, "b": {"c": 2, "d": 3}}'], 8, 3)
    {0: 'has more than max_fields=3 distinct fields (nested ones included)'}
    """
    buf = lines if isinstance(lines, bytes) else b"\n".join(lines)
    # Each line's brackets as a run of "{" (all else but newlines gone): a line may be too deep only
    # if some run is longer than max_depth, too wide only if it is longer than max_fields bytes.
    maybe_deep = b"{" * (max_depth + 1) in buf.translate(_OPENS, _NOT_OPENS)
    maybe_wide = len(buf) > max_fields and _longest_line(buf) > max_fields
    found: dict[int, str] = {}
    if maybe_deep:
        depths = _depths(buf)
        for i in np.flatnonzero(depths > max_depth).tolist():
            found[i] = (
                f"nested {depths[i]} levels deep, more than max_depth={max_depth} "
                "(a record this deep would take Polars too long to read)"
            )
    if maybe_wide:
        a = np.frombuffer(buf, np.uint8)
        starts = _line_starts(a)
        ends = np.append(starts[1:] - 1, len(a))
        for i in np.flatnonzero(ends - starts > max_fields).tolist():
            line = buf[starts[i] : ends[i]]
            if i in found or line.count(b":") <= max_fields:
                continue
            try:
                parsed = json.loads(line)  # safe: at most max_depth deep
            except (ValueError, RecursionError):
                continue  # not JSON: reported as such by the decoder
            if _field_count(parsed, max_fields) > max_fields:
                found[i] = f"has more than max_fields={max_fields} distinct fields (nested ones included)"
    return found


# -- types -------------------------------------------------------------------------------------------


def _dtype(dtype: Any) -> pl.DataType:
    """An instance for a type given as a class (``pl.List(pl.Int64).inner`` is the class ``Int64``)."""
    return dtype() if isinstance(dtype, type) else dtype  # type: ignore[no-any-return]


def _parts(dtype: pl.DataType) -> list[pl.DataType]:
    if isinstance(dtype, pl.List | pl.Array):
        return [_dtype(dtype.inner)]
    if isinstance(dtype, pl.Struct):
        return [_dtype(f.dtype) for f in dtype.fields]
    return []


def contains(dtype: pl.DataType, kind: Any) -> bool:
    """Whether ``dtype`` is ``kind`` or holds it somewhere inside (a list's items, a struct's fields).

    Examples
    --------
    >>> contains(pl.List(pl.Struct({"a": pl.String()})), pl.String), contains(pl.Int64(), pl.String)
    (True, False)
    """
    return dtype == kind or any(contains(part, kind) for part in _parts(dtype))


def settled(dtype: pl.DataType) -> bool:
    """Whether a field of this type has its type fixed (not only nulls, ``[]`` or ``{}`` seen so far).

    Examples
    --------
    >>> settled(pl.List(pl.Int64())), settled(pl.List(pl.Null())), settled(pl.Struct({}))
    (True, False, False)
    """
    return not contains(dtype, pl.Null) and not contains(dtype, pl.Struct({}))


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


def kind(value: Any) -> str:
    """The JSON kind of a parsed value, as reasons name it.

    Examples
    --------
    >>> kind(True), kind(3), kind(None), kind({"a": 1})
    ('a boolean', 'an integer', 'null', 'an object')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, numbers.Integral):
        return "an integer"
    if isinstance(value, numbers.Real):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    return "an object" if isinstance(value, Mapping) else f"a {type(value).__name__}"


def json_kind(value: Any) -> str:
    """As `kind`, but integers and floats are one kind: numbers (they share a column as floats).

    Examples
    --------
    >>> json_kind(3), json_kind(2.5), json_kind("3")
    ('a number', 'a number', 'a string')
    """
    found = kind(value)
    return "a number" if found in ("an integer", "a float") else found


def int_range(dtype: pl.DataType) -> tuple[int, int] | None:
    """``(lowest, highest + 1)`` of an integer type (None for another type).

    Examples
    --------
    >>> int_range(pl.Int8()), int_range(pl.UInt8()), int_range(pl.Float64())
    ((-128, 128), (0, 256), None)
    """
    size = next(((b, s) for t, b, s in _INT_BITS if dtype == t), None)
    if size is None:
        return None
    bits, signed = size
    return (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)


def fits(value: Any, dtype: pl.DataType, *, open_structs: bool) -> bool:
    """Whether a parsed JSON value becomes a ``dtype`` value unchanged (ints do become floats).

    ``open_structs``: an object may have keys its struct type lacks (they are left out, as with a
    schema's top-level fields); otherwise such an object does not fit.

    Examples
    --------
    >>> fits(3, pl.Float64(), open_structs=False), fits(1.5, pl.Int64(), open_structs=False)
    (True, False)
    >>> fits(True, pl.Int64(), open_structs=False), fits({"b": 1}, pl.Float64(), open_structs=False)
    (False, False)
    """
    if value is None:
        return True
    if isinstance(value, bool) or dtype == pl.Boolean:
        return isinstance(value, bool) and dtype == pl.Boolean
    if dtype.is_integer():
        if not isinstance(value, int):
            return False
        bounds = int_range(dtype)
        return bounds is None or bounds[0] <= value < bounds[1]
    if dtype.is_float():
        return isinstance(value, int | float)
    if dtype == pl.String:
        return isinstance(value, str)
    if isinstance(dtype, pl.List | pl.Array):
        if not isinstance(value, list) or (isinstance(dtype, pl.Array) and len(value) != dtype.size):
            return False
        inner = _dtype(dtype.inner)
        return all(fits(item, inner, open_structs=open_structs) for item in value)
    if isinstance(dtype, pl.Struct):
        fields = {f.name: _dtype(f.dtype) for f in dtype.fields}
        if not isinstance(value, dict) or (not open_structs and not value.keys() <= fields.keys()):
            return False
        return all(fits(value.get(name), t, open_structs=open_structs) for name, t in fields.items())
    if dtype == pl.Null or isinstance(value, dict | list):
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
        same = json_kind(value)
        dtype = _infer(v for v in values if json_kind(v) == same)
        if dtype is not None and fits(value, dtype, open_structs=False):
            return dtype
        if (dtype := _infer([value])) is not None:
            return dtype
    return pl.Null()


def show(value: Any) -> str:
    """A value as reasons quote it: JSON, cut at 60 characters.

    Examples
    --------
    >>> show("five"), show(list(range(30)))
    ('"five"', '[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16...')
    """
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def _not_json(constant: str) -> Any:
    msg = f"{constant} is not a JSON number"
    raise ValueError(msg)


def _loads(value: bytes) -> tuple[Any, str | None]:
    """Parse one message: ``(value, None)``, or ``(None, reason)`` if it is not JSON."""
    try:
        return json.loads(value, parse_constant=_not_json), None
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start : exc.start + 1].hex()
        return None, f"invalid JSON: not UTF-8 (byte 0x{bad} at position {exc.start})"
    except ValueError as exc:
        return None, f"invalid JSON: {exc}"
    except RecursionError:  # only with a max_depth near Python's own limit
        return None, "invalid JSON: nested too deep for Python's parser"


def types_state(types: dict[str, pl.DataType]) -> str | None:
    """Learned column types as text for a checkpoint (an empty Arrow IPC table, base64): JSON- and pickle-safe.

    Examples
    --------
    >>> state = types_state({"v": pl.Int64(), "s": pl.Struct({"a": pl.String()})})
    >>> load_types(state)
    {'v': Int64, 's': Struct({'a': String})}
    """
    if not types:
        return None
    buf = io.BytesIO()
    pl.DataFrame(schema=types).write_ipc(buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def load_types(state: str | None) -> dict[str, pl.DataType]:
    """The column types `types_state` saved (none for ``None``).

    Examples
    --------
    >>> load_types(types_state({"v": pl.Float64()})), load_types(None)
    ({'v': Float64}, {})
    """
    if not state:
        return {}
    return dict(pl.read_ipc(io.BytesIO(base64.b64decode(state))).schema)


# -- the decoder -------------------------------------------------------------------------------------


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
    ``null`` (or ``[]``, ``{}``) is not fixed yet; a new field is a new column, after the known ones;
    a known field a batch lacks is a null column. So every batch has the columns seen so far, in the
    order they were first seen. Sources keep the learned types in their checkpoints (`types_state`),
    so a restarted flow goes on with them.

    Caps, checked before any parser sees a message: a message nested deeper than ``max_depth`` levels
    of objects and arrays, or with more than ``max_fields`` distinct fields (nested ones included), is a
    dead letter; so, without a schema, is one that would bring the source past ``max_fields`` columns.
    With ``arrays=True`` a message may also be a JSON array of objects, each a row (``index`` then
    repeats the message's index; a reason for one item names it).

    The whole batch is read by Polars at once; only when that fails, or would change a value, are the
    messages checked one by one and the bad ones reported, with the reason naming the field and the
    value. Not thread-safe: make one per source instance.

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
    >>> _, _, bad = decode([b'{"v": ' + b"[" * 900 + b"]" * 900 + b"}", b'{"v": 1, "w": "\\xff"}'])
    >>> [reason.split(", more")[0] for _, reason in bad]
    ['nested 901 levels deep', 'invalid JSON: not UTF-8 (byte 0xff at position 15)']
    """

    def __init__(
        self,
        schema: pl.Schema | None = None,
        *,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_fields: int = DEFAULT_MAX_FIELDS,
        arrays: bool = False,
    ) -> None:
        check_limits("JsonDecoder", max_depth, max_fields)
        self.schema = schema
        self.max_depth = max_depth
        self.max_fields = max_fields
        self.arrays = arrays
        self.seen: dict[str, pl.DataType] = {}  # without a schema: the fields' types so far

    def __repr__(self) -> str:
        return f"JsonDecoder(schema={self.schema!r}, seen={pl.Schema(self.seen)!r})"

    def state(self) -> str | None:
        """The types learned so far, for a checkpoint (see `load_state`)."""
        return types_state(self.seen) if self.schema is None else None

    def load_state(self, state: str | None) -> None:
        """Go on with the types a checkpoint saved (nothing to do with a schema)."""
        if self.schema is None:
            self.seen = load_types(state)

    def __call__(self, values: Sequence[bytes | None]) -> Decoded:
        return self._with_arrays(values) if self.arrays else self._objects(values)

    def ndjson(self, text: bytes) -> Decoded:
        """Decode newline-delimited JSON, skipping empty lines: indexes are those of the lines in
        ``text.split(b"\\n")``. The text goes to Polars' reader as it is when it fits, never split.

        Examples
        --------
        >>> frame, index, bad = JsonDecoder().ndjson(b'{"v": 1}\\n\\n{"v": "x"}\\n{"v": 2}\\n')
        >>> frame["v"].to_list(), index, [i for i, _ in bad]
        ([1, 2], [0, 3], [2])
        """
        ends = text[-1:] == b"\n"
        count = text.count(b"\n") + (not ends)
        if text and not self.arrays and text[:1] != b"\n" and b"\n\n" not in text:
            frame = None if oversized(text, self.max_depth, self.max_fields) else self._fast(text, count)
            if frame is not None:
                self._learn(frame)
                return frame, list(range(count)), []
        lines = text.split(b"\n")
        if ends:
            lines.pop()
        if all(lines):
            return self(lines)
        kept = [i for i, line in enumerate(lines) if line]
        frame, index, bad = self([lines[i] for i in kept])
        return frame, [kept[i] for i in index], [(kept[i], reason) for i, reason in bad]

    def _objects(self, values: Sequence[bytes | None]) -> Decoded:
        frame: pl.DataFrame | None = None
        too_big: dict[int, str] | None = None
        ndjson = _lines(values)
        if ndjson is not None:
            too_big = oversized(ndjson, self.max_depth, self.max_fields)
            if not too_big:
                frame = self._fast(ndjson, len(values))
        if frame is None:
            frame, index, bad = self._slow(values, too_big)
        else:
            index, bad = list(range(len(values))), []
        self._learn(frame)
        return frame, index, bad

    def _learn(self, frame: pl.DataFrame) -> None:
        if self.schema is None:
            for name, dtype in frame.schema.items():
                if name not in self.seen and settled(dtype):
                    self.seen[name] = dtype

    def _fast(self, ndjson: bytes, count: int) -> pl.DataFrame | None:
        """The whole batch through Polars' reader, or None if any message does not fit."""
        try:
            if self.schema is not None:
                frame = _read(ndjson, self.schema)
            elif (known := self._known(ndjson)) is not None:
                frame = known
            else:
                inferred, text = self._infer(ndjson)
                got = {n: pl.String() if n in text else t for n, t in inferred.schema.items()}
                if any(not _covers(self.seen.get(n, t), t) for n, t in got.items()):
                    return None
                target = pl.Schema({**self.seen, **{n: self.seen.get(n, t) for n, t in got.items()}})
                if len(target) > self.max_fields:
                    return None
                if all(target[n] == t and (n in text or not contains(t, pl.String)) for n, t in got.items()):
                    # Polars converted nothing to get these types: no need to read the batch again.
                    missing = [pl.lit(None, t).alias(n) for n, t in target.items() if n not in got]
                    frame = inferred.with_columns(missing).select(list(target)).cast(dict.fromkeys(text, pl.String()))
                else:
                    frame = _read(ndjson, target)  # refuses text from numbers, floats into ints, ...
        except _FAILED:
            return None
        return frame if frame.height == count else None

    def _known(self, ndjson: bytes) -> pl.DataFrame | None:
        """The batch read with the types learned so far, if it fits them and has no other field.

        Reading with types is several times faster than inferring them, but leaves out the fields
        the types lack; so the read counts only if the batch has no more colons than the frame has
        non-null values and colons in its texts. Each field of a message has its colon, and each
        non-null value comes from a field, so no colon is left for a field the types lack. (A text
        whose colon is written ``\\u003a``, or a field given as null, only sends the batch to
        inference.) Flat types only: the fields of nested objects have colons too.
        """
        if not self.seen or any(contains(t, pl.Struct) for t in self.seen.values()):
            return None
        try:
            frame = _read(ndjson, pl.Schema(self.seen))
        except _FAILED:
            return None  # inference tells what did not fit
        colons = frame.height * frame.width - sum(frame.null_count().row(0))
        text = [name for name, dtype in self.seen.items() if dtype == pl.String]
        if text and b"\\u" not in ndjson:  # then the texts' colons are written as colons
            colons += sum(frame.select(pl.col(text).str.count_matches(":", literal=True).sum()).row(0))
        return frame if ndjson.count(b":") == colons else None

    def _infer(self, ndjson: bytes) -> tuple[pl.DataFrame, set[str]]:
        """The batch as Polars infers it; and the text columns already known, which it was told to read
        as such (refusing numbers and booleans, which inference would turn into text): for those, no
        second read is needed. Only columns whose name is in the batch are named (Polars fails on a
        named column it does not find)."""
        text = {
            n for n, t in self.seen.items() if t == pl.String and json.dumps(n, ensure_ascii=False).encode() in ndjson
        }
        if text:
            try:
                overrides = dict.fromkeys(text, pl.Categorical())
                return pl.read_ndjson(ndjson, infer_schema_length=None, schema_overrides=overrides), text
            except pl.exceptions.SchemaFieldNotFoundError:
                pass  # the name was in a value, not a key
        return pl.read_ndjson(ndjson, infer_schema_length=None), set()

    def _slow(self, values: Sequence[bytes | None], too_big: dict[int, str] | None) -> Decoded:
        """Parse the messages one by one; those that do not fit the types go to the dead letters."""
        if too_big is None:
            flat = [v.replace(b"\n", b" ") if v and b"\n" in v else (v or b"") for v in values]
            too_big = oversized(flat, self.max_depth, self.max_fields)
        rows: list[dict[str, Any]] = []
        index: list[int] = []
        bad: list[tuple[int, str]] = list(too_big.items())
        for i, value in enumerate(values):
            if i in too_big:
                continue
            if value is None:
                bad.append((i, "message has no value (a tombstone)"))
                continue
            parsed, problem = _loads(value)
            if problem is not None:
                bad.append((i, problem))
                continue
            if not isinstance(parsed, dict):
                bad.append((i, f"expected a JSON object, got {type(parsed).__name__}"))
                continue
            rows.append(parsed)
            index.append(i)
        if self.schema is None:
            rows, index = self._within_columns(rows, index, bad)
        if not rows:
            bad.sort()
            return pl.DataFrame(schema=self.schema or self.seen), index, bad
        good, kept = rows, index
        while True:  # again without the rows that did not fit: they must not shape the types
            target = self.schema if self.schema is not None else self._types(good)
            fitting: list[dict[str, Any]] = []
            fitting_index: list[int] = []
            for row, i in zip(good, kept, strict=True):
                reason = self._misfit(row, target)
                if reason is None:
                    fitting.append(row)
                    fitting_index.append(i)
                else:
                    bad.append((i, reason))
            done = len(fitting) == len(good) or self.schema is not None
            good, kept = fitting, fitting_index
            if done:
                break
        frame, kept = self._build(good, kept, target, bad)
        bad.sort()
        return frame, kept, bad

    def _within_columns(
        self, rows: list[dict[str, Any]], index: list[int], bad: list[tuple[int, str]]
    ) -> tuple[list[dict[str, Any]], list[int]]:
        """The rows that do not bring the source past ``max_fields`` columns; the others are dead letters."""
        names = set(self.seen)
        if len(names) + sum(map(len, rows)) <= self.max_fields:
            return rows, index
        kept_rows: list[dict[str, Any]] = []
        kept: list[int] = []
        for row, i in zip(rows, index, strict=True):
            new = row.keys() - names
            if len(names) + len(new) > self.max_fields:
                bad.append((
                    i,
                    f"would add {len(new)} fields to the {len(names)} columns this source has, more than "
                    f"max_fields={self.max_fields}. Give schema= to keep only the fields you need",
                ))  # fmt: skip
                continue
            names |= new
            kept_rows.append(row)
            kept.append(i)
        return kept_rows, kept

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
            if fits(value, dtype, open_structs=self.schema is not None):
                continue
            got = f"field {name!r} is {show(value)} ({kind(value)})"
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

    def _with_arrays(self, values: Sequence[bytes | None]) -> Decoded:
        """Decode messages that may be arrays of objects: each object a row of the message."""
        parts: list[bytes | None] = []  # one payload per event: an array's items follow each other
        origin: list[int] = []  # the message each part came from
        item: list[int | None] = []  # its place in the message's array (None: not an array)
        failed: list[tuple[int, str]] = []
        flat = [v.replace(b"\n", b" ") if v and b"\n" in v else (v or b"") for v in values]
        too_big = oversized(flat, self.max_depth, self.max_fields)
        for i, value in enumerate(values):
            if i in too_big:
                failed.append((i, too_big[i]))
                continue
            if value is None or value.lstrip()[:1] != b"[":
                parts.append(value)
                origin.append(i)
                item.append(None)
                continue
            items, problem = _loads(value)
            if problem is not None:
                failed.append((i, problem))
                continue
            if others := sorted({type(x).__name__ for x in items if not isinstance(x, dict)}):
                reason = f"expected a JSON object or an array of objects, got an array of {', '.join(others)}"
                failed.append((i, reason))
                continue
            parts += [json.dumps(x).encode() for x in items]
            origin += [i] * len(items)
            item += list(range(len(items)))
        frame, index, bad = self._objects(parts)
        for j, reason in bad:
            at = item[j]
            failed.append((origin[j], reason if at is None else f"item {at} of the array: {reason}"))
        failed.sort(key=lambda f: f[0])
        return frame, [origin[j] for j in index], failed


def for_json(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` as JSON can hold it: bytes columns (a Kafka message's ``_key``) as base64 text,
    as Kafka Connect's JSON converter writes them (JSON has no bytes, and Polars' writer panics).

    Examples
    --------
    >>> for_json(pl.DataFrame({"_key": [b"card-1", None], "n": [1, 2]})).write_ndjson()
    '{"_key":"Y2FyZC0x","n":1}\\n{"_key":null,"n":2}\\n'
    """
    binary = [name for name, dtype in frame.schema.items() if dtype == pl.Binary]
    if not binary:
        return frame
    return frame.with_columns(pl.col(name).bin.encode("base64") for name in binary)
