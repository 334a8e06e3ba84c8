"""User sessions from a clickstream: a session ends after 30 s without a click.

Run: python examples/clickstream_sessions.py
"""

from __future__ import annotations

from pathlib import Path

import rheon as rh

DATA = Path(__file__).parent / "data" / "clicks.csv"


def main() -> None:
    flow = rh.Flow("sessions")
    clicks = flow.source(rh.io.Csv(DATA), time="ts", max_delay="1s")
    sessions = (
        clicks.key_by("user")
        .window(rh.session(gap="30s"))
        .agg(clicks=rh.count(), pages=rh.count_distinct("page"))
        .with_columns(seconds=(rh.col("window_end") - rh.col("window_start")) / 1000)
    )
    out = rh.io.Collect()
    sessions.sink(out)
    flow.run()
    frame = out.to_polars()
    print(frame.group_by("user").agg(sessions=rh.col("clicks").count(), clicks=rh.col("clicks").sum()).sort("user"))
    print(f"{frame.height} sessions, longest {frame['seconds'].max():.0f} s")


if __name__ == "__main__":
    main()
