"""Request bodies of the HTTP ingest endpoint: a JSON object, a JSON array of objects, or NDJSON.

Bodies are checked against the caps of the shared JSON decoder (`rheon.io._json`, same defaults)
before anything costly is built from them, over the whole request: the nesting depth of each
event (measured on the raw bytes, before the JSON parser recurses into them, so no depth can reach
Python's recursion limit) and the number of distinct fields (nested fields counted by their path,
e.g. ``user.address.city``). Each limit exceeded is a `BadRequest` naming the limit and the value found.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from rheon.io._json import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FIELDS

__all__ = ["NDJSON_TYPES", "BadRequest", "nesting_depth", "parse_events"]

NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"})

_DROP = bytes(c for c in range(256) if c not in b'"[]{}')
"""Every byte but those that delimit strings, arrays and objects."""

_STEP = np.zeros(256, dtype=np.int64)
_STEP[list(b"[{")], _STEP[list(b"]}")] = 1, -1


class BadRequest(ValueError):
    """A request body that cannot be turned into events (answered with 400)."""


def nesting_depth(body: bytes) -> int:
    """How deeply the arrays and objects of a JSON text nest, read from its bytes without parsing it.

    Vectorized (``bytes`` methods drop escaped quotes and every byte but quotes and brackets, NumPy
    counts the brackets outside strings), so a hostile body costs little more than its length. For
    valid JSON it is exact; for invalid JSON it is exact up to where the text stops being JSON,
    which is as far as a parser gets.

    Examples
    --------
    >>> text = json.dumps({"a": [1, {"b": "[[[[" + chr(92)}], 'c"[': {}}).encode()  # chr(92): a backslash
    >>> print(text.decode())
    {"a": [1, {"b": "[[[[\\\\"}], "c\\"[": {}}
    >>> nesting_depth(text), nesting_depth(b"3"), nesting_depth(b"[" * 5000)
    (3, 0, 5000)
    """
    structure = body.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP)
    chars = np.frombuffer(structure, dtype=np.uint8)
    quotes = chars == ord('"')
    outside = (np.cumsum(quotes) % 2 == 0) & ~quotes
    return int(np.cumsum(_STEP[chars[outside]]).max(initial=0))


def parse_events(
    body: bytes,
    content_type: str = "",
    *,
    max_depth: int | None = DEFAULT_MAX_DEPTH,
    max_fields: int | None = DEFAULT_MAX_FIELDS,
) -> list[dict[str, Any]]:
    """Parse a request body into events: a JSON object, a JSON array of objects, or NDJSON.

    NDJSON is read when the content type says so (``application/x-ndjson`` and kin) or when the
    body holds several JSON documents, one per line. The body must be UTF-8 (RFC 8259); ``NaN`` and
    ``Infinity`` are not JSON numbers. ``max_depth`` caps how deeply an event nests (an array
    around the events does not count) and ``max_fields`` how many distinct fields the request's
    events have, nested ones counted by path; ``None`` lifts a cap.

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
    >>> parse_events(b'[{"a": [[1]]}]', max_depth=2)
    Traceback (most recent call last):
    ...
    rheon.io.http.parse.BadRequest: events nest 3 levels deep, more than max_depth=2: flatten them, or raise max_depth= on HttpIngest
    >>> parse_events(b'[{"a": 1, "b": {"c": 2}}, {"d": 3}]', max_fields=3)
    Traceback (most recent call last):
    ...
    rheon.io.http.parse.BadRequest: more than max_fields=3 distinct fields in one request (nested fields count by path; field 4 was 'd'): send fewer distinct fields per request, or raise max_fields= on HttpIngest
    """
    if not body.strip():
        msg = "empty body; expected a JSON object, an array of objects or NDJSON"
        raise BadRequest(msg)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        msg = f"body is not UTF-8 text: {exc}"
        raise BadRequest(msg) from exc
    if max_depth is not None:
        _check_depth(body, max_depth)
    ndjson = content_type.split(";")[0].strip().lower() in NDJSON_TYPES
    events = _ndjson(text) if ndjson else _document(text)
    if max_fields is not None:
        _check_fields(events, max_fields)
    return events


def _loads(text: str) -> Any:
    return json.loads(text, parse_constant=_not_a_number)


def _not_a_number(constant: str) -> Any:
    msg = f"{constant} is not a JSON number"
    raise ValueError(msg)


def _document(text: str) -> list[dict[str, Any]]:
    try:
        parsed = _loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data" and "\n" in text.strip():
            return _ndjson(text)
        msg = f"invalid JSON: {exc}"
        raise BadRequest(msg) from exc
    except (ValueError, RecursionError) as exc:
        msg = f"invalid JSON: {exc}"
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


def _ndjson(text: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            item = _loads(line)
        except (ValueError, RecursionError) as exc:
            msg = f"invalid JSON on NDJSON line {number}: {exc}"
            raise BadRequest(msg) from exc
        if not isinstance(item, dict):
            msg = f"NDJSON line {number} is a {type(item).__name__}, expected a JSON object"
            raise BadRequest(msg)
        events.append(item)
    return events


def _check_depth(body: bytes, max_depth: int) -> None:
    """Refuse events nested deeper than ``max_depth`` (an array around the events is not counted)."""
    depth = nesting_depth(body)
    if body.lstrip()[:1] == b"[":
        depth -= 1
    if depth > max_depth:
        msg = f"events nest {depth} levels deep, more than max_depth={max_depth}: flatten them, or raise max_depth= on HttpIngest"
        raise BadRequest(msg)


def _check_fields(events: list[dict[str, Any]], max_fields: int) -> None:
    """Refuse requests whose events have more than ``max_fields`` distinct fields (by path)."""
    root: dict[str, Any] = {}  # a tree of the field names seen: one node per distinct path
    count = 0
    stack: list[tuple[Any, dict[str, Any], str]] = [(event, root, "") for event in reversed(events)]
    while stack:
        value, node, path = stack.pop()
        if isinstance(value, dict):
            for name, item in value.items():
                child = node.get(name)
                if child is None:
                    child = node[name] = {}
                    count += 1
                    if count > max_fields:
                        msg = (
                            f"more than max_fields={max_fields} distinct fields in one request (nested fields count "
                            f"by path; field {count} was {path + name!r}): send fewer distinct fields per request, "
                            f"or raise max_fields= on HttpIngest"
                        )
                        raise BadRequest(msg)
                if isinstance(item, dict | list):
                    stack.append((item, child, f"{path}{name}."))
        else:  # a list: its items are values of the same field
            stack.extend((item, node, path) for item in reversed(value) if isinstance(item, dict | list))
