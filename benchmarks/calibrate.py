"""How fast is this machine today? The issue's two yardsticks for Q2, measured here.

The targets in BENCHMARKS.md were set on a machine where a hand-written Polars batch job does Q2
at ~15M events/s and a plain Python dict loop at ~1.4M. This VM's speed drifts; run this next to
``benchmarks/run.py`` to read rheon's figures against the machine as it is that day:

    python benchmarks/calibrate.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.data import generate

EVENTS = 10_000_000
LOOP_EVENTS = 2_000_000


def main() -> None:
    frame = pl.read_parquet(generate(EVENTS))
    polars_runs = []
    for _ in range(3):
        start = time.perf_counter()
        frame.group_by("key", (pl.col("ts") // 1000).alias("second")).agg(pl.len(), pl.col("value").sum())
        polars_runs.append(EVENTS / (time.perf_counter() - start))
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
    loop = LOOP_EVENTS / (time.perf_counter() - start)
    print(f"hand-written Polars Q2: {sorted(polars_runs)[1] / 1e6:.1f}M events/s (median of 3; ~15M on the reference)")
    print(f"plain Python dict loop: {loop / 1e6:.2f}M events/s (~1.4M on the reference)")


if __name__ == "__main__":
    main()
