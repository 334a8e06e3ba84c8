"""The reference matcher on hand-worked examples: each expected result is worked out by hand from
docs/cep.md ("Semantics"), so these tests pin the semantics the engine is compared against."""

from __future__ import annotations

from typing import Any

import pytest

from tests.cep.reference import (
    ANY,
    NOT_FOLLOWED_BY,
    NOT_NEXT,
    RELAXED,
    STRICT,
    Pattern,
    Row,
    Step,
    reference_matches,
    reference_timed_out,
)


def log(types: str, times: list[int] | None = None, key: str = "x", vs: list[int] | None = None) -> list[Row]:
    """One row per letter, ids 0, 1, …; times 0, 1, … unless given."""
    letters = types.split()
    times = times if times is not None else list(range(len(letters)))
    vs = vs if vs is not None else [0] * len(letters)
    return [
        {"k": key, "ts": ts, "t": t, "v": v, "id": i}
        for i, (t, ts, v) in enumerate(zip(letters, times, vs, strict=True))
    ]


def t(*values: str) -> Any:
    return lambda e, m: e["t"] in values


def pat(*steps: Step, within: int | None = None) -> Pattern:
    return Pattern(tuple(steps), within)


def ids(rows: list[Row], pattern: Pattern, after: str = "skip_past_last_event") -> list[dict[str, list[int]]]:
    return [
        {name: [r["id"] for r in m[name]] for name in pattern.positive} for m in reference_matches(rows, pattern, after)
    ]


A = Step("A", t("a"))
B = Step("B", t("b"))
C = Step("C", t("c"))


def test_strict_contiguity() -> None:
    p = pat(A, B)
    assert ids(log("a c b"), p) == []
    assert ids(log("a b"), p) == [{"A": [0], "B": [1]}]
    assert ids(log("a a b"), p) == [{"A": [1], "B": [2]}]  # no match from row 0: the next row is an a


def test_output_shape() -> None:
    rows = log("a x b", times=[5, 6, 9])
    [m] = reference_matches(rows, pat(A, Step("B", t("b"), contiguity=RELAXED)))
    assert m == {"k": "x", "match_start": 5, "match_end": 9, "A": [rows[0]], "B": [rows[2]]}


def test_relaxed_takes_the_first_satisfying_row_any_tries_later_ones() -> None:
    # a b b c: followed_by B is the first b (1); C must then be row 2, a b: no match.
    relaxed = pat(A, Step("B", t("b"), contiguity=RELAXED), C)
    assert ids(log("a b b c"), relaxed) == []
    # followed_by_any tries b at 1 (C fails), then b at 2 (C = 3)
    anyb = pat(A, Step("B", t("b"), contiguity=ANY), C)
    assert ids(log("a b b c"), anyb) == [{"A": [0], "B": [2], "C": [3]}]


def test_followed_by_any_no_skip_every_combination() -> None:
    p = pat(A, Step("B", t("b"), contiguity=ANY), Step("C", t("c"), contiguity=ANY))
    rows = log("a b b c c")
    both = [{"A": [0], "B": [b], "C": [c]} for b in (1, 2) for c in (3, 4)]
    assert ids(rows, p, "no_skip") == both  # in preference order: earlier rows first
    assert ids(rows, p) == [both[0]]  # the preferred one, then from row 4 (a c): nothing


def test_greedy_and_reluctant() -> None:
    greedy = Step("B", t("b"), max=None)
    reluctant = Step("B", t("b"), max=None, greedy=False)
    rows = log("a b b b c")
    c = Step("C", t("c"), contiguity=RELAXED)
    assert ids(rows, pat(A, greedy, c)) == [{"A": [0], "B": [1, 2, 3], "C": [4]}]
    # reluctant stops after one b; followed_by C then skips the other b's (not c)
    assert ids(rows, pat(A, reluctant, c)) == [{"A": [0], "B": [1], "C": [4]}]
    # at the end of the pattern: greedy takes every b it can, reluctant one
    assert ids(log("a b b x b"), pat(A, greedy)) == [{"A": [0], "B": [1, 2]}]
    assert ids(log("a b b x b"), pat(A, reluctant)) == [{"A": [0], "B": [1]}]


def test_times_n_m() -> None:
    rows = log("a b b b b")
    assert ids(rows, pat(A, Step("B", t("b"), min=2, max=3))) == [{"A": [0], "B": [1, 2, 3]}]
    assert ids(rows, pat(A, Step("B", t("b"), min=2, max=3, greedy=False))) == [{"A": [0], "B": [1, 2]}]
    # no_skip: every way, greedy order (3 rows, then 2)
    assert ids(rows, pat(A, Step("B", t("b"), min=2, max=3)), "no_skip") == [
        {"A": [0], "B": [1, 2, 3]},
        {"A": [0], "B": [1, 2]},
    ]
    assert ids(log("a b x b b"), pat(A, Step("B", t("b"), min=2, max=3))) == []  # rows of a step are consecutive


def test_optional() -> None:
    b = Step("B", t("b"), min=0)
    assert ids(log("a c"), pat(A, b, C)) == [{"A": [0], "B": [], "C": [1]}]
    assert ids(log("a b c"), pat(A, b, C)) == [{"A": [0], "B": [1], "C": [2]}]
    # greedy optional prefers present, reluctant absent
    rb = Step("B", t("b"), contiguity=RELAXED, min=0)
    rc = Step("C", t("c"), contiguity=RELAXED)
    assert ids(log("a b c"), pat(A, rb, rc)) == [{"A": [0], "B": [1], "C": [2]}]
    rb_reluctant = Step("B", t("b"), contiguity=RELAXED, min=0, greedy=False)
    assert ids(log("a b c"), pat(A, rb_reluctant, rc)) == [{"A": [0], "B": [], "C": [2]}]
    # an absent step imposes nothing: B's strict contiguity is not used, C follows A relaxed
    assert ids(log("a x c"), pat(A, b, rc)) == [{"A": [0], "B": [], "C": [2]}]
    # absent first step: the next step's first row is the match's first row
    c = Step("C", t("c"))
    assert ids(log("b c"), pat(Step("B", t("b"), min=0), c)) == [{"B": [0], "C": [1]}]
    assert ids(log("x c"), pat(Step("B", t("b"), min=0), c)) == [{"B": [], "C": [1]}]
    # times(2, 3).optional() is {0, 3}: one row is allowed
    assert ids(log("a b c"), pat(A, Step("B", t("b"), min=0, max=3), C)) == [{"A": [0], "B": [1], "C": [2]}]


def test_every_step_optional_is_refused() -> None:
    with pytest.raises(ValueError, match="no row"):
        pat(Step("A", t("a"), min=0), Step("B", t("b"), min=0, max=None))
    with pytest.raises(ValueError, match="within"):
        pat(A, Step("X", t("x"), kind=NOT_FOLLOWED_BY))


def test_not_next() -> None:
    p = pat(A, Step("X", t("x"), kind=NOT_NEXT), Step("B", t("b"), contiguity=RELAXED))
    assert ids(log("a x b"), p) == []
    assert ids(log("a y x b"), p) == [{"A": [0], "B": [3]}]  # only the row just after A counts
    # after a greedy quantifier: backtrack to fewer rows until the next row is not an x
    end = pat(Step("A", t("a"), max=None), Step("X", t("x"), kind=NOT_NEXT))
    assert ids(log("a a x"), end) == [{"A": [0]}]  # from row 1: a then x, no match
    assert ids(log("a"), end) == [{"A": [0]}]  # no next row: it holds


def test_not_next_looks_at_the_next_row_whatever_its_time() -> None:
    # reading: within bounds the rows of the match; the negation's row is not one of them
    p = pat(A, Step("X", t("x"), kind=NOT_NEXT), within=10)
    assert ids(log("a x", times=[0, 50]), p) == []
    assert ids(log("a y", times=[0, 50]), p) == [{"A": [0]}]


def test_not_followed_by_between_steps() -> None:
    p = pat(A, Step("X", t("x"), kind=NOT_FOLLOWED_BY), Step("B", t("b"), contiguity=RELAXED))
    assert ids(log("a y x b"), p) == []
    assert ids(log("a y b x"), p) == [{"A": [0], "B": [2]}]
    anyb = pat(A, Step("X", t("x"), kind=NOT_FOLLOWED_BY), Step("B", t("b"), contiguity=ANY))
    assert ids(log("a b x b"), anyb, "no_skip") == [{"A": [0], "B": [1]}]  # B = 3 has an x between


def test_not_followed_by_at_the_end_with_within() -> None:
    p = pat(A, Step("X", t("x"), kind=NOT_FOLLOWED_BY), within=10)
    assert ids(log("a x", times=[0, 5]), p) == []
    assert ids(log("a x", times=[0, 10]), p) == [{"A": [0]}]  # at match_start + within: not before it
    assert ids(log("a y x", times=[0, 3, 12]), p) == [{"A": [0]}]
    assert ids(log("a", times=[0]), p) == [{"A": [0]}]


SKIP_ROWS = log("a a a b")
A_PLUS = Step("A", t("a"), max=None)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        ("skip_past_last_event", [[0, 1, 2]]),
        ("skip_to_next", [[0, 1, 2], [1, 2], [2]]),
        ("skip_to_first:A", [[0, 1, 2], [1, 2], [2]]),  # A's first row is the match's first: next row
        ("skip_to_last:A", [[0, 1, 2], [2]]),  # then A's last row is the first row: next row (a b)
        ("skip_to_first:B", [[0, 1, 2]]),  # continue at the b: no match from it
        ("no_skip", [[0, 1, 2], [1, 2], [2]]),  # strict B: one way from each row
    ],
)
def test_after_match(after: str, expected: list[list[int]]) -> None:
    assert ids(SKIP_ROWS, pat(A_PLUS, B), after) == [{"A": a, "B": [3]} for a in expected]


def test_no_skip_every_way() -> None:
    p = pat(A_PLUS, Step("B", t("b"), contiguity=RELAXED))
    assert ids(SKIP_ROWS, p, "no_skip") == [{"A": a, "B": [3]} for a in ([0, 1, 2], [0, 1], [0], [1, 2], [1], [2])]
    assert ids(SKIP_ROWS, p) == [{"A": [0, 1, 2], "B": [3]}]


def test_skip_to_a_later_step_and_to_an_absent_one() -> None:
    p = pat(Step("X", t("a", "b")), Step("Y", t("b"), contiguity=RELAXED))
    rows = log("a b b")
    assert ids(rows, p, "skip_to_first:Y") == [{"X": [0], "Y": [1]}, {"X": [1], "Y": [2]}]
    assert ids(rows, p) == [{"X": [0], "Y": [1]}]
    q = pat(Step("X", t("a", "c")), Step("O", t("b"), min=0), Step("C", t("c"), contiguity=RELAXED))
    # O absent: continue at the next row after the match's first
    assert ids(log("a c c"), q, "skip_to_last:O") == [{"X": [0], "O": [], "C": [1]}, {"X": [1], "O": [], "C": [2]}]
    assert ids(log("a c c"), q) == [{"X": [0], "O": [], "C": [1]}]


def test_within() -> None:
    p = pat(A, Step("B", t("b"), contiguity=RELAXED), within=10)
    assert ids(log("a b", times=[0, 10]), p) == []
    assert ids(log("a a b", times=[0, 5, 12]), p) == [{"A": [1], "B": [2]}]
    # a greedy quantifier stops at the bound
    q = pat(A, Step("B", t("b"), max=None), within=10)
    assert ids(log("a b b b", times=[0, 3, 9, 10]), q) == [{"A": [0], "B": [1, 2]}]


def test_rows_per_key_in_time_order_ties_in_arrival_order() -> None:
    p = pat(A, B, C)
    rows = [
        {"k": "x", "ts": 5, "t": "b", "id": 0},
        {"k": "y", "ts": 1, "t": "a", "id": 1},
        {"k": "x", "ts": 1, "t": "a", "id": 2},
        {"k": "y", "ts": 1, "t": "b", "id": 3},
        {"k": "x", "ts": 5, "t": "c", "id": 4},
        {"k": "y", "ts": 2, "t": "c", "id": 5},
    ]
    assert ids(rows, p) == [{"A": [2], "B": [0], "C": [4]}, {"A": [1], "B": [3], "C": [5]}]
    swapped = [rows[4], *rows[:4], rows[5]]  # key x's c@5 now arrives before its b@5
    assert ids(swapped, p) == [{"A": [1], "B": [3], "C": [5]}]


def test_python_conditions_see_the_match_so_far() -> None:
    seen: list[tuple[str, dict[str, list[int]]]] = []

    def rising(e: Row, m: dict[str, list[Row]]) -> bool:
        seen.append(("A", {k: [r["id"] for r in v] for k, v in m.items()}))
        return not m["A"] or e["v"] > m["A"][-1]["v"]

    p = pat(Step("A", rising, max=None))
    assert ids(log("a a a a", vs=[1, 2, 3, 2]), p) == [{"A": [0, 1, 2]}, {"A": [3]}]
    assert seen[:4] == [("A", {"A": []}), ("A", {"A": [0]}), ("A", {"A": [0, 1]}), ("A", {"A": [0, 1, 2]})]

    bigger = Step("B", lambda e, m: e["v"] > m["A"][-1]["v"], contiguity=RELAXED)
    assert ids(log("a a a", vs=[3, 1, 5]), pat(Step("A"), bigger)) == [{"A": [0], "B": [2]}]

    def same_v(e: Row, m: dict[str, list[Row]]) -> bool:
        assert set(m) == {"A"}  # a negation sees the positive steps before it
        return e["v"] == m["A"][0]["v"]

    q = pat(A, Step("X", same_v, kind=NOT_FOLLOWED_BY), Step("B", t("b"), contiguity=RELAXED))
    assert ids(log("a c b", vs=[1, 1, 0]), q) == []
    assert ids(log("a c b", vs=[1, 2, 0]), q) == [{"A": [0], "B": [2]}]


def test_timed_out() -> None:
    p = pat(A, Step("B", t("b"), contiguity=RELAXED), within=10)
    [got] = reference_timed_out(log("a c x", times=[0, 3, 20]), p)
    assert (got["match_start"], [r["id"] for r in got["A"]], got["B"]) == (0, [0], [])
    assert len(reference_timed_out(log("a", times=[0]), p)) == 1  # still open at the end of input
    assert reference_timed_out(log("a c x", times=[0, 3, 20]), pat(A, Step("B", t("b"), contiguity=RELAXED))) == []
    q = pat(A, Step("B", t("b"), min=2, max=2), within=10)
    [got] = reference_timed_out(log("a b c", times=[0, 1, 20]), q)
    assert [r["id"] for r in got["B"]] == [1]  # the next b could only come at or after the bound
    assert reference_timed_out(log("a b c", times=[0, 1, 2]), q) == []  # the c ended the attempt
    assert reference_timed_out(log("a b", times=[0, 10]), pat(A, STRICT_B, within=10)) == [
        {"k": "x", "match_start": 0, "match_end": 0, "A": [log("a")[0]], "B": []}
    ]


STRICT_B = Step("B", t("b"), contiguity=STRICT)


def test_timed_out_around_a_not_next_past_the_bound() -> None:
    # reading: a not_next whose row is at or past match_start + within was not known when the
    # watermark reached the bound; a way that still needs rows after it was cut short by within
    nn = Step("X", t("b"), kind=NOT_NEXT)
    p = pat(Step("A"), nn, Step("B"), within=3)
    got = reference_timed_out(log("a b", times=[100, 103]), p)
    assert [(m["match_start"], [r["id"] for r in m["A"]]) for m in got] == [(100, [0]), (103, [1])]
    # ... but a way complete except for that not_next outlives the bound (the engine waits for the
    # row): when the row fails it, the attempt was not cut short by within. Row 0: B=[1] then the
    # b at the bound fails the not_next (B=[1, 2] would be past the bound): nothing timed out.
    q = pat(Step("A"), Step("B", min=1, max=2), nn, within=3)
    got = reference_timed_out(log("a a b", times=[100, 100, 103]), q)
    assert [[r["id"] for r in m["A"]] for m in got] == [[1], [2]]
    assert reference_matches(log("a a b", times=[100, 100, 103]), q) == []
