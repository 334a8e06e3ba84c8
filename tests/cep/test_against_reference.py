"""``rheon.cep`` against the plain-Python reference (tests/cep/reference.py), on random logs and
patterns.

Random small logs (one or two keys, event types "a"/"b"/"c" in ``t``, a small int ``v``, a unique
``id``, event times with ties, arriving out of order within ``max_delay``) go through
``key_by("k").match(pattern)`` with random patterns (every contiguity, quantifier and negation,
with and without ``within``, expression or Python conditions, those reading ``match`` too), every
``after_match`` strategy and batch sizes 1, 3 and 1000. The engine's matches and timed-out
attempts must be the reference's. ``test_late_rows`` adds rows later than ``max_delay``.

Disagreements found this way are kept at the end of the file as minimal examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import polars as pl
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

import rheon as rh
from rheon import cep
from tests.cep.reference import (
    ANY,
    NOT_FOLLOWED_BY,
    NOT_NEXT,
    POSITIVE,
    RELAXED,
    STRICT,
    Pattern,
    Row,
    Step,
    reference_matches,
    reference_timed_out,
)

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- logs -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Log:
    rows: list[Row]  # arrival order; ids are unique
    max_delay: int

    def late(self) -> set[int]:
        """Ids of the late rows: "an event that arrives when an event with a later time has already
        been released" (released: the watermark, max time seen - max_delay, has reached its time;
        the watermark is the source's, so across keys)."""
        late: set[int] = set()
        on_time: list[int] = []  # times of the rows that entered
        watermark = -math.inf  # before the row
        for row in self.rows:
            if any(watermark >= ts > row["ts"] for ts in on_time):
                late.add(row["id"])
            else:
                on_time.append(row["ts"])
            watermark = max(watermark, row["ts"] - self.max_delay)
        return late

    def on_time(self) -> list[Row]:
        late = self.late()
        return [row for row in self.rows if row["id"] not in late]


@st.composite
def logs(draw: st.DrawFn, max_size: int = 16, late: bool = True) -> Log:
    n = draw(st.integers(1, max_size))
    gaps = draw(st.lists(st.sampled_from([0, 0, 1, 1, 2, 3, 5, 8]), min_size=n, max_size=n))  # ties
    max_delay = draw(st.sampled_from([0, 2, 5]))
    # arrival = time + a delay: within max_delay nothing is late; a longer delay may be
    extra = draw(st.sampled_from([0, 0, 3])) if late else 0
    delays = draw(st.lists(st.integers(0, max_delay + extra), min_size=n, max_size=n))
    one_key = draw(st.booleans())
    # string keys and integer keys (the engine orders integer keys another way)
    x, y = draw(st.sampled_from([("x", "y"), (7, -3)]))
    events = []
    ts = 100
    for i in range(n):
        ts += gaps[i]
        events.append(
            {
                "k": x if one_key else draw(st.sampled_from([x, y])),
                "ts": ts,
                "t": draw(st.sampled_from("abc")),
                "v": draw(st.integers(0, 3)),
                "id": i,
            }
        )
    order = sorted(range(n), key=lambda i: (events[i]["ts"] + delays[i], i))
    return Log([events[i] for i in order], max_delay)


# -- patterns: generated as plain data, built for both sides ---------------------------------------

# a condition is a small symbolic term (None: any event), turned into a Polars expression or a
# Python function
EXPR_TERMS = st.one_of(
    st.tuples(st.just("t=="), st.sampled_from("abc")),
    st.tuples(st.just("t=="), st.sampled_from("abc")),
    st.tuples(st.just("t!="), st.sampled_from("abc")),
    st.tuples(st.just("v>="), st.integers(1, 3)),
)
PY_TERMS = st.one_of(
    EXPR_TERMS,
    st.just(("v>last",)),  # v above the last row matched so far (the step's own rows included)
    st.just(("v==first",)),  # v equal to the match's first row's v
    st.tuples(st.just("own<"), st.integers(1, 2)),  # the step has taken fewer than n rows so far
    st.tuples(st.just("t==,v<="), st.sampled_from("abc"), st.integers(0, 2)),
)


def expr(term: Any) -> pl.Expr | None:
    if term is None:
        return None
    op, *args = term
    if op == "t==":
        return rh.col("t") == args[0]
    if op == "t!=":
        return rh.col("t") != args[0]
    if op == "v>=":
        return rh.col("v") >= args[0]
    raise ValueError(term)


FIELDS = {"k", "ts", "t", "v", "id"}


def python(term: Any, own: str | None, names: list[str]) -> Callable[[Row, dict[str, list[Row]]], bool] | None:
    """The term as ``fn(event, match)``; ``own`` is the step's name (None for a negation), ``names``
    the positive steps ``match`` must hold (those before the step, and itself if positive)."""
    if term is None:
        return None
    op, *args = term

    def rows_so_far(m: dict[str, list[Row]]) -> list[Row]:
        return [r for name in names for r in m[name]]  # steps in pattern order, rows in order

    def fn(e: Row, m: dict[str, list[Row]]) -> bool:
        if op == "t==":
            return bool(e["t"] == args[0])
        if op == "t!=":
            return bool(e["t"] != args[0])
        if op == "v>=":
            return bool(e["v"] >= args[0])
        if op == "v>last":
            return not rows_so_far(m) or e["v"] > rows_so_far(m)[-1]["v"]
        if op == "v==first":
            return not rows_so_far(m) or e["v"] == rows_so_far(m)[0]["v"]
        if op == "own<":
            return len(m[own] if own is not None else rows_so_far(m)) < args[0]
        if op == "t==,v<=":
            return bool(e["t"] == args[0] and e["v"] <= args[1])
        raise ValueError(term)

    def checked(e: Row, m: dict[str, list[Row]]) -> bool:
        # what a Python condition is given: the event as a dict, the match so far
        assert set(e) >= FIELDS, f"event {e}"
        assert set(m) == set(names), f"match has steps {sorted(m)}, expected {names}"
        assert all(isinstance(rows, list) and all(set(r) >= FIELDS for r in rows) for rows in m.values()), m
        return fn(e, m)

    return checked


# quantifier method calls -> {min, max} as the spec defines them (optional() sets min to 0)
QUANTIFIERS: list[tuple[tuple[tuple[Any, ...], ...], int, int | None]] = [
    ((), 1, 1),
    ((), 1, 1),
    ((("times", 2),), 2, 2),
    ((("times", 1, 2),), 1, 2),
    ((("times", 2, 3),), 2, 3),
    ((("one_or_more",),), 1, None),
    ((("times_or_more", 2),), 2, None),
    ((("optional",),), 0, 1),
    ((("one_or_more",), ("optional",)), 0, None),
    ((("times", 2, 3), ("optional",)), 0, 3),
]
CONTIGUITY_METHOD = {STRICT: "next", RELAXED: "followed_by", ANY: "followed_by_any"}


@dataclass(frozen=True)
class Gen:
    """A generated step: the reference's fields plus the engine calls that make it."""

    name: str
    kind: str
    contiguity: str
    calls: tuple[tuple[Any, ...], ...]
    min: int
    max: int | None
    greedy: bool
    cond: Any


@dataclass(frozen=True)
class GenPattern:
    steps: tuple[Gen, ...]
    within_ms: int | None

    def reference(self) -> Pattern:
        steps = tuple(
            Step(g.name, self.python(i), g.kind, g.contiguity, g.min, g.max, g.greedy) for i, g in enumerate(self.steps)
        )
        return Pattern(steps, self.within_ms)

    def python(self, i: int) -> Any:
        """Step i's condition as a Python function."""
        g = self.steps[i]
        names = [h.name for h in self.steps[: i + 1] if h.kind == POSITIVE]
        return python(g.cond, g.name if g.kind == POSITIVE else None, names)

    def engine(self, conds: str) -> Any:
        p: Any = None
        for i, g in enumerate(self.steps):
            c = expr(g.cond) if conds == "expr" else self.python(i)
            if p is None:
                p = cep.begin(g.name, c)
            elif g.kind == NOT_NEXT:
                p = p.not_next(g.name, c)
            elif g.kind == NOT_FOLLOWED_BY:
                p = p.not_followed_by(g.name, c)
            else:
                p = getattr(p, CONTIGUITY_METHOD[g.contiguity])(g.name, c)
            for method, *args in g.calls:
                p = getattr(p, method)(*args)
        if self.within_ms is not None:
            p = p.within(f"{self.within_ms}ms")
        return p

    @property
    def positive(self) -> list[str]:
        return [g.name for g in self.steps if g.kind == POSITIVE]


@st.composite
def patterns(draw: st.DrawFn, terms: st.SearchStrategy[Any] = EXPR_TERMS) -> GenPattern:
    conds = st.none() | terms
    n = draw(st.integers(1, 4))
    within = draw(st.one_of(st.none(), st.sampled_from([3, 6, 10, 20])))
    steps: list[Gen] = []
    for i in range(n):
        calls, lo, hi = draw(st.sampled_from(QUANTIFIERS))
        greedy = True
        if lo != hi and draw(st.booleans()):
            calls, greedy = (*calls, ("reluctant",)), False
        contiguity = STRICT if i == 0 else draw(st.sampled_from([STRICT, RELAXED, ANY]))
        steps.append(Gen("ABCD"[i], POSITIVE, contiguity, calls, lo, hi, greedy, draw(conds)))
        for j in range(draw(st.sampled_from([0, 0, 0, 0, 0, 1, 1, 2]))):  # negations after the step
            kind = draw(st.sampled_from([NOT_NEXT, NOT_FOLLOWED_BY]))
            if kind == NOT_FOLLOWED_BY and i == n - 1 and within is None:
                kind = NOT_NEXT  # not_followed_by at the end needs within
            # the engine refuses a negation without a condition (the spec does not say; fair enough)
            steps.append(Gen(f"X{i}{j}", kind, STRICT, (), 1, 1, True, draw(terms)))
    positive = [g for g in steps if g.kind == POSITIVE]
    negated = any(g.kind != POSITIVE for g in steps)

    def required(g: Gen) -> Gen:
        return replace(g, calls=(), min=1, max=1, greedy=True)

    # every step optional is refused; a negation with no row before it is not defined by the spec
    if all(g.min == 0 for g in positive) or (negated and steps[0].min == 0):
        steps[0] = required(steps[0])
    # nor is a middle not_followed_by whose later steps are all absent, without within (with within
    # the reference reads it as one at the end)
    for i, g in enumerate(steps):
        later = [h for h in steps[i + 1 :] if h.kind == POSITIVE]
        if g.kind == NOT_FOLLOWED_BY and later and all(h.min == 0 for h in later) and within is None:
            j = steps.index(later[-1])
            steps[j] = required(steps[j])
    return GenPattern(tuple(steps), within)


@st.composite
def strategies(draw: st.DrawFn, pattern: GenPattern) -> str:
    kind = draw(st.sampled_from(["skip_past_last_event", "skip_to_next", "no_skip", "skip_to_first", "skip_to_last"]))
    if kind in ("skip_to_first", "skip_to_last"):
        return f"{kind}:{draw(st.sampled_from(pattern.positive))}"
    return kind


# -- running and comparing ------------------------------------------------------------------------

Summary = dict[str, list[tuple[Any, ...]]]


def summary(rows: list[Row], steps: list[str]) -> Summary:
    """Per key, the sorted (match_start, match_end, ((step, row ids), ...)) of each output row."""
    out: Summary = {}
    for r in rows:
        taken = tuple((s, tuple(e["id"] for e in r[s])) for s in steps)
        out.setdefault(r["k"], []).append((r["match_start"], r["match_end"], taken))
    return {k: sorted(v) for k, v in out.items()}


@dataclass
class Result:
    matches: Summary
    timed_out: Summary
    late: list[int]


def run_engine(log: Log, gen: GenPattern, after_match: str, batch_size: int, conds: str) -> Result:
    flow = rh.Flow("cep-reference")
    out, timed_out, late = rh.io.Collect(), rh.io.Collect(), rh.io.Collect()
    source = flow.source(rh.io.Records(log.rows, batch_size=batch_size), time="ts", max_delay=f"{log.max_delay}ms")
    m = source.key_by("k").match(gen.engine(conds), after_match=after_match)
    m.sink(out)
    m.timed_out().sink(timed_out)
    m.late().sink(late)
    flow.run()
    return Result(
        summary(out.rows, gen.positive), summary(timed_out.rows, gen.positive), sorted(r["id"] for r in late.rows)
    )


def run_reference(log: Log, gen: GenPattern, after_match: str) -> Result:
    pattern = gen.reference()
    rows = log.on_time()
    return Result(
        summary(reference_matches(rows, pattern, after_match), gen.positive),
        summary(reference_timed_out(rows, pattern, after_match), gen.positive),
        sorted(log.late()),
    )


def check(log: Log, gen: GenPattern, after_match: str, batch_size: int, conds: str) -> None:
    expected = run_reference(log, gen, after_match)
    if currently_in_test_context():
        event("matches" if expected.matches else "no match")
        event("timed out" if expected.timed_out else "none timed out")
        event("late rows" if expected.late else "no late row")
    got = run_engine(log, gen, after_match, batch_size, conds)
    assert got.late == expected.late, "late rows"
    assert got.matches == expected.matches, "matches"
    assert got.timed_out == expected.timed_out, "timed-out attempts"


# -- properties -----------------------------------------------------------------------------------
# The logs of the first two tests have no late row (test_late_rows has some).


@SETTINGS
@given(data=st.data(), log=logs(late=False), gen=patterns(), batch_size=st.sampled_from([1, 3, 1000]))
def test_expression_conditions(data: st.DataObject, log: Log, gen: GenPattern, batch_size: int) -> None:
    check(log, gen, data.draw(strategies(gen), label="after_match"), batch_size, "expr")


@SETTINGS
@given(data=st.data(), log=logs(late=False), gen=patterns(PY_TERMS), batch_size=st.sampled_from([1, 3, 1000]))
def test_python_conditions(data: st.DataObject, log: Log, gen: GenPattern, batch_size: int) -> None:
    check(log, gen, data.draw(strategies(gen), label="after_match"), batch_size, "python")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), log=logs(late=True), gen=patterns(), batch_size=st.sampled_from([1, 3, 1000]))
def test_late_rows(data: st.DataObject, log: Log, gen: GenPattern, batch_size: int) -> None:
    check(log, gen, data.draw(strategies(gen), label="after_match"), batch_size, "expr")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), log=logs(late=False), gen=patterns())
def test_batching_and_disorder_do_not_change_results(data: st.DataObject, log: Log, gen: GenPattern) -> None:
    """The same events in time order in one batch, or disordered (within max_delay) one by one."""
    after_match = data.draw(strategies(gen), label="after_match")
    # ties keep their relative arrival order: reorder only events of different times
    tie_order = {r["id"]: i for i, r in enumerate(log.rows)}
    ordered = Log(sorted(log.rows, key=lambda r: (r["ts"], tie_order[r["id"]])), log.max_delay)
    a = run_engine(ordered, gen, after_match, 1000, "expr")
    b = run_engine(log, gen, after_match, 1, "expr")
    assert a == b


# -- known disagreements, minimal examples (the engine is wrong by docs/cep.md) ---------------------


def row(i: int, ts: int, t: str = "a") -> Row:
    return {"k": "x", "ts": ts, "t": t, "v": 0, "id": i}


def gen_steps(
    *steps: tuple[str, tuple[tuple[Any, ...], ...], int, int | None], within: int | None = None
) -> GenPattern:
    return GenPattern(tuple(Gen(n, POSITIVE, STRICT, c, lo, hi, True, None) for n, c, lo, hi in steps), within)


def test_a_row_behind_the_watermark_but_ahead_of_every_released_row_is_not_late() -> None:
    # max_delay 2: row 2 (time 100) arrives when the watermark is 198, but the only released row
    # (row 0, time 100) is not later than it: it takes its place after row 0. Row 3 (time 99) is
    # behind row 0: late.
    log = Log([row(0, 100), row(1, 200), row(2, 100), row(3, 99)], max_delay=2)
    assert log.late() == {3}
    check(log, gen_steps(("A", (), 1, 1), ("B", (), 1, 1)), "skip_past_last_event", 1, "expr")


def test_no_skip_timed_out_only_for_attempts_that_cannot_complete() -> None:
    # ".timed_out() has one row per match attempt (a row r that the procedure above reaches, whose
    # pattern cannot complete)". Three rows at time 100; begin("A", None).times(1, 2).next("B", None)
    # .within("3ms"), no_skip. From row 1: A=[1], B=[2] matches (emitted), so no timed-out row for
    # row 1; only row 2's attempt (A=[2], then nothing) is timed out. The engine also times out
    # row 1's greedy way A=[1, 2] (B would need a fourth row).
    log = Log([row(0, 100), row(1, 100), row(2, 100)], max_delay=0)
    gen = gen_steps(("A", (("times", 1, 2),), 1, 2), ("B", (), 1, 1), within=3)
    expected = run_reference(log, gen, "no_skip")
    assert expected.timed_out == {"x": [(100, 100, (("A", (2,)), ("B", ())))]}
    assert run_engine(log, gen, "no_skip", 1, "expr").timed_out == expected.timed_out


def test_no_skip_times_out_the_same_attempts_as_skip_to_next_when_nothing_matches() -> None:
    # With no match at all, every strategy reaches every row: the timed-out attempts cannot depend on
    # after_match. Rows a@100, a@100, a@103; begin("A", None).times(1, 2).not_next("X", t == "a")
    # .within("3ms"). From row 1: A=[1, 2] would be past the bound; A=[1] waits for its not_next
    # row (row 2, at the bound), which fails it. skip_to_next times nothing out (as the reference);
    # no_skip times out A=[1].
    log = Log([row(0, 100), row(1, 100), row(2, 103)], max_delay=0)
    gen = GenPattern(
        (
            Gen("A", POSITIVE, STRICT, (("times", 1, 2),), 1, 2, True, None),
            Gen("X", NOT_NEXT, STRICT, (), 1, 1, True, ("t==", "a")),
        ),
        3,
    )
    assert run_reference(log, gen, "no_skip").timed_out == {}
    assert run_engine(log, gen, "skip_to_next", 1, "expr").timed_out == {}
    assert run_engine(log, gen, "no_skip", 1, "expr").timed_out == {}


def test_not_followed_by_before_only_absent_steps_does_not_depend_on_batching() -> None:
    # Rows a@100, x@101, c@102; begin("A", t == "a").not_followed_by("X", t == "c")
    # .next("B", t == "b").optional().within("3ms"). B is absent (x is not a b), so no row is
    # matched after the negation: the reference checks it like one at the end of the pattern (the
    # c before the bound fails it: no match). One row per batch the engine agrees; in one batch it
    # emits A=[0], B=[]. Whatever the reading, the result cannot depend on the batch size.
    log = Log([row(0, 100), row(1, 101, "x"), row(2, 102, "c")], max_delay=0)
    gen = GenPattern(
        (
            Gen("A", POSITIVE, STRICT, (), 1, 1, True, ("t==", "a")),
            Gen("X", NOT_FOLLOWED_BY, STRICT, (), 1, 1, True, ("t==", "c")),
            Gen("B", POSITIVE, STRICT, (("optional",),), 0, 1, True, ("t==", "b")),
        ),
        3,
    )
    assert run_reference(log, gen, "skip_past_last_event").matches == {}
    assert run_engine(log, gen, "skip_past_last_event", 1, "expr").matches == {}
    assert run_engine(log, gen, "skip_past_last_event", 1000, "expr").matches == {}


def test_a_negation_sees_only_the_steps_before_it() -> None:
    # "Conditions of negations are evaluated like positive ones (match holds the rows matched before
    # the negation)": like a positive step's, it maps the positive steps before it. For
    # begin("A", t == "a").not_next("X", fn).next("B", None) on rows a@100, b@101, fn is given
    # {"A": [row 0]}; the engine gives {"A": [row 0], "B": []} (same for a not_followed_by between
    # two steps).
    seen: list[list[str]] = []

    def fn(e: Row, m: dict[str, list[Row]]) -> bool:
        seen.append(sorted(m))
        return e["t"] == "c"

    rows = [row(0, 100), row(1, 101, "b")]
    reference_matches(rows, Pattern((Step("A", lambda e, m: e["t"] == "a"), Step("X", fn, NOT_NEXT), Step("B"))))
    assert seen == [["A"]]
    flow = rh.Flow("cep-negation-match")
    source = flow.source(rh.io.Records(rows), time="ts", max_delay="0ms")
    source.key_by("k").match(cep.begin("A", rh.col("t") == "a").not_next("X", fn).next("B", None)).sink(rh.io.Collect())
    flow.run()
    assert seen == [["A"], ["A"]]
