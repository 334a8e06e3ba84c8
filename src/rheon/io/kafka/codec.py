"""Turning message payloads into rows, and rows into payloads.

JSON payloads are parsed per batch by Polars (the values joined into one NDJSON buffer), not
per message in Python; only when that fails (a bad message in the batch) are messages parsed one
by one, so that the bad ones can be sent to the dead-letter output with their raw bytes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from rheon.core.errors import FlowError

__all__ = ["Decoder", "decoder_for", "encode_json"]

Decoded = tuple[pl.DataFrame, list[int], list[tuple[int, str]]]
"""Rows, the index of the message each row came from, and ``(message index, reason)`` failures."""

Decoder = Callable[[Sequence[bytes | None]], Decoded]


def _raw(value: bytes | None) -> str:
    return "" if value is None else value.decode("utf-8", errors="replace")


def _json(values: Sequence[bytes | None], schema: pl.Schema | None) -> Decoded:
    if values and all(v for v in values) and not any(b"\n" in v for v in values if v):
        try:
            frame = pl.read_ndjson(b"\n".join(values), schema=schema, infer_schema_length=None)  # type: ignore[arg-type]
            if frame.height == len(values):
                return frame, list(range(len(values))), []
        except (pl.exceptions.PolarsError, ValueError):
            pass
    rows: list[dict[str, Any]] = []
    index: list[int] = []
    bad: list[tuple[int, str]] = []
    for i, value in enumerate(values):
        if value is None:
            bad.append((i, "message has no value (a tombstone)"))
            continue
        try:
            parsed = json.loads(value)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            bad.append((i, f"invalid JSON: {exc}"))
            continue
        if not isinstance(parsed, dict):
            bad.append((i, f"expected a JSON object, got {type(parsed).__name__}"))
            continue
        rows.append(parsed)
        index.append(i)
    if not rows:
        return pl.DataFrame(), index, bad
    if schema is not None:
        good: list[dict[str, Any]] = []
        kept: list[int] = []
        for row, i in zip(rows, index, strict=True):
            try:
                pl.DataFrame([row], schema=schema, strict=True)
            except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
                bad.append((i, f"does not fit the schema: {str(exc).splitlines()[0]}"))
                continue
            good.append(row)
            kept.append(i)
        bad.sort()
        return pl.DataFrame(good, schema=schema, strict=False), kept, bad
    return pl.from_dicts(rows, infer_schema_length=None), index, bad


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
    """The decoder for ``format=``: ``"json"``, ``"bytes"`` or a function of the payload."""
    if callable(fmt):
        return lambda values: _custom(fmt, values)
    if fmt == "json":
        return lambda values: _json(values, schema)
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
