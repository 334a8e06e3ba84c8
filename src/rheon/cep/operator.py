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
from operator import itemgetter
from typing import Any

import numpy as np
import polars as pl
from typing_extensions import override

from rheon.cep.lockstep import Carried, Found, Left, LockStep, Plan, eligible
from rheon.cep.nfa import Attempt, KeyState, Matcher, Path, compile_pattern
from rheon.cep.pattern import Pattern
from rheon.core.batch import MAX_WM, MIN_WM, WM_COL, Batch
from rheon.core.collector import no_gc
from rheon.core.columns import ColumnTypes
from rheon.core.deadletters import dead_letter_frame, payload_of, payloads_of
from rheon.core.errors import FlowError
from rheon.core.eventtime import TimeType, time_type_of
from rheon.core.metrics import StateSize
from rheon.operators._keys import key_getter
from rheon.operators._rows import frame_to_rows
from rheon.operators.base import DEAD, LATE, MAIN, Operator, Output, State
from rheon.operators.ordered import late_behind_frontier, watermarks_before
from rheon.operators.packed import Packing
from rheon.state.backends import KeyedStateBackend
from rheon.state.keyed import key_group
from rheon.state.service import KeyedService
from rheon.state.shared import SharedFiles

__all__ = ["TIMED_OUT", "MatchOperator", "parse_after_match"]

TIMED_OUT = "timed_out"
_T = "__cep_t"  # event time in ticks
_STATE = "m"
_START = "__cep_start"  # the row can be a match's first row
_FIRST = "__cep_first"  # the key's first row in this release
_NT = "__cep_nt"  # the row can be taken without ending a thread
_LIVE = "__cep_live"  # the key has open attempts from earlier rows
_USEFUL = "__cep_useful"  # a start row whose attempt can outlive the next row
_IDX = "__cep_idx"  # a row's position in the released rows
_NO_KEY = object()
_G = "__cep_g"  # a key's place in the lock-step plan
_SEQ = "__cep_seq"  # carry: rows the key has seen
_BITS = "__cep_bits"  # carry: a bit per open attempt's depth
_CT = "__cep_t"  # carry: time of the row j back (column per j)
_CR = "__cep_r"  # carry: that row's fields (a column per j and field)


def _any_of(names: list[str], flags: tuple[int, ...] | None) -> pl.Expr:
    if flags is None:
        return pl.lit(True)
    if not flags:
        return pl.lit(False)
    return pl.any_horizontal([pl.col(names[i]) for i in flags])


def _live_before(seed_starts: pl.Expr) -> pl.Expr:
    """Whether a key may have an open attempt before each row (rows sorted by key, then time),
    for a pattern whose steps are all strict: an attempt lives on from a start row while the
    rows after it can be taken without ending it (``_NT``); the key's first row sees the
    state's attempts (``_LIVE``)."""
    first, nt = pl.col(_FIRST), pl.col(_NT)
    seed = (seed_starts | (first & pl.col(_LIVE) & nt)).cast(pl.Int64)
    total = seed.cum_sum()
    segment_start = first | ~nt
    base = pl.when(segment_start).then(total - seed).otherwise(None).forward_fill()
    after = (total - base) > 0
    return pl.when(first).then(pl.col(_LIVE)).otherwise(after.shift(1)).fill_null(False)


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
        self.lockstep = LockStep(self.matcher) if eligible(self.program, skip[0]) else None
        self.measures = dict(measures or {})
        self.ttype = time_type
        self.keyed = KeyedService(backend)
        self.input = ColumnTypes(None, where=self.label, passthrough=(WM_COL,))
        self.live: set[Any] = set()
        self.carry: pl.DataFrame | None = None
        """Lock-step patterns: the open attempts of each key that has some, as a row: the key, the
        rows it has seen, a bit per open depth, and the rows those attempts took (their times and
        fields), at most ``steps - 1`` per key. Row matcher patterns keep a ``KeyState`` per key in
        the keyed state instead."""
        self.buffer: pl.DataFrame | None = None
        self.wm = MIN_WM
        self.frontier = MIN_WM
        """The latest event time released to the matcher: an event behind it is late."""
        self.finished = False
        self._resolve()
        self._matches: list[tuple[Path, int]] = []
        self._found: list[tuple[pl.DataFrame, Found]] = []  # matches from the lock-step path
        self._timeouts: list[tuple[Path, int]] = []
        self._dead: list[tuple[str, str]] = []

    def _resolve(self) -> None:
        if self.ttype is not None and self.program.within_ms is not None:
            self.matcher.within = self.ttype.ticks(self.program.within_ms)

    # -- matcher callbacks ---------------------------------------------------------------------

    def _on_match(self, key: Any, attempt: Attempt, path: Path) -> None:
        self._matches.append((path, self.matcher.now))

    def _on_timeout(self, key: Any, attempt: Attempt) -> None:
        self._timeouts.append((attempt.partial, self.matcher.now))

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
            if self._found:
                main = self._frame_found(self._found, self._matches, pre, lo)
            else:
                main = self._frame(self._matches, pre, lo)
            outputs[:0] = [(MAIN, batch.with_frame(main))]
            self._matches, self._found = [], []
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
        work = work.with_columns(pl.col(self.time_col).cast(pl.Int64).alias(_T))
        late = pl.Series(self._behind(work))
        if late.any():
            outputs.append(
                (
                    LATE,
                    Batch(work.filter(late).drop(_T), watermark=batch.watermark, ingest_ns=batch.ingest_ns),
                )
            )
            work = work.filter(~late)
        work = work.drop(WM_COL)
        if self.buffer is None or not self.buffer.height:
            self.buffer = work
        else:
            self.buffer = pl.concat([self.buffer, work], how="diagonal_relaxed")
        return pre

    def _behind(self, work: pl.DataFrame) -> np.ndarray:
        """Which records are late: a later event had entered the matcher when they arrived.

        Rows enter the matcher when the watermark reaches their time, so this is the watermark's
        test loosened to what order needs: a record behind the watermark still takes its place
        if no later event has been released yet (a window's results, whose time is their
        ``window_start``, come behind the watermark that closed them). Record ``i`` is late if
        its time is below ``frontier_i``, the latest time released before it arrived: the
        rows (buffered, or earlier in the batch) whose time the watermark had reached by then.
        Computed from the per-record watermarks, so it does not depend on batching.
        """
        pre = np.maximum.accumulate(work.get_column(WM_COL).to_numpy())
        buffered = self.buffer.get_column(_T).to_numpy() if self.buffer is not None and self.buffer.height else None
        return late_behind_frontier(work.get_column(_T).to_numpy(), pre, self.frontier, buffered)

    def _release(self, hi: int) -> None:
        """Feed the buffered rows with times up to ``hi`` to the matcher (the buffer is kept in
        arrival order, which breaks ties in time), then fire the ``within`` timers due."""
        buffer = self.buffer
        if buffer is not None and buffer.height:
            ready = buffer.get_column(_T) <= hi
            if ready.any():
                rows = buffer.filter(ready)
                self.buffer = buffer.filter(~ready)
                self.frontier = max(self.frontier, int(rows.get_column(_T).max()))  # type: ignore[arg-type]
                self._feed(rows)
        self._fire(hi)

    def _feed(self, rows: pl.DataFrame) -> None:
        """Run the matcher over released rows, key by key, each key's rows in time order.

        Keys are independent (a key's ``within`` expiries are checked before each of its rows),
        so grouping by key lets the vectorized part see each key's rows side by side.
        """
        program = self.program
        names = [f"__cep_c{i}" for i in range(len(program.exprs))]
        flags = [e.fill_null(False).cast(pl.Boolean).alias(n) for e, n in zip(program.exprs, names, strict=True)]
        if program.start_flags is None:
            start = pl.lit(True)
        elif program.start_flags:
            start = pl.any_horizontal([pl.col(names[i]) for i in program.start_flags])
        else:
            start = pl.lit(False)
        rows = rows.with_columns(flags).with_columns(start.alias(_START))
        order, first = self._order(rows)
        if not program.python:
            order = order[self._candidates(rows, names, order, first)]
        # conditions and relevance on narrow columns; only the rows kept are gathered whole
        narrow = rows.select(*self.keys, _T, _START, *names)[order].with_columns(pl.Series(_IDX, order))
        if not program.python and not program.relaxed:
            narrow = self._relevant(narrow, names)
        if not narrow.height:
            return
        rows = rows[narrow.get_column(_IDX)]
        user = rows.drop(_T, _START, *names)
        if self.lockstep is not None:
            self._lockstep(narrow, names, first, user)
            return
        key_of = key_getter(self.keys, user.schema)
        times = narrow.get_column(_T).to_list()
        starts = narrow.get_column(_START).to_list()
        flag_rows: list[tuple[bool, ...]] = (
            list(zip(*(narrow.get_column(n).to_list() for n in names), strict=True)) if names else [()] * narrow.height
        )
        records, _ = frame_to_rows(user)
        live, cells, matcher = self.live, self.keyed.cells, self.matcher
        within = matcher.within
        feed = matcher._row_strict_singles if matcher.strict_singles else matcher.row
        touched: list[tuple[Any, KeyState]] = []
        last_key: Any = _NO_KEY
        ks: KeyState | None = None
        for record, t, fl, can_start in zip(records, times, flag_rows, starts, strict=True):
            key = key_of(record)
            if key != last_key or key is _NO_KEY:
                if ks is not None:
                    self._keep(last_key, ks)
                last_key = key
                ks = cells(key)[_STATE] if key in live else None
                if ks is not None:
                    touched.append((key, ks))
            if ks is None:
                if not can_start:
                    continue
                ks = KeyState()
                touched.append((key, ks))
            elif within is not None and ks.attempts:
                matcher.expire(key, ks, t)
            matcher.now = t
            feed(key, ks, record, t, fl, can_start)
        if ks is not None:
            self._keep(last_key, ks)
        if within is not None:
            register = self.keyed.event_timers.register
            for key, ks in touched:
                due = ks.next_expiry(within)
                if due is not None:
                    register(due, key)

    def _lockstep(self, narrow: pl.DataFrame, names: list[str], first: np.ndarray, user: pl.DataFrame) -> None:
        """Run the released rows (all of them, in :meth:`_order`'s order, ``first`` marking each
        key's first row) in lock step, the keys' open attempts read from and written back to
        :attr:`carry`."""
        assert self.lockstep is not None
        plan = Plan(first)
        at = pl.Series(plan.order)
        narrow, user = narrow[at], user[at]
        records, _ = frame_to_rows(user)
        heads = narrow.select(self.keys).head(len(plan.keys))  # key g's first row is at position g
        carried, carried_frame = self._carried(heads)
        found, left = self.lockstep.run(
            plan,
            records,
            narrow.get_column(_T).to_numpy(),
            narrow.get_column(_START).to_numpy(),
            [narrow.get_column(n).to_numpy() for n in names],
            carried,
            self._on_error,
        )
        self._carry_on(heads, user, found, left, carried_frame)
        if len(found):
            self._found.append((user, found))

    def _carried(self, heads: pl.DataFrame) -> tuple[Carried, pl.DataFrame | None]:
        """What the keys of ``heads`` bring from :attr:`carry`: their open attempts, with the
        rows those took as dicts (and as a frame, in the same order)."""
        assert self.lockstep is not None
        carry = self.carry
        if carry is None or not carry.height:
            return Carried.none(heads.height), None
        joined = heads.with_row_index(_G).join(carry, on=self.keys, how="inner", nulls_equal=True)
        g = joined.get_column(_G).cast(pl.Int64).to_numpy()
        seq = np.zeros(heads.height, dtype=np.int64)
        bits = np.zeros(heads.height, dtype=np.int64)
        seq[g] = joined.get_column(_SEQ).to_numpy()
        bits[g] = joined.get_column(_BITS).to_numpy()
        frames: list[pl.DataFrame] = []
        owners: list[np.ndarray] = []
        backs: list[np.ndarray] = []
        times: list[np.ndarray] = []
        for j in range(1, self.lockstep.L):
            when = joined.get_column(f"{_CT}{j}")
            has = when.is_not_null()
            prefix = f"{_CR}{j}_"
            part = joined.filter(has)
            frames.append(part.select(pl.col(c).alias(c[len(prefix) :]) for c in carry.columns if c.startswith(prefix)))
            owners.append(g[has.to_numpy()])
            backs.append(np.full(part.height, j, dtype=np.int64))
            times.append(when.filter(has).to_numpy())
        frame = pl.concat(frames, how="diagonal_relaxed")
        rows, _ = frame_to_rows(frame)
        return Carried(seq, bits, rows, np.concatenate(times), np.concatenate(owners), np.concatenate(backs)), frame

    def _carry_on(
        self, heads: pl.DataFrame, user: pl.DataFrame, found: Found, left: Left, carried: pl.DataFrame | None
    ) -> None:
        """:attr:`carry` after a batch: the keys of ``heads`` replaced by what they leave open."""
        parts = [user]
        if carried is not None:
            parts.append(carried)
        tail_rows = found.extra[carried.height if carried is not None else 0 :]
        if tail_rows:  # rows the row matcher took, for the keys it finished
            parts.append(pl.DataFrame(tail_rows, schema=user.schema, strict=False))
        rows = pl.concat(parts, how="diagonal_relaxed") if len(parts) > 1 else user
        all_times = found.all_times()
        columns: list[pl.Series] = [
            pl.Series(_SEQ, left.seq, dtype=pl.Int64),
            pl.Series(_BITS, left.bits, dtype=pl.Int64),
        ]
        for j, ref in enumerate(left.refs, 1):
            taken = ref >= 0
            index = pl.Series(np.where(taken, ref, 0)).set(pl.Series(~taken), None)
            when = pl.Series(f"{_CT}{j}", all_times[np.where(taken, ref, 0)], dtype=pl.Int64)
            columns.append(when.set(pl.Series(~taken), None))
            columns += [c.alias(f"{_CR}{j}_{c.name}") for c in rows.select(pl.all().gather(index)).get_columns()]
        new = pl.concat([heads[pl.Series(left.keys)], pl.DataFrame(columns)], how="horizontal")
        if self.carry is not None and self.carry.height:
            kept = self.carry.join(heads, on=self.keys, how="anti", nulls_equal=True)
            new = pl.concat([kept, new], how="diagonal_relaxed")
        self.carry = new

    def _order(self, rows: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The positions of ``rows`` in (key, time, arrival) order, and which of them starts a
        key (its key differs from the one before).

        With integer keys (the usual card, device or user ids) that is one sort of an Int64
        packing the keys, the time and the position; otherwise two stable sorts.
        """
        keys = self.keys
        narrow = rows.select(*keys, _T).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(_IDX))
        packing = Packing.of(narrow, [*keys, _T, _IDX])
        if packing is not None:
            packed = narrow.select(packing.expr()).to_series().sort().to_numpy()
            key_part = packed // packing.strides[len(keys) - 1]
            first = np.empty(len(packed), dtype=bool)
            first[:1] = True
            np.not_equal(key_part[1:], key_part[:-1], out=first[1:])
            return packed % packing.ranges[-1], first
        narrow = narrow.sort(_T, maintain_order=True).sort(keys, maintain_order=True)
        same = pl.all_horizontal([pl.col(k).eq_missing(pl.col(k).shift(1)) for k in keys]).fill_null(False)
        return narrow.get_column(_IDX).to_numpy(), narrow.select(~same).to_series().to_numpy()

    def _candidates(self, rows: pl.DataFrame, names: list[str], order: np.ndarray, first: np.ndarray) -> np.ndarray:
        """Which rows (in ``order``) may change something, from two flags per row: a cheap
        superset of what :meth:`_relevant` keeps, or for a relaxed pattern exactly what matters.

        A row matters only if it can start an attempt, or an attempt can be open before it: the
        key's row before it could start one or be taken without ending one, or it is the first
        row of a key with open attempts. Rows left out cannot hold an attempt open, so what is
        computed on the rows kept (whose neighbours are then the kept rows) is unchanged.
        """
        program = self.program
        if program.relaxed:
            opens = keeps = rows.select(pl.any_horizontal([pl.col(n) for n in names]) if names else pl.lit(False))
        else:
            opens = rows.select(pl.col(_START))
            keeps = rows.select(pl.col(_START) | _any_of(names, program.continuing))
        o = opens.to_series().to_numpy()[order]
        k = o if keeps is opens else keeps.to_series().to_numpy()[order]
        wanted: np.ndarray = o.copy()
        wanted[1:] |= k[:-1] & ~first[1:]
        if self.live:
            heads = np.flatnonzero(first)
            wanted[heads] |= self._is_live(rows.select(self.keys)[order[heads]])
        return wanted

    def _relevant(self, rows: pl.DataFrame, names: list[str]) -> pl.DataFrame:
        """The rows that can change something (``rows`` sorted by key, then time; a strict
        pattern): exact, see the module's docstring."""
        program = self.program
        keys = self.keys
        same = pl.all_horizontal([pl.col(k).eq_missing(pl.col(k).shift(1)) for k in keys]).fill_null(False)
        first = ~same
        live_key = pl.lit(pl.Series(self._is_live(rows))) if self.live else pl.lit(False)
        start = pl.col(_START)
        nt = _any_of(names, program.continuing)
        rows = rows.with_columns(first.alias(_FIRST), nt.alias(_NT), live_key.alias(_LIVE))
        before = _live_before(pl.col(_START))
        if program.min_rows >= 2:
            # A start row is dropped when its attempt dies silently and no attempt kept lives at
            # it; "kept" shrinks as starts are dropped, so the check runs twice (each round is
            # sound on its own: a kept attempt's rows are all kept).
            dies = self._dies_silently(names)
            rows = rows.with_columns((start & ~(dies & ~before)).alias(_USEFUL))
            rows = rows.with_columns((start & ~(dies & ~_live_before(pl.col(_USEFUL)))).alias(_USEFUL))
            before = _live_before(pl.col(_USEFUL))
            return rows.filter(pl.col(_USEFUL) | before).drop(_FIRST, _NT, _LIVE, _USEFUL)
        return rows.filter(start | before).drop(_FIRST, _NT, _LIVE)

    def _dies_silently(self, names: list[str]) -> pl.Expr:
        """Start rows whose attempt certainly ends without a match or a time-out (a strict
        pattern of at least two rows): the key's next row (before ``within`` runs out) cannot be
        the match's second row, or the first step needs ``n`` rows and the run of rows that
        satisfy it ends too soon."""
        program, within = self.program, self.matcher.within
        t, start = pl.col(_T), pl.col(_START)
        same_next = pl.col(_FIRST).shift(-1).fill_null(True).not_()
        in_time = same_next if within is None else same_next & (t.shift(-1) < t + within).fill_null(False)
        dies = start & in_time & ~_any_of(names, program.second).shift(-1).fill_null(False)
        first_step = program.steps[0]
        if first_step.min >= 2 and isinstance(first_step.cond, int) and first_step.cond >= 0:
            ok = pl.col(names[first_step.cond])
            idx = pl.int_range(pl.len(), dtype=pl.Int64)
            run_ends = (pl.col(_FIRST) | ~ok).shift(-1).fill_null(True)  # the next row starts another run
            end = pl.when(run_ends).then(idx).otherwise(None).backward_fill()
            breaker_t = pl.when(run_ends).then(t.shift(-1)).otherwise(None).backward_fill()
            broken = pl.when(run_ends).then(same_next).otherwise(None).backward_fill()
            if within is not None:
                broken = broken & (breaker_t < t + within).fill_null(False)
            dies = dies | (start & ok & (end - idx + 1 < first_step.min) & broken)
        return dies

    def _is_live(self, rows: pl.DataFrame) -> np.ndarray:
        """Which rows' keys have open attempts."""
        keys = self.keys
        if len(keys) == 1:
            values = pl.Series(list(self.live), dtype=rows.schema[keys[0]], strict=False)
            return rows.select(pl.col(keys[0]).is_in(values.implode())).to_series().to_numpy()
        live = pl.DataFrame(list(self.live), schema={k: rows.schema[k] for k in keys}, orient="row")
        marked = rows.select(keys).join(live.with_columns(pl.lit(True).alias("__live")), on=keys, how="left")
        return marked.get_column("__live").fill_null(False).to_numpy()

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
        within = matcher.within
        for at, key in timers.due(upto):
            if key not in live:
                continue
            ks = cells(key)[_STATE]
            matcher.now = at
            matcher.timeout(key, ks, at)
            self._keep(key, ks)
            due = ks.next_expiry(within) if within is not None else None
            if due is not None:
                timers.register(due, key)

    def _finish(self) -> None:
        """End of input: every row has been released; close what is still open."""
        self.finished = True
        self.matcher.now = MAX_WM
        self.carry = None  # single-row steps, no within: an attempt still open ends without a match
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
        found = sorted(found, key=itemgetter(1))  # keys were handled one by one: back in time order
        schema = self._schema()
        steps = len(self.names)
        heads: list[dict[str, Any]] = []
        starts: list[int] = []
        ends: list[int] = []
        triggers: list[int] = []
        flat: list[dict[str, Any]] = []
        which: list[int] = []  # match * steps + step of each row in flat
        for m, (found_path, trigger) in enumerate(found):
            path: Any = found_path  # a match's path is never empty
            triggers.append(trigger)
            ends.append(path[3])
            base = m * steps
            while True:  # the path runs from the last row back to the first
                flat.append(path[4])
                which.append(base + path[1])
                if path[0] is None:
                    break
                path = path[0]
            starts.append(path[3])
            heads.append(path[4])
        flat.reverse()  # rows of each step in order
        which.reverse()
        data = {k: [head.get(k) for head in heads] for k in self.keys}
        assert self.ttype is not None
        columns = [pl.Series(k, data[k], dtype=schema.get(k), strict=False) for k in self.keys]
        columns += [
            pl.Series("match_start", starts, dtype=pl.Int64).cast(self.ttype.dtype),
            pl.Series("match_end", ends, dtype=pl.Int64).cast(self.ttype.dtype),
        ]
        columns += self._step_lists(flat, which, len(found), schema)
        out = pl.DataFrame(columns)
        if self.measures:
            out = out.with_columns(**self.measures)
        wm = watermarks_before(np.asarray(triggers, dtype=np.int64), None if pre is None else pre.to_numpy(), lo)
        return out.with_columns(pl.Series(WM_COL, wm, dtype=pl.Int64))

    def _schema(self) -> pl.Schema:
        schema = pl.Schema([(n, t) for n, t in self.input.types.items() if n in self.input.columns])
        for name in self.input.columns:
            if name not in schema:
                schema[name] = pl.Null()
        return schema

    def _frame_found(
        self, parts: list[tuple[pl.DataFrame, Found]], paths: list[tuple[Path, int]], pre: pl.Series | None, lo: int
    ) -> pl.DataFrame:
        """:meth:`_frame` for matches found in lock step (one row per step), gathered from the
        batch's rows by position; ``paths`` (matches the row matcher found after them, one row
        per step too) follow."""
        if paths:
            rest = Found(0, np.empty(0, dtype=np.int64))
            for i, (path, when) in enumerate(paths):
                taken: list[int] = []
                node: Path = path
                while node is not None:
                    taken.append(rest.add_row(node[4], node[3]))
                    node = node[0]
                rest.trigger.append(np.array([when], dtype=np.int64))
                rest.order.append(np.array([i], dtype=np.int64))
                rest.refs.append([np.array([r], dtype=np.int64) for r in reversed(taken)])
            rest.offset = 1 << 62  # after the lock-step matches of the same time
            parts = [*parts, (pl.DataFrame(), rest)]
        schema = self._schema()
        assert self.ttype is not None
        # every part's rows in one frame (the parts' batch rows, then the rows from their
        # states), its references moved to where its rows are in it
        parts = [(user, found) for user, found in parts if len(found)]
        if not parts:
            return pl.DataFrame()
        height = sum(user.height for user, _ in parts)
        frames: list[pl.DataFrame] = []
        extra: list[dict[str, Any]] = []
        extra_times: list[np.ndarray] = []
        triggers: list[np.ndarray] = []
        orders: list[np.ndarray] = []
        moved: list[list[np.ndarray]] = []
        base = 0
        for user, found in parts:
            trigger, order, refs = found.columns()
            triggers.append(trigger)
            orders.append(order)
            shift = height + len(extra) - found.n  # a row of found.extra, from its state
            moved.append([np.where(r < found.n, r + base, r + shift) for r in refs])
            frames.append(
                user.select(
                    pl.col(n).cast(t, strict=False) if n in user.columns else pl.lit(None, dtype=t).alias(n)
                    for n, t in schema.items()
                )
            )
            extra += found.extra
            extra_times.append(found.all_times())
            base += user.height
        if extra:
            frames.append(pl.DataFrame(extra, schema=schema, strict=False))
        rows = pl.concat(frames) if len(frames) > 1 else frames[0]
        all_times = [t[: f.n] for t, (_, f) in zip(extra_times, parts, strict=True)]
        all_times += [t[f.n :] for t, (_, f) in zip(extra_times, parts, strict=True)]
        times = np.concatenate(all_times)
        refs = [np.concatenate([m[step] for m in moved]) for step in range(len(self.names))]
        trigger = np.concatenate(triggers)
        if len(parts) > 1:
            by_time = np.lexsort((np.concatenate(orders), trigger))
            trigger, refs = trigger[by_time], [r[by_time] for r in refs]
        events = rows.select(pl.struct(schema.names()).alias("e")).to_series()
        first = pl.Series(refs[0])
        columns = [rows.get_column(k).gather(first) for k in self.keys]
        columns += [
            pl.Series("match_start", times[refs[0]], dtype=pl.Int64).cast(self.ttype.dtype),
            pl.Series("match_end", times[refs[-1]], dtype=pl.Int64).cast(self.ttype.dtype),
        ]
        lists = pl.List(events.dtype)
        columns += [
            events.gather(pl.Series(r)).reshape((-1, 1)).cast(lists).alias(name)
            for r, name in zip(refs, self.names, strict=True)
        ]
        out = pl.DataFrame(columns)
        if self.measures:
            out = out.with_columns(**self.measures)
        wm = watermarks_before(trigger, None if pre is None else pre.to_numpy(), lo)
        return out.with_columns(pl.Series(WM_COL, wm, dtype=pl.Int64))

    def _step_lists(self, flat: list[dict[str, Any]], which: list[int], n: int, schema: pl.Schema) -> list[pl.Series]:
        """One list-of-structs column per step from the matched rows (``which``: match * steps +
        step of each), built as one frame and grouped, not struct by struct."""
        steps = len(self.names)
        events = pl.DataFrame(flat, schema=schema, strict=False).select(pl.struct(schema.names()).alias("e"))
        cells = events.with_columns(pl.Series("__cell", which, dtype=pl.Int64))
        grouped = cells.group_by("__cell").agg(pl.col("e"))
        every = pl.DataFrame({"__cell": pl.int_range(0, n * steps, dtype=pl.Int64, eager=True)})
        lists = every.join(grouped, on="__cell", how="left", maintain_order="left").get_column("e")
        lists = lists.fill_null(pl.lit([], dtype=lists.dtype))
        return [lists.gather_every(steps, offset=i).alias(name) for i, name in enumerate(self.names)]

    @override
    def state_table(self) -> pl.DataFrame | None:
        """A lock-step pattern's open attempts: one row per key that has some (``seq``: rows the
        key has seen, ``open``: a bit per open attempt's depth, then the time and fields of each
        row they took, ``j`` rows back); else the keyed state."""
        if self.lockstep is None:
            return super().state_table()
        if self.carry is None:
            return pl.DataFrame()
        names = {
            c: c.replace(_CT, "t_back_").replace(_CR, "back_") for c in self.carry.columns if c.startswith(_CR[:-1])
        }
        return self.carry.rename({**names, _SEQ: "seq", _BITS: "open"})

    @override
    def state_size(self) -> StateSize | None:
        if self.lockstep is None:
            return super().state_size()
        carry = self.carry
        return StateSize(0, 0) if carry is None else StateSize(carry.height, int(carry.estimated_size()))

    # -- checkpoints ---------------------------------------------------------------------------

    @override
    def signature(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "keys": self.keys,
            "time": self.time_col,
            "pattern": repr(self.pattern),
            "after_match": self.after_match,
            "state": "columns" if self.lockstep is not None else "per key",
        }

    @override
    def close(self) -> None:
        self.keyed.close()

    @override
    def snapshot(self, files: SharedFiles) -> State:
        frames = {"buffer": self.buffer} if self.buffer is not None and self.buffer.height else {}
        if self.carry is not None and self.carry.height:
            frames["carry"] = self.carry
        live: dict[int, list[Any]] = {}
        for key in self.live:
            live.setdefault(key_group(key), []).append(key)
        return frames, {
            **self.keyed.snapshot(files),
            "live": live,
            "wm": self.wm,
            "frontier": self.frontier,
            "finished": self.finished,
            "time_type": self.ttype,
            "column_types": self.input.snapshot(),
        }

    @override
    def restore(self, frames: dict[str, pl.DataFrame], objects: dict[str, Any], files: SharedFiles) -> None:
        self.keyed.restore(objects, files)
        self.live = {key for part in objects["live"].values() for key in part}
        self.buffer = frames.get("buffer")
        self.carry = frames.get("carry")
        self.wm = objects["wm"]
        self.frontier = objects["frontier"]
        self.finished = objects["finished"]
        if self.ttype is None:
            self.ttype = objects["time_type"]
        self._resolve()
        self.input.restore(objects["column_types"])
