"""Joins against brute-force references."""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

import rheon as rh
from rheon.core.batch import Batch
from rheon.operators.join.interval import IntervalJoin
from rheon.testing import collect
from tests.crash import Crash, committed, committed_parts, crash_at_row


def _sides(seed: int, n: int = 150, keys: int = 3, spread: int = 100, jitter: int = 50):
    rnd = random.Random(seed)
    left = [{"k": rnd.randrange(keys), "a": i, "ts": i * spread + rnd.randrange(jitter)} for i in range(n)]
    right = [{"k": rnd.randrange(keys), "b": i, "ts": i * spread + rnd.randrange(jitter)} for i in range(n)]
    return left, right


def _as_counter(rows):
    return Counter(tuple(sorted(r.items(), key=lambda kv: kv[0])) for r in rows)


def _two_sources(left, right, batch_size):
    flow = rh.Flow("join")
    a = flow.source(rh.io.Records(left, batch_size=batch_size), time="ts", max_delay="10s", name="left")
    b = flow.source(rh.io.Records(right, batch_size=batch_size), time="ts", max_delay="10s", name="right")
    return flow, a, b


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("bounds", [(-200, 200), (0, 500), (-300, -100)])
def test_interval_join_finds_every_pair(how, bounds, batch_size):
    left, right = _sides(1)
    flow, a, b = _two_sources(left, right, batch_size)
    joined = a.key_by("k").join(b.key_by("k"), between=(f"{bounds[0]}ms", f"{bounds[1]}ms"), how=how)
    out, late = collect(joined), collect(joined.late())
    flow.run()
    expected = []
    for la in left:
        matches = [
            rb for rb in right if rb["k"] == la["k"] and la["ts"] + bounds[0] <= rb["ts"] <= la["ts"] + bounds[1]
        ]
        expected += [{**la, "b": rb["b"], "ts_right": rb["ts"]} for rb in matches]
        if how == "left" and not matches:
            expected.append({**la, "b": None, "ts_right": None})
    assert late.rows == []
    assert _as_counter(out.rows) == _as_counter(expected)
    assert len(expected) > 20


@pytest.mark.parametrize("how", ["inner", "left"])
@pytest.mark.parametrize("window", [rh.tumbling("500ms"), rh.sliding("1s", every="250ms")], ids=["tumbling", "sliding"])
def test_window_join_pairs_records_of_the_same_window(how, window, batch_size):
    left, right = _sides(2)
    flow, a, b = _two_sources(left, right, batch_size)
    out = collect(a.key_by("k").join(b.key_by("k"), window=window, how=how))
    flow.run()
    size, every = window.size_ms, getattr(window, "every_ms", window.size_ms)
    expected = []
    for la in left:
        starts = [s for s in range(la["ts"] - la["ts"] % every - size, la["ts"] + 1, every) if s <= la["ts"] < s + size]
        for s in starts:
            matches = [rb for rb in right if rb["k"] == la["k"] and s <= rb["ts"] < s + size]
            for rb in matches:
                expected.append({**la, "b": rb["b"], "ts_right": rb["ts"], "window_start": s, "window_end": s + size})
            if how == "left" and not matches:
                expected.append({**la, "b": None, "ts_right": None, "window_start": s, "window_end": s + size})
    assert _as_counter(out.rows) == _as_counter(expected)
    ends = [r["window_end"] for r in out.rows]
    assert ends == sorted(ends)  # results come out as windows close


@pytest.mark.parametrize("how", ["inner", "left"])
def test_temporal_join_takes_the_version_valid_at_each_event(how, batch_size):
    rnd = random.Random(3)
    versions = [{"k": rnd.randrange(3), "rate": i, "ts": i * 250} for i in range(60)]
    events = [{"k": rnd.randrange(4), "amount": i, "ts": 100 + i * 97} for i in range(150)]
    flow, a, b = _two_sources(events, versions, batch_size)
    out = collect(a.key_by("k").join(b.key_by("k").latest(), how=how))
    flow.run()
    expected = []
    for e in events:
        valid = [v for v in versions if v["k"] == e["k"] and v["ts"] <= e["ts"]]
        if valid:
            v = max(valid, key=lambda v: v["ts"])
            expected.append({**e, "rate": v["rate"], "ts_right": v["ts"]})
        elif how == "left":
            expected.append({**e, "rate": None, "ts_right": None})
    assert _as_counter(out.rows) == _as_counter(expected)
    assert any(r["rate"] is None for r in expected) == (how == "left")


def test_temporal_join_keeps_versions_for_records_behind_their_own_watermark():
    # The left stream allows no disorder, the right one 1 s: a left record behind its own
    # stream's watermark is not late while the right side holds the join's watermark back, so
    # the version valid at its time must still be there (it once was compacted away).
    left = [{"k": 1, "ts": 100, "id": "a"}, {"k": 1, "ts": 50, "id": "b"}]
    right = [{"k": 1, "ts": 10, "v": "v10"}, {"k": 1, "ts": 60, "v": "v60"}, {"k": 1, "ts": 400, "v": "v400"}]
    flow = rh.Flow("tj")
    b = flow.source(rh.io.Records(right, batch_size=1), time="ts", max_delay="1s")
    a = flow.source(rh.io.Records(left, batch_size=1), time="ts", max_delay="0ms")
    joined = a.key_by("k").join(b.key_by("k").latest(), how="left")
    out, late = collect(joined), collect(joined.late())
    flow.run()
    assert late.rows == []
    assert sorted((r["id"], r["v"]) for r in out.rows) == [("a", "v60"), ("b", "v10")]


@pytest.mark.parametrize("kind", ["parquet", "csv", "frame"])
def test_lookup_join_with_a_table_file(tmp_path, batch_size, kind):
    table = pl.DataFrame({"merchant": ["m1", "m2", "m2"], "category": ["food", "books", "music"], "amount": [0, 0, 0]})
    target: pl.DataFrame | Path = table
    if kind != "frame":
        target = tmp_path / f"merchants.{kind}"
        if kind == "parquet":
            table.write_parquet(target)
        else:
            table.write_csv(target)
    rows = [{"merchant": m, "amount": i} for i, m in enumerate(["m1", "m2", "m3", "m1"])]
    for how, expected_n in (("inner", 4), ("left", 5)):
        flow = rh.Flow("lookup")
        out = collect(flow.source(rh.io.Records(rows, batch_size=batch_size)).join(target, on="merchant", how=how))
        flow.run()
        assert len(out.rows) == expected_n
        assert out.rows[0] == {"merchant": "m1", "amount": 0, "category": "food", "amount_right": 0}
        if how == "left":
            assert {"merchant": "m3", "amount": 2, "category": None, "amount_right": None} in out.rows


def test_records_behind_the_watermark_are_late_and_buffers_stay_bounded():
    op = IntervalJoin("j", ["k"], ["k"], "ts", "ts", "inner", "_right", None, -1_000, 1_000)

    def batch(rows, wm):
        frame = pl.DataFrame(rows).with_columns(pl.lit(wm, pl.Int64).alias("__rheon_wm"))
        return Batch(frame, watermark=wm)

    for i in range(200):
        ts = i * 500
        op.process(0, batch([{"k": 1, "ts": ts}], ts - 100))
        op.process(1, batch([{"k": 1, "ts": ts + 200}], ts - 100))
    assert op.left_buf is not None
    assert op.right_buf is not None
    assert op.left_buf.height <= 4  # only what a future record could still match
    assert op.right_buf.height <= 4
    outputs = op.process(0, batch([{"k": 1, "ts": 5}], 99_000))
    assert [tag for tag, _ in outputs] == ["main", "late"]


def test_join_state_survives_a_crash(tmp_path):
    rnd = random.Random(9)
    rows = [
        {"side": rnd.choice("ab"), "k": rnd.randrange(3), "v": i, "ts": i * 40 + rnd.randrange(200)} for i in range(600)
    ]

    def build(crash_after=None):
        flow = rh.Flow("join-ckpt")
        src = flow.source(rh.io.Records(rows, batch_size=20), time="ts", max_delay="300ms", name="in")
        a, b = src.filter(rh.col("side") == "a", name="a"), src.filter(rh.col("side") == "b", name="b")
        a.key_by("k").join(b.key_by("k"), between=("-100ms", "+100ms"), how="left", name="ij").sink(
            rh.io.FileSink(tmp_path / "ij"), name="ij_out"
        )
        a.key_by("k").join(b.key_by("k"), window=rh.tumbling("400ms"), name="wj").sink(
            rh.io.FileSink(tmp_path / "wj"), name="wj_out"
        )
        a.key_by("k").join(b.key_by("k").latest(), how="left", name="tj").sink(
            rh.io.FileSink(tmp_path / "tj"), name="tj_out"
        )
        src.sink(crash_at_row(crash_after), name="watch")
        return flow

    build().run()
    expected = committed_parts(tmp_path, "ij", "wj", "tj")
    for name in expected:
        for f in (tmp_path / name).iterdir():
            f.unlink()
    for crash_after in (50, 333):
        with contextlib.suppress(Crash):
            build(crash_after).run(checkpoint_dir=tmp_path / "ckpt", checkpoint_every="0ms")
    build().run(checkpoint_dir=tmp_path / "ckpt", checkpoint_every="0ms")
    for name, rows_expected in expected.items():
        assert committed(tmp_path / name) == rows_expected, name
        assert len(rows_expected) > 10


def test_join_mistakes_are_flow_errors():
    flow = rh.Flow("errs")
    a = flow.source(rh.io.Records([{"k": 1, "ts": 0}]), time="ts").key_by("k")
    b = flow.source(rh.io.Records([{"k": 1, "ts": 0}]), time="ts").key_by("k")
    with pytest.raises(rh.FlowError, match=r"interval_join 'j': how must be 'inner' or 'left' \(got 'outer'\)"):
        a.join(b, between=("-1s", "1s"), how="outer", name="j")
    with pytest.raises(rh.FlowError, match=r"give exactly one of between="):
        a.join(b)
    with pytest.raises(rh.FlowError, match=r"between starts after it ends"):
        a.join(b, between=("5s", "1s"))
    with pytest.raises(rh.FlowError, match=r"window joins take rh\.tumbling"):
        a.join(b, window=rh.session(gap="1s"))
    plain = flow.source(rh.io.Records([{"k": 1}])).key_by("k")
    with pytest.raises(rh.FlowError, match="the right stream has no event-time column"):
        a.join(plain, between=("-1s", "1s"))
    with pytest.raises(rh.FlowError, match=r"the table has no column 'merchant'"):
        a.stream.join(pl.DataFrame({"x": [1]}), on="merchant")
