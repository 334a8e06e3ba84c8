"""The yardstick: the best job a user could write by hand for each workload, checked and timed.

Each throughput workload of ``benchmarks/run.py`` (Q1-Q4) has a reference: a lazy Polars query
over the whole frame that gives the same rows as rheon's flow. Q2 has a second one, NumPy
``bincount``s over a dense (second, key) grid. ``--check`` runs rheon's flows and the references
on a small input and compares their rows (floats to 1e-9), so the yardstick is known to compute
what rheon computes. Without ``--check`` the references are timed here, one after the other; the
figures to quote come from ``run.py --against-reference``, which alternates them with rheon in
fresh processes and prints the ratios.

    python benchmarks/calibrate.py --check                  # references == rheon, 200k events
    python benchmarks/calibrate.py --check --keys 1000000
    python benchmarks/calibrate.py                          # each reference on 10M events, median of 3
    python benchmarks/run.py --against-reference --only Q2 --keys 100000
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
from polars.testing import assert_frame_equal

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.data import KEYS, generate  # noqa: E402

Reference = Callable[[pl.DataFrame], pl.DataFrame]

PANE_MS = 1_000  # Q2's window, Q3's slide
SLIDING_PANES = 10  # Q3's 10 s window in 1 s panes
GAP_MS = 500  # Q4's session gap
NUMPY_MAX_CELLS = 1 << 28  # the bincount job's grid: 2 GiB per float64 array at this size
LOOP_EVENTS = 2_000_000


def q1_polars(frame: pl.DataFrame) -> pl.DataFrame:
    """Q1: ``filter(value > 0.5)`` then ``value * 2``."""
    return frame.lazy().filter(pl.col("value") > 0.5).with_columns(value=pl.col("value") * 2).collect()


def q2_polars(frame: pl.DataFrame) -> pl.DataFrame:
    """Q2: tumbling 1 s windows, count and sum per key: one group-by.

    It groups by one Int64 packing key and second (integer keys, non-negative), which ran twice as
    fast here as the two columns of ``group_by("key", pl.col("ts") // 1000 * 1000)``: medians of 7
    in one process, 24M vs 12M events/s at 1,000 keys, 18M vs 10M at 1M keys.
    """
    first = frame["ts"].min() // PANE_MS
    stride = frame["ts"].max() // PANE_MS - first + 1
    cell = pl.col("key") * stride + (pl.col("ts") // PANE_MS - first)
    return (
        frame.lazy()
        .group_by(cell=cell)
        .agg(n=pl.len().cast(pl.Int64), total=pl.col("value").sum())
        .select(
            key=pl.col("cell") // stride,
            window_start=(pl.col("cell") % stride + first) * PANE_MS,
            n="n",
            total="total",
        )
        .with_columns(window_end=pl.col("window_start") + PANE_MS)
        .collect()
    )


class GridTooLargeError(ValueError):
    """The NumPy job's dense grid would not fit: it assumes few keys."""


def q2_numpy(frame: pl.DataFrame) -> pl.DataFrame:
    """Q2 in NumPy: ``bincount``s of count and sum over a dense grid of (second, key) cells.

    Assumes integer keys ``0 .. k - 1`` (a dense range) and a grid of at most ``NUMPY_MAX_CELLS``;
    1,000 keys over the 10M events' 1,003 seconds is 1M cells, 1M keys would be 1G.
    """
    key = frame["key"].to_numpy()
    second = frame["ts"].to_numpy() // PANE_MS
    first, keys = int(second.min()), int(key.max()) + 1
    cells = (int(second.max()) - first + 1) * keys
    if cells > NUMPY_MAX_CELLS:
        msg = f"{keys:,} keys need a grid of {cells:,} cells (limit {NUMPY_MAX_CELLS:,}): the job is for a few keys"
        raise GridTooLargeError(msg)
    cell = (second - first) * keys + key
    counts = np.bincount(cell, minlength=cells)
    sums = np.bincount(cell, weights=frame["value"].to_numpy(), minlength=cells)
    used = np.flatnonzero(counts)
    start = (used // keys + first) * PANE_MS
    return pl.DataFrame(
        {
            "key": used % keys,
            "window_start": start,
            "n": counts[used],
            "total": sums[used],
            "window_end": start + PANE_MS,
        }
    )


def q3_polars(frame: pl.DataFrame) -> pl.DataFrame:
    """Q3: sliding 10 s windows every 1 s, sum per key.

    Sums per (key, second) first, grouped by one Int64 ``key * stride + second`` as in Q2, where a
    key's stride leaves 9 empty seconds after its last. Then every second of a key from its first
    to 9 s past its last (so each window that holds an event ends on a row), in that order, and a
    rolling sum of the last 10 seconds: the padding keeps a key's windows from reaching into the
    key before it. Medians of 5 in one process at 1,000 keys: 15M events/s; the same with two
    group-by columns, a join on two and a rolling sum ``over("key")`` 7.7M; exploding the per-second
    sums into their 10 windows and grouping again 3-7M; exploding the events 2-3M;
    ``group_by_dynamic`` needs the frame sorted by time first.
    """
    first = frame["ts"].min() // PANE_MS
    stride = frame["ts"].max() // PANE_MS - first + SLIDING_PANES
    cell = pl.col("key") * stride + (pl.col("ts") // PANE_MS - first)
    panes = frame.lazy().group_by(cell=cell).agg(total=pl.col("value").sum())
    every_second = pl.int_range(pl.col("cell").min(), pl.col("cell").max() + SLIDING_PANES)
    grid = panes.group_by(pl.col("cell") // stride).agg(every=every_second).select(cell="every").explode("cell")
    second = pl.col("cell") % stride + first
    return (
        grid.join(panes, on="cell", how="left")
        .sort("cell")
        .with_columns(
            events=pl.col("total").is_not_null().cast(pl.Int32).rolling_sum(SLIDING_PANES, min_samples=1),
            total=pl.col("total").fill_null(0.0).rolling_sum(SLIDING_PANES, min_samples=1),
        )
        .filter(pl.col("events") > 0)
        .select(
            key=pl.col("cell") // stride,
            window_start=(second - SLIDING_PANES + 1) * PANE_MS,
            window_end=(second + 1) * PANE_MS,
            total="total",
        )
        .collect()
    )


def q4_polars(frame: pl.DataFrame) -> pl.DataFrame:
    """Q4: sessions per key, a new one after a gap of 500 ms or more: count per session.

    Rows in (key, time) order, a session id where the key changes or the gap is reached, a group-by
    on it. The order comes from one sort of an Int64 packing key and time (non-negative keys), about
    4x faster here than ``sort("key", "ts")``.
    """
    ts, key = pl.col("ts"), pl.col("key")
    packed = key * (ts.max() - ts.min() + 1) + (ts - ts.min())
    new_session = ((key != key.shift()) | (ts.diff() >= GAP_MS)).fill_null(True)
    return (
        frame.lazy()
        .select("key", "ts")
        .sort(packed)
        .with_columns(session=new_session.cum_sum())
        .group_by("session")
        .agg(key.first(), window_start=ts.first(), window_end=ts.last() + GAP_MS, n=pl.len().cast(pl.Int64))
        .drop("session")
        .collect()
    )


REFERENCES: dict[str, dict[str, Reference]] = {
    "Q1": {"polars": q1_polars},
    "Q2": {"polars": q2_polars, "numpy": q2_numpy},
    "Q3": {"polars": q3_polars},
    "Q4": {"polars": q4_polars},
}


def mismatch(got: pl.DataFrame, want: pl.DataFrame) -> str | None:
    """Why ``got`` (a reference's rows) differs from ``want`` (rheon's), or None: any order, floats to 1e-9."""
    if sorted(got.columns) != sorted(want.columns):
        return f"columns {sorted(got.columns)}, rheon has {sorted(want.columns)}"
    # Integer columns first: in Q2-Q4 they identify a row, so the float columns never decide the order.
    order = sorted(want.columns, key=lambda c: (want.schema[c].is_float(), c))
    try:
        assert_frame_equal(
            got.select(want.columns).sort(order), want.sort(order), rel_tol=1e-9, abs_tol=1e-9, check_exact=False
        )
    except AssertionError as exc:
        return str(exc)
    return None


def check(events: int, keys: int, batch_size: int) -> bool:
    """Run rheon's flow and each reference on ``events`` events; print and return whether all agree."""
    from benchmarks.run import run_flow  # here, not at the top: run.py imports this module

    frame = pl.read_parquet(generate(events, keys))
    ok = True
    for name, references in REFERENCES.items():
        want = run_flow(name, frame, batch_size)
        for kind, reference in references.items():
            try:
                problem = mismatch(reference(frame), want)
            except GridTooLargeError as exc:
                print(f"{name} {kind:6} skipped: {exc}")
                continue
            ok = ok and problem is None
            print(f"{name} {kind:6} {'same rows as rheon' if problem is None else 'DIFFERS'}: {want.height:,} rows")
            if problem is not None:
                print(problem)
    return ok


def _dict_loop(frame: pl.DataFrame) -> float:
    """Q2 as a plain Python dict loop over the first LOOP_EVENTS events: events/s (the issue's other yardstick)."""
    head = frame.head(LOOP_EVENTS)
    keys, stamps, values = head["key"].to_list(), head["ts"].to_list(), head["value"].to_list()
    start = time.perf_counter()
    totals: dict[tuple[int, int], list[float]] = {}
    for key, ts, value in zip(keys, stamps, values, strict=True):
        cell = totals.get((key, ts // 1000))
        if cell is None:
            totals[(key, ts // 1000)] = [1, value]
        else:
            cell[0] += 1
            cell[1] += value
    return head.height / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare each reference with rheon's output")
    parser.add_argument("--events", type=int, help="events (default: 10M to time, 200k to check)")
    parser.add_argument("--keys", type=int, default=KEYS)
    parser.add_argument("--batch-size", type=int, default=50_000, help="rheon's batches in --check")
    parser.add_argument("--only", default=",".join(REFERENCES))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.check:
        sys.exit(0 if check(args.events or 200_000, args.keys, args.batch_size) else 1)
    events = args.events or 10_000_000
    frame = pl.read_parquet(generate(events, args.keys))
    print(f"polars {pl.__version__}, numpy {np.__version__}, events={frame.height:,}, keys={args.keys:,}")
    for name in (n.strip() for n in args.only.split(",")):
        for kind, reference in REFERENCES[name].items():
            rates, rows = [], 0
            try:
                for _ in range(max(args.repeat, 1)):
                    start = time.perf_counter()
                    rows = reference(frame).height
                    rates.append(frame.height / (time.perf_counter() - start))
            except GridTooLargeError as exc:
                print(f"{name} {kind:6} skipped: {exc}")
                continue
            rates.sort()
            print(
                f"{name} {kind:6} {rates[len(rates) // 2] / 1e6:6.1f}M events/s "
                f"[{rates[0] / 1e6:.1f}M .. {rates[-1] / 1e6:.1f}M]  out {rows:,}"
            )
    if "Q2" in args.only:
        print(f"Q2 dict loop {_dict_loop(frame) / 1e6:.2f}M events/s (plain Python, first {LOOP_EVENTS:,} events)")


if __name__ == "__main__":
    main()
