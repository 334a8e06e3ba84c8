"""The matcher: a pattern compiled to an NFA, run per key over rows in event-time order.

A *match attempt* starts at each row that can be a match's first row. It holds *threads*, the
ways the pattern can still match from there, in the preference order of ``MATCH_RECOGNIZE``
(greedy quantifiers and optional steps prefer taking a row; ``followed_by_any`` prefers the
earlier row). Each row advances every thread of every open attempt of its key. An attempt is
*resolved* when its most preferred thread completes (a match) or every thread dies (no match,
or cut short by ``within``: timed out). Attempts resolve in order of their first row, and the
after-match skip then drops the attempts whose first row the match skipped, which is the
``MATCH_RECOGNIZE`` procedure run on a stream. With ``after_match="no_skip"`` attempts are
independent and every complete thread is a match.

A thread is a tuple ``(state, step, count, not_next, not_followed_by, path)``:

* ``IN`` (step ``i``, ``count`` rows taken): the next row may continue step ``i``;
* ``WAIT`` (step ``j``): waiting for step ``j``'s first row;
* ``TAIL``: every step matched, trailing negations still to hold;
* ``DONE``: a complete match.

``not_next`` / ``not_followed_by`` are the negation conditions still in force; ``path`` is the
rows taken, a linked list ``(previous, step, seq, time, row)`` shared between forks. When no
condition is a Python function, two threads of one attempt in the same state have the same
future, so the less preferred one is dropped: the number of threads stays bounded by the
pattern's size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from rheon.cep.pattern import Pattern

__all__ = ["DONE", "IN", "TAIL", "WAIT", "Attempt", "KeyState", "Matcher", "Program", "compile_pattern"]

IN, WAIT, TAIL, DONE = 0, 1, 2, 3
STRICT, RELAXED, ANY = 0, 1, 2
_CONTIGUITY = {"strict": STRICT, "relaxed": RELAXED, "any": ANY}
_INF = 1 << 62

Row = dict[str, Any]
Path = tuple[Any, int, int, int, Row] | None
Thread = tuple[int, int, int, tuple[Any, ...], tuple[Any, ...], Path]
# A condition: an int ``i >= 0`` reads the row's i-th vectorized flag, -1 is "any event", else
# a Python function ``fn(event, match)``.
Cond = Any


@dataclass(frozen=True, eq=False)
class Negation:
    """A negation's Python condition and how many positive steps come before it (what it sees)."""

    fn: Callable[[Row, Any], Any]
    seen: int


@dataclass(frozen=True, eq=False)
class PStep:
    """A positive step, compiled."""

    name: str
    cond: Cond
    min: int
    max: int
    greedy: bool
    contiguity: int
    not_next: tuple[Cond, ...]
    """Negations before this step (from the step before it)."""
    not_followed_by: tuple[Cond, ...]


@dataclass(frozen=True, eq=False)
class Program:
    """A pattern compiled: positive steps, trailing negations, the expressions to evaluate."""

    steps: tuple[PStep, ...]
    trailing_not_next: tuple[Cond, ...]
    trailing_not_followed_by: tuple[Cond, ...]
    within_ms: int | None
    exprs: tuple[pl.Expr, ...]
    """The expression conditions, evaluated vectorized into flag ``i``."""
    python: bool
    """Whether some condition is a Python function (or "any event"): every row matters then."""
    start_flags: tuple[int, ...] | None
    """Flags of the steps a match can start with (``None``: any row may start one)."""
    relaxed: bool
    """Whether a thread can wait across rows that satisfy no condition."""
    continuing: tuple[int, ...] | None
    """Flags of the steps that can take a row after a match's first and stay open after it."""
    second: tuple[int, ...] | None
    """Flags of the steps that can take a match's second row."""
    min_rows: int
    """The fewest rows a match has."""

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]


def compile_pattern(pattern: Pattern) -> Program:
    """Compile ``pattern`` (already checked) into a :class:`Program`.

    Examples
    --------
    >>> import polars as pl
    >>> from rheon import cep
    >>> p = cep.begin("a", pl.col("x") == 1).not_next("n", pl.col("x") == 3).followed_by("b", pl.col("x") == 2)
    >>> prog = compile_pattern(p)
    >>> [(s.name, s.cond, s.contiguity, s.not_next) for s in prog.steps], prog.start_flags, prog.relaxed
    ([('a', 0, 0, ()), ('b', 2, 1, (1,))], (0,), True)
    """
    exprs: list[pl.Expr] = []
    python = False

    def cond_of(condition: Any) -> Cond:
        nonlocal python
        if condition is None:
            python = True
            return -1
        if isinstance(condition, pl.Expr):
            exprs.append(condition)
            return len(exprs) - 1
        python = True
        return condition

    steps: list[PStep] = []
    nn: list[Cond] = []
    nfb: list[Cond] = []
    for step in pattern.steps:
        cond = cond_of(step.condition)
        if step.kind != "positive" and callable(cond):
            cond = Negation(cond, len(steps))
        if step.kind == "not_next":
            nn.append(cond)
        elif step.kind == "not_followed_by":
            nfb.append(cond)
        else:
            steps.append(
                PStep(
                    step.name,
                    cond,
                    step.min,
                    _INF if step.max is None else step.max,
                    step.greedy,
                    _CONTIGUITY[step.contiguity] if steps else STRICT,
                    tuple(nn),
                    tuple(nfb),
                )
            )
            nn, nfb = [], []
    starts: list[int] | None = []
    for s in steps:
        if isinstance(s.cond, int) and s.cond >= 0 and starts is not None:
            starts.append(s.cond)
        else:
            starts = None
        if s.min > 0:
            break
    # a not_followed_by anywhere can reach the end of the pattern (the steps after it optional)
    relaxed = any(s.kind == "not_followed_by" for s in pattern.steps) or any(s.contiguity != STRICT for s in steps)
    last = len(steps) - 1
    trailing = bool(nn or nfb)
    continuing = _flags(s.cond for j, s in enumerate(steps) if (j or s.max > 1) and (s.max > 1 or j < last or trailing))
    second: list[Cond] = []
    for j0, s0 in enumerate(steps):
        if s0.max > 1:
            second.append(s0.cond)
        for s in steps[j0 + 1 :]:
            second.append(s.cond)
            if s.min:
                break
        if s0.min:
            break
    return Program(
        tuple(steps),
        tuple(nn),
        tuple(nfb),
        pattern.within_ms,
        tuple(exprs),
        python,
        None if starts is None else tuple(starts),
        relaxed,
        continuing,
        _flags(second),
        sum(s.min for s in steps),
    )


def _flags(conds: Any) -> tuple[int, ...] | None:
    """The flag numbers of expression conditions (``None`` if one is not an expression)."""
    out: list[int] = []
    for cond in conds:
        if not isinstance(cond, int) or cond < 0:
            return None
        out.append(cond)
    return tuple(dict.fromkeys(out))


class Attempt:
    """The threads of one match attempt (the rows from ``start`` on)."""

    __slots__ = ("expired", "partial", "result", "start", "start_t", "threads")

    def __init__(self, start: int, start_t: int, threads: list[Thread]) -> None:
        self.start = start
        self.start_t = start_t
        self.threads = threads
        self.expired = False
        """``within`` has run out (only a trailing ``not_next`` may still wait for its row)."""
        self.result: Path | None = None
        """The match (its path) once resolved with one."""
        self.partial: Path | None = None
        """The preferred partial match when cut short by ``within``."""

    def __getstate__(self) -> tuple[Any, ...]:
        return (self.start, self.start_t, self.threads, self.result, self.partial, self.expired)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.start, self.start_t, self.threads, self.result, self.partial, self.expired = state

    @property
    def resolved(self) -> bool:
        return not self.threads


class KeyState:
    """One key's matching state: rows seen and open attempts (in order of their first row)."""

    __slots__ = ("attempts", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.attempts: list[Attempt] = []

    def __getstate__(self) -> tuple[int, list[Attempt]]:
        return (self.seq, self.attempts)

    def __setstate__(self, state: tuple[int, list[Attempt]]) -> None:
        self.seq, self.attempts = state

    def next_expiry(self, within: int) -> int | None:
        """When ``within`` ends the oldest open attempt (``None`` if none is open)."""
        for attempt in self.attempts:
            if attempt.threads and not attempt.expired:
                return attempt.start_t + within
        return None


class MatchView(Mapping[str, list[Row]]):
    """What a Python condition sees as ``match``: each step's rows so far, read from the thread's
    path when asked for (most conditions look at one step), every step of the pattern up to the
    current one present (``[]`` when it has no row). ``steps`` maps those steps' names to their
    positions in the pattern.

    >>> m = MatchView(((None, 0, 1, 5, {"x": 1}), 1, 2, 6, {"x": 2}), {"a": 0, "b": 1, "c": 2})
    >>> m["a"], m["c"], dict(m)
    ([{'x': 1}], [], {'a': [{'x': 1}], 'b': [{'x': 2}], 'c': []})
    """

    __slots__ = ("_path", "_steps")

    def __init__(self, path: Path, steps: dict[str, int]) -> None:
        self._path = path
        self._steps = steps

    def __getitem__(self, name: str) -> list[Row]:
        step = self._steps[name]
        rows = []
        path = self._path
        while path is not None:
            if path[1] == step:
                rows.append(path[4])
            path = path[0]
        rows.reverse()
        return rows

    def __iter__(self) -> Iterator[str]:
        return iter(self._steps)

    def __len__(self) -> int:
        return len(self._steps)

    def __repr__(self) -> str:
        return repr(dict(self))


def path_rows(path: Path) -> list[tuple[int, int, int, Row]]:
    """``(step, seq, time, row)`` of every row of ``path``, first first."""
    rows = []
    while path is not None:
        rows.append((path[1], path[2], path[3], path[4]))
        path = path[0]
    rows.reverse()
    return rows


CondError = Callable[[str, Row, Exception], None]


class Matcher:
    """Runs a :class:`Program` over one key's rows; calls back with matches and time-outs.

    ``after_match`` is ``("past_last" | "to_next" | "to_first" | "to_last" | "no_skip", step)``.
    """

    def __init__(
        self,
        program: Program,
        after_match: tuple[str, int | None],
        on_match: Callable[[Any, Attempt, Path], None],
        on_timeout: Callable[[Any, Attempt], None],
        on_error: CondError,
    ) -> None:
        self.program = program
        self.steps = program.steps
        self.names = program.names
        self.skip, self.skip_step = after_match
        self.no_skip = self.skip == "no_skip"
        self.dedup = not program.python and not self.no_skip
        self.within = program.within_ms
        self.now = 0
        """The time (ticks) of the row or expiry being handled: what made an output final."""
        self.on_match = on_match
        self.on_timeout = on_timeout
        self.on_error = on_error
        n = len(self.steps)
        index = {name: i for i, name in enumerate(self.names)}
        self.prefixes = [dict(list(index.items())[: i + 1]) for i in range(n)] + [index]
        self.before = [dict(list(index.items())[:i]) for i in range(n + 1)]  # what a negation before step i sees
        self.wheres = [f"step {name!r}" for name in self.names]
        self.conds = [step.cond for step in self.steps]
        # every step one row, strict, no negation: each attempt has one thread (a fast path)
        self.strict_singles = (
            all(
                s.min == 1 and s.max == 1 and s.contiguity == STRICT and not s.not_next and not s.not_followed_by
                for s in self.steps
            )
            and not program.trailing_not_next
            and not program.trailing_not_followed_by
        )
        self.after = [self._closure(i + 1, (), ()) for i in range(n)]
        self.start = [t for t in self._closure(0, (), ()) if t[0] == WAIT]

    def _closure(
        self, j: int, nn: tuple[Cond, ...], nfb: tuple[Cond, ...]
    ) -> list[tuple[int, int, tuple[Cond, ...], tuple[Cond, ...]]]:
        """Where a thread goes after the step before ``j`` is done: templates ``(state, step,
        not_next, not_followed_by)`` in preference order."""
        steps = self.steps
        if j == len(steps):
            nn2 = nn + self.program.trailing_not_next
            nfb2 = nfb + self.program.trailing_not_followed_by
            return [(TAIL, j, nn2, nfb2)] if nn2 or nfb2 else [(DONE, j, (), ())]
        step = steps[j]
        nn2, nfb2 = nn + step.not_next, nfb + step.not_followed_by
        present = [(WAIT, j, nn2, nfb2)]
        if step.min > 0:
            return present
        absent = self._closure(j + 1, nn2, nfb2)
        return present + absent if step.greedy else absent + present

    # -- conditions ----------------------------------------------------------------------------

    def _holds(self, cond: Cond, row: Row, flags: tuple[bool, ...], path: Path, step: int) -> bool:
        """Whether positive step ``step``'s condition holds for ``row``."""
        if type(cond) is int:
            return cond < 0 or flags[cond]
        return self._call(cond, row, path, self.prefixes[step], self.wheres[step])

    def _any(self, conds: tuple[Cond, ...], row: Row, flags: tuple[bool, ...], path: Path) -> bool:
        """Whether a negation condition holds for ``row`` (a Python one sees the steps before it)."""
        for cond in conds:
            if type(cond) is int:
                if cond < 0 or flags[cond]:
                    return True
            elif self._call(cond.fn, row, path, self.before[cond.seen], "a negation"):
                return True
        return False

    def _call(self, cond: Cond, row: Row, path: Path, steps: dict[str, int], where: str) -> bool:
        try:
            return bool(cond(row, MatchView(path, steps)))
        except Exception as exc:
            self.on_error(where, row, exc)
            return False

    # -- one row -------------------------------------------------------------------------------

    def _taken(self, i: int, count: int, path: Path, out: list[Thread]) -> None:
        """Append the threads that follow taking a row into step ``i`` (now ``count`` rows)."""
        step = self.steps[i]
        cont = count < step.max
        if count >= step.min:
            exits = [(s, j, 0, nn, nfb, path) for s, j, nn, nfb in self.after[i]]
            if not cont:
                out += exits
            elif step.greedy:
                out.append((IN, i, count, (), (), path))
                out += exits
            else:
                out += exits
                out.append((IN, i, count, (), (), path))
        elif cont:
            out.append((IN, i, count, (), (), path))

    def _advance(self, threads: list[Thread], row: Row, t: int, seq: int, flags: tuple[bool, ...]) -> list[Thread]:
        out: list[Thread] = []
        steps = self.steps
        for th in threads:
            state, i, count, nn, nfb, path = th
            if state == DONE:
                out.append(th)
                if not self.no_skip:
                    break  # less preferred threads cannot win any more
                continue
            if nn and self._any(nn, row, flags, path):
                continue
            if state == IN:
                if self._holds(steps[i].cond, row, flags, path, i):
                    self._taken(i, count + 1, (path, i, seq, t, row), out)
            elif state == WAIT:
                step = steps[i]
                if self._holds(step.cond, row, flags, path, i):
                    self._taken(i, 1, (path, i, seq, t, row), out)
                    if step.contiguity != ANY:
                        continue
                if step.contiguity == STRICT or (nfb and self._any(nfb, row, flags, path)):
                    continue
                out.append((WAIT, i, 0, (), nfb, path))
            elif nfb:  # TAIL waiting for within to run out
                if not self._any(nfb, row, flags, path):
                    out.append((TAIL, i, 0, (), nfb, path))
            else:  # TAIL whose not_next held
                out.append((DONE, i, 0, (), (), path))
        return self._tidy(out)

    def _tidy(self, out: list[Thread]) -> list[Thread]:
        """Drop what cannot matter: threads less preferred than a complete one, and (without
        Python conditions) threads in the same state as a more preferred one."""
        if self.no_skip or len(out) < 2:
            return out
        kept: list[Thread] = []
        seen: set[tuple[Any, ...]] = set()
        dedup = self.dedup
        for th in out:
            if th[0] == DONE:
                kept.append(th)
                break
            if dedup:
                sig = th[:5]
                if sig in seen:
                    continue
                seen.add(sig)
            kept.append(th)
        return kept

    def row(self, key: Any, ks: KeyState, row: Row, t: int, flags: tuple[bool, ...], can_start: bool) -> bool:
        """Feed one row of ``key``; return whether it started an attempt (needing a timer)."""
        if self.strict_singles:
            return self._row_strict_singles(key, ks, row, t, flags, can_start)
        ks.seq += 1
        seq = ks.seq
        for attempt in ks.attempts:
            if attempt.threads:
                attempt.threads = self._advance(attempt.threads, row, t, seq, flags)
                self._check(key, attempt)
        started = False
        if can_start:
            threads: list[Thread] = []
            steps = self.steps
            for _, j, nn, _ in self.start:
                if nn and self._any(nn, row, flags, None):
                    continue
                if self._holds(steps[j].cond, row, flags, None, j):
                    self._taken(j, 1, (None, j, seq, t, row), threads)
            if threads:
                attempt = Attempt(seq, t, self._tidy(threads))
                ks.attempts.append(attempt)
                self._check(key, attempt)
                started = True
        self._settle(key, ks)
        return started

    def _row_strict_singles(
        self, key: Any, ks: KeyState, row: Row, t: int, flags: tuple[bool, ...], can_start: bool
    ) -> bool:
        """:meth:`row` for a pattern whose steps each take one row, strictly one after the other,
        with no negation: the same threads, without the general machinery."""
        ks.seq += 1
        seq = ks.seq
        conds, last = self.conds, len(self.conds) - 1
        attempts = ks.attempts
        for attempt in attempts:
            threads = attempt.threads
            if not threads:
                continue
            _, i, _, _, _, path = threads[0]
            cond = conds[i]
            if type(cond) is int:
                ok = cond < 0 or flags[cond]
            else:
                try:
                    ok = bool(cond(row, MatchView(path, self.prefixes[i])))
                except Exception as exc:
                    self.on_error(self.wheres[i], row, exc)
                    ok = False
            if not ok:
                attempt.threads = []
            elif i < last:
                attempt.threads = [(WAIT, i + 1, 0, (), (), (path, i, seq, t, row))]
            else:
                attempt.threads = [(DONE, i + 1, 0, (), (), (path, i, seq, t, row))]
                self._check(key, attempt)
        started = False
        if can_start:
            cond = conds[0]
            if type(cond) is int:
                ok = cond < 0 or flags[cond]
            else:
                ok = self._call(cond, row, None, self.prefixes[0], self.wheres[0])
            if ok:
                attempt = Attempt(seq, t, [(WAIT if last else DONE, 1, 0, (), (), (None, 0, seq, t, row))])
                attempts.append(attempt)
                if not last:
                    self._check(key, attempt)
                started = True
        if self.no_skip or (attempts and not attempts[0].threads):
            self._settle(key, ks)
        return started

    def _check(self, key: Any, attempt: Attempt) -> None:
        """Resolve ``attempt`` if its most preferred thread is complete or none is left."""
        threads = attempt.threads
        if self.no_skip:
            done = [th for th in threads if th[0] == DONE]
            if done:
                attempt.threads = [th for th in threads if th[0] != DONE]
                attempt.result = done[0][5]  # it has matched: it will not be timed out
                for th in done:
                    self.on_match(key, attempt, th[5])
            return
        if threads and threads[0][0] == DONE:
            attempt.result = threads[0][5]
            attempt.threads = []

    # -- time and the end ---------------------------------------------------------------------

    def expire(self, key: Any, ks: KeyState, t: int) -> None:
        """Before a row at ``t``: end, in order, the attempts ``within`` ended by then."""
        assert self.within is not None
        while (due := ks.next_expiry(self.within)) is not None and due <= t:
            self.now = due
            self.timeout(key, ks, due)

    def timeout(self, key: Any, ks: KeyState, at: int) -> None:
        """The watermark reached ``at``: attempts that started at or before ``at - within`` end."""
        assert self.within is not None
        limit = at - self.within
        for attempt in ks.attempts:
            if attempt.threads and not attempt.expired and attempt.start_t <= limit:
                attempt.expired = True
                self._end(attempt, timed_out=True)
                self._check(key, attempt)
                if self.no_skip and attempt.partial is not None:
                    self.on_timeout(key, attempt)
                    attempt.partial = None
        self._settle(key, ks)

    def finish(self, key: Any, ks: KeyState) -> None:
        """The input ended: no row will come (attempts still open did not time out)."""
        for attempt in ks.attempts:
            if attempt.threads:
                self._end(attempt, timed_out=False)
                self._check(key, attempt)
        self._settle(key, ks)

    def _end(self, attempt: Attempt, *, timed_out: bool) -> None:
        """No row can join ``attempt`` any more: complete what can be, drop the rest (the
        preferred thread dropped by ``within`` is the attempt's partial match)."""
        kept: list[Thread] = []
        partial: Path = None
        dying = False
        for th in attempt.threads:
            state = th[0]
            if state == DONE:
                kept.append(th)
            elif state == TAIL:
                if timed_out and th[3]:  # a trailing not_next still waits for the next row
                    kept.append((TAIL, th[1], 0, th[3], (), th[5]))
                else:
                    kept.append((DONE, th[1], 0, (), (), th[5]))
            elif timed_out and not dying:
                partial, dying = th[5], True
        attempt.threads = self._tidy(kept)
        # cut short: it has no match and no way left (a way still open ends it otherwise)
        cut = dying and not attempt.threads and attempt.result is None
        attempt.partial = partial if cut else None

    def _settle(self, key: Any, ks: KeyState) -> None:
        """Emit what resolved attempts at the front decided, apply the after-match skip."""
        attempts = ks.attempts
        if self.no_skip:
            if any(not a.threads for a in attempts):
                ks.attempts = [a for a in attempts if a.threads]
            return
        while attempts and not attempts[0].threads:
            head = attempts.pop(0)
            if head.result is None:
                if head.partial is not None:
                    self.on_timeout(key, head)
                continue
            self.on_match(key, head, head.result)
            drop = self._skip_past(head)
            while attempts and attempts[0].start <= drop:
                attempts.pop(0)

    def _skip_past(self, head: Attempt) -> float:
        """Attempts whose first row is at or before this seq are skipped by ``head``'s match."""
        path = head.result
        assert path is not None
        if self.skip == "past_last":
            return path[2]
        if self.skip == "to_next":
            return head.start
        rows = [seq for step, seq, _, _ in path_rows(path) if step == self.skip_step]
        if not rows:
            return head.start
        target = rows[0] if self.skip == "to_first" else rows[-1]
        return head.start if target <= head.start else target - 0.5
