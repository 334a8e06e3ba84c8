"""Paced reconnection of sinks (io/_reconnect.py)."""

from __future__ import annotations

import threading

from rheon.io._reconnect import STOPPING_MAX_WAIT_S, Reconnects
from rheon.time.clock import ManualClock


def test_retries_while_stopping_still_wait_issue_10():
    """A flow that stops (its last checkpoint) still waits between a sink's retries, briefly: a
    broker's passing error must not spend all of them at once and fail the last commit."""
    clock, stop = ManualClock(start_ms=0), threading.Event()
    stop.set()
    retry = Reconnects("out", "Kafka", "127.0.0.1:9092", retries=5, backoff_ms=400, clock=clock, stop=stop)
    for _ in range(5):
        retry.failed(OSError("_UNKNOWN_PARTITION"), "unknown partition")
    waited_s = clock.now_ns() / 1e9
    assert 0.4 + 0.8 + 3 * STOPPING_MAX_WAIT_S - 1e-6 <= waited_s <= 5 * STOPPING_MAX_WAIT_S + 1e-6
