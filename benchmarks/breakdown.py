"""Where a workload's time goes: one run under cProfile, summed by rheon step.

    python benchmarks/breakdown.py Q2                     # 10M events, batches of 1M
    python benchmarks/breakdown.py Q2 --events 1000000 --batch-size 10000
    python benchmarks/breakdown.py Q2 --keys 100000 --top 25

Runs the workload of ``benchmarks/run.py`` once in this process (data loaded first, not timed)
and prints the rheon functions that took the most time including what they called, as a share
of the run, then the Polars queries (``collect``) and NumPy calls made per batch. cProfile adds
overhead per Python call (about 10-20 % on the 1M-record batches, more on small ones), so read
the shares, not the seconds. BENCHMARKS.md quotes these shares per workload.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from benchmarks.data import KEYS, generate  # noqa: E402
from benchmarks.run import WORKLOADS, build_flow  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--batch-size", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=KEYS)
    parser.add_argument("--top", type=int, default=20, help="rheon functions to list")
    args = parser.parse_args()

    frame = pl.read_parquet(generate(args.events, args.keys))
    flow, _ = build_flow(args.workload, frame, args.batch_size)
    profile = cProfile.Profile()
    started = time.perf_counter()
    profile.enable()
    flow.run()
    profile.disable()
    seconds = time.perf_counter() - started
    batches = -(-args.events // args.batch_size)
    print(f"{args.workload}: {args.events:,} events in batches of {args.batch_size:,}, {args.keys:,} keys")
    print(f"{seconds:.3f} s under the profiler ({args.events / seconds / 1e6:.2f}M events/s), {batches} batches\n")

    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    rows = []
    for (path, line, name), (_, calls, own, total, _) in stats.items():
        if "/src/rheon/" in path:
            where = f"{path.split('/src/rheon/')[1]}:{line} {name}"
            rows.append((total, own, calls, where))
    rows.sort(reverse=True)
    print(f"{'incl. %':>7} {'own %':>6} {'calls':>7}  rheon function")
    for total, own, calls, where in rows[: args.top]:
        print(f"{100 * total / seconds:7.1f} {100 * own / seconds:6.1f} {calls:7d}  {where}")

    engine = [
        (v[1], v[3]) for (p, _, n), v in stats.items() if n == "<method 'collect' of 'builtins.PyLazyFrame' objects>"
    ]
    numpy = [(v[1], v[2]) for (p, _, n), v in stats.items() if "numpy" in n or "ufunc" in n]
    queries = sum(c for c, _ in engine)
    print(
        f"\nPolars queries: {queries / batches:.1f} per batch, {100 * sum(t for _, t in engine) / seconds:.1f} % of the run;"
        f" NumPy calls (own time): {100 * sum(t for _, t in numpy) / seconds:.1f} %"
    )


if __name__ == "__main__":
    main()
