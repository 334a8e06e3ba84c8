"""Quick start: per-card totals per minute over payments that arrive out of order.

Run: python examples/quickstart.py
"""

from __future__ import annotations

from pathlib import Path

import rheon as rh

DATA = Path(__file__).parent / "data" / "payments.jsonl"


def main() -> None:
    flow = rh.Flow("payments")
    tx = flow.source(rh.io.JsonLines(DATA), time="ts", max_delay="2s")

    per_card = (
        tx.key_by("card")
        .window(rh.tumbling("1m"))
        .agg(n=rh.count(), total=rh.sum("amount"), hi=rh.max("amount"), avg=rh.mean("amount"))
    )
    big = tx.filter(rh.col("amount") > 1000).select("card", "amount", "ts")

    windows, large, late = rh.io.Collect(), rh.io.Collect(), rh.io.Collect()
    per_card.sink(windows)
    per_card.late().sink(late)
    big.sink(large)
    flow.run()

    print(f"{len(windows)} card-minutes, {len(large)} payments over 1000, {len(late)} late events")
    for row in windows.rows[:5]:
        print(row)
    print("late:", late.rows)
    print(flow.metrics())


if __name__ == "__main__":
    main()
