"""Streaming map-reduce: word counts, as a running total per word and per 10-second window.

Run: python examples/word_count.py
"""

from __future__ import annotations

import rheon as rh

LINES = [
    "to be or not to be",
    "that is the question",
    "whether tis nobler in the mind to suffer",
    "the slings and arrows of outrageous fortune",
    "or to take arms against a sea of troubles",
]


def main() -> None:
    rows = [{"line": line, "ts": i * 4_000} for i, line in enumerate(LINES)]
    flow = rh.Flow("words")
    words = flow.source(rh.io.Records(rows), time="ts").flat_map(
        lambda r: [{"word": w, "ts": r["ts"], "n": 1} for w in r["line"].split()]
    )
    running = words.key_by("word").reduce(lambda acc, r: {**r, "n": acc["n"] + r["n"]})
    per_window = words.key_by("word").window(rh.tumbling("10s")).agg(n=rh.count())

    totals, windows = rh.io.Collect(), rh.io.Collect()
    running.sink(totals)
    per_window.filter(rh.col("n") > 1).sink(windows)
    flow.run()

    final = {r["word"]: r["n"] for r in totals.rows}
    print("top words:", sorted(final.items(), key=lambda kv: (-kv[1], kv[0]))[:4])
    print("repeated within a 10 s window:", [(r["word"], r["window_start"], r["n"]) for r in windows.rows])


if __name__ == "__main__":
    main()
