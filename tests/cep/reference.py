"""A plain-Python reference of ``rheon.cep``'s matching semantics.

It is written from the "Semantics" section of ``docs/cep.md`` only (not from the engine), so that
the engine and this file can catch each other's mistakes. It is deliberately naive: per key, the
rows are sorted, and a backtracking search enumerates the ways the pattern matches from a first
row, in preference order; the after-match skip loop then picks which matches are emitted. The
whole log is known, which is what the engine sees in the end (a match is emitted only once no
unseen row could change it; at the end of a bounded source the watermark jumps to +inf).

A pattern is plain data: a :class:`Pattern` holding :class:`Step` s (positive steps and negations,
in order) and ``within_ms``. Conditions are Python functions ``cond(event, match) -> bool`` (or
``None``: any event), called like the engine calls a Python condition: ``event`` is the row as a
dict, ``match`` maps every positive step before (and including, for a positive step) this one to
the list of rows it has taken so far.

Readings of points the specification leaves open (see the module's tests):

* ``not_next`` checks the row just after the last matched row even when that row's time is past
  ``match_start + within`` (the spec says "whatever it is"; ``within`` bounds the rows *of* a
  match, and the row a negation looks at is not one of them).
* A negation with no row matched before it (it follows an absent optional first step) and a
  middle ``not_followed_by`` all of whose later steps end up absent without ``within`` are not
  defined by the spec: the reference raises ``ValueError`` (the property tests do not generate
  them). A middle ``not_followed_by`` whose later steps are all absent *with* ``within`` is
  checked like one at the end of the pattern.
* Timed-out attempts (:func:`reference_timed_out`): the attempt's partial ways are those alive
  when the watermark reaches ``match_start + within``, given the rows before that bound (rows at
  or after it can neither join nor kill the attempt first). So a way that still needs rows after
  a ``not_next`` whose row is at or past the bound was alive then (that row was not known yet).
  But an attempt one of whose ways is complete except for such a ``not_next`` (it waits for that
  row past the bound) was not cut short by within: if the row fails it, nothing is timed out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

Row = dict[str, Any]
Match = dict[str, list[Row]]
Cond = Callable[[Row, Match], Any] | None

POSITIVE, NOT_NEXT, NOT_FOLLOWED_BY = "positive", "not_next", "not_followed_by"
STRICT, RELAXED, ANY = "strict", "relaxed", "any"
"""Contiguity of a positive step to what came before: ``next``, ``followed_by``, ``followed_by_any``."""

STRATEGIES = ("skip_past_last_event", "skip_to_next", "no_skip")
"""After-match strategies without a step name (``skip_to_first:S`` and ``skip_to_last:S`` too)."""


@dataclass(frozen=True)
class Step:
    """One step. ``contiguity`` is ignored for the first step and for negations; ``max=None`` is
    unbounded. ``times(n, m)`` is ``min=n, max=m``; ``optional()`` sets ``min`` to 0."""

    name: str
    cond: Cond = None
    kind: str = POSITIVE
    contiguity: str = STRICT
    min: int = 1
    max: int | None = 1
    greedy: bool = True


@dataclass(frozen=True)
class Pattern:
    steps: tuple[Step, ...]
    within_ms: int | None = None

    def __post_init__(self) -> None:
        positive = [s for s in self.steps if s.kind == POSITIVE]
        if not self.steps or self.steps[0].kind != POSITIVE:
            raise ValueError("a pattern begins with a positive step")
        if all(s.min == 0 for s in positive):
            raise ValueError("a pattern that could match no row at all is refused")
        if self.steps[-1].kind == NOT_FOLLOWED_BY and self.within_ms is None:
            raise ValueError("not_followed_by at the end of a pattern needs within")
        if len({s.name for s in self.steps}) != len(self.steps):
            raise ValueError("step names are unique")
        for s in self.steps:
            if s.kind not in (POSITIVE, NOT_NEXT, NOT_FOLLOWED_BY) or s.contiguity not in (STRICT, RELAXED, ANY):
                raise ValueError(f"bad step {s}")
            if s.kind == POSITIVE and not (s.min >= 0 and (s.max is None or (s.max >= 1 and s.max >= s.min))):
                raise ValueError(f"bad quantifier {s}")

    @property
    def positive(self) -> list[str]:
        return [s.name for s in self.steps if s.kind == POSITIVE]


COMPLETE, CUT, ENDED_LATER = "complete", "cut", "ended later"


@dataclass(frozen=True)
class Way:
    """One way the pattern matches from a first row. ``state`` is ``COMPLETE``; or ``CUT``: a
    partial way that needs a row after the ones known (rows past ``within``, or past the end of
    input); or ``ENDED_LATER``: a way complete but for a ``not_next`` whose row lies past
    ``within``, that row then failing it (the way outlived the bound, within did not end it).
    ``taken`` maps each positive step reached so far to the indices of its rows."""

    state: str
    taken: dict[str, tuple[int, ...]]

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE


def ways(rows: Sequence[Row], pattern: Pattern, start: int, time: str = "ts") -> Iterator[Way]:
    """The ways ``pattern`` matches the key's sorted ``rows`` with ``rows[start]`` as first row,
    complete and partial, in preference order (the regular-expression order of MATCH_RECOGNIZE:
    decided left to right, greedy prefers one more row, reluctant prefers stopping, a greedy
    optional step prefers being present, followed_by_any prefers the earlier row)."""
    steps = pattern.steps
    n = len(rows)
    bound = None if pattern.within_ms is None else rows[start][time] + pattern.within_ms
    # rows [start, cutoff) are the rows a match may take: time - match_start < within
    cutoff = n if bound is None else next((j for j in range(start, n) if rows[j][time] >= bound), n)

    def context(i: int, taken: dict[str, tuple[int, ...]]) -> Match:
        """``match`` for step i: every positive step before it, and itself if positive."""
        names = [s.name for s in steps[: i + 1] if s.kind == POSITIVE]
        return {name: [rows[j] for j in taken.get(name, ())] for name in names}

    def holds(cond: Cond, j: int, match: Match) -> bool:
        if cond is None:
            return True
        result = cond(rows[j], match)
        return result is not None and bool(result)  # null counts as false

    def clear(pending: tuple[tuple[Cond, Match], ...], lo: int, hi: int) -> bool:
        """No row in ``[lo, hi)`` satisfies a pending not_followed_by."""
        return not any(holds(cond, j, match) for cond, match in pending for j in range(lo, hi))

    def at(i: int, taken: dict[str, tuple[int, ...]], last: int | None, pending: tuple) -> Iterator[Way]:
        """Continue with step i; ``last`` is the last row matched so far."""
        if i == len(steps):
            if last is None:
                raise AssertionError("unreachable: some step has min >= 1")
            if pending:  # not_followed_by with no row matched after it: the end-of-pattern rule
                if bound is None:
                    raise ValueError("not_followed_by with no later row, without within: not defined")
                if not clear(pending, last + 1, cutoff):
                    return
            yield Way(COMPLETE, taken)
            return
        step = steps[i]
        if step.kind != POSITIVE and last is None:
            raise ValueError("a negation with no row matched before it: not defined")
        if step.kind == NOT_NEXT:
            j = last + 1  # type: ignore[operator]
            if j < n and holds(step.cond, j, context(i, taken)):
                if j >= cutoff:  # not known when the watermark reached the bound
                    for w in at(i + 1, taken, last, pending):
                        yield Way(ENDED_LATER, w.taken) if w.complete else w
                return
            yield from at(i + 1, taken, last, pending)
        elif step.kind == NOT_FOLLOWED_BY:
            yield from at(i + 1, taken, last, (*pending, (step.cond, context(i, taken))))
        else:
            present = first_rows(i, taken, last, pending)
            if step.min > 0:
                yield from present
            elif step.greedy:
                yield from present
                yield from at(i + 1, {**taken, step.name: ()}, last, pending)
            else:
                yield from at(i + 1, {**taken, step.name: ()}, last, pending)
                yield from present

    def first_rows(i: int, taken: dict[str, tuple[int, ...]], last: int | None, pending: tuple) -> Iterator[Way]:
        """Step i present: where its first row may be, earlier first."""
        step = steps[i]
        mine: dict[str, tuple[int, ...]] = {**taken, step.name: ()}
        match = context(i, mine)
        if last is None:  # no earlier row: the step's first row is the match's first row
            if holds(step.cond, start, match):
                yield from more(i, taken, (start,))
            return
        if step.contiguity == STRICT:
            candidates = [last + 1]
        else:
            candidates = [j for j in range(last + 1, cutoff) if holds(step.cond, j, match)]
            if step.contiguity == RELAXED:
                candidates = candidates[:1]  # the first later row that satisfies the condition
            if not candidates or step.contiguity == ANY:
                candidates.append(cutoff)  # or a row not known yet
        for p in candidates:
            if not clear(pending, last + 1, min(p, cutoff)):
                return  # a not_followed_by row lies between: later first rows have it between too
            if p >= cutoff:
                yield Way(CUT, mine)
            elif holds(step.cond, p, match):
                yield from more(i, taken, (p,))

    def more(i: int, taken: dict[str, tuple[int, ...]], mine: tuple[int, ...]) -> Iterator[Way]:
        """Step i has taken the rows ``mine``: one more row, or stop and go on (greedy: more first)."""
        step = steps[i]
        now = {**taken, step.name: mine}

        def one_more() -> Iterator[Way]:
            if step.max is not None and len(mine) >= step.max:
                return
            q = mine[-1] + 1
            if q >= cutoff:
                yield Way(CUT, now)
            elif holds(step.cond, q, context(i, now)):
                yield from more(i, taken, (*mine, q))

        def stop() -> Iterator[Way]:
            if len(mine) >= step.min:
                yield from at(i + 1, now, mine[-1], ())

        if step.greedy:
            yield from one_more()
            yield from stop()
        else:
            yield from stop()
            yield from one_more()

    return at(0, {}, None, ())


def _continue_at(way: Way, r: int, after_match: str) -> int:
    if after_match == "skip_past_last_event":
        return max(j for rows in way.taken.values() for j in rows) + 1
    if after_match == "skip_to_next":
        return r + 1
    kind, _, name = after_match.partition(":")
    if kind not in ("skip_to_first", "skip_to_last") or name not in way.taken:
        raise ValueError(f"unknown after_match {after_match!r}")
    rows = way.taken[name]
    target = (rows[0] if kind == "skip_to_first" else rows[-1]) if rows else r
    return r + 1 if target == r else target  # no rows, or the match's first row: the next row


def _per_key(rows: Sequence[Row], key: str | Sequence[str], time: str) -> dict[tuple[Any, ...], list[Row]]:
    """Each key's rows in event-time order, ties in arrival order."""
    names = [key] if isinstance(key, str) else list(key)
    groups: dict[tuple[Any, ...], list[tuple[int, Row]]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(tuple(row[k] for k in names), []).append((i, row))
    return {k: [row for _, row in sorted(g, key=lambda ir: (ir[1][time], ir[0]))] for k, g in groups.items()}


def _attempts(
    rows: Sequence[Row], pattern: Pattern, after_match: str, key: str | Sequence[str], time: str
) -> Iterator[tuple[dict[str, Any], list[Row], Way]]:
    """The skip loop: (key values, the key's rows, way) for every match emitted (complete) and every
    attempt that within cut short (its preferred cut way)."""
    names = [key] if isinstance(key, str) else list(key)
    for k, krows in _per_key(rows, key, time).items():
        kv = dict(zip(names, k, strict=True))
        r = 0
        while r < len(krows):
            complete: list[Way] = []
            cut: list[Way] = []
            outlived = False  # some way was still open after the bound: within did not end the attempt
            for w in ways(krows, pattern, r, time):
                if w.complete:
                    complete.append(w)
                    if after_match != "no_skip":
                        break  # the preferred match
                elif w.state == CUT:
                    cut.append(w)
                else:
                    outlived = True
            if not complete:
                if cut and not outlived:
                    yield kv, krows, cut[0]
                r += 1
            elif after_match == "no_skip":
                for w in complete:
                    yield kv, krows, w
                r += 1
            else:
                yield kv, krows, complete[0]
                r = _continue_at(complete[0], r, after_match)


def _output(kv: dict[str, Any], rows: Sequence[Row], way: Way, pattern: Pattern, time: str) -> Row:
    indices = [j for js in way.taken.values() for j in js]
    out: Row = {**kv, "match_start": rows[min(indices)][time], "match_end": rows[max(indices)][time]}
    for name in pattern.positive:
        out[name] = [dict(rows[j]) for j in way.taken.get(name, ())]
    return out


def reference_matches(
    rows: Sequence[Row],
    pattern: Pattern,
    after_match: str = "skip_past_last_event",
    key: str | Sequence[str] = "k",
    time: str = "ts",
) -> list[Row]:
    """The matches ``stream.key_by(key).match(pattern, after_match=...)`` emits for ``rows`` (in
    arrival order, none late), in the engine's output shape: key column(s), ``match_start``,
    ``match_end``, then each positive step's rows (``[]`` when absent). Ordered per key by first
    row (the engine's order across keys may differ)."""
    return [
        _output(kv, krows, way, pattern, time)
        for kv, krows, way in _attempts(rows, pattern, after_match, key, time)
        if way.complete
    ]


def reference_timed_out(
    rows: Sequence[Row],
    pattern: Pattern,
    after_match: str = "skip_past_last_event",
    key: str | Sequence[str] = "k",
    time: str = "ts",
) -> list[Row]:
    """The rows ``.timed_out()`` emits: one per attempt (a row the skip loop reaches that has no
    match) that still had a way to complete when the watermark reached ``match_start + within``
    (or the end of input); it holds the steps matched by the preferred such way. Shape as
    :func:`reference_matches` (``match_end``: time of the last row matched so far). Nothing
    without ``within``."""
    if pattern.within_ms is None:
        return []
    return [
        _output(kv, krows, way, pattern, time)
        for kv, krows, way in _attempts(rows, pattern, after_match, key, time)
        if not way.complete
    ]
