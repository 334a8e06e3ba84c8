"""Exact float sums: the same bits whatever the split into batches, within an ulp of math.fsum."""

from __future__ import annotations

import itertools
import math

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rheon as rh
from rheon.operators import exactsum
from rheon.testing import collect

COLUMNS = ["p_q", "p_q1", "p_q2", "p_lo", "p_hi", "p_n", "p_x"]


def _total(values: list[float | None], cuts: list[int], *, general: bool = False) -> float | None:
    """Sum ``values`` split at ``cuts`` into batches, each batch through the path it would take."""
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(values)}), len(values)]
    parts = []
    for a, b in itertools.pairwise(bounds):
        frame = pl.DataFrame({"v": values[a:b]}, schema={"v": pl.Float64})
        if general:
            parts.append(exactsum.prepare(frame, "v", "p").select(exactsum.partials("v", "p")))
            continue
        frame, exprs, post = exactsum.plan(frame, "v", "p")
        part = frame.select(exprs)
        parts.append((post(part) if post else part).select(COLUMNS))
    return pl.concat(parts).select(exactsum.merges("p")).select(exactsum.final("p")).item()


magnitude = st.floats(0.5, 1) | st.floats(-1, -0.5)
# Values whose magnitudes lie within 2**80 of each other (the exact range is 2**88), and zeros.
value = st.just(0.0) | st.builds(lambda m, e: math.ldexp(m, e), magnitude, st.integers(-200, -121))
shifted = st.integers(-1000, 900)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(value, min_size=1, max_size=40),
    offset=shifted,
    cuts=st.lists(st.integers(0, 40), max_size=6),
)
def test_any_split_gives_the_same_bits(values, offset, cuts):
    values = [math.ldexp(v, offset + 160) for v in values]  # anywhere in the float range
    if any(math.isinf(v) for v in values) or any(v != 0 and abs(v) < 2.0**-1022 for v in values):
        return  # overflowed or subnormal after shifting: not what this test is about
    whole = _total(values, [])
    assert _total(values, cuts) == whole  # bit for bit, whatever the split
    assert _total(values, cuts, general=True) == whole
    exact = math.fsum(values)
    assert whole is not None
    assert abs(whole - exact) <= math.ulp(exact)  # faithfully rounded


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1e20, 1.0, -1e20], 1.0),  # naive float addition gives 0.0
        ([0.1] * 10, 1.0),
        ([1e300, 1.7e308, -1.7e308], 1e300),
        ([5e-324, 5e-324, 1e-310], 1e-310 + 1e-323),  # subnormals
        ([0.0, -0.0], 0.0),
        ([1.5, math.inf, 2.0], math.inf),
        ([math.inf, -math.inf], math.nan),
        ([math.nan, 1.0], math.nan),
        ([None, None], None),
        ([None, 2.5], 2.5),
    ],
)
def test_edge_values(values, expected):
    for cuts in ([], [1], [1, 2]):
        got = _total(values, cuts)
        if expected is not None and math.isnan(expected):
            assert got is not None
            assert math.isnan(got)
        else:
            assert got == expected


def test_window_sum_of_float32_and_mean_of_ints():
    rows = pl.DataFrame({"ts": [1, 2, 3], "f": [0.1, 0.2, 0.3], "i": [1, 2, 4]}).with_columns(
        pl.col("f").cast(pl.Float32)
    )
    for batch_size in (1, 3):
        flow = rh.Flow("types")
        src = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts")
        out = collect(src.window(rh.tumbling("10ms")).agg(s=rh.sum("f"), m=rh.mean("i")))
        flow.run()
        assert out.rows[0]["s"] == pytest.approx(0.6, rel=1e-7)
        assert out.to_polars().schema["s"] == pl.Float32
        assert out.rows[0]["m"] == 7 / 3
