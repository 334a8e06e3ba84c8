"""``rh.io.Postgres`` with checkpoints stays exactly-once when the connection or the process dies at
any moment of the commit protocol, against a real server (RHEON_TEST_POSTGRES, default
127.0.0.1:5432/test).

First each dangerous moment on its own, in this process; then chaos: a child process
(``pg_flow_under_test.py``) is killed again and again, its database session ended and its
connection cut at random points of the commit protocol, and the table must hold each row exactly
once. The default chaos run is short (150 rows; >= 2 SIGKILLs and >= 2 sessions ended or cut): its
first two runs each get a fault placed deliberately at a checkpoint's ``COMMIT`` (the reply lost
after the server committed; the connection cut before the ``COMMIT`` reached the server, the
session left open), then a SIGKILL once the next commit has gone through, before the next
checkpoint; the runs after them fault at random. ``pytest -m slow`` runs the long version
(>= 30 SIGKILLs, >= 60 sessions ended or cut, all random).
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from rheon.io.base import BuildContext
from rheon.io.postgres import Postgres, _PostgresLogic
from tests.io.pg_flow_under_test import CommitCutProxy
from tests.services import free_port

try:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo
except ImportError:  # pragma: no cover - reported by the fixture
    psycopg = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parents[2]
LINE_TIMEOUT_S = 180  # a child that says nothing for this long is stuck


def query(dsn: str, text: str, *params: object) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(text, params)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def drop(dsn: str, table: str) -> None:
    query(dsn, sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)).as_string(None))
    if query(dsn, "SELECT to_regclass('rheon_progress')")[0][0] is not None:
        query(dsn, "DELETE FROM rheon_progress WHERE target = %s", table)


@pytest.fixture
def table(dsn: str) -> Iterator[str]:
    name = f"rheon_test_{uuid.uuid4().hex[:12]}"
    yield name
    drop(dsn, name)


def terminate(dsn: str, app_name: str) -> int:
    """End the sessions of ``app_name``, waiting until they are gone."""
    ended = query(
        dsn, "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = %s", app_name
    )
    return len(ended)


def duplicates(rows: list[tuple]) -> int:
    return sum(count - 1 for count in Counter(rows).values())


# -- each dangerous moment on its own -------------------------------------------------------------

ROWS = [pl.DataFrame({"id": list(range(i, i + 10)), "k": [j % 7 for j in range(i, i + 10)]}) for i in (0, 10, 20)]


def expected_rows(key: str | None) -> list[tuple]:
    rows = [(i, i % 7) for i in range(30)]
    if key is None:
        return rows
    return sorted({k: (i, k) for i, k in rows}.values())


def contents(dsn: str, table: str) -> list[tuple]:
    return sorted(query(dsn, f'SELECT id, k FROM "{table}"'))


@pytest.fixture
def behind_proxy(dsn) -> Iterator[tuple[str, CommitCutProxy]]:
    info = conninfo_to_dict(dsn)
    proxy = CommitCutProxy(free_port(), int(info.get("port") or 5432), target_host=str(info.get("host") or "127.0.0.1"))
    yield make_conninfo(dsn, host="127.0.0.1", port=proxy.listen_port, options="-c lock_timeout=10s"), proxy
    proxy.close()


def first_interval(dsn: str, table: str, key: str | None, flow: str) -> tuple[_PostgresLogic, tuple]:
    """A sink (in a run with checkpoints) that wrote three batches and took checkpoint 1: it is
    on disk (the state returned), its transaction not committed yet."""
    logic = _PostgresLogic(
        Postgres(table, dsn=dsn, key=key), BuildContext(flow=flow, operator="out", checkpointing=True)
    )
    logic.recover(None)
    for frame in ROWS:
        logic.write(frame)
    logic.pre_commit(1)
    saved = logic.state()
    assert saved is not None
    return logic, saved


def restart_from(dsn: str, table: str, key: str | None, flow: str, saved: tuple) -> None:
    """The process died; a new one restores checkpoint 1 (replaying nothing: the input ended there)."""
    logic = _PostgresLogic(
        Postgres(table, dsn=dsn, key=key), BuildContext(flow=flow, operator="out", checkpointing=True)
    )
    try:
        logic.load_state(*saved)
        logic.recover(1)
    finally:
        logic.close()


@pytest.mark.parametrize("key", [None, "k"], ids=["append", "upsert"])
def test_a_commit_lost_and_rewritten_is_not_written_again_after_a_crash(dsn, table, key, caplog):
    """Issue 10, defect 4: the session dies at the COMMIT; the sink writes the rows again in a new
    transaction, which commits; the process dies before the next checkpoint. Restarted from
    checkpoint 1, it must see that the rows are in, and not append them again."""
    logic, saved = first_interval(dsn, table, key, "lost")
    try:
        assert terminate(dsn, "rheon lost/out") == 1
        with caplog.at_level("INFO", logger="rheon.io"):
            logic.commit(1)  # reconnects, finds the transaction aborted, writes its rows again
        assert "status=aborted" in caplog.text
        assert contents(dsn, table) == expected_rows(key)
    finally:
        logic.close()  # the process dies before checkpoint 2
    restart_from(dsn, table, key, "lost", saved)
    rows = contents(dsn, table)
    assert duplicates(rows) == 0
    assert rows == expected_rows(key)


@pytest.mark.parametrize("half_open", [False, True], ids=["closed", "half_open"])
@pytest.mark.parametrize("deliver", [True, False], ids=["reply_lost", "commit_lost"])
@pytest.mark.parametrize("key", [None, "k"], ids=["append", "upsert"])
def test_a_connection_cut_at_the_commit_writes_each_row_once(dsn, table, behind_proxy, key, deliver, half_open, caplog):
    """The connection breaks as the COMMIT passes: before it reaches the server (the transaction is
    aborted, or with ``half_open`` still open on the server, holding its locks) or after (the
    server committed; the client never hears). The sink finds out from the database which, in
    the run and again after a crash, and the table holds each row once."""
    proxied, proxy = behind_proxy
    logic, saved = first_interval(proxied, table, key, "cut")
    try:
        proxy.arm(deliver=deliver, half_open=half_open)
        with caplog.at_level("INFO", logger="rheon.io"):
            logic.commit(1)
        assert proxy.armed is None  # the cut happened
        assert ("status=committed" if deliver else "status=aborted") in caplog.text
        if half_open and not deliver:
            assert "postgres_lost_session sink=out" in caplog.text  # the old session was ended
        assert contents(dsn, table) == expected_rows(key)
    finally:
        logic.close()
    restart_from(proxied, table, key, "cut", saved)
    rows = contents(dsn, table)
    assert duplicates(rows) == 0
    assert rows == expected_rows(key)


def test_a_session_left_open_by_a_dead_process_is_ended_on_restart(dsn, table, behind_proxy, caplog):
    """The process died while the network was down: the server still runs its session, with the
    checkpoint's transaction open and the progress row locked. The restarted sink ends that
    session, finds the transaction uncommitted, and writes the rows once."""
    proxied, proxy = behind_proxy
    logic, saved = first_interval(proxied, table, None, "stale")
    proxy.cut(half_open=True)  # the old session lives on at the server
    logic.close()  # ... and the process is gone
    proxy.restore()
    with caplog.at_level("INFO", logger="rheon.io"):
        restart_from(proxied, table, None, "stale", saved)
    assert "postgres_lost_session sink=out" in caplog.text
    rows = contents(dsn, table)
    assert duplicates(rows) == 0
    assert rows == expected_rows(None)


def test_restoring_a_checkpoint_older_than_the_table_is_reported_and_counted_from_there(dsn, table, caplog):
    """Checkpoints 1 and 2 committed, then checkpoint 2 is found damaged and 1 restored: the sink
    says the table holds later output, and sets its progress row back to 1, so that a crash of
    the new checkpoint 2 before its commit is still told apart from the old one (else its rows,
    taken for committed, would be lost)."""
    ctx = BuildContext(flow="older", operator="out", checkpointing=True)
    a, b, c = (pl.DataFrame({"id": [i], "k": [i]}) for i in (1, 2, 3))
    first = _PostgresLogic(Postgres(table, dsn=dsn, key="k"), ctx)
    try:
        first.recover(None)
        first.write(a)
        first.pre_commit(1)
        one = first.state()
        first.commit(1)
        first.write(b)
        first.pre_commit(2)
        first.commit(2)
    finally:
        first.close()
    assert one is not None
    second = _PostgresLogic(Postgres(table, dsn=dsn, key="k"), ctx)
    try:
        second.load_state(*one)
        with caplog.at_level("INFO", logger="rheon.io"):
            second.recover(1)
        assert "postgres_restored_older sink=out" in caplog.text
        assert "restored=1 committed=2" in caplog.text
        second.write(b)  # the replay, going further this time
        second.write(c)
        second.pre_commit(2)
        two = second.state()
    finally:
        second.close()  # dies before committing the new checkpoint 2
    assert two is not None
    restart = _PostgresLogic(Postgres(table, dsn=dsn, key="k"), ctx)
    try:
        restart.load_state(*two)
        restart.recover(2)
    finally:
        restart.close()
    assert contents(dsn, table) == [(1, 1), (2, 2), (3, 3)]


def test_a_deleted_progress_row_with_rows_pending_is_a_clear_error(dsn, table):
    logic, saved = first_interval(dsn, table, None, "gone")
    logic.close()
    writer = saved[1]["writer"]
    query(dsn, "DELETE FROM rheon_progress WHERE writer = %s", writer)
    with pytest.raises(Exception, match=rf"progress row of writer {writer} is missing from table rheon_progress.*new checkpoint_dir"):  # fmt: skip
        restart_from(dsn, table, None, "gone", saved)


# -- chaos ------------------------------------------------------------------------------------------


def _lines(stream, out: queue.Queue) -> None:
    for line in stream:
        out.put(line.rstrip("\n"))
    out.put(None)


# For each of the first runs, a fault at the COMMIT of its n-th checkpoint, then a SIGKILL after the
# next commit that goes through (PG_CHAOS_AT in pg_flow_under_test.py), and no random fault.
PLAN = ("lose-reply:2", "drop-commit-half-open:1")


def chaos(
    dsn: str,
    tmp_path: Path,
    *,
    mode: str,
    sigkills: int,
    session_kills: int,
    n: int,
    seed: int,
    plan: tuple[str, ...] = (),
) -> Counter:
    """Run the child flow again and again until it has been SIGKILLed ``sigkills`` times and its
    session ended or cut ``session_kills`` times; each time the child finishes, check its table
    (each row once, none missing) and start over with a new one. The first runs follow ``plan``
    (see ``PLAN``), the others fault at random."""
    rnd = random.Random(seed)
    stats: Counter = Counter()
    expected = (
        [(i, i % 97, i * 3) for i in range(n)]
        if mode == "append"
        else sorted({i % 97: (i, i % 97, i * 3) for i in range(n)}.values())
    )
    while stats["sigkill"] < sigkills or stats["session"] < session_kills:
        stats["tables"] += 1
        table, flow_name = f"rheon_chaos_{uuid.uuid4().hex[:12]}", f"pgchaos_{uuid.uuid4().hex[:8]}"
        ckpt = tmp_path / f"ckpt-{stats['tables']}"
        args = [dsn, table, flow_name, mode, str(ckpt), str(n)]
        try:
            for runs in range(1, 200):
                assert runs < 150, "the child keeps dying before it finishes"
                planned = plan[stats["runs"]] if stats["runs"] < len(plan) else None
                stats["runs"] += 1
                env = {
                    **os.environ,
                    "PG_CHAOS_P": "0.03",
                    "PG_CHAOS_COMMIT_P": "0.1",
                    "PG_CHAOS_SEED": str(rnd.randrange(10**9)),
                    "PYTHONPATH": str(ROOT),
                }
                if planned is not None:
                    env.update({"PG_CHAOS_P": "0", "PG_CHAOS_COMMIT_P": "0", "PG_CHAOS_AT": planned})
                    kill_at = None
                else:
                    # 40% of the runs are SIGKILLed from here, after a random number of committed checkpoints.
                    kill_at = rnd.randint(1, 12) if rnd.random() < 0.4 else None
                err_path = tmp_path / f"stderr-{stats['runs']}.txt"
                with err_path.open("w") as err:
                    proc = subprocess.Popen(
                        [sys.executable, "-m", "tests.io.pg_flow_under_test", *args],
                        cwd=ROOT,
                        stdout=subprocess.PIPE,
                        stderr=err,
                        text=True,
                        env=env,
                    )
                    lines: queue.Queue = queue.Queue()
                    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
                    committed, done, faults = 0, None, []
                    while True:
                        line = lines.get(timeout=LINE_TIMEOUT_S)
                        if line is None:
                            break
                        what = line.split()
                        if what[0] == "fault":
                            faults.append(line)
                            stats["sigkill" if what[1] == "sigkill" else "session"] += 1
                            stats[f"{what[1]} {what[2]}"] += 1
                        elif what[0] == "done":
                            done = line
                        elif what[0] == "committed":
                            committed += 1
                            # End the session at a random moment after this commit (not in a planned run).
                            if planned is None and rnd.random() < 0.1:
                                time.sleep(rnd.uniform(0, 0.02))
                                ended = terminate(dsn, f"rheon {flow_name}/out")
                                stats["session"] += ended
                                stats["terminate from outside"] += ended
                            if kill_at is not None and committed >= kill_at:
                                time.sleep(rnd.uniform(0, 0.02))  # a random moment after the commit
                                proc.send_signal(signal.SIGKILL)
                                kill_at = None
                                stats["sigkill"] += 1
                                stats["sigkill from outside"] += 1
                    proc.wait(timeout=LINE_TIMEOUT_S)
                if planned is not None:
                    wanted = [f"fault {planned.split(':')[0]} at-commit", "fault sigkill after-recommit"]
                    assert faults == wanted, f"run {runs}: planned {wanted}, got {faults}"
                if proc.returncode == -signal.SIGKILL:
                    continue
                assert proc.returncode == 0, err_path.read_text()[-3000:]
                assert done is not None
                assert f"rows_in={n} " in done or "restored_from=" in done, done
                assert "dead_letters=0 " in done, done
                break
            rows = sorted(query(dsn, f'SELECT id, k, v FROM "{table}"'))
            stats["rows"] += len(rows)
            stats["duplicates"] += duplicates(rows)
            stats["missing"] += len(set(expected) - set(rows))
            assert duplicates(rows) == 0, f"{mode}: {duplicates(rows)} rows written twice ({dict(stats)})"
            assert rows == expected, f"{mode}: {len(set(expected) - set(rows))} rows missing ({dict(stats)})"
        finally:
            drop(dsn, table)
    print(f"{mode}: {dict(stats)}")
    return stats


@pytest.mark.parametrize("mode", ["append", "upsert"])
def test_chaos_kills_sessions_and_processes_and_no_row_is_lost_or_doubled(dsn, tmp_path, mode):
    stats = chaos(dsn, tmp_path, mode=mode, sigkills=2, session_kills=2, n=150, seed=10 + (mode == "upsert"), plan=PLAN)
    assert stats["duplicates"] == stats["missing"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["append", "upsert"])
def test_chaos_long_version(dsn, tmp_path, mode):
    stats = chaos(dsn, tmp_path, mode=mode, sigkills=30, session_kills=60, n=1500, seed=20 + (mode == "upsert"))
    assert stats["duplicates"] == stats["missing"] == 0
