"""``KeyedStream.match``: output shape, side outputs, errors, the vectorized pruning, checkpoints."""

from __future__ import annotations

import contextlib
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

import rheon as rh
from rheon import cep
from tests.crash import Crash, crash_at_row


def run(rows, pattern, *, key="card", batch_size=1000, max_delay="2s", **kw):
    flow = rh.Flow("t")
    out, timed_out, late, dead = rh.io.Collect(), rh.io.Collect(), rh.io.Collect(), rh.io.Collect()
    m = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay=max_delay).key_by(key)
    m = m.match(pattern, **kw)
    m.sink(out)
    m.timed_out().sink(timed_out)
    m.late().sink(late)
    flow.dead_letters().sink(dead)
    flow.run()
    return out.rows, timed_out.rows, late.rows, dead.rows


def ids(match: dict, *steps: str) -> list[list[int]]:
    return [[e["id"] for e in match[s]] for s in steps]


BRUTE = cep.begin("fail", rh.col("ok") == 0).times_or_more(3).next("success", rh.col("ok") == 1).within("5m")


def logins(oks: list[int], user: str = "u", start: int = 0) -> list[dict]:
    return [{"id": start + i, "user": user, "ok": ok, "ts": (start + i) * 1000} for i, ok in enumerate(oks)]


# -- output shape ----------------------------------------------------------------------------


def test_a_match_row_has_keys_bounds_and_a_list_of_structs_per_step():
    rows = logins([0, 0, 0, 0, 1, 1])
    out, *_ = run(rows, BRUTE, key="user")
    assert len(out) == 1
    (m,) = out
    assert list(m) == ["user", "match_start", "match_end", "fail", "success"]
    assert (m["user"], m["match_start"], m["match_end"]) == ("u", 0, 4000)
    assert ids(m, "fail", "success") == [[0, 1, 2, 3], [4]]
    assert m["fail"][0] == {"id": 0, "user": "u", "ok": 0, "ts": 0}


def test_step_columns_work_in_a_following_with_columns_and_measures():
    flow = rh.Flow("t")
    out = rh.io.Collect()
    matches = (
        flow.source(rh.io.Records(logins([0, 0, 0, 1])), time="ts")
        .key_by("user")
        .match(BRUTE, measures={"fails": pl.col("fail").list.len()})
    )
    assert matches.schema["fail"] == pl.List(
        pl.Struct({"id": pl.Int64, "user": pl.String, "ok": pl.Int64, "ts": pl.Int64})
    )
    matches.with_columns(first_id=pl.col("fail").list.first().struct.field("id")).sink(out)
    flow.run()
    assert [(r["fails"], r["first_id"]) for r in out.rows] == [(3, 0)]


def test_datetime_time_columns_give_datetime_bounds():
    t0 = datetime(2026, 12, 7, tzinfo=UTC)
    rows = [{"card": "c", "amount": a, "ts": t0 + timedelta(minutes=i)} for i, a in enumerate([0.5, 900.0])]
    p = cep.begin("small", rh.col("amount") < 1).next("big", rh.col("amount") > 500).within("10m")
    out, *_ = run(rows, p)
    assert [(r["match_start"], r["match_end"]) for r in out] == [(t0, t0 + timedelta(minutes=1))]


def test_several_key_columns():
    rows = [
        {"id": i, "bank": b, "card": c, "ok": ok, "ts": i * 1000}
        for i, (b, c, ok) in enumerate([("x", 1, 0), ("y", 1, 0), ("x", 1, 0), ("y", 1, 1), ("x", 1, 0), ("x", 1, 1)])
    ]
    out, *_ = run(rows, BRUTE, key=["bank", "card"])
    assert [(r["bank"], r["card"], ids(r, "fail", "success")) for r in out] == [("x", 1, [[0, 2, 4], [5]])]


def test_integer_keys_give_what_the_same_keys_as_text_give():
    # integer keys are ordered by one packed sort, text keys by two stable sorts
    rng = random.Random(5)
    rows = [
        {
            "id": i,
            "bank": rng.choice([-2, 0, 3]),
            "card": rng.choice([1, 10**12]),
            "ok": rng.choice([0, 0, 1]),
            "ts": i * 300 + rng.randrange(0, 2000),
        }
        for i in range(400)
    ]
    as_text = [{**r, "bank": str(r["bank"]), "card": str(r["card"])} for r in rows]
    for batch_size in (7, 1000):
        ints, *_ = run(rows, BRUTE, key=["bank", "card"], batch_size=batch_size)
        texts, *_ = run(as_text, BRUTE, key=["bank", "card"], batch_size=batch_size)
        assert len(ints) > 5
        got = sorted((str(r["bank"]), str(r["card"]), ids(r, "fail", "success")) for r in ints)
        assert got == sorted((r["bank"], r["card"], ids(r, "fail", "success")) for r in texts)


def test_an_absent_optional_step_is_an_empty_list():
    p = cep.begin("a", rh.col("t") == "a").next("b", rh.col("t") == "b").optional().next("c", rh.col("t") == "c")
    rows = [{"id": i, "card": 1, "t": t, "ts": i} for i, t in enumerate("acabc")]
    out, *_ = run(rows, p)
    assert [ids(r, "a", "b", "c") for r in out] == [[[0], [], [1]], [[2], [3], [4]]]


# -- time, side outputs, bad input -------------------------------------------------------------


def test_events_are_matched_in_event_time_order_whatever_their_arrival_order():
    rows = logins([0, 0, 0, 1])
    shuffled = [rows[2], rows[0], rows[3], rows[1]]  # within max_delay
    for batch_size in (1, 2, 100):
        out, _, late, _ = run(shuffled, BRUTE, key="user", batch_size=batch_size)
        assert late == []
        assert [ids(r, "fail", "success") for r in out] == [[[0, 1, 2], [3]]]


def test_events_behind_an_event_already_released_go_to_late_and_never_into_a_match():
    rows = [*logins([0, 0]), {"id": 9, "user": "u", "ok": 0, "ts": 60_000}, {"id": 2, "user": "u", "ok": 1, "ts": 500}]
    for batch_size in (1, 100):
        out, _, late, _ = run(rows, BRUTE, key="user", max_delay="1s", batch_size=batch_size)
        assert [r["id"] for r in late] == [2]
        assert out == []


def test_an_event_behind_the_watermark_but_ahead_of_every_released_one_takes_its_place():
    rows = [*logins([0, 0]), {"id": 9, "user": "u", "ok": 1, "ts": 60_000}, {"id": 2, "user": "u", "ok": 0, "ts": 2000}]
    for batch_size in (1, 100):
        out, _, late, _ = run(rows, BRUTE, key="user", max_delay="1s", batch_size=batch_size)
        assert late == []
        assert [ids(r, "fail", "success") for r in out] == [[[0, 1, 2], [9]]]


def test_a_pattern_runs_on_the_results_of_a_window():
    rows = [{"host": "h", "cpu": 95 if i < 25 else 50, "ts": i * 10_000} for i in range(40)]
    for batch_size in (1, 1000):
        flow = rh.Flow("w")
        src = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts")
        per_min = src.key_by("host").window(rh.tumbling("1m")).agg(avg=rh.mean("cpu"))
        m = per_min.key_by("host").match(cep.begin("hot", rh.col("avg") > 90).times(3))
        out, late = rh.io.Collect(), rh.io.Collect()
        m.sink(out)
        m.late().sink(late)
        flow.run()
        assert [(r["match_start"], [w["window_start"] for w in r["hot"]]) for r in out.rows] == [
            (0, [0, 60_000, 120_000])
        ]
        assert late.rows == []


def test_timed_out_has_the_steps_matched_so_far_and_is_empty_without_within():
    rows = [{"id": 0, "card": 1, "t": "order", "ts": 0}, {"id": 1, "card": 1, "t": "other", "ts": 60_000}]
    unpaid = cep.begin("order", rh.col("t") == "order").followed_by("paid", rh.col("t") == "payment")
    out, timed_out, _, _ = run(rows, unpaid.within("15m"))
    assert out == []
    assert [(r["card"], r["match_start"], ids(r, "order", "paid")) for r in timed_out] == [(1, 0, [[0], []])]
    _, timed_out, _, _ = run(rows, unpaid)
    assert timed_out == []


def test_not_followed_by_at_the_end_matches_when_within_runs_out():
    unpaid = cep.begin("order", rh.col("t") == "order").not_followed_by("paid", rh.col("t") == "payment").within("15m")
    rows = [
        {"id": 0, "card": 1, "t": "order", "ts": 0},
        {"id": 1, "card": 2, "t": "order", "ts": 0},
        {"id": 3, "card": 3, "t": "order", "ts": 0},
        {"id": 2, "card": 2, "t": "payment", "ts": 60_000},
        {"id": 4, "card": 3, "t": "payment", "ts": 15 * 60_000},  # too late to count
    ]
    out, *_ = run(rows, unpaid)
    assert sorted((r["card"], r["match_end"]) for r in out) == [(1, 0), (3, 0)]


def test_a_python_condition_that_raises_is_a_dead_letter_naming_the_step_and_the_flow_goes_on():
    p = cep.begin("a", rh.col("v") > 0).next("b", lambda e, m: 10 / e["v"] > 1)
    rows = [{"card": 1, "v": v, "ts": i} for i, v in enumerate([1, 0, 1, 2])]
    out, _, _, dead = run(rows, p)
    assert [(r["a"][0]["v"], r["b"][0]["v"]) for r in out] == [(1, 2)]
    assert len(dead) == 1
    assert "match 'match_1', step 'b': condition raised ZeroDivisionError" in dead[0]["reason"]
    assert '"v": 0' in dead[0]["payload"]


def test_a_record_without_event_time_is_a_dead_letter():
    rows = [
        *logins([0, 0, 0]),
        {"id": 5, "user": "u", "ok": 1, "ts": None},
        {"id": 6, "user": "u", "ok": 1, "ts": 4000},
    ]
    out, _, _, dead = run(rows, BRUTE, key="user")
    assert [ids(r, "fail", "success") for r in out] == [[[0, 1, 2], [6]]]
    assert [d["reason"] for d in dead] == ["record has no event time (column 'ts' is null)"]


# -- build-time errors ---------------------------------------------------------------------------


def _stream():
    flow = rh.Flow("e")
    return flow.source(rh.io.Records([{"card": 1, "amount": 1.0, "ts": 0}]), time="ts").key_by("card")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: cep.begin("a").next("a"), r"pattern a: the step name 'a' is used twice"),
        (
            lambda: cep.begin("a").not_next("n", rh.col("x") > 1).times(2),
            r"step 'n': times\(\) cannot apply to a negation",
        ),
        (lambda: cep.begin("a").one_or_more().times(2), r"step 'a': times\(\) on a step that already has a quantifier"),
        (lambda: cep.begin("a").within("0s"), r"pattern a: within must be positive"),
        (lambda: cep.begin("a").times(0), r"times\(0\) needs a count of at least 1"),
        (lambda: cep.begin("a").times(3, 2), r"times\(3, 2\) needs 0 <= n <= m"),
        (lambda: cep.begin("a", "amount > 1"), r"the condition must be a Polars expression"),
        (lambda: cep.begin("no spaces"), r"a step name must be a plain identifier"),
        (lambda: cep.begin("a").not_followed_by("n", None), r"a negation needs a condition"),
    ],
)
def test_pattern_mistakes_are_flow_errors_naming_the_pattern_and_step(build, message):
    with pytest.raises(rh.FlowError, match=message):
        build()


@pytest.mark.parametrize(
    ("pattern", "kw", "message"),
    [
        (
            cep.begin("a", rh.col("amout") > 1),
            {},
            r"match 'match_1', step 'a': unknown column 'amout' in the condition .*Did you mean 'amount'\?",
        ),
        (cep.begin("a").next("b"), {"after_match": "skip_to_first:c"}, r"after_match='skip_to_first:c' names no step"),
        (cep.begin("a"), {"after_match": "skip_everything"}, r"after_match must be one of"),
        (
            cep.begin("a").not_followed_by("n", rh.col("amount") > 1),
            {},
            r"step 'n': a pattern cannot end with not_followed_by unless it has within",
        ),
        (cep.begin("a").optional(), {}, r"every step of the pattern is optional"),
        (cep.begin("card"), {}, r"step 'card': the name clashes with the key column 'card'"),
        (cep.begin("a"), {"measures": {"n": "len(a)"}}, r"measure 'n' must be a Polars expression"),
        (cep.begin("a"), {"measures": {"n": pl.col("nope").list.len()}}, r"a measure does not apply"),
        ("not a pattern", {}, r"expected a pattern built with cep.begin"),
    ],
)
def test_mistakes_against_the_stream_are_flow_errors(pattern, kw, message):
    with pytest.raises(rh.FlowError, match=message):
        _stream().match(pattern, **kw)


def test_match_needs_an_event_time_column():
    flow = rh.Flow("e")
    with pytest.raises(rh.FlowError, match=r"match 'match_1': the stream has no event-time column"):
        flow.source(rh.io.Records([{"card": 1}])).key_by("card").match(cep.begin("a"))


# -- the vectorized pruning is exact ------------------------------------------------------------


def _as_python(pattern: cep.Pattern) -> cep.Pattern:
    """The same pattern with every expression condition as a Python function (no pruning then)."""
    steps = []
    for step in pattern.steps:
        expr = step.condition
        if isinstance(expr, pl.Expr):

            def fn(e, m, expr=expr, seen={}):  # noqa: B006 - a cache: the conditions read only "t"
                key = (str(expr), e["t"])
                if key not in seen:
                    seen[key] = bool(pl.DataFrame([e]).select(expr.fill_null(False)).item())
                return seen[key]

            step = type(step)(
                step.name, fn, step.kind, step.contiguity, step.min, step.max, step.greedy, step.quantified
            )
        steps.append(step)
    return cep.Pattern(tuple(steps), pattern.within_ms)


def _t(x):
    return rh.col("t") == x


PRUNED_PATTERNS = [
    cep.begin("a", _t("a")).next("b", _t("b")).within("5s"),
    cep.begin("a", _t("a")).times_or_more(3).next("b", _t("b")).within("8s"),
    cep.begin("a", _t("a")).times(2, 3).next("b", _t("b")).next("c", _t("c")),
    cep.begin("a", _t("a")).next("b", _t("b")).optional().next("c", _t("c") | _t("a")).within("6s"),
    cep.begin("a", _t("a")).one_or_more().reluctant().next("b", _t("b")).within("4s"),
    cep.begin("a", _t("a")).not_next("n", _t("c")).next("b", _t("b") | _t("a")),
    cep.begin("a", _t("a")).next("b", _t("b")).not_next("n", _t("a")),
    cep.begin("a", _t("a")).followed_by("b", _t("b")).not_followed_by("n", _t("c")).within("7s"),
    cep.begin("a", _t("a")).followed_by_any("b", _t("b")).next("c", _t("c")).within("9s"),
]


@pytest.mark.parametrize("seed", [0, *(pytest.param(s, marks=pytest.mark.slow) for s in (1, 2, 3))])
@pytest.mark.parametrize("index", range(len(PRUNED_PATTERNS)))
@pytest.mark.parametrize("after_match", ["skip_past_last_event", "skip_to_next", "skip_to_last:a", "no_skip"])
def test_pruned_expression_conditions_find_what_python_conditions_find(seed, index, after_match):
    rng = random.Random(seed * 100 + index)
    rows = [
        {"id": i, "card": rng.randrange(4), "t": rng.choice("aaabbcx"), "ts": i * 700 + rng.randrange(1500)}
        for i in range(250)
    ]
    pattern = PRUNED_PATTERNS[index]

    def shape(result):
        out, timed_out, _, _ = result
        return sorted(
            (kind, r["card"], r["match_start"], tuple(tuple(e["id"] for e in r[s]) for s in pattern.names))
            for kind, found in (("match", out), ("timed out", timed_out))
            for r in found
        )

    fast = run(rows, pattern, batch_size=rng.choice([1, 13, 1000]), after_match=after_match)
    slow = run(rows, _as_python(pattern), batch_size=1000, after_match=after_match)
    assert shape(fast) == shape(slow)


# -- checkpoints ---------------------------------------------------------------------------------


def _checkpointed(rows, out_dir: Path, ckpt: Path, crash_after: int | None) -> None:
    flow = rh.Flow("cep-recover")
    src = flow.source(rh.io.Records(rows, batch_size=7), time="ts", max_delay="3s", name="tx")
    m = src.key_by("user").match(BRUTE, name="brute")
    m.select("user", "match_start", "match_end").sink(rh.io.FileSink(out_dir / "matches"), name="out")
    m.timed_out().select("user", "match_start").sink(rh.io.FileSink(out_dir / "timed_out"), name="cut")
    src.sink(crash_at_row(crash_after), name="watch")
    with contextlib.suppress(Crash):
        flow.run(checkpoint_dir=ckpt, checkpoint_every="0s")


def _read(out_dir: Path) -> dict[str, list[tuple]]:
    found = {}
    for part in ("matches", "timed_out"):
        files = sorted((out_dir / part).glob("part-*.jsonl"))
        frame = pl.concat([pl.read_ndjson(f) for f in files]) if files else pl.DataFrame()
        found[part] = sorted(frame.rows())
    return found


def test_a_run_restarted_from_its_checkpoints_matches_like_an_uninterrupted_one(tmp_path):
    rng = random.Random(7)
    rows = [
        {"id": i, "user": f"u{rng.randrange(3)}", "ok": int(rng.random() < 0.4), "ts": i * 20_000 + rng.randrange(2500)}
        for i in range(400)
    ]
    _checkpointed(rows, tmp_path / "straight", tmp_path / "ck0", None)
    expected = _read(tmp_path / "straight")
    assert expected["matches"]
    assert expected["timed_out"]
    ckpt = tmp_path / "ck1"
    for crash_after in (37, 151, 290, None):
        _checkpointed(rows, tmp_path / "crashed", ckpt, crash_after)
    assert _read(tmp_path / "crashed") == expected


def test_a_changed_pattern_on_restore_is_a_clear_error(tmp_path):
    def flow_with(pattern):
        flow = rh.Flow("cep-compat")
        src = flow.source(rh.io.Records(logins([0, 0, 0, 1])), time="ts", name="tx")
        src.key_by("user").match(pattern, name="brute").sink(rh.io.Collect(), name="out")
        return flow

    flow_with(BRUTE).run(checkpoint_dir=tmp_path)
    changed = cep.begin("fail", rh.col("ok") == 0).times_or_more(4).next("success", rh.col("ok") == 1)
    with pytest.raises(rh.FlowError, match=r"match 'brute': its state in checkpoint .* was written by a different"):
        flow_with(changed).run(checkpoint_dir=tmp_path)


def test_a_trailing_not_next_with_within_waits_for_the_next_row_and_does_not_hang():
    rows = [{"card": 1, "t": t, "ts": ts} for t, ts in [("a", 0), ("x", 5000), ("a", 6000), ("b", 9500), ("a", 20_000)]]
    p = cep.begin("a", rh.col("t") == "a").not_next("nb", rh.col("t") == "b").within("3s")
    for batch_size in (1, 1000):
        out, timed_out, _, _ = run(rows, p, batch_size=batch_size)
        assert [r["match_start"] for r in out] == [0, 20_000]
        assert timed_out == []
