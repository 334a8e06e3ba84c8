"""Durations, watermarks, window geometry, clocks."""

from __future__ import annotations

from datetime import timedelta

import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rheon as rh
from rheon.core.batch import MIN_WM
from rheon.core.durations import to_ms
from rheon.time.watermarks import WatermarkTracker
from rheon.time.windows import PaneGeometry, Sliding, Tumbling


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("250ms", 250),
        ("2s", 2000),
        ("1m", 60_000),
        ("1h", 3_600_000),
        ("1d", 86_400_000),
        ("1m30s", 90_000),
        ("1.5s", 1500),
        ("0s", 0),
    ],
)
def test_durations(text, ms):
    assert to_ms(text, what="x") == ms
    assert to_ms(timedelta(milliseconds=ms), what="x") == ms


def test_fractional_millisecond_is_rejected():
    with pytest.raises(rh.FlowError, match="finer than a millisecond"):
        to_ms("1.5ms", what="x")


@given(st.lists(st.integers(-(10**6), 10**6), max_size=50), st.integers(0, 1000), st.integers(1, 10))
def test_per_record_watermark_matches_a_running_max(ts, delay, split):
    """Watermarks before each record: whatever the batch split, the same as a record-by-record loop."""
    tracker = WatermarkTracker(delay)
    got: list[int] = []
    for i in range(0, len(ts), split):
        got.extend(tracker.assign(pl.Series(ts[i : i + split], dtype=pl.Int64)).to_list())
    expected, top = [], None
    for t in ts:
        expected.append(MIN_WM if top is None else top - delay)
        top = t if top is None else max(top, t)
    assert got == expected


@given(size=st.integers(1, 50), every=st.integers(1, 50), offset=st.integers(0, 49), t=st.integers(-500, 500))
def test_pane_geometry_lists_exactly_the_windows_holding_a_time(size, every, offset, t):
    if every > size:
        every = size
    offset %= every
    geo = PaneGeometry.of(Sliding(size, every, offset), ticks_per_ms=1)
    df = pl.DataFrame({"t": [t]}).with_columns(p=geo.pane_start(pl.col("t")))
    p = df["p"][0]
    first = df.select(geo.first_start(pl.col("p"))).item()
    last = df.select(geo.last_start(pl.col("p"))).item()
    brute = [s for s in range(t - size - every, t + every + 1) if (s - offset) % every == 0 and s <= t < s + size]
    assert list(range(first, last + 1, every)) == brute
    assert p <= t < p + geo.pane


def test_tumbling_offset_shifts_windows():
    flow = rh.Flow("offset")
    out = rh.io.Collect()
    flow.source(rh.io.Records([{"ts": 100}, {"ts": 1_400}]), time="ts").window(rh.tumbling("1s", offset="500ms")).agg(
        n=rh.count()
    ).sink(out)
    flow.run()
    assert [(r["window_start"], r["window_end"], r["n"]) for r in out.rows] == [(-500, 500, 1), (500, 1500, 1)]
    assert PaneGeometry.of(Tumbling(1000, 500), ticks_per_ms=1000).pane == 1_000_000


@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 1000)), max_size=60),
    st.integers(0, 50),
    st.integers(1, 10),
    st.sets(st.sampled_from("abc")),
)
def test_split_watermarks_match_a_record_by_record_model(events, delay, split_size, registered):
    """Per-partition watermarks: min over splits that have data (or were registered), per record."""
    from rheon.time.watermarks import SplitWatermarks

    tracker = SplitWatermarks(delay)
    for s in sorted(registered):
        tracker.add(s, 0)
    got: list[int] = []
    for i in range(0, len(events), split_size):
        chunk = events[i : i + split_size]
        got += tracker.assign(
            pl.Series([t for _, t in chunk], dtype=pl.Int64), pl.Series([s for s, _ in chunk]), 0
        ).to_list()
    tops: dict[str, int | None] = dict.fromkeys(registered)
    expected = []
    for split, t in events:
        known = list(tops.values())
        if not known or any(v is None for v in known):
            expected.append(MIN_WM)
        else:
            expected.append(max(min(v for v in known if v is not None) - delay, MIN_WM))
        tops[split] = t if tops.get(split) is None else max(tops[split], t)  # type: ignore[type-var]
    assert got == expected
