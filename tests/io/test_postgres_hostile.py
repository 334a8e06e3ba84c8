"""``rh.io.Postgres`` with hostile values, against a real server: every record lands in the
table exactly as sent."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import rheon as rh
from rheon.io.postgres import Postgres
from rheon.testing import ScriptedSource, collect
from tests.services import unavailable

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - reported by the fixture
    psycopg = None  # type: ignore[assignment]

DSN = os.environ.get("RHEON_TEST_POSTGRES", "postgresql://127.0.0.1/test")

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


@pytest.fixture(scope="module")
def dsn() -> str:
    if psycopg is None:
        unavailable("psycopg", "pip install -e '.[postgres]'")
    try:
        psycopg.connect(DSN, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        unavailable("PostgreSQL", f"start PostgreSQL on 127.0.0.1:5432 with a database 'test' ({str(exc).strip()})")
    return DSN


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    name = f"rheon_test_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def query(dsn: str, text: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def run(
    dsn: str, table: str, rows: list[dict], *, key: str | None = None, batch_size: int = 100, ckpt: Path | None = None
):
    flow = rh.Flow("hostile")
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]  # each batch typed by itself
    flow.source(ScriptedSource(batches)).sink(Postgres(table, dsn=dsn, key=key), name="out")
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
