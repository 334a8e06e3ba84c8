"""Event time from any expression: ``flow.source(time=expr)`` and ``stream.with_time(...)``."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

import rheon as rh
from tests.crash import Crash, committed_parts, crash_at_row
from tests.reference import COUNT_AND_SUM, count_and_sum_per_500ms, reference

EPOCH = datetime(2024, 3, 1, tzinfo=UTC)
EPOCH_MS = int(EPOCH.timestamp() * 1000)


def _events(n: int, seed: int, *, spread: int = 400, late_every: int = 0) -> list[dict]:
    """Out-of-order events: ``t0`` (int ms from EPOCH), ``when`` and ``at`` (that instant as ISO text
    and as epoch ms), ``v``."""
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        t = i * 37 + rnd.randrange(spread)
        if late_every and i % late_every == late_every - 1:
            t = max(t - 3_000, 0)
        when = (EPOCH + timedelta(milliseconds=t)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]
        rows.append({"k": rnd.choice("ab"), "t0": t, "when": when, "at": EPOCH_MS + t, "v": rnd.randrange(100)})
    return rows


def _ms(value: datetime | int) -> int:
    if isinstance(value, datetime):
        return round((value.replace(tzinfo=UTC) - EPOCH).total_seconds() * 1000)
    return value


def _windows(rows: list[dict]) -> list[dict]:
    return [{**r, "window_start": _ms(r["window_start"]), "window_end": _ms(r["window_end"])} for r in rows]


def _expected(rows: list[dict], max_delay: int, **kw) -> tuple[list[dict], list[dict]]:
    timed = [{**r, "ts": r["t0"]} for r in rows]
    out, late = reference(
        timed, keys=["k"], time="ts", window=("tumbling", 500, 500), aggs=COUNT_AND_SUM, max_delay=max_delay, **kw
    )
    return out, [r["v"] for r in late]


PARSE = rh.col("when").str.to_datetime(time_unit="ms")


# -- flow.source(time=expr) ------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "batch_size"), [(1, 1), (2, 7), (3, 1000)])
def test_a_source_time_expression_parses_text_and_windows_by_it(seed, batch_size):
    rows = _events(300, seed, late_every=23)
    flow = rh.Flow("expr")
    src = flow.source(rh.io.Records(rows, batch_size=batch_size), time=PARSE, max_delay="300ms")
    assert src.time == "when"
    assert src.schema is not None
    assert src.schema["when"] == pl.Datetime("ms")
    out, late = count_and_sum_per_500ms(src)
    flow.run()
    expected, expected_late = _expected(rows, 300)
    assert expected_late, "the input must have late rows for this test to mean anything"
    assert _windows(out.rows) == expected
    assert [r["v"] for r in late.rows] == expected_late


def test_a_time_expression_with_alias_makes_a_new_column_and_keeps_the_old():
    flow = rh.Flow("alias")
    out = rh.io.Collect()
    src = flow.source(
        rh.io.Records([{"when": "2024-03-01 00:00:01"}]), time=rh.col("when").str.to_datetime().alias("ts")
    )
    assert src.time == "ts"
    src.sink(out)
    flow.run()
    assert out.rows == [{"when": "2024-03-01 00:00:01", "ts": datetime(2024, 3, 1, 0, 0, 1)}]  # noqa: DTZ001 - a naive Datetime column


def test_records_the_time_expression_cannot_handle_are_dead_letters_with_their_value():
    rows = [
        {"when": "2024-03-01T00:00:01", "v": 1},
        {"when": "yesterday", "v": 2},
        {"when": None, "v": 3},
        {"when": "2024-03-01T00:00:02", "v": 4},
    ]
    flow = rh.Flow("bad")
    out, dead = rh.io.Collect(), rh.io.Collect()
    flow.source(rh.io.Records(rows), time=rh.col("when").str.to_datetime(), name="tx").sink(out)
    flow.dead_letters().sink(dead)
    flow.run()
    assert [r["v"] for r in out.rows] == [1, 4]
    assert [(d["operator"], d["payload"]) for d in dead.rows] == [
        ("source 'tx'", '{"when": "yesterday", "v": 2}'),
        ("source 'tx'", '{"when": null, "v": 3}'),
    ]
    assert "failed" in dead.rows[0]["reason"]
    assert "when='yesterday'" in dead.rows[0]["reason"]
    assert "gave no event time" in dead.rows[1]["reason"]
    assert "when=None" in dead.rows[1]["reason"]


def test_a_failing_record_in_a_big_batch_is_found_without_losing_the_others():
    rows = [{"when": f"2024-03-01T00:00:{i % 60:02d}", "i": i} for i in range(1000)]
    rows[617]["when"] = "2024-13-45T99:00:00"
    flow = rh.Flow("bisect")
    out, dead = rh.io.Collect(), rh.io.Collect()
    flow.source(rh.io.Records(rows, batch_size=1000), time=rh.col("when").str.to_datetime("%Y-%m-%dT%H:%M:%S")).sink(
        out
    )
    flow.dead_letters().sink(dead)
    flow.run()
    assert [r["i"] for r in out.rows] == [i for i in range(1000) if i != 617]
    assert [d["payload"] for d in dead.rows] == ['{"when": "2024-13-45T99:00:00", "i": 617}']


@pytest.mark.parametrize(
    ("time", "message"),
    [
        (
            rh.col("whn").str.to_datetime(),
            r"source 'tx': the time expression .* reads unknown column\(s\) 'whn' \(columns: when, v\)",
        ),
        (
            rh.col("v") * 2,
            r"source 'tx': the time expression .* does not apply to the stream: arithmetic on dtypes str",
        ),
        (
            rh.col("v").str.strip_chars(),
            r"source 'tx': time column 'v' has type String; expected int64 epoch milliseconds or a Datetime",
        ),
        (42, r"source 'tx': time must be a column name or a Polars expression"),
    ],
)
def test_a_bad_time_expression_is_a_flow_error_naming_the_source_and_column(time, message):
    flow = rh.Flow("errors")
    with pytest.raises(rh.FlowError, match=message):
        flow.source(rh.io.Records([{"when": "x", "v": "1"}]), time=time, name="tx")


def test_an_aggregating_time_expression_is_refused_when_it_runs():
    flow = rh.Flow("agg")
    flow.source(rh.io.Records([{"t": 1}, {"t": 2}]), time=rh.col("t").max().alias("ts"), name="tx").sink(
        rh.io.Collect()
    )
    with pytest.raises(rh.FlowError, match=r"source 'tx': the time expression .* gave 1 values for 2 records"):
        flow.run()


# -- stream.with_time(...) -------------------------------------------------------------------


@pytest.mark.parametrize(("seed", "batch_size"), [(4, 1), (5, 13), (6, 1000)])
def test_with_time_on_a_stream_without_event_time_equals_declaring_it_at_the_source(seed, batch_size):
    rows = _events(300, seed, late_every=19)
    flow = rh.Flow("own")
    src = flow.source(rh.io.Records(rows, batch_size=batch_size))
    out, late = count_and_sum_per_500ms(src.with_time(PARSE, max_delay="250ms"))
    flow.run()
    expected, expected_late = _expected(rows, 250)
    assert expected_late
    assert _windows(out.rows) == expected
    assert [r["v"] for r in late.rows] == expected_late


@pytest.mark.parametrize(("seed", "batch_size"), [(7, 1), (8, 11), (9, 1000)])
def test_with_time_on_a_timed_stream_carries_its_watermark_max_delay_lower(seed, batch_size):
    """The new time is the old one jittered by up to ±150 ms: with max_delay=150ms no record is
    judged late that the old watermark alone would not make late."""
    rnd = random.Random(seed)
    rows = [{**r, "t2": max(r["t0"] + rnd.randrange(-150, 151), 0)} for r in _events(300, seed, late_every=17)]
    flow = rh.Flow("follow")
    src = flow.source(rh.io.Records(rows, batch_size=batch_size), time="t0", max_delay="200ms")
    out, late = count_and_sum_per_500ms(src.with_time(rh.col("t2").alias("ts"), max_delay="150ms"))
    flow.run()
    timed = [{**r, "ts": r["t2"]} for r in rows]
    expected, expected_late = reference(
        timed,
        keys=["k"],
        time="ts",
        window=("tumbling", 500, 500),
        aggs=COUNT_AND_SUM,
        max_delay=350,
        watermark_time="t0",
    )
    assert expected_late
    assert out.rows == expected
    assert [r["v"] for r in late.rows] == [r["v"] for r in expected_late]


def test_with_time_carries_the_watermark_across_time_units():
    """Int milliseconds upstream, a Datetime in microseconds after: same windows, same late rows."""
    rows = _events(200, 10, late_every=13)
    flow = rh.Flow("units")
    src = flow.source(rh.io.Records(rows, batch_size=5), time="at", max_delay="300ms")
    out, late = count_and_sum_per_500ms(src.with_time(rh.col("when").str.to_datetime(time_unit="us").alias("ts")))
    flow.run()
    expected, expected_late = _expected(rows, 300)
    assert expected_late
    assert [
        {**r, "window_start": _ms(r["window_start"]), "window_end": _ms(r["window_end"])} for r in out.rows
    ] == expected
    assert [r["v"] for r in late.rows] == expected_late


def test_streams_with_differently_named_time_columns_union_after_with_time():
    a_rows = [{"page": "a", "ts": t} for t in (100, 900, 1_400, 2_600)]
    b_rows = [{"page": "b", "event_time": t} for t in (300, 1_100, 2_100)]
    flow = rh.Flow("merge")
    a = flow.source(rh.io.Records(a_rows), time="ts")
    b = flow.source(rh.io.Records(b_rows), time="event_time")
    with pytest.raises(rh.FlowError, match="disagree on the event-time column"):
        a.union(b)
    b2 = b.with_time(rh.col("event_time").alias("ts")).select("page", "ts")
    out = rh.io.Collect()
    a.union(b2).window(rh.tumbling("1s")).agg(n=rh.count(), pages=rh.count_distinct("page")).sink(out)
    flow.run()
    assert out.rows == [
        {"window_start": 0, "window_end": 1000, "n": 3, "pages": 2},
        {"window_start": 1000, "window_end": 2000, "n": 2, "pages": 2},
        {"window_start": 2000, "window_end": 3000, "n": 2, "pages": 2},
    ]


def test_with_time_dead_letters_records_without_a_time_and_late_is_explained():
    flow = rh.Flow("dl")
    out, dead = rh.io.Collect(), rh.io.Collect()
    timed = flow.source(rh.io.Records([{"at": 5}, {"at": None}, {"at": 7}])).with_time("at", name="retime")
    timed.sink(out)
    flow.dead_letters().sink(dead)
    with pytest.raises(rh.FlowError, match=r"late\(\): with_time 'retime' does not hold records back"):
        timed.late()
    flow.run()
    assert out.rows == [{"at": 5}, {"at": 7}]
    assert [(d["operator"], d["reason"]) for d in dead.rows] == [
        ("with_time 'retime'", "record has no event time (column 'at' is null)")
    ]


def test_with_columns_cannot_change_the_time_column_type_and_points_to_with_time():
    flow = rh.Flow("wc")
    src = flow.source(rh.io.Records([{"ts": 1}]), time="ts")
    with pytest.raises(rh.FlowError, match=r"with_time"):
        src.with_columns(ts=rh.col("ts").cast(pl.Datetime("ms")))


# -- restarts ----------------------------------------------------------------------------------

SINKS = ("own", "own_late", "follow", "follow_late")  # _flow's file sinks, each writing to out / name


def _flow(rows: list[dict], out: Path, crash_after: int | None = None) -> rh.Flow:
    flow = rh.Flow("retimed")
    raw = flow.source(rh.io.Records(rows, batch_size=9), name="raw")
    own = raw.with_time(PARSE, max_delay="250ms", name="own")
    timed = flow.source(rh.io.Records(rows, batch_size=9), time="at", max_delay="200ms", name="timed")
    follow = timed.with_time(
        rh.col("when").str.to_datetime(time_unit="us").alias("ts"), max_delay="50ms", name="follow"
    )
    for label, stream in (("own", own), ("follow", follow)):
        result = stream.key_by("k").window(rh.tumbling("500ms")).agg(n=rh.count(), total=rh.sum("v"))
        result.sink(rh.io.FileSink(out / label), name=f"{label}_out")
        result.late().sink(rh.io.FileSink(out / f"{label}_late"), name=f"{label}_late_out")
    raw.sink(crash_at_row(crash_after), name="watch")
    return flow


@pytest.mark.parametrize("crash_after", [4, 150])
def test_a_crash_and_restore_gives_the_uninterrupted_output(tmp_path, crash_after):
    rows = _events(300, seed=11, late_every=29)
    _flow(rows, tmp_path / "reference").run()
    expected = committed_parts(tmp_path / "reference", *SINKS)
    assert all(len(v) > 3 for v in expected.values())
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(Crash):
        _flow(rows, out, crash_after).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    _flow(rows, out).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    assert committed_parts(out, *SINKS) == expected


def test_a_time_expression_reading_a_field_the_records_lack_dead_letters_them_all(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(f'{{"x": {i}}}\n' for i in range(50)))
    flow = rh.Flow("lack")
    out, dead = rh.io.Collect(), rh.io.Collect()
    source = rh.io.JsonLines(tmp_path / "a.jsonl", batch_size=25)
    flow.source(source, time=rh.col("when").str.to_datetime(), name="tx").sink(out)
    flow.dead_letters().sink(dead)
    flow.run()
    assert out.rows == []
    assert len(dead.rows) == 50
    assert dead.rows[0]["operator"] == "source 'tx'"
    assert "failed" in dead.rows[0]["reason"]
    assert "when" in dead.rows[0]["reason"]
