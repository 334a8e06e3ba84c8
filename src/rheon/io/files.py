"""Bounded file sources: JSON lines, CSV and Parquet, one file or a glob of files.

Files are read in name order, each whole, and handed out ``batch_size`` rows at a time.
"""

from __future__ import annotations

import glob as globlib
import json
from abc import abstractmethod
from pathlib import Path
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.errors import SourceError
from rheon.io.base import BuildContext, Source, SourceLogic

__all__ = ["Csv", "JsonLines", "Parquet"]


def _expand(kind: str, path: str | Path) -> list[Path]:
    text = str(path)
    matches = sorted(Path(p) for p in globlib.glob(text)) if globlib.has_magic(text) else [Path(text)]
    files = [p for p in matches if p.is_file()]
    if not files:
        msg = f"{kind}: no file matches '{text}'. Try an absolute path or check the glob."
        raise SourceError(msg)
    return files


class _FileSource(Source):
    kind = "File"

    def __init__(self, path: str | Path, *, batch_size: int = 10_000) -> None:
        self.path = str(path)
        self.batch_size = batch_size
        self.files = _expand(self.kind, path)

    @abstractmethod
    def _read(self, path: Path) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
        """Read one whole file: the rows, and ``(reason, payload)`` for records that failed."""

    @override
    def build(self, ctx: BuildContext) -> SourceLogic:
        return _FileLogic(self)

    def __repr__(self) -> str:
        return f"{self.kind}({self.path!r})"


class _FileLogic(SourceLogic):
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

    @override
    def take_dead_letters(self) -> list[tuple[str, str]]:
        out, self.dead = self.dead, []
        return out


class JsonLines(_FileSource):
    """Read newline-delimited JSON files (``path`` may be a glob such as ``"logs/*.jsonl"``).

    A line that is not a JSON object goes to the dead-letter output with its line number; the
    other lines are read.

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
        data = path.read_bytes()
        try:
            return pl.read_ndjson(data, infer_schema_length=None), []
        except pl.exceptions.PolarsError:
            pass
        rows: list[dict[str, Any]] = []
        bad: list[tuple[str, str]] = []
        for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                bad.append((f"invalid JSON at {path.name}:{number}: {exc}", line))
                continue
            if not isinstance(value, dict):
                bad.append((f"not a JSON object at {path.name}:{number}", line))
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
        return pl.scan_csv(self.files[0]).collect_schema()

    @override
    def _read(self, path: Path) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
        return pl.read_csv(path), []


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
        return pl.Schema(pl.read_parquet_schema(self.files[0]))

    @override
    def _read(self, path: Path) -> tuple[pl.DataFrame, list[tuple[str, str]]]:
        return pl.read_parquet(path), []
