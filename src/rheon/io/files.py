"""File sources: JSON lines, CSV and Parquet, one file, a glob or a directory.

Bounded (the default), files are read in name order, each whole, and handed out ``batch_size``
rows at a time. With ``follow=True`` they are tailed as they grow (see :mod:`rheon.io._tail`).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from pathlib import Path
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.durations import Duration, to_ms
from rheon.core.errors import SourceError
from rheon.io._tail import LineTail, NewFiles, Parsed, exists_parent, list_files
from rheon.io.base import BuildContext, KeepsDeadLetters, Source, SourceLogic

__all__ = ["Csv", "JsonLines", "Parquet"]


def _expand(kind: str, path: str | Path, *, follow: bool) -> list[Path]:
    text = str(path)
    files = list_files(text)
    if not files and not (follow and exists_parent(text)):
        msg = f"{kind}: no file matches '{text}'. Try an absolute path or check the glob."
        raise SourceError(msg)
    return files


class _FileSource(Source):
    kind = "File"

    def __init__(
        self, path: str | Path, *, batch_size: int = 10_000, follow: bool = False, poll: Duration = "200ms"
    ) -> None:
        self.path = str(path)
        self.batch_size = batch_size
        self.follow = follow
        self.poll_ms = to_ms(poll, what=f"{self.kind}: poll")
        self.files = _expand(self.kind, path, follow=follow)

    @abstractmethod
    def _read(self, path: Path) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
        """Read one whole file: the rows, and ``(reason, payload)`` for records that failed."""

    def _tail(self, ctx: BuildContext) -> SourceLogic:
        """The logic that follows growing files."""
        return LineTail(self.kind, self.path, self._parse_chunk, header=False, poll_ms=self.poll_ms, clock=ctx.clock)

    def _parse_chunk(self, header: bytes | None, chunk: bytes, name: str, first_line: int) -> Parsed:
        raise NotImplementedError

    @override
    def build(self, ctx: BuildContext) -> SourceLogic:
        return self._tail(ctx) if self.follow else _FileLogic(self)

    def __repr__(self) -> str:
        return f"{self.kind}({self.path!r})"


class _FileLogic(KeepsDeadLetters, SourceLogic):
    def __init__(self, source: _FileSource) -> None:
        self.source = source
        self.file_index = 0
        self.frame: pl.DataFrame | None = None
        self.offset = 0
        self.skip = 0  # rows of the next file already emitted before a restart
        self.dead: list[tuple[str, str]] = []

    @override
    def next_batch(self) -> pl.DataFrame | None:
        while self.frame is None or self.offset >= self.frame.height:
            if self.file_index >= len(self.source.files):
                return None
            path = self.source.files[self.file_index]
            self.file_index += 1
            try:
                self.frame, bad = self.source._read(path)
            except (OSError, pl.exceptions.PolarsError) as exc:
                msg = f"{self.source.kind}: cannot read '{path}': {exc}"
                raise SourceError(msg) from exc
            if self.skip:
                # Resumed mid-file: its rows up to `skip`, and its bad lines, were handled.
                self.offset, self.skip = self.skip, 0
            else:
                self.dead.extend(bad)
                self.offset = 0
        out = self.frame.slice(self.offset, self.source.batch_size)
        self.offset += out.height
        return out

    @override
    def done(self) -> bool:
        exhausted_frame = self.frame is None or self.offset >= self.frame.height
        return exhausted_frame and self.file_index >= len(self.source.files)

    @override
    def snapshot(self) -> Any:
        if self.frame is not None and self.file_index > 0:
            current = self.file_index - 1
            return {"file": self.source.files[current].name, "index": current, "offset": self.offset}
        return {"file": None, "index": self.file_index, "offset": 0}

    @override
    def restore(self, position: Any) -> None:
        names = [p.name for p in self.source.files]
        index = int(position["index"])
        if position["file"] is not None:
            if position["file"] not in names:
                msg = (
                    f"{self.source.kind}: cannot resume: file '{position['file']}' is no longer in '{self.source.path}'"
                )
                raise SourceError(msg)
            index = names.index(position["file"])
        self.file_index = index
        self.frame = None
        self.offset = 0
        self.skip = int(position["offset"])


class JsonLines(_FileSource):
    """Read newline-delimited JSON files (``path`` may be a glob such as ``"logs/*.jsonl"``).

    A line that is not a JSON object goes to the dead-letter output with its line number; the
    other lines are read. With ``follow=True`` the files (a path, glob or directory) are tailed:
    lines appended later, and new files, are read as they come (checked every ``poll``); a
    rotated or truncated file is read again from its start.

    Guarantee: exactly-once (files are read in name order; after a restart reading resumes at
    the checkpointed file and row).

    Examples
    --------
    >>> import rheon as rh, tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.jsonl")
    >>> _ = open(p, "w").write('{"x": 1}\\n{oops\\n{"x": 3}\\n')
    >>> flow = rh.Flow("j"); out = rh.io.Collect(); bad = rh.io.Collect()
    >>> flow.source(rh.io.JsonLines(p)).sink(out); flow.dead_letters().sink(bad)
    >>> flow.run(); out.rows, bad.rows[0]["reason"][:27]
    ([{'x': 1}, {'x': 3}], 'invalid JSON at a.jsonl:2: ')
    """

    kind = "JsonLines"

    @override
    def schema(self) -> pl.Schema | None:
        return None

    @override
    def _read(self, path: Path) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
        return self._parse_chunk(None, path.read_bytes(), path.name, 1)

    @override
    def _parse_chunk(self, header: bytes | None, chunk: bytes, name: str, first_line: int) -> Parsed:
        try:
            return pl.read_ndjson(chunk, infer_schema_length=None), []
        except pl.exceptions.PolarsError:
            pass
        rows: list[dict[str, Any]] = []
        bad: list[tuple[str, str]] = []
        for number, line in enumerate(chunk.decode("utf-8", errors="replace").splitlines(), first_line):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append((f"invalid JSON at {name}:{number}: {exc}", line))
                continue
            if not isinstance(value, dict):
                bad.append((f"not a JSON object at {name}:{number}", line))
                continue
            rows.append(value)
        return (pl.from_dicts(rows, infer_schema_length=None) if rows else pl.DataFrame()), bad


class Csv(_FileSource):
    """Read CSV files with a header row (``path`` may be a glob).

    Guarantee: exactly-once (files are read in name order; after a restart reading resumes at
    the checkpointed file and row).

    Examples
    --------
    >>> import rheon as rh, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.csv")
    >>> _ = open(p, "w").write("k,v\\na,1\\nb,2\\n")
    >>> flow = rh.Flow("c"); out = rh.io.Collect()
    >>> flow.source(rh.io.Csv(p)).sink(out)
    >>> flow.run(); out.rows
    [{'k': 'a', 'v': 1}, {'k': 'b', 'v': 2}]
    """

    kind = "Csv"

    @override
    def schema(self) -> pl.Schema | None:
        return pl.scan_csv(self.files[0]).collect_schema() if self.files else None

    @override
    def _read(self, path: Path) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
        return pl.read_csv(path), []

    @override
    def _tail(self, ctx: BuildContext) -> SourceLogic:
        return LineTail(self.kind, self.path, self._parse_chunk, header=True, poll_ms=self.poll_ms, clock=ctx.clock)

    @override
    def _parse_chunk(self, header: bytes | None, chunk: bytes, name: str, first_line: int) -> Parsed:
        try:
            return pl.read_csv((header or b"") + chunk), []
        except pl.exceptions.PolarsError as exc:
            reason = f"unreadable CSV at {name}:{first_line}: {str(exc).splitlines()[0]}"
            return pl.DataFrame(), [(reason, chunk.decode("utf-8", errors="replace")[:10_000])]


class Parquet(_FileSource):
    """Read Parquet files (``path`` may be a glob).

    Guarantee: exactly-once (files are read in name order; after a restart reading resumes at
    the checkpointed file and row).

    Examples
    --------
    >>> import rheon as rh, tempfile, os, polars as pl
    >>> p = os.path.join(tempfile.mkdtemp(), "a.parquet")
    >>> pl.DataFrame({"v": [1, 2, 3]}).write_parquet(p)
    >>> flow = rh.Flow("p"); out = rh.io.Collect()
    >>> flow.source(rh.io.Parquet(p, batch_size=2)).sink(out)
    >>> flow.run(); out.rows
    [{'v': 1}, {'v': 2}, {'v': 3}]
    """

    kind = "Parquet"

    @override
    def schema(self) -> pl.Schema | None:
        return pl.Schema(pl.read_parquet_schema(self.files[0])) if self.files else None

    @override
    def _read(self, path: Path) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
        return pl.read_parquet(path), []

    @override
    def _tail(self, ctx: BuildContext) -> SourceLogic:
        return NewFiles(self.kind, self.path, pl.read_parquet, poll_ms=self.poll_ms, clock=ctx.clock)
