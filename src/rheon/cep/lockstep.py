"""A batch path for patterns whose steps each take one row, strictly one after the other.

For such a pattern (``begin(a).next(b).next(c)``, no quantifier, no negation, no ``within``) an
attempt that has taken ``d`` rows started exactly ``d`` rows ago, so a key's open attempts are a
set of depths ``1 .. L-1`` over its last rows. :class:`LockStep` runs the keys of a batch side by
side, one key-local position at a time: at position ``p`` every key with a ``p``-th row
evaluates, for each open depth (oldest first) and for a new attempt, the condition of the step
that depth waits for, on that row. A Python condition is called in one loop per (position,
depth) over all the keys that need it, and an expression condition is a look-up of its
vectorized flag. Matches and the after-match skip are applied per key with NumPy, as the row
matcher (:meth:`rheon.cep.nfa.Matcher._row_strict_singles`) does row by row, so the same
conditions are called on the same rows and the same matches are emitted; they come out as row
positions, not dicts, for the operator to gather from the batch.

Keys with many more rows than the others would make the positions many and the keys per
position few: once fewer than :data:`MIN_KEYS` keys are left, the rest of their rows go through
the row matcher, from :class:`~rheon.cep.nfa.KeyState` objects made for them.

Between batches a key's open attempts are columns, not Python objects (:class:`Carried` in,
:class:`Left` out): a bit per open depth and the rows they took, which the operator keeps as one
frame joined on the key. Per-key objects read and written every batch cost a third of the time,
and the rows they held, left scattered in memory the batch had freed, made the conditions' dict
reads twice as slow by the tenth batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rheon.cep.nfa import STRICT, WAIT, Attempt, KeyState, Matcher, Path, Program, Row

__all__ = ["MIN_KEYS", "Carried", "Found", "Left", "LockStep", "eligible"]

MIN_KEYS = 48
"""Below this many keys at a position, the keys left go on row by row (a position costs a few
dozen NumPy calls; a row in the row matcher a couple of microseconds)."""


def eligible(program: Program, skip: str) -> bool:
    """Whether ``program`` can run in lock step: single-row strict steps, no negation, no
    ``within``, and a Python condition somewhere (expression-only patterns are pruned to a few
    rows by the operator already).

    Examples
    --------
    >>> import polars as pl
    >>> from rheon import cep
    >>> from rheon.cep.nfa import compile_pattern
    >>> rising = cep.begin("a").next("b", lambda e, m: e["x"] > m["a"][-1]["x"])
    >>> eligible(compile_pattern(rising), "past_last"), eligible(compile_pattern(rising.within("1m")), "past_last")
    (True, False)
    """
    return (
        program.python
        and program.within_ms is None
        and not program.trailing_not_next
        and not program.trailing_not_followed_by
        and all(
            s.min == 1 and s.max == 1 and s.contiguity == STRICT and not s.not_next and not s.not_followed_by
            for s in program.steps
        )
    )


@dataclass
class Found:
    """Matches of one batch as row references: ``refs[t][m]`` is the row of step ``t`` of match
    ``m``, a position in the batch's rows (``< n``) or ``n + i`` for ``extra[i]`` (rows from
    earlier batches, kept in the key's state)."""

    n: int
    times: np.ndarray
    extra: list[Row] = field(default_factory=list)
    extra_times: list[int] = field(default_factory=list)
    trigger: list[np.ndarray] = field(default_factory=list)
    order: list[np.ndarray] = field(default_factory=list)
    """Where each match was decided (the batch position of its last row): emission order."""
    refs: list[list[np.ndarray]] = field(default_factory=list)
    offset: int = 0
    """Added to :attr:`order` when matches of several runs are merged (the run's first row)."""

    def add_row(self, row: Row, t: int) -> int:
        self.extra.append(row)
        self.extra_times.append(t)
        return self.n + len(self.extra) - 1

    def columns(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """The matches in output order (by trigger time, then emission): triggers, where each
        was decided (plus :attr:`offset`), refs per step."""
        trigger = np.concatenate(self.trigger) if self.trigger else np.empty(0, np.int64)
        order = np.concatenate(self.order) if self.order else np.empty(0, np.int64)
        perm = np.lexsort((order, trigger))
        steps = len(self.refs[0]) if self.refs else 0
        refs = [np.concatenate([r[t] for r in self.refs])[perm] for t in range(steps)]
        return trigger[perm], order[perm] + self.offset, refs

    def all_times(self) -> np.ndarray:
        return np.concatenate([self.times, np.asarray(self.extra_times, dtype=np.int64)])

    def __len__(self) -> int:
        return sum(len(t) for t in self.trigger)


class Plan:
    """Where a batch's rows go in lock step: keys longest first (``keys[g]``: the batch position
    of key ``g``'s first row, ``lengths[g]``: its number of rows), and ``order``, the batch
    positions in lock-step order: every key's first row, then every key's second row, and so on.
    Key ``g``'s ``q``-th row is at ``offsets[q] + g`` in that order, where the dicts the
    conditions read are built, so that a position reads them one after the other.

    >>> plan = Plan(np.array([True, False, False, True, False, True]))
    >>> plan.order.tolist(), plan.offsets.tolist(), plan.lengths.tolist()
    ([0, 3, 5, 1, 4, 2], [0, 3, 5, 6], [3, 2, 1])
    """

    def __init__(self, first: np.ndarray) -> None:
        n = len(first)
        gstart = np.flatnonzero(first)
        glen = np.diff(np.append(gstart, n))
        by_length = np.argsort(-glen, kind="stable")  # longest first: the keys at q are a prefix
        self.keys, self.lengths = gstart[by_length], glen[by_length]
        longest = int(self.lengths.max(initial=0))
        # keys with a q-th row: how many are longer than q
        self.counts = len(self.keys) - np.cumsum(np.bincount(self.lengths, minlength=longest + 1))[:longest]
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)
        if longest <= 4096:
            parts = [self.keys[: int(c)] + q for q, c in enumerate(self.counts.tolist())]
            self.order = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        else:
            rank = np.empty(len(self.keys), dtype=np.int64)
            rank[by_length] = np.arange(len(self.keys))
            group = np.cumsum(first) - 1
            q = np.arange(n) - gstart[group]
            self.order = np.argsort(q * len(self.keys) + rank[group], kind="stable")


class LockStep:
    """Runs an :func:`eligible` program over a batch's rows (see the module's docstring)."""

    def __init__(self, matcher: Matcher) -> None:
        self.matcher = matcher
        self.conds = matcher.conds
        self.names = matcher.names
        self.L = len(self.conds)
        skip, step = matcher.skip, matcher.skip_step
        # after a match at a key, the open attempts dropped: those of depth >= drop_from
        if skip == "past_last":
            self.drop_from = 1
        elif skip in ("to_first", "to_last") and step:
            self.drop_from = self.L - step + 1
        else:  # to_next, no_skip, or a skip to the first step: nothing else is dropped
            self.drop_from = self.L

    def run(
        self,
        plan: Plan,
        records: list[Row],
        times: np.ndarray,
        starts: np.ndarray,
        flags: Sequence[np.ndarray],
        carried: Carried,
        on_error: Callable[[str, Row, Exception], None],
    ) -> tuple[Found, Left]:
        """Match the batch's rows, all given in ``plan.order``, from the open attempts the keys
        bring (``carried``): the matches, whose rows are positions in that order (or in
        ``found.extra``), and the attempts the keys leave open."""
        run = _Run(self, plan, records, times, starts, flags)
        run.load(carried)
        run.rows = records + run.found.extra if run.found.extra else records  # what a reference reads
        for q, c in enumerate(plan.counts.tolist()):
            if c < MIN_KEYS and q:
                run.tail(q, c)
                break
            run.position(q, c)
        left = run.save()
        run.errors.sort(key=lambda e: (e[0], e[1]))
        for _, _, where, row, exc in run.errors:
            on_error(where, row, exc)
        return run.found, left


@dataclass
class Carried:
    """The open attempts the keys of a batch bring in (``g``: a key, by :class:`Plan`'s order):
    ``seq[g]`` rows seen, ``bits[g]`` bit ``d - 1`` set for an open attempt of ``d`` rows, and
    the rows they took: ``rows[i]`` (at ``times[i]``) is the row ``back[i]`` rows before key
    ``owner[i]``'s first row in the batch."""

    seq: np.ndarray
    bits: np.ndarray
    rows: list[Row]
    times: np.ndarray
    owner: np.ndarray
    back: np.ndarray

    @staticmethod
    def none(keys: int) -> Carried:
        """No key brings anything."""
        empty = np.empty(0, dtype=np.int64)
        return Carried(np.zeros(keys, np.int64), np.zeros(keys, np.int64), [], empty, empty, empty)


@dataclass
class Left:
    """The open attempts keys leave after a batch: key ``keys[i]`` (by :class:`Plan`'s order)
    has seen ``seq[i]`` rows, has ``bits[i]`` open, and ``refs[j - 1][i]`` is the row ``j``
    rows back (a row reference as in :class:`Found`; ``-1`` past the deepest attempt)."""

    keys: np.ndarray
    seq: np.ndarray
    bits: np.ndarray
    refs: list[np.ndarray]


class _Run:
    """One batch in lock step. Rows are positions in ``plan.order``; ``alive[g, d]``: key ``g``
    has an open attempt that has taken ``d`` rows; ``ctx[g, j]``: the row ``j`` rows before the
    key's first one in the batch (from its state, ``-1`` if none is needed)."""

    def __init__(
        self,
        step: LockStep,
        plan: Plan,
        records: list[Row],
        times: np.ndarray,
        starts: np.ndarray,
        flags: Sequence[np.ndarray],
    ) -> None:
        self.step, self.plan, self.L = step, plan, step.L
        self.records, self.rows, self.times, self.starts, self.flags = records, records, times, starts, flags
        G = len(plan.keys)
        self.alive = np.zeros((G, self.L + 1), dtype=bool)
        self.ctx = np.full((G, self.L), -1, dtype=np.int64)
        self.base = np.zeros(G, dtype=np.int64)  # the key's seq before the batch
        self.handed = 0  # keys [0:handed) went on row by row
        self.tailed: dict[int, KeyState] = {}  # their states after it
        self.found = Found(len(records), times)
        self.errors: list[tuple[int, int, str, Row, Exception]] = []

    # -- state in and out ------------------------------------------------------------------------

    def load(self, carried: Carried) -> None:
        """The open attempts the keys bring: into ``alive``, the rows they took into ``ctx``."""
        L, found = self.L, self.found
        self.base[:] = carried.seq
        self.alive[:, 1:L] = (carried.bits[:, None] >> np.arange(L - 1, dtype=np.int64)) & 1 == 1
        found.extra.extend(carried.rows)
        found.extra_times.extend(carried.times.tolist())
        self.ctx[carried.owner, carried.back] = found.n + np.arange(len(carried.rows), dtype=np.int64)

    def save(self) -> Left:
        """The open attempts the keys leave: of keys ``[handed:]`` from ``alive``, of the keys
        the row matcher finished from their states."""
        plan, handed, L = self.plan, self.handed, self.L
        alive = self.alive[handed:, 1:L]
        pending = np.flatnonzero(alive.any(axis=1))
        g_arr = pending + handed
        bits = alive[pending].astype(np.int64) @ (1 << np.arange(L - 1, dtype=np.int64))
        q = plan.lengths[g_arr]
        deepest = (L - 1) - np.argmax(alive[pending][:, ::-1], axis=1) if L > 1 else np.zeros(0, dtype=np.int64)
        refs = [np.where(deepest >= j, self.ref(g_arr, q, j), -1) for j in range(1, L)]
        seq = self.base[g_arr] + q
        if self.tailed:
            found = self.found
            t_keys: list[int] = []
            t_seq: list[int] = []
            t_bits: list[int] = []
            t_refs: list[list[int]] = [[] for _ in range(L - 1)]
            for g, ks in self.tailed.items():
                b = 0
                path: Path = None
                for attempt in ks.attempts:
                    if attempt.threads:
                        d = attempt.threads[0][1]
                        b |= 1 << (d - 1)
                        if path is None:  # the oldest is the deepest
                            path = attempt.threads[0][5]
                if not b:
                    continue
                t_keys.append(g)
                t_seq.append(ks.seq)
                t_bits.append(b)
                for j in range(1, L):
                    if path is not None:
                        t_refs[j - 1].append(found.add_row(path[4], path[3]))
                        path = path[0]
                    else:
                        t_refs[j - 1].append(-1)
            if t_keys:
                g_arr = np.concatenate([np.asarray(t_keys, dtype=np.int64), g_arr])
                seq = np.concatenate([np.asarray(t_seq, dtype=np.int64), seq])
                bits = np.concatenate([np.asarray(t_bits, dtype=np.int64), bits])
                refs = [np.concatenate([np.asarray(t, dtype=np.int64), r]) for t, r in zip(t_refs, refs, strict=True)]
        return Left(g_arr, seq, bits, refs)

    def attempts(self, groups: np.ndarray, q: np.ndarray) -> dict[int, list[Attempt]]:
        """The open attempts of keys ``groups`` before their positions ``q``, as the row matcher
        keeps them (oldest first)."""
        out: dict[int, list[Attempt]] = {}
        rows = self.records + self.found.extra if self.found.extra else self.records
        times = self.found.all_times()
        for d in range(self.L - 1, 0, -1):
            sel = np.flatnonzero(self.alive[groups, d])
            if not sel.size:
                continue
            g, at = groups[sel], q[sel]
            seq0 = self.base[g] + at - d + 1  # the seq of the attempt's first row
            refs = [self.ref(g, at, d - t) for t in range(d)]
            cols = [(r.tolist(), times[r].tolist()) for r in refs]
            for i, (key, start) in enumerate(zip(g.tolist(), seq0.tolist(), strict=True)):
                path: Path = None
                for t, (ref, when) in enumerate(cols):
                    path = (path, t, start + t, when[i], rows[ref[i]])
                attempt = Attempt(start, cols[0][1][i], [(WAIT, d, 0, (), (), path)])
                if key in out:
                    out[key].append(attempt)
                else:
                    out[key] = [attempt]
        return out

    def ref(self, g: np.ndarray, q: np.ndarray | int, back: int) -> np.ndarray:
        """The rows ``back`` rows before position ``q`` of keys ``g``: in the batch (a position
        in lock-step order), or from the state (``n + i``)."""
        offsets = self.plan.offsets
        if isinstance(q, int):
            if back <= q:
                in_batch: np.ndarray = offsets[q - back] + g
                return in_batch
            from_state: np.ndarray = self.ctx[g, back - q]
            return from_state
        at = q - back
        either: np.ndarray = np.where(at >= 0, offsets[np.maximum(at, 0)] + g, self.ctx[g, np.clip(-at, 0, self.L - 1)])
        return either

    # -- one position ----------------------------------------------------------------------------

    def position(self, q: int, c: int) -> None:
        """Feed the ``q``-th row of keys ``[0:c)``."""
        L, alive, found, conds = self.L, self.alive, self.found, self.step.conds
        first = int(self.plan.offsets[q])
        now = np.zeros((c, L + 1), dtype=bool)
        for d in range(L - 1, -1, -1):  # the oldest attempt first, then a new one
            idx = np.flatnonzero(self.starts[first : first + c] if d == 0 else alive[:c, d])
            if not idx.size:
                continue
            cond = conds[d]
            if type(cond) is int:
                ok = idx if cond < 0 else idx[self.flags[cond][first + idx]]
            else:
                ok = idx[self.call(cond, d, first + idx, [self.ref(idx, q, d - t) for t in range(d)])]
            now[ok, d + 1] = True
        ended = np.flatnonzero(now[:, L])
        if ended.size:
            found.trigger.append(self.times[first + ended])
            found.order.append(self.plan.order[first + ended])
            found.refs.append([self.ref(ended, q, L - 1 - t) for t in range(L)])
            if self.step.drop_from < L:
                now[ended[:, None], np.arange(self.step.drop_from, L)] = False
        alive[:c, 1:L] = now[:, 1:L]

    def call(self, fn: Callable[..., Any], d: int, cur: np.ndarray, refs: list[np.ndarray]) -> np.ndarray:
        """``fn(row, match)`` on each current row, ``match`` holding the rows of the steps before
        ``d`` (and ``[]`` for step ``d``), as the row matcher's ``MatchView`` shows them."""
        rows, names = self.rows, self.step.names
        out: list[bool] = []
        append = out.append
        here = cur.tolist()
        it: Any
        # One match dict for all the calls, its lists refilled per row (a condition may read the
        # match only while it runs, as documented): no dict or list is built per call.
        held: list[list[Row]] = [[None] for _ in range(d)]  # type: ignore[list-item]
        match: dict[str, list[Row]] = dict(zip(names[:d], held, strict=True))
        match[names[d]] = []
        if d == 0:
            it = iter(here)

            def body() -> None:
                for r in it:
                    append(bool(fn(rows[r], match)))

        elif d == 1:
            h0 = held[0]
            it = zip(here, refs[0].tolist(), strict=True)

            def body() -> None:
                for r, a in it:
                    h0[0] = rows[a]
                    append(bool(fn(rows[r], match)))

        elif d == 2:
            h0, h1 = held
            it = zip(here, refs[0].tolist(), refs[1].tolist(), strict=True)

            def body() -> None:
                for r, a, b in it:
                    h0[0] = rows[a]
                    h1[0] = rows[b]
                    append(bool(fn(rows[r], match)))

        else:
            it = zip(here, zip(*(r.tolist() for r in refs), strict=True), strict=True)

            def body() -> None:
                for r, rs in it:
                    for h, a in zip(held, rs, strict=True):
                        h[0] = rows[a]
                    append(bool(fn(rows[r], match)))

        where = self.step.matcher.wheres[d]
        while True:
            try:
                body()
                break
            except Exception as exc:  # on row len(out): the condition does not hold there
                r = here[len(out)]
                self.errors.append((int(self.plan.order[r]), -d, where, rows[r], exc))
                append(False)
        return np.array(out, dtype=bool)

    # -- the long keys, row by row ---------------------------------------------------------------

    def tail(self, q: int, c: int) -> None:
        """Rows ``q ..`` of keys ``[0:c)`` through the row matcher, from the state reached."""
        matcher, found, plan, times, records = self.step.matcher, self.found, self.plan, self.times, self.records
        at = [0, 0]  # the row being fed (its batch position), errors so far on it

        def on_match(key: Any, attempt: Attempt, path: Path) -> None:
            refs: list[int] = []
            while path is not None:
                refs.append(found.add_row(path[4], path[3]))
                path = path[0]
            refs.reverse()
            found.trigger.append(np.array([matcher.now], dtype=np.int64))
            found.order.append(np.array([at[0]], dtype=np.int64))
            found.refs.append([np.array([r], dtype=np.int64) for r in refs])

        def on_error(where: str, row: Row, exc: Exception) -> None:
            at[1] += 1
            self.errors.append((at[0], at[1], where, row, exc))

        opened = self.attempts(np.arange(c), np.full(c, q, dtype=np.int64))
        offsets, order = plan.offsets.tolist(), plan.order
        saved = matcher.on_match, matcher.on_error
        matcher.on_match, matcher.on_error = on_match, on_error
        try:
            for g in range(c):
                ks = KeyState()
                ks.attempts = opened.get(g, [])
                ks.seq = int(self.base[g]) + q
                for r in [offsets[p] + g for p in range(q, int(plan.lengths[g]))]:
                    at[0], at[1] = int(order[r]), 0
                    t = int(times[r])
                    matcher.now = t
                    fl = tuple(bool(f[r]) for f in self.flags)
                    matcher._row_strict_singles(g, ks, records[r], t, fl, bool(self.starts[r]))
                self.tailed[g] = ks
        finally:
            matcher.on_match, matcher.on_error = saved
        self.handed = c
