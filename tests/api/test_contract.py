"""DESIGN.md section 3, the public API contract, exactly as written there."""

from __future__ import annotations

from datetime import timedelta

import rheon as rh
from rheon.testing import assert_rows_equal

ROWS = [
    {"card": "c1", "amount": 1200.0, "ts": 1_000, "text": "coffee and cake"},
    {"card": "c2", "amount": 50.0, "ts": 2_000, "text": "bus"},
    {"card": "c1", "amount": 700.0, "ts": 30_000, "text": "books"},
    {"card": "c2", "amount": 5000.0, "ts": 61_000, "text": "rent paid"},
    {"card": "c1", "amount": 10.0, "ts": 59_500, "text": "gum"},
    {"card": "c1", "amount": 3.0, "ts": 125_000, "text": "tea"},
    {"card": "c2", "amount": 99.0, "ts": 1_500, "text": "late lunch"},  # 1 min + behind: late
]
OTHER = [{"card": "c9", "amount": 2000.0, "ts": 5_000, "text": "other"}]


def test_design_section_3_as_written(batch_size):
    flow = rh.Flow("payments")
    tx = flow.source(rh.io.Records(ROWS, batch_size=batch_size), time="ts", max_delay="2s")
    other_stream = flow.source(rh.io.Records(OTHER, batch_size=batch_size), time="ts", max_delay="2s")

    big = tx.filter(rh.col("amount") > 1000)
    big2 = tx.filter(lambda r: r["amount"] > 1000)
    tagged = tx.map(lambda r: {**r, "usd": r["amount"] * 1.1})
    words = tx.flat_map(lambda r: [{"w": w} for w in r["text"].split()])
    eur = tx.with_columns(eur=rh.col("amount") * 0.9)
    small = tx.select("card", "amount", "ts")
    both = big.union(other_stream)

    per_card = (
        tx.key_by("card")
        .window(rh.tumbling("1m"))
        .agg(n=rh.count(), total=rh.sum("amount"), hi=rh.max("amount"), lo=rh.min("amount"), avg=rh.mean("amount"))
    )
    late = per_card.late()
    totals = tx.key_by("card").reduce(lambda acc, r: {**r, "amount": acc["amount"] + r["amount"]})

    sinks = {
        name: rh.io.Collect()
        for name in ("big", "big2", "tagged", "words", "eur", "small", "both", "per_card", "late", "totals")
    }
    for name, stream in [
        ("big", big),
        ("big2", big2),
        ("tagged", tagged),
        ("words", words),
        ("eur", eur),
        ("small", small),
        ("both", both),
        ("per_card", per_card),
        ("late", late),
        ("totals", totals),
    ]:
        stream.sink(sinks[name])
    flow.run()

    over = [r for r in ROWS if r["amount"] > 1000]
    assert sinks["big"].rows == over
    assert sinks["big2"].rows == over
    assert_rows_equal(sinks["tagged"].rows, [{**r, "usd": r["amount"] * 1.1} for r in ROWS], rel_tol=1e-12)
    assert [r["w"] for r in sinks["words"].rows] == [w for r in ROWS for w in r["text"].split()]
    assert_rows_equal(sinks["eur"].rows, [{**r, "eur": r["amount"] * 0.9} for r in ROWS], rel_tol=1e-12)
    assert sinks["small"].rows == [{"card": r["card"], "amount": r["amount"], "ts": r["ts"]} for r in ROWS]
    assert sorted(r["ts"] for r in sinks["both"].rows) == sorted(r["ts"] for r in over + OTHER)

    # Output rows: key column(s), window_start, window_end, then the aggregates, in that order.
    assert sinks["per_card"].rows == [
        {"card": "c1", "window_start": 0, "window_end": 60_000, "n": 3, "total": 1910.0, "hi": 1200.0, "lo": 10.0,
         "avg": 1910.0 / 3},
        {"card": "c2", "window_start": 0, "window_end": 60_000, "n": 1, "total": 50.0, "hi": 50.0, "lo": 50.0,
         "avg": 50.0},
        {"card": "c2", "window_start": 60_000, "window_end": 120_000, "n": 1, "total": 5000.0, "hi": 5000.0,
         "lo": 5000.0, "avg": 5000.0},
        {"card": "c1", "window_start": 120_000, "window_end": 180_000, "n": 1, "total": 3.0, "hi": 3.0, "lo": 3.0,
         "avg": 3.0},
    ]  # fmt: skip
    assert sinks["late"].rows == [ROWS[-1]]
    assert flow.metrics().late_rows == 1

    running: dict[str, float] = {}
    expected_totals = []
    for r in ROWS:
        running[r["card"]] = running.get(r["card"], 0.0) + r["amount"]
        expected_totals.append({**r, "amount": running[r["card"]]})
    assert sinks["totals"].rows == expected_totals


def test_durations_as_strings_or_timedelta():
    rows = [{"k": 1, "ts": t} for t in (0, 1_500, 2_500)]
    results = []
    for size in ("1s", timedelta(seconds=1), "1000ms"):
        flow = rh.Flow("d")
        out = rh.io.Collect()
        flow.source(rh.io.Records(rows), time="ts").key_by("k").window(rh.tumbling(size)).agg(n=rh.count()).sink(out)
        flow.run()
        results.append(out.rows)
    assert results[0] == results[1] == results[2]
    assert [r["n"] for r in results[0]] == [1, 1, 1]


def test_sliding_and_session_as_named_in_the_contract(batch_size):
    rows = [{"card": "a", "ts": t, "amount": 1} for t in (0, 10_000, 25_000, 200_000)]
    flow = rh.Flow("w")
    tx = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts")
    slide, sess = rh.io.Collect(), rh.io.Collect()
    tx.key_by("card").window(rh.sliding("10m", every="1m")).agg(n=rh.count()).sink(slide)
    tx.key_by("card").window(rh.session(gap="30s")).agg(n=rh.count()).sink(sess)
    flow.run()
    # Each event is in 10 sliding windows; the first window holding ts=0 starts 9 minutes earlier.
    assert slide.rows[0] == {"card": "a", "window_start": -540_000, "window_end": 60_000, "n": 3}
    assert sum(r["n"] for r in slide.rows) == 4 * 10
    # Session: start = first event time, end = last event time + gap.
    assert sess.rows == [
        {"card": "a", "window_start": 0, "window_end": 55_000, "n": 3},
        {"card": "a", "window_start": 200_000, "window_end": 230_000, "n": 1},
    ]


def test_allowed_lateness_emits_updated_rows(batch_size):
    rows = [
        {"k": "a", "ts": 100, "v": 1},
        {"k": "a", "ts": 1_200, "v": 1},  # watermark 1200: window [0, 1000) fires with v=1
        {"k": "a", "ts": 900, "v": 5},  # late but allowed: updated row v=6
        {"k": "a", "ts": 2_600, "v": 1},  # watermark 2600: [1000, 2000) fires; [0,1000) is purged at 2000
        {"k": "a", "ts": 950, "v": 100},  # beyond allowed lateness: goes to late()
    ]
    flow = rh.Flow("lateness")
    out, late = rh.io.Collect(), rh.io.Collect()
    res = (
        flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts")
        .key_by("k")
        .window(rh.tumbling("1s"), allowed_lateness="1s")
        .agg(total=rh.sum("v"))
    )
    res.sink(out)
    res.late().sink(late)
    flow.run()
    assert [(r["window_start"], r["total"]) for r in out.rows] == [(0, 1), (0, 6), (1000, 1), (2000, 1)]
    assert late.rows == [rows[-1]]


def test_key_by_several_columns_and_count_distinct(batch_size):
    rows = [
        {"country": "fr", "device": "ios", "user": "u1", "ts": 10},
        {"country": "fr", "device": "ios", "user": "u2", "ts": 20},
        {"country": "fr", "device": "web", "user": "u1", "ts": 30},
        {"country": "fr", "device": "ios", "user": "u1", "ts": 40},
    ]
    flow = rh.Flow("multi")
    out = rh.io.Collect()
    (
        flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts")
        .key_by("country", "device")
        .window(rh.tumbling("1s"))
        .agg(users=rh.count_distinct("user"), n=rh.count())
        .sink(out)
    )
    flow.run()
    assert out.rows == [
        {"country": "fr", "device": "ios", "window_start": 0, "window_end": 1000, "users": 2, "n": 3},
        {"country": "fr", "device": "web", "window_start": 0, "window_end": 1000, "users": 1, "n": 1},
    ]


def test_nulls_are_ignored_like_sql():
    rows = [{"k": 1, "ts": 0, "v": None}, {"k": 1, "ts": 1, "v": None}, {"k": 2, "ts": 2, "v": 4}, {"k": 2, "ts": 3}]
    flow = rh.Flow("nulls")
    out = rh.io.Collect()
    (
        flow.source(rh.io.Records(rows), time="ts")
        .key_by("k")
        .window(rh.tumbling("1s"))
        .agg(
            n=rh.count(),
            nv=rh.count("v"),
            s=rh.sum("v"),
            lo=rh.min("v"),
            hi=rh.max("v"),
            avg=rh.mean("v"),
            d=rh.count_distinct("v"),
        )
        .sink(out)
    )
    flow.run()
    assert out.rows == [
        {"k": 1, "window_start": 0, "window_end": 1000, "n": 2, "nv": 0, "s": None, "lo": None, "hi": None,
         "avg": None, "d": 0},
        {"k": 2, "window_start": 0, "window_end": 1000, "n": 2, "nv": 1, "s": 4, "lo": 4, "hi": 4, "avg": 4.0,
         "d": 1},
    ]  # fmt: skip
