"""File sources: JSON lines, CSV and Parquet, one file, a glob or a directory.

Bounded (the default), files are read in name order, each whole, and handed out ``batch_size``
rows at a time. With ``follow=True`` they are tailed as they grow (see :mod:`rheon.io._tail`).

Column types stay the same across lines, chunks and files: each source's reader learns them from
the first rows it reads (or takes ``schema=``) and sends a record that does not fit them to the
dead letters, with the reason and the line as read, instead of converting it. Every batch has the
columns seen so far, in the order they were first seen.
"""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.deadletters import payload_of
from rheon.core.durations import Duration, to_ms
from rheon.core.errors import FlowError, SourceError
from rheon.io._json import DEFAULT_MAX_DEPTH, DEFAULT_MAX_FIELDS, JsonDecoder, check_limits, load_types, types_state
from rheon.io._tail import FileReader, LineTail, NewFiles, Parsed, exists_parent, list_files
from rheon.io.base import BuildContext, KeepsDeadLetters, Source, SourceLogic

__all__ = ["Csv", "JsonLines", "Parquet"]


def _expand(kind: str, path: str | Path, *, follow: bool) -> list[Path]:
    text = str(path)
    files = list_files(text)
    if not files and not (follow and exists_parent(text)):
        msg = f"{kind}: no file matches '{text}'. Try an absolute path or check the glob."
        raise SourceError(msg)
    return files


def _schema(kind: str, schema: pl.Schema | dict[str, pl.DataType] | None) -> pl.Schema | None:
    if schema is None:
        return None
    try:
        return pl.Schema(schema)
    except (TypeError, ValueError) as exc:
        msg = f"{kind}: schema must map column names to Polars types, as {{'v': pl.Int64}} (got {schema!r})"
        raise FlowError(msg) from exc


def _text(line: bytes) -> str:
    return line.decode("utf-8", errors="replace")


def _parsed(text: pl.Series, dtype: pl.DataType) -> pl.Series:
    """CSV text as ``dtype``, null where a value does not parse (dates and times as Polars'
    reader parses them: ISO 8601)."""
    if isinstance(dtype, pl.Datetime):
        return text.str.to_datetime(time_unit=dtype.time_unit, time_zone=dtype.time_zone, strict=False)
    if dtype == pl.Date:
        return text.str.to_date(strict=False)
    if dtype == pl.Time:
        return text.str.to_time(strict=False)
    return text.cast(dtype, strict=False)


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
    def _reader(self) -> FileReader:
        """A new reader (one per run: it learns the column types)."""

    def _tail(self, ctx: BuildContext, reader: FileReader) -> SourceLogic:
        """The logic that follows growing files."""
        return LineTail(self.kind, self.path, reader, header=False, poll_ms=self.poll_ms, clock=ctx.clock)

    @override
    def build(self, ctx: BuildContext) -> SourceLogic:
        reader = self._reader()
        return self._tail(ctx, reader) if self.follow else _FileLogic(self, reader)

    def __repr__(self) -> str:
        return f"{self.kind}({self.path!r})"


class _FileLogic(KeepsDeadLetters, SourceLogic):
    def __init__(self, source: _FileSource, reader: FileReader) -> None:
        self.source = source
        self.reader = reader
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
                self.frame, bad = self.reader.read(path)
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
        types = self.reader.state()
        if self.frame is not None and self.file_index > 0:
            current = self.file_index - 1
            return {"file": self.source.files[current].name, "index": current, "offset": self.offset, "types": types}
        return {"file": None, "index": self.file_index, "offset": 0, "types": types}

    @override
    def restore(self, position: Any) -> None:
        self.reader.load_state(position.get("types"))
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


def _at(reason: str, where: str) -> str:
    """A decoder's reason, saying where in the files the record was."""
    if reason.startswith("invalid JSON: "):
        return f"invalid JSON at {where}: {reason.removeprefix('invalid JSON: ')}"
    return f"{reason} ({where})"


class _JsonLinesReader:
    """Lines through the JSON decoder the message sources use (`rheon.io._json.JsonDecoder`)."""

    def __init__(self, schema: pl.Schema | None, max_depth: int, max_fields: int) -> None:
        self.decoder = JsonDecoder(schema, max_depth=max_depth, max_fields=max_fields)

    def parse(self, header: bytes | None, chunk: bytes, name: str, first_line: int) -> Parsed:
        frame, _, bad = self.decoder.ndjson(chunk)
        if not bad:
            return frame, []
        lines = chunk.split(b"\n")
        dead = [
            (_at(reason, f"{name}:{first_line + i}"), _text(lines[i]))
            for i, reason in bad
            if lines[i].strip()  # a blank line (spaces, a CR) is no record
        ]
        return frame, dead

    def read(self, path: Path) -> Parsed:
        return self.parse(None, path.read_bytes(), path.name, 1)

    def state(self) -> Any:
        return self.decoder.state()

    def load_state(self, state: Any) -> None:
        self.decoder.load_state(state)


class JsonLines(_FileSource):
    """Read newline-delimited JSON files (``path`` may be a glob such as ``"logs/*.jsonl"``).

    Lines go through the same JSON decoder as Kafka and MQTT messages (`rheon.io._json.JsonDecoder`):
    a field keeps the type it first had (or the type ``schema`` gives it), across lines, files and
    restarts, and a line whose value does not fit it is a dead letter, never converted (``1.5``
    where the field was an integer, ``"1"`` or ``true`` for a number, a list where it was an
    object). So is a line that is not a JSON object, not UTF-8, nested deeper than ``max_depth``
    levels or with more than ``max_fields`` distinct fields. Reasons name the file and line; the
    payload is the line as read. Blank lines are skipped. Every batch has the fields seen so far as
    columns, in the order they first appeared (a field a line lacks is null).

    With ``follow=True`` the files (a path, glob or directory) are tailed: lines appended later,
    and new files, are read as they come (checked every ``poll``); a rotated or truncated file is
    read again from its start.

    Guarantee: exactly-once (files are read in name order; after a restart reading resumes at
    the checkpointed file and row, with the column types learned so far).

    Examples
    --------
    >>> import rheon as rh, tempfile, os
    >>> d = tempfile.mkdtemp(); p = os.path.join(d, "a.jsonl")
    >>> _ = open(p, "w").write('{"x": 1}\\n{oops\\n{"x": 3}\\n{"x": "4"}\\n')
    >>> flow = rh.Flow("j"); out = rh.io.Collect(); bad = rh.io.Collect()
    >>> flow.source(rh.io.JsonLines(p)).sink(out); flow.dead_letters().sink(bad)
    >>> flow.run(); out.rows
    [{'x': 1}, {'x': 3}]
    >>> for d in bad.rows:
    ...     print(d["reason"][:30], "|", d["payload"])
    invalid JSON at a.jsonl:2: Exp | {oops
    field 'x' is "4" (a string), b | {"x": "4"}
    """

    kind = "JsonLines"

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 10_000,
        follow: bool = False,
        poll: Duration = "200ms",
        schema: pl.Schema | dict[str, pl.DataType] | None = None,
        max_depth: int = DEFAULT_MAX_DEPTH,
        max_fields: int = DEFAULT_MAX_FIELDS,
    ) -> None:
        check_limits(self.kind, max_depth, max_fields)
        self.value_schema = _schema(self.kind, schema)
        self.max_depth, self.max_fields = max_depth, max_fields
        super().__init__(path, batch_size=batch_size, follow=follow, poll=poll)

    @override
    def schema(self) -> pl.Schema | None:
        return self.value_schema

    @override
    def _reader(self) -> FileReader:
        return _JsonLinesReader(self.value_schema, self.max_depth, self.max_fields)


_CSV_FAILED = (pl.exceptions.PolarsError, pl.exceptions.PanicException)


class _CsvReader:
    """CSV text into columns whose types stay those of the first file (or chunk) a column was in.

    Known columns are parsed as their type; a row whose value does not parse as it is a dead letter.
    """

    def __init__(
        self, schema: pl.Schema | None, overrides: pl.Schema | None = None, *, parse_dates: bool = False
    ) -> None:
        self.schema = schema
        self.parse_dates = parse_dates
        self.seen: dict[str, pl.DataType] = dict(schema if schema is not None else overrides or {})

    def parse(self, header: bytes | None, chunk: bytes, name: str, first_line: int) -> Parsed:
        data = (header or b"") + chunk
        row_line = first_line if header is not None else first_line + 1  # the first data row's line
        try:
            names = pl.read_csv(data, n_rows=0).columns
            known = {c: self.seen[c] for c in names if c in self.seen}
            wanted = names if self.schema is None else [c for c in names if c in self.schema]
            frame = (
                pl.read_csv(data, schema_overrides=known, columns=wanted, try_parse_dates=self.parse_dates)
                if wanted
                else pl.DataFrame()
            )
        except _CSV_FAILED:
            return self._slow(data, name, row_line)
        return self._align(frame), []

    def _align(self, frame: pl.DataFrame) -> pl.DataFrame:
        """Learn the new columns' types; every known column, in the order first seen."""
        if self.schema is None:
            for column, dtype in frame.schema.items():
                if column not in self.seen:
                    self.seen[column] = dtype
        missing = [pl.lit(None, dtype).alias(c) for c, dtype in self.seen.items() if c not in frame.columns]
        return frame.with_columns(missing).select(list(self.seen)) if self.seen else frame

    def _slow(self, data: bytes, name: str, row_line: int) -> Parsed:
        """Every value as text, then each column parsed as its type: the rows that do not parse are dead letters."""
        try:
            raw = pl.read_csv(data, infer_schema=False)
        except _CSV_FAILED as exc:
            reason = f"unreadable CSV at {name}:{row_line}: {str(exc).splitlines()[0]}"
            return pl.DataFrame(), [(reason, _text(data)[:10_000])]
        if self.schema is not None:
            raw = raw.select([c for c in raw.columns if c in self.schema])
        new = [c for c in raw.columns if c not in self.seen]
        types = dict(self.seen)
        if new:  # typed as Polars would have typed them from the first rows (text if it cannot)
            try:
                sample = pl.read_csv(raw.head(100).select(new).write_csv().encode(), try_parse_dates=self.parse_dates)
                types.update(dict(sample.schema))
            except _CSV_FAILED:
                types.update(dict.fromkeys(new, pl.String()))
        parsed: dict[str, pl.Series] = {}
        bad = pl.Series([False] * raw.height)
        reasons: dict[int, str] = {}
        for column in raw.columns:
            text = raw.get_column(column)
            dtype = types[column]
            if dtype == pl.String:
                parsed[column] = text
                continue
            if dtype == pl.Boolean:  # as Polars' reader: true or false, in any case
                lower = text.str.to_lowercase()
                valid = lower.is_in(["true", "false"]).fill_null(value=False)
                value = (lower == "true").zip_with(valid, pl.Series(column, [None] * raw.height, dtype=pl.Boolean))
            else:
                value = _parsed(text, dtype)
            failed = value.is_null() & text.is_not_null()
            for i in failed.arg_true().to_list():
                reasons.setdefault(
                    i,
                    f"field {column!r} is {text[i]!r}, which is not {dtype}: this source has read the column as "
                    f"{dtype} so far (a column keeps the type it first had). Try schema= on the source to set the types",
                )
            bad = bad | failed
            parsed[column] = value
        frame = pl.DataFrame(parsed).filter(~bad)
        lines = data.split(b"\n")[1:]
        exact = b'"' not in data and len([line for line in lines if line]) == raw.height and b"\n\n" not in data
        dead: list[tuple[str, str]] = []
        for i, reason in sorted(reasons.items()):
            if exact:
                dead.append((f"{reason} ({name}:{row_line + i})", _text(lines[i].rstrip(b"\r"))))
            else:
                row = raw.slice(i, 1).write_csv(include_header=False).rstrip("\n")
                dead.append((f"{reason} ({name}, record {i + 1} from line {row_line})", row))
        return self._align(frame), dead

    def read(self, path: Path) -> Parsed:
        return self.parse(None, path.read_bytes(), path.name, 1)

    def state(self) -> Any:
        return types_state(self.seen) if self.schema is None else None

    def load_state(self, state: Any) -> None:
        if self.schema is None:
            self.seen = load_types(state)


class Csv(_FileSource):
    """Read CSV files with a header row (``path`` may be a glob).

    Column types: ``schema`` if given (other columns are left out), else each column keeps the type
    ``schema_overrides`` gives it or Polars infers from the first rows of the first file (or chunk,
    when following) it appears in; with ``parse_dates=True`` text that looks like an ISO 8601 date
    or date-time is read as a ``Date`` or ``Datetime`` (a ``Datetime`` column can be the event
    time: ``flow.source(rh.io.Csv(path, parse_dates=True), time="when")``). A
    later file that would infer the column differently (``1.5`` or ``x`` where the first file had
    integers) does not change it: its rows whose value does not parse as the column's type are dead
    letters, with the reason and the line as read; text columns take any value as it is. Every batch
    has the columns seen so far, in the order first seen (a column a file lacks is null).

    Guarantee: exactly-once (files are read in name order; after a restart reading resumes at
    the checkpointed file and row, with the column types learned so far).

    Examples
    --------
    >>> import rheon as rh, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> _ = open(os.path.join(d, "a.csv"), "w").write("k,v\\na,1\\nb,2\\n")
    >>> _ = open(os.path.join(d, "b.csv"), "w").write("v,k\\n3,c\\nx,d\\n")
    >>> flow = rh.Flow("c"); out = rh.io.Collect(); bad = rh.io.Collect()
    >>> flow.source(rh.io.Csv(os.path.join(d, "*.csv"))).sink(out); flow.dead_letters().sink(bad)
    >>> flow.run(); out.rows
    [{'k': 'a', 'v': 1}, {'k': 'b', 'v': 2}, {'k': 'c', 'v': 3}]
    >>> [(d["reason"][:44], d["payload"]) for d in bad.rows]
    [("field 'v' is 'x', which is not Int64: this s", 'x,d')]

    Event time from ISO text:

    >>> import polars as pl
    >>> p = os.path.join(d, "t.csv"); _ = open(p, "w").write("when,v\\n2024-03-01T10:00:01,1\\nsoon,2\\n")
    >>> flow = rh.Flow("t"); out = rh.io.Collect(); bad = rh.io.Collect()
    >>> flow.source(rh.io.Csv(p, schema_overrides={"when": pl.Datetime("ms")}), time="when").sink(out)
    >>> flow.dead_letters().sink(bad)
    >>> flow.run(); out.rows, [d["payload"] for d in bad.rows]
    ([{'when': datetime.datetime(2024, 3, 1, 10, 0, 1), 'v': 1}], ['soon,2'])
    """

    kind = "Csv"

    def __init__(
        self,
        path: str | Path,
        *,
        batch_size: int = 10_000,
        follow: bool = False,
        poll: Duration = "200ms",
        schema: pl.Schema | dict[str, pl.DataType] | None = None,
        schema_overrides: pl.Schema | dict[str, pl.DataType] | None = None,
        parse_dates: bool = False,
    ) -> None:
        self.value_schema = _schema(self.kind, schema)
        self.overrides = _schema(self.kind, schema_overrides)
        if self.value_schema is not None and self.overrides is not None:
            msg = f"{self.kind}: give schema= (every column) or schema_overrides= (some columns), not both"
            raise FlowError(msg)
        self.parse_dates = parse_dates
        super().__init__(path, batch_size=batch_size, follow=follow, poll=poll)

    @override
    def schema(self) -> pl.Schema | None:
        if self.value_schema is not None:
            return self.value_schema
        if not self.files:
            return None
        return pl.scan_csv(
            self.files[0], schema_overrides=self.overrides, try_parse_dates=self.parse_dates
        ).collect_schema()

    @override
    def _reader(self) -> FileReader:
        return _CsvReader(self.value_schema, self.overrides, parse_dates=self.parse_dates)

    @override
    def _tail(self, ctx: BuildContext, reader: FileReader) -> SourceLogic:
        return LineTail(self.kind, self.path, reader, header=True, poll_ms=self.poll_ms, clock=ctx.clock)


class _ParquetReader:
    """Parquet files, whose columns keep the types of the first file they were in.

    A column of another type in a later file is converted only between numeric types, and only if
    every value stays the same; otherwise its rows with a value are dead letters.
    """

    def __init__(self) -> None:
        self.seen: dict[str, pl.DataType] = {}

    def read(self, path: Path) -> Parsed:
        frame = pl.read_parquet(path)
        bad = pl.Series([False] * frame.height)
        reasons: dict[int, str] = {}
        columns: list[pl.Series] = []
        for column in frame.iter_columns():
            known = self.seen.get(column.name)
            if known is None:
                if column.dtype != pl.Null:
                    self.seen[column.name] = column.dtype
                columns.append(column)
                continue
            if column.dtype in (known, pl.Null):
                columns.append(column.cast(known))
                continue
            converted = _same_numbers(column, known)
            if converted is not None:
                columns.append(converted)
                continue
            failed = column.is_not_null()
            for i in failed.arg_true().to_list():
                reasons.setdefault(
                    i,
                    f"column {column.name!r} is {column.dtype} in {path.name}, but this source has read it as "
                    f"{known} so far (a column keeps the type it first had): value {column[i]!r}",
                )
            bad = bad | failed
            columns.append(pl.Series(column.name, [None] * frame.height, dtype=known))
        out = pl.DataFrame(columns)
        dead = [(reasons[i], payload_of(frame.row(i, named=True))) for i in sorted(reasons)]
        missing = [pl.lit(None, dtype).alias(c) for c, dtype in self.seen.items() if c not in out.columns]
        out = out.with_columns(missing).select([c for c in self.seen if c in out.columns] + [
            c for c in out.columns if c not in self.seen
        ])  # fmt: skip
        return out.filter(~bad), dead

    def parse(self, header: bytes | None, chunk: bytes, name: str, first_line: int) -> Parsed:
        msg = "Parquet files are read whole"
        raise NotImplementedError(msg)

    def state(self) -> Any:
        return types_state(self.seen)

    def load_state(self, state: Any) -> None:
        self.seen = load_types(state)


def _same_numbers(column: pl.Series, dtype: pl.DataType) -> pl.Series | None:
    """``column`` as ``dtype`` if both are numeric and no value changes, else None."""
    if not (column.dtype.is_numeric() and dtype.is_numeric()):
        return None
    try:
        converted = column.cast(dtype, strict=True)
        back = converted.cast(column.dtype, strict=True)
    except _CSV_FAILED:
        return None
    return converted if back.equals(column) else None


class Parquet(_FileSource):
    """Read Parquet files (``path`` may be a glob).

    Each column keeps the type it has in the first file: in a later file a column of another
    numeric type is converted when no value changes (Int32 to Int64, integers to floats below
    2**53); otherwise (text for a number, a number that would change) its rows with a value are
    dead letters. Every batch has the columns seen so far, in the order first seen.

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
    def _reader(self) -> FileReader:
        return _ParquetReader()

    @override
    def _tail(self, ctx: BuildContext, reader: FileReader) -> SourceLogic:
        return NewFiles(self.kind, self.path, reader, poll_ms=self.poll_ms, clock=ctx.clock)
