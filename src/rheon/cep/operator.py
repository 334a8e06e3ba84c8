"""The CEP operator: buffers each key's events until the watermark passes them, feeds them to the
matcher in event-time order, and emits matches, timed-out partial matches and late events.

The vectorized part: expression conditions are evaluated on whole batches, and a row that
cannot change anything (it satisfies no condition, and neither its key's previous row nor the
key's state needs it) never reaches Python. For a pattern whose steps are all strict, a row
after a row that satisfied nothing finds its key with no open attempt, so only rows that can
start a match, and the rows right after them, reach the matcher.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl
from typing_extensions import override

from rheon.cep.nfa import Attempt, KeyState, Matcher, Path, compile_pattern, path_rows
from rheon.cep.pattern import Pattern
from rheon.core.batch import MAX_WM, WM_COL, Batch
from rheon.core.columns import ColumnTypes
from rheon.core.deadletters import dead_letter_frame, payload_of, payloads_of
from rheon.core.errors import FlowError
from rheon.core.eventtime import TimeType, time_type_of
from rheon.operators._keys import key_getter
from rheon.operators._rows import frame_to_rows, no_gc
from rheon.operators.base import DEAD, LATE, MAIN, Operator, Output, State
from rheon.state.backends import KeyedStateBackend
from rheon.state.keyed import key_group
from rheon.state.service import KeyedService
from rheon.state.shared import SharedFiles

__all__ = ["TIMED_OUT", "MatchOperator", "parse_after_match"]

TIMED_OUT = "timed_out"
_T = "__cep_t"  # event time in ticks
_ARRIVAL = "__cep_arrival"  # arrival number: ties in time keep arrival order
_TRIGGER = "__cep_trigger"  # the time (ticks) whose release made an output final
_STATE = "m"

AFTER_MATCH = ("skip_past_last_event", "skip_to_next", "skip_to_first:<step>", "skip_to_last:<step>", "no_skip")


def parse_after_match(value: str, names: Sequence[str], where: str) -> tuple[str, int | None]:
    """``after_match=`` as ``(mode, step index)``; a :class:`FlowError` names what is wrong.

    Examples
    --------
    >>> parse_after_match("skip_to_last:fail", ["fail", "success"], "match 'm'")
    ('to_last', 0)
    >>> parse_after_match("skip_to_first:x", ["fail"], "match 'm'")
    Traceback (most recent call last):
    ...
    rheon.core.errors.FlowError: match 'm': after_match='skip_to_first:x' names no step of the pattern (steps: fail)
    """
    simple = {"skip_past_last_event": "past_last", "skip_to_next": "to_next", "no_skip": "no_skip"}
    if isinstance(value, str) and value in simple:
        return simple[value], None
    if isinstance(value, str) and ":" in value:
        mode, _, step = value.partition(":")
        if mode in ("skip_to_first", "skip_to_last"):
            if step not in names:
                msg = f"{where}: after_match={value!r} names no step of the pattern (steps: {', '.join(names)})"
                raise FlowError(msg)
            return mode.removeprefix("skip_"), list(names).index(step)
    msg = f"{where}: after_match must be one of {', '.join(AFTER_MATCH)} (got {value!r})"
    raise FlowError(msg)


class MatchOperator(Operator):
    """Finds ``pattern`` in each key's events; outputs matches, ``timed_out`` and ``late``."""

    kind = "match"
    stateful = True

    def __init__(
        self,
        name: str,
        keys: Sequence[str],
        time_col: str,
        pattern: Pattern,
        after_match: str,
        time_type: TimeType | None,
        measures: Mapping[str, pl.Expr] | None = None,
        backend: KeyedStateBackend | None = None,
    ) -> None:
        super().__init__(name)
        self.keys = list(keys)
        self.time_col = time_col
        self.pattern = pattern
        self.after_match = after_match
        self.program = compile_pattern(pattern)
        self.names = self.program.names
        skip = parse_after_match(after_match, self.names, self.label)
        self.matcher = Matcher(self.program, skip, self._on_match, self._on_timeout, self._on_error)
        self.matcher.within = None  # in ticks, once the time type is known
        self.measures = dict(measures or {})
        self.ttype = time_type
        self.keyed = KeyedService(backend)
        self.input = ColumnTypes(None, where=self.label, passthrough=(WM_COL,))
        self.live: set[Any] = set()
        self.buffer: pl.DataFrame | None = None
        self.arrivals = 0
        self.wm = -(2**62)
        self.finished = False
        self._resolve()
        self._matches: list[tuple[Path, int]] = []
        self._timeouts: list[tuple[Path, int]] = []
        self._dead: list[tuple[str, str]] = []
        self._trigger = 0

    def _resolve(self) -> None:
        if self.ttype is not None and self.program.within_ms is not None:
            self.matcher.within = self.ttype.ticks(self.program.within_ms)

    # -- matcher callbacks ---------------------------------------------------------------------

    def _on_match(self, key: Any, attempt: Attempt, path: Path) -> None:
        self._matches.append((path, self._trigger))

    def _on_timeout(self, key: Any, attempt: Attempt) -> None:
        self._timeouts.append((attempt.partial, self._trigger))

    def _on_error(self, where: str, row: dict[str, Any], exc: Exception) -> None:
        self._dead.append((f"{self.label}, {where}: condition raised {type(exc).__name__}: {exc}", payload_of(row)))

    # -- running -------------------------------------------------------------------------------

    @override
    def process(self, port: int, batch: Batch) -> list[Output]:
        outputs: list[Output] = []
        frame = batch.frame
        pre: pl.Series | None = None
        lo = self.wm
        with no_gc():
            if frame.height:
                pre = self._accept(frame, batch, outputs)
            hi = batch.watermark
            if hi > self.wm or (self.buffer is not None and self.buffer.height and hi >= self.wm):
                self._release(hi)
                self.wm = max(self.wm, hi)
            if hi >= MAX_WM and not self.finished:
                self._finish()
            self.keyed.end_batch()
        outputs[:0] = [(MAIN, batch.with_frame(self._frame(self._matches, pre, lo)))]
        self._matches = []
        if self._timeouts:
            timed_out = self._frame(self._timeouts, pre, lo)
            outputs.append((TIMED_OUT, Batch(timed_out, watermark=batch.watermark, ingest_ns=batch.ingest_ns)))
            self._timeouts = []
        if self._dead:
            letters = dead_letter_frame(self.label, [r for r, _ in self._dead], [p for _, p in self._dead])
            outputs.append((DEAD, Batch(letters, watermark=batch.watermark, ingest_ns=batch.ingest_ns)))
            self._dead = []
        return outputs

    def _accept(self, frame: pl.DataFrame, batch: Batch, outputs: list[Output]) -> pl.Series:
        """Buffer the batch's records; late ones (and ones without a usable time) go out."""
        if WM_COL not in frame.columns:
            frame = frame.with_columns(pl.lit(self.wm, pl.Int64).alias(WM_COL))
        pre = frame.get_column(WM_COL)
        work, bad, reasons = self.input.conform(frame)
        if bad is not None:
            outputs.append(self.dead(reasons, payloads_of(frame.filter(bad)), batch))
        if self.time_col not in work.columns:
            msg = f"{self.label}: the input has no time column {self.time_col!r} (columns: {', '.join(work.columns)})"
            raise FlowError(msg)
        nulls = work.get_column(self.time_col).is_null()
        if nulls.any():
            reason = f"record has no event time (column '{self.time_col}' is null)"
            outputs.append(self.dead(reason, payloads_of(work.filter(nulls)), batch))
            work = work.filter(~nulls)
        if not work.height:
            return pre
        if self.ttype is None:
            self.ttype = time_type_of(work.schema[self.time_col], column=self.time_col, where=self.label)
            self._resolve()
        work = work.with_columns(
            pl.col(self.time_col).cast(pl.Int64).alias(_T),
            pl.int_range(self.arrivals, self.arrivals + work.height, dtype=pl.Int64).alias(_ARRIVAL),
        )
        self.arrivals += work.height
        late = work.get_column(_T) < work.get_column(WM_COL)
        if late.any():
            outputs.append(
                (
                    LATE,
                    Batch(work.filter(late).drop(_T, _ARRIVAL), watermark=batch.watermark, ingest_ns=batch.ingest_ns),
                )
            )
            work = work.filter(~late)
        work = work.drop(WM_COL)
        if self.buffer is None or not self.buffer.height:
            self.buffer = work
        else:
            self.buffer = pl.concat([self.buffer, work], how="diagonal_relaxed")
        return pre

    def _release(self, hi: int) -> None:
        """Feed the buffered rows with times up to ``hi`` to the matcher, in time order, with the
        ``within`` timers due before each."""
        buffer = self.buffer
        if buffer is not None and buffer.height:
            ready = buffer.get_column(_T) <= hi
            if ready.any():
                rows = buffer.filter(ready).sort(_T, _ARRIVAL)
                self.buffer = buffer.filter(~ready)
                self._feed(rows)
        self._fire(hi)

    def _feed(self, rows: pl.DataFrame) -> None:
        program = self.program
        flags = [expr.fill_null(False).cast(pl.Boolean).alias(f"__cep_c{i}") for i, expr in enumerate(program.exprs)]
        names = [f"__cep_c{i}" for i in range(len(flags))]
        rows = rows.with_columns(flags) if flags else rows
        if program.start_flags is None:
            start = pl.lit(True)
        elif program.start_flags:
            start = pl.any_horizontal([pl.col(names[i]) for i in program.start_flags])
        else:
            start = pl.lit(False)
        rows = rows.with_columns(start.alias("__cep_start"))
        if not program.python:
            rows = self._relevant(rows, names)
        if not rows.height:
            return
        times = rows.get_column(_T).to_list()
        starts = rows.get_column("__cep_start").to_list()
        flag_rows: list[tuple[bool, ...]] = (
            list(zip(*(rows.get_column(n).to_list() for n in names), strict=True)) if names else [()] * rows.height
        )
        user = rows.drop(_T, _ARRIVAL, "__cep_start", *names)
        records, _ = frame_to_rows(user)
        key_of = key_getter(self.keys, user.schema)
        timers = self.keyed.event_timers
        within = self.matcher.within
        live, cells, matcher = self.live, self.keyed.cells, self.matcher
        due = timers.next_time()
        for record, t, fl, can_start in zip(records, times, flag_rows, starts, strict=True):
            if due is not None and due <= t:
                self._fire(t)
                due = timers.next_time()
            key = key_of(record)
            if key in live:
                ks = cells(key)[_STATE]
            elif can_start:
                ks = KeyState()
            else:
                continue
            self._trigger = t
            if matcher.row(key, ks, record, t, fl, can_start) and within is not None:
                timers.register(t + within, key)
                if due is None or t + within < due:
                    due = t + within
            self._keep(key, ks)

    def _relevant(self, rows: pl.DataFrame, names: list[str]) -> pl.DataFrame:
        """The rows that can change something (exact, see the module's docstring)."""
        some = pl.any_horizontal([pl.col(n) for n in names]) if names else pl.lit(False)
        keys = self.keys
        base = some if self.program.relaxed else pl.col("__cep_start")
        after_some = some.shift(1).over(keys).fill_null(False)
        keep = base | after_some
        if self.live:
            keep = keep | (pl.struct(keys).is_first_distinct() & self._is_live(rows))
        return rows.filter(keep)

    def _is_live(self, rows: pl.DataFrame) -> pl.Expr:
        keys = self.keys
        if len(keys) == 1:
            values = pl.Series(list(self.live), dtype=rows.schema[keys[0]], strict=False)
            return pl.col(keys[0]).is_in(values)
        live = pl.DataFrame(list(self.live), schema={k: rows.schema[k] for k in keys}, orient="row")
        marked = rows.select(keys).join(live.with_columns(pl.lit(True).alias("__live")), on=keys, how="left")
        return pl.lit(marked.get_column("__live").fill_null(False))

    def _keep(self, key: Any, ks: KeyState) -> None:
        live = self.live
        if ks.attempts:
            if key not in live:
                self.keyed.cells(key)[_STATE] = ks
                live.add(key)
        elif key in live:
            self.keyed.cells(key).clear()
            live.discard(key)

    def _fire(self, upto: int) -> None:
        timers = self.keyed.event_timers
        cells, live, matcher = self.keyed.cells, self.live, self.matcher
        for at, key in timers.due(upto):
            if key not in live:
                continue
            ks = cells(key)[_STATE]
            self._trigger = at
            matcher.timeout(key, ks, at)
            self._keep(key, ks)

    def _finish(self) -> None:
        """End of input: every row has been released; close what is still open."""
        self.finished = True
        self._trigger = MAX_WM
        for key in list(self.live):
            ks = self.keyed.cells(key)[_STATE]
            self.matcher.finish(key, ks)
            self._keep(key, ks)

    # -- output --------------------------------------------------------------------------------

    def _frame(self, found: list[tuple[Path, int]], pre: pl.Series | None, lo: int) -> pl.DataFrame:
        """Matches (or partial matches) as rows: keys, match_start, match_end, a list of structs
        per step, the measures; each with the watermark before what made it final."""
        if not found:
            return pl.DataFrame()
        schema = pl.Schema([(n, t) for n, t in self.input.types.items() if n in self.input.columns])
        for name in self.input.columns:
            if name not in schema:
                schema[name] = pl.Null()
        struct = pl.Struct(schema)
        names = self.names
        data: dict[str, list[Any]] = {k: [] for k in self.keys}
        starts, ends, triggers = [], [], []
        steps: list[list[list[dict[str, Any]]]] = [[] for _ in names]
        for path, trigger in found:
            rows = path_rows(path)
            first = rows[0][3]
            for k in self.keys:
                data[k].append(first.get(k))
            starts.append(rows[0][2])
            ends.append(rows[-1][2])
            triggers.append(trigger)
            per_step: list[list[dict[str, Any]]] = [[] for _ in names]
            for step, _, _, row in rows:
                per_step[step].append(row)
            for i, taken in enumerate(per_step):
                steps[i].append(taken)
        assert self.ttype is not None
        columns = [pl.Series(k, data[k], dtype=schema.get(k), strict=False) for k in self.keys]
        columns += [
            pl.Series("match_start", starts, dtype=pl.Int64).cast(self.ttype.dtype),
            pl.Series("match_end", ends, dtype=pl.Int64).cast(self.ttype.dtype),
        ]
        columns += [pl.Series(name, steps[i], dtype=pl.List(struct), strict=False) for i, name in enumerate(names)]
        out = pl.DataFrame(columns)
        if self.measures:
            out = out.with_columns(**self.measures)
        return out.with_columns(self._watermarks(pl.Series(_TRIGGER, triggers, dtype=pl.Int64), pre, lo))

    @staticmethod
    def _watermarks(triggers: pl.Series, pre: pl.Series | None, lo: int) -> pl.Series:
        """Each output's watermark: the one that held before the watermark reached its trigger."""
        if pre is None or not len(pre):
            return pl.Series(WM_COL, [lo] * len(triggers), dtype=pl.Int64)
        positions = pre.search_sorted(triggers, side="left")
        before = pre.shift(1, fill_value=lo).append(pre.tail(1))
        return before.gather(positions).clip(upper_bound=triggers).alias(WM_COL)

    # -- checkpoints ---------------------------------------------------------------------------

    @override
    def signature(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "keys": self.keys,
            "time": self.time_col,
            "pattern": repr(self.pattern),
            "after_match": self.after_match,
        }

    @override
    def close(self) -> None:
        self.keyed.close()

    @override
    def snapshot(self, files: SharedFiles) -> State:
        frames = {"buffer": self.buffer} if self.buffer is not None and self.buffer.height else {}
        live: dict[int, list[Any]] = {}
        for key in self.live:
            live.setdefault(key_group(key), []).append(key)
        return frames, {
            **self.keyed.snapshot(files),
            "live": live,
            "wm": self.wm,
            "arrivals": self.arrivals,
            "finished": self.finished,
            "time_type": self.ttype,
            "column_types": self.input.snapshot(),
        }

    @override
    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        self.keyed.restore(objects, files)
        self.live = {key for part in objects["live"].values() for key in part}
        self.buffer = frames.get("buffer")
        self.wm = objects["wm"]
        self.arrivals = objects["arrivals"]
        self.finished = objects["finished"]
        if self.ttype is None:
            self.ttype = objects["time_type"]
        self._resolve()
        self.input.restore(objects["column_types"])
