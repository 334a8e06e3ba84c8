"""Top-N per window (``windowed.agg(...).top_n``) and running (``key_by(...).top_n``): against the
plain-Python reference at every batch size, updates within allowed lateness, late rows,
checkpoints, errors."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import polars as pl
import pytest

import rheon as rh
from tests.crash import Crash, committed_parts, crash_at_row
from tests.operators import ordered_reference as ref

# -- per window, on a stream of window rows ----------------------------------------------------


def _window_rows(n: int, seed: int, size: int = 1_000) -> list[dict]:
    """Rows shaped like a window result (key columns, window_start, window_end, a value), the
    windows coming mostly in order, some a few windows behind (updates, or late)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        start = max(0, (i // 6 + rng.choice([0, 0, 0, 0, 1, -1, -2, -3])) * 1_000)
        rows.append(
            {
                "region": rng.choice(["eu", "us", None]),
                "page": rng.randrange(4),
                "window_start": start,
                "window_end": start + size,
                "views": rng.choice([1, 2, 2, 3, None]),
            }
        )
    return rows


def _run_windows(rows, batch_size, *, n=2, lateness="1500ms", descending=True, max_delay="500ms"):
    flow = rh.Flow("wtop")
    src = flow.source(rh.io.Records(rows, batch_size=batch_size), time="window_start", max_delay=max_delay)
    top = src.top_n(n, "views", descending=descending, allowed_lateness=lateness)
    out, late = rh.io.Collect(), rh.io.Collect()
    top.sink(out)
    top.late().sink(late)
    flow.run()
    return out.rows, late.rows


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_per_window_matches_the_reference_at_any_batch_size(seed, batch_size):
    rows = _window_rows(300, seed)
    expected, late = ref.window_top_n(rows, 2, "views", ["region", "page"], lateness=1_500, max_delay=500)
    updates = len(expected) - 2 * len({(r["window_start"], r["window_end"]) for r in expected})
    assert updates > 10  # windows emitted again after an update
    assert len(late) > 5
    assert any(r["views"] is None for r in expected)  # a window whose rows are mostly null
    assert _run_windows(rows, batch_size) == (expected, late)


def test_per_window_ascending_without_lateness_matches_the_reference():
    rows = _window_rows(300, 3, size=3_000)  # overlapping windows
    expected, late = ref.window_top_n(rows, 3, "views", ["region", "page"], lateness=0, max_delay=500, descending=False)
    assert len(late) > 5
    for batch_size in (7, 1000):
        assert _run_windows(rows, batch_size, n=3, lateness="0s", descending=False) == (expected, late)


def test_many_rows_per_window_are_cut_to_the_best_before_the_window_fires():
    """Without lateness a window keeps only its best rows (checked here past the threshold at
    which the state is cut)."""
    rng = random.Random(9)
    rows = [
        {"page": p, "window_start": w * 1_000, "window_end": w * 1_000 + 1_000, "views": rng.randrange(50)}
        for w in range(3)
        for p in rng.sample(range(5_000), 1_500)
    ]
    expected, late = ref.window_top_n(rows, 5, "views", ["page"], lateness=0, max_delay=10_000)
    assert late == []
    for batch_size in (100, 5_000):
        got = _run_windows(rows, batch_size, n=5, lateness="0s", max_delay="10s")
        assert got == (expected, [])


def test_ties_go_by_the_key_columns_then_arrival():
    rows = [
        {"k": k, "window_start": 0, "window_end": 1_000, "views": 5, "id": i}
        for i, k in enumerate(["b", "a", "c", "a"])
    ]
    out, _ = _run_windows(rows, 1000, n=3, lateness="0s")
    assert [(r["k"], r["id"], r["rank"]) for r in out] == [("a", 1, 1), ("a", 3, 2), ("b", 0, 3)]


# -- per window, after a real window aggregation ------------------------------------------------


def _views(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = i * 40 + rng.randrange(0, 200)
        if i % 23 == 22:
            ts -= 1_500  # late for its window: an allowed-lateness update
        rows.append({"page": rng.choice("abcdef"), "ts": max(ts, 0)})
    return rows


def test_after_a_window_with_allowed_lateness_each_window_ends_with_the_top_of_its_final_counts():
    rows = _views(600, 4)
    for batch_size in (1, 1000):
        flow = rh.Flow("views")
        src = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay="200ms")
        counts = src.key_by("page").window(rh.tumbling("1s"), allowed_lateness="2s").agg(views=rh.count())
        top = counts.top_n(2, by="views")  # the window's lateness is found by itself
        every, best, late = rh.io.Collect(), rh.io.Collect(), rh.io.Collect()
        counts.sink(every)
        top.sink(best)
        top.late().sink(late)
        flow.run()
        assert late.rows == []
        final: dict[tuple, dict] = {}
        first: dict[tuple, dict] = {}
        for r in every.rows:
            final[(r["window_start"], r["page"])] = r
            first.setdefault((r["window_start"], r["page"]), r)
        emitted: dict[int, list[list[tuple]]] = {}
        for r in best.rows:
            runs = emitted.setdefault(r["window_start"], [])
            if r["rank"] == 1:
                runs.append([])
            runs[-1].append((r["page"], r["views"]))

        def top2(rows: dict[tuple, dict], start: int) -> list[tuple]:
            mine = sorted((r for (s, _), r in rows.items() if s == start), key=lambda r: (-r["views"], r["page"]))
            return [(r["page"], r["views"]) for r in mine[:2]]

        assert sum(len(runs) > 1 for runs in emitted.values()) > 3  # updated windows came out again
        for start, runs in emitted.items():
            assert runs[0] == top2(first, start)
            assert runs[-1] == top2(final, start)
            assert all(a != b for a, b in itertools.pairwise(runs))  # only when it changed


# -- running ------------------------------------------------------------------------------------


def _events(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = (i * 60 + rng.randrange(0, 300)) // 50 * 50
        if i % 31 == 30:
            ts -= 3_000
        v = None if rng.random() < 0.1 else rng.randrange(i // 4 + 3)  # growing: records keep entering
        rows.append({"id": i, "k": rng.choice("abc"), "ts": ts, "v": v})
    return rows


@pytest.mark.parametrize("seed", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_running_top_n_matches_the_reference_at_any_batch_size(seed, batch_size):
    rows = _events(300, seed)
    expected, late = ref.running_top_n(rows, ["k"], 3, "v", True, 300)
    smallest, _ = ref.running_top_n(rows, [], 2, "v", False, 300)
    assert len(expected) > 100
    assert len(late) > 5
    flow = rh.Flow("rtop")
    src = flow.source(rh.io.Records(rows, batch_size=batch_size), time="ts", max_delay="300ms")
    top = src.key_by("k").top_n(3, by="v")
    low = src.top_n(2, "v", descending=False, per_window=False)
    out, lows, late_rows = rh.io.Collect(), rh.io.Collect(), rh.io.Collect()
    top.sink(out)
    low.sink(lows)
    top.late().sink(late_rows)
    flow.run()
    assert out.rows == expected
    assert late_rows.rows == late
    assert lows.rows == smallest


def test_running_top_n_has_no_event_time_and_a_rank_column():
    flow = rh.Flow("s")
    top = flow.source(rh.io.Records([{"k": 1, "v": 2.5, "ts": 0}]), time="ts").key_by("k").top_n(1, by="v")
    assert top.time is None
    assert top.schema == pl.Schema({"k": pl.Int64, "v": pl.Float64, "ts": pl.Int64, "rank": pl.Int64})


# -- through a crash ----------------------------------------------------------------------------

SINKS = ("windows", "running")  # _flow's file sinks, each writing to out / name


def _flow(rows: list[dict], out: Path, crash_after: int | None = None, n: int = 2) -> rh.Flow:
    flow = rh.Flow("tops")
    src = flow.source(rh.io.Records(rows, batch_size=11), time="ts", max_delay="200ms", name="src")
    counts = src.key_by("page").window(rh.tumbling("500ms"), allowed_lateness="2s", name="counts").agg(n=rh.count())
    counts.top_n(n, by="n", name="best").sink(rh.io.FileSink(out / "windows"), name="windows_out")
    src.with_columns(v=rh.col("ts") % 997).key_by("page").top_n(n, by="v", name="running").sink(
        rh.io.FileSink(out / "running"), name="running_out"
    )
    src.sink(crash_at_row(crash_after), name="watch")
    return flow


@pytest.mark.parametrize("crash_after", [60, 200])
def test_a_crash_and_restore_gives_the_uninterrupted_output(tmp_path, crash_after):
    rows = _views(400, 6)
    _flow(rows, tmp_path / "reference").run()
    expected = committed_parts(tmp_path / "reference", *SINKS)
    assert {k: len(v) > 50 for k, v in expected.items()} == {"windows": True, "running": True}
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    with pytest.raises(Crash):
        _flow(rows, out, crash_after).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    _flow(rows, out).run(checkpoint_dir=ckpt, checkpoint_every="0ms")
    assert committed_parts(out, *SINKS) == expected


def test_a_changed_n_is_refused_on_restore(tmp_path):
    rows = _views(50, 1)
    _flow(rows, tmp_path / "a").run(checkpoint_dir=tmp_path / "ckpt")
    with pytest.raises(rh.FlowError, match=r"top_n '(best|running)'.*written by a different operator"):
        _flow(rows, tmp_path / "b", n=3).run(checkpoint_dir=tmp_path / "ckpt")


# -- build-time errors ------------------------------------------------------------------------


def _source(rows=None) -> rh.Stream:
    flow = rh.Flow("e")
    return flow.source(rh.io.Records(rows or [{"page": "a", "views": 1, "ts": 0}]), time="ts")


def _counts() -> rh.Stream:
    return _source().key_by("page").window(rh.tumbling("1m")).agg(views=rh.count())


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: _counts().top_n(0, by="views"), r"top_n 'top_n_1': n must be a whole number >= 1 \(got 0\)"),
        (lambda: _counts().top_n(True, by="views"), r"top_n 'top_n_1': n must be a whole number >= 1 \(got True\)"),
        (
            lambda: _counts().top_n(3, by="veiws"),
            r"top_n 'top_n_1': unknown column 'veiws' in by= \(columns: page, window_start, window_end, views\)\. "
            r"Did you mean 'views'\?",
        ),
        (
            lambda: _counts().top_n(3, by=["views", "page"], descending=[True]),
            r"top_n 'top_n_1': descending must be True, False or one of them per column of by= \(got \[True\]\)",
        ),
        (
            lambda: _source().top_n(3, by="views"),
            r"top_n 'top_n_1': per_window=True ranks the rows of each window, but the stream has no "
            r"window_start and window_end columns \(columns: page, views, ts\)",
        ),
        (
            lambda: _counts().top_n(3, by="views", per_window=False, allowed_lateness="1s"),
            r"top_n 'top_n_1': allowed_lateness applies to per_window=True only",
        ),
        (
            lambda: _source([{"page": "a", "rank": 1, "ts": 0}]).key_by("page").top_n(3, by="rank"),
            r"top_n 'top_n_1': the stream already has a column 'rank'",
        ),
        (lambda: _source().key_by("page").top_n(-1, by="views"), r"top_n 'top_n_1': n must be .* \(got -1\)"),
        (
            lambda: _source().key_by("page").top_n(2, by="x"),
            r"top_n 'top_n_1': unknown column 'x' in by=",
        ),
    ],
)
def test_mistakes_are_flow_errors_naming_the_operator_field_and_value(build, message):
    with pytest.raises(rh.FlowError, match=message):
        build()


def test_top_n_needs_event_time():
    flow = rh.Flow("e")
    rows = [{"page": "a", "views": 1, "window_start": 0, "window_end": 1}]
    src = flow.source(rh.io.Records(rows))
    with pytest.raises(rh.FlowError, match=r"top_n 'top_n_1': the stream has no event-time column"):
        src.key_by("page").top_n(3, by="views")
    with pytest.raises(rh.FlowError, match=r"top_n 'top_n_2': the stream has no event-time column"):
        src.top_n(3, by="views")
