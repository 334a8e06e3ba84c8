"""Sinks never convert a value to fit another batch's type, and never fail a checkpoint over it.

A checkpoint interval's batches may disagree on a column's type: here three sources, each
consistent, meet in a union (``{"b": 1}``, ``1.5`` and ``[1, 2]`` for one column). The
transactional KafkaSink (tansu) encodes each batch as it is written; the Parquet FileSink
writes a part file per schema; the CSV FileSink a file per header; JSON lines are written
batch by batch. Every value is read back as it was sent.
"""

from __future__ import annotations

import json
from typing import Any

import polars as pl
import pytest

import rheon as rh
from rheon.testing import collect
from tests.io.kafka import conftest as kafka_conftest
from tests.io.kafka.conftest import read_all

kafka_brokers, new_topic = kafka_conftest.kafka_brokers, kafka_conftest.new_topic

SENT = [{"id": 1, "a": {"b": 1}}, {"id": 2, "a": 1.5}, {"id": 3, "a": [1, 2]}, {"id": 4, "a": {"b": 2}}]


def _mixed(flow: rh.Flow) -> rh.Stream:
    """One stream whose column "a" is a struct, a float, a list, a struct again, batch by batch."""
    sources = [flow.source(rh.io.Records(pl.DataFrame([row])), name=f"s{row['id']}") for row in SENT]
    return sources[0].union(*sources[1:])


def _by_id(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: r["id"])


@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_file_sink_writes_every_value_as_it_was_across_a_restart(tmp_path, fmt):
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    for _ in range(2):  # the second run resumes from the first's checkpoint: nothing to redo, no crash
        flow = rh.Flow("mixed")
        _mixed(flow).sink(rh.io.FileSink(out, format=fmt), name="files")
        flow.run(checkpoint_dir=ckpt, checkpoint_every="1h")  # one checkpoint interval: all four batches
    parts = sorted(out.glob(f"part-*.{fmt}"))
    if fmt == "parquet":
        rows = [row for part in parts for row in pl.read_parquet(part).to_dicts()]
    else:
        rows = [json.loads(line) for part in parts for line in part.read_text().splitlines()]
    assert _by_id([{k: v for k, v in r.items() if v is not None or k == "a"} for r in rows]) == SENT
    if fmt == "parquet":  # one schema per file: a float column never holds the struct as text
        assert {str(pl.read_parquet_schema(p)["a"]) for p in parts} == {
            "Struct({'b': Int64})",
            "Float64",
            "List(Int64)",
        }


def test_csv_file_sink_starts_a_file_for_a_new_header_and_refuses_nested_values(tmp_path):
    flow = rh.Flow("csv")
    a = flow.source(rh.io.Records(pl.DataFrame({"id": [1], "x": ["p"]})), name="a")
    b = flow.source(rh.io.Records(pl.DataFrame({"y": [2.5], "id": [2]})), name="b")
    c = flow.source(rh.io.Records(pl.DataFrame({"id": [3], "x": ["q"]})), name="c")
    d = flow.source(rh.io.Records(pl.DataFrame({"id": [4, 5], "x": [None, "r"], "n": [[1], None]})), name="d")
    a.union(b, c, d).sink(rh.io.FileSink(tmp_path, format="csv"), name="files")
    dead = collect(flow.dead_letters())
    flow.run()
    parts = sorted(tmp_path.glob("part-*.csv"))
    rows = [r for p in parts for r in pl.read_csv(p, infer_schema=False).to_dicts()]  # each under its header
    assert sorted(({k: v for k, v in r.items() if v is not None} for r in rows), key=lambda r: r["id"]) == [
        {"id": "1", "x": "p"},
        {"y": "2.5", "id": "2"},
        {"id": "3", "x": "q"},
        {"id": "5", "x": "r"},
    ]
    assert [(d["operator"], d["payload"]) for d in dead.rows] == [("sink 'files'", '{"id": 4, "x": null, "n": [1]}')]
    assert dead.rows[0]["reason"].startswith("CSV cannot hold nested values (column 'n' is List(Int64))")


def test_transactional_kafka_sink_writes_every_value_as_it_was(kafka_brokers, new_topic, tmp_path):
    topic = new_topic()
    for _ in range(2):  # the second run resumes from the first's checkpoint: nothing to redo, no crash
        flow = rh.Flow("mixed")
        _mixed(flow).sink(rh.io.KafkaSink(topic, brokers=kafka_brokers), name="out")
        flow.run(checkpoint_dir=tmp_path / "ckpt", checkpoint_every="1h")
    assert _by_id(read_all(kafka_brokers, topic)) == SENT


def test_kafka_sink_encodes_batches_as_they_are_written_and_stages_bytes(kafka_brokers, new_topic):
    """What a checkpoint keeps of a pending transaction: the messages, not rows to concatenate."""
    from rheon.io.base import BuildContext

    topic = new_topic()
    logic: Any = rh.io.KafkaSink(topic, brokers=kafka_brokers, key="id").build(
        BuildContext(flow="f", operator="out", checkpointing=True)
    )
    try:
        for row in SENT:
            logic.write(pl.DataFrame([row]))
        logic.pre_commit(1)
        frames, objects = logic.state()
        staged = frames["pending_1"]
        assert staged.schema == pl.Schema({"__rheon_key": pl.Binary, "__rheon_value": pl.Binary})
        assert staged.get_column("__rheon_key").to_list() == [b"1", b"2", b"3", b"4"]
        assert [json.loads(v) for v in staged.get_column("__rheon_value").to_list()] == SENT
        # A checkpoint of rheon 0.1 staged the rows themselves: they are encoded when loaded.
        logic.load_state({"pending_1": pl.DataFrame(SENT[:1])}, {"ends": {1: objects["ends"][1]}})
        assert logic.state()[0]["pending_1"].get_column("__rheon_value").to_list() == [b'{"id":1,"a":{"b":1}}']
        logic.commit(1)
    finally:
        logic.close()
    assert read_all(kafka_brokers, topic) == SENT[:1]


def test_collect_rows_hold_every_value_as_it_was():
    flow = rh.Flow("mixed")
    out = collect(_mixed(flow))
    flow.run()
    assert _by_id(out.rows) == SENT  # a struct, a float and a list in one column: nothing converted


def test_parquet_file_sink_sends_rows_it_cannot_hold_to_the_dead_letters(tmp_path):
    flow = rh.Flow("empty")
    frame = pl.DataFrame({"id": [1, 2, 3], "x": [{}, None, {}], "n": [[{}], None, None]})  # objects without fields
    flow.source(rh.io.Records(frame), name="in").sink(rh.io.FileSink(tmp_path, format="parquet"), name="files")
    dead = collect(flow.dead_letters())
    flow.run()  # before: InvalidOperationError when the file was written, and the run failed
    written = pl.concat([pl.read_parquet(p) for p in tmp_path.glob("part-*.parquet")])
    assert written.to_dicts() == [{"id": 2}]
    assert [d["payload"] for d in dead.rows] == ['{"id": 1, "x": {}, "n": [{}]}', '{"id": 3, "x": {}, "n": null}']
    assert dead.rows[0]["reason"].startswith("Parquet cannot hold an object without fields (column 'x' is Struct({}))")


def test_recovering_an_older_checkpoint_removes_part_files_of_later_ones_issue_10(tmp_path):
    """When the newest checkpoints were damaged and an older one is restored, the part files the
    later checkpoints committed are removed: the replay writes their rows again (in files that
    may roll differently), so keeping them would double rows."""
    from rheon.io.base import BuildContext

    out = tmp_path / "out"
    out.mkdir()
    names = ["part-00000003-0000.jsonl", "part-00000005-0000.jsonl", "part-00000005-0001.jsonl"]
    names += ["part-00000004-0000.jsonl", "part-t0000000000001-000000-abcd1234.jsonl"]
    for name in names:
        (out / name).write_text('{"x": 1}\n')
    logic = rh.io.FileSink(str(out), format="jsonl").build(BuildContext(flow="f", operator="files", checkpointing=True))
    logic.recover(4)
    assert sorted(p.name for p in out.iterdir()) == [
        "part-00000003-0000.jsonl",
        "part-00000004-0000.jsonl",
        "part-t0000000000001-000000-abcd1234.jsonl",  # a run without checkpoints: not ours to judge
    ]
