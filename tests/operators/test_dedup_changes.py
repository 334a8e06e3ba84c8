"""``key_by(...).dedup(within=...)`` and ``key_by(...).changes(col)``: against the plain-Python
reference at every batch size, late records, window results, state clean-up, checkpoints, errors."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

import rheon as rh
from rheon.core.batch import WM_COL, Batch
from rheon.operators.dedup import Dedup
from tests.crash import Crash, committed_parts, crash_at_row
from tests.operators import ordered_reference as ref


def _events(n: int, seed: int, *, late_every: int = 0) -> list[dict]:
    """Keyed events out of order within 300 ms, times on a 50 ms grid (many ties), and, with
    ``late_every``, some records far behind."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = (i * 60 + rng.randrange(0, 300)) // 50 * 50
        if late_every and i % late_every == late_every - 1:
            ts -= 3_000
        rows.append({"id": i, "k": rng.choice("abc"), "ts": ts, "v": rng.choice([1, 2, 2, None])})
    return rows


def _run(rows: list[dict], build, batch_size: int, max_delay: str = "300ms") -> dict[str, list[dict]]:
    flow = rh.Flow("t")
    src = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay=max_delay)
    found: dict[str, rh.io.Collect] = {}
    for tag, stream in build(src).items():
        found[tag] = rh.io.Collect()
        stream.sink(found[tag])
    flow.run()
    return {tag: c.rows for tag, c in found.items()}


def _dedup(src: rh.Stream, within: str = "400ms") -> dict[str, rh.Stream]:
    d = src.key_by("k").dedup(within=within)
    return {"out": d, "repeats": d.repeats(), "late": d.late()}


# -- dedup against the reference -----------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_dedup_matches_the_reference_at_any_batch_size(seed, batch_size):
    rows = _events(400, seed, late_every=37)
    passed, repeats, late = ref.dedup(rows, ["k"], 400, 300)
    assert len(passed) > 50
    assert len(repeats) > 50
    assert len(late) > 5
    got = _run(rows, _dedup, batch_size)
    assert got == {"out": passed, "repeats": repeats, "late": late}


def test_dedup_keeps_the_first_of_tied_records_by_arrival():
    rows = [{"id": i, "k": "a", "ts": 1000} for i in range(3)] + [{"id": 3, "k": "a", "ts": 1400}]
    for batch_size in (1, 1000):
        got = _run(list(reversed(rows)), _dedup, batch_size)
        # 1400 came first, but the ties at 1000 (behind the watermark, not late) go before it
        assert [r["id"] for r in got["out"]] == [2, 3]
        assert [r["id"] for r in got["repeats"]] == [1, 0]
        got = _run(rows, _dedup, batch_size)
        assert [r["id"] for r in got["out"]] == [0, 3]
        assert [r["id"] for r in got["repeats"]] == [1, 2]


def test_a_passed_record_opens_a_new_interval_a_repeat_does_not():
    # within 400: 300 repeats 0; 900 repeats 600; a repeat opens no interval, so 1000 passes
    rows = [{"id": i, "k": "a", "ts": ts} for i, ts in enumerate([0, 300, 600, 900, 1000, 1300, 1400])]
    got = _run(rows, _dedup, 1000)
    assert [r["ts"] for r in got["out"]] == [0, 600, 1000, 1400]
    assert [r["ts"] for r in got["repeats"]] == [300, 900, 1300]


def test_dedup_long_runs_with_many_passes_in_one_batch():
    """A key whose records are less than ``within`` apart but run for many intervals: the
    records that pass are a chain, followed vectorized across keys."""
    rng = random.Random(3)
    rows = [{"id": i, "k": rng.choice("ab"), "ts": i * 7} for i in range(3000)]
    passed, repeats, _ = ref.dedup(rows, ["k"], 100, 0)
    assert len(repeats) > 2_000
    flow = rh.Flow("chain")
    d = flow.source(rh.io.Records(rows, batch_size=3000), time="ts").key_by("k").dedup(within="100ms")
    out = rh.io.Collect()
    d.sink(out)
    flow.run()
    assert len(passed) > 200
    assert out.rows == passed


def test_dedup_on_several_keys_and_datetime_time():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {"bank": b, "card": c, "ts": t0 + timedelta(minutes=m)}
        for b, c, m in [("x", 1, 0), ("y", 1, 1), ("x", 1, 5), ("x", 2, 6), ("x", 1, 10), ("y", 1, 9)]
    ]
    flow = rh.Flow("dt")
    out = rh.io.Collect()
    flow.source(rh.io.Records(rows), time="ts").key_by("bank", "card").dedup(within="10m").sink(out)
    flow.run()
    assert [(r["bank"], r["card"], r["ts"] - t0) for r in out.rows] == [
        ("x", 1, timedelta(0)),
        ("y", 1, timedelta(minutes=1)),
        ("x", 2, timedelta(minutes=6)),
        ("x", 1, timedelta(minutes=10)),
    ]


def test_alerts_of_overlapping_sliding_windows_come_out_once_per_card():
    """The issue's case: a card over the limit makes an alert in each overlapping window."""
    rng = random.Random(11)
    rows = []
    for i in range(600):
        card = f"c{rng.randrange(6)}"
        big = 20 <= i % 200 < 40  # bursts of big amounts
        rows.append({"card": card, "amount": 900.0 if big else 10.0, "ts": i * 2_000 + rng.randrange(0, 3_000)})
    flow = rh.Flow("alerts")
    src = flow.source(rh.io.Records(rows, batch_size=50), time="ts", max_delay="3s")
    sums = src.key_by("card").window(rh.sliding("2m", every="10s")).agg(total=rh.sum("amount"))
    alerts = sums.filter(rh.col("total") > 1_500)
    once = alerts.key_by("card").dedup(within="10m")
    every, kept, late = rh.io.Collect(), rh.io.Collect(), rh.io.Collect()
    alerts.sink(every)
    once.sink(kept)
    once.late().sink(late)
    flow.run()
    assert late.rows == []  # a window's result is behind the watermark, yet never late here
    # the reference, on the alerts as they came, in window_start order (ties by arrival)
    timed = [{**r, "ts": r["window_start"]} for r in every.rows]
    expected, _, _ = ref.dedup(timed, ["card"], 600_000, max_delay=10**12)
    assert len(every.rows) > 4 * len(kept.rows) > 4
    assert kept.rows == [{k: v for k, v in r.items() if k != "ts"} for r in expected]


def test_a_record_behind_the_watermark_but_not_late_still_finds_its_keys_state():
    """The watermark passed 0 + within before ``a@100`` came, but nothing later than 100 had been
    handled, so it is not late: it is handled in its place, as a repeat of ``a@0``."""
    rows = [{"k": "a", "ts": 0}, {"k": "b", "ts": 10_000}, {"k": "a", "ts": 100}, {"k": "b", "ts": 10_100}]
    for batch_size in (1, 1000):
        got = _run(rows, _dedup, batch_size)
        assert got == {
            "out": [{"k": "a", "ts": 0}, {"k": "b", "ts": 10_000}],
            "repeats": [{"k": "a", "ts": 100}, {"k": "b", "ts": 10_100}],
            "late": [],
        }


# -- state ------------------------------------------------------------------------------------


def _batch(rows: list[dict], pre: list[int], watermark: int) -> Batch:
    frame = pl.DataFrame(rows).with_columns(pl.Series(WM_COL, pre, dtype=pl.Int64))
    return Batch(frame, watermark=watermark)


def test_dedup_state_is_cleared_once_within_has_passed():
    op = Dedup("d", ["k"], "ts", 1_000, None)
    op.process(0, _batch([{"k": i, "ts": i * 10} for i in range(100)], [-(10**9)] * 100, 990))
    assert len(op.keyed) == 100
    assert len(op.keyed.event_timers) == 100
    op.process(0, _batch([{"k": 0, "ts": 1_500}], [990], 1_500))  # event time reaches 1500
    assert len(op.keyed) == 50  # keys 1..50 expired at 1010..1500; key 0 passed again at 1500
    assert len(op.keyed.event_timers) == 50
    op.process(0, _batch([{"k": 0, "ts": 5_000}], [1_500], 5_000))
    assert len(op.keyed) == 1


# -- changes -----------------------------------------------------------------------------------


def _changes(src: rh.Stream) -> dict[str, rh.Stream]:
    c = src.key_by("k").changes("v")
    both = src.key_by("k").changes(["v", "id"])
    return {"out": c, "late": c.late(), "both": both}


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_changes_matches_the_reference_at_any_batch_size(seed, batch_size):
    rows = _events(400, seed, late_every=41)
    expected, late = ref.changes(rows, ["k"], ["v"], 300)
    every, _ = ref.changes(rows, ["k"], ["v", "id"], 300)
    assert 50 < len(expected) < 300
    assert len(late) > 5
    assert any(r["v"] is None for r in expected)
    got = _run(rows, _changes, batch_size)
    assert got == {"out": expected, "late": late, "both": every}


def test_changes_turns_a_status_stream_into_transitions():
    checks = [("h1", "ok", 0), ("h2", "ok", 0), ("h1", "ok", 10), ("h1", "alert", 20), ("h2", None, 25),
              ("h1", "alert", 30), ("h2", None, 35), ("h1", "ok", 40), ("h2", "ok", 45)]  # fmt: skip
    rows = [{"host": h, "status": s, "ts": t} for h, s, t in checks]
    flow = rh.Flow("flip")
    out = rh.io.Collect()
    flow.source(rh.io.Records(list(reversed(rows)), batch_size=2), time="ts", max_delay="1s").key_by("host").changes(
        "status"
    ).sink(out)
    flow.run()
    assert [(r["host"], r["status"], r["ts"]) for r in out.rows] == [
        ("h2", "ok", 0),  # a tie in time: by arrival, and h2 came first (the input is reversed)
        ("h1", "ok", 0),
        ("h1", "alert", 20),
        ("h2", None, 25),
        ("h1", "ok", 40),
        ("h2", "ok", 45),
    ]


def test_changes_compares_nan_equal_to_nan_and_float_keys_keep_their_state():
    rows = [{"k": float("nan"), "v": v, "ts": i} for i, v in enumerate([1.0, float("nan"), float("nan"), 1.0])]
    flow = rh.Flow("nan")
    out = rh.io.Collect()
    flow.source(rh.io.Records(rows, batch_size=1), time="ts").key_by("k").changes("v").sink(out)
    flow.run()
    assert [r["ts"] for r in out.rows] == [0, 1, 3]


# -- through a crash ----------------------------------------------------------------------------

SINKS = ("dedup", "repeats", "late", "changes")  # _flow's file sinks, each writing to out / name


def _flow(rows: list[dict], out: Path, crash_after: int | None = None, within: str = "400ms") -> rh.Flow:
    flow = rh.Flow("ordered")
    src = flow.source(rh.io.Records(rows, batch_size=9), time="ts", max_delay="300ms", name="src")
    d = src.key_by("k").dedup(within=within, name="once")
    d.sink(rh.io.FileSink(out / "dedup"), name="dedup_out")
    d.repeats().sink(rh.io.FileSink(out / "repeats"), name="repeats_out")
    d.late().sink(rh.io.FileSink(out / "late"), name="late_out")
    src.key_by("k").changes("v", name="flips").sink(rh.io.FileSink(out / "changes"), name="changes_out")
    src.sink(crash_at_row(crash_after), name="watch")
    return flow


@pytest.mark.parametrize("crash_after", [5, 130])
def test_a_crash_and_restore_gives_the_uninterrupted_output(tmp_path, crash_after):
    rows = _events(300, seed=5, late_every=29)
    _flow(rows, tmp_path / "reference").run()
    expected = committed_parts(tmp_path / "reference", *SINKS)
    assert all(len(v) > 5 for v in expected.values())
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(Crash):
        _flow(rows, out, crash_after).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    _flow(rows, out).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    assert committed_parts(out, *SINKS) == expected


def test_a_changed_within_is_refused_on_restore(tmp_path):
    rows = _events(50, seed=1)
    _flow(rows, tmp_path / "a").run(checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(rh.FlowError, match=r"dedup 'once'.*written by a different operator"):
        _flow(rows, tmp_path / "b", within="1s").run(checkpoint_dir=tmp_path / "ckpt")


# -- build-time errors ------------------------------------------------------------------------


def _keyed() -> rh.KeyedStream:
    flow = rh.Flow("e")
    return flow.source(rh.io.Records([{"card": 1, "status": "ok", "ts": 0}]), time="ts").key_by("card")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda k: k.dedup(within="0s"), r"dedup 'dedup_1': within must be positive \(got '0s'\)"),
        (lambda k: k.dedup(within="soon"), r"dedup 'dedup_1': within: cannot read duration 'soon'"),
        (
            lambda k: k.changes("stauts"),
            r"changes 'changes_1': unknown column 'stauts' in col= \(columns: card, status, ts\)\. "
            r"Did you mean 'status'\?",
        ),
        (lambda k: k.changes([]), r"changes 'changes_1': col must be a column name or a list of column names"),
        (lambda k: k.changes(3), r"changes 'changes_1': col must be .* \(got 3\)"),
    ],
)
def test_mistakes_are_flow_errors_naming_the_operator_field_and_value(build, message):
    with pytest.raises(rh.FlowError, match=message):
        build(_keyed())


def test_dedup_and_changes_need_event_time():
    flow = rh.Flow("e")
    keyed = flow.source(rh.io.Records([{"card": 1, "status": "ok"}])).key_by("card")
    with pytest.raises(rh.FlowError, match=r"dedup 'dedup_1': the stream has no event-time column"):
        keyed.dedup(within="1m")
    with pytest.raises(rh.FlowError, match=r"changes 'changes_1': the stream has no event-time column"):
        keyed.changes("status")


def test_repeats_is_only_on_a_dedup():
    with pytest.raises(rh.FlowError, match=r"repeats\(\): changes 'changes_1' is not a dedup"):
        _keyed().changes("status").repeats()
