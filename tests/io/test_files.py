"""File sources: bounded and followed; column types and order that stay put across lines, files and restarts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

import rheon as rh
from rheon.testing import collect


def _write_jsonl(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def test_jsonl_glob_reads_files_in_name_order_and_dead_letters_bad_lines(tmp_path):
    _write_jsonl(tmp_path / "b.jsonl", ['{"i": 3, "ts": 30}', "not json", "[1]", '{"i": 4, "ts": 40}'])
    _write_jsonl(tmp_path / "a.jsonl", ['{"i": 1, "ts": 10}', '{"i": 2, "ts": 20}'])
    flow = rh.Flow("logs")
    out = collect(flow.source(rh.io.JsonLines(tmp_path / "*.jsonl", batch_size=1), time="ts", name="logs"))
    bad = collect(flow.dead_letters())
    flow.run()
    assert [r["i"] for r in out.rows] == [1, 2, 3, 4]
    assert [(b["operator"], b["payload"]) for b in bad.rows] == [
        ("source 'logs'", "not json"),
        ("source 'logs'", "[1]"),
    ]
    assert bad.rows[0]["reason"].startswith("invalid JSON at b.jsonl:2")
    assert bad.rows[1]["reason"] == "expected a JSON object, got list (b.jsonl:3)"


def test_csv_and_parquet(tmp_path, batch_size):
    frame = pl.DataFrame({"k": ["a", "b", "a"], "v": [1, 2, 3], "ts": [0, 500, 1500]})
    frame.write_csv(tmp_path / "x.csv")
    frame.write_parquet(tmp_path / "x.parquet")
    for source in (
        rh.io.Csv(tmp_path / "x.csv", batch_size=batch_size),
        rh.io.Parquet(tmp_path / "x.parquet", batch_size=batch_size),
    ):
        flow = rh.Flow("files")
        s = flow.source(source, time="ts")
        assert s.schema == frame.schema  # known at build time
        out = collect(s.key_by("k").window(rh.tumbling("1s")).agg(total=rh.sum("v")))
        flow.run()
        assert out.rows == [
            {"k": "a", "window_start": 0, "window_end": 1000, "total": 1},
            {"k": "b", "window_start": 0, "window_end": 1000, "total": 2},
            {"k": "a", "window_start": 1000, "window_end": 2000, "total": 3},
        ]


def test_missing_files_are_reported_when_the_flow_is_built(tmp_path):
    with pytest.raises(rh.SourceError, match=r"Parquet: no file matches '.*nothing-\*\.parquet'"):
        rh.io.Parquet(tmp_path / "nothing-*.parquet")


# -- types stay put: a record that does not fit is a dead letter, never converted ---------------------

_DRIFT = [
    '{"a": {"b": 1}, "n": 1, "f": true, "s": {"x": 1}, "ts": 1}',
    '{"a": 1.5, "ts": 2}',  # a number where "a" was an object
    '{"n": "1", "ts": 3}',  # text where "n" was an integer
    '{"n": true, "ts": 4}',  # a boolean where it was an integer
    '{"f": 1, "ts": 5}',  # a number where "f" was a boolean
    '{"s": [1], "ts": 6}',  # a list where "s" was an object
    '{"a": {"b": 2}, "n": 7, "f": false, "s": {"x": 2}, "ts": 7}',
]


def _reasons(bad: Any) -> list[str]:
    return [b["reason"].split(", but")[0] for b in bad.rows]


_DRIFT_REASONS = [
    "field 'a' is 1.5 (a float)",
    "field 'n' is \"1\" (a string)",
    "field 'n' is true (a boolean)",
    "field 'f' is 1 (an integer)",
    "field 's' is [1] (a list)",
]


@pytest.mark.parametrize("files", [1, 2, 7], ids=["one-file", "two-files", "a-file-per-line"])
def test_jsonl_values_whose_type_drifts_are_dead_letters_not_converted(tmp_path, batch_size, files):
    per_file = -(-len(_DRIFT) // files)
    for i in range(0, len(_DRIFT), per_file):
        _write_jsonl(tmp_path / f"{i:02d}.jsonl", _DRIFT[i : i + per_file])
    flow = rh.Flow("drift")
    src = flow.source(rh.io.JsonLines(tmp_path, batch_size=batch_size), time="ts", name="in")
    out, bad = collect(src), collect(flow.dead_letters())
    total = collect(src.window(rh.tumbling("1s")).agg(n=rh.sum("n"), rows=rh.count()))
    flow.run()
    assert out.rows == [
        {"a": {"b": 1}, "n": 1, "f": True, "s": {"x": 1}, "ts": 1},
        {"a": {"b": 2}, "n": 7, "f": False, "s": {"x": 2}, "ts": 7},
    ]
    assert total.rows == [{"window_start": 0, "window_end": 1000, "n": 8, "rows": 2}]
    assert _reasons(bad) == _DRIFT_REASONS
    assert [b["payload"] for b in bad.rows] == _DRIFT[1:6]
    assert flow.metrics().dead_letters == 5


def test_jsonl_reasons_name_the_file_and_line_and_odd_lines_are_handled(tmp_path):
    deep = '{"v": ' + "[" * 900 + "]" * 900 + "}"
    (tmp_path / "a.jsonl").write_bytes(
        b'{"v": 1}\r\n\n   \n{"v": 2}\r\n'  # CRLF and blank lines: no records, no dead letters
        + deep.encode() + b"\n"
        + b'{"v": 3, "w": "\xff"}\n'
        + b'{"v": "x"}\n'
        + b'{"v": 4}'  # no newline at the end of the file
    )  # fmt: skip
    flow = rh.Flow("odd")
    out, bad = collect(flow.source(rh.io.JsonLines(tmp_path / "a.jsonl"), name="in")), collect(flow.dead_letters())
    flow.run()
    assert [r["v"] for r in out.rows] == [1, 2, 4]
    assert [(b["reason"].split(",")[0].split(" (a record")[0], b["payload"]) for b in bad.rows] == [
        ("nested 901 levels deep", deep),
        ("invalid JSON at a.jsonl:6: not UTF-8 (byte 0xff at position 15)", '{"v": 3, "w": "\ufffd"}'),
        ("field 'v' is \"x\" (a string)", '{"v": "x"}'),
    ]
    assert bad.rows[0]["reason"].endswith("(a.jsonl:5)")
    assert bad.rows[2]["reason"].endswith("Try schema= on the source to set the types (a.jsonl:7)")


def test_jsonl_schema_sets_the_types(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", ['{"v": 1.5, "extra": 1}', '{"v": 2}', '{"v": "3"}'])
    flow = rh.Flow("typed")
    src = flow.source(rh.io.JsonLines(tmp_path / "a.jsonl", schema={"v": pl.Float64}), name="in")
    assert src.schema == pl.Schema({"v": pl.Float64})
    out, bad = collect(src), collect(flow.dead_letters())
    flow.run()
    assert out.rows == [{"v": 1.5}, {"v": 2.0}]
    assert [b["reason"] for b in bad.rows] == [
        "does not fit the schema: field 'v' is \"3\" (a string), expected Float64 (a.jsonl:3)"
    ]


def test_jsonl_columns_keep_their_first_seen_order_across_files_and_a_window_keeps_running(tmp_path):
    _write_jsonl(tmp_path / "a.jsonl", ['{"k": "a", "ts": 1000}'])
    _write_jsonl(tmp_path / "b.jsonl", ['{"ts": 2000, "k": "a"}', '{"extra": 1, "ts": 2500, "k": "b"}'])
    _write_jsonl(tmp_path / "c.jsonl", ['{"ts": 25000}'])  # without "k": a null key
    flow = rh.Flow("order")
    src = flow.source(rh.io.JsonLines(tmp_path, batch_size=1), time="ts", name="in")
    columns: list[list[str]] = []
    src.sink(rh.io.Callback(lambda frame: columns.append(frame.columns), batch=True))
    counts = collect(src.key_by("k").window(rh.tumbling("10s")).agg(n=rh.count()))
    flow.run()
    assert columns == [["k", "ts"], ["k", "ts", "extra"], ["k", "ts", "extra"], ["k", "ts", "extra"]]
    assert sorted((r["k"] or "", r["n"]) for r in counts.rows) == [("", 1), ("a", 2), ("b", 1)]


def test_jsonl_follow_keeps_types_across_chunks_files_and_a_restart(tmp_path):
    log, ckpt = tmp_path / "logs" / "a.jsonl", tmp_path / "ckpt"
    log.parent.mkdir()
    runs = []
    for lines, last in ((['{"v": 1}'], 1), (['{"v": "x"}', '{"v": 2.5}', '{"v": 2}'], 2)):
        with open(log, "a") as fh:
            fh.write("".join(line + "\n" for line in lines))
        flow = rh.Flow("tail")
        src = flow.source(rh.io.JsonLines(log.parent, follow=True, poll="20ms"), name="in")
        out, bad = collect(src), collect(flow.dead_letters())
        src.sink(lambda row, flow=flow, last=last: flow.stop() if row["v"] == last else None)
        flow.run(checkpoint_dir=ckpt, checkpoint_every="1h", duration="60s")
        runs.append(([r["v"] for r in out.rows], [b["payload"] for b in bad.rows]))
    # Without the types in the checkpoint, "x" would have made the restarted source's column text.
    assert runs == [([1], []), ([2], ['{"v": "x"}', '{"v": 2.5}'])]


# -- CSV: a column keeps the type of the first file it was in -------------------------------------------


def test_csv_a_value_that_does_not_parse_as_the_columns_type_is_a_dead_letter(tmp_path, batch_size):
    (tmp_path / "a.csv").write_text("k,v,ok\na,1,true\nb,2,false\n")
    (tmp_path / "b.csv").write_text("v,k,note\n1.5,c,x\nx,d,y\n3,e,z\n")  # other order, a new column
    (tmp_path / "c.csv").write_text("k,v,ok\nf,4,maybe\n")
    flow = rh.Flow("csv")
    src = flow.source(rh.io.Csv(tmp_path / "*.csv", batch_size=batch_size), name="in")
    out, bad = collect(src), collect(flow.dead_letters())
    total = collect(src.key_by("k").reduce(lambda acc, row: {**row, "v": acc["v"] + row["v"]}))
    flow.run()
    assert out.rows == [
        {"k": "a", "v": 1, "ok": True, "note": None},
        {"k": "b", "v": 2, "ok": False, "note": None},
        {"k": "e", "v": 3, "ok": None, "note": "z"},
    ]
    assert out.to_polars().schema == pl.Schema({"k": pl.String, "v": pl.Int64, "ok": pl.Boolean, "note": pl.String})
    assert [(b["reason"].split(",")[0], b["reason"].rsplit(" ", 1)[1], b["payload"]) for b in bad.rows] == [
        ("field 'v' is '1.5'", "(b.csv:2)", "1.5,c,x"),
        ("field 'v' is 'x'", "(b.csv:3)", "x,d,y"),
        ("field 'ok' is 'maybe'", "(c.csv:2)", "f,4,maybe"),
    ]
    assert sorted(r["v"] for r in total.rows) == [1, 2, 3]


def test_csv_follow_keeps_the_first_chunks_types(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("host,cpu\na,1\n")
    flow = rh.Flow("csvtail")
    src = flow.source(rh.io.Csv(path, follow=True, poll="20ms"), name="in")
    out, bad = collect(src), collect(flow.dead_letters())

    def watch(row: dict[str, Any]) -> None:
        if row["host"] == "a":
            with open(path, "a") as fh:
                fh.write("b,high\nc,3\n")
        if row["host"] == "c":
            flow.stop()

    src.sink(watch)
    flow.run(duration="60s")
    assert out.rows == [{"host": "a", "cpu": 1}, {"host": "c", "cpu": 3}]
    assert [(b["reason"].split(",")[0], b["payload"]) for b in bad.rows] == [("field 'cpu' is 'high'", "b,high")]


def test_csv_schema_sets_the_types(tmp_path):
    (tmp_path / "a.csv").write_text("k,v,drop\na,007,1\nb,x,2\n")
    flow = rh.Flow("csv")
    src = flow.source(rh.io.Csv(tmp_path / "a.csv", schema={"k": pl.String, "v": pl.Float64}), name="in")
    assert src.schema == pl.Schema({"k": pl.String, "v": pl.Float64})
    out, bad = collect(src), collect(flow.dead_letters())
    flow.run()
    assert out.rows == [{"k": "a", "v": 7.0}]
    assert [b["payload"] for b in bad.rows] == ["b,x,2"]


# -- Parquet: a column keeps the type of the first file ---------------------------------------------


def test_parquet_a_column_of_another_type_is_converted_only_if_no_value_changes(tmp_path):
    pl.DataFrame({"k": ["a"], "v": [1]}).write_parquet(tmp_path / "a.parquet")
    pl.DataFrame({"v": pl.Series([2], dtype=pl.Int32), "k": ["b"]}).write_parquet(tmp_path / "b.parquet")
    pl.DataFrame({"k": ["c", "d"], "v": ["3", None]}).write_parquet(tmp_path / "c.parquet")
    flow = rh.Flow("pq")
    src = flow.source(rh.io.Parquet(tmp_path), name="in")
    out, bad = collect(src), collect(flow.dead_letters())
    flow.run()
    assert out.rows == [{"k": "a", "v": 1}, {"k": "b", "v": 2}, {"k": "d", "v": None}]
    assert out.to_polars().schema == pl.Schema({"k": pl.String, "v": pl.Int64})
    assert [(b["reason"].split(" so far")[0], b["payload"]) for b in bad.rows] == [
        ("column 'v' is String in c.parquet, but this source has read it as Int64", '{"k": "c", "v": "3"}')
    ]
