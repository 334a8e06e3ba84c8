"""Timers at the end of input: ``ctx.input_ended`` and the firing watermark in ``on_timer``.

When a bounded source ends, the watermark jumps to the end and every event-time timer left
fires. ``on_timer`` must be able to tell those from timers a real watermark reached, and
``ctx.watermark`` there must be the watermark that fired the timer, not the last record's.
"""

from __future__ import annotations

import contextlib
import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

import rheon as rh
from rheon.operators.process import END_WATERMARK
from rheon.testing import ManualClock, ScriptedSource, collect
from tests.crash import Crash, committed, crash_at_row

TIMEOUT = 5_000
DELAY = 500


class Heartbeat:
    """Alert when a host has sent nothing for TIMEOUT ms of event time (one timer per host)."""

    def process(self, record, ctx):
        last = ctx.state("last")
        seen = record["ts"] if last.get() is None else max(last.get(), record["ts"])
        if last.get() is not None:
            ctx.timers.delete_event_time(last.get() + TIMEOUT)
        last.set(seen)
        ctx.timers.register_event_time(seen + TIMEOUT)

    def on_timer(self, timestamp, ctx):
        ctx.emit(
            {
                "host": ctx.key,
                "due": timestamp,
                "last_seen": ctx.state("last").get(),
                "watermark": ctx.watermark,
                "input_ended": ctx.input_ended,
            }
        )


def reference(rows):
    """Record-at-a-time model of Heartbeat, written independently of the engine."""
    last: dict = {}
    timers: dict = {}  # (host, at) -> registration order
    seq = 0
    out = []
    top = None

    def fire(upto, reported, ended):
        due = sorted(((k, v) for k, v in timers.items() if k[1] <= upto), key=lambda kv: (kv[0][1], kv[1]))
        for (host, at), _ in due:
            del timers[(host, at)]
            out.append({"host": host, "due": at, "last_seen": last[host], "watermark": reported, "input_ended": ended})

    for r in rows:
        if top is not None:
            fire(top - DELAY, top - DELAY, False)  # timers due before this record, at its watermark
        host = r["host"]
        seen = r["ts"] if host not in last else max(last[host], r["ts"])
        if host in last:
            timers.pop((host, last[host] + TIMEOUT), None)
        last[host] = seen
        if (host, seen + TIMEOUT) not in timers:
            seq += 1
            timers[(host, seen + TIMEOUT)] = seq
        top = r["ts"] if top is None else max(top, r["ts"])
    fire(top - DELAY, top - DELAY, False)  # the watermark after the last record is a real one
    fire(float("inf"), END_WATERMARK, True)  # the input ended: every timer left fires
    return out


def _replay(seed, n=600):
    """Six hosts in some disorder; h1 goes quiet from 10 s to 25 s, h2 stops at 30 s."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        ts = i * 100 + rnd.randrange(400)
        host = f"h{rnd.randrange(6)}"
        if (host == "h1" and 10_000 <= ts < 25_000) or (host == "h2" and ts >= 30_000):
            host = "h0"
        rows.append({"host": host, "ts": ts})
    return rows


def run(rows, batch_size):
    flow = rh.Flow("heartbeat")
    alerts = collect(
        flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay=f"{DELAY}ms")
        .key_by("host")
        .process(Heartbeat(), name="beat")
    )
    bad = collect(flow.dead_letters())
    flow.run()
    assert bad.rows == []
    return alerts.rows


@pytest.mark.parametrize("seed", [1, 2])
def test_heartbeat_replay_matches_a_record_at_a_time_model(seed, batch_size):
    rows = _replay(seed)
    expected = reference(rows)
    real = [a for a in expected if not a["input_ended"]]
    at_end = [a for a in expected if a["input_ended"]]
    assert {a["host"] for a in real} >= {"h1", "h2"}  # silences in the middle of the replay
    assert {a["host"] for a in at_end} == {f"h{i}" for i in range(6)} - {"h2"}  # h2's fired before
    assert all(a["watermark"] >= a["due"] for a in real)
    assert all(a["watermark"] == END_WATERMARK for a in at_end)
    assert run(rows, batch_size) == expected


def test_the_same_alerts_at_any_batch_size():
    rows = _replay(3)
    one = run(rows, 1)
    assert one == run(rows, 1000)
    assert any(a["input_ended"] for a in one)
    assert not all(a["input_ended"] for a in one)


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_on_timer_sees_the_watermark_that_fired_it_not_the_last_records(batch_size):
    rows = [{"host": "a", "ts": 0}, {"host": "a", "ts": 1_000}, {"host": "b", "ts": 20_000}]
    flow = rh.Flow("jump")
    alerts = collect(
        flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts").key_by("host").process(Heartbeat())
    )
    flow.run()
    # The watermark before the last record was 1 s; the record moved it to 20 s, which fired a's
    # timer (6 s). b's timer (25 s) is only reached because the input ended.
    assert alerts.rows == [
        {"host": "a", "due": 6_000, "last_seen": 1_000, "watermark": 20_000, "input_ended": False},
        {"host": "b", "due": 25_000, "last_seen": 20_000, "watermark": END_WATERMARK, "input_ended": True},
    ]


def test_a_heartbeat_check_can_skip_the_alerts_of_the_end_of_input(batch_size):
    rows = _replay(4)

    def on_timer(timestamp, ctx):
        if not ctx.input_ended:
            ctx.emit({"host": ctx.key, "silent_for": ctx.watermark - ctx.state("last").get()})

    beat = Heartbeat()
    flow = rh.Flow("skip")
    alerts = collect(
        flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay=f"{DELAY}ms")
        .key_by("host")
        .process(beat.process, on_timer=on_timer)
    )
    flow.run()
    expected = [
        {"host": a["host"], "silent_for": a["watermark"] - a["last_seen"]}
        for a in reference(rows)
        if not a["input_ended"]
    ]
    assert expected
    assert alerts.rows == expected
    assert all(a["silent_for"] >= TIMEOUT for a in alerts.rows)


def test_the_watermark_in_on_timer_is_epoch_ms_with_a_datetime_column(batch_size):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    base_ms = int(base.timestamp() * 1000)
    frame = pl.DataFrame(
        {"host": ["a", "a", "b"], "ts": [base, base + timedelta(seconds=1), base + timedelta(seconds=20)]}
    ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))

    def process(record, ctx):
        ctx.timers.register_event_time(record["ts"] + timedelta(seconds=5))

    def on_timer(timestamp, ctx):
        ctx.emit({"host": ctx.key, "due": timestamp, "watermark": ctx.watermark, "input_ended": ctx.input_ended})

    flow = rh.Flow("dt")
    alerts = collect(
        flow.source(rh.io.Records(frame, batch_size=batch_size), time="ts")
        .key_by("host")
        .process(process, on_timer=on_timer)
    )
    flow.run()
    assert alerts.rows == [
        {"host": "a", "due": base + timedelta(seconds=5), "watermark": base_ms + 20_000, "input_ended": False},
        {"host": "a", "due": base + timedelta(seconds=6), "watermark": base_ms + 20_000, "input_ended": False},
        {"host": "b", "due": base + timedelta(seconds=25), "watermark": END_WATERMARK, "input_ended": True},
    ]


def test_a_processing_time_timer_sees_the_current_watermark():
    clock = ManualClock(start_ms=0)

    def process(record, ctx):
        if record["ts"] == 1_000:
            ctx.timers.register_processing_time(ctx.now_ms + 5_000)

    def on_timer(timestamp, ctx):
        ctx.emit({"k": ctx.key, "due": timestamp, "watermark": ctx.watermark, "input_ended": ctx.input_ended})

    script = [[{"k": "a", "ts": 1_000}], [{"k": "a", "ts": 3_000}], "10s", [{"k": "a", "ts": 4_000}]]
    flow = rh.Flow("pt")
    out = collect(flow.source(ScriptedSource(script), time="ts").key_by("k").process(process, on_timer=on_timer))
    flow.run(clock=clock)
    # ctx.watermark was 1 s before the last record; the watermark when the timer fired was 3 s.
    assert out.rows == [{"k": "a", "due": 5_000, "watermark": 3_000, "input_ended": False}]


def test_end_of_input_timers_after_a_crash_and_restore(tmp_path):
    rows = _replay(5, n=400)
    expected = reference(rows)
    assert any(a["input_ended"] for a in expected)

    def build(crash_after=None):
        flow = rh.Flow("beat-ckpt")
        alerts = (
            flow.source(rh.io.Records(rows, batch_size=25), time="ts", max_delay=f"{DELAY}ms", name="in")
            .key_by("host")
            .process(Heartbeat(), name="beat")
        )
        alerts.sink(rh.io.FileSink(tmp_path / "out"), name="out")
        alerts.sink(crash_at_row(crash_after), name="watch")
        return flow

    # Crash early, then just after the first end-of-input alert (before the last checkpoint).
    first_at_end = next(i for i, a in enumerate(expected) if a["input_ended"]) + 1
    for crash_after in (2, first_at_end):
        with contextlib.suppress(Crash):
            build(crash_after).run(checkpoint_dir=tmp_path / "ckpt", checkpoint_every="0ms")
    build().run(checkpoint_dir=tmp_path / "ckpt", checkpoint_every="0ms")
    build().run(checkpoint_dir=tmp_path / "ckpt", checkpoint_every="0ms")  # finished: nothing fires again

    assert committed(tmp_path / "out") == expected
