"""The flow the PostgreSQL chaos test kills: N records into ``rh.io.Postgres`` (append or upsert),
a checkpoint after every batch.

Run (from the repository root): ``python -m tests.io.pg_flow_under_test DSN TABLE FLOW MODE CKPT N``
with MODE ``append`` or ``upsert``. The sink connects through a :class:`CommitCutProxy` in this
process. It prints ``committed <checkpoint>`` after each checkpoint's commit (the parent kills it
relative to these lines) and, at the end, ``done rows_in=... dead_letters=...``.

With ``PG_CHAOS_P=p`` (and ``PG_CHAOS_SEED``) it injects faults itself, each with probability p at
each point of the commit protocol (``PG_CHAOS_COMMIT_P`` at each ``COMMIT``, default p), and prints
``fault <what> <where>`` just before each:

- ``terminate``: ``pg_terminate_backend`` of the sink's session from a second connection (waiting
  until the session is gone), so the sink's next statement finds its connection dead;
- ``drop-commit`` / ``drop-commit-half-open``: the proxy cuts the connection as the ``COMMIT``
  passes, before it reaches the server (half-open: the server is not told, so the session lives
  on, its transaction open and holding its locks);
- ``lose-reply`` / ``lose-reply-half-open``: the proxy lets the ``COMMIT`` reach the server, which
  commits, and cuts the connection before the reply comes back;
- ``sigkill``: the process SIGKILLs itself. After a fault at a commit, the next commit that goes
  through is followed by a SIGKILL half of the time: the moment (a rewritten transaction
  committed, the next checkpoint not taken) where a transaction id kept in the checkpoint used to
  double the rows.

With ``PG_CHAOS_AT=<what>:<n>`` (``<what>`` one of the faults at a ``COMMIT`` above) it injects
that fault at the ``COMMIT`` of the ``n``-th checkpoint this run commits, and SIGKILLs itself
(``after-recommit``) once the next commit has gone through: a test places the dangerous moment
deliberately rather than by chance.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading
from typing import Any

from tests.proxy import TcpProxy, _drop


class CommitCutProxy(TcpProxy):
    """A :class:`~tests.proxy.TcpProxy` that can cut the connection at the next ``COMMIT``.

    ``arm(deliver=False)`` cuts it before the ``COMMIT`` reaches the server (the transaction is
    aborted); ``arm(deliver=True)`` forwards the ``COMMIT`` and drops the server's reply, then cuts
    (the transaction committed, but the client cannot know). ``half_open`` as in ``cut``. Clients
    may connect again after ``restore_after`` seconds.
    """

    def __init__(self, listen_port: int, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.armed: tuple[bool, bool, float] | None = None  # (deliver, half_open, restore_after)
        self.muted: set[tuple[socket.socket, socket.socket]] = set()  # pairs whose replies are dropped
        super().__init__(listen_port, target_port, target_host)

    def arm(self, *, deliver: bool, half_open: bool = False, restore_after: float = 0.2) -> None:
        self.armed = (deliver, half_open, restore_after)

    def _pipe(self, source: socket.socket, target: socket.socket, pair: tuple[socket.socket, socket.socket]) -> None:
        to_server = source is pair[0]
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                armed = self.armed
                if to_server and armed is not None and b"COMMIT" in data:
                    self.armed = None
                    deliver, half_open, restore_after = armed
                    if deliver:
                        self.muted.add(pair)  # before the COMMIT goes out, so its reply surely is dropped
                        target.sendall(data)
                    self.cut(half_open=half_open)
                    timer = threading.Timer(restore_after, self.restore)
                    timer.daemon = True
                    timer.start()
                    break
                if not to_server and pair in self.muted:
                    continue
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self.lock:
                self.pairs.discard(pair)
                _drop(*(s for s in (source, target) if s not in self.held))


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def install_faults(dsn: str, app_name: str, proxy: CommitCutProxy) -> None:
    """Wrap the sink's protocol steps and psycopg's commit with the faults described above."""
    import psycopg

    from rheon.io.postgres import _PostgresLogic

    p = float(os.environ.get("PG_CHAOS_P", "0"))
    planned_fault, _, planned_nth = os.environ.get("PG_CHAOS_AT", "").rpartition(":")
    if p <= 0 and not planned_fault:
        return
    commit_p = float(os.environ.get("PG_CHAOS_COMMIT_P", str(p)))
    rnd = random.Random(int(os.environ.get("PG_CHAOS_SEED", "0")))
    admin = psycopg.connect(dsn, autocommit=True)  # straight to the server, not through the proxy
    after_fault = [False]
    checkpoint_commits = [0]
    planned_due = [False]  # the planned fault hits this checkpoint's COMMIT
    planned_done = [False]  # ... and the SIGKILL comes after the next commit that goes through

    def sigkill(where: str) -> None:
        say(f"fault sigkill {where}")
        os.kill(os.getpid(), signal.SIGKILL)

    def terminate(where: str) -> None:
        say(f"fault terminate {where}")
        admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = %s", [app_name]
        )

    def maybe(where: str, *, kill: bool = True, end: bool = True) -> None:
        if rnd.random() >= p:
            return
        choices = [f for f, ok in ((sigkill, kill), (terminate, end)) if ok]
        rnd.choice(choices)(where)

    real_commit = psycopg.Connection.commit

    def commit(self: psycopg.Connection[Any]) -> None:
        if self is admin:
            real_commit(self)
            return
        by_chance = rnd.random() < commit_p
        what = None
        if planned_due[0]:
            planned_due[0], planned_done[0] = False, True
            what = planned_fault
        elif by_chance:
            what = rnd.choice(
                ["sigkill", "terminate", "drop-commit", "drop-commit-half-open", "lose-reply", "lose-reply-half-open"]
            )
        if what is not None:
            if what == "sigkill":
                sigkill("before-commit")
            elif what == "terminate":
                terminate("before-commit")
            else:
                say(f"fault {what} at-commit")
                proxy.arm(deliver=what.startswith("lose-reply"), half_open=what.endswith("half-open"))
            after_fault[0] = True
        real_commit(self)
        if after_fault[0]:
            after_fault[0] = False
            if rnd.random() < 0.5 or planned_done[0]:
                sigkill("after-recommit")
        maybe("after-commit", end=False)

    psycopg.Connection.commit = commit  # type: ignore[method-assign]

    real_checkpoint_commit = _PostgresLogic.commit

    def checkpoint_commit(self: _PostgresLogic, checkpoint_id: int) -> None:
        checkpoint_commits[0] += 1
        planned_due[0] = bool(planned_fault) and checkpoint_commits[0] == int(planned_nth)
        real_checkpoint_commit(self, checkpoint_id)
        planned_due[0] = False

    _PostgresLogic.commit = checkpoint_commit  # type: ignore[method-assign]

    def around(name: str, *, before: bool = True, after: bool = True) -> None:
        real = getattr(_PostgresLogic, name)

        def wrapped(self: _PostgresLogic, *args: Any) -> Any:
            if before:
                maybe(f"before-{name}")
            result = real(self, *args)
            if after:
                maybe(f"after-{name}", end=name != "_resync")
            return result

        setattr(_PostgresLogic, name, wrapped)

    around("write")
    around("pre_commit")
    around("recover")
    around("_resync")


def main() -> None:
    dsn, table, flow_name, mode, ckpt, n = sys.argv[1:7]
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    import rheon as rh
    from rheon.io.postgres import Postgres, _PostgresLogic
    from tests.services import free_port

    info = conninfo_to_dict(dsn)
    proxy = CommitCutProxy(free_port(), int(info.get("port") or 5432), target_host=str(info.get("host") or "127.0.0.1"))
    proxied = make_conninfo(dsn, host="127.0.0.1", port=proxy.listen_port)
    install_faults(dsn, f"rheon {flow_name}/out", proxy)

    real_commit = _PostgresLogic.commit

    def commit(self: _PostgresLogic, checkpoint_id: int) -> None:
        real_commit(self, checkpoint_id)
        say(f"committed {checkpoint_id}")

    _PostgresLogic.commit = commit  # type: ignore[method-assign]

    rows = [{"id": i, "k": i % 97, "v": i * 3} for i in range(int(n))]
    flow = rh.Flow(flow_name)
    sink = Postgres(table, dsn=proxied, key="k" if mode == "upsert" else None, retries=8)
    flow.source(rh.io.Records(rows, batch_size=25), name="rows").sink(sink, name="out")
    say("ready")
    flow.run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    stats = flow.metrics()
    assert stats is not None
    say(f"done rows_in={stats.records_in} dead_letters={stats.dead_letters} restored_from={stats.restored_from}")


if __name__ == "__main__":
    main()
