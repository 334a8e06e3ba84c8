"""Logging: everything goes through ``logging.getLogger("rheon....")``; rheon installs no handler
unless asked to, so it never interferes with an application's own logging setup."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

__all__ = ["configure_logging"]

_HANDLER_FLAG = "_rheon_handler"


def configure_logging(level: int | str = "INFO", *, stream: TextIO | None = None) -> None:
    """Send rheon's log records (one line of ``key=value`` each) to ``stream`` (stderr by default).

    Calling it again replaces the handler it installed; other handlers are left alone. The
    ``rheon`` command line calls it; libraries and applications may call it or configure the
    ``rheon`` logger themselves.

    Examples
    --------
    >>> import io, logging, rheon as rh
    >>> buf = io.StringIO()
    >>> rh.configure_logging("INFO", stream=buf)
    >>> logging.getLogger("rheon.example").info("started flow=%s", "demo")
    >>> buf.getvalue().split(" ", 1)[1]
    'INFO rheon.example started flow=demo\\n'
    """
    logger = logging.getLogger("rheon")
    for handler in list(logger.handlers):
        if getattr(handler, _HANDLER_FLAG, False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S"))
    setattr(handler, _HANDLER_FLAG, True)
    logger.addHandler(handler)
    logger.setLevel(level if isinstance(level, int) else level.upper())
