"""Event time from text in files: CSV's parse_dates and schema_overrides, JSON lines' schema, and
a time expression on any file source."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

import rheon as rh
from rheon.testing import collect

ROWS = "when,page\n2024-03-01T10:00:00.250,a\n2024-03-01T10:00:01.500,b\n2024-03-01T10:00:00.900,a\n"


def _windows(source: rh.io.Source, time: str | pl.Expr = "when") -> tuple[list[dict], list[dict]]:
    flow = rh.Flow("files")
    counts = flow.source(source, time=time, max_delay="1s", name="files").window(rh.tumbling("1s")).agg(n=rh.count())
    out, dead = collect(counts), collect(flow.dead_letters())
    flow.run()
    return out.rows, dead.rows


def _at(second: int) -> datetime:
    return datetime(2024, 3, 1, 10, 0, second)  # noqa: DTZ001 - the column is a naive Datetime


def test_csv_parse_dates_makes_iso_text_a_datetime_event_time(tmp_path):
    (tmp_path / "a.csv").write_text(ROWS)
    source = rh.io.Csv(tmp_path / "a.csv", parse_dates=True)
    assert source.schema()["when"] == pl.Datetime("us")
    out, dead = _windows(source)
    assert out == [
        {"window_start": _at(0), "window_end": _at(1), "n": 2},
        {"window_start": _at(1), "window_end": _at(2), "n": 1},
    ]
    assert dead == []


def test_without_parse_dates_the_error_says_how_to_get_event_time(tmp_path):
    (tmp_path / "a.csv").write_text(ROWS)
    with pytest.raises(rh.FlowError, match=r"time column 'when' has type String.*str.to_datetime"):
        _windows(rh.io.Csv(tmp_path / "a.csv"))


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_csv_schema_overrides_types_some_columns_and_dead_letters_what_does_not_parse(tmp_path, batch_size):
    (tmp_path / "a.csv").write_text(ROWS)
    (tmp_path / "b.csv").write_text("page,when\nc,2024-03-01T10:00:02\nd,not a time\n")
    source = rh.io.Csv(tmp_path / "*.csv", schema_overrides={"when": pl.Datetime("ms")}, batch_size=batch_size)
    assert source.schema() == pl.Schema({"when": pl.Datetime("ms"), "page": pl.String()})
    out, dead = _windows(source)
    assert [r["n"] for r in out] == [2, 1, 1]
    assert [d["payload"] for d in dead] == ["d,not a time"]
    assert "field 'when' is 'not a time', which is not Datetime" in dead[0]["reason"]


def test_schema_and_schema_overrides_together_are_refused(tmp_path):
    (tmp_path / "a.csv").write_text(ROWS)
    with pytest.raises(rh.FlowError, match="not both"):
        rh.io.Csv(tmp_path / "a.csv", schema={"when": pl.String}, schema_overrides={"when": pl.Datetime("ms")})


def test_jsonl_schema_parses_iso_text_as_a_datetime(tmp_path):
    lines = ['{"when": "2024-03-01T10:00:00.250", "page": "a"}', '{"when": "later", "page": "b"}']
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    source = rh.io.JsonLines(tmp_path / "a.jsonl", schema={"when": pl.Datetime("ms"), "page": pl.String})
    out, dead = _windows(source)
    assert out == [{"window_start": _at(0), "window_end": _at(1), "n": 1}]
    assert [d["payload"] for d in dead] == ['{"when": "later", "page": "b"}']


def test_any_file_source_takes_a_time_expression(tmp_path):
    (tmp_path / "a.csv").write_text("day,clock,page\n01/03/2024,10:00:00,a\n01/03/2024,10:00:01,b\n")
    parse = pl.concat_str("day", pl.lit(" "), "clock").str.to_datetime("%d/%m/%Y %H:%M:%S").alias("ts")
    out, dead = _windows(rh.io.Csv(tmp_path / "a.csv"), time=parse)
    assert out == [
        {"window_start": _at(0), "window_end": _at(1), "n": 1},
        {"window_start": _at(1), "window_end": _at(2), "n": 1},
    ]
    assert dead == []


def test_followed_csv_with_parse_dates_keeps_the_type_across_appends(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(ROWS)
    flow = rh.Flow("tail")
    src = flow.source(rh.io.Csv(path, parse_dates=True, follow=True, poll="20ms"), time="when", name="tail")
    out, dead = collect(src), collect(flow.dead_letters())
    seen: list[int] = []

    def appended(_row: dict) -> None:
        seen.append(1)
        if len(seen) == 3:
            with path.open("a") as f:
                f.write("2024-03-01T10:00:03,c\nnot a time,d\n")
        if len(seen) == 4:
            flow.stop()

    src.sink(appended)
    flow.run(duration="60s")
    assert [r["page"] for r in out.rows] == ["a", "b", "a", "c"]
    assert out.rows[3]["when"] == _at(3)
    assert [d["payload"] for d in dead.rows] == ["not a time,d"]
