"""Late rows are never dropped silently: when nobody consumes ``.late()``, a warning says how many."""

from __future__ import annotations

import logging

import pytest

import rheon as rh
from rheon.testing import collect

LATE_LOGGER = "rheon.runtime.executor"


def _rows(n_late):
    """Events every 100 ms; after each on-time one from 1 s on, ``n_late`` times, one 1 s older
    (its 500 ms window closed when the watermark passed it)."""
    rows, late = [], 0
    for i in range(60):
        rows.append({"k": i % 3, "ts": i * 100})
        if i >= 10 and late < n_late:
            rows.append({"k": i % 3, "ts": i * 100 - 1_000})
            late += 1
    return rows, late


def _late_records(caplog):
    return [r for r in caplog.records if r.name == LATE_LOGGER and r.getMessage().startswith("late_rows")]


def _window_flow(rows, batch_size, *, consume_late):
    flow = rh.Flow("late-logged")
    per_k = (
        flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay="100ms")
        .key_by("k")
        .window(rh.tumbling("500ms"), name="per_k")
        .agg(n=rh.count())
    )
    per_k.sink(rh.io.Collect())
    late = collect(per_k.late()) if consume_late else None
    return flow, late


def test_unconsumed_late_rows_are_logged_with_their_count(caplog, batch_size):
    rows, n_late = _rows(19)
    assert n_late == 19
    flow, _ = _window_flow(rows, batch_size, consume_late=False)
    with caplog.at_level(logging.WARNING, logger="rheon"):
        flow.run()
    assert flow.metrics().late_rows == 19
    records = _late_records(caplog)
    assert all(r.levelno == logging.WARNING for r in records)
    summary = records[-1].getMessage()
    assert summary.startswith("late_rows operator=window 'per_k' total=19 late rows dropped")
    assert "consume stream.late() to keep them" in summary
    # The first ones are reported as they happen, then only the total: not one line per row.
    assert len(records) == 2
    first = records[0].getMessage()
    assert first.startswith("late_rows operator=window 'per_k' rows=")
    assert ".late()" in first


def test_many_late_rows_in_one_batch_make_two_lines_not_one_per_row(caplog):
    rows = [{"k": 1, "ts": 10_000}] + [{"k": i % 5, "ts": i % 1_000} for i in range(5_000)]
    flow, _ = _window_flow(rows, 10_000, consume_late=False)
    with caplog.at_level(logging.WARNING, logger="rheon"):
        flow.run()
    messages = [r.getMessage() for r in _late_records(caplog)]
    assert len(messages) == 2
    assert messages[0].startswith("late_rows operator=window 'per_k' rows=5000 dropped")
    assert messages[1].startswith("late_rows operator=window 'per_k' total=5000 late rows dropped")


def test_consumed_late_rows_are_not_logged(caplog, batch_size):
    rows, n_late = _rows(19)
    flow, late = _window_flow(rows, batch_size, consume_late=True)
    with caplog.at_level(logging.WARNING, logger="rheon"):
        flow.run()
    assert late is not None
    assert len(late.rows) == n_late == flow.metrics().late_rows
    assert _late_records(caplog) == []


@pytest.mark.parametrize("consume_late", [False, True])
def test_a_joins_unconsumed_late_rows_are_logged_too(caplog, consume_late):
    flow = rh.Flow("late-join")
    # One record per turn of the run loop: pays at 2 s and 3 s arrive once both inputs are past 10 s.
    pay_rows = [{"card": "a", "ts": t} for t in (10_000, 1_000, 2_000, 3_000)]
    pays = flow.source(rh.io.Records(pay_rows, batch_size=1), time="ts", name="pays")
    login_rows = [{"card": "a", "ts": 500}, {"card": "a", "ts": 20_000}]
    logins = flow.source(rh.io.Records(login_rows, batch_size=1), time="ts", name="logins")
    joined = pays.key_by("card").join(logins.key_by("card"), between=("-5s", "0s"), name="j")
    joined.sink(rh.io.Collect())
    late = collect(joined.late()) if consume_late else None
    with caplog.at_level(logging.WARNING, logger="rheon"):
        flow.run()
    late_rows = flow.metrics().late_rows
    assert late_rows == 2
    messages = [r.getMessage() for r in _late_records(caplog)]
    if consume_late:
        assert late is not None
        assert len(late.rows) == late_rows
        assert messages == []
    else:
        assert messages[-1].startswith("late_rows operator=interval_join 'j' total=2 late rows dropped")
