"""CEP throughput: the issue's three patterns over generated card transactions.

    python -m benchmarks.cep [--events 10000000] [--cards 100000] [--only P1,P2,P3] [--repeat 3]

Data (generated once, fixed seed, cached in ``benchmarks/data/``): events at 10k per simulated
second, each shifted back by up to 2 s (``max_delay="2s"`` keeps every one on time); ``card``
uniform over ``--cards``; ``amount``: 5 % below 1, 5 % above 500, the rest in between; ``ok``:
false for 10 % of events (failed logins).

* P1 probe-then-big: ``small`` (amount < 1) then ``next`` ``big`` (amount > 500) within 10m.
* P2 brute force: ``fail`` (not ok) ``times_or_more(3)`` then ``next`` ``success`` within 5m.
* P3 rising three: any event, then two with Python conditions reading the match.

Each run is a fresh process; the median of ``--repeat`` runs is printed as JSON lines.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

DATA_DIR = Path(__file__).parent / "data"
SEED = 20261207
EVENTS_PER_SECOND = 10_000


def generate(n: int, cards: int) -> Path:
    """Write (once) and return the Parquet file of ``n`` card transactions."""
    path = DATA_DIR / f"cards_{n}_{cards}.parquet"
    if path.exists():
        return path
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    base_ms = 1_700_000_000_000 + (np.arange(n, dtype=np.int64) * 1000) // EVENTS_PER_SECOND
    kind = rng.random(n)
    amount = np.where(
        kind < 0.05, rng.random(n) * 0.99, np.where(kind > 0.95, 501 + rng.random(n) * 4000, 1 + rng.random(n) * 499)
    )
    frame = pl.DataFrame(
        {
            "ts": base_ms - rng.integers(0, 2001, n, dtype=np.int64),
            "card": rng.integers(0, cards, n, dtype=np.int64),
            "amount": np.round(amount, 2),
            "ok": rng.random(n) >= 0.10,
        }
    )
    tmp = path.with_suffix(".tmp")
    frame.write_parquet(tmp)
    tmp.rename(path)
    return path


def _patterns() -> dict[str, object]:
    import rheon as rh
    from rheon import cep

    return {
        "P1": cep.begin("small", rh.col("amount") < 1).next("big", rh.col("amount") > 500).within("10m"),
        "P2": cep.begin("fail", ~rh.col("ok")).times_or_more(3).next("success", rh.col("ok")).within("5m"),
        "P3": (
            cep.begin("a")
            .next("b", lambda e, m: e["amount"] > m["a"][-1]["amount"])
            .next("c", lambda e, m: e["amount"] > m["b"][-1]["amount"])
        ),
    }


NAMES = {
    "P1": "probe-then-big (expressions)",
    "P2": "brute force (times_or_more + next)",
    "P3": "rising three (Python)",
}


def run_one(name: str, events: int, cards: int, batch_size: int) -> dict[str, object]:
    import rheon as rh

    frame = pl.read_parquet(generate(events, cards))
    flow = rh.Flow(name)
    out = rh.io.Collect()
    source = flow.source(rh.io.Records(frame, batch_size=batch_size), time="ts", max_delay="2s")
    source.key_by("card").match(_patterns()[name]).sink(out)
    started = time.perf_counter()
    flow.run()
    seconds = time.perf_counter() - started
    return {
        "workload": name,
        "pattern": NAMES[name],
        "events": frame.height,
        "cards": cards,
        "seconds": round(seconds, 3),
        "events_per_s": round(frame.height / seconds),
        "matches": len(out),
        "peak_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--cards", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=1_000_000)
    parser.add_argument("--only", default="P1,P2,P3")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_one(args.worker, args.events, args.cards, args.batch_size)))
        return
    generate(args.events, args.cards)
    for name in args.only.split(","):
        runs = []
        for _ in range(args.repeat):
            cmd = [sys.executable, "-m", "benchmarks.cep", "--worker", name, "--events", str(args.events)]
            cmd += ["--cards", str(args.cards), "--batch-size", str(args.batch_size)]
            line = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
            runs.append(json.loads(line))
        best = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        best["runs_events_per_s"] = [r["events_per_s"] for r in runs]
        best["median_events_per_s"] = round(statistics.median(r["events_per_s"] for r in runs))
        print(json.dumps(best), flush=True)


if __name__ == "__main__":
    main()
