"""Run rheon's benchmark workloads and print events/s and peak memory for each.

    python benchmarks/run.py                      # all workloads, 10M events, median of 3 runs
    python benchmarks/run.py --only Q2,Q3 --events 1000000 --batch-size 100000 --repeat 1

Each run of a workload is a fresh process: it loads the Parquet file into memory (not timed),
runs the flow to completion (timed) and reports its peak resident memory. The median run (by
events/s) is printed, with the slowest and fastest. Latency workloads (L*) run a paced Generator
in real time and report end-to-end p50/p99 at the sink.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

import rheon as rh  # noqa: E402
from benchmarks.data import generate  # noqa: E402

Build = Callable[[rh.Stream], rh.Stream]

WORKLOADS: dict[str, tuple[str, Build]] = {
    "Q1": (
        "filter value > 0.5, then value * 2 (expressions)",
        lambda s: s.filter(rh.col("value") > 0.5).with_columns(value=rh.col("value") * 2),
    ),
    "Q1L": (
        "Q1 written with Python lambdas",
        lambda s: s.filter(lambda r: r["value"] > 0.5).map(lambda r: {**r, "value": r["value"] * 2}),
    ),
    "Q2": (
        "tumbling 1 s count + sum per key",
        lambda s: s.key_by("key").window(rh.tumbling("1s")).agg(n=rh.count(), total=rh.sum("value")),
    ),
    "Q3": (
        "sliding 10 s every 1 s sum per key",
        lambda s: s.key_by("key").window(rh.sliding("10s", every="1s")).agg(total=rh.sum("value")),
    ),
    "Q4": (
        "session gap 500 ms count per key",
        lambda s: s.key_by("key").window(rh.session(gap="500ms")).agg(n=rh.count()),
    ),
}
WORKLOADS["Q2A"] = (
    "Q2 with count, sum, min, max, mean",
    lambda s: (
        s.key_by("key")
        .window(rh.tumbling("1s"))
        .agg(n=rh.count(), total=rh.sum("value"), lo=rh.min("value"), hi=rh.max("value"), avg=rh.mean("value"))
    ),
)
WORKLOADS["Q2Q"] = (
    "Q2 with an exact quantile (p95)",
    lambda s: s.key_by("key").window(rh.tumbling("1s")).agg(n=rh.count(), p95=rh.quantile("value", 0.95)),
)
WORKLOADS["Q2AQ"] = (
    "Q2 with an approximate quantile (DDSketch p95)",
    lambda s: s.key_by("key").window(rh.tumbling("1s")).agg(n=rh.count(), p95=rh.approx_quantile("value", 0.95)),
)
WORKLOADS["Q2HLL"] = (
    "Q2 with approx_count_distinct (HyperLogLog)",
    lambda s: s.key_by("key").window(rh.tumbling("1s")).agg(n=rh.count(), d=rh.approx_count_distinct("value")),
)
WORKLOADS["Q2C"] = ("Q2 with a checkpoint every second", WORKLOADS["Q2"][1])
WORKLOADS["Q2C100"] = ("Q2 with a checkpoint every 100 ms", WORKLOADS["Q2"][1])
CHECKPOINT_EVERY = {"Q2C": "1s", "Q2C100": "100ms"}
WORKLOADS["Q2M"] = ("Q2 serving Prometheus metrics, scraped every 100 ms", WORKLOADS["Q2"][1])
SCRAPED = {"Q2M"}


def _scrape_until(flow: rh.Flow, done: threading.Event) -> int:
    """Scrape the flow's metrics endpoint every 100 ms until ``done``; the number of scrapes."""
    scrapes = 0
    while not done.is_set():
        url = flow.metrics_url
        if url is not None:
            with contextlib.suppress(OSError):
                urllib.request.urlopen(url, timeout=5).read()
                scrapes += 1
        done.wait(0.1)
    return scrapes


def _stateless(s: rh.Stream) -> rh.Stream:
    return s.filter(rh.col("value") > 0.5).with_columns(value=rh.col("value") * 2)


def _tumbling(s: rh.Stream) -> rh.Stream:
    return s.key_by("key").window(rh.tumbling("1s")).agg(n=rh.count(), total=rh.sum("value"))


LATENCY: dict[str, tuple[str, int, Build]] = {
    "L1": ("filter + with_columns at 1,000 events/s", 1_000, _stateless),
    "L2": ("filter + with_columns at 100,000 events/s", 100_000, _stateless),
    "L3": ("tumbling 1 s per key at 10,000 events/s (results)", 10_000, _tumbling),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_throughput(name: str, events: int, batch_size: int) -> dict[str, object]:
    frame = pl.read_parquet(generate(events))
    loaded_mb = _rss_mb()
    _, build = WORKLOADS[name]
    flow = rh.Flow(name)
    out = rh.io.Collect()
    source = flow.source(rh.io.Records(frame, batch_size=batch_size), time="ts", max_delay="2s")
    build(source).sink(out)
    every = CHECKPOINT_EVERY.get(name)
    done, scrapes = threading.Event(), [0]
    scraper = threading.Thread(target=lambda: scrapes.__setitem__(0, _scrape_until(flow, done)), daemon=True)
    if name in SCRAPED:
        scraper.start()
    with tempfile.TemporaryDirectory(prefix="rheon-bench-ckpt-") as ckpt:
        started = time.perf_counter()
        flow.run(
            checkpoint_dir=ckpt if every else None,
            checkpoint_every=every,
            metrics_port=0 if name in SCRAPED else None,
        )
        seconds = time.perf_counter() - started
    done.set()
    if name in SCRAPED:
        scraper.join()
    stats = flow.metrics()
    assert stats is not None
    return {
        "workload": name,
        "events": frame.height,
        "seconds": round(seconds, 3),
        "events_per_s": round(frame.height / seconds),
        "out_rows": len(out),
        "late": stats.late_rows,
        "checkpoints": stats.checkpoints,
        **({"scrapes": scrapes[0]} if name in SCRAPED else {}),
        "loaded_mb": round(loaded_mb),
        "peak_mb": round(_rss_mb()),
    }


def run_latency(name: str, seconds: float) -> dict[str, object]:
    _, rate, build = LATENCY[name]
    flow = rh.Flow(name)
    out = rh.io.Collect()
    gen = rh.io.Generator(lambda i: {"key": i % 1000, "value": (i * 7919 % 1000) / 1000}, rate=rate, timestamp="ts")
    build(flow.source(gen, time="ts")).sink(out)
    flow.run(duration=f"{int(seconds * 1000)}ms")
    stats = flow.metrics()
    assert stats is not None
    return {
        "workload": name,
        "events": stats.records_in,
        "seconds": round(stats.elapsed_s, 3),
        "events_per_s": round(stats.events_per_s),
        "latency_p50_ms": round(stats.latency_p50_ms or float("nan"), 3),
        "latency_p99_ms": round(stats.latency_p99_ms or float("nan"), 3),
        "peak_mb": round(_rss_mb()),
    }


def _worker(args: argparse.Namespace) -> None:
    if args.worker in LATENCY:
        result = run_latency(args.worker, args.latency_seconds)
    else:
        result = run_throughput(args.worker, args.events, args.batch_size)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--batch-size", type=int, default=1_000_000)
    parser.add_argument("--only", default=",".join([*WORKLOADS, *LATENCY]))
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload; the median is reported")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS and n not in LATENCY]
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {[*WORKLOADS, *LATENCY]}")
    if any(n in WORKLOADS for n in names):
        generate(args.events)
    print(
        f"rheon {rh.__version__}, polars {pl.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, events={args.events:,}, batch_size={args.batch_size:,}"
    )
    for name in names:
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            name,
            "--events",
            str(args.events),
            "--batch-size",
            str(args.batch_size),
            "--latency-seconds",
            str(args.latency_seconds),
        ]
        runs = []
        for _ in range(max(args.repeat, 1)):
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{name}: FAILED\n{proc.stderr}", file=sys.stderr)
                break
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        if not runs:
            continue
        runs.sort(key=lambda r: r["events_per_s"])
        result = runs[len(runs) // 2]
        spread = f"  [{runs[0]['events_per_s']:,} .. {runs[-1]['events_per_s']:,}]" if len(runs) > 1 else ""
        if name in LATENCY:
            print(
                f"{name:6} {LATENCY[name][0]:48} {result['events_per_s']:>12,} ev/s  "
                f"p50 {result['latency_p50_ms']:.3f} ms  p99 {result['latency_p99_ms']:.3f} ms  "
                f"peak {result['peak_mb']:,} MB"
            )
        else:
            print(
                f"{name:6} {WORKLOADS[name][0]:48} {result['events_per_s']:>12,} ev/s  "
                f"{result['seconds']:7.3f} s  out {result['out_rows']:>9,}  "
                f"peak {result['peak_mb']:,} MB (data {result['loaded_mb']:,} MB){spread}"
                + (f"  checkpoints {result['checkpoints']}" if result.get("checkpoints") else "")
            )


if __name__ == "__main__":
    main()
