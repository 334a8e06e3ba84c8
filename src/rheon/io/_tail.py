"""Following files as they grow (``follow=True`` on file sources): the tail of logs.

Line-based files (JSON lines, CSV) are read by byte offset: each poll reads what was appended
since the last one, up to the last complete line (a half-written line waits for its newline).
New files matching the glob are picked up in name order. A file replaced by another of the same
name (rotation) or truncated is read again from its start. Positions are byte offsets, so a
restarted flow resumes exactly where its checkpoint says. Parquet files cannot grow; for them,
following means reading each new file of the directory once (writers should create them
atomically, as ``rh.io.FileSink`` does).
"""

from __future__ import annotations

import glob as globlib
import logging
import os
from pathlib import Path
from typing import Any, Protocol

import polars as pl
from typing_extensions import override

from rheon.core.errors import SourceError
from rheon.io.base import KeepsDeadLetters, SourceLogic
from rheon.time.clock import Clock

__all__ = ["FileReader", "LineTail", "NewFiles", "list_files"]

log = logging.getLogger(__name__)

Parsed = tuple[pl.DataFrame, list[tuple[str, str]]]
"""Rows, and ``(reason, payload)`` for the records that failed."""


class FileReader(Protocol):
    """Turns a file's bytes into rows, keeping column types the same across chunks and files.

    One per running source: it learns the types of the first rows it reads, and saves them in the
    source's checkpoints (`state`, `load_state`).
    """

    def parse(self, header: bytes | None, chunk: bytes, name: str, first_line: int) -> Parsed:
        """Rows of complete lines: ``chunk`` (after the file's ``header`` line, if it has one), from
        file ``name``, whose first line has number ``first_line``."""
        ...

    def read(self, path: Path) -> Parsed:
        """Rows of a whole file."""
        ...

    def state(self) -> Any:
        """What it learned (column types), for a checkpoint."""
        ...

    def load_state(self, state: Any) -> None:
        """Go on from what `state` returned."""
        ...


_READ_BYTES = 8 * 1024 * 1024


def list_files(pattern: str) -> list[Path]:
    """Files matching a path, glob or directory (hidden files, such as in-progress output
    starting with ".", are skipped), in name order."""
    base = Path(pattern)
    if base.is_dir():
        matches = list(base.iterdir())
    elif globlib.has_magic(pattern):
        matches = [Path(p) for p in globlib.glob(pattern)]
    else:
        matches = [base] if base.exists() else []
    return sorted(p for p in matches if p.is_file() and not p.name.startswith("."))


class _Cursor:
    __slots__ = ("header", "inode", "line", "offset")

    def __init__(self, inode: int, offset: int = 0, line: int = 1, header: bytes | None = None) -> None:
        self.inode = inode
        self.offset = offset
        self.line = line
        self.header = header


class LineTail(KeepsDeadLetters, SourceLogic):
    """Follow line-based files: the logic of ``JsonLines(..., follow=True)`` and ``Csv``."""

    def __init__(
        self, kind: str, pattern: str, reader: FileReader, *, header: bool, poll_ms: int, clock: Clock
    ) -> None:
        self.kind = kind
        self.pattern = pattern
        self.reader = reader
        self.has_header = header
        self.poll_ns = poll_ms * 1_000_000
        self.clock = clock
        self.cursors: dict[str, _Cursor] = {}
        self.files: list[Path] = []
        self.next_scan_ns = 0
        self.dead: list[tuple[str, str]] = []

    def _scan(self) -> None:
        self.files = list_files(self.pattern)
        self.next_scan_ns = self.clock.now_ns() + self.poll_ns

    @override
    def next_batch(self) -> pl.DataFrame | None:
        if self.clock.now_ns() >= self.next_scan_ns:
            self._scan()
        for path in self.files:
            frame = self._read_new(path)
            if frame is not None:
                return frame
        return None

    def _read_new(self, path: Path) -> pl.DataFrame | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        cursor = self.cursors.get(path.name)
        if cursor is None or cursor.inode != stat.st_ino or stat.st_size < cursor.offset:
            if cursor is not None:
                log.info("file_restarted source=%s file=%s reason=rotated_or_truncated", self.kind, path.name)
            cursor = self.cursors[path.name] = _Cursor(stat.st_ino)
        if stat.st_size <= cursor.offset:
            return None
        try:
            with open(path, "rb") as fh:
                fh.seek(cursor.offset)
                data = fh.read(min(stat.st_size - cursor.offset, _READ_BYTES))
        except OSError as exc:
            msg = f"{self.kind}: cannot read '{path}': {exc}"
            raise SourceError(msg) from exc
        end = data.rfind(b"\n")
        if end < 0:
            return None  # no complete line yet
        chunk = data[: end + 1]
        cursor.offset += len(chunk)
        first_line = cursor.line
        cursor.line += chunk.count(b"\n")
        if self.has_header and cursor.header is None:
            newline = chunk.find(b"\n")
            cursor.header = chunk[: newline + 1]
            chunk = chunk[newline + 1 :]
            first_line += 1
            if not chunk:
                return None
        frame, bad = self.reader.parse(cursor.header, chunk, path.name, first_line)
        self.dead.extend(bad)
        return frame

    @override
    def done(self) -> bool:
        return False

    @override
    def wait_hint_s(self) -> float | None:
        return max(0.0, (self.next_scan_ns - self.clock.now_ns()) / 1e9)

    @override
    def backlog(self) -> dict[tuple[str, str], float]:
        """Bytes of each followed file not read yet (a file not opened yet counts whole)."""
        out: dict[tuple[str, str], float] = {}
        for path in self.files:
            try:
                stat = path.stat()
            except OSError:
                continue
            cursor = self.cursors.get(path.name)
            done = cursor.offset if cursor is not None and cursor.inode == stat.st_ino else 0
            out[(path.name, "bytes")] = float(max(stat.st_size - done, 0))
        return out

    @override
    def snapshot(self) -> Any:
        files = {name: (c.inode, c.offset, c.line, c.header) for name, c in self.cursors.items()}
        return {"files": files, "types": self.reader.state()}

    @override
    def restore(self, position: Any) -> None:
        position = dict(position)
        if position.keys() == {"files", "types"}:  # else a checkpoint of rheon 0.1: the cursors alone
            self.reader.load_state(position["types"])
            position = dict(position["files"])
        self.cursors = {name: _Cursor(*values) for name, values in position.items()}


class NewFiles(KeepsDeadLetters, SourceLogic):
    """Read each file that appears in a directory (or matches a glob) once, whole."""

    def __init__(self, kind: str, pattern: str, reader: FileReader, *, poll_ms: int, clock: Clock) -> None:
        self.kind = kind
        self.pattern = pattern
        self.reader = reader
        self.poll_ns = poll_ms * 1_000_000
        self.clock = clock
        self.seen: set[str] = set()
        self.queue: list[Path] = []
        self.next_scan_ns = 0
        self.dead: list[tuple[str, str]] = []

    @override
    def next_batch(self) -> pl.DataFrame | None:
        if not self.queue and self.clock.now_ns() >= self.next_scan_ns:
            self.queue = [p for p in list_files(self.pattern) if p.name not in self.seen]
            self.next_scan_ns = self.clock.now_ns() + self.poll_ns
        if not self.queue:
            return None
        path = self.queue.pop(0)
        self.seen.add(path.name)
        try:
            frame, bad = self.reader.read(path)
        except (OSError, pl.exceptions.PolarsError) as exc:
            msg = f"{self.kind}: cannot read '{path}': {exc}"
            raise SourceError(msg) from exc
        self.dead.extend(bad)
        return frame

    @override
    def done(self) -> bool:
        return False

    @override
    def wait_hint_s(self) -> float | None:
        return 0.0 if self.queue else max(0.0, (self.next_scan_ns - self.clock.now_ns()) / 1e9)

    @override
    def snapshot(self) -> Any:
        return {"files": sorted(self.seen), "types": self.reader.state()}

    @override
    def restore(self, position: Any) -> None:
        if isinstance(position, dict):  # else a checkpoint of rheon 0.1: the names alone
            self.reader.load_state(position["types"])
            position = position["files"]
        self.seen = set(position)
        self.queue = []


def exists_parent(pattern: str) -> bool:
    """Whether the directory part of a pattern exists (following needs somewhere to watch)."""
    base = Path(pattern)
    if base.is_dir():
        return True
    return Path(os.path.dirname(pattern) or ".").is_dir()
