"""Bounded file sources."""

from __future__ import annotations

from pathlib import Path

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
    assert bad.rows[1]["reason"] == "not a JSON object at b.jsonl:3"


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
