"""``rh.io.Redis``: rows to Redis hashes, sorted sets or streams (redis-py, ``pip install 'rheon[redis]'``).

Each batch is sent as one pipeline (``transaction=False``, in chunks of 10,000 commands): keys,
members and values are rendered by Polars for the whole batch, then one command per row is queued.
A command Redis rejects (e.g. ``WRONGTYPE``: the key holds another type) sends its row to the
dead-letter output with Redis's message; a lost connection resends the batch with exponential
backoff on the flow's clock.

This module is ``rheon.io.redis``; ``import redis`` in it is absolute and finds redis-py.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import polars as pl
from typing_extensions import override

from rheon.core.deadletters import payload_of
from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError, SinkError, columns_hint, did_you_mean
from rheon.core.extras import import_extra
from rheon.io._reconnect import Reconnects
from rheon.io.base import BuildContext, KeepsDeadLetters, Sink, SinkLogic

if TYPE_CHECKING:
    import redis

__all__ = ["Redis"]

log = logging.getLogger(__name__)

_KINDS = ("hash", "zset", "stream")
_CHUNK = 10_000
Template = list[tuple[str, bool]]  # (text, is_column)


def _template(text: str, what: str) -> Template:
    """Split ``"card:{card}"`` into literal text and column names."""
    hint = f"write column names in braces, as in 'card:{{card}}' (got {text!r})"
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        msg = f"{what}: {hint}: {exc}"
        raise FlowError(msg) from exc
    parts: Template = []
    for literal, name, spec, conversion in parsed:
        if literal:
            parts.append((literal, False))
        if name is None:
            continue
        if not name or name.isdigit() or spec or conversion:
            msg = f"{what}: {hint}; formats and positions are not supported"
            raise FlowError(msg)
        parts.append((name, True))
    return parts


def _text(name: str, dtype: pl.DataType, *, binary: bool = True) -> pl.Expr:
    """A column as Redis receives it: numbers and strings as text, datetimes ISO 8601, nested JSON."""
    col = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        return col.dt.to_string("%Y-%m-%dT%H:%M:%S%.f" + ("%:z" if dtype.time_zone else ""))
    if isinstance(dtype, pl.Duration):
        return col.dt.to_string("iso")
    if isinstance(dtype, pl.List | pl.Array | pl.Struct):
        as_json = pl.struct(col.alias("v")).struct.json_encode().str.slice(5).str.head(-1)  # {"v":...}
        return pl.when(col.is_not_null()).then(as_json).alias(name)
    if isinstance(dtype, pl.Binary):
        return col if binary else col.bin.encode("hex")
    if isinstance(dtype, pl.Object):
        return col.map_elements(str, return_dtype=pl.String)
    return col.cast(pl.String)


def _render(parts: Template, frame: pl.DataFrame) -> list[str | None]:
    """The template filled in for each row; None where a column it uses is null."""
    if not any(is_col for _, is_col in parts):
        return ["".join(t for t, _ in parts)] * frame.height
    exprs = [_text(t, frame.schema[t], binary=False) if is_col else pl.lit(t) for t, is_col in parts]
    return frame.select(pl.concat_str(exprs)).to_series().to_list()


class Redis(Sink):
    """Write rows to Redis for dashboards and caches: hashes, sorted sets or a stream.

    Parameters
    ----------
    url
        ``redis://[user:password@]host:port/db`` (``rediss://`` for TLS).
    kind
        ``"hash"``: ``HSET`` each row into the hash named by ``key``, one field per column.
        ``"zset"``: ``ZADD`` the row's ``member`` with its ``score`` to the sorted set ``key``.
        ``"stream"``: ``XADD`` the row as an entry of the stream ``key``.
    key
        A template over the row's columns naming the Redis key: ``"card:{card}"``,
        ``"top:{window_start}"``, or a fixed name (``"events"``).
    fields
        For hashes and streams: the columns to write (default: those the key does not use).
    member, score
        For sorted sets: the member, a column or a template (``"{card}"``); the score, a
        numeric column.
    maxlen
        For streams: trim to about this many entries (``XADD MAXLEN ~``).
    ttl
        For hashes and sorted sets: expire the key this long after its last write.
    connect_timeout, retries, retry_backoff
        How long to wait for the server; how often to resend a batch when the connection fails,
        waiting ``retry_backoff`` and then twice as long each time (up to 30 s).

    Values: numbers and strings as text, booleans ``true``/``false``, datetimes ISO 8601
    (``2024-01-01T12:00:00.250+00:00``, with 0, 3, 6 or 9 decimals as needed), durations ISO
    8601 (``PT1.5S``), lists and structs JSON, binary as is. None omits the field: a hash also
    drops it (``HDEL``), so the hash holds the row's latest values. A row whose key, member or
    score is None is a dead letter.

    Guarantees. ``"hash"`` and ``"zset"``: writes are idempotent (the same row sets the same
    fields or score again), so the keys end as an uninterrupted run leaves them: with checkpoints
    a crash replays the rows since the last checkpoint, and rewrites them; rows are written as
    they arrive (not when a checkpoint completes), and a batch is not atomic. ``"stream"``:
    at-least-once: each ``XADD`` appends a new entry, so a replay after a crash, or a batch
    resent after a lost connection, can add rows twice.

    Examples
    --------
    >>> from rheon.io.redis import Redis
    >>> Redis(kind="hash", key="card:{card}", ttl="1h")
    Redis('redis://127.0.0.1:6379', kind='hash', key='card:{card}', ttl='1h')
    >>> Redis(kind="zset", key="top:{window_start}", member="{card}", score="total")
    Redis('redis://127.0.0.1:6379', kind='zset', key='top:{window_start}', member='{card}', score='total')
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379",
        *,
        kind: str = "hash",
        key: str | None = None,
        fields: Sequence[str] | None = None,
        member: str | None = None,
        score: str | None = None,
        maxlen: int | None = None,
        ttl: Duration | None = None,
        connect_timeout: Duration = "5s",
        retries: int = 5,
        retry_backoff: Duration = "200ms",
    ) -> None:
        what = f"Redis(kind={kind!r})"
        problems = {
            f"kind must be one of {', '.join(_KINDS)}": kind not in _KINDS,
            "key= is required: a template such as 'card:{card}', or a fixed name": key is None,
            "member= and score= are required for a sorted set": kind == "zset" and (member is None or score is None),
            "fields= is for hashes and streams": kind == "zset" and fields is not None,
            "member= and score= are for sorted sets": kind != "zset" and (member, score) != (None, None),
            "maxlen= is for streams": kind != "stream" and maxlen is not None,
            "maxlen must be at least 1": maxlen is not None and maxlen < 1,
            "ttl= is for hashes and sorted sets (trim a stream with maxlen=)": kind == "stream" and ttl is not None,
            "retries must not be negative": retries < 0,
        }
        for problem, found in problems.items():
            if found:
                msg = f"{what}: {problem}"
                raise FlowError(msg)
        assert key is not None
        self.url, self.kind, self.key = url, kind, key
        self.fields = None if fields is None else list(fields)
        self.member, self.score, self.maxlen, self.ttl = member, score, maxlen, ttl
        self.key_parts = _template(key, f"{what}: key")
        self.member_parts = None if member is None else _template(member if "{" in member else f"{{{member}}}", what)
        self.ttl_ms = None if ttl is None else to_ms(ttl, what=f"{what}: ttl")
        if self.ttl_ms == 0:
            msg = f"{what}: ttl must be positive (got {ttl!r})"
            raise FlowError(msg)
        self.connect_timeout_ms = to_ms(connect_timeout, what=f"{what}: connect_timeout")
        self.retries = retries
        self.retry_backoff_ms = to_ms(retry_backoff, what=f"{what}: retry_backoff")

    def __repr__(self) -> str:
        shown = {"fields": self.fields, "member": self.member, "score": self.score, "maxlen": self.maxlen}
        extra = "".join(f", {k}={v!r}" for k, v in {**shown, "ttl": self.ttl}.items() if v is not None)
        return f"Redis({_redact(self.url)!r}, kind={self.kind!r}, key={self.key!r}{extra})"

    @override
    def build(self, ctx: BuildContext) -> SinkLogic:
        import_extra("redis", user="rh.io.Redis", package="redis-py", extra="redis")  # fail early, at build
        return _RedisLogic(self, ctx)


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


class _RedisLogic(KeepsDeadLetters, SinkLogic):
    def __init__(self, cfg: Redis, ctx: BuildContext) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.cfg, self.ctx = cfg, ctx
        self.where = f"sink '{ctx.operator}'"
        self.name = ctx.operator  # for logs
        parts = urlsplit(cfg.url)
        self.server = parts.netloc.rsplit("@", 1)[-1] + parts.path  # without the password
        self.dead: list[tuple[str, str]] = []
        self.checked: set[tuple[str, ...]] = set()
        timeout_s = cfg.connect_timeout_ms / 1000
        name = re.sub(r"[^\w.:-]", "_", f"rheon:{ctx.flow}:{ctx.operator}")
        try:
            # Retries are ours (on the flow's clock), not redis-py's.
            self.client: redis.Redis = redis.Redis.from_url(
                cfg.url,
                socket_connect_timeout=timeout_s,
                socket_timeout=max(timeout_s, 10.0),
                retry=Retry(NoBackoff(), 0),
                client_name=name,
            )
        except ValueError as exc:
            msg = f"{self.where}: cannot read url {_redact(cfg.url)!r} ({exc}). Try 'redis://127.0.0.1:6379/0'."
            raise FlowError(msg) from exc
        try:
            self.client.ping()
        except redis.RedisError as exc:
            self.client.close()
            msg = (
                f"{self.where}: cannot reach Redis at {self.server} within {cfg.connect_timeout_ms} ms ({exc}). "
                f"Is the server running? Check url={_redact(cfg.url)!r}."
            )
            raise SinkError(msg) from exc
        log.info("redis_connected sink=%s server=%s kind=%s key=%s", self.name, self.server, cfg.kind, cfg.key)

    # -- commands ------------------------------------------------------------------------------

    def _fields(self, columns: Sequence[str]) -> list[str]:
        if self.cfg.fields is not None:
            return self.cfg.fields
        used = {t for t, is_col in self.cfg.key_parts if is_col}
        return [c for c in columns if c not in used]

    def _check(self, frame: pl.DataFrame) -> None:
        columns = tuple(frame.columns)
        if columns in self.checked:
            return
        cfg = self.cfg
        wanted = [("key", t) for t, is_col in cfg.key_parts if is_col]
        wanted += [("member", t) for t, is_col in cfg.member_parts or [] if is_col]
        wanted += [("score", cfg.score)] if cfg.score else [("fields", f) for f in self._fields(columns)]
        for what, name in wanted:
            if name not in frame.columns:
                msg = f"{self.where}: {what} uses unknown column {name!r} {columns_hint(columns)}.{did_you_mean(name, columns)}"
                raise FlowError(msg)
        if cfg.score and not frame.schema[cfg.score].is_numeric():
            msg = f"{self.where}: score column {cfg.score!r} must be numeric (got {frame.schema[cfg.score]})"
            raise FlowError(msg)
        if cfg.kind != "zset" and not self._fields(columns):
            msg = f"{self.where}: no columns left to write besides the key's {columns_hint(columns)}"
            raise FlowError(msg)
        self.checked.add(columns)

    def _commands(self, frame: pl.DataFrame) -> tuple[list[tuple[Any, ...]], list[int], dict[int, str]]:
        """The commands for a batch, the row each belongs to, and rows that cannot be written."""
        cfg = self.cfg
        keys = _render(cfg.key_parts, frame)
        commands: list[tuple[Any, ...]] = []
        owners: list[int] = []
        bad: dict[int, str] = {}
        last_of_key: dict[str, int] = {}
        if cfg.member_parts is not None and cfg.score is not None:
            members = _render(cfg.member_parts, frame)
            scores = frame.get_column(cfg.score).cast(pl.Float64).to_list()
            for i, (key, member, score) in enumerate(zip(keys, members, scores, strict=True)):
                if key is None or member is None or score is None:
                    bad[i] = f"{'key' if key is None else 'member' if member is None else 'score'} is null"
                    continue
                commands.append(("ZADD", key, score, member))
                owners.append(i)
                last_of_key[key] = i
        else:
            fields = self._fields(frame.columns)
            values = frame.select(_text(f, frame.schema[f]) for f in fields)
            trim = ("MAXLEN", "~", cfg.maxlen) if cfg.maxlen else ()
            for i, (key, row) in enumerate(zip(keys, values.iter_rows(), strict=True)):
                pairs = [x for f, v in zip(fields, row, strict=True) if v is not None for x in (f, v)]
                if key is None or (cfg.kind == "stream" and not pairs):
                    bad[i] = "key is null" if key is None else "every field is null (a stream entry needs one)"
                    continue
                if cfg.kind == "stream":
                    commands.append(("XADD", key, *trim, "*", *pairs))
                    owners.append(i)
                    continue
                nulls = [f for f, v in zip(fields, row, strict=True) if v is None]
                for command in (("HSET", key, *pairs) if pairs else None, ("HDEL", key, *nulls) if nulls else None):
                    if command is not None:
                        commands.append(command)
                        owners.append(i)
                last_of_key[key] = i
        if cfg.ttl_ms is not None:
            for key, i in last_of_key.items():
                commands.append(("PEXPIRE", key, cfg.ttl_ms))
                owners.append(i)
        return commands, owners, bad

    def _execute(self, commands: list[tuple[Any, ...]]) -> list[Any]:
        """Send commands in one pipeline; resend them all when the connection fails."""
        import redis

        retry = Reconnects(
            self.name, "Redis", self.server, self.cfg.retries, self.cfg.retry_backoff_ms, self.ctx.clock, self.ctx.stop
        )
        while True:
            try:
                pipe = self.client.pipeline(transaction=False)
                for command in commands:
                    pipe.execute_command(*command)  # type: ignore[no-untyped-call]
                return pipe.execute(raise_on_error=False)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                retry.failed(exc, str(exc))
            except redis.RedisError as exc:
                msg = f"{self.where}: writing to Redis at {self.server} failed: {exc}"
                raise SinkError(msg) from exc

    # -- the sink protocol -----------------------------------------------------------------------

    @override
    def write(self, frame: pl.DataFrame) -> None:
        self._check(frame)
        commands, owners, bad = self._commands(frame)
        failed = {i: f"cannot write to Redis: {reason}" for i, reason in bad.items()}
        for start in range(0, len(commands), _CHUNK):
            results = self._execute(commands[start : start + _CHUNK])
            for n, result in enumerate(results, start):
                if isinstance(result, Exception):
                    failed.setdefault(owners[n], f"Redis rejected {commands[n][0]} {commands[n][1]!r}: {result}")
        if failed:
            log.info("redis_rejected sink=%s rows=%d first=%r", self.name, len(failed), next(iter(failed.values())))
            self.dead.extend((failed[i], payload_of(frame.row(i, named=True))) for i in sorted(failed))

    @override
    def close(self) -> None:
        self.client.close()
