"""Run rheon's benchmark workloads and print events/s and peak memory for each.

    python benchmarks/run.py                      # all workloads, 10M events, median of 3 runs
    python benchmarks/run.py --only Q2,Q3 --events 1000000 --batch-size 100000 --repeat 1
    python benchmarks/run.py --against-reference --only Q2 --keys 100000   # rheon / hand-written

Each run of a workload is a fresh process: it loads the Parquet file into memory (not timed),
runs the flow to completion (timed) and reports its peak resident memory. The median run (by
events/s) is printed, with the slowest and fastest. Latency workloads (L*) run a paced Generator
in real time and report end-to-end p50/p99 at the sink and the cores the process used (its CPU
time over the wall time); the run with the median p99 is printed, then every run's figures.

``--against-reference`` runs rounds of rheon and then each hand-written job of
``benchmarks/calibrate.py`` for the workload (Q1-Q4), the same way, and prints the ratios of the
medians and of each round, with the 1-minute load average at each round's start and end and the
cores other processes kept busy during each run: figures from one sitting, with the load beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
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
from typing import Any, NamedTuple

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

import rheon as rh  # noqa: E402
from benchmarks.calibrate import REFERENCES, GridTooLargeError  # noqa: E402
from benchmarks.data import KEYS, generate  # noqa: E402

Build = Callable[[rh.Stream], rh.Stream]
Result = dict[str, Any]  # one run's JSON line

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


class Paced(NamedTuple):
    """A latency workload: ``build`` fed by a Generator at ``rate`` events/s in real time."""

    description: str
    rate: int
    build: Build
    batch_interval: str | None = None
    """The Generator's ``min_batch_interval`` (None: read whatever is due as soon as the loop is free)."""
    checkpoint_every: str | None = None


LATENCY: dict[str, Paced] = {
    "L1": Paced("filter + with_columns at 1,000 events/s", 1_000, _stateless),
    "L2": Paced("filter + with_columns at 100,000 events/s", 100_000, _stateless),
    "L3": Paced("tumbling 1 s per key at 10,000 events/s (results)", 10_000, _tumbling),
    "L4": Paced("filter + with_columns at 50,000 events/s", 50_000, _stateless),
    "L4B": Paced("L4 read at most once a millisecond", 50_000, _stateless, batch_interval="1ms"),
    "L5": Paced("L3 at 100,000 events/s, checkpoint every 1 s", 100_000, _tumbling, checkpoint_every="1s"),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def build_flow(name: str, frame: pl.DataFrame, batch_size: int) -> tuple[rh.Flow, rh.io.Collect]:
    """Workload ``name`` over ``frame`` as a flow writing into a ``Collect``."""
    _, build = WORKLOADS[name]
    flow = rh.Flow(name)
    out = rh.io.Collect()
    source = flow.source(rh.io.Records(frame, batch_size=batch_size), time="ts", max_delay="2s")
    build(source).sink(out)
    return flow, out


def run_flow(name: str, frame: pl.DataFrame, batch_size: int) -> pl.DataFrame:
    """Workload ``name``'s output rows (``calibrate.py --check`` compares the references with them)."""
    flow, out = build_flow(name, frame, batch_size)
    flow.run()
    return out.to_polars()


def run_throughput(name: str, events: int, batch_size: int, keys: int = KEYS) -> dict[str, object]:
    frame = pl.read_parquet(generate(events, keys))
    loaded_mb = _rss_mb()
    flow, out = build_flow(name, frame, batch_size)
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


def run_reference(name: str, kind: str, events: int, keys: int) -> dict[str, object]:
    """Time the hand-written ``kind`` job for workload ``name`` (``calibrate.REFERENCES``), like ``run_throughput``."""
    frame = pl.read_parquet(generate(events, keys))
    loaded_mb = _rss_mb()
    started = time.perf_counter()
    try:
        out = REFERENCES[name][kind](frame)
    except GridTooLargeError as exc:
        return {"workload": name, "runner": kind, "skipped": str(exc)}
    seconds = time.perf_counter() - started
    return {
        "workload": name,
        "runner": kind,
        "events": frame.height,
        "seconds": round(seconds, 3),
        "events_per_s": round(frame.height / seconds),
        "out_rows": out.height,
        "loaded_mb": round(loaded_mb),
        "peak_mb": round(_rss_mb()),
    }


def run_latency(name: str, seconds: float) -> dict[str, object]:
    """Run latency workload ``name`` for ``seconds``: end-to-end p50/p99 at the sink and the cores
    the process used meanwhile (its CPU time, every thread's, over the wall time)."""
    paced = LATENCY[name]
    flow = rh.Flow(name)
    out = rh.io.Collect()
    # Only when set, so that the script also runs older code (A/B in one sitting).
    interval: dict[str, Any] = {"min_batch_interval": paced.batch_interval} if paced.batch_interval else {}
    gen = rh.io.Generator(
        lambda i: {"key": i % 1000, "value": (i * 7919 % 1000) / 1000}, rate=paced.rate, timestamp="ts", **interval
    )
    paced.build(flow.source(gen, time="ts")).sink(out)
    with tempfile.TemporaryDirectory(prefix="rheon-bench-ckpt-") as ckpt:
        wall, cpu = time.perf_counter(), time.process_time()
        flow.run(
            duration=f"{int(seconds * 1000)}ms",
            checkpoint_dir=ckpt if paced.checkpoint_every else None,
            checkpoint_every=paced.checkpoint_every,
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stats = flow.metrics()
    assert stats is not None
    return {
        "workload": name,
        "events": stats.records_in,
        "seconds": round(stats.elapsed_s, 3),
        "events_per_s": round(stats.events_per_s),
        "latency_p50_ms": round(stats.latency_p50_ms or float("nan"), 3),
        "latency_p99_ms": round(stats.latency_p99_ms or float("nan"), 3),
        "cores": round(cpu / wall, 2),
        "checkpoints": stats.checkpoints,
        "peak_mb": round(_rss_mb()),
    }


def _worker(args: argparse.Namespace) -> None:
    if args.reference:
        result = run_reference(args.worker, args.reference, args.events, args.keys)
    elif args.worker in LATENCY:
        result = run_latency(args.worker, args.latency_seconds)
    else:
        result = run_throughput(args.worker, args.events, args.batch_size, args.keys)
    print(json.dumps(result))


def _run_worker(args: argparse.Namespace, name: str, reference: str | None = None) -> Result | None:
    """One run of workload ``name`` (rheon's flow, or a ``reference`` job) in a fresh process: its JSON result."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--events",
        str(args.events),
        "--keys",
        str(args.keys),
        "--batch-size",
        str(args.batch_size),
        "--latency-seconds",
        str(args.latency_seconds),
        *(["--reference", reference] if reference else []),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"{name} {reference or 'rheon'}: FAILED\n{proc.stderr}", file=sys.stderr)
        return None
    result: Result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _busy_s() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as stat:
            user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in stat.readline().split()[1:8])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _measured_run(args: argparse.Namespace, name: str, runner: str) -> Result | None:
    """``_run_worker``, plus the cores other processes kept busy meanwhile (the machine's busy time less the run's)."""
    busy, ours, started = _busy_s(), _children_cpu_s(), time.perf_counter()
    result = _run_worker(args, name, None if runner == "rheon" else runner)
    wall, busy_after = time.perf_counter() - started, _busy_s()
    if result is not None and busy is not None and busy_after is not None:
        result["others_cores"] = round(max(busy_after - busy - (_children_cpu_s() - ours), 0.0) / wall, 2)
    return result


def _median(runs: list[Result]) -> Result:
    return sorted(runs, key=lambda r: r["events_per_s"])[len(runs) // 2]


def _compare(name: str, runner: str, rheon: list[Result], ref: list[Result], loads: list[str]) -> Result:
    """rheon's runs against one reference's, from the same rounds: medians, their ratio, each round's ratio."""
    per_round = {r["round"]: r["events_per_s"] for r in rheon}
    ratios = [per_round[r["round"]] / r["events_per_s"] for r in ref if r["round"] in per_round]
    ours, theirs = _median(rheon), _median(ref)
    return {
        "summary": name,
        "keys": ours["keys"],
        "reference": runner,
        "rheon_events_per_s": ours["events_per_s"],
        "reference_events_per_s": theirs["events_per_s"],
        "ratio": round(ours["events_per_s"] / theirs["events_per_s"], 3),
        "ratio_per_round": [round(r, 3) for r in ratios],
        "rheon_range": [min(r["events_per_s"] for r in rheon), max(r["events_per_s"] for r in rheon)],
        "reference_range": [min(r["events_per_s"] for r in ref), max(r["events_per_s"] for r in ref)],
        "rheon_peak_mb": ours["peak_mb"],
        "reference_peak_mb": theirs["peak_mb"],
        "loaded_mb": ours["loaded_mb"],
        "load_1min": loads,
        "others_cores": [r["others_cores"] for r in [*rheon, *ref] if "others_cores" in r],
    }


TABLE_HEAD = (
    f"{'workload':8} {'keys':>9}  {'reference':9}  {'rheon ev/s (range)':24}  {'reference ev/s (range)':24}  "
    f"{'ratio (per round)':26}  {'peak MB rheon / ref (data)':26}  load 1-min per round, start->end  others' cores"
)


def _table_row(c: Result) -> str:
    def rates(median: float, low: float, high: float) -> str:
        return f"{median / 1e6:.3g}M ({low / 1e6:.3g}M-{high / 1e6:.3g}M)"

    others = c["others_cores"]
    cells = [
        f"{c['summary']:8} {c['keys']:>9,}  {c['reference']:9}",
        f"{rates(c['rheon_events_per_s'], *c['rheon_range']):24}",
        f"{rates(c['reference_events_per_s'], *c['reference_range']):24}",
        f"{c['ratio']:.2f} ({', '.join(f'{r:.2f}' for r in c['ratio_per_round'])})".ljust(26),
        f"{c['rheon_peak_mb']:>6,} / {c['reference_peak_mb']:>6,} ({c['loaded_mb']:,})".ljust(26),
        f"{', '.join(c['load_1min'])}".ljust(33),
        f"{min(others):.1f}-{max(others):.1f}" if others else "-",
    ]
    return "  ".join(cells)


def _against_reference(args: argparse.Namespace, names: list[str]) -> None:
    """Per workload, ``--repeat`` rounds of rheon then each reference, each in a fresh process.

    Prints a JSON line per run (with the round's 1-minute load average at its start and end, and the
    cores other processes kept busy during the run), a JSON summary per reference, then a table.
    """
    rows = []
    for name in names:
        runners = ["rheon", *REFERENCES[name]]
        runs: dict[str, list[Result]] = {r: [] for r in runners}
        loads = []
        for round_ in range(1, max(args.repeat, 1) + 1):
            load_start, done = os.getloadavg()[0], []
            for runner in [r for r in runners if r in runs]:
                result = _measured_run(args, name, runner)
                if result is None or "skipped" in result:
                    if result is not None:
                        print(f"{name} {runner}: skipped, {result['skipped']}", file=sys.stderr)
                    del runs[runner]  # a runner that failed or cannot run is not tried again
                    continue
                runs[runner].append(result)
                done.append(result)
            load_end = os.getloadavg()[0]
            loads.append(f"{load_start:.1f}->{load_end:.1f}")
            for result in done:
                result.setdefault("runner", "rheon")
                result.update(
                    keys=args.keys, round=round_, load_start=round(load_start, 2), load_end=round(load_end, 2)
                )
                print(json.dumps(result), flush=True)
        for runner in runners[1:]:
            if runs.get("rheon") and runs.get(runner):
                rows.append(_compare(name, runner, runs["rheon"], runs[runner], loads))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\nratio = rheon / reference, of the medians\n{TABLE_HEAD}")
    for row in rows:
        print(_table_row(row))


def _plain(args: argparse.Namespace, names: list[str]) -> None:
    """Per workload, ``--repeat`` runs of rheon in fresh processes: the median and the range."""
    for name in names:
        runs = []
        for _ in range(max(args.repeat, 1)):
            result = _run_worker(args, name)
            if result is None:
                break
            runs.append(result)
        if not runs:
            continue
        if name in LATENCY:  # the run with the median p99, and every run's p50/p99/cores
            runs.sort(key=lambda r: r["latency_p99_ms"])
            result = runs[len(runs) // 2]
            each = ", ".join(f"{r['latency_p50_ms']:.2f}/{r['latency_p99_ms']:.2f}/{r['cores']:.2f}" for r in runs)
            print(
                f"{name:6} {LATENCY[name].description:48} {result['events_per_s']:>12,} ev/s  "
                f"p50 {result['latency_p50_ms']:.3f} ms  p99 {result['latency_p99_ms']:.3f} ms  "
                f"cores {result['cores']:.2f}  peak {result['peak_mb']:,} MB"
                + (f"  checkpoints {result['checkpoints']}" if result.get("checkpoints") else "")
                + (f"  [p50/p99 ms/cores per run: {each}]" if len(runs) > 1 else ""),
                flush=True,
            )
            continue
        runs.sort(key=lambda r: r["events_per_s"])
        result = runs[len(runs) // 2]
        spread = f"  [{runs[0]['events_per_s']:,} .. {runs[-1]['events_per_s']:,}]" if len(runs) > 1 else ""
        print(
            f"{name:6} {WORKLOADS[name][0]:48} {result['events_per_s']:>12,} ev/s  "
            f"{result['seconds']:7.3f} s  out {result['out_rows']:>9,}  "
            f"peak {result['peak_mb']:,} MB (data {result['loaded_mb']:,} MB){spread}"
            + (f"  checkpoints {result['checkpoints']}" if result.get("checkpoints") else "")
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--keys", type=int, default=KEYS, help="distinct keys in the input (Q2 at 100k and 1M)")
    parser.add_argument("--batch-size", type=int, default=1_000_000)
    parser.add_argument("--only", help="comma-separated workloads (default: all; with --against-reference: Q1-Q4)")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3, help="runs per workload; the median is reported")
    parser.add_argument(
        "--against-reference",
        action="store_true",
        help="alternate rheon with the hand-written jobs of benchmarks/calibrate.py and print the ratios",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--reference", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    choices = list(REFERENCES) if args.against_reference else [*WORKLOADS, *LATENCY]
    names = [n.strip() for n in (args.only or ",".join(choices)).split(",") if n.strip()]
    unknown = [n for n in names if n not in choices]
    if unknown:
        what = "without a hand-written reference" if args.against_reference else "unknown"
        parser.error(f"workloads {unknown} {what}; choose from {choices}")
    if any(n in WORKLOADS for n in names):
        generate(args.events, args.keys)
    print(
        f"rheon {rh.__version__}, polars {pl.__version__}, Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs, events={args.events:,}, keys={args.keys:,}, "
        f"batch_size={args.batch_size:,}",
        flush=True,
    )
    if args.against_reference:
        _against_reference(args, names)
    else:
        _plain(args, names)


if __name__ == "__main__":
    main()
