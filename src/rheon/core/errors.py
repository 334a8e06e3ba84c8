"""The one error tree of rheon.

::

    RheonError                 root: catch this to catch anything rheon raises
    ├── FlowError              build-time mistake in a flow (unknown column, bad window size, ...)
    ├── RecordError            a record failed at run time and the flow's policy is on_error="fail"
    ├── SourceError            a source could not read (file missing, server down, ...)
    ├── SinkError              a sink could not write
    └── CheckpointError        a checkpoint could not be written, or none on disk is intact

Run-time bad data is not an exception by default: it goes to the dead-letter stream
(``flow.dead_letters()``) with the reason and the original payload.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["CheckpointError", "FlowError", "RecordError", "RheonError", "SinkError", "SourceError", "did_you_mean"]


class RheonError(Exception):
    """Root of every error rheon raises.

    Examples
    --------
    >>> import rheon as rh
    >>> issubclass(rh.FlowError, rh.RheonError)
    True
    """


class FlowError(RheonError):
    """A mistake in how a flow is put together, found before (or as) it runs.

    The message names the operator, the field and the value, and suggests a fix.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("f")
    >>> s = flow.source(rh.io.Records([{"amount": 1, "ts": 0}]), time="ts")
    >>> s.filter(rh.col("amout") > 1, name="big")
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: filter 'big': unknown column 'amout' (columns: amount, ts). Did you mean 'amount'?
    """


class RecordError(RheonError):
    """A record failed at run time under ``on_error="fail"``.

    ``operator`` names the operator and ``payload`` holds the record.

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("f", on_error="fail")
    >>> flow.source(rh.io.Records([{"x": 0}])).map(lambda r: {"y": 1 / r["x"]}, name="inv").sink(
    ...     rh.io.Collect())
    >>> flow.run()
    Traceback (most recent call last):
    ...
    rheon.core.errors.RecordError: map 'inv': ZeroDivisionError: division by zero (record: {"x": 0})
    """

    def __init__(self, message: str, *, operator: str = "", payload: str = "") -> None:
        super().__init__(message)
        self.operator = operator
        self.payload = payload


class SourceError(RheonError):
    """A source could not produce data (missing file, unreachable server, ...).

    Examples
    --------
    >>> import rheon as rh
    >>> flow = rh.Flow("f")
    >>> flow.source(rh.io.JsonLines("/no/such/*.jsonl")).sink(rh.io.Collect())
    Traceback (most recent call last):
    ...
    rheon.core.errors.SourceError: JsonLines: no file matches '/no/such/*.jsonl'. Try an absolute path or check the glob.
    """


class SinkError(RheonError):
    """A sink could not write its output.

    Examples
    --------
    >>> import rheon as rh
    >>> issubclass(rh.SinkError, rh.RheonError)
    True
    """


class CheckpointError(RheonError):
    """A checkpoint could not be written, or no checkpoint on disk is intact to resume from.

    The message names the path and what is wrong with it (a failed write, a missing or truncated
    file, a checksum mismatch) and the remedy.

    Examples
    --------
    >>> import rheon as rh
    >>> issubclass(rh.CheckpointError, rh.RheonError)
    True
    """


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""``.

    Examples
    --------
    >>> did_you_mean("amout", ["amount", "ts"])
    " Did you mean 'amount'?"
    >>> did_you_mean("zzz", ["amount"])
    ''
    """
    close = difflib.get_close_matches(value, list(choices), n=1, cutoff=0.5)
    return f" Did you mean '{close[0]}'?" if close else ""


def columns_hint(columns: Iterable[str]) -> str:
    """Format a column list for error messages: ``"(columns: a, b)"``."""
    return "(columns: " + ", ".join(columns) + ")"
