"""``rh.io.Records``: a bounded in-memory source.

Rows given as dicts follow the rules JSON sources follow (`rheon.io._json.JsonDecoder`): a field keeps
the type it first had, a row whose value does not fit it is a dead letter instead of being converted,
and every batch has the fields seen so far as columns, in the order first seen (`RowDecoder`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import numbers
import reprlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import islice
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.deadletters import payload_of
from rheon.core.errors import FlowError, SourceError
from rheon.io._json import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_FIELDS,
    check_limits,
    int_range,
    json_kind,
    kind,
    settled,
    show,
)
from rheon.io.base import BuildContext, KeepsDeadLetters, Source, SourceLogic

__all__ = ["Records", "RowDecoder", "frame_from_rows"]

_FAILED = (pl.exceptions.PolarsError, pl.exceptions.PanicException, ValueError, TypeError, OverflowError)


def frame_from_rows(rows: Sequence[Any], *, where: str) -> pl.DataFrame:
    """Build a frame from dicts, inferring types over all rows (Polars' rules: values may be converted).

    Examples
    --------
    >>> frame_from_rows([{"a": 1}, {"a": 2.5, "b": "x"}], where="Records").schema
    Schema([('a', Float64), ('b', String)])
    >>> frame_from_rows([1, 2], where="Records")
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: Records: row 0 is a int, expected a dict of column -> value (got 1)
    """
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            msg = f"{where}: row {i} is a {type(row).__name__}, expected a dict of column -> value (got {row!r})"
            raise FlowError(msg)
    if not rows:
        return pl.DataFrame()
    try:
        return pl.from_dicts(rows, infer_schema_length=None)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        msg = f"{where}: could not build a table from the rows: {exc}. Try giving each column one type."
        raise FlowError(msg) from exc


def fits_value(value: Any, dtype: pl.DataType) -> bool:
    """Whether a Python value becomes a ``dtype`` value unchanged (ints do become floats).

    Examples
    --------
    >>> fits_value(3, pl.Float64()), fits_value(1.5, pl.Int64()), fits_value(True, pl.Int64())
    (True, False, False)
    >>> fits_value({"a": 1, "b": 2}, pl.Struct({"a": pl.Int64()})), fits_value("1", pl.Int64())
    (False, False)
    """
    if value is None:
        return True
    if isinstance(value, bool) or dtype == pl.Boolean:
        return isinstance(value, bool) and dtype == pl.Boolean
    if dtype.is_integer():
        bounds = int_range(dtype)
        return isinstance(value, numbers.Integral) and (bounds is None or bounds[0] <= int(value) < bounds[1])
    if dtype.is_float():
        return isinstance(value, numbers.Real)
    if dtype == pl.String:
        return isinstance(value, str)
    if isinstance(dtype, pl.List | pl.Array):
        if not isinstance(value, list | tuple) or (isinstance(dtype, pl.Array) and len(value) != dtype.size):
            return False
        inner = dtype.inner() if isinstance(dtype.inner, type) else dtype.inner
        return all(fits_value(item, inner) for item in value)
    if isinstance(dtype, pl.Struct):
        fields = {f.name: (f.dtype() if isinstance(f.dtype, type) else f.dtype) for f in dtype.fields}
        if not isinstance(value, Mapping) or not value.keys() <= fields.keys():
            return False
        return all(fits_value(value.get(name), t) for name, t in fields.items())
    if isinstance(dtype, pl.Datetime):
        return isinstance(value, dt.datetime) and (value.tzinfo is None) == (dtype.time_zone is None)
    if dtype == pl.Date:
        return type(value) is dt.date
    if dtype == pl.Time:
        return isinstance(value, dt.time)
    if isinstance(dtype, pl.Duration):
        return isinstance(value, dt.timedelta)
    if isinstance(dtype, pl.Decimal):
        return isinstance(value, decimal.Decimal)
    if dtype == pl.Binary:
        return isinstance(value, bytes | bytearray)
    if dtype == pl.Null or isinstance(value, Mapping | list | tuple):
        return False
    try:  # anything else: Polars must give back what it was given
        return bool(pl.Series([value], dtype=dtype, strict=True).to_list() == [value])
    except _FAILED:
        return False


def value_check(dtype: pl.DataType) -> Callable[[Any], bool]:
    """:func:`fits_value` for one type, as a function of the value: the common types (numbers,
    booleans, text) test the value's exact type first, which is what nearly every value has, and
    leave the rest to :func:`fits_value`.

    Examples
    --------
    >>> fits = value_check(pl.Int8())
    >>> fits(5), fits(None), fits(300), fits(True), fits(5.0)
    (True, True, False, False, False)
    """
    return _value_check(dtype)


@functools.lru_cache(maxsize=256)
def _value_check(dtype: pl.DataType) -> Callable[[Any], bool]:
    def slow(value: Any) -> bool:
        return fits_value(value, dtype)

    if dtype == pl.Boolean:
        return lambda v: v is None or v is True or v is False
    bounds = int_range(dtype)
    if bounds is not None:
        lo, hi = bounds
        return lambda v: (type(v) is int and lo <= v < hi) or (type(v) is not int and slow(v))
    if dtype.is_float():
        return lambda v: type(v) is float or (type(v) is int and slow(v)) or (type(v) not in (float, int) and slow(v))
    if dtype == pl.String:
        return lambda v: type(v) is str or v is None or slow(v)
    return slow


def _new_type(values: list[Any]) -> pl.DataType:
    """A new field's type: what Polars infers over the values of the same family as the first one,
    unless that would change the first value (then its own type)."""
    for value in values[:3]:
        family = json_kind(value)
        for sample in ([v for v in values if json_kind(v) == family], [value]):
            try:
                dtype = pl.from_dicts([{"v": v} for v in sample], infer_schema_length=None).schema["v"]
            except _FAILED:
                continue
            if fits_value(value, dtype):
                return dtype
    return pl.Null()


def _shape(row: Mapping[str, Any], max_depth: int, max_fields: int) -> str | None:
    """Why a row is over a cap (nested too deep, too many distinct fields), or None; without recursion."""
    paths: dict[tuple[int, str], int] = {}
    stack: list[tuple[Any, int, int]] = [(row, 0, 1)]
    while stack:
        node, path, depth = stack.pop()
        if depth > max_depth:
            return f"nested more than max_depth={max_depth} levels deep"
        if isinstance(node, Mapping):
            for key, item in node.items():
                child = paths.setdefault((path, key), len(paths) + 1)
                if isinstance(item, Mapping | list | tuple):
                    stack.append((item, child, depth + 1))
            if len(paths) > max_fields:
                return f"has more than max_fields={max_fields} distinct fields (nested ones included)"
        else:
            stack.extend((item, path, depth + 1) for item in node if isinstance(item, Mapping | list | tuple))
    return None


def _payload(row: Any) -> str:
    """A rejected row as text: JSON if it can be written, else a short repr (never recursing deep)."""
    try:
        return payload_of(row)
    except RecursionError:
        return reprlib.repr(row)


class RowDecoder:
    """Turn Python dicts into rows whose column types stay the same from batch to batch.

    The rules of `rheon.io._json.JsonDecoder`, for Python values: the first batch with a non-null
    value for a field fixes its type (Polars' inference over that batch's values of the same kind as
    the first, so ints and floats make Float64); a row whose value does not fit it exactly is a dead
    letter (``"1"`` or ``True`` for an integer, ``1.5`` for an Int64, an object for a list, a key its
    struct did not have); a row that is not a dict, whose field names are not text, nested deeper than
    ``max_depth`` or with more than ``max_fields`` distinct fields is one too. Columns: the fields
    seen so far, in the order first seen, missing ones null.

    Examples
    --------
    >>> decode = RowDecoder()
    >>> frame, index, bad = decode([{"k": "a", "ts": 1}, {"ts": 2, "k": "b"}, {"k": "c", "ts": "3"}])
    >>> frame.to_dicts(), index
    ([{'k': 'a', 'ts': 1}, {'k': 'b', 'ts': 2}], [0, 1])
    >>> for i, reason, payload in bad:
    ...     print(i, reason.split(" so far")[0], payload)
    2 field 'ts' is "3" (a string), but this source has read it as Int64 {"k": "c", "ts": "3"}
    >>> decode([{"ts": 4, "extra": True}])[0].to_dicts()
    [{'k': None, 'ts': 4, 'extra': True}]
    """

    def __init__(self, *, max_depth: int = DEFAULT_MAX_DEPTH, max_fields: int = DEFAULT_MAX_FIELDS) -> None:
        check_limits("RowDecoder", max_depth, max_fields)
        self.max_depth, self.max_fields = max_depth, max_fields
        self.seen: dict[str, pl.DataType] = {}

    def __call__(self, rows: Sequence[Any]) -> tuple[pl.DataFrame, list[int], list[tuple[int, str, str]]]:
        """``(frame, index of each row's input, [(input index, reason, payload)])``."""
        good: list[Mapping[str, Any]] = []
        index: list[int] = []
        bad: list[tuple[int, str, str]] = []
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                bad.append((i, f"expected a dict of column -> value, got {type(row).__name__}", _payload(row)))
            elif not all(isinstance(k, str) for k in row):
                names = [k for k in row if not isinstance(k, str)]
                bad.append((i, f"field names must be text (got {names[0]!r})", _payload(row)))
            elif len(row) > self.max_fields:
                bad.append((i, f"has more than max_fields={self.max_fields} distinct fields", _payload(row)))
            elif any(isinstance(v, Mapping | list | tuple) for v in row.values()) and (
                problem := _shape(row, self.max_depth, self.max_fields)
            ):
                bad.append((i, problem, _payload(row)))
            else:
                good.append(row)
                index.append(i)
        while True:  # again without the rows that did not fit: they must not shape the types
            target = self._types(good)
            checks = {name: value_check(dtype) for name, dtype in target.items()}
            fitting, fitting_index = [], []
            for row, i in zip(good, index, strict=True):
                reason = self._misfit(row, target, checks)
                if reason is None:
                    fitting.append(row)
                    fitting_index.append(i)
                else:
                    bad.append((i, reason, _payload(row)))
            done = len(fitting) == len(good)
            good, index = fitting, fitting_index
            if done:
                break
        frame, kept = self._build(good, index, target, bad)
        for name, dtype in frame.schema.items():
            if name not in self.seen and settled(dtype):
                self.seen[name] = dtype
        bad.sort(key=lambda b: b[0])
        return frame, kept, bad

    def _types(self, rows: list[Mapping[str, Any]]) -> pl.Schema:
        new: dict[str, list[Any]] = {}
        for row in rows:
            for name, value in row.items():
                if name not in self.seen:
                    found = new.setdefault(name, [])
                    if value is not None:
                        found.append(value)
        room = self.max_fields - len(self.seen)
        return pl.Schema({**self.seen, **{n: _new_type(v) for n, v in list(new.items())[: max(room, 0)]}})

    def _misfit(
        self, row: Mapping[str, Any], target: pl.Schema, checks: Mapping[str, Callable[[Any], bool]]
    ) -> str | None:
        if not row.keys() <= target.keys():
            extra = sorted(row.keys() - target.keys())
            return (
                f"would add field {extra[0]!r} to the {len(target)} columns this source has, more than "
                f"max_fields={self.max_fields}"
            )
        for name, value in row.items():
            if checks[name](value):
                continue
            dtype = target[name]
            got = f"field {name!r} is {show(value)} ({kind(value)})"
            if dtype == pl.Null:
                return f"{got}, which no column type can hold"
            return f"{got}, but this source has read it as {dtype} so far (a field keeps the type it first had)"
        return None

    def _build(
        self, rows: list[Mapping[str, Any]], index: list[int], target: pl.Schema, bad: list[tuple[int, str, str]]
    ) -> tuple[pl.DataFrame, list[int]]:
        if not rows:
            return pl.DataFrame(schema=target), []
        try:
            return pl.from_dicts(rows, schema=target, strict=True), index
        except _FAILED:
            pass
        frames, kept = [], []
        for row, i in zip(rows, index, strict=True):
            try:
                frames.append(pl.from_dicts([row], schema=target, strict=True))
            except _FAILED as exc:
                bad.append((i, f"does not fit the types seen so far: {str(exc).splitlines()[0]}", _payload(row)))
                continue
            kept.append(i)
        return (pl.concat(frames) if frames else pl.DataFrame(schema=target)), kept


class Records(Source):
    """Bounded in-memory source: a list of dicts, any iterable of dicts, or a Polars DataFrame.

    Batches hold at most ``batch_size`` records. Lists and DataFrames are read whole when the flow
    is built, so column mistakes are caught before running; other iterables (generators) are read
    lazily, ``batch_size`` rows at a time, and can be consumed only once.

    A DataFrame keeps its types. Dicts are typed as JSON sources type their records
    (`RowDecoder`): a field keeps the type it first had (over the whole list, or the first chunk of
    an iterable that has the field), and a row whose value does not fit it (``"1"`` or ``True``
    where the field was an integer, ``1.5`` for an Int64, a list for an object), that is nested
    deeper than ``max_depth`` levels or has more than ``max_fields`` distinct fields, is a dead letter
    with the reason, never converted. Every batch has the fields seen so far as columns, in the
    order first seen (a field a row lacks is null).

    Guarantee: exactly-once (lists and DataFrames resume from their position after a restart;
    a one-shot iterable cannot resume).

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("r")
    >>> out, bad = rh.io.Collect(), rh.io.Collect()
    >>> flow.source(rh.io.Records([{"x": 1}, {"x": "2"}, {"x": 3}], batch_size=1)).sink(out)
    >>> flow.dead_letters().sink(bad)
    >>> flow.run(); out.rows, [d["payload"] for d in bad.rows]
    ([{'x': 1}, {'x': 3}], ['{"x": "2"}'])
    """

    def __init__(
        self,
        data: Iterable[Mapping[str, Any]] | pl.DataFrame,
        *,
        batch_size: int = 1000,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_fields: int = DEFAULT_MAX_FIELDS,
    ) -> None:
        if batch_size < 1:
            msg = f"Records: batch_size must be at least 1 (got {batch_size})"
            raise FlowError(msg)
        check_limits("Records", max_depth, max_fields)
        self.batch_size = batch_size
        self.max_depth, self.max_fields = max_depth, max_fields
        self._frame: pl.DataFrame | None = None
        self._index: list[int] | None = None  # for a list: the list position of each row of _frame
        self._bad: list[tuple[int, str, str]] = []  # for a list: its rows that are dead letters
        self._iterable: Iterable[Mapping[str, Any]] | None = None
        if isinstance(data, pl.DataFrame):
            self._frame = data
        elif isinstance(data, Sequence) and not isinstance(data, str | bytes):
            for i, row in enumerate(data):
                if not isinstance(row, Mapping):
                    msg = (
                        f"Records: row {i} is a {type(row).__name__}, expected a dict of column -> value (got {row!r})"
                    )
                    raise FlowError(msg)
            self._frame, self._index, self._bad = RowDecoder(max_depth=max_depth, max_fields=max_fields)(data)
        elif isinstance(data, Iterable):
            self._iterable = data
        else:
            msg = f"Records: expected a list of dicts or a Polars DataFrame (got a {type(data).__name__})"
            raise FlowError(msg)

    @override
    def schema(self) -> pl.Schema | None:
        if self._frame is None or self._frame.width == 0:
            return None
        return self._frame.schema

    @override
    def build(self, ctx: BuildContext) -> SourceLogic:
        if self._frame is not None:
            return _FrameLogic(self._frame, self.batch_size, self._index, self._bad)
        assert self._iterable is not None
        decoder = RowDecoder(max_depth=self.max_depth, max_fields=self.max_fields)
        return _IterLogic(iter(self._iterable), self.batch_size, decoder)

    def __repr__(self) -> str:
        size = f"{self._frame.height} rows" if self._frame is not None else "iterable"
        return f"Records({size}, batch_size={self.batch_size})"


class _FrameLogic(KeepsDeadLetters, SourceLogic):
    """Hands out a frame's rows; for a list of dicts, its dead letters when the rows around them go."""

    def __init__(
        self, frame: pl.DataFrame, batch_size: int, index: list[int] | None, bad: list[tuple[int, str, str]]
    ) -> None:
        self.frame = frame
        self.batch_size = batch_size
        self.offset = 0
        self.index = index
        self.bad = bad
        self.bad_next = 0  # the first of `bad` not handed out yet
        self.dead: list[tuple[str, str]] = []

    def _letters_before(self, offset: int) -> int:
        """How many dead letters come before the frame's row ``offset`` (all of them at the end)."""
        if self.index is None or offset >= len(self.index):
            return len(self.bad)
        position = self.index[offset]
        return sum(1 for i, _, _ in self.bad if i < position)

    @override
    def next_batch(self) -> pl.DataFrame | None:
        if self.offset >= self.frame.height:
            self._hand_out(len(self.bad))
            return None
        out = self.frame.slice(self.offset, self.batch_size)
        self.offset += out.height
        self._hand_out(self._letters_before(self.offset))
        return out

    def _hand_out(self, upto: int) -> None:
        self.dead += [(reason, payload) for _, reason, payload in self.bad[self.bad_next : upto]]
        self.bad_next = max(self.bad_next, upto)

    @override
    def done(self) -> bool:
        return self.offset >= self.frame.height and self.bad_next >= len(self.bad)

    @override
    def snapshot(self) -> Any:
        return self.offset

    @override
    def restore(self, position: Any) -> None:
        self.offset = int(position)
        self.bad_next = self._letters_before(self.offset) if self.offset else 0


class _IterLogic(KeepsDeadLetters, SourceLogic):
    def __init__(self, rows: Iterator[Mapping[str, Any]], batch_size: int, decoder: RowDecoder) -> None:
        self.rows = rows
        self.batch_size = batch_size
        self.decoder = decoder
        self.count = 0
        self.exhausted = False
        self.dead: list[tuple[str, str]] = []

    @override
    def next_batch(self) -> pl.DataFrame | None:
        chunk = list(islice(self.rows, self.batch_size))
        if len(chunk) < self.batch_size:
            self.exhausted = True
        if not chunk:
            return None
        self.count += len(chunk)
        frame, _, bad = self.decoder(chunk)
        self.dead += [(reason, payload) for _, reason, payload in bad]
        return frame

    @override
    def done(self) -> bool:
        return self.exhausted

    @override
    def snapshot(self) -> Any:
        return self.count

    @override
    def restore(self, position: Any) -> None:
        if position:
            msg = (
                "Records over a one-shot iterable cannot resume from a checkpoint. Try a list of dicts or a DataFrame."
            )
            raise SourceError(msg)
