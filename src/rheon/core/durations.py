"""Durations as users write them: ``"250ms"``, ``"2s"``, ``"1m30s"``, ``"1h"``, ``"1d"``, or a timedelta."""

from __future__ import annotations

import re
from datetime import timedelta

from rheon.core.errors import FlowError

__all__ = ["Duration", "to_bytes", "to_ms"]

Duration = str | timedelta

_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def to_ms(value: Duration, *, what: str) -> int:
    """Parse a duration into whole milliseconds.

    ``what`` names the operator and parameter for the error message.

    Examples
    --------
    >>> to_ms("250ms", what="x"), to_ms("1m30s", what="x"), to_ms(timedelta(seconds=2), what="x")
    (250, 90000, 2000)
    >>> to_ms("2 sec", what="window 'w': size")
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: window 'w': size: cannot read duration '2 sec'. Try "250ms", "2s", "1m", "1h" or "1d".
    """
    if isinstance(value, timedelta):
        ms = value / timedelta(milliseconds=1)
    elif isinstance(value, str):
        text = value.strip()
        parts = _PART.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            msg = f'{what}: cannot read duration {value!r}. Try "250ms", "2s", "1m", "1h" or "1d".'
            raise FlowError(msg)
        ms = sum(float(n) * _UNIT_MS[u] for n, u in parts)
    else:
        msg = (
            f'{what}: a duration must be a string like "2s" or a datetime.timedelta '
            f"(got {value!r} that is a {type(value).__name__})"
        )
        raise FlowError(msg)
    if ms < 0:
        msg = f"{what}: duration must not be negative (got {value!r})"
        raise FlowError(msg)
    if ms != int(ms):
        msg = f"{what}: duration {value!r} is finer than a millisecond; rheon counts whole ms"
        raise FlowError(msg)
    return int(ms)


_SIZE_UNITS = {"b": 1, "kb": 1_000, "mb": 1_000_000, "gb": 1_000_000_000, "kib": 1024, "mib": 1024**2, "gib": 1024**3}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([kmg]i?b|b)$", re.IGNORECASE)


def to_bytes(value: str | int, *, what: str) -> int:
    """Parse a size: ``"64MB"``, ``"1GiB"``, ``"500kb"`` or a number of bytes.

    Examples
    --------
    >>> to_bytes("64MB", what="x"), to_bytes("1KiB", what="x"), to_bytes(10, what="x")
    (64000000, 1024, 10)
    """
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(str(value).strip())
    if match is None:
        msg = f'{what}: cannot read size {value!r}. Try "64MB", "1GiB" or a number of bytes.'
        raise FlowError(msg)
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
