"""``rh.approx_count_distinct`` (HyperLogLog) and ``rh.approx_quantile`` (DDSketch): their error
bounds on large inputs, the same result at any batching (merging sketches is exact), bounded
size, and ``where=``."""

from __future__ import annotations

import math
import random

import numpy as np
import polars as pl
import pytest

import rheon as rh
from tests.reference import quantile


def _run(frame: pl.DataFrame, window, batch_size: int = 100_000, **aggs) -> list[dict]:
    flow = rh.Flow("sketch")
    out = rh.io.Collect()
    src = flow.source(rh.io.Records(frame, batch_size=batch_size), time="ts", max_delay="0ms")
    src.key_by("k").window(window).agg(**aggs).sink(out)
    flow.run()
    return out.rows


def test_a_million_distinct_values_are_counted_within_two_percent():
    n = 1_000_000
    rng = np.random.default_rng(1)
    frame = pl.DataFrame(
        {"k": np.zeros(n, dtype=np.int64), "ts": np.arange(n, dtype=np.int64) // 10, "u": rng.permutation(n)}
    )
    (row,) = _run(frame, rh.tumbling("1d"), approx=rh.approx_count_distinct("u"))
    assert abs(row["approx"] - n) / n < 0.02  # 0.81 % standard error: 2 % is 2.5 of them


def test_the_standard_error_is_about_one_percent():
    # 300 windows of 20,000 distinct values (each window's values its own): the spread of the
    # relative errors is the sketch's standard error
    per_window, windows = 20_000, 300
    n = per_window * windows
    frame = pl.DataFrame(
        {
            "k": np.zeros(n, dtype=np.int64),
            "ts": np.arange(n, dtype=np.int64) // per_window * 1000,
            "u": np.arange(n) * 7919,
        }
    )
    rows = _run(frame, rh.tumbling("1s"), batch_size=1_000_000, approx=rh.approx_count_distinct("u"))
    assert len(rows) == windows
    errors = np.array([r["approx"] / per_window - 1 for r in rows])
    rms = math.sqrt(float(np.mean(errors**2)))
    assert 0.004 < rms < 0.012, rms
    assert abs(float(np.mean(errors))) < 0.003  # no bias worth the name


def test_small_counts_are_exact_or_nearly():
    rows = [{"k": 1, "ts": 0, "u": f"user-{i}"} for i in range(50)] + [{"k": 2, "ts": 0, "u": None}]
    frame = pl.DataFrame(rows)
    out = _run(frame, rh.tumbling("1s"), users=rh.approx_count_distinct("u"), n=rh.count())
    assert [(r["k"], r["users"]) for r in out] == [(1, 50), (2, 0)]


@pytest.mark.parametrize("n", [600, pytest.param(3000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("window", [rh.tumbling("100ms"), rh.sliding("300ms", every="100ms"), rh.session(gap="20ms")])
def test_sketches_give_the_same_result_at_any_batching(window, n):
    rnd = random.Random(4)
    rows = [
        {
            "k": rnd.randrange(3),
            "ts": i * 3 + rnd.randrange(10),
            "u": rnd.randrange(2000),
            "x": rnd.lognormvariate(0, 2) * rnd.choice([1, 1, -1]) if rnd.random() > 0.05 else None,
            "ok": rnd.random() < 0.7,
        }
        for i in range(n)
    ]
    aggs = {
        "users": rh.approx_count_distinct("u"),
        "ok_users": rh.approx_count_distinct("u", where=rh.col("ok")),
        "p90": rh.approx_quantile("x", 0.9),
        "p10": rh.approx_quantile("x", 0.1, relative_error=0.001, where=rh.col("ok")),
    }
    outputs = []
    for batch_size in (1, 37, 5000):
        flow = rh.Flow("b")
        out = rh.io.Collect()
        src = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay="10ms")
        src.key_by("k").window(window).agg(**aggs).sink(out)
        flow.run()
        outputs.append(out.rows)
    assert len(outputs[0]) > 20
    assert outputs[1] == outputs[0]
    assert outputs[2] == outputs[0]


@pytest.mark.parametrize("relative_error", [0.01, 0.001])
def test_approx_quantile_is_within_its_relative_error_of_the_exact_value(relative_error):
    rng = np.random.default_rng(7)
    n = 200_000
    values = rng.lognormal(0, 3, n) * rng.choice([-1.0, 1.0, 1.0, 1.0], n)
    values[rng.random(n) < 0.01] = 0.0
    frame = pl.DataFrame({"k": rng.integers(0, 4, n), "ts": np.arange(n, dtype=np.int64) // 100, "x": values})
    qs = [0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0]
    aggs = {f"q{i}": rh.approx_quantile("x", q, relative_error=relative_error) for i, q in enumerate(qs)}
    rows = _run(frame, rh.tumbling("1d"), **aggs)
    assert len(rows) == 4
    for row in rows:
        mine = frame.filter(pl.col("k") == row["k"]).get_column("x").to_list()
        for i, q in enumerate(qs):
            exact = quantile(mine, q, "lower")
            assert abs(row[f"q{i}"] - exact) <= relative_error * abs(exact) * (1 + 1e-9), (q, row[f"q{i}"], exact)


def test_the_sketch_keeps_one_entry_per_bucket():
    # values spanning six orders of magnitude at 1 % fall in about 700 buckets, whatever their number
    from rheon.operators.approx import ApproxCountDistinct, ApproxQuantile

    rng = np.random.default_rng(3)
    frame = pl.DataFrame({"g": np.zeros(500_000, dtype=np.int64), "x": 10 ** rng.uniform(0, 6, 500_000)})
    for agg, limit in ((ApproxQuantile("x", 0.5, 0.01), 800), (ApproxCountDistinct("x"), 1 << 14)):
        rows, exprs, post = agg.aggregate(frame, "p")
        grouped = rows.group_by("g").agg(exprs)
        assert post is not None
        sizes = post(grouped).get_column("p").list.len().to_list()
        assert 100 < sizes[0] <= limit


def test_bad_arguments_are_flow_errors():
    with pytest.raises(rh.FlowError, match=r"rh.approx_quantile: q must be a number from 0 to 1 \(got 2\)"):
        rh.approx_quantile("x", 2)
    with pytest.raises(rh.FlowError, match=r"relative_error must be a number from 1e-9 to below 1 \(got 0\)"):
        rh.approx_quantile("x", 0.5, relative_error=0)
    flow = rh.Flow("e")
    windowed = (
        flow.source(rh.io.Records([{"k": 1, "ts": 0, "u": "a"}]), time="ts").key_by("k").window(rh.tumbling("1s"))
    )
    with pytest.raises(rh.FlowError, match=r"column 'u' has type String, expected a number"):
        windowed.agg(q=rh.approx_quantile("u", 0.5))
