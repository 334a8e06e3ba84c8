"""In-memory and synthetic sources, and simple sinks."""

from __future__ import annotations

import io

import polars as pl
import pytest

import rheon as rh
from rheon.testing import ManualClock, collect


def test_records_reads_a_lazy_iterable_in_batches(batch_size):
    def gen():
        for i in range(25):
            yield {"i": i}

    flow = rh.Flow("lazy")
    src = flow.source(rh.io.Records(gen(), batch_size=batch_size))
    assert src.schema is None
    out = collect(src)
    flow.run()
    assert [r["i"] for r in out.rows] == list(range(25))
    assert flow.metrics().operators[0]["batches"] == -(-25 // batch_size)


def test_records_from_a_dataframe_keeps_its_types():
    frame = pl.DataFrame({"a": [1, 2]}, schema={"a": pl.Int16})
    flow = rh.Flow("df")
    out = collect(flow.source(rh.io.Records(frame)))
    flow.run()
    assert out.to_polars().schema == frame.schema


def test_records_rejects_bad_batch_sizes():
    with pytest.raises(rh.FlowError, match="batch_size must be at least 1"):
        rh.io.Records([], batch_size=0)


def test_generator_paces_events_on_the_flows_clock_and_stamps_them():
    clock = ManualClock(start_ms=1_000_000)
    flow = rh.Flow("paced")
    out = collect(flow.source(rh.io.Generator(lambda i: {"i": i}, rate=4, limit=8, timestamp="ts"), time="ts"))
    flow.run(clock=clock)
    assert [r["ts"] for r in out.rows] == [1_000_000 + 250 * i for i in range(8)]
    assert clock.now_ns() // 1_000_000 >= 1_000_000 + 1_750


@pytest.mark.parametrize("rate", [0, -1])
def test_generator_rejects_bad_rates(rate):
    with pytest.raises(rh.FlowError, match="rate must be a positive number"):
        rh.io.Generator(lambda i: {}, rate=rate)


def test_console_prints_json_lines():
    buf = io.StringIO()
    flow = rh.Flow("console")
    flow.source(rh.io.Records([{"a": 1, "b": "x"}, {"a": 2, "b": None}])).sink(rh.io.Console(stream=buf))
    flow.run()
    assert buf.getvalue() == '{"a": 1, "b": "x"}\n{"a": 2, "b": null}\n'


def test_callback_per_batch():
    frames = []
    flow = rh.Flow("cb")
    flow.source(rh.io.Records([{"a": i} for i in range(5)], batch_size=2)).sink(
        rh.io.Callback(frames.append, batch=True)
    )
    flow.run()
    assert [f.height for f in frames] == [2, 2, 1]


def test_a_failing_sink_stops_the_run_with_a_clear_error():
    def boom(row):
        raise OSError("disk full")

    flow = rh.Flow("sinkfail")
    flow.source(rh.io.Records([{"a": 1}])).sink(boom, name="out")
    with pytest.raises(rh.SinkError, match=r"sink 'out': write failed: OSError: disk full"):
        flow.run()


def test_rows_a_sink_gives_up_on_become_dead_letters():
    class Picky(rh.io.Sink):
        def build(self, ctx):
            class Logic(rh.io.SinkLogic):
                def __init__(self):
                    self.rejected = []

                def write(self, frame):
                    self.rejected += [("negative", f'{{"x": {x}}}') for x in frame["x"] if x < 0]

                def take_dead_letters(self):
                    out, self.rejected = self.rejected, []
                    return out

            return Logic()

    flow = rh.Flow("picky")
    flow.source(rh.io.Records([{"x": 1}, {"x": -2}])).sink(Picky(), name="db")
    bad = collect(flow.dead_letters())
    flow.run()
    assert bad.rows == [{"operator": "sink 'db'", "reason": "negative", "payload": '{"x": -2}'}]
