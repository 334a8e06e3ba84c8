"""Turning message payloads into rows, and rows into payloads.

JSON payloads go through `rheon.io._json.JsonDecoder`, the one decoder every JSON source shares
(re-exported here): parsed per batch by Polars, checked against depth and field caps first, with the
messages that do not fit sent to the dead-letter output with their raw bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from rheon.core.errors import FlowError
from rheon.io._json import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FIELDS, Decoded, JsonDecoder, check_limits, for_json

__all__ = ["Decoded", "Decoder", "JsonDecoder", "decoder_for", "encode_json", "raw_payload"]

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


def encode_json(frame: pl.DataFrame) -> list[bytes]:
    """One JSON object per row (Polars' own writer: vectorized)."""
    if frame.height == 0:
        return []
    text = for_json(frame).write_ndjson()
    return [line.encode() for line in text.splitlines()]
