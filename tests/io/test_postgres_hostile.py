"""``rh.io.Postgres`` with hostile values and drifting types, against a real server.

Every record either lands in the table exactly as sent or goes to the dead letters with a reason
naming the field, the value and the type the column wants; nothing is dropped, coerced or crashes
a checkpoint.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

import rheon as rh
from rheon.io.base import BuildContext
from rheon.io.postgres import Postgres, _PostgresLogic
from rheon.testing import ScriptedSource, collect

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - reported by the fixture
    psycopg = None  # type: ignore[assignment]


HOSTILE = [
    "a",
    "\\.",  # COPY's end-of-data marker, on a line by itself in single-column CSV
    "b",
    "c",
    "\\.\n",
    "line 1\n\\.\nline 3",
    "tab\there",
    "cr\r\nlf",
    "\\N",  # text COPY's NULL
    "back\\slash\\",
    'say "hi", "bye"',
    "",  # the empty string, which is not NULL
    None,
    ",",
    '"',
    "\\",
    "ünïcødé ✓ 🐍",
]


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    name = f"rheon_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        if conn.execute("SELECT to_regclass('rheon_progress')").fetchone() != (None,):
            conn.execute("DELETE FROM rheon_progress WHERE target = %s", [name])  # the sink's progress rows


def query(dsn: str, text: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def run(
    dsn: str, table: str, rows: list[dict], *, key: str | None = None, batch_size: int = 100, ckpt: Path | None = None
):
    flow = rh.Flow("hostile")
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    # Each batch from a source of its own: a source keeps a field's type from batch to batch (a
    # drifting value is its dead letter), a union of sources does not, so the sink meets the drift.
    first, *others = [flow.source(ScriptedSource([batch]), name=f"in{i}") for i, batch in enumerate(batches)]
    (first.union(*others) if others else first).sink(Postgres(table, dsn=dsn, key=key), name="out")
    dead = collect(flow.dead_letters())
    if ckpt is None:
        flow.run()
    else:
        flow.run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    return dead.rows


@pytest.mark.parametrize("key", [None, "s"], ids=["append", "upsert"])
def test_the_copy_end_marker_as_a_value_loses_no_row(dsn, table, key):
    rows = [{"s": "a"}, {"s": "\\."}, {"s": "b"}, {"s": "c"}]
    assert run(dsn, table, rows, key=key) == []
    assert sorted(r[0] for r in query(dsn, f'SELECT s FROM "{table}"')) == ["\\.", "a", "b", "c"]


@pytest.mark.parametrize("checkpoints", [False, True], ids=["no_checkpoints", "checkpoints"])
@pytest.mark.parametrize("key", [None, "i"], ids=["append", "upsert"])
def test_hostile_strings_land_exactly_as_sent(dsn, table, tmp_path, key, checkpoints):
    single = f"{table}"
    rows = [{"i": i, "s": s} for i, s in enumerate(HOSTILE)]
    assert run(dsn, single, rows, key=key, batch_size=3, ckpt=tmp_path if checkpoints else None) == []
    assert sorted(query(dsn, f'SELECT i, s FROM "{single}"')) == [(i, s) for i, s in enumerate(HOSTILE)]


def test_hostile_strings_in_a_single_column_table(dsn, table):
    rows = [{"s": s} for s in HOSTILE]
    assert run(dsn, table, rows) == []
    got = [r[0] for r in query(dsn, f'SELECT s FROM "{table}"')]
    assert sorted(got, key=repr) == sorted(HOSTILE, key=repr)


@pytest.mark.parametrize("key", [None, "i"], ids=["append", "upsert"])
def test_a_nul_character_is_a_dead_letter_naming_the_field_and_the_flow_goes_on(dsn, table, key):
    rows = [{"i": 1, "s": "a"}, {"i": 2, "s": "nul\x00here"}, {"i": 3, "s": "\\."}, {"i": 4, "s": "d"}]
    dead = run(dsn, table, rows, key=key)
    assert sorted(query(dsn, f'SELECT i, s FROM "{table}"')) == [(1, "a"), (3, "\\."), (4, "d")]
    assert [json.loads(d["payload"]) for d in dead] == [{"i": 2, "s": "nul\x00here"}]
    assert "field 's'" in dead[0]["reason"]
    assert "NUL" in dead[0]["reason"]


@pytest.mark.parametrize("key", [None, "i"], ids=["append", "upsert"])
def test_types_that_drift_are_dead_letters_never_coerced(dsn, table, tmp_path, key):
    """An object then a float for one jsonb column, then an array; an int then a string for a text
    column; a bool for an integer column: each misfit row is a dead letter, the rest land intact,
    and the checkpoints (which used to concatenate a checkpoint interval's batches with a
    type-relaxing concat, then crash on an object next to an array) go through."""
    rows = [
        {"i": 1, "a": {"b": 1}, "t": "x", "n": 10},
        {"i": 2, "a": 1.5, "t": "y", "n": 11},  # a number where objects were
        {"i": 3, "a": [1, 2], "t": "z", "n": 12},  # an array where objects were
        {"i": 4, "a": {"b": 2}, "t": 7, "n": 13},  # an int for a text column
        {"i": 5, "a": {"b": 3}, "t": "w", "n": True},  # a bool for a bigint column
        {"i": 6, "a": None, "t": None, "n": None},
        {"i": 7, "a": {"b": 4}, "t": "v", "n": 14},
    ]
    dead = run(dsn, table, rows, key=key, batch_size=1, ckpt=tmp_path)
    got = sorted(query(dsn, f'SELECT i, a, t, n FROM "{table}"'))
    assert got == [(1, {"b": 1}, "x", 10), (6, None, None, None), (7, {"b": 4}, "v", 14)]
    assert [json.loads(d["payload"])["i"] for d in dead] == [2, 3, 4, 5]
    reasons = [d["reason"] for d in dead]
    assert "field 'a' is 1.5 (Float64)" in reasons[0]
    assert "jsonb" in reasons[0]
    assert "objects" in reasons[0]
    assert "field 'a' is [1, 2]" in reasons[1]
    assert "field 't' is 7 (Int64)" in reasons[2]
    assert "text" in reasons[2]
    assert "field 'n' is True (Boolean)" in reasons[3]
    assert "bigint" in reasons[3]
    assert all(d["operator"] == "sink 'out'" for d in dead)


def test_an_existing_table_takes_only_values_of_its_column_types(dsn, table):
    query(dsn, f'CREATE TABLE "{table}" (id bigint, flag boolean, code text, price numeric(10,2), doc jsonb)')
    rows = [
        {"id": 1, "flag": True, "code": "a", "price": 1, "doc": '{"k": 1}'},  # an int is a number; text is JSON
        {"id": 2, "flag": "yes", "code": "b", "price": 2.5, "doc": None},  # 'yes' would become true
        {"id": 3, "flag": False, "code": "c", "price": "3", "doc": None},  # '3' would become 3
        {"id": 4.5, "flag": None, "code": None, "price": None, "doc": None},  # 4.5 is no bigint
        {"id": 5, "flag": None, "code": "e", "price": 5.25, "doc": None},
    ]
    dead = run(dsn, table, rows, batch_size=1)
    got = sorted(query(dsn, f'SELECT id, flag, code, price::float, doc FROM "{table}"'))
    assert got == [(1, True, "a", 1.0, {"k": 1}), (5, None, "e", 5.25, None)]
    reasons = [d["reason"] for d in dead]
    assert [json.loads(d["payload"]).get("code") for d in dead] == ["b", "c", None]
    assert "field 'flag' is 'yes' (String)" in reasons[0]
    assert "boolean" in reasons[0]
    assert "field 'price' is '3' (String)" in reasons[1]
    assert "numeric(10,2)" in reasons[1]
    assert "field 'id' is 4.5 (Float64)" in reasons[2]


def test_a_checkpoint_intervals_batches_are_written_again_as_they_were(dsn, table, tmp_path):
    """A checkpoint interval's batches are kept as written, not concatenated with a type-relaxing
    concat (which turned ``{"b": 1}`` next to ``{"c": "x"}`` into ``{"b": 1, "c": null}`` and
    crashed on an object next to an array): after a crash before the commit the restarted sink
    writes them again exactly."""
    frames = [
        pl.DataFrame({"i": [1], "a": [{"b": 1}]}),
        pl.DataFrame({"i": [2], "a": [None]}),
        pl.DataFrame({"i": [3], "a": [{"c": "x"}]}),
        pl.DataFrame({"a": [{"b": 2}], "i": [4]}),  # other column order
        pl.DataFrame({"i": [5]}),  # a column missing
    ]
    ctx = BuildContext(flow="apart", operator="out", checkpointing=True)
    first = _PostgresLogic(Postgres(table, dsn=dsn), ctx)
    first.recover(None)
    for frame in frames:
        first.write(frame)
    first.pre_commit(1)
    saved = first.state()
    first.close()  # the process dies between the checkpoint and the commit
    assert saved is not None
    assert query(dsn, f'SELECT count(*) FROM "{table}"') == [(0,)]
    second = _PostgresLogic(Postgres(table, dsn=dsn), ctx)
    try:
        second.load_state(*saved)
        second.recover(1)
    finally:
        second.close()
    expected = [(1, {"b": 1}), (2, None), (3, {"c": "x"}), (4, {"b": 2}), (5, None)]
    assert sorted(query(dsn, f'SELECT i, a FROM "{table}"')) == expected
