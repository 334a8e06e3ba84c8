"""NaN keys and event times at the int64 edges are processed or dead-lettered, never lost (issue 10, defect 8)."""

from __future__ import annotations

import pickle

import polars as pl
import pytest

import rheon as rh
from rheon.operators._keys import NAN_KEY
from rheon.testing import ScriptedSource, collect

NAN = float("nan")


class Count:
    """Counts per key; reports each key's count one second after its first record."""

    def process(self, record, ctx):
        n = ctx.state("n", default=0)
        if n.get() == 0:
            ctx.timers.register_event_time(record["ts"] + 1_000)
        n.set(n.get() + 1)

    def on_timer(self, timestamp, ctx):
        ctx.emit({"k": ctx.key, "n": ctx.state("n").get()})


def test_nan_keys_share_one_state_in_process_functions_issue_10(batch_size: int) -> None:
    keys = [NAN, 1.0, NAN, NAN, 1.0, NAN]
    rows = pl.DataFrame({"k": keys * 50, "ts": [i * 2 for i in range(300)]})
    flow = rh.Flow("nan")
    out = collect(flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts").key_by("k").process(Count()))
    flow.run()
    assert sorted((str(r["k"]), r["n"]) for r in out.rows) == [("1.0", 100), ("nan", 200)]


def test_nan_keys_of_several_columns_and_in_reduce_issue_10() -> None:
    rows = pl.DataFrame({"a": [NAN, NAN, 1.0, NAN], "b": ["x", "x", "x", "y"], "v": [1, 2, 3, 4]})
    flow = rh.Flow("nan")
    out = collect(
        flow.source(rh.io.Records(rows)).key_by("a", "b").reduce(lambda acc, r: {**r, "v": acc["v"] + r["v"]})
    )
    flow.run()
    assert [r["v"] for r in out.rows] == [1, 3, 3, 4]


def test_a_nan_key_survives_a_checkpoint_issue_10(tmp_path) -> None:
    """The key's state and timer are found again after a restore (the NaN unpickles as itself)."""
    assert pickle.loads(pickle.dumps((NAN_KEY, "x")))[0] is NAN_KEY
    rows = pl.DataFrame({"k": [NAN, NAN, NAN, 2.0], "ts": [0, 10, 20, 5_000]})
    emitted: list[dict] = []
    for _ in range(2):
        flow = rh.Flow("nan")
        stream = flow.source(rh.io.Records(rows, batch_size=1), time="ts")
        out = collect(stream.key_by("k").process(Count(), name="count"))
        stream.sink(lambda row, flow=flow: flow.stop() if row["ts"] == 10 else None, name="stop")
        flow.run(checkpoint_dir=str(tmp_path / "ckpt"))
        emitted += out.rows
    assert [(str(r["k"]), r["n"]) for r in emitted] == [("nan", 3), ("2.0", 1)]


EDGES = [2**63 - 1, -(2**63), 2**62, -(2**62) - 1]
"""Outside the range of ticks a flow handles: dead letters at the source, the watermark untouched."""
NEAR_END = 2**62 - 1
"""Inside it, but its window would end after the end of time: a dead letter at the window (it
comes last, since it moves the watermark there)."""


@pytest.mark.parametrize("kind", ["tumbling", "session"])
def test_event_times_at_the_int64_edges_are_dead_letters_not_lost_issue_10(kind: str) -> None:
    window = rh.tumbling("10s") if kind == "tumbling" else rh.session(gap="10s")
    rows = [{"k": "a", "ts": 1_000}, *({"k": "a", "ts": t} for t in EDGES), {"k": "a", "ts": 2_000}]
    rows.append({"k": "a", "ts": NEAR_END})
    flow = rh.Flow("edges")
    per_k = flow.source(rh.io.Records(rows, batch_size=2), time="ts").key_by("k").window(window).agg(n=rh.count())
    out, late, dead = collect(per_k), collect(per_k.late()), collect(flow.dead_letters())
    flow.run()
    assert sum(r["n"] for r in out.rows) == 2
    assert late.rows == []
    assert sorted(int(d["payload"].split('"ts": ')[1].rstrip("}")) for d in dead.rows) == sorted([*EDGES, NEAR_END])
    reasons = {d["payload"]: d["reason"] for d in dead.rows}
    assert "outside the range a flow can handle" in reasons[f'{{"k": "a", "ts": {2**63 - 1}}}']
    assert "would end after the end-of-input watermark" in reasons[f'{{"k": "a", "ts": {NEAR_END}}}']


def test_a_fractional_millisecond_is_not_truncated_issue_10() -> None:
    script = [pl.DataFrame({"k": ["a"], "ts": [1_000]}), pl.DataFrame({"k": ["a", "a"], "ts": [1_500.7, 2_000.0]})]
    flow = rh.Flow("frac")
    per_k = flow.source(ScriptedSource(script), time="ts").key_by("k").window(rh.tumbling("10s")).agg(n=rh.count())
    out, dead = collect(per_k), collect(flow.dead_letters())
    flow.run()
    assert [r["n"] for r in out.rows] == [2]
    assert [d["payload"] for d in dead.rows] == ['{"k": "a", "ts": 1500.7}']
    assert "unparseable event time in column 'ts' (expected Int64; got 1500.7)" in dead.rows[0]["reason"]


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (None, "record has no event time (column 'ts' is null)"),
        ("soon", "time column 'ts' has type String; expected int64 epoch milliseconds or a Datetime"),
        (True, "time column 'ts' has type Boolean"),
        ([1], "time column 'ts' has type List"),
    ],
)
def test_a_first_record_without_a_usable_time_does_not_stop_the_flow_issue_10(first: object, reason: str) -> None:
    """It is a dead letter, and the next records give the column its type."""
    script = [[{"k": "a", "ts": first}], [{"k": "a", "ts": 1_000}, {"k": "a", "ts": 2_000.0}]]
    flow = rh.Flow("first")
    per_k = flow.source(ScriptedSource(script), time="ts").key_by("k").window(rh.tumbling("10s")).agg(n=rh.count())
    out, dead = collect(per_k), collect(flow.dead_letters())
    flow.run()
    assert [r["n"] for r in out.rows] == [2]
    assert len(dead.rows) == 1
    assert reason in dead.rows[0]["reason"]
