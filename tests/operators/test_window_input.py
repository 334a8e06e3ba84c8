"""Windows take records whose fields come in any order, missing, extra, or of drifting types (issue 10)."""

from __future__ import annotations

import polars as pl
import pytest

import rheon as rh
from rheon.testing import ScriptedSource, collect

WINDOWS = {
    "tumbling": rh.tumbling("10s"),
    "sliding": rh.sliding("10s", every="5s"),
    "session": rh.session(gap="5s"),
}


def _run(source: rh.io.Source, window: object, **aggs: object) -> tuple[list[dict], list[dict], list[dict]]:
    flow = rh.Flow("input")
    stream = flow.source(source, time="ts")
    per_k = stream.key_by("k").window(window).agg(**(aggs or {"n": rh.count(), "total": rh.sum("v")}))
    out, late, dead = collect(per_k), collect(per_k.late()), collect(flow.dead_letters())
    flow.run()
    return out.rows, late.rows, dead.rows


@pytest.mark.parametrize("kind", WINDOWS)
def test_columns_in_any_order_missing_or_extra_issue_10(kind: str, batch_size: int) -> None:
    rows = [
        {"k": "a", "ts": 1_000, "v": 1},
        {"ts": 2_000, "k": "a", "v": 2},  # reordered
        {"v": 3, "k": "b", "ts": 3_000, "extra": "x"},  # an extra field
        {"k": "a", "ts": 4_000},  # v missing: a null, counted by count()
        {"k": "a", "ts": 25_000, "v": 5, "more": [1]},
        {"ts": 1_500, "v": 7, "k": "a"},  # behind the watermark: late, or an update
    ]
    got, late, dead = _run(rh.io.Records(rows, batch_size=batch_size), WINDOWS[kind])
    canonical = [{"k": r["k"], "ts": r["ts"], "v": r.get("v")} for r in rows]
    want, want_late, _ = _run(rh.io.Records(pl.DataFrame(canonical), batch_size=1000), WINDOWS[kind])
    assert got == want
    assert dead == []
    assert [(r["k"], r["ts"], r["v"]) for r in late] == [(r["k"], r["ts"], r["v"]) for r in want_late]
    assert sum(r["n"] for r in got) >= len(rows) - len(late)


def test_the_exact_crash_of_the_issue_10() -> None:
    rows = iter([{"k": "a", "ts": 1000}, {"ts": 2000, "k": "a"}, {"k": "a", "ts": 25000}])
    got, _, dead = _run(rh.io.Records(rows, batch_size=1), rh.tumbling("10s"), n=rh.count())
    assert got == [
        {"k": "a", "window_start": 0, "window_end": 10_000, "n": 2},
        {"k": "a", "window_start": 20_000, "window_end": 30_000, "n": 1},
    ]
    assert dead == []


def _drifting(rows: list[dict]) -> rh.io.Source:
    return ScriptedSource([pl.DataFrame([row]) for row in rows])


DRIFT = [
    {"k": 1, "ts": 1_000, "v": 10},
    {"k": "1", "ts": 2_000, "v": 20},  # the key as text
    {"ts": 3_000, "k": 1, "v": 2.0},  # 2.0 is the integer 2: kept
    {"k": 1, "ts": 4_000, "v": 2.5},  # 2.5 is not an integer
    {"k": 1, "ts": 4_500, "v": 4.0},
    {"k": 1, "ts": 30_000, "v": 1},
]


@pytest.mark.parametrize("kind", WINDOWS)
@pytest.mark.parametrize("where", ["source", "window"])
def test_a_field_keeps_its_type_between_batches_issue_10(kind: str, where: str) -> None:
    """A key that was an integer and comes as text is not merged with the integer key (nor
    turned into text): the record is a dead letter naming field, value and type. The source
    catches what it reads; the window what meets in a union (a user function's output is
    checked by the function's operator)."""
    flow = rh.Flow("input")
    if where == "source":
        stream = flow.source(_drifting(DRIFT), time="ts")
    else:  # each source is uniform; their union is not
        fitting = [row for i, row in enumerate(DRIFT) if i not in (1, 3)]
        stream = flow.source(_drifting(fitting), time="ts")
        for odd in (DRIFT[1], DRIFT[3]):
            stream = stream.union(flow.source(_drifting([odd]), time="ts"))
    per_k = stream.key_by("k").window(WINDOWS[kind]).agg(n=rh.count(), total=rh.sum("v"))
    out, dead = collect(per_k), collect(flow.dead_letters())
    flow.run()
    first = out.rows[0]
    assert first["k"] == 1
    assert (first["n"], first["total"]) == (3, 16)
    assert isinstance(first["total"], int)
    assert [d["payload"] for d in dead.rows] == ['{"k": "1", "ts": 2000, "v": 20}', '{"k": 1, "ts": 4000, "v": 2.5}']
    assert "field 'k' is '1' (String), but this stream has had it as Int64" in dead.rows[0]["reason"]
    assert "field 'v' is 2.5 (Float64), but this stream has had it as Int64" in dead.rows[1]["reason"]
    assert dead.rows[0]["operator"].startswith(f"{where} ")


def test_a_sum_over_a_field_first_seen_without_values_issue_10() -> None:
    """No type yet for ``v`` (missing, then null): it is read as Float64 until values come."""
    script = [
        pl.DataFrame({"k": ["a"], "ts": [1_000]}),
        pl.DataFrame({"k": ["a"], "ts": [2_000], "v": [None]}),
        pl.DataFrame({"k": ["a"], "ts": [3_000], "v": [4]}),
        pl.DataFrame({"k": ["a"], "ts": [30_000], "v": [1]}),
    ]
    got, _, dead = _run(ScriptedSource(script), rh.tumbling("10s"), n=rh.count(), total=rh.sum("v"), avg=rh.mean("v"))
    assert got[0] == {"k": "a", "window_start": 0, "window_end": 10_000, "n": 3, "total": 4.0, "avg": 4.0}
    assert dead == []


def test_types_survive_a_checkpoint_issue_10(tmp_path) -> None:
    """After a restart the window still knows the types it had: text for an integer key is refused."""
    rows = pl.DataFrame({"k": [1, 1, 1], "ts": [1_000, 2_000, 3_000]})
    dead: list[dict] = []
    for _ in range(2):
        flow = rh.Flow("types")
        stream = flow.source(rh.io.Records(rows, batch_size=1), time="ts")
        stream = stream.map(lambda r: {**r, "k": "x" if r["ts"] == 2_000 else r["k"]})  # drift after the restart
        per_k = stream.key_by("k").window(rh.tumbling("10s"), name="w").agg(n=rh.count())
        stream.sink(lambda row, flow=flow: flow.stop() if row["ts"] == 1_000 else None, name="stop")
        out, letters = collect(per_k), collect(flow.dead_letters())
        flow.run(checkpoint_dir=str(tmp_path / "ckpt"))
        dead += letters.rows
    assert [d["payload"] for d in dead] == ['{"k": "x", "ts": 2000}']
    assert out.rows == [{"k": 1, "window_start": 0, "window_end": 10_000, "n": 2}]
