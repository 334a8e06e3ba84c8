"""Keyed process functions: state, timers, side outputs, errors, checkpoints."""

from __future__ import annotations

import contextlib
import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

import rheon as rh
from rheon.testing import ManualClock, ScriptedSource, collect
from tests.crash import Crash, committed, crash_at_row


class Sessionizer:
    """Counts events per key; closes a 'visit' 1 s after the key's last event (event-time timer),
    reports every 5th event on a side output."""

    def process(self, record, ctx):
        n = ctx.state("n", default=0)
        last = ctx.state("last")
        if last.get() is not None:
            ctx.timers.delete_event_time(last.get() + 1_000)
        n.set(n.get() + 1)
        last.set(record["ts"])
        ctx.timers.register_event_time(record["ts"] + 1_000)
        ctx.timers.register_event_time(record["ts"] + 1_000)  # registering twice is one timer
        ctx.state.list("values").append(record["v"])
        if n.get() % 5 == 0:
            ctx.output("every5", {"key": ctx.key, "n": n.get(), "wm": ctx.watermark})

    def on_timer(self, timestamp, ctx):
        values = ctx.state.list("values").get()
        ctx.emit({"key": ctx.key, "closed_at": timestamp, "events": ctx.state("n").get(), "sum": sum(values)})
        ctx.state("n").clear()
        ctx.state("last").clear()
        ctx.state.list("values").clear()


def reference(rows, max_delay):
    """Record-at-a-time model of Sessionizer, written independently of the engine."""
    state: dict = {}
    timers: dict = {}  # (key, at) -> registration order
    seq = 0
    out, side = [], []
    top = None

    def fire(upto):
        for (key, at), _ in sorted(
            ((k, v) for k, v in timers.items() if k[1] <= upto), key=lambda kv: (kv[0][1], kv[1])
        ):
            del timers[(key, at)]
            s = state.pop(key)
            out.append({"key": key, "closed_at": at, "events": s["n"], "sum": sum(s["values"])})

    for r in rows:
        wm = None if top is None else top - max_delay
        if wm is not None:
            fire(wm)
        s = state.setdefault(r["k"], {"n": 0, "last": None, "values": []})
        if s["last"] is not None:
            timers.pop((r["k"], s["last"] + 1_000), None)
        s["n"] += 1
        s["last"] = r["ts"]
        if (r["k"], r["ts"] + 1_000) not in timers:
            seq += 1
            timers[(r["k"], r["ts"] + 1_000)] = seq
        s["values"].append(r["v"])
        if s["n"] % 5 == 0:
            side.append({"key": r["k"], "n": s["n"], "wm": wm})
        top = r["ts"] if top is None else max(top, r["ts"])
    fire(float("inf"))
    return out, side


def run(rows, batch_size, max_delay=200):
    flow = rh.Flow("proc")
    res = (
        flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay=f"{max_delay}ms")
        .key_by("k")
        .process(Sessionizer(), name="visits")
    )
    out, side = collect(res), collect(res.side_output("every5"))
    flow.run()
    return out.rows, side.rows


def _rows(seed, n=300):
    rnd = random.Random(seed)
    return [{"k": rnd.randrange(4), "ts": i * 150 + rnd.randrange(400), "v": rnd.randrange(10)} for i in range(n)]


@pytest.mark.parametrize("seed", [1, 2])
def test_matches_a_record_at_a_time_model_at_any_batch_size(seed, batch_size):
    rows = _rows(seed)
    expected = reference(rows, 200)
    assert expected[0]
    assert expected[1]
    assert run(rows, batch_size) == expected


def test_map_state_with_ttl_and_processing_time_timers():
    clock = ManualClock(start_ms=0)

    def fn(record, ctx):
        seen = ctx.state.map("merchants", ttl="10s")
        new = record["m"] not in seen
        seen.put(record["m"], record["amount"])
        ctx.emit({"card": ctx.key, "merchant": record["m"], "new": new, "known": sorted(seen.keys())})
        if record["amount"] > 100:
            ctx.timers.register_processing_time(ctx.now_ms + 5_000)

    def on_timer(ts, ctx):
        ctx.emit({"card": ctx.key, "merchant": "<review>", "new": False, "known": [f"due {ts}"]})

    script = [
        [{"card": "c", "m": "cafe", "amount": 5}],
        "4s",
        [{"card": "c", "m": "books", "amount": 500}],
        "7s",  # cafe (written at 0 s) expired at 10 s; books (4 s) still there
        [{"card": "c", "m": "cafe", "amount": 6}],
    ]
    flow = rh.Flow("ttl")
    out = collect(flow.source(ScriptedSource(script)).key_by("card").process(fn, on_timer=on_timer))
    flow.run(clock=clock)
    assert out.rows == [
        {"card": "c", "merchant": "cafe", "new": True, "known": ["cafe"]},
        {"card": "c", "merchant": "books", "new": True, "known": ["books", "cafe"]},
        {"card": "c", "merchant": "<review>", "new": False, "known": ["due 9000"]},
        {"card": "c", "merchant": "cafe", "new": True, "known": ["books", "cafe"]},
    ]


def test_value_and_list_state_with_ttl_in_a_flow():
    """Value state expires as a whole, list elements one by one, each from its last write."""
    clock = ManualClock(start_ms=0)

    def fn(record, ctx):
        last = ctx.state("last", ttl="10s")
        recent = ctx.state.list("recent", ttl="10s")
        ctx.emit({"k": ctx.key, "before": last.get(), "recent": recent.get()})
        last.set(record["v"])
        recent.append(record["v"])

    script = [[{"k": "a", "v": 1}], "6s", [{"k": "a", "v": 2}], "6s", [{"k": "a", "v": 3}], "11s", [{"k": "a", "v": 4}]]
    flow = rh.Flow("ttl2")
    out = collect(flow.source(ScriptedSource(script)).key_by("k").process(fn))
    flow.run(clock=clock)
    assert out.rows == [
        {"k": "a", "before": None, "recent": []},
        {"k": "a", "before": 1, "recent": [1]},
        {"k": "a", "before": 2, "recent": [2]},  # at 12 s: 1 (written at 0 s) expired, 2 (6 s) not
        {"k": "a", "before": None, "recent": []},  # at 23 s: everything older than 13 s is gone
    ]


def test_timers_with_a_datetime_time_column():
    base = datetime(2026, 1, 1, tzinfo=UTC)
    frame = pl.DataFrame({"k": ["a", "a"], "ts": [base, base + timedelta(seconds=3)]}).with_columns(
        pl.col("ts").cast(pl.Datetime("ms", "UTC"))
    )

    def fn(record, ctx):
        ctx.timers.register_event_time(record["ts"] + timedelta(seconds=1))

    def on_timer(ts, ctx):
        ctx.emit({"k": ctx.key, "fired": ts})

    flow = rh.Flow("dt")
    out = collect(flow.source(rh.io.Records(frame), time="ts").key_by("k").process(fn, on_timer=on_timer))
    flow.run()
    assert [r["fired"] for r in out.rows] == [base + timedelta(seconds=1), base + timedelta(seconds=4)]


def test_failures_in_process_and_on_timer_are_dead_letters():
    def fn(record, ctx):
        ctx.timers.register_event_time(record["ts"])
        if record["x"] == 0:
            raise ValueError("zero")
        ctx.emit({"inv": 1 / record["x"]})

    def on_timer(ts, ctx):
        raise RuntimeError("timer broke")

    flow = rh.Flow("err")
    out = collect(
        flow.source(rh.io.Records([{"k": 1, "x": 2, "ts": 0}, {"k": 1, "x": 0, "ts": 5}]), time="ts")
        .key_by("k")
        .process(fn, on_timer=on_timer, name="p")
    )
    bad = collect(flow.dead_letters())
    flow.run()
    assert out.rows == [{"inv": 0.5}]
    # The timer at 0 fires before the second record (its watermark is 0), the one at 5 at the end.
    assert [(b["operator"], b["reason"]) for b in bad.rows] == [
        ("process 'p'", "on_timer: RuntimeError: timer broke"),
        ("process 'p'", "ValueError: zero"),
        ("process 'p'", "on_timer: RuntimeError: timer broke"),
    ]
    assert bad.rows[0]["payload"] == '{"timer": 0, "key": 1, "domain": "event"}'


def test_function_or_object_and_clear_errors():
    flow = rh.Flow("api")
    keyed = flow.source(rh.io.Records([{"k": 1, "ts": 0}]), time="ts").key_by("k")
    with pytest.raises(rh.FlowError, match=r"process 'p': expected fn\(record, ctx\)"):
        keyed.process(42, name="p")
    with pytest.raises(rh.FlowError, match=r"side_output\(\): source 'source_1' is not a process function"):
        keyed.stream.side_output("x")


def test_state_and_timers_survive_a_crash(tmp_path):
    rows = _rows(7, n=400)
    expected = reference(rows, 200)

    def build(crash_after=None):
        flow = rh.Flow("proc-ckpt")
        res = (
            flow.source(rh.io.Records(rows, batch_size=25), time="ts", max_delay="200ms", name="in")
            .key_by("k")
            .process(Sessionizer(), name="visits")
        )
        res.sink(rh.io.FileSink(tmp_path / "out"), name="out")
        res.side_output("every5").sink(rh.io.FileSink(tmp_path / "side"), name="side")
        res.sink(crash_at_row(crash_after), name="watch")
        return flow

    for crash_after in (3, 40):
        with contextlib.suppress(Crash):
            build(crash_after).run(checkpoint_dir=tmp_path / "ckpt", checkpoint_every="0ms")
    build().run(checkpoint_dir=tmp_path / "ckpt", checkpoint_every="0ms")
    assert committed(tmp_path / "out") == expected[0]
    assert committed(tmp_path / "side") == expected[1]
