"""In-memory and synthetic sources, and simple sinks."""

from __future__ import annotations

import contextlib
import io

import polars as pl
import pytest

import rheon as rh
from rheon.testing import ManualClock, collect
from tests.crash import Crash


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


# -- dicts are typed as JSON sources type their records: drift is a dead letter -----------------------

_DRIFT = [
    {"a": {"b": 1}, "n": 1, "f": True, "s": {"x": 1}, "ts": 1},
    {"a": 1.5, "ts": 2},  # a number where "a" was an object
    {"n": "1", "ts": 3},  # text where "n" was an integer
    {"n": True, "ts": 4},  # a boolean where it was an integer
    {"f": 1, "ts": 5},  # a number where "f" was a boolean
    {"s": [1], "ts": 6},  # a list where "s" was an object
    {"a": {"b": 2}, "n": 7, "f": False, "s": {"x": 2}, "ts": 7},
]


@pytest.mark.parametrize("lazy", [False, True], ids=["list", "iterable"])
def test_records_values_whose_type_drifts_are_dead_letters_not_converted(batch_size, lazy):
    flow = rh.Flow("drift")
    data = iter(_DRIFT) if lazy else _DRIFT
    src = flow.source(rh.io.Records(data, batch_size=batch_size), time="ts", name="in")
    out, bad = collect(src), collect(flow.dead_letters())
    total = collect(src.window(rh.tumbling("1s")).agg(n=rh.sum("n"), rows=rh.count()))
    flow.run()
    assert out.rows == [
        {"a": {"b": 1}, "n": 1, "f": True, "s": {"x": 1}, "ts": 1},
        {"a": {"b": 2}, "n": 7, "f": False, "s": {"x": 2}, "ts": 7},
    ]
    assert total.rows == [{"window_start": 0, "window_end": 1000, "n": 8, "rows": 2}]
    assert [(b["operator"], b["reason"].split(", but")[0], b["payload"]) for b in bad.rows] == [
        ("source 'in'", "field 'a' is 1.5 (a float)", '{"a": 1.5, "ts": 2}'),
        ("source 'in'", "field 'n' is \"1\" (a string)", '{"n": "1", "ts": 3}'),
        ("source 'in'", "field 'n' is true (a boolean)", '{"n": true, "ts": 4}'),
        ("source 'in'", "field 'f' is 1 (an integer)", '{"f": 1, "ts": 5}'),
        ("source 'in'", "field 's' is [1] (a list)", '{"s": [1], "ts": 6}'),
    ]
    assert flow.metrics().dead_letters == 5


def test_records_a_float_where_an_integer_was_is_a_dead_letter_once_the_type_is_fixed():
    flow = rh.Flow("ints")
    out = collect(flow.source(rh.io.Records(iter([{"v": 1}, {"v": 1.5}, {"v": 2}]), batch_size=1)))
    bad = collect(flow.dead_letters())
    flow.run()
    assert (out.rows, [b["payload"] for b in bad.rows]) == ([{"v": 1}, {"v": 2}], ['{"v": 1.5}'])
    # In one batch ints and floats make a float column, as in a JSON source: nothing is lost.
    flow = rh.Flow("floats")
    out = collect(flow.source(rh.io.Records([{"v": 1}, {"v": 1.5}])))
    flow.run()
    assert out.to_polars()["v"].to_list() == [1.0, 1.5]


def test_records_columns_keep_their_first_seen_order_and_a_window_keeps_running():
    rows = [{"k": "a", "ts": 1000}, {"ts": 2000, "k": "a"}, {"k": "a", "ts": 25000}, {"extra": 1, "ts": 26000}]
    flow = rh.Flow("order")
    src = flow.source(rh.io.Records(iter(rows), batch_size=1), time="ts", name="in")
    columns: list[list[str]] = []
    src.sink(rh.io.Callback(lambda frame: columns.append(frame.columns), batch=True))
    counts = collect(src.key_by("k").window(rh.tumbling("10s")).agg(n=rh.count()))
    flow.run()
    assert columns == [["k", "ts"], ["k", "ts"], ["k", "ts"], ["k", "ts", "extra"]]
    fired = sorted((r["window_start"], r["k"] or "", r["n"]) for r in counts.rows)
    assert fired == [(0, "a", 2), (20000, "", 1), (20000, "a", 1)]


def test_records_odd_rows_are_dead_letters_and_the_flow_goes_on():
    deep: object = 1
    for _ in range(3_000):  # deeper than Python's recursion limit
        deep = [deep]
    rows = [{"v": 1}, {"v": deep}, "not a dict", {1: "x"}, {f"f{i}": i for i in range(2_000)}, {"v": 2}]
    flow = rh.Flow("odd")
    out, bad = collect(flow.source(rh.io.Records(iter(rows), batch_size=1000), name="in")), collect(flow.dead_letters())
    flow.run()
    assert [r["v"] for r in out.rows] == [1, 2]
    assert [b["reason"] for b in bad.rows] == [
        "nested more than max_depth=16 levels deep",
        "expected a dict of column -> value, got str",
        "field names must be text (got 1)",
        "has more than max_fields=1000 distinct fields",
    ]
    assert bad.rows[0]["payload"].startswith("{'v': [[[[[")


def test_records_dead_letters_of_a_list_come_once_across_a_restart(tmp_path):
    rows = [{"v": 1}, {"v": "x"}, {"v": 2}, {"v": "y"}, {"v": 3}]
    seen: list[int] = []

    def crash_at_3(row: dict) -> None:
        seen.append(row["v"])
        if row["v"] == 3 and seen.count(3) == 1:
            raise Crash

    letters = []
    for _ in range(2):
        flow = rh.Flow("restart")
        flow.source(rh.io.Records(rows, batch_size=1), name="in").sink(crash_at_3)
        bad = collect(flow.dead_letters())
        with contextlib.suppress(Crash):
            flow.run(checkpoint_dir=tmp_path, checkpoint_every="0ms")
        letters += [b["payload"] for b in bad.rows]
    assert seen == [1, 2, 3, 3]
    assert letters == ['{"v": "x"}', '{"v": "y"}']


def test_generator_values_are_never_converted_issue_10():
    """A generated field that changes type within a batch (text among numbers) is a dead letter
    naming it, not turned into text with the numbers."""
    flow = rh.Flow("gen")
    gen = rh.io.Generator(lambda i: {"i": i, "v": "five" if i == 3 else i}, rate=1_000_000, limit=6)
    out, dead = collect(flow.source(gen)), collect(flow.dead_letters())
    flow.run()
    assert [r["v"] for r in out.rows] == [0, 1, 2, 4, 5]
    assert [d["payload"] for d in dead.rows] == ['{"i": 3, "v": "five"}']
    assert dead.rows[0]["reason"].startswith("Generator: field 'v' is \"five\" (a string)")
