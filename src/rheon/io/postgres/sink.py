"""``rh.io.Postgres``: upsert rows into a PostgreSQL table (psycopg 3, ``pip install 'rheon[postgres]'``).

A batch goes to the server as CSV, encoded by Polars, through ``COPY`` into a temporary staging
table, then ``INSERT INTO table SELECT ... FROM staging ON CONFLICT (key) DO UPDATE``. Without
``key`` the batch is copied straight into the table (append). Every text value is quoted in the
CSV, so no value can be read as COPY syntax (``\\.`` alone on a line ends COPY's data).

Values are checked against the columns' types first (:class:`~rheon.io.postgres.fit.ColumnFit`):
a row with a value the column would change (``"yes"`` for a boolean, ``7`` for text, a number
where a ``jsonb`` column held objects so far) goes to the dead-letter output, as does one with a
NUL character in a string.

Transactions, with checkpoints: one transaction holds a checkpoint interval's rows and commits in
``commit(n)``, once checkpoint ``n`` is on disk; the interval's rows (each batch as written, never
concatenated into other types) also go into the checkpoint. Whether that transaction committed is
recorded in the database, in the transaction itself. A run started without a checkpoint gets a
*writer id*, and the writer's row in a progress table (``progress_table``, ``rheon_progress`` by
default: writer, flow, sink, table, checkpoint) holds the last checkpoint whose rows committed.
Each transaction locks that row first (``SELECT ... FOR UPDATE``) and sets it to ``n`` before its
``COMMIT``. After a lost connection, or on restart from checkpoint ``n``, the sink locks the row
again in a new transaction and reads it: at ``n`` or beyond, the rows committed; below, the old
transaction was aborted, and its rows are written again, with the marker, in the new one. A
session that the server still runs for a lost connection (a network failure it did not notice)
holds the lock; the sink ends that session (its own role may) before reading. The answer comes
from the data, so it holds whenever the connection or the process dies: in a commit whose reply
never came, and also after a rewritten transaction committed but before the next checkpoint,
where a transaction id kept in the checkpoint (what this sink used to keep) named the first,
aborted attempt and the rows were appended twice on restart.

Not two-phase commit (``PREPARE TRANSACTION``): it needs ``max_prepared_transactions`` above 0,
which is 0 by default and often cannot be changed on hosted servers, and a prepared transaction
left behind by a crash keeps its locks until someone resolves it by hand. The marker needs only a
table the sink's role can create (or that is created for it) and write.

Without checkpoints each batch commits (or every ``commit_rows`` rows / ``commit_every``), and a
lost connection is resolved by asking the server (``txid_status``) whether the lost transaction
committed, which it knows within a run.

Rejected rows: a batch is written in a savepoint. If the server rejects it for its data (SQLSTATE
class 22 or 23: NOT NULL, CHECK, value too long, out of range, ...) the batch is halved and each
half retried in a savepoint, down to single rows; those go to the dead-letter output with the
server's message and the rest is written.

Lost connections: the rows of the open transaction are kept until it commits. When the connection
fails the sink reconnects with exponential backoff on the flow's clock, finds out as above whether
the lost transaction committed, and writes its rows again if it did not.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl
from typing_extensions import override

from rheon.core.deadletters import payload_of
from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError, SinkError, columns_hint
from rheon.core.extras import import_extra
from rheon.core.metrics import SinkHealth
from rheon.io._reconnect import Reconnects
from rheon.io.base import BuildContext, KeepsDeadLetters, Sink, SinkLogic
from rheon.io.postgres.encoding import copy_csv, redact, sql_type
from rheon.io.postgres.fit import ColumnFit

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

__all__ = ["Postgres"]

log = logging.getLogger(__name__)

_END_WAIT_STEPS, _END_WAIT_STEP_S = 100, 0.05  # wait up to 5 s for a lost session to end
_NAME = r"[^.]+(\.[^.]+)?"


class Postgres(Sink):
    """Write rows to a PostgreSQL table: an idempotent upsert on ``key``, or an append without it.

    Parameters
    ----------
    table
        ``"name"`` or ``"schema.name"``; quoted as written (so case-sensitive).
    dsn
        A libpq connection string or URL.
    key
        The column(s) identifying a row: rows are upserted (``ON CONFLICT (key) DO UPDATE``), the
        last row of a key in a batch winning. The table needs a primary key or unique constraint on
        exactly these columns. Without ``key`` rows are appended.
    create
        Create the table when it is missing, typed from the first batch (see :func:`sql_type`),
        with a primary key on ``key``.
    commit_rows, commit_every
        Without checkpoints, commit once this many rows or this much time (checked as batches
        arrive) have gone by, and at the end of the run, instead of after every batch; a run that
        fails loses what it had not committed.
    connect_timeout, retries, retry_backoff
        How long to wait for the server; how often to reconnect when the connection fails while
        running, waiting ``retry_backoff`` and then twice as long each time (up to 30 s). Each
        reconnection counts as a retry in the metrics (``rheon_sink_retries_total``).
    progress_table
        With checkpoints: the table (``"name"`` or ``"schema.name"``) where the sink records, in
        the same transaction as the rows, the last checkpoint whose rows committed; created when
        missing. One row per run started without a checkpoint (column ``writer``, also in the
        checkpoints); the rows of checkpoint directories no longer used may be deleted.

    Values: None is NULL, nested values JSON. A value must fit its column as it is: a row with
    one that does not (a string for a boolean or a number column, a number for a text column, a
    number where a ``jsonb`` column held objects so far, a string with a NUL character) goes to
    the dead-letter output with the field, the value and the column's type; so do rows the server
    rejects (NOT NULL, CHECK, a value too long, ...), with its message. The rest is written.

    Guarantees. With checkpoints, with or without ``key``: exactly-once for the table's contents.
    A checkpoint interval's rows commit in one transaction when the checkpoint completes, so
    readers see only the output of completed checkpoints; the transaction also records the
    checkpoint in ``progress_table``, so after a lost connection or a crash the sink asks the
    database whether it committed and writes the rows again only if it did not, whatever moment
    the failure hit. Without checkpoints, with ``key``: each batch commits by itself; rows are
    delivered at least once, as idempotent upserts, so a rerun leaves each key once with its
    latest values. Without ``key`` or checkpoints: at-least-once (a rerun appends its rows again).

    Examples
    --------
    >>> from rheon.io.postgres import Postgres
    >>> Postgres("per_card", dsn="postgresql://app:secret@db/test", key=["card", "window_start"])
    Postgres('per_card', dsn='postgresql://app:***@db/test', key=['card', 'window_start'])
    """

    def __init__(
        self,
        table: str,
        *,
        dsn: str = "postgresql://127.0.0.1/test",
        key: str | Sequence[str] | None = None,
        create: bool = True,
        commit_rows: int | None = None,
        commit_every: Duration | None = None,
        connect_timeout: Duration = "5s",
        retries: int = 5,
        retry_backoff: Duration = "200ms",
        progress_table: str = "rheon_progress",
    ) -> None:
        problems = {
            f"table must be 'name' or 'schema.name' (got {table!r})": not re.fullmatch(_NAME, table),
            f"progress_table must be 'name' or 'schema.name' (got {progress_table!r})": not re.fullmatch(
                _NAME, progress_table
            ),
            f"commit_rows must be at least 1 (got {commit_rows})": commit_rows is not None and commit_rows < 1,
            f"retries must not be negative (got {retries})": retries < 0,
        }
        for problem, found in problems.items():
            if found:
                msg = f"Postgres: {problem}"
                raise FlowError(msg)
        self.table = table
        self.dsn = dsn
        self.key = [key] if isinstance(key, str) else list(key or [])
        self.create = create
        self.commit_rows = commit_rows
        self.commit_every_ms = None if commit_every is None else to_ms(commit_every, what="Postgres: commit_every")
        self.connect_timeout_ms = to_ms(connect_timeout, what="Postgres: connect_timeout")
        self.retries = retries
        self.retry_backoff_ms = to_ms(retry_backoff, what="Postgres: retry_backoff")
        self.progress_table = progress_table

    def __repr__(self) -> str:
        return f"Postgres({self.table!r}, dsn={redact(self.dsn)!r}, key={self.key})"

    @override
    def build(self, ctx: BuildContext) -> SinkLogic:
        import_extra("psycopg", user="rh.io.Postgres", package="psycopg 3", extra="postgres")  # fail early, at build
        return _PostgresLogic(self, ctx)


def _runs(frames: list[pl.DataFrame], dedupe: Callable[[pl.DataFrame], pl.DataFrame]) -> list[pl.DataFrame]:
    """Consecutive frames of one schema concatenated (strictly, so no value changes type); others apart."""
    runs: list[list[pl.DataFrame]] = []
    for frame in frames:
        if runs and runs[-1][-1].schema == frame.schema:
            runs[-1].append(frame)
        else:
            runs.append([frame])
    return [dedupe(pl.concat(run)) if len(run) > 1 else run[0] for run in runs]


class _PostgresLogic(KeepsDeadLetters, SinkLogic):
    def __init__(self, cfg: Postgres, ctx: BuildContext) -> None:
        import psycopg
        from psycopg import sql
        from psycopg.conninfo import conninfo_to_dict

        self.cfg, self.ctx = cfg, ctx
        self.where = f"sink '{ctx.operator}'"
        self.name = ctx.operator  # for logs
        self.app_name = f"rheon {ctx.flow}/{ctx.operator}"[:63]
        self.target = sql.Identifier(*cfg.table.split("."))
        self.progress = sql.Identifier(*cfg.progress_table.split("."))
        info = conninfo_to_dict(cfg.dsn)
        self.server = f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"
        self.conn: psycopg.Connection[Any] | None = None
        self.columns: dict[str, str] | None = None  # the table's columns and types; None: no table
        self.fit = ColumnFit(cfg.table, self.where)
        self.checked: set[tuple[str, ...]] = set()
        self.stages: dict[tuple[str, ...], sql.Identifier] = {}
        # With checkpoints (once recover() ran): this run's row in the progress table, and whether
        # the open transaction holds its lock. Without: the open transaction's id, once it wrote.
        self.writer: str | None = None
        self.locked = False
        self.marker = 0  # the progress row's checkpoint, as last read or set
        self.xid: int | None = None
        self.open: list[pl.DataFrame] = []  # rows in the open transaction, after the last pre-commit
        self.pending: dict[int, list[pl.DataFrame]] = {}  # rows pre-committed for a checkpoint
        self.dead: list[tuple[str, str]] = []
        self.rows_open = 0
        self.opened_ns = ctx.clock.now_ns()
        self.retries_done = 0  # reconnections after a lost connection, for the metrics
        try:
            self.conn = self._connect()
        except psycopg.OperationalError as exc:
            seconds = math.ceil(cfg.connect_timeout_ms / 1000)
            msg = (
                f"{self.where}: cannot connect to PostgreSQL at {self.server} within {seconds} s "
                f"({_first_line(exc)}). Is the server running? Check dsn={redact(cfg.dsn)!r}."
            )
            raise SinkError(msg) from exc
        self._retrying(self._describe)
        log.info("postgres_connected sink=%s server=%s table=%s", self.name, self.server, cfg.table)

    # -- connection --------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        import psycopg

        timeout_s = max(1, math.ceil(self.cfg.connect_timeout_ms / 1000))
        conn = psycopg.connect(self.cfg.dsn, connect_timeout=timeout_s, application_name=self.app_name)
        self.stages = {}
        self.locked = False
        return conn

    def _drop(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None

    def _retrying(self, action: Callable[[psycopg.Connection[Any]], None]) -> None:
        """Run ``action``, reconnecting (and restoring the open transaction) when the connection fails."""
        import psycopg

        retry = Reconnects(
            self.name,
            "PostgreSQL",
            self.server,
            self.cfg.retries,
            self.cfg.retry_backoff_ms,
            self.ctx.clock,
            self.ctx.stop,
        )
        while True:
            try:
                if self.conn is None:
                    self.conn = self._connect()
                    self._resync()
                action(self.conn)
                return
            except psycopg.OperationalError as exc:
                self._drop()
                retry.failed(exc, _first_line(exc))
                self.retries_done += 1
            except psycopg.Error as exc:
                msg = f"{self.where}: writing to table {self.cfg.table} failed: {_first_line(exc)}"
                raise SinkError(msg) from exc

    def _resync(self) -> None:
        """On a new connection: find out whether the lost transaction committed; if not, write its rows again."""
        if self.writer is not None:
            if not (self.pending or self.open):
                return
            marker = self._lock_marker()
            done = max(self.pending, default=None)
            status = "committed" if done is not None and marker >= done else "aborted"
            log.info(
                "postgres_resync sink=%s writer=%s checkpoint=%s marker=%s status=%s",
                self.name, self.writer, done, marker, status,
            )  # fmt: skip
        else:
            lost = self.xid
            if lost is None and not (self.pending or self.open):
                return
            txid_status = None if lost is None else self._lost_status(lost)
            self.xid = None  # only now: should this fail, the next connection asks about the same transaction
            log.info("postgres_resync sink=%s xid=%s status=%s", self.name, lost, txid_status)
            status = "committed" if txid_status == "committed" else "aborted"
            if txid_status is None and not self.cfg.key:
                log.warning("postgres_resync_unknown sink=%s xid=%s risk=rows_appended_twice", self.name, lost)
        if status == "committed":
            assert self.conn is not None
            self.conn.commit()  # ends the new transaction (and its lock on the progress row)
            self._committed()
            return
        self.pending = {cid: [self._send(frame) for frame in frames] for cid, frames in self.pending.items()}
        self.open = [self._send(frame) for frame in self.open]
        self._mark()

    def _lost_status(self, xid: int) -> str | None:
        """``txid_status`` of the lost transaction, ending it first if the server still runs it.

        After a network failure (rather than a closed connection) the server may not have noticed
        that the client is gone: the old session lives on with its transaction open, holding the
        locks of the rows it wrote (so writing them again would wait) and able to commit should
        a late ``COMMIT`` arrive. The sink ends that session (its own role may) and waits until
        the transaction is aborted.
        """
        assert self.conn is not None
        conn = self.conn

        def status() -> str | None:
            row = conn.execute("SELECT txid_status(%s)", [xid]).fetchone()
            return row[0] if row else None

        found = status()
        if found != "in progress":
            return found
        query = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_xid::text = %s"
        ended = conn.execute(query, [str(xid % 2**32)]).fetchall()
        log.warning("postgres_lost_session sink=%s xid=%s still_open=true terminated=%d", self.name, xid, len(ended))
        for _ in range(_END_WAIT_STEPS):
            self.ctx.clock.sleep(_END_WAIT_STEP_S, self.ctx.stop)
            found = status()
            if found != "in progress" or self.ctx.stop.is_set():
                break
        return found

    # -- the progress marker (with checkpoints) ---------------------------------------------

    def _register(self, conn: psycopg.Connection[Any]) -> None:
        """Create the progress table if it is missing and add this writer's row (checkpoint 0)."""
        import psycopg
        from psycopg import sql

        try:
            row = conn.execute("SELECT to_regclass(%s)", [self.progress.as_string(conn)]).fetchone()
            if row is None or row[0] is None:
                create = sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (writer text PRIMARY KEY, flow text NOT NULL, sink text NOT NULL, "
                    "target text NOT NULL, checkpoint bigint NOT NULL, updated timestamptz NOT NULL DEFAULT now())"
                )
                try:
                    conn.execute(create.format(self.progress))
                    conn.commit()
                except (psycopg.errors.UniqueViolation, psycopg.errors.DuplicateTable):
                    conn.rollback()  # another sink created it at the same moment
            insert = sql.SQL(
                "INSERT INTO {} (writer, flow, sink, target, checkpoint) VALUES (%s, %s, %s, %s, 0) "
                "ON CONFLICT (writer) DO NOTHING"
            )
            conn.execute(insert.format(self.progress), [self.writer, self.ctx.flow, self.ctx.operator, self.cfg.table])
            conn.commit()
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            msg = (
                f"{self.where}: cannot create or write the progress table {self.cfg.progress_table} "
                f"({_first_line(exc)}), where the sink records which checkpoints committed. Let the sink's role "
                "create it (GRANT CREATE ON SCHEMA ...), create it for the sink (see rh.io.Postgres), or pass "
                "progress_table= naming a table it may write."
            )
            raise SinkError(msg) from exc

    def _lock_marker(self) -> int:
        """Lock this writer's progress row in a new transaction and return its checkpoint.

        The row is locked by every transaction of the writer from its start, so a lock held by
        another session means an earlier transaction of this writer that the server still runs
        for a lost connection: the sink ends that session and waits until the lock is free.
        """
        import psycopg
        from psycopg import sql

        assert self.conn is not None
        assert self.writer is not None
        conn = self.conn
        lock = sql.SQL("SELECT checkpoint FROM {} WHERE writer = %s FOR UPDATE NOWAIT").format(self.progress)
        for _ in range(_END_WAIT_STEPS):
            try:
                row = conn.execute(lock, [self.writer]).fetchone()
            except psycopg.errors.LockNotAvailable:
                conn.rollback()
                self._end_holder()
                self.ctx.clock.sleep(_END_WAIT_STEP_S, self.ctx.stop)
                continue
            if row is None:
                conn.rollback()
                msg = (
                    f"{self.where}: the progress row of writer {self.writer} is missing from table "
                    f"{self.cfg.progress_table}, so the sink cannot tell whether the rows of its last checkpoint "
                    f"reached table {self.cfg.table}. Was it deleted? Restore the row (writer {self.writer}, the "
                    "last committed checkpoint), or start the flow from a new checkpoint_dir."
                )
                raise SinkError(msg)
            self.locked, self.marker = True, int(row[0])
            return self.marker
        msg = (
            f"{self.where}: another session has held the progress row of writer {self.writer} in table "
            f"{self.cfg.progress_table} for {_END_WAIT_STEPS * _END_WAIT_STEP_S:.0f} s and could not be ended. "
            "Is another copy of this flow running with the same checkpoint_dir? Stop it, or end the session "
            "(pg_terminate_backend)."
        )
        raise SinkError(msg)

    def _end_holder(self) -> None:
        """End the session whose transaction holds this writer's progress row (``xmax`` names it)."""
        from psycopg import sql

        assert self.conn is not None
        query = sql.SQL(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a JOIN {} p ON a.backend_xid = p.xmax "
            "WHERE p.writer = %s AND a.pid <> pg_backend_pid()"
        ).format(self.progress)
        ended = self.conn.execute(query, [self.writer]).fetchall()
        self.conn.commit()
        log.warning("postgres_lost_session sink=%s writer=%s still_open=true terminated=%d", self.name, self.writer, len(ended))  # fmt: skip

    def _mark(self) -> None:
        """Record, in the open transaction, that it holds the rows up to the latest pending checkpoint."""
        from psycopg import sql

        if self.writer is None or not self.pending:
            return
        assert self.conn is not None
        assert self.locked
        update = sql.SQL("UPDATE {} SET checkpoint = %s, updated = now() WHERE writer = %s").format(self.progress)
        self.conn.execute(update, [max(self.pending), self.writer])
        self.marker = max(self.pending)

    # -- the table ---------------------------------------------------------------------------

    def _describe(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT to_regclass(%s)::oid", [self.target.as_string(conn)]).fetchone()
        oid = row[0] if row else None
        if oid is None:
            conn.commit()
            if not self.cfg.create:
                msg = f"{self.where}: table {self.cfg.table} does not exist in {self.server}. Create it, or pass create=True."  # fmt: skip
                raise SinkError(msg)
            self.columns = None
            return
        query = "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped ORDER BY attnum"  # fmt: skip
        self.columns = dict(conn.execute(query, [oid]).fetchall())
        query = (
            "SELECT array_agg(a.attname::text) FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisunique AND i.indpred IS NULL "
            "AND i.indexprs IS NULL GROUP BY i.indexrelid"
        )
        uniques = [set(cols) for (cols,) in conn.execute(query, [oid]).fetchall()]
        conn.commit()
        key = ", ".join(self.cfg.key)
        if self.cfg.key and set(self.cfg.key) not in uniques:
            msg = (
                f"{self.where}: table {self.cfg.table} has no primary key or unique constraint on ({key}), "
                f"which the upsert (ON CONFLICT ({key})) needs. Add one: ALTER TABLE {self.cfg.table} ADD "
                f"PRIMARY KEY ({key}); or leave key unset to append rows."
            )
            raise SinkError(msg)

    def _create(self, conn: psycopg.Connection[Any], schema: pl.Schema) -> None:
        from psycopg import sql

        defs = [sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(sql_type(t))) for n, t in schema.items()]
        if self.cfg.key:
            defs.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, self.cfg.key))))
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(self.target, sql.SQL(", ").join(defs)))
        conn.commit()
        log.info("postgres_created sink=%s table=%s columns=%d", self.name, self.cfg.table, len(defs))
        self._describe(conn)

    def _prepare(self, frame: pl.DataFrame) -> None:
        columns = tuple(frame.columns)
        if columns in self.checked:
            return
        for name in self.cfg.key:
            if name not in columns:
                msg = f"{self.where}: key column {name!r} is not in the rows {columns_hint(columns)}"
                raise FlowError(msg)
        if self.columns is None:
            self._retrying(lambda conn: self._create(conn, frame.schema))
        assert self.columns is not None
        unknown = [c for c in columns if c not in self.columns]
        if unknown:
            msg = (
                f"{self.where}: table {self.cfg.table} has no column {', '.join(map(repr, unknown))} "
                f"{columns_hint(self.columns)}. Add it (ALTER TABLE {self.cfg.table} ADD COLUMN ...) "
                "or select the table's columns before the sink."
            )
            raise SinkError(msg)
        self.checked.add(columns)

    # -- writing -----------------------------------------------------------------------------

    def _dedupe(self, frame: pl.DataFrame) -> pl.DataFrame:
        """One row per key (the last), since one upsert cannot update a row twice."""
        key = self.cfg.key
        if not key or frame.height < 2:
            return frame
        nulls = pl.any_horizontal(pl.col(key).is_null())
        if not frame.select(nulls.any()).item():
            return frame.unique(subset=key, keep="last", maintain_order=True)
        return pl.concat(
            [frame.filter(~nulls).unique(subset=key, keep="last", maintain_order=True), frame.filter(nulls)]
        )

    def _stage(self, columns: Sequence[str]) -> sql.Identifier:
        from psycopg import sql

        assert self.conn is not None
        stage = self.stages.get(tuple(columns))
        if stage is None:
            stage = sql.Identifier(f"rheon_stage_{len(self.stages)}")
            cols = sql.SQL(", ").join(map(sql.Identifier, columns))
            query = sql.SQL("CREATE TEMP TABLE {} AS SELECT {} FROM {} WITH NO DATA")
            self.conn.execute(query.format(stage, cols, self.target))
            self.stages[tuple(columns)] = stage
        return stage

    def _copy(self, frame: pl.DataFrame, stage: sql.Identifier | None) -> None:
        from psycopg import sql

        assert self.conn is not None
        cols = sql.SQL(", ").join(map(sql.Identifier, frame.columns))
        with self.conn.cursor() as cur:
            if stage is not None:
                cur.execute(sql.SQL("TRUNCATE {}").format(stage))
            with cur.copy(sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(stage or self.target, cols)) as copy:
                copy.write(copy_csv(frame))
            if stage is None:
                return
            updates = [
                sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(c)) for c in frame.columns if c not in self.cfg.key
            ]
            action = (
                sql.SQL("DO UPDATE SET {}").format(sql.SQL(", ").join(updates)) if updates else sql.SQL("DO NOTHING")
            )
            keys = sql.SQL(", ").join(map(sql.Identifier, self.cfg.key))
            upsert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) {}")
            cur.execute(upsert.format(self.target, cols, cols, stage, keys, action))

    def _attempt(self, frame: pl.DataFrame, stage: sql.Identifier | None, dead: list[tuple[str, str]]) -> pl.DataFrame:
        """Write ``frame`` in a savepoint, halving it on rejected data; return the rows written."""
        import psycopg

        assert self.conn is not None
        self.conn.execute("SAVEPOINT rheon_batch")
        try:
            self._copy(frame, stage)
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            self.conn.execute("ROLLBACK TO SAVEPOINT rheon_batch")
            if frame.height == 1:
                diag = exc.diag
                reason = f"PostgreSQL rejected the row: {diag.message_primary or _first_line(exc)} (SQLSTATE {diag.sqlstate})"
                dead.append((reason, payload_of(frame.row(0, named=True))))
                return frame.clear()
            half = frame.height // 2
            return pl.concat([self._attempt(frame[:half], stage, dead), self._attempt(frame[half:], stage, dead)])
        self.conn.execute("RELEASE SAVEPOINT rheon_batch")
        return frame

    def _send(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Write ``frame`` in the open transaction; rows the server rejects become dead letters."""
        assert self.conn is not None
        if self.writer is not None:
            if not self.locked:  # the transaction's first write: take the progress row first
                self._lock_marker()
        elif self.xid is None:
            row = self.conn.execute("SELECT txid_current()").fetchone()
            self.xid = int(row[0]) if row else None
        stage = self._stage(frame.columns) if self.cfg.key else None
        dead: list[tuple[str, str]] = []
        written = self._attempt(frame, stage, dead)
        self.dead.extend(dead)  # only once the whole batch went through
        if dead:
            log.info("postgres_rejected sink=%s rows=%d first=%r", self.name, len(dead), dead[0][0])
        return written

    def _committed(self) -> None:
        self.xid, self.locked, self.open, self.pending, self.rows_open = None, False, [], {}, 0
        self.opened_ns = self.ctx.clock.now_ns()

    def _commit(self) -> None:
        self._retrying(lambda conn: conn.commit())
        self._committed()

    # -- the sink protocol -------------------------------------------------------------------

    @override
    def health(self) -> SinkHealth:
        """Reconnections so far (the rows of a lost transaction are written again with each); no circuit breaker."""
        return SinkHealth(self.retries_done)

    @override
    def write(self, frame: pl.DataFrame) -> None:
        self._prepare(frame)
        assert self.columns is not None
        frame, misfits = self.fit.split(frame, self.columns)
        if misfits:
            self.dead.extend(misfits)
            log.info("postgres_misfit sink=%s rows=%d first=%r", self.name, len(misfits), misfits[0][0])
            if not frame.height:
                return
        frame = self._dedupe(frame)
        self._retrying(lambda conn: self.open.append(self._send(frame)))
        self.rows_open += frame.height
        if not self.ctx.checkpointing and self._commit_due():
            self._commit()

    def _commit_due(self) -> bool:
        cfg = self.cfg
        if cfg.commit_rows is None and cfg.commit_every_ms is None:
            return True
        if cfg.commit_rows is not None and self.rows_open >= cfg.commit_rows:
            return True
        age_ms = (self.ctx.clock.now_ns() - self.opened_ns) // 1_000_000
        return cfg.commit_every_ms is not None and age_ms >= cfg.commit_every_ms

    @override
    def flush(self) -> None:
        if self.xid is not None or self.locked or self.open:
            self._commit()

    @override
    def pre_commit(self, checkpoint_id: int) -> None:
        # Rows are in the open transaction already; keep them for the checkpoint until it commits,
        # each batch as written (a relaxed concat would change values' types), and record the
        # checkpoint in the progress row, in the same transaction.
        frames = [f for f in self.open if f.height]
        self.open = []
        if frames:
            self.pending[checkpoint_id] = _runs(frames, self._dedupe)
        if self.pending and self.writer is not None:
            self._retrying(lambda conn: self._mark())

    @override
    def commit(self, checkpoint_id: int) -> None:
        if self.xid is not None or self.locked or self.pending:
            self._commit()

    @override
    def state(self) -> tuple[dict[str, pl.DataFrame], dict[str, Any]] | None:
        if self.writer is None and not self.pending:
            return None
        frames = {f"pending_{cid}_{i}": f for cid, fs in self.pending.items() for i, f in enumerate(fs)}
        return frames, {
            "writer": self.writer,
            "pending": [[cid, len(fs)] for cid, fs in self.pending.items()],
            "kinds": dict(self.fit.kinds),
            "xid": self.xid,
        }

    @override
    def load_state(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any]) -> None:
        if "writer" in objects:
            self.writer = objects["writer"]
            self.pending = {int(cid): [frames[f"pending_{cid}_{i}"] for i in range(n)] for cid, n in objects["pending"]}
            self.fit.kinds.update(objects.get("kinds") or {})
        else:  # written before the progress table: the transaction id decides (see recover)
            self.pending = {int(cid): [frames[f"pending_{cid}"]] for cid in objects["pending"]}
        self.xid = objects.get("xid")

    @override
    def recover(self, checkpoint_id: int | None) -> None:
        self.pending = {cid: f for cid, f in self.pending.items() if checkpoint_id is not None and cid <= checkpoint_id}
        if self.writer is None:
            if self.pending:  # a checkpoint without a writer: resolved by txid_status, as it was written
                self._drop()
                self._retrying(lambda conn: None)
                self._commit()
            self.pending, self.xid = {}, None
            self.writer = uuid.uuid4().hex
            self._retrying(self._register)
            log.info("postgres_writer sink=%s writer=%s progress=%s", self.name, self.writer, self.cfg.progress_table)
            return
        # Reconnecting resolves the checkpoint's transaction: committed, or written again now.
        self._drop()
        self._retrying(lambda conn: self._check_progress(conn, checkpoint_id))
        self._commit()

    def _check_progress(self, conn: psycopg.Connection[Any], checkpoint_id: int | None) -> None:
        """On restart from ``checkpoint_id``, with its transaction resolved: if the table holds the
        output of a later checkpoint (an older checkpoint was restored, the newer ones being
        damaged), say so and set the progress row back, so that it keeps telling which of the
        checkpoints to come committed."""
        from psycopg import sql

        if not self.locked:
            query = sql.SQL("SELECT checkpoint FROM {} WHERE writer = %s").format(self.progress)
            if conn.execute(query, [self.writer]).fetchone() is None:  # nothing pending, nothing to decide
                log.warning("postgres_progress_missing sink=%s writer=%s recreated=true", self.name, self.writer)
                self._register(conn)
                return
            self._lock_marker()
        if checkpoint_id is not None and self.marker > checkpoint_id:
            log.warning(
                "postgres_restored_older sink=%s writer=%s restored=%d committed=%d risk=%s",
                self.name, self.writer, checkpoint_id, self.marker,
                "none_upserts_again" if self.cfg.key else "rows_of_later_checkpoints_appended_again",
            )  # fmt: skip
            update = sql.SQL("UPDATE {} SET checkpoint = %s, updated = now() WHERE writer = %s").format(self.progress)
            conn.execute(update, [checkpoint_id, self.writer])
            self.marker = checkpoint_id

    @override
    def close(self) -> None:
        self._drop()  # an uncommitted transaction is rolled back: it was never output


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
