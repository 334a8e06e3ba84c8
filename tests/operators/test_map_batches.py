"""``stream.map_batches(fn)``: a Python function over whole batches, and its contract."""

from __future__ import annotations

import random

import polars as pl
import pytest

import rheon as rh
from tests.doc_pages import ROOT, run_examples
from tests.reference import COUNT_AND_SUM, count_and_sum_per_500ms, reference


def _events(n: int, seed: int) -> list[dict]:
    """Out of order by up to 400 ms, and every 9th record 3 s behind (late for a 1 s delay)."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        t = i * 37 + rnd.randrange(400)
        if i % 9 == 8:
            t = max(t - 3_000, 0)
        rows.append({"k": rnd.choice("ab"), "ts": t, "v": rnd.randrange(100)})
    return rows


def _run(rows: list[dict], batch_size: int, step, *, on_dead: rh.io.Collect | None = None):
    flow = rh.Flow("mb")
    source = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay="1s")
    out, late = count_and_sum_per_500ms(step(source))
    if on_dead is not None:
        flow.dead_letters().sink(on_dead)
    flow.run()
    return out.rows, late.rows


def _doubled(batch: pl.DataFrame) -> pl.DataFrame:
    return batch.with_columns(v=pl.col("v") * 2)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_same_rows_keep_their_place_in_event_time(batch_size: int) -> None:
    rows = _events(600, seed=1)
    doubled = [{**r, "v": r["v"] * 2} for r in rows]
    expected, expected_late = reference(
        doubled, keys=["k"], time="ts", window=("tumbling", 500, 500), aggs=COUNT_AND_SUM, max_delay=1000
    )
    got, late = _run(rows, batch_size, lambda s: s.map_batches(_doubled))
    assert expected_late, "the data must have late records for this test to mean something"
    assert sorted(got, key=str) == sorted(expected, key=str)
    assert sorted(r["v"] for r in late) == sorted(r["v"] for r in expected_late)


@pytest.mark.parametrize("batch_size", [1, 7, 1000])
def test_rows_may_change_when_declared(batch_size: int) -> None:
    rows = _events(600, seed=2)

    def odd_only_twice(batch: pl.DataFrame) -> pl.DataFrame:
        odd = batch.filter(pl.col("v") % 2 == 1)
        return pl.concat([odd, odd])

    got, _ = _run(rows, batch_size, lambda s: s.map_batches(odd_only_twice, same_rows=False))
    through = [r for r in rows if r["v"] % 2 == 1]
    # every row that went on is counted twice, and only windows it could reach
    by_window: dict[tuple, int] = {}
    for r in got:
        by_window[(r["k"], r["window_start"])] = r["n"]
    assert all(n % 2 == 0 for n in by_window.values())
    counted = sum(by_window.values())
    assert 0 < counted <= 2 * len(through)
    assert sum(r["total"] for r in got) % 2 == 0


def test_rows_that_break_the_function_go_to_the_dead_letters_and_the_rest_go_on() -> None:
    rows = _events(500, seed=3)
    for i in (17, 18, 250, 499):
        rows[i]["v"] = -1
    calls = [0]

    def checked(batch: pl.DataFrame) -> pl.DataFrame:
        calls[0] += 1
        if (batch["v"] < 0).any():
            msg = "negative reading"
            raise ValueError(msg)
        return batch

    dead = rh.io.Collect()
    got, _ = _run(rows, 1000, lambda s: s.map_batches(checked, name="validate"), on_dead=dead)
    assert [d["operator"] for d in dead.rows] == ["map_batches 'validate'"] * 4
    assert all("ValueError: negative reading" in d["reason"] for d in dead.rows)
    assert all('"v": -1' in d["payload"] or '"v":-1' in d["payload"] for d in dead.rows)
    good = [r for r in rows if r["v"] >= 0]
    expected, _ = reference(
        good, keys=["k"], time="ts", window=("tumbling", 500, 500), aggs=COUNT_AND_SUM, max_delay=1000
    )
    assert sorted(got, key=str) == sorted(expected, key=str)
    assert calls[0] < 100  # found by halving, not record by record


def test_a_function_failing_on_everything_is_searched_a_bounded_number_of_times() -> None:
    calls = [0]

    def broken(batch: pl.DataFrame) -> pl.DataFrame:
        calls[0] += 1
        return batch.with_columns(x=pl.col("nope"))

    flow = rh.Flow("mb-broken", max_error_rate=None)
    dead = rh.io.Collect()
    rows = [{"v": i} for i in range(20_000)]
    flow.source(rh.io.Records(rows, batch_size=20_000)).map_batches(broken).sink(rh.io.Collect())
    flow.dead_letters().sink(dead)
    flow.run()
    assert len(dead.rows) == 20_000
    assert calls[0] <= 1100
    assert "ColumnNotFoundError" in dead.rows[0]["reason"]


def test_a_function_failing_on_every_record_stops_the_run_with_its_error() -> None:
    flow = rh.Flow("mb-rate")
    rows = [{"v": i} for i in range(3000)]
    flow.source(rh.io.Records(rows, batch_size=500)).map_batches(lambda b: b.with_columns(x=1 / 0)).sink(
        rh.io.Collect()
    )
    with pytest.raises(rh.RecordError) as caught:
        flow.run()
    assert isinstance(caught.value.__cause__, ZeroDivisionError)


def _one_batch(step, rows=None) -> None:
    flow = rh.Flow("mb-contract")
    rows = rows or [{"k": "a", "ts": 1, "v": 1}, {"k": "b", "ts": 2, "v": 2}]
    step(flow.source(rh.io.Records(rows), time="ts")).sink(rh.io.Collect())
    flow.run()


@pytest.mark.parametrize(
    ("fn", "kw", "says"),
    [
        (lambda b: b.head(1), {}, "returned 1 rows for 2; with same_rows=True"),
        (lambda b: b.drop("ts"), {}, "dropped the event-time column 'ts'"),
        (lambda b: b.drop("ts"), {"same_rows": False}, "dropped the event-time column 'ts'"),
        (lambda b: b.with_columns(pl.col("ts") + 5), {}, "changed the event time of a record ('ts': 1 became 6)"),
        (lambda b: b.with_columns(pl.col("ts").cast(pl.Float64)), {}, "changed the event-time column 'ts' from Int64"),
        (lambda b: b.to_dicts(), {}, "returned list; it must return a Polars DataFrame"),
        (lambda b: b, {"schema": {"k": pl.String, "ts": pl.Int64}}, "not declared ['v']"),
        (lambda b: b, {"schema": {"k": pl.Int64, "ts": pl.Int64, "v": pl.Int64}}, "do not fit the declared schema"),
    ],
)
def test_a_breach_of_the_contract_stops_the_run_naming_the_step(fn, kw, says: str) -> None:
    with pytest.raises(rh.FlowError) as caught:
        _one_batch(lambda s: s.map_batches(fn, name="mine", **kw))
    assert "map_batches 'mine'" in str(caught.value)
    assert says in str(caught.value)


def test_a_declared_schema_casts_and_lets_later_steps_check_columns_when_the_flow_is_built() -> None:
    flow = rh.Flow("mb-schema")
    out = rh.io.Collect()
    source = flow.source(rh.io.Records([{"k": "a", "ts": 1, "v": 1}]), time="ts")
    scored = source.map_batches(
        lambda b: b.with_columns(score=pl.col("v") * 2),
        schema={"k": pl.String, "ts": pl.Int64, "v": pl.Int64, "score": pl.Float64},
    )
    scored.sink(out)
    with pytest.raises(rh.FlowError, match="scroe"):
        scored.filter(rh.col("scroe") > 1)
    flow.run()
    assert out.rows == [{"k": "a", "ts": 1, "v": 1, "score": 2.0}]
    with pytest.raises(rh.FlowError, match="no event-time column 'ts'"):
        source.map_batches(lambda b: b, schema={"k": pl.String})


def test_the_plan_names_the_step() -> None:
    flow = rh.Flow("mb-explain")
    flow.source(rh.io.Records([{"v": 1}])).map_batches(_doubled, same_rows=False, name="twice").sink(rh.io.Collect())
    text = flow.explain()
    assert "map_batches" in text
    assert "twice" in text
    assert "_doubled, rows may change" in text


@pytest.mark.parametrize(("same_rows", "windows", "late"), [(True, 1, 1), (False, 2, 0)])
def test_changed_rows_take_the_watermark_from_before_their_batch(same_rows: bool, windows: int, late: int) -> None:
    # The second record is behind the watermark the first one sets (10000 - 1 s): late if it keeps
    # its own place, on time if it takes the batch's earliest watermark (nothing seen before it).
    rows = [{"k": "a", "ts": 10_000, "v": 1}, {"k": "a", "ts": 8_500, "v": 2}]
    got, behind = _run(rows, 2, lambda s: s.map_batches(lambda b: b, same_rows=same_rows))
    assert (len(got), len(behind)) == (windows, late)


def test_the_documented_example_prints_what_the_page_says() -> None:
    results, report = run_examples(ROOT / "docs" / "architecture.md")
    assert results.attempted >= 7
    assert results.failed == 0, report
