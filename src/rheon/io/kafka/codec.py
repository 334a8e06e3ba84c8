"""Turning message payloads into rows, and rows into payloads.

JSON payloads go through `rheon.io._json.JsonDecoder`, the one decoder every JSON source shares
(re-exported here): parsed per batch by Polars, checked against depth and field caps first, with the
messages that do not fit sent to the dead-letter output with their raw bytes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from rheon.core.errors import FlowError
from rheon.io._json import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FIELDS, Decoded, JsonDecoder, check_limits, for_json

__all__ = [
    "Decoded",
    "Decoder",
    "JsonDecoder",
    "decoder_for",
    "encode_json",
    "message_keys",
    "raw_payload",
    "raw_payloads",
]

Decoder = Callable[[Sequence[bytes | None]], Decoded]


def _raw(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", errors="replace")


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


def decoder_for(
    fmt: str | Callable[[bytes], Any],
    schema: pl.Schema | None,
    where: str,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_fields: int = DEFAULT_MAX_FIELDS,
    arrays: bool = False,
) -> Decoder:
    """The decoder for ``format=``: ``"json"`` (see `JsonDecoder`), ``"bytes"`` or a function of the payload.

    Make one per source instance: a JSON decoder remembers the types it has seen.

    Examples
    --------
    >>> decode = decoder_for("json", None, "source 'in'", max_depth=4)
    >>> frame, index, bad = decode([b'{"v": 1}', b'{"v": [[[[1]]]]}'])
    >>> frame.to_dicts(), index, bad
    ([{'v': 1}], [0], [(1, 'nested 5 levels deep, more than max_depth=4 (a record this deep would take Polars too long to read)')])
    >>> decoder_for("xml", None, "Kafka")
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: Kafka: format must be 'json', 'bytes' or a function bytes -> dict (got 'xml')
    """
    check_limits(where, max_depth, max_fields)
    if callable(fmt):
        return lambda values: _custom(fmt, values)
    if fmt == "json":
        return JsonDecoder(schema, max_depth=max_depth, max_fields=max_fields, arrays=arrays)
    if fmt == "bytes":
        return _bytes
    msg = f"{where}: format must be 'json', 'bytes' or a function bytes -> dict (got {fmt!r})"
    raise FlowError(msg)


def raw_payload(value: bytes | None) -> str:
    """A message's payload as text, for dead letters."""
    return _raw(value)


def raw_payloads(values: pl.Series) -> pl.Series:
    """`raw_payload` of each value of a Binary series, vectorized: one cast when every payload is
    UTF-8 (as every JSON message that was decoded is), else one value at a time.

    Examples
    --------
    >>> raw_payloads(pl.Series("p", [b'{"v": 1}', None], dtype=pl.Binary)).to_list()
    ['{"v": 1}', '']
    >>> texts = raw_payloads(pl.Series("p", [b"ok", bytes([0xFF]) + b"bad"], dtype=pl.Binary))
    >>> texts.to_list() == ["ok", chr(0xFFFD) + "bad"]  # not UTF-8: the bad byte replaced
    True
    """
    try:
        text = values.cast(pl.String)
    except pl.exceptions.PolarsError:  # not UTF-8 somewhere: replaced per value, as raw_payload does
        text = pl.Series(values.name, [_raw(v) for v in values.to_list()], dtype=pl.String)
    return text.fill_null("")


def encode_json(frame: pl.DataFrame) -> list[bytes]:
    """One JSON object per row, by Polars' own writer, split into messages at C speed.

    Split on newlines only: JSON text escapes them inside strings, but not other line breaks
    (``\\u2028``), so ``str.splitlines`` would cut such a row in two.

    Examples
    --------
    >>> encode_json(pl.DataFrame({"k": [1, 2], "s": ["a\\nb", "c\\u2028d"]}))
    [b'{"k":1,"s":"a\\\\nb"}', b'{"k":2,"s":"c\\xe2\\x80\\xa8d"}']
    """
    if frame.height == 0:
        return []
    buffer = io.BytesIO()
    for_json(frame).write_ndjson(buffer)
    lines = buffer.getvalue().split(b"\n")
    lines.pop()  # after the newline that ends the last row
    if len(lines) != frame.height:
        msg = f"the JSON writer gave {len(lines)} lines for {frame.height} rows"
        raise ValueError(msg)
    return lines


def message_keys(frame: pl.DataFrame, columns: Sequence[str]) -> list[bytes | None]:
    """Each row's message key: none without key columns, one column's value as text (``str``), or
    several columns' values as a JSON array. Text and integer columns are converted by Polars.

    Examples
    --------
    >>> frame = pl.DataFrame({"card": ["a", None], "n": [1, 2], "x": [0.5, None]})
    >>> message_keys(frame, ["card"]), message_keys(frame, ["n"]), message_keys(frame, ["x"])
    ([b'a', None], [b'1', b'2'], [b'0.5', None])
    >>> message_keys(frame, ["card", "n"]), message_keys(frame, [])
    ([b'["a", 1]', b'[null, 2]'], [None, None])
    """
    if not columns:
        return [None] * frame.height
    if len(columns) > 1:
        return [json.dumps(list(k), default=str).encode() for k in frame.select(columns).iter_rows()]
    column = frame.get_column(columns[0])
    if column.dtype == pl.String or column.dtype.is_integer():  # where Polars' text is str()'s
        return column.cast(pl.String).cast(pl.Binary).to_list()
    return [None if k is None else str(k).encode() for k in column.to_list()]
