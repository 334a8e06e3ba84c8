"""Quantiles, median, variance, standard deviation, first/last, arg_max/arg_min, collect and
``where=``: against the plain-Python
reference (tests/reference.py) for every window kind and batch size, bit for bit across
batchings, through a crash and restore, and their build-time errors."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rheon as rh
from rheon.testing import assert_rows_equal
from tests.crash import Crash, committed, crash_at_row
from tests.reference import reference, run_engine

AGGS = {
    "p50": ("quantile", "v", {"q": 0.5}),
    "p90": ("quantile", "v", {"q": 0.9, "interpolation": "linear"}),
    "plo": ("quantile", "v", {"q": 0.3, "interpolation": "lower"}),
    "phi": ("quantile", "v", {"q": 0.3, "interpolation": "higher"}),
    "pmid": ("quantile", "v", {"q": 0.7, "interpolation": "midpoint"}),
    "peq": ("quantile", "v", {"q": 0.7, "interpolation": "equiprobable"}),
    "fq": ("quantile", "f", {"q": 0.25, "interpolation": "linear"}),
    "med": ("median", "v"),
    "var": ("var", "v"),
    "pvar": ("var", "v", {"ddof": 0}),
    "sd": ("std", "f"),
    "views": ("count", None, {"where": ("u", "a")}),
    "bvals": ("count", "v", {"where": ("u", "b")}),
    "bsum": ("sum", "v", {"where": ("u", "b")}),
    "cmax": ("max", "v", {"where": ("u", "c")}),
    "cmin": ("min", "f", {"where": ("u", "c")}),
    "amean": ("mean", "f", {"where": ("u", "a")}),
    "adist": ("count_distinct", "k2", {"where": ("u", "a")}),
    "amed": ("median", "v", {"where": ("u", "a")}),
    "asd": ("std", "v", {"where": ("u", "a")}),
    "first": ("first", "u"),
    "last": ("last", "v"),
    "afirst": ("first", "f", {"where": ("u", "a")}),
    "path": ("collect", "u"),
    "bvs": ("collect", "v", {"where": ("u", "b")}),
    "top": ("arg_max", "u", {"by": "v"}),
    "low": ("arg_min", "k2", {"by": "v"}),
    "ctop": ("arg_max", "f", {"by": "v", "where": ("u", "c")}),
}

WINDOWS = [("tumbling", 100, 100), ("sliding", 100, 20), ("session", 25, 0)]


def _events(n: int, seed: int) -> list[dict]:
    rnd = random.Random(seed)
    return [
        {
            "k": rnd.randrange(3),
            "ts": max(i * 20 + rnd.randint(-60, 60), 0),
            "v": None if rnd.random() < 0.1 else rnd.randint(-50, 50),
            "f": None if rnd.random() < 0.1 else rnd.uniform(-1, 1) * 10.0 ** rnd.randint(-3, 3),
            "u": rnd.choice([*"abcd", None]),
            "k2": rnd.randrange(4),
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("batch_size", [1, 1000], ids=lambda b: f"batch{b}")  # odd sizes: the test below
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]}{w[1]}-{w[2]}")
def test_new_aggregates_match_the_reference(window, batch_size):
    rows = _events(160, seed=17)
    expected = reference(rows, keys=["k"], time="ts", window=window, aggs=AGGS, max_delay=30, lateness=20)
    got = run_engine(rows, keys=["k"], window=window, aggs=AGGS, max_delay=30, lateness=20, batch_size=batch_size)
    assert len(expected[0]) > 15
    for name in ("views", "bsum", "cmax", "top", "path"):
        assert any(r[name] for r in expected[0]), f"no window has {name}: the data checks less than it claims"
    assert_rows_equal(got[0], expected[0], rel_tol=1e-9)
    assert got[1] == expected[1]


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]}{w[1]}-{w[2]}")
def test_rows_at_the_same_time_are_taken_in_arrival_order(window, batch_size):
    rnd = random.Random(3)
    # five rows per event time, arriving shuffled within max_delay: ties everywhere
    rows = [{"k": i % 2, "ts": (i // 10) * 15, "u": f"r{i}", "v": rnd.randrange(3)} for i in range(300)]
    rows = sorted(rows, key=lambda r: r["ts"] + rnd.randrange(40))
    aggs = {
        "first": ("first", "u"),
        "last": ("last", "u"),
        "path": ("collect", "u"),
        "top": ("arg_max", "u", {"by": "v"}),
        "low": ("arg_min", "u", {"by": "v"}),
    }
    expected = reference(rows, keys=["k"], time="ts", window=window, aggs=aggs, max_delay=40)
    got = run_engine(rows, keys=["k"], window=window, aggs=aggs, max_delay=40, batch_size=batch_size)
    assert not expected[1]
    assert got == expected


@pytest.mark.parametrize("n", [120, pytest.param(600, marks=pytest.mark.slow)])
@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]}{w[1]}-{w[2]}")
def test_new_aggregates_give_the_same_bits_at_any_batch_size(window, n):
    rows = _events(n, seed=5)
    outputs = [
        run_engine(rows, keys=["k"], window=window, aggs=AGGS, max_delay=30, lateness=20, batch_size=b)
        for b in (13, 1000)  # the reference test above runs batches of 1
    ]
    assert outputs[0][0]
    for got in outputs[1:]:
        assert got == outputs[0]


event = st.fixed_dictionaries(
    {
        "k": st.integers(0, 2),
        "ts": st.integers(0, 400),
        "v": st.one_of(st.none(), st.integers(-5, 5)),
        "f": st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False)),
        "u": st.sampled_from(["a", "b", "c", None]),
        "k2": st.integers(0, 3),
    }
)
window_spec = st.one_of(
    st.integers(1, 80).map(lambda s: ("tumbling", s, s)),
    st.tuples(st.integers(1, 20), st.integers(1, 5)).map(lambda p: ("sliding", p[0] * p[1], p[0])),
    st.integers(1, 60).map(lambda g: ("session", g, 0)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(event, max_size=50),
    window=window_spec,
    max_delay=st.integers(0, 50),
    q=st.floats(0, 1),
    interpolation=st.sampled_from(["nearest", "higher", "lower", "midpoint", "linear", "equiprobable"]),
    batches=st.lists(st.integers(1, 25), min_size=2, max_size=2),
)
def test_property_quantiles_and_filters_at_any_batching(rows, window, max_delay, q, interpolation, batches):
    aggs = {
        "q": ("quantile", "v", {"q": q, "interpolation": interpolation}),
        "fq": ("quantile", "f", {"q": q, "interpolation": interpolation, "where": ("u", "a")}),
        "var": ("var", "f"),
        "n": ("count", None, {"where": ("u", "b")}),
        "s": ("sum", "v", {"where": ("u", "c")}),
        "first": ("first", "v"),
        "last": ("last", "u"),
        "all": ("collect", "f"),
        "top": ("arg_max", "u", {"by": "v"}),
    }
    expected = reference(rows, keys=["k"], time="ts", window=window, aggs=aggs, max_delay=max_delay)
    outputs = [
        run_engine(rows, keys=["k"], window=window, aggs=aggs, max_delay=max_delay, batch_size=b)
        for b in [*batches, len(rows) or 1]
    ]
    for got in outputs:
        assert got == outputs[0]
    assert_rows_equal(outputs[0][0], expected[0], rel_tol=1e-9, abs_tol=1e-9)
    assert outputs[0][1] == expected[1]


# -- through a crash ----------------------------------------------------------------------------


def _flow(rows: list[dict], out: Path, crash_after: int | None = None) -> rh.Flow:
    flow = rh.Flow("aggregates")
    src = flow.source(rh.io.Records(rows, batch_size=20), time="ts", max_delay="60ms")
    result = (
        src.key_by("k")
        .window(rh.sliding("200ms", every="50ms"))
        .agg(
            p90=rh.quantile("v", 0.9, "linear"),
            med=rh.median("f"),
            sd=rh.std("f"),
            views=rh.count(where=rh.col("u") == "a"),
            bsum=rh.sum("v", where=rh.col("u") == "b"),
            first=rh.first("u"),
            top=rh.arg_max("k2", by="v"),
            path=rh.collect("v"),
        )
    )
    result.sink(rh.io.FileSink(out), name="out")
    result.sink(crash_at_row(crash_after), name="watch")
    return flow


@pytest.mark.parametrize("crash_after", [3, 70])
def test_a_crash_and_restore_gives_the_uninterrupted_output(tmp_path, crash_after):
    rows = _events(500, seed=23)
    _flow(rows, tmp_path / "reference").run()
    expected = committed(tmp_path / "reference")
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(Crash):
        _flow(rows, out, crash_after).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    _flow(rows, out).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    assert len(expected) > 100
    assert committed(out) == expected


def test_a_changed_where_is_refused_on_restore(tmp_path):
    rows = [{"k": 1, "ts": i, "u": "a"} for i in range(10)]

    def build(value: str) -> rh.Flow:
        flow = rh.Flow("w")
        src = flow.source(rh.io.Records(rows, batch_size=3), time="ts")
        src.key_by("k").window(rh.tumbling("1s"), name="w").agg(n=rh.count(where=rh.col("u") == value)).sink(
            rh.io.Collect()
        )
        return flow

    build("a").run(checkpoint_dir=tmp_path, checkpoint_every="0ms")
    with pytest.raises(rh.FlowError, match=r"written by a different operator.*where="):
        build("b").run(checkpoint_dir=tmp_path)


# -- errors -------------------------------------------------------------------------------------


def _windowed() -> rh.WindowedStream:
    flow = rh.Flow("e")
    rows = [{"k": 1, "ts": 0, "v": 1.0, "u": "a"}]
    return flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling("1s"))


def test_where_naming_an_unknown_column_is_a_flow_error():
    with pytest.raises(
        rh.FlowError,
        match=r"aggregation 'n'.*where= reads unknown column 'uu' \(columns: k, ts, v, u\)\. Did you mean 'u'",
    ):
        _windowed().agg(n=rh.count(where=rh.col("uu") == "view"))


def test_where_that_is_not_true_or_false_is_a_flow_error():
    with pytest.raises(
        rh.FlowError, match=r"aggregation 's'.*where= must be true or false per row \(it gives Float64\)"
    ):
        _windowed().agg(s=rh.sum("v", where=rh.col("v") * 2))


def test_where_comparing_text_with_a_number_is_a_flow_error():
    with pytest.raises(rh.FlowError, match=r"aggregation 'n'.*where= cannot be evaluated"):
        _windowed().agg(n=rh.count(where=rh.col("u") > 3))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: rh.quantile("v", 1.5), r"rh.quantile: q must be a number from 0 to 1 \(got 1.5\)"),
        (lambda: rh.quantile("v", 0.5, "cubic"), r"interpolation must be one of .* \(got 'cubic'\)"),
        (lambda: rh.var("v", ddof=-1), r"rh.var: ddof must be a whole number >= 0 \(got -1\)"),
        (lambda: rh.median(3), r"rh.median: expected a column name \(got 3\)"),
    ],
)
def test_bad_arguments_are_flow_errors(make, message):
    with pytest.raises(rh.FlowError, match=message):
        make()


def test_quantile_of_text_is_a_flow_error():
    with pytest.raises(rh.FlowError, match=r"column 'u' has type String, expected a number"):
        _windowed().agg(q=rh.quantile("u", 0.5))


def test_arg_max_needs_an_existing_by_column():
    with pytest.raises(rh.FlowError, match=r"aggregation 'a'.*unknown column 'vv' in by=.*Did you mean 'v'"):
        _windowed().agg(a=rh.arg_max("u", by="vv"))
    with pytest.raises(rh.FlowError, match=r"rh.arg_max: by= must name the column to compare \(got 3\)"):
        rh.arg_max("u", by=3)


def test_reprs_show_the_arguments():
    assert repr(rh.quantile("v", 0.95, "linear")) == "rh.quantile('v', 0.95, interpolation='linear')"
    assert repr(rh.median("v")) == "rh.median('v')"
    assert repr(rh.std("v", ddof=0)) == "rh.std('v', ddof=0)"
    assert repr(rh.count(where=rh.col("u") == "a")) == 'rh.count(where=[(col("u")) == ("a")])'
    assert repr(rh.arg_max("host", by="cpu")) == "rh.arg_max('host', by='cpu')"
