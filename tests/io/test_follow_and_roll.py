"""Following growing files and directories; rolling file sinks."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import rheon as rh
from rheon.testing import ManualClock, collect


def _append(path: Path, text: str) -> None:
    with open(path, "a") as fh:
        fh.write(text)
        fh.flush()


Step = tuple[Callable[[], bool], Callable[[], object] | None]


def _drive(flow: rh.Flow, steps: list[Step], **run: Any) -> None:
    """Run ``flow`` while a thread takes ``steps`` in turn: each waits until the flow has read what
    it must have (its condition), then acts (appends, rotates...); after the last the flow stops.

    The steps follow what the flow reports, never a timer: on a loaded machine a flow may take
    seconds to start, and a writer sleeping fixed times would act before the flow saw the file (or
    after the flow's ``duration`` ran out). The duration is only a safety net.
    """
    errors: list[BaseException] = []

    def scenario() -> None:
        try:
            for condition, action in steps:
                deadline = time.monotonic() + 120
                while not condition():
                    if time.monotonic() > deadline:
                        raise AssertionError(f"the flow did not get there in 120 s: {condition.__doc__}")
                    time.sleep(0.01)
                if action is not None:
                    action()
        except BaseException as exc:
            errors.append(exc)
        finally:
            flow.stop()

    flow.run(duration="300s", on_start=lambda _: threading.Thread(target=scenario, daemon=True).start(), **run)
    if errors:
        raise errors[0]


def _has(out: rh.io.Collect, n: int) -> Callable[[], bool]:
    def condition() -> bool:
        return len(out) >= n

    condition.__doc__ = f"{n} rows read"
    return condition


def test_jsonl_follow_reads_appends_partial_lines_new_files_and_rotations(tmp_path):
    log = tmp_path / "app.jsonl"
    log.write_text('{"n": 1}\n')
    flow = rh.Flow("tail")
    out = collect(flow.source(rh.io.JsonLines(tmp_path, follow=True, poll="50ms"), name="logs"))
    bad = collect(flow.dead_letters())
    steps: list[Step] = [
        (_has(out, 1), lambda: _append(log, '{"n": 2}\n{"n": ')),  # a half-written line waits...
        (_has(out, 2), lambda: _append(log, "3}\n")),  # ...for its newline
        (_has(out, 3), lambda: (tmp_path / "b.jsonl").write_text('{"n": 4}\nnot json\n')),  # a new file
        (_has(out, 4), lambda: (os.rename(log, tmp_path / ".app.old"), log.write_text('{"n": 5}\n'))),  # rotation
        (_has(out, 5), None),
    ]
    _drive(flow, steps)
    assert sorted(r["n"] for r in out.rows) == [1, 2, 3, 4, 5]
    assert [(b["operator"], b["payload"]) for b in bad.rows] == [("source 'logs'", "not json")]
    assert bad.rows[0]["reason"].startswith("invalid JSON at b.jsonl:2")


def test_following_resumes_by_byte_offset_after_a_restart(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text("".join(json.dumps({"i": i}) + "\n" for i in range(5)))
    out_dir, ckpt = tmp_path / "out", tmp_path / "ckpt"

    def run_once(new_rows: int) -> None:
        flow = rh.Flow("resume")
        src = flow.source(rh.io.JsonLines(log, follow=True, poll="20ms"), name="in")
        src.sink(rh.io.FileSink(out_dir), name="out")
        seen = collect(src)
        _drive(flow, [(_has(seen, new_rows), None)], checkpoint_dir=ckpt)

    run_once(5)
    _append(log, "".join(json.dumps({"i": i}) + "\n" for i in range(5, 9)))
    run_once(4)  # a run that started from the top instead would stop having re-read 0-3
    rows = [r for p in sorted(out_dir.glob("part-*")) for r in pl.read_ndjson(p).to_dicts()]
    assert [r["i"] for r in rows] == list(range(9))


def test_csv_follow_keeps_each_files_header(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("host,cpu\na,1\n")
    flow = rh.Flow("csvtail")
    out = collect(flow.source(rh.io.Csv(path, follow=True, poll="50ms")))
    _drive(flow, [(_has(out, 1), lambda: _append(path, "b,2\nc,3\n")), (_has(out, 3), None)])
    assert out.rows == [{"host": "a", "cpu": 1}, {"host": "b", "cpu": 2}, {"host": "c", "cpu": 3}]


def test_parquet_follow_reads_each_new_file_once(tmp_path):
    pl.DataFrame({"v": [1]}).write_parquet(tmp_path / "a.parquet")
    flow = rh.Flow("pqtail")
    out = collect(flow.source(rh.io.Parquet(tmp_path, follow=True, poll="50ms")))

    def new_file() -> None:  # written whole, then renamed into view, as the source asks of writers
        pl.DataFrame({"v": [2, 3]}).write_parquet(tmp_path / ".b.parquet.tmp")
        os.rename(tmp_path / ".b.parquet.tmp", tmp_path / "b.parquet")

    _drive(flow, [(_has(out, 1), new_file), (_has(out, 3), None)])
    assert [r["v"] for r in out.rows] == [1, 2, 3]


def test_following_a_file_sinks_directory_sees_only_committed_files(tmp_path):
    """In-progress output starts with '.', so a tail of a FileSink directory never reads it."""
    (tmp_path / ".inprogress-x.jsonl").write_text('{"n": 99}\n')
    (tmp_path / "part-00000001-0000.jsonl").write_text('{"n": 1}\n')
    flow = rh.Flow("readout")
    out = collect(flow.source(rh.io.JsonLines(tmp_path, follow=True, poll="20ms")))
    # The poll that found the part file listed the hidden one too (and, by name, before it).
    _drive(flow, [(_has(out, 1), None)])
    assert out.rows == [{"n": 1}]


def test_follow_needs_an_existing_directory(tmp_path):
    rh.io.JsonLines(tmp_path / "*.jsonl", follow=True)  # nothing there yet: fine
    with pytest.raises(rh.SourceError, match="no file matches"):
        rh.io.JsonLines(tmp_path / "missing" / "*.jsonl", follow=True)


def test_roll_by_size_without_checkpoints(tmp_path):
    flow = rh.Flow("roll")
    rows = [{"i": i, "pad": "x" * 50} for i in range(200)]
    flow.source(rh.io.Records(rows, batch_size=10)).sink(rh.io.FileSink(tmp_path, roll_size="1KiB"))
    flow.run()
    parts = sorted(tmp_path.glob("part-*.jsonl"))
    assert len(parts) > 5
    assert not list(tmp_path.glob(".*"))
    assert [r["i"] for p in parts for r in pl.read_ndjson(p).to_dicts()] == list(range(200))
    assert all(p.stat().st_size < 2 * 1024 for p in parts)


def test_roll_by_time_with_checkpoints_commits_every_rolled_file(tmp_path):
    clock = ManualClock()
    flow = rh.Flow("rolltime")
    script = [[{"i": i}] if i % 2 == 0 else "400ms" for i in range(20)]
    from rheon.testing import ScriptedSource

    flow.source(ScriptedSource(script)).sink(rh.io.FileSink(tmp_path, roll_every="1s", format="csv"))
    flow.run(clock=clock, checkpoint_dir=tmp_path / "ckpt", checkpoint_every="3s")
    parts = sorted(tmp_path.glob("part-*.csv"))
    assert len(parts) >= 3
    assert [r["i"] for p in parts for r in pl.read_csv(p).to_dicts()] == list(range(0, 20, 2))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_bad_sizes_are_flow_errors():
    with pytest.raises(rh.FlowError, match=r"FileSink: roll_size: cannot read size '10 apples'"):
        rh.io.FileSink("/tmp/x", roll_size="10 apples")
