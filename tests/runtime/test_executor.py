"""The run loop: graphs, several sources, idleness, unbounded runs, stopping, error policies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import polars as pl
import pytest

import rheon as rh
from rheon.core.batch import SPLIT_COL
from rheon.testing import ManualClock, ScriptedSource, collect


def test_one_stream_feeds_several_branches_and_sinks(batch_size):
    rows = [{"k": i % 3, "v": i, "ts": i * 100} for i in range(30)]
    flow = rh.Flow("fanout")
    src = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts")
    evens = collect(src.filter(rh.col("v") % 2 == 0))
    doubled = collect(src.with_columns(v2=rh.col("v") * 2))
    windows = collect(src.key_by("k").window(rh.tumbling("1s")).agg(n=rh.count()))
    everything = collect(src)
    flow.run()
    assert [r["v"] for r in evens.rows] == list(range(0, 30, 2))
    assert [r["v2"] for r in doubled.rows] == [2 * v for v in range(30)]
    assert sum(r["n"] for r in windows.rows) == 30
    assert len(windows.rows) == 9  # 3 keys x 3 seconds
    assert everything.rows == rows


def test_diamond_graph_rejoins_branches():
    rows = [{"v": i} for i in range(10)]
    flow = rh.Flow("diamond")
    src = flow.source(rh.io.Records(rows, batch_size=3))
    low = src.filter(rh.col("v") < 5).with_columns(side=rh.lit("low"))
    high = src.filter(lambda r: r["v"] >= 5).map(lambda r: {**r, "side": "high"})
    out = collect(low.union(high))
    flow.run()
    assert sorted((r["v"], r["side"]) for r in out.rows) == [(v, "low" if v < 5 else "high") for v in range(10)]


def test_union_watermark_is_the_minimum_of_its_inputs():
    """A fast source must not make a slower one's events late."""
    fast = [{"ts": 0}, {"ts": 100_000}]
    slow = [{"ts": 500}, {"ts": 600}, {"ts": 700}]
    flow = rh.Flow("min-wm")
    a = flow.source(rh.io.Records(fast, batch_size=1), time="ts")
    b = flow.source(rh.io.Records(slow, batch_size=1), time="ts")
    win = a.union(b).window(rh.tumbling("1s")).agg(n=rh.count())
    out, late = collect(win), collect(win.late())
    flow.run()
    assert late.rows == []
    assert out.rows == [
        {"window_start": 0, "window_end": 1000, "n": 4},
        {"window_start": 100_000, "window_end": 101_000, "n": 1},
    ]


def _idle_flow(idle_timeout: str | None) -> tuple[rh.Flow, rh.io.Collect]:
    flow = rh.Flow("idle")
    busy = flow.source(ScriptedSource([[{"ts": 100}], "1s", [{"ts": 5_000}]], end=False), time="ts")
    quiet = flow.source(ScriptedSource([], end=False), time="ts", idle_timeout=idle_timeout)
    out = collect(busy.union(quiet).window(rh.tumbling("1s")).agg(n=rh.count()))
    return flow, out


def test_idle_source_holds_the_watermark_back_without_idle_timeout():
    flow, out = _idle_flow(None)
    flow.run(duration="10s", clock=ManualClock())
    assert out.rows == []
    assert flow.metrics().watermark_ms is None or flow.metrics().watermark_ms < 1000


def test_idle_timeout_lets_the_others_advance():
    flow, out = _idle_flow("2s")
    flow.run(duration="10s", clock=ManualClock())
    assert out.rows == [{"window_start": 0, "window_end": 1000, "n": 1}]


def test_source_that_wakes_up_counts_again():
    flow = rh.Flow("wake")
    busy = flow.source(ScriptedSource([[{"ts": 100}], "3s", [{"ts": 9_000}], "3s", [{"ts": 20_000}]]), time="ts")
    sleepy = flow.source(ScriptedSource(["2s", [{"ts": 200}], "10s", [{"ts": 30_000}]]), time="ts", idle_timeout="1s")
    win = busy.union(sleepy).window(rh.tumbling("1s")).agg(n=rh.count())
    out, late = collect(win), collect(win.late())
    flow.run(clock=ManualClock())
    # ts=200 arrives after 2s, when the sleepy source was idle and busy had not yet moved past 100.
    assert out.rows[0] == {"window_start": 0, "window_end": 1000, "n": 2}
    assert late.rows == []


class _OneBusyPartition(rh.io.Source):
    """Partition p0 always has data (the clock moves 100 ms a batch); p1 never has any."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock

    def build(self, ctx):
        source = self

        class Logic(rh.io.SourceLogic):
            t = 0

            def next_batch(self):
                source.clock.advance("100ms")
                ts = list(range(self.t, self.t + 100))
                self.t += 100
                return pl.DataFrame({"ts": ts, SPLIT_COL: ["p0"] * 100})

            def done(self):
                return False

            def splits(self):
                return ["p0", "p1"]

        return Logic()


@pytest.mark.parametrize("idle_timeout", [None, "500ms"])
def test_a_quiet_partition_stops_counting_while_another_is_busy(idle_timeout):
    clock = ManualClock()
    flow = rh.Flow("partitions")
    src = flow.source(_OneBusyPartition(clock), time="ts", idle_timeout=idle_timeout)
    out = collect(src.window(rh.tumbling("1s")).agg(n=rh.count()))
    flow.run(duration="3s", clock=clock)
    if idle_timeout is None:
        assert out.rows == []  # the empty partition holds the watermark back, as it should
    else:
        assert len(out.rows) >= 2
        assert out.rows[0] == {"window_start": 0, "window_end": 1000, "n": 1000}


def test_generator_runs_until_duration_on_a_manual_clock():
    flow = rh.Flow("gen")
    out = collect(flow.source(rh.io.Generator(lambda i: {"i": i}, rate=100)))
    flow.run(duration="2s", clock=ManualClock())
    assert 195 <= len(out) <= 202
    assert [r["i"] for r in out.rows] == list(range(len(out)))


def test_at_low_rates_a_batch_is_whatever_is_available():
    """Events arriving one by one are processed one by one: no waiting to fill a batch."""
    flow = rh.Flow("lowrate")
    src = flow.source(rh.io.Generator(lambda i: {"i": i}, rate=10, timestamp="ts"), time="ts")
    out = collect(src)
    flow.run(duration="5s", clock=ManualClock())
    stats = flow.metrics()
    source_stats = stats.operators[0]
    assert source_stats["rows_in"] == len(out) >= 45
    assert source_stats["batches"] == source_stats["rows_in"]
    assert stats.latency_p99_ms is not None  # measured per record at the sink


class _CountedGenerator(rh.io.Generator):
    """A Generator that counts how often the flow reads it."""

    def build(self, ctx):
        logic = super().build(ctx)
        self.reads = 0
        read = logic.next_batch

        def counted():
            self.reads += 1
            return read()

        logic.next_batch = counted
        return logic


def _batches_read(source: rh.io.Source, clock: ManualClock) -> list[tuple[int, list[int]]]:
    """Per batch: how long (ms) its oldest event had been due when the sink had it, and its events."""
    batches: list[tuple[int, list[int]]] = []

    def write(frame: pl.DataFrame) -> None:
        batches.append((clock.now_ns() // 1_000_000 - frame["ts"].min(), frame["i"].to_list()))

    flow = rh.Flow("paced")
    flow.source(source, time="ts").sink(rh.io.Callback(write, batch=True))
    flow.run(clock=clock)
    return batches


def test_a_busy_source_with_a_batch_interval_is_read_once_per_interval():
    """At 1,000 events/s a source read at most once per 10 ms hands out 10 events a batch, none
    waiting longer than the interval, and is not polled in between (the loop sleeps until the
    interval has passed)."""
    clock = ManualClock(start_ms=0)
    source = _CountedGenerator(lambda i: {"i": i}, rate=1000, limit=100, timestamp="ts", min_batch_interval="10ms")
    batches = _batches_read(source, clock)
    assert [events for _, events in batches] == [[0]] + [list(range(i, i + 10)) for i in range(1, 91, 10)] + [
        list(range(91, 100))
    ]
    assert max(waited for waited, _ in batches) == 9  # event 1 was due at 1 ms and read at 10 ms
    assert source.reads <= len(batches) + 2


def test_a_batch_interval_does_not_delay_an_event_after_a_quiet_spell():
    """Events further apart than the interval each go through alone, the moment they are due."""
    clock = ManualClock(start_ms=0)
    source = rh.io.Generator(lambda i: {"i": i}, rate=10, limit=5, timestamp="ts", min_batch_interval="10ms")
    assert _batches_read(source, clock) == [(0, [i]) for i in range(5)]


def test_batch_interval_must_be_a_duration():
    with pytest.raises(rh.FlowError, match="Generator: min_batch_interval: cannot read duration 'soon'"):
        rh.io.Generator(lambda i: {}, rate=10, min_batch_interval="soon")


def test_generator_limit_makes_it_bounded():
    flow = rh.Flow("bounded")
    out = collect(flow.source(rh.io.Generator(lambda i: {"i": i} if i % 2 else None, rate=1e6, limit=10)))
    flow.run()
    assert [r["i"] for r in out.rows] == [1, 3, 5, 7, 9]


def test_stop_from_another_thread():
    flow = rh.Flow("stoppable")
    out = collect(flow.source(rh.io.Generator(lambda i: {"i": i}, rate=2_000)))
    threading.Timer(0.3, flow.stop).start()
    t0 = time.monotonic()
    flow.run()
    assert time.monotonic() - t0 < 30  # it returned at all; the bound only guards a hang
    assert len(out) > 0
    assert flow.metrics().running is False


def test_drain_fires_open_windows_when_stopped():
    rows = [{"ts": 100}]
    for drain, expected in ((False, []), (True, [{"window_start": 0, "window_end": 1000, "n": 1}])):
        flow = rh.Flow("drain")
        src = flow.source(ScriptedSource([rows], end=False), time="ts")
        out = collect(src.window(rh.tumbling("1s")).agg(n=rh.count()))
        flow.run(duration="1s", drain=drain, clock=ManualClock())
        assert out.rows == expected


SCRIPT = textwrap.dedent(
    """
    import sys
    import rheon as rh

    flow = rh.Flow("forever")
    seen = []

    def record(row):
        seen.append(row)
        if len(seen) == 5:
            print("running", flush=True)

    src = flow.source(rh.io.Generator(lambda i: {"i": i}, rate=500))
    src.sink(record)
    flow.run()
    print(f"stopped cleanly after {len(seen)} records", flush=True)
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_stop_an_unbounded_run_cleanly(tmp_path: Path, sig: signal.Signals):
    script = tmp_path / "forever.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ}
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "running"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.startswith("stopped cleanly after "), (out, err)


def test_on_error_policies():
    rows = [{"x": 1}, {"x": 0}, {"x": 2}]

    def build(policy: str) -> tuple[rh.Flow, rh.io.Collect, rh.io.Collect]:
        flow = rh.Flow("p", on_error=policy)
        good = collect(flow.source(rh.io.Records(rows)).map(lambda r: {"y": 10 // r["x"]}, name="div"))
        return flow, good, collect(flow.dead_letters())

    flow, good, bad = build("dead_letter")
    flow.run()
    assert good.rows == [{"y": 10}, {"y": 5}]
    assert bad.rows == [
        {
            "operator": "map 'div'",
            "reason": "ZeroDivisionError: integer division or modulo by zero",
            "payload": '{"x": 0}',
        }
    ]

    flow, good, bad = build("skip")
    flow.run()
    assert good.rows == [{"y": 10}, {"y": 5}]
    assert bad.rows == []
    assert flow.metrics().dead_letters == 1

    flow, good, bad = build("fail")
    with pytest.raises(
        rh.RecordError,
        match=r"map 'div': ZeroDivisionError: integer division or modulo by zero \(record: \{\"x\": 0\}\)",
    ) as info:
        flow.run()
    assert info.value.operator == "map 'div'"


def test_records_without_event_time_go_to_dead_letters(batch_size):
    rows = [{"k": 1, "ts": 10}, {"k": 1, "ts": None}, {"k": 1}, {"k": 1, "ts": 20}]
    flow = rh.Flow("no-time")
    src = flow.source(rh.io.Records(iter(rows), batch_size=batch_size), time="ts", name="in")
    out = collect(src.key_by("k").window(rh.tumbling("1s")).agg(n=rh.count()))
    bad = collect(flow.dead_letters())
    flow.run()
    assert out.rows == [{"k": 1, "window_start": 0, "window_end": 1000, "n": 2}]
    assert len(bad.rows) == 2
    assert {r["operator"] for r in bad.rows} == {"source 'in'"}
    assert all("no event time (column 'ts' is" in r["reason"] for r in bad.rows)
    assert flow.metrics().dead_letters == 2


def test_unconsumed_dead_letters_are_kept_and_logged(caplog):
    flow = rh.Flow("kept")
    flow.source(rh.io.Records([{"x": "a"}, {"x": "b"}])).map(lambda r: {"n": int(r["x"])}).sink(rh.io.Collect())
    with caplog.at_level("WARNING", logger="rheon"):
        flow.run()
    stats = flow.metrics()
    assert [r["payload"] for r in stats.unhandled_dead_letters] == ['{"x": "a"}', '{"x": "b"}']
    assert "dead_letter operator=map 'map_1'" in caplog.text


@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
@pytest.mark.parametrize("zone", ["UTC", None, "Europe/Paris"])
@pytest.mark.parametrize(
    "window",
    [rh.sliding("2s", every="1s"), rh.tumbling("1s"), rh.session(gap="500ms")],
    ids=["sliding", "tumbling", "session"],
)
def test_datetime_time_column_gives_datetime_window_bounds(unit, zone, window, batch_size):
    base = [{"k": "a", "ts": t} for t in (0, 400, 1_100, 1_900, 2_500, 300)]  # the last one is late
    frame = pl.DataFrame(base).with_columns(pl.from_epoch("ts", time_unit="ms").cast(pl.Datetime(unit, zone)))
    outs, lates = [], []
    for data in (pl.DataFrame(base), frame):
        flow = rh.Flow("dt")
        src = flow.source(rh.io.Records(data, batch_size=batch_size), time="ts", max_delay="100ms")
        win = src.key_by("k").window(window, allowed_lateness="1s").agg(n=rh.count())
        out, late = collect(win), collect(win.late())
        flow.run()
        outs.append(out.to_polars())
        lates.append(late.to_polars())
    ints, dts = outs
    assert dts.schema["window_start"] == pl.Datetime(unit, zone)
    assert dts.schema["window_end"] == pl.Datetime(unit, zone)
    as_ms = dts.with_columns(pl.col("window_start", "window_end").dt.epoch("ms"))
    assert as_ms.to_dicts() == ints.to_dicts()
    assert ints.height >= 2
    # Late records keep their Datetime time column (the sliding window still takes ts=300).
    assert lates[0].height == (0 if window.__class__.__name__ == "Sliding" else 1)
    if lates[0].height:
        assert lates[1].schema["ts"] == pl.Datetime(unit, zone)
        assert lates[1].with_columns(pl.col("ts").dt.epoch("ms")).to_dicts() == lates[0].to_dicts()


def test_a_flow_runs_again_from_scratch():
    flow = rh.Flow("again")
    out = collect(flow.source(rh.io.Records([{"k": 1, "ts": 5}]), time="ts").key_by("k").reduce(lambda a, r: r))
    flow.run()
    first = out.rows
    flow.run()
    assert out.rows == first == [{"k": 1, "ts": 5}]


def test_integer_time_columns_of_any_width():
    frame = pl.DataFrame({"ts": [10, 1_500]}, schema={"ts": pl.Int32})
    flow = rh.Flow("i32")
    out = collect(flow.source(rh.io.Records(frame), time="ts").window(rh.tumbling("1s")).agg(n=rh.count()))
    flow.run()
    assert out.rows == [
        {"window_start": 0, "window_end": 1000, "n": 1},
        {"window_start": 1000, "window_end": 2000, "n": 1},
    ]


def test_windows_of_windows_use_window_start_as_event_time(batch_size):
    rows = [{"k": 1, "ts": t} for t in range(0, 10_000, 250)]
    flow = rh.Flow("cascade")
    per_second = (
        flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts")
        .key_by("k")
        .window(rh.tumbling("1s"))
        .agg(n=rh.count())
    )
    per_five = per_second.key_by("k").window(rh.tumbling("5s")).agg(windows=rh.count(), n=rh.sum("n"))
    out, late = collect(per_five), collect(per_five.late())
    flow.run()
    assert late.rows == []
    assert out.rows == [
        {"k": 1, "window_start": 0, "window_end": 5000, "windows": 5, "n": 20},
        {"k": 1, "window_start": 5000, "window_end": 10000, "windows": 5, "n": 20},
    ]


def test_explain_shows_fused_python_steps():
    flow = rh.Flow("plan")
    src = flow.source(rh.io.Records([{"x": 1, "ts": 0}]), time="ts", name="in")
    src.filter(lambda r: True, name="a").map(lambda r: r, name="b").filter(rh.col("x") > 0, name="c").sink(
        print, name="out"
    )
    assert flow.explain().splitlines() == [
        "flow 'plan'",
        "  source 'in' time='ts': Records(1 rows, batch_size=1000)",
        "  chain 'a+b' <- in",
        "  filter 'c' <- b: [(col(\"x\")) > (dyn int: 0)]",
        "  sink 'out' <- c: Callback",
    ]


def test_unparseable_event_times_are_dead_letters_and_the_flow_goes_on(batch_size):
    # Times as text (from a JSON source whose first record had one): numbers written as text are
    # numbers, other text is not.
    times = ["0", "100", "yesterday", "1200", "soon", "1500"]
    batches = [pl.DataFrame({"ts": times[i : i + batch_size]}) for i in range(0, len(times), batch_size)]
    flow = rh.Flow("badtime")
    src = flow.source(ScriptedSource(batches), time="ts", name="in")
    out = collect(src.window(rh.tumbling("1s")).agg(n=rh.count()))
    bad = collect(flow.dead_letters())
    flow.run()
    assert [(r["window_start"], r["n"]) for r in out.rows] == [(0, 2), (1000, 2)]
    assert len(bad.rows) == 2
    assert all(b["reason"].startswith("unparseable event time in column 'ts' (expected Int64") for b in bad.rows)
    assert {b["payload"] for b in bad.rows} == {'{"ts": "yesterday"}', '{"ts": "soon"}'}


class _Pushed(rh.io.Source):
    """Rows handed in by the test's thread, which wakes the flow (``BuildContext.wake``) when it
    does, as a message client would; counts how often the flow polled it."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.polls = 0
        self.logic: _PushedLogic | None = None

    def build(self, ctx):
        self.logic = _PushedLogic(self, ctx.wake)
        return self.logic


class _PushedLogic(rh.io.SourceLogic):
    wakes_loop = True

    def __init__(self, source: _Pushed, wake: threading.Event) -> None:
        self.source, self.wake = source, wake

    def push(self, row: dict) -> None:
        self.source.rows.append(row)
        self.wake.set()

    def next_batch(self):
        self.source.polls += 1
        rows, self.source.rows = self.source.rows, []
        return pl.DataFrame(rows) if rows else None

    def done(self) -> bool:
        return False


def test_a_source_that_wakes_the_loop_is_not_polled_while_idle_and_its_data_goes_through():
    source = _Pushed()
    flow = rh.Flow("woken")
    out = rh.io.Collect()
    flow.source(source).sink(out)
    runner = threading.Thread(target=flow.run, kwargs={"handle_signals": False})
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while source.logic is None or source.polls == 0:
            assert time.monotonic() < deadline, "the flow did not start"
            time.sleep(0.01)
        before, started = source.polls, time.monotonic()
        time.sleep(0.5)  # idle on purpose: count the polls meanwhile (a 2 ms poll would be ~250)
        idle_polls, idle_s = source.polls - before, time.monotonic() - started
        assert idle_polls <= 5 + idle_s / 0.05 * 1.5  # a sleep of up to 50 ms between polls
        source.logic.push({"x": 1})
        while len(out) < 1:
            assert time.monotonic() < deadline, "the pushed row did not arrive"
            time.sleep(0.01)
    finally:
        flow.stop()
        runner.join(60)
    assert not runner.is_alive()
    assert out.rows == [{"x": 1}]
