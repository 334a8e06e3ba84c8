"""Logging: everything goes through ``logging.getLogger("rheon....")``; rheon installs no handler
unless asked to, so it never interferes with an application's own logging setup."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import TextIO

__all__ = ["JsonLinesFormatter", "configure_logging"]

_HANDLER_FLAG = "_rheon_handler"


_FIELD = re.compile(r"""(\w+)=('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\S+)""")


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``event`` (the message's first
    word) and the message's ``key=value`` fields, then ``message`` itself.

    Examples
    --------
    >>> record = logging.LogRecord("rheon.x", logging.INFO, "", 0, "checkpoint flow=%s id=%d", ("f", 3), None)
    >>> line = json.loads(JsonLinesFormatter().format(record))
    >>> line["event"], line["flow"], line["id"], line["level"]
    ('checkpoint', 'f', '3', 'INFO')
    """

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        event = message.split(" ", 1)[0]
        out: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "event": event,
        }
        for key, value in _FIELD.findall(message):
            if key not in out:
                out[key] = value[1:-1] if value[:1] in "'\"" and value[-1:] == value[:1] else value
        out["message"] = message
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record comes (a live display may redirect it)."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def configure_logging(level: int | str = "INFO", *, stream: TextIO | None = None, json_lines: bool = False) -> None:
    """Send rheon's log records to ``stream`` (stderr by default): one line of ``key=value`` each,
    or with ``json_lines=True`` one JSON object each (for log shippers).

    A run logs its start and end (``run_started``, ``run_ended`` with why it ended and its
    counts), each checkpoint (``checkpoint`` with id, duration and size), a restore
    (``restored``), idle sources, the metrics endpoint, and warnings for late rows and dead
    letters nobody consumes. Calling it again replaces the handler it installed; other handlers
    are left alone. The ``rheon`` command line calls it; libraries and applications may call it
    or configure the ``rheon`` logger themselves.

    Examples
    --------
    >>> import io, logging, rheon as rh
    >>> buf = io.StringIO()
    >>> rh.configure_logging("INFO", stream=buf)
    >>> logging.getLogger("rheon.example").info("started flow=%s", "demo")
    >>> buf.getvalue().split(" ", 1)[1]
    'INFO rheon.example started flow=demo\\n'
    >>> buf = io.StringIO()
    >>> rh.configure_logging("INFO", stream=buf, json_lines=True)
    >>> logging.getLogger("rheon.example").info("started flow=%s", "demo")
    >>> json.loads(buf.getvalue())["flow"]
    'demo'
    """
    logger = logging.getLogger("rheon")
    for old in list(logger.handlers):
        if getattr(old, _HANDLER_FLAG, False):
            logger.removeHandler(old)
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    if json_lines:
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    setattr(handler, _HANDLER_FLAG, True)
    logger.addHandler(handler)
    logger.setLevel(level if isinstance(level, int) else level.upper())
