"""Window results against the plain-Python reference, at several batch sizes."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rheon.testing import assert_rows_equal
from tests.reference import reference, run_engine

AGGS = {
    "n": ("count", None),
    "nv": ("count", "v"),
    "total": ("sum", "v"),
    "lo": ("min", "v"),
    "hi": ("max", "v"),
    "avg": ("mean", "v"),
    "users": ("count_distinct", "u"),
}


def _events(n: int, seed: int, *, keys: int = 3, spread: int = 200, jitter: int = 60, nulls: bool = True) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        ts = i * spread // 10 + rnd.randint(-jitter, jitter)
        rows.append(
            {
                "k": rnd.randrange(keys),
                "ts": max(ts, 0),
                "v": None if nulls and rnd.random() < 0.1 else rnd.randint(-50, 50),
                "u": rnd.choice("abcde"),
            }
        )
    return rows


WINDOWS = [
    ("tumbling", 100, 100),
    ("sliding", 100, 20),
    ("sliding", 90, 60),
    ("session", 25, 0),
]


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]}{w[1]}-{w[2]}")
@pytest.mark.parametrize("lateness", [0, 50])
def test_matches_reference(window, lateness, batch_size):
    rows = _events(400, seed=7)
    expected = reference(rows, keys=["k"], time="ts", window=window, aggs=AGGS, max_delay=30, lateness=lateness)
    got = run_engine(rows, keys=["k"], window=window, aggs=AGGS, max_delay=30, lateness=lateness, batch_size=batch_size)
    assert got[0] == expected[0]
    assert got[1] == expected[1]
    behind, top = 0, -1
    for r in rows:
        behind += r["ts"] < top - 30
        top = max(top, r["ts"])
    assert behind > 20, "the data must reach behind the watermark, or this test checks less than it claims"
    if window[0] == "tumbling" and lateness == 0:
        assert expected[1], "tumbling windows over this data must see late events"


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]}{w[1]}-{w[2]}")
def test_global_window_and_two_keys(window, batch_size, pane_state):
    rows = _events(300, seed=3)
    for keys in ([], ["k", "u"]):
        expected = reference(rows, keys=keys, time="ts", window=window, aggs={"n": ("count", None)}, max_delay=40)
        got = run_engine(
            rows, keys=keys, window=window, aggs={"n": ("count", None)}, max_delay=40, batch_size=batch_size
        )
        assert got == expected


event = st.fixed_dictionaries(
    {
        "k": st.integers(0, 2),
        "ts": st.integers(0, 400),
        "v": st.one_of(st.none(), st.integers(-5, 5)),
        "u": st.sampled_from("xyz"),
        # Floats whose magnitudes lie within 1e12 of each other (and zeros): sums of these are
        # exact, so bit-identical at any batching (docs: rheon.operators.exactsum).
        "f": st.one_of(
            st.none(),
            st.just(0.0),
            st.builds(lambda m, e: m * 10.0**e, st.floats(0.1, 1) | st.floats(-1, -0.1), st.integers(-6, 5)),
        ),
    }
)
window_spec = st.one_of(
    st.integers(1, 80).map(lambda s: ("tumbling", s, s)),
    st.tuples(st.integers(1, 20), st.integers(1, 5)).map(lambda p: ("sliding", p[0] * p[1], p[0])),
    st.integers(1, 60).map(lambda g: ("session", g, 0)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(event, max_size=60),
    window=window_spec,
    max_delay=st.integers(0, 50),
    lateness=st.sampled_from([0, 0, 10, 40]),
    batches=st.lists(st.integers(1, 25), min_size=2, max_size=2),
)
def test_property_any_batching_gives_reference_output(rows, window, max_delay, lateness, batches):
    """Random events, windows, delays and lateness: every batch size gives the reference's rows."""
    aggs = {
        "n": ("count", None),
        "total": ("sum", "v"),
        "hi": ("max", "v"),
        "d": ("count_distinct", "u"),
        "fsum": ("sum", "f"),
        "favg": ("mean", "f"),
    }
    expected = reference(rows, keys=["k"], time="ts", window=window, aggs=aggs, max_delay=max_delay, lateness=lateness)
    outputs = [
        run_engine(rows, keys=["k"], window=window, aggs=aggs, max_delay=max_delay, lateness=lateness, batch_size=b)
        for b in [*batches, len(rows) or 1]
    ]
    for got in outputs:
        assert got == outputs[0]  # bit for bit, floats included
    # The reference sums floats with math.fsum (correctly rounded); rheon's exact sums are
    # faithfully rounded: the same, or one unit in the last place away in rare cases.
    assert_rows_equal(outputs[0][0], expected[0], rel_tol=1e-15)
    assert outputs[0][1] == expected[1]


@pytest.mark.parametrize("window", WINDOWS, ids=lambda w: f"{w[0]}{w[1]}-{w[2]}")
def test_float_sums_are_bit_identical_at_any_batch_size(window, pane_state):
    """Float sums and means are added exactly: every batching gives the same bits, within one
    unit in the last place of math.fsum (the exact sum, correctly rounded)."""
    if window[0] == "session" and pane_state == "frame":
        pytest.skip("sessions have one form of state: the arrays run covers them")
    rnd = random.Random(11)
    rows = [
        {
            "k": rnd.randrange(3),
            "ts": max(i * 7 + rnd.randint(-30, 30), 0),
            "v": rnd.uniform(-1, 1) * 10.0 ** rnd.randint(-6, 6),
        }
        for i in range(300)
    ]
    aggs = {"total": ("sum", "v"), "avg": ("mean", "v"), "hi": ("max", "v"), "n": ("count", None)}
    expected = reference(rows, keys=["k"], time="ts", window=window, aggs=aggs, max_delay=20, lateness=25)
    outputs = [
        run_engine(rows, keys=["k"], window=window, aggs=aggs, max_delay=20, lateness=25, batch_size=b)
        for b in (1, 7, 1000)
    ]
    for got in outputs:
        assert got == outputs[0]
    assert_rows_equal(outputs[0][0], expected[0], rel_tol=1e-15)
    assert outputs[0][1] == expected[1]


@pytest.mark.parametrize("keys", [[], ["k"], ["k", "u"]], ids=["global", "key", "two-keys"])
def test_sessions_with_null_keys_and_times_too_far_apart_to_pack(keys, batch_size):
    """Sessions are found by laying each key's intervals end to end on one Int64 line; keys with
    nulls are ranked instead of packed, and times 2**61 ms apart do not fit on one line at all
    (each key then takes a running maximum of its own): all three give the reference's rows."""
    rnd = random.Random(11)
    rows = []
    for i in range(300):
        far = (2**61) if i % 2 else 0
        k = rnd.choice([0, 1, None])
        rows.append({"k": k, "u": rnd.choice("ab"), "ts": far + i * 4 + rnd.randint(-30, 30) + 40, "v": i})
    aggs = {"n": ("count", None), "total": ("sum", "v")}
    delay = 2**61 + 1_000
    expected = reference(rows, keys=keys, time="ts", window=("session", 25, 0), aggs=aggs, max_delay=delay)
    got = run_engine(rows, keys=keys, window=("session", 25, 0), aggs=aggs, max_delay=delay, batch_size=batch_size)
    assert got == expected
    assert len(expected[0]) > 10
    assert any(r.get("k", 0) is None for r in expected[0]) == bool(keys)


ADDITIVE = {
    "n": ("count", None),
    "nv": ("count", "v"),
    "total": ("sum", "v"),
    "fsum": ("sum", "f"),
    "favg": ("mean", "f"),
}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(event, max_size=80),
    shape=st.tuples(st.integers(1, 20), st.integers(2, 6)),
    max_delay=st.integers(0, 50),
    lateness=st.sampled_from([0, 0, 25]),
    batch=st.integers(1, 25),
)
def test_property_sliding_windows_by_running_sums(rows, shape, max_delay, lateness, batch):
    """Sliding windows whose aggregations all merge by addition are merged as differences of
    running sums over the panes, keys laid end to end (string keys ranked): the reference's
    rows at any batching."""
    window = ("sliding", shape[0] * shape[1], shape[0])
    kw = {"keys": ["k", "u"], "window": window, "aggs": ADDITIVE, "max_delay": max_delay, "lateness": lateness}
    expected = reference(rows, time="ts", **kw)
    outputs = [run_engine(rows, batch_size=b, **kw) for b in (batch, len(rows) or 1)]
    assert outputs[0] == outputs[1]
    assert_rows_equal(outputs[0][0], expected[0], rel_tol=1e-15)
    assert outputs[0][1] == expected[1]


def test_sliding_windows_take_the_running_sums_unless_sparse_in_time(monkeypatch):
    """The running-sum merge is taken for dense data and declined (falling back to copying panes
    into windows) when a key's panes are far apart in time; both give the reference's rows."""
    from rheon.operators.window.panes import PaneWindowOperator

    taken: list[bool] = []
    running = PaneWindowOperator._running_windows

    def spy(self, panes, lo, hi):
        out = running(self, panes, lo, hi)
        taken.append(out is not None)
        return out

    monkeypatch.setattr(PaneWindowOperator, "_running_windows", spy)
    monkeypatch.setattr(PaneWindowOperator, "ARRAYS", False)  # (the arrays merge panes by themselves)
    dense = _events(400, seed=5, nulls=False)
    sparse = [{**r, "ts": r["ts"] + (i % 5) * 1_000_000} for i, r in enumerate(_events(60, seed=6, nulls=False))]
    for rows, used in ((dense, True), (sparse, False)):
        taken.clear()
        kw = {"keys": ["k"], "window": ("sliding", 100, 20), "aggs": COUNT_AND_SUM_INT, "max_delay": 2_000_000}
        assert run_engine(rows, batch_size=1000, **kw) == reference(rows, time="ts", **kw)
        assert any(taken) is used
        assert taken


COUNT_AND_SUM_INT = {"n": ("count", None), "total": ("sum", "v")}
