"""Real servers for integration tests: started by fixtures, or skipped with a how-to message.

With ``CI=true`` a missing service fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import socket

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(what: str, how: str) -> None:
    """Skip (or, in CI, fail) a test whose server is missing, saying how to get it."""
    message = f"{what} is not available: {how}"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
