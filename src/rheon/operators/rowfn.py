"""Python functions applied record by record: filter, map, flat_map.

Consecutive Python steps are fused into one operator so that a batch is turned into dicts once,
runs through every step, and is turned back into a frame once (like Flink's operator chaining).
Each row remembers the index of the input row it came from; that is how the hidden watermark
column follows records through user code, and how a chain of filters returns the original rows
untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from itertools import compress
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.core.batch import WM_COL, Batch
from rheon.core.collector import no_gc
from rheon.core.deadletters import dead_letter_frame, payload_of
from rheon.operators._rows import ROW_CHUNK, RowsOut, frame_to_rows, rows_to_frame
from rheon.operators.base import DEAD, MAIN, Operator, Output

__all__ = ["RowFnChain", "RowStep"]

Row = dict[str, Any]


class Dead(list[tuple[int, str, str, str]]):
    """Failed records as ``(input row, operator, reason, payload)``, and the first exception."""

    first_error: BaseException | None = None

    def failed(self, i: int, step: RowStep, exc: BaseException, row: Row) -> None:
        """Record ``row`` (input row ``i``) as failed in ``step`` with ``exc``."""
        self.append((i, step.label, _reason(exc), payload_of(row)))
        if self.first_error is None:
            self.first_error = exc


Rows = tuple[list[Row], list[int]]


@dataclass(frozen=True)
class RowStep:
    """One Python step: ``kind`` is ``"filter"``, ``"map"`` or ``"flat_map"``."""

    kind: str
    name: str
    fn: Callable[[Row], Any]

    @property
    def label(self) -> str:
        return f"{self.kind} '{self.name}'"


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _not_a_dict(step: RowStep, value: object) -> str:
    return f"{step.label} returned a {type(value).__name__}, expected a dict (got {value!r:.80})"


def _as_dict(step: RowStep, value: object, i: int, row: Row, dead: Dead) -> Row | None:
    """``value`` as a dict, or ``None`` after dead-lettering ``row`` if it is not a mapping."""
    if type(value) is dict:
        return value
    if isinstance(value, Mapping):
        return dict(value)
    dead.append((i, step.label, _not_a_dict(step, value), payload_of(row)))
    return None


def _run_filter(step: RowStep, rows: list[Row], idx: list[int], dead: Dead) -> Rows:
    try:
        # Fast path: the predicate runs in C's map loop, not a Python loop.
        mask = list(map(step.fn, rows))
        return list(compress(rows, mask)), list(compress(idx, mask))
    except Exception:  # redo row by row to find the failing records
        pass
    fn = step.fn
    out: list[Row] = []
    out_idx: list[int] = []
    for row, i in zip(rows, idx, strict=True):
        try:
            if fn(row):
                out.append(row)
                out_idx.append(i)
        except Exception as exc:
            dead.failed(i, step, exc, row)
    return out, out_idx


def _run_map(step: RowStep, rows: list[Row], idx: list[int], dead: Dead) -> Rows:
    try:
        values = list(map(step.fn, rows))
        if set(map(type, values)) <= {dict}:
            return values, idx
    except Exception:  # redo row by row to find the failing records
        pass
    fn = step.fn
    out: list[Row] = []
    out_idx: list[int] = []
    for row, i in zip(rows, idx, strict=True):
        try:
            value = fn(row)
        except Exception as exc:
            dead.failed(i, step, exc, row)
            continue
        as_dict = _as_dict(step, value, i, row, dead)
        if as_dict is not None:
            out.append(as_dict)
            out_idx.append(i)
    return out, out_idx


def _run_flat_map(step: RowStep, rows: list[Row], idx: list[int], dead: Dead) -> Rows:
    fn = step.fn
    out: list[Row] = []
    out_idx: list[int] = []
    for row, i in zip(rows, idx, strict=True):
        try:
            produced = list(fn(row) or ())
        except Exception as exc:
            dead.failed(i, step, exc, row)
            continue
        for value in produced:
            as_dict = _as_dict(step, value, i, row, dead)
            if as_dict is not None:
                out.append(as_dict)
                out_idx.append(i)
    return out, out_idx


_RUNNERS: dict[str, Callable[[RowStep, list[Row], list[int], Dead], Rows]] = {
    "filter": _run_filter,
    "map": _run_map,
    "flat_map": _run_flat_map,
}


class RowFnChain(Operator):
    """One or more fused Python steps.

    A step that raises, or a map that returns something other than a dict, sends the record to
    the dead-letter output with the exception and the record; the other records go on.
    """

    def __init__(self, steps: Iterable[RowStep]) -> None:
        self.steps = list(steps)
        super().__init__("+".join(s.name for s in self.steps))
        self.kind = self.steps[0].kind if len(self.steps) == 1 else "chain"
        self.filters_only = all(s.kind == "filter" for s in self.steps)
        self.rows_out = RowsOut(self.label)

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        frame = batch.frame
        if frame.height == 0:
            return [(MAIN, batch if self.filters_only else self.empty_like(batch))]
        dead = Dead()
        with no_gc():
            chunks = [self._chunk(frame.slice(i, ROW_CHUNK), i, dead) for i in range(0, frame.height, ROW_CHUNK)]
        if self.filters_only:
            out = chunks[0][0] if len(chunks) == 1 else pl.concat([c for c, _ in chunks], rechunk=False)
        else:
            out, bad = self.rows_out.batch(chunks)
            dead += [(i, self.label, reason, payload) for i, reason, payload in bad]
        outputs: list[Output] = [(MAIN, batch.with_frame(out))]
        if dead.first_error is not None and self.first_error is None:
            self.first_error = dead.first_error
        if dead:
            dead.sort(key=lambda d: d[0])  # in input order, whichever step failed
            letters = dead_letter_frame([d[1] for d in dead], [d[2] for d in dead], [d[3] for d in dead])
            outputs.append((DEAD, Batch(letters, watermark=batch.watermark, ingest_ns=batch.ingest_ns)))
        return outputs

    def _chunk(self, frame: pl.DataFrame, offset: int, dead: Dead) -> tuple[pl.DataFrame, int]:
        """The chunk's output rows as a frame, and the input position the chunk starts at."""
        rows, _ = frame_to_rows(frame)
        idx = list(range(offset, offset + frame.height))
        for step in self.steps:
            rows, idx = _RUNNERS[step.kind](step, rows, idx, dead)
        local = [i - offset for i in idx]
        if self.filters_only:
            return (frame.select(pl.all().gather(local)) if len(local) < frame.height else frame), offset
        wms = None
        if WM_COL in frame.columns:
            wms = frame.get_column(WM_COL).gather(local).to_list()
        result, misfits = rows_to_frame(rows, wms, frame.schema)
        dead += [(idx[j], self.label, self.rows_out.misfit(n, v, t), payload_of(rows[j])) for j, n, v, t in misfits]
        return result, offset
