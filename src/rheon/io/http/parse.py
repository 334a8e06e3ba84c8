"""Request bodies of the HTTP ingest endpoint: a JSON object, a JSON array of objects, or NDJSON."""

from __future__ import annotations

import json
from typing import Any

__all__ = ["NDJSON_TYPES", "BadRequest", "parse_events"]

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"})


class BadRequest(ValueError):
    """A request body that cannot be turned into events (answered with 400)."""


def parse_events(body: bytes, content_type: str = "") -> list[dict[str, Any]]:
    """Parse a request body into events: a JSON object, a JSON array of objects, or NDJSON.

    NDJSON is read when the content type says so (``application/x-ndjson`` and kin) or when the
    body holds several JSON documents, one per line.

    Examples
    --------
    >>> parse_events(b'{"a": 1}'), parse_events(b'[{"a": 1}, {"a": 2}]')
    ([{'a': 1}], [{'a': 1}, {'a': 2}])
    >>> parse_events(b'{"a": 1}\\n{"a": 2}\\n')
    [{'a': 1}, {'a': 2}]
    >>> parse_events(b'[{"a": 1}, 2]')
    Traceback (most recent call last):
    ...
    rheon.io.http.parse.BadRequest: item 1 of the array is a int, expected a JSON object
    """
    if not body.strip():
        msg = "empty body; expected a JSON object, an array of objects or NDJSON"
        raise BadRequest(msg)
    if content_type.split(";")[0].strip().lower() in NDJSON_TYPES:
        return _ndjson(body)
    try:
        parsed = json.loads(body)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and b"\n" in body.strip():
            return _ndjson(body)
        msg = f"invalid JSON: {exc}"
        raise BadRequest(msg) from exc
    except UnicodeDecodeError as exc:
        msg = f"body is not UTF-8 text: {exc}"
        raise BadRequest(msg) from exc
    if isinstance(parsed, dict):
        return [parsed]
    if isinstance(parsed, list):
        for i, item in enumerate(parsed):
            if not isinstance(item, dict):
                msg = f"item {i} of the array is a {type(item).__name__}, expected a JSON object"
                raise BadRequest(msg)
        return parsed
    msg = f"expected a JSON object or an array of objects, got a {type(parsed).__name__}"
    raise BadRequest(msg)


def _ndjson(body: bytes) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for number, line in enumerate(body.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            msg = f"invalid JSON on NDJSON line {number}: {exc}"
            raise BadRequest(msg) from exc
        if not isinstance(item, dict):
            msg = f"NDJSON line {number} is a {type(item).__name__}, expected a JSON object"
            raise BadRequest(msg)
        events.append(item)
    return events
