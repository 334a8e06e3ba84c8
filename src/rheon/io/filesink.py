"""``rh.io.FileSink``: rows to part files in a directory, committed atomically.

Files being written start with ``"."`` and are never output: ``.inprogress-<id>.<ext>`` while
rows are appended, ``.pending-<checkpoint>-<n>.<ext>`` once a checkpoint has made them durable.
When the checkpoint is complete they are renamed to ``part-<checkpoint>-<n>.<ext>``; a rename in
one directory is atomic, so a reader sees a part file whole or not at all. Part names sort in the
order rows were emitted.

No value is converted to fit another batch: JSON lines are written batch by batch; a CSV file has
one header, so a batch with a column the header lacks starts a new file; a Parquet file has one
schema, so a batch whose column types differ from those of the file being written (``1.5`` where
it holds a struct) starts a new file too. Rows a format cannot hold (nested values in CSV) go to
the dead letters. Bytes (a Kafka message's ``_key``) are written as base64 text in JSON lines and
CSV, as Kafka Connect's JSON converter does.
"""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path
from typing import IO, Any

import polars as pl
from typing_extensions import override

from rheon.core.deadletters import payloads_of
from rheon.core.durations import Duration, to_bytes, to_ms
from rheon.core.errors import FlowError, SinkError
from rheon.io._json import for_json
from rheon.io.base import BuildContext, KeepsDeadLetters, Sink, SinkLogic

__all__ = ["FileSink"]

log = logging.getLogger(__name__)

_FORMATS = {"jsonl": "jsonl", "csv": "csv", "parquet": "parquet"}
_PENDING = re.compile(r"^\.pending-(\d{8})-(\d{4})\.")
_PART = re.compile(r"^part-(\d{8})-(\d{4})\.")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileSink(Sink):
    """Write rows as JSON lines, CSV or Parquet part files in ``directory``.

    Committed part files are named ``part-*.<ext>`` and their names sort in the order they were
    written; files in progress start with ``"."``.
    ``roll_size="128MB"`` and/or ``roll_every="1h"`` start a new file when the current one is
    that big or that old; without them a run writes one file per checkpoint interval (or one
    file in all, without checkpoints), and more when batches do not fit one file: a CSV batch
    with a column the file's header lacks, a Parquet batch whose column types differ from the
    file's. Values are never converted to another type to fit; rows CSV cannot hold (nested
    values) go to the dead letters.

    Guarantee: exactly-once with checkpoints (``flow.run(checkpoint_dir=...)``): the rows of
    each checkpoint interval become visible, as new part files, when that checkpoint is
    complete; after a crash, files the restored checkpoint does not cover are deleted and the
    replay writes their rows again. Without checkpoints, the files become visible when the run
    ends or stops.

    Examples
    --------
    >>> import rheon as rh, tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp())
    >>> flow = rh.Flow("files")
    >>> flow.source(rh.io.Records([{"x": 1}, {"x": 2}])).sink(rh.io.FileSink(out, format="csv"))
    >>> flow.run()
    >>> [p.name.startswith("part-") for p in out.iterdir()], rh.io.Csv(out / "part-*.csv").schema()
    ([True], Schema([('x', Int64)]))
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        format: str = "jsonl",
        roll_size: str | int | None = None,
        roll_every: Duration | None = None,
    ) -> None:
        if format not in _FORMATS:
            msg = f"FileSink: format must be one of {', '.join(_FORMATS)} (got {format!r})"
            raise FlowError(msg)
        self.directory = Path(directory)
        self.format = format
        self.roll_bytes = to_bytes(roll_size, what="FileSink: roll_size") if roll_size is not None else None
        self.roll_ms = to_ms(roll_every, what="FileSink: roll_every") if roll_every is not None else None

    @override
    def build(self, ctx: BuildContext) -> SinkLogic:
        return _FileSinkLogic(self.directory, self.format, self.roll_bytes, self.roll_ms, ctx)

    def __repr__(self) -> str:
        return f"FileSink({str(self.directory)!r}, format={self.format!r})"


def _unified(schema: dict[str, pl.DataType], frame: pl.DataFrame) -> dict[str, pl.DataType] | None:
    """The schema of one file holding rows of ``schema`` and ``frame`` (its columns, then the batch's
    new ones; an all-null column takes the other's type), or None if a column's types differ."""
    merged = dict(schema)
    for name, dtype in frame.schema.items():
        known = merged.get(name)
        if known is None or known == pl.Null:
            merged[name] = dtype
        elif dtype not in (known, pl.Null):
            return None
    return merged


def _has_empty_struct(dtype: pl.DataType) -> bool:
    if isinstance(dtype, pl.Struct):
        return not dtype.fields or any(_has_empty_struct(_dtype(f.dtype)) for f in dtype.fields)
    if isinstance(dtype, pl.List | pl.Array):
        return _has_empty_struct(_dtype(dtype.inner))
    return False


def _dtype(dtype: Any) -> pl.DataType:
    return dtype() if isinstance(dtype, type) else dtype  # type: ignore[no-any-return]


def _conformed(frame: pl.DataFrame, schema: dict[str, pl.DataType]) -> pl.DataFrame:
    """``frame`` with ``schema``'s columns: missing ones null, all-null ones of the schema's type."""
    missing = [pl.lit(None, dtype).alias(name) for name, dtype in schema.items() if name not in frame.columns]
    return frame.with_columns(missing).select(list(schema)).cast(pl.Schema(schema))


class _FileSinkLogic(KeepsDeadLetters, SinkLogic):
    def __init__(
        self, directory: Path, fmt: str, roll_bytes: int | None, roll_ms: int | None, ctx: BuildContext
    ) -> None:
        self.dir = directory
        self.fmt = fmt
        self.roll_bytes = roll_bytes
        self.roll_ns = roll_ms * 1_000_000 if roll_ms is not None else None
        self.clock = ctx.clock
        self.checkpointing = ctx.checkpointing
        self.opened_ns = 0
        self.written = 0
        self.rolled: list[Path] = []  # finished files waiting for the next checkpoint
        self.published = 0  # files made visible without checkpoints; orders their names
        self.ext = _FORMATS[fmt]
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path: Path | None = None
        self.handle: IO[bytes] | None = None
        self.parquet_frames: list[pl.DataFrame] = []
        self.parquet_schema: dict[str, pl.DataType] = {}  # of the Parquet file being written
        self.header: list[str] | None = None  # of the CSV file being written
        self.staged: dict[int, list[Path]] = {}
        self.dead: list[tuple[str, str]] = []

    # -- writing -------------------------------------------------------------------------------

    def _open(self) -> None:
        self.path = self.dir / f".inprogress-{uuid.uuid4().hex}.{self.ext}"
        self.opened_ns = self.clock.now_ns()
        self.written = 0
        if self.fmt != "parquet":
            self.handle = open(self.path, "wb")  # noqa: SIM115 - kept open across writes
        self.header = None

    @override
    def write(self, frame: pl.DataFrame) -> None:
        frame = self._writable(frame if self.fmt == "parquet" else for_json(frame))
        if frame.height == 0:
            return
        if self.path is not None and (self._due() or not self._fits(frame)):
            self._roll()
        if self.path is None:
            self._open()
        if self.fmt == "parquet":
            self.parquet_schema = _unified(self.parquet_schema, frame) or dict(frame.schema)
            self.parquet_frames.append(frame)
            self.written += int(frame.estimated_size())
            return
        assert self.handle is not None
        before = self.handle.tell()
        if self.fmt == "jsonl":
            frame.write_ndjson(self.handle)
        elif self.header is None:
            frame.write_csv(self.handle, include_header=True)
            self.header = frame.columns
        else:  # the header's columns, in its order (one the batch lacks is empty)
            missing = [pl.lit(None, pl.String).alias(c) for c in self.header if c not in frame.columns]
            frame.with_columns(missing).select(self.header).write_csv(self.handle, include_header=False)
        self.written += self.handle.tell() - before

    def _fits(self, frame: pl.DataFrame) -> bool:
        """Whether the batch can go into the file being written without converting a value."""
        if self.fmt == "parquet":
            return not self.parquet_frames or _unified(self.parquet_schema, frame) is not None
        if self.fmt == "csv":
            return self.header is None or set(frame.columns) <= set(self.header)
        return True

    def _writable(self, frame: pl.DataFrame) -> pl.DataFrame:
        """The rows the format can hold. A column it cannot (nested values in CSV, an empty object in
        Parquet, Python objects) sends its rows with a value to the dead letters and is left out."""
        for name, dtype in frame.schema.items():
            if dtype == pl.Object:
                why = f"{self.fmt} cannot hold Python objects (column {name!r} is {dtype})"
            elif self.fmt == "csv" and dtype.is_nested():
                why = f"CSV cannot hold nested values (column {name!r} is {dtype})"
            elif self.fmt == "parquet" and _has_empty_struct(dtype):
                why = f"Parquet cannot hold an object without fields (column {name!r} is {dtype})"
            else:
                continue
            rejected = frame.filter(pl.col(name).is_not_null())
            reason = f"{why}. Try format='jsonl', or turn the column into one the format holds before the sink"
            self.dead += [(reason, payload) for payload in payloads_of(rejected)]
            frame = frame.filter(pl.col(name).is_null()).drop(name)
        return frame

    def _due(self) -> bool:
        """Whether the file being written should be closed and a new one started."""
        if self.roll_bytes is not None and self.written >= self.roll_bytes:
            return True
        return self.roll_ns is not None and self.clock.now_ns() - self.opened_ns >= self.roll_ns

    def _roll(self) -> None:
        path = self._finish()
        if path is None:
            return
        if self.checkpointing:
            self.rolled.append(path)  # becomes visible with the next checkpoint
        else:
            self._publish(path)

    def _finish(self) -> Path | None:
        """Close the file being written, durably; return its path (``None`` if there was none)."""
        path = self.path
        if path is None:
            return None
        if self.fmt == "parquet":
            frames, schema = self.parquet_frames, self.parquet_schema
            self.parquet_frames, self.parquet_schema = [], {}
            # One schema by construction (_fits): only all-null and missing columns take their type.
            frame = pl.concat([_conformed(f, schema) for f in frames]) if len(frames) > 1 else frames[0]
            with open(path, "wb") as fh:
                frame.write_parquet(fh)
                fh.flush()
                os.fsync(fh.fileno())
        else:
            assert self.handle is not None
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            self.handle = None
        self.path = None
        return path

    def _rename(self, source: Path, target: Path) -> None:
        try:
            os.rename(source, target)
        except OSError as exc:
            msg = f"FileSink: cannot rename {source.name} to {target.name} in {self.dir}: {exc}"
            raise SinkError(msg) from exc

    # -- commit protocol -------------------------------------------------------------------------

    @override
    def pre_commit(self, checkpoint_id: int) -> None:
        current = self._finish()
        paths = [*self.rolled, *([current] if current is not None else [])]
        self.rolled = []
        if not paths:
            return
        files = self.staged.setdefault(checkpoint_id, [])
        for path in paths:
            target = self.dir / f".pending-{checkpoint_id:08d}-{len(files):04d}.{self.ext}"
            self._rename(path, target)
            files.append(target)
        _fsync_dir(self.dir)

    @override
    def commit(self, checkpoint_id: int) -> None:
        done = False
        for cid in sorted(c for c in self.staged if c <= checkpoint_id):
            for n, pending in enumerate(self.staged.pop(cid)):
                self._rename(pending, self.dir / f"part-{cid:08d}-{n:04d}.{self.ext}")
                done = True
        if done:
            _fsync_dir(self.dir)

    @override
    def recover(self, checkpoint_id: int | None) -> None:
        for entry in sorted(self.dir.iterdir()):
            name = entry.name
            if name.startswith(".inprogress-"):
                entry.unlink(missing_ok=True)
                continue
            later = _PART.match(name)
            if later is not None and checkpoint_id is not None and int(later.group(1)) > checkpoint_id:
                # Committed by a checkpoint after the restored one (the newer ones were damaged and
                # set aside): the replay writes these rows again.
                log.warning("filesink_removed_later_part file=%s restored_checkpoint=%d", entry, checkpoint_id)
                entry.unlink(missing_ok=True)
                continue
            match = _PENDING.match(name)
            if match is None:
                continue
            cid, n = int(match.group(1)), int(match.group(2))
            if checkpoint_id is not None and cid <= checkpoint_id:
                self._rename(entry, self.dir / f"part-{cid:08d}-{n:04d}.{self.ext}")
            else:
                entry.unlink(missing_ok=True)
        _fsync_dir(self.dir)

    @override
    def flush(self) -> None:
        path = self._finish()
        if path is not None:
            self._publish(path)

    def _publish(self, path: Path) -> None:
        """Make a finished file visible at once (runs without checkpoints)."""
        # Names sort in the order the files were written: by the run's clock, then by a counter
        # (several files may roll within one millisecond), then a random part against clashes.
        stamp = f"t{self.clock.now_ns() // 1_000_000:013d}-{self.published:06d}-{uuid.uuid4().hex[:8]}"
        self.published += 1
        self._rename(path, self.dir / f"part-{stamp}.{self.ext}")
        _fsync_dir(self.dir)

    @override
    def close(self) -> None:
        for path in self.rolled:
            path.unlink(missing_ok=True)  # finished but never covered by a checkpoint
        self.rolled = []
        if self.handle is not None:
            self.handle.close()
            self.handle = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)  # never committed: not output
            self.path = None
